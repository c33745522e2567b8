//! Prometheus metrics for `sys/metrics`, kept in a registry per server (not a
//! global) so that several servers in one test process stay apart.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub operation: String,
    pub status: u16,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub auth_failures: Counter,
    pub request_seconds: Histogram,
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
        Metrics {
            registry,
            requests,
            auth_failures,
            request_seconds,
        }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
