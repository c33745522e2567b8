//! Prometheus metrics for `sys/metrics`, kept in a registry per server (not a
//! global) so that several servers in one test process stay apart.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub operation: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub auth_failures: Counter,
    pub request_seconds: Histogram,
    pub storage_bytes: Gauge,
    pub data_dir_bytes: Gauge,
    pub retention_runs: Counter,
    pub retention_removed: Family<KindLabels, Counter>,
    /// Hosts' desired states by how they were had: `view` (the
    /// host-independent part built from storage), `computed` (a state
    /// rendered and hashed), `reused` (a state handed out as computed
    /// for another host or an earlier look) and `redacted` (a state's
    /// audit form made, once per state the audit log records). A change
    /// reaching a fleet should cost one `view` and a few `computed` and
    /// `redacted`, not one per host.
    pub host_states: Family<KindLabels, Counter>,
    /// Hosts' bookkeeping: `seen_noted` (a poll noted its host's last-seen
    /// time, at most once a minute per host), `seen_written` (a time
    /// written beside the host's record by a flush), `applied_noted` (a
    /// poll acknowledged a state index this server did not know its host
    /// applied), `applied_written` (an acknowledged state index stored, by
    /// a flush or by `hosts/self/ack`). None of them rewrites a host's
    /// record.
    pub host_bookkeeping: Family<KindLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("gatepass");
        let requests = Family::<RequestLabels, Counter>::default();
        let auth_failures = Counter::default();
        let request_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "requests",
            "API requests by operation and status",
            requests.clone(),
        );
        registry.register(
            "auth_failures",
            "requests refused for a missing, bad or expired token",
            auth_failures.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "time spent handling API requests",
            request_seconds.clone(),
        );
        let storage_bytes = Gauge::default();
        registry.register(
            "storage_bytes",
            "bytes the storage takes: the SQLite database and its WAL, or the PostgreSQL database",
            storage_bytes.clone(),
        );
        let data_dir_bytes = Gauge::default();
        registry.register(
            "data_dir_bytes",
            "bytes of the files in the folder of the SQLite database (0 on PostgreSQL)",
            data_dir_bytes.clone(),
        );
        let retention_runs = Counter::default();
        registry.register(
            "retention_runs",
            "retention runs completed",
            retention_runs.clone(),
        );
        let retention_removed = Family::<KindLabels, Counter>::default();
        registry.register(
            "retention_removed",
            "records retention removed, by kind (audit_line, certificate)",
            retention_removed.clone(),
        );
        let host_states = Family::<KindLabels, Counter>::default();
        registry.register(
            "host_states",
            "hosts' desired states: host-independent views built, states computed, states reused, audit forms of states made",
            host_states.clone(),
        );
        let host_bookkeeping = Family::<KindLabels, Counter>::default();
        registry.register(
            "host_bookkeeping",
            "hosts' last-seen times noted and written, acknowledged state indexes stored",
            host_bookkeeping.clone(),
        );
        Metrics {
            registry,
            requests,
            auth_failures,
            request_seconds,
            storage_bytes,
            data_dir_bytes,
            retention_runs,
            retention_removed,
            host_states,
            host_bookkeeping,
        }
    }
}

impl Metrics {
    /// A retention run that removed these many audit lines and
    /// certificates.
    pub fn retention_ran(&self, audit_lines: u64, certificates: u64) {
        self.retention_runs.inc();
        self.retention_removed
            .get_or_create(&KindLabels { kind: "audit_line" })
            .inc_by(audit_lines);
        self.retention_removed
            .get_or_create(&KindLabels {
                kind: "certificate",
            })
            .inc_by(certificates);
    }

    /// Counts a host state had this way (see [`Metrics::host_states`]).
    pub fn host_state(&self, kind: &'static str) {
        self.host_states.get_or_create(&KindLabels { kind }).inc();
    }

    /// Counts hosts' bookkeeping (see [`Metrics::host_bookkeeping`]).
    pub fn host_bookkeeping(&self, kind: &'static str) {
        self.host_bookkeeping_by(kind, 1);
    }

    pub fn host_bookkeeping_by(&self, kind: &'static str, n: u64) {
        self.host_bookkeeping
            .get_or_create(&KindLabels { kind })
            .inc_by(n);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
