//! `gatepass-bench fleet`: N simulated hosts long-polling their state from
//! one real `gatepass-server dev`, in this one process (issue 9).
//!
//! 1. A join token with unlimited uses; N hosts enroll (16 at a time).
//! 2. The reference: one host's plain `GET /v1/hosts/self/state` (no wait)
//!    and `GET /v1/sys/health`, one request after another.
//! 3. Every host long-polls `hosts/self/state?index=<last>&wait=30s` with its
//!    host token over a few shared HTTP/2 connections (at most
//!    `--streams-per-connection` polls each). Once every host has its first
//!    state and is waiting again: the server's RSS and CPU.
//! 4. One certificate is signed and revoked; the time until every host has
//!    received a state with another index (the new KRL), and the RSS after.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use gatepass_server::ssh::issuers::generate_key;
use serde_json::{json, Value};

use crate::measure::{Sample, Summary};
use crate::report::{self, Align, Table};
use crate::server::DevServer;
use crate::{machine, Common};

/// The default run's section of BENCHMARKS.md; other host counts write
/// `fleet-N`, so that a 10,000-host run sits beside the default one.
const SECTION: &str = "fleet";
const DEFAULT_HOSTS: usize = 2000;
const ROLE: &str = "bench-fleet";
/// Issue 9's targets, for 10,000 hosts.
const TARGET_HOSTS: usize = 10_000;
const TARGET_RSS_MIB: f64 = 300.0;
const TARGET_REACH: Duration = Duration::from_secs(5);
/// Issue 20's: 100,000 hosts over two servers, each under 1 GB.
const TARGET_SCALE_HOSTS: usize = 100_000;
const TARGET_SCALE_RSS_MIB: f64 = 1000.0;
/// The long-poll's wait, as hostd asks for it.
const WAIT: &str = "30s";
/// Hosts starting per second (`--start-rate`): about what two servers on
/// one PostgreSQL answer first polls at on two cores.
const DEFAULT_START_RATE: f64 = 2000.0;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Simulated hosts; other counts than 2000 write the section `fleet-N`.
    #[arg(long, default_value_t = DEFAULT_HOSTS)]
    pub hosts: usize,
    /// Concurrent enrollments.
    #[arg(long, default_value_t = 16)]
    pub enroll_tasks: usize,
    /// Long-polls multiplexed over one HTTP/2 connection (the server allows
    /// a limited number of concurrent streams per connection).
    #[arg(long, default_value_t = 100)]
    pub streams_per_connection: usize,
    /// Hosts starting to poll per second, all servers together: host i
    /// sends its first poll i/RATE seconds after the polls' start, as a
    /// fleet booted over time would rather than all in one instant.
    #[arg(long, default_value_t = DEFAULT_START_RATE)]
    pub start_rate: f64,
    /// Give up waiting for the hosts (to open their polls, or to receive the
    /// revocation) after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
    /// Servers sharing one PostgreSQL database (`gatepass-server serve`),
    /// the hosts spread evenly over them, the revocation made on the
    /// first; 1: one `gatepass-server dev` on SQLite.
    #[arg(long, default_value_t = 1)]
    pub servers: usize,
    /// The PostgreSQL server for more than one server, as
    /// `postgres://USER@HOST:PORT` (a database is created on it); default:
    /// a private cluster of this run's own (initdb as the `postgres` user,
    /// on a free loopback port, removed at the end).
    #[arg(long, value_name = "URL")]
    pub postgres: Option<String>,
    /// Revoke no sooner than this many seconds after enrollment began
    /// (the hosts keep polling meanwhile): a smaller fleet then has its
    /// hosts' once-a-minute last-seen times fall due during the
    /// revocation, as in a large fleet's longer run.
    #[arg(long, value_name = "SECS")]
    pub revoke_at: Option<f64>,
    /// The hosts do not acknowledge the states they receive (hostd
    /// acknowledges every new state it applied, with its next poll:
    /// `applied=<index>`).
    #[arg(long)]
    pub no_ack: bool,
}

impl Args {
    pub fn with(common: Common) -> Args {
        Args {
            common,
            hosts: DEFAULT_HOSTS,
            enroll_tasks: 16,
            streams_per_connection: 100,
            start_rate: DEFAULT_START_RATE,
            timeout: 120.0,
            servers: 1,
            postgres: None,
            revoke_at: None,
            no_ack: false,
        }
    }
}

/// Raises the soft limit on open files to the hard limit (the server, a
/// child, inherits it). Returns the soft limit now in force.
fn raise_nofile() -> libc::rlim_t {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                r = want;
            }
        }
    }
    r.rlim_cur
}

/// Shared by the host tasks.
struct Fleet {
    /// Hosts that have received their first state.
    ready: AtomicUsize,
    /// Answers received, all hosts together.
    answers: AtomicU64,
    /// Of them, those with a new state after the host's first.
    changes: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// When the revocation request was sent (set once).
    revoked_at: Mutex<Option<Instant>>,
    /// Per host: nanoseconds from the revocation to a new index (0: not yet).
    reached: Vec<AtomicU64>,
    reached_count: AtomicUsize,
    notify: tokio::sync::Notify,
    stop: AtomicBool,
    /// Acknowledgements answered and failed.
    acks: AtomicU64,
    ack_errors: AtomicU64,
}

/// The one field of a state answer the simulated host looks at. Parsing
/// into it still reads (and checks) the whole answer as JSON, but builds
/// nothing of the state: a real hostd does that on its own machine, while
/// here every host's parsing takes from the two cores the servers run on.
#[derive(serde::Deserialize)]
struct StateAnswer {
    data: StateIndex,
}

#[derive(serde::Deserialize)]
struct StateIndex {
    index: u64,
}

/// What every simulated host polls, on whichever server it was given.
const STATE_PATH: &str = "/v1/hosts/self/state";

async fn poll_once(c: &crate::h2_client::Conn, path: &str, token: &str) -> Result<u64, String> {
    let (status, body) = c.get(path, token).await.map_err(|e| format!("{e:#}"))?;
    let text = || String::from_utf8_lossy(&body).trim().to_string();
    if !(200..300).contains(&status) {
        return Err(format!("{status}: {}", text()));
    }
    serde_json::from_slice::<StateAnswer>(&body)
        .map(|a| a.data.index)
        .map_err(|e| format!("{e} in {}", text()))
}

/// One simulated host: long-polls until told to stop.
async fn host(
    fleet: Arc<Fleet>,
    i: usize,
    c: crate::h2_client::Conn,
    ack: bool,
    token: String,
    start: Duration,
) {
    tokio::time::sleep(start).await;
    let mut index = 0u64;
    // A new state is acknowledged as hostd does once it applied it: by the
    // next poll (`applied`), and again by the poll after a failed one.
    let mut applied: Option<u64> = None;
    let mut last_applied: Option<u64> = None;
    while !fleet.stop.load(Ordering::Relaxed) {
        let url = match applied {
            Some(a) => format!("{STATE_PATH}?index={index}&wait={WAIT}&applied={a}"),
            None => format!("{STATE_PATH}?index={index}&wait={WAIT}"),
        };
        match poll_once(&c, &url, &token).await {
            Ok(new) => {
                fleet.answers.fetch_add(1, Ordering::Relaxed);
                if applied.take().is_some() {
                    fleet.acks.fetch_add(1, Ordering::Relaxed);
                }
                if ack && new != index {
                    applied = Some(new);
                    last_applied = applied;
                }
                if index == 0 {
                    fleet.ready.fetch_add(1, Ordering::Relaxed);
                    fleet.notify.notify_waiters();
                } else if new != index {
                    fleet.changes.fetch_add(1, Ordering::Relaxed);
                    let at = fleet.revoked_at.lock().ok().and_then(|g| *g);
                    if let (Some(at), Some(slot)) = (at, fleet.reached.get(i)) {
                        let ns = u64::try_from(at.elapsed().as_nanos()).unwrap_or(u64::MAX);
                        if slot
                            .compare_exchange(0, ns.max(1), Ordering::Relaxed, Ordering::Relaxed)
                            .is_ok()
                        {
                            fleet.reached_count.fetch_add(1, Ordering::Relaxed);
                            fleet.notify.notify_waiters();
                        }
                    }
                }
                index = new;
            }
            Err(e) => {
                fleet.errors.fetch_add(1, Ordering::Relaxed);
                if applied.is_some() {
                    fleet.ack_errors.fetch_add(1, Ordering::Relaxed);
                }
                applied = applied.or(last_applied);
                if let Ok(mut g) = fleet.first_error.lock() {
                    g.get_or_insert(e);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Waits until `done()` or the timeout; false on timeout.
async fn wait_for(fleet: &Fleet, timeout: Duration, done: impl Fn() -> bool) -> bool {
    let end = tokio::time::Instant::now() + timeout;
    loop {
        let notified = fleet.notify.notified();
        if done() {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

/// A serial loop of one request for `secs` (after a short warm-up).
async fn reference(
    c: &reqwest::Client,
    url: &str,
    token: &str,
    budget: crate::measure::Budget,
) -> Summary {
    let once = || async {
        let r = c.get(url).header("X-Vault-Token", token).send().await;
        crate::load::answer(r).await.map(|_| ())
    };
    let warm_end = Instant::now() + budget.warmup;
    while Instant::now() < warm_end {
        let _ = once().await;
    }
    let mut s = Sample::default();
    let start = Instant::now();
    let end = start + budget.measure;
    while s.total() < crate::measure::MAX_OPS {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        let outcome = once().await;
        s.record(t0.elapsed(), outcome);
    }
    s.elapsed = start.elapsed();
    s.summarize()
}

fn nearest_rank(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

#[derive(Default, Debug)]
struct Results {
    hosts: usize,
    connections: usize,
    nofile: libc::rlim_t,
    http: Option<reqwest::Version>,
    servers: usize,
    /// Per server, in order.
    rss_start: Vec<(f64, f64)>,
    enroll: Duration,
    health: Option<Summary>,
    plain_state: Option<Summary>,
    open_polls: Duration,
    rss_polling: Vec<(f64, f64)>,
    idle_cpu: Option<f64>,
    /// Answers with a new state while nothing changed (should be none).
    idle_changes: u64,
    /// Polls whose wait ran out meanwhile, answered with the same state:
    /// hosts that started polling more than a wait before the window.
    idle_waits_ended: u64,
    sign: Duration,
    revoke: Duration,
    reached: Vec<Duration>,
    rss_after: Vec<(f64, f64)>,
    reach_cpu: Option<f64>,
    /// This process's (the simulated hosts') CPU over the same window.
    sim_reach_cpu: Option<f64>,
    /// The PostgreSQL cluster's (every process of it) over the same window,
    /// when the cluster runs on this machine.
    pg_reach_cpu: Option<f64>,
    /// PostgreSQL's transactions over the same window: those that wrote
    /// (transaction IDs taken, exact) and all committed (its statistics,
    /// which each connection reports at most once a second).
    pg_writes: Option<u64>,
    pg_commits: Option<u64>,
    /// When the revocation was sent, from the start of enrollment.
    revoked_after: Duration,
    acks: u64,
    ack_errors: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Every server's RSS and VmHWM.
fn memory(pids: &[u32]) -> Vec<(f64, f64)> {
    pids.iter().map(|p| machine::process_memory(*p)).collect()
}

/// The servers' CPU time together, in ticks.
fn cpu_ticks(pids: &[u32]) -> Option<u64> {
    pids.iter().map(|p| machine::process_cpu_ticks(*p)).sum()
}

/// The postmaster's process ID, read from its data folder (`SHOW
/// data_directory`), when the cluster runs on this machine and that folder
/// can be read.
fn postmaster_pid(base: &str) -> Option<u32> {
    let out = std::process::Command::new("psql")
        .arg(base)
        .args(["-Atc", "SHOW data_directory"])
        .output()
        .ok()?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let text = std::fs::read_to_string(std::path::Path::new(&dir).join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// A PostgreSQL cluster's CPU time, in ticks: the postmaster's own and that
/// of the children it has reaped, and of every child still running (its
/// backends, the WAL writer, the checkpointer...).
fn cluster_cpu_ticks(postmaster: u32) -> Option<u64> {
    let mut total = machine::process_cpu_and_children_ticks(postmaster)?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if machine::parent_pid(pid) == Some(postmaster) {
            total += machine::process_cpu_ticks(pid).unwrap_or(0);
        }
    }
    Some(total)
}

/// The database's next transaction ID and its count of committed
/// transactions (see `Results::pg_writes`).
fn pg_counts(db: &str) -> Option<(u64, u64)> {
    let out = std::process::Command::new("psql")
        .arg(db)
        .args([
            "-Atc",
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text || ' ' || xact_commit \
             FROM pg_stat_database WHERE datname = current_database()",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace().map(|w| w.parse::<u64>().ok());
    Some((it.next()??, it.next()??))
}

async fn measure(
    servers: &[DevServer],
    postmaster: Option<u32>,
    db: Option<&str>,
    args: &Args,
    res: &mut Results,
) -> anyhow::Result<()> {
    let budget = args.common.budget()?;
    let timeout = Duration::from_secs_f64(args.timeout);
    let Some(server) = servers.first() else {
        bail!("no server");
    };
    let k = servers.len();
    res.servers = k;
    let pids: Vec<u32> = servers.iter().map(DevServer::pid).collect();
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let n = args.hosts;
    res.hosts = n;
    let admin = server.client()?;
    res.rss_start = memory(&pids);

    // An ssh CA and a role to sign with; the hosts trust this mount's CA.
    server.ca_and_user_role(&admin, ROLE).await?;
    let join = server.join_token(&admin, 0).await?;

    // Enrollment, `enroll_tasks` at a time, without a token; host i
    // through server i mod k, which it then polls.
    eprintln!("  enrolling {n} hosts ({} at a time)…", args.enroll_tasks);
    let enroll_start = Instant::now();
    let tokens: Arc<Vec<Mutex<String>>> =
        Arc::new((0..n).map(|_| Mutex::new(String::new())).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let urls: Arc<Vec<String>> = Arc::new(servers.iter().map(|s| s.url("hosts/enroll")).collect());
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.enroll_tasks {
        let enroll_clients: Vec<reqwest::Client> = servers
            .iter()
            .map(DevServer::client)
            .collect::<anyhow::Result<_>>()?;
        let (next, tokens, urls, join) = (next.clone(), tokens.clone(), urls.clone(), join.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= tokens.len() {
                    return anyhow::Ok(());
                }
                let (c, url) = (&enroll_clients[i % k], &urls[i % k]);
                let body = json!({
                    "join_token": join,
                    "hostname": format!("sim-{i}"),
                    "addresses": [format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)],
                    "host_keys": [],
                });
                let text = crate::load::answer(c.post(url).json(&body).send().await)
                    .await
                    .map_err(|e| anyhow::anyhow!("enrolling sim-{i}: {e}"))?;
                let v: Value = serde_json::from_str(&text)?;
                let t = v
                    .pointer("/data/host_token")
                    .and_then(Value::as_str)
                    .context("enroll returned no host_token")?;
                if let Some(slot) = tokens.get(i) {
                    *slot.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = t.to_string();
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    res.enroll = t0.elapsed();
    let tokens: Vec<String> = tokens
        .iter()
        .map(|m| m.lock().map(|g| g.clone()).unwrap_or_default())
        .collect();
    eprintln!(
        "  enrolled in {:.1} s ({:.0} hosts/s)",
        res.enroll.as_secs_f64(),
        n as f64 / res.enroll.as_secs_f64()
    );

    // The reference: one request after another from one warm client.
    let state_url = server.url("hosts/self/state");
    res.health = Some(reference(&admin, &server.url("sys/health"), "", budget).await);
    res.plain_state = Some(reference(&admin, &state_url, &tokens[0], budget).await);

    // The fleet: a few HTTP/2 connections to each server, each carrying
    // many polls.
    let per_server = n.div_ceil(k);
    let conns = per_server
        .div_ceil(args.streams_per_connection.max(1))
        .max(1);
    res.connections = conns * k;
    let mut clients: Vec<Vec<crate::h2_client::Conn>> = Vec::new();
    for s in servers {
        let target = crate::h1::Target::new(&s.addr, s.ca_pem())?;
        let mut cs = Vec::new();
        for _ in 0..conns {
            let c = crate::h2_client::Conn::open(&target).await?;
            let (status, body) = c.get("/v1/sys/health", "").await?;
            if status != 200 {
                bail!("sys/health: {status} {}", String::from_utf8_lossy(&body));
            }
            cs.push(c);
        }
        clients.push(cs);
    }
    // The simulated hosts' client speaks HTTP/2 only (ALPN `h2`).
    res.http = Some(reqwest::Version::HTTP_2);
    let fleet = Arc::new(Fleet {
        ready: AtomicUsize::new(0),
        answers: AtomicU64::new(0),
        changes: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: Mutex::new(None),
        revoked_at: Mutex::new(None),
        reached: (0..n).map(|_| AtomicU64::new(0)).collect(),
        reached_count: AtomicUsize::new(0),
        notify: tokio::sync::Notify::new(),
        stop: AtomicBool::new(false),
        acks: AtomicU64::new(0),
        ack_errors: AtomicU64::new(0),
    });
    eprintln!(
        "  {n} hosts long-polling {k} server(s) over {} connections…",
        res.connections
    );
    let t0 = Instant::now();
    let handles: Vec<_> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            tokio::spawn(host(
                fleet.clone(),
                i,
                clients[i % k][(i / k) % conns].clone(),
                !args.no_ack,
                t,
                Duration::from_secs_f64(i as f64 / args.start_rate),
            ))
        })
        .collect();
    let outcome = async {
        if !wait_for(&fleet, timeout, || fleet.ready.load(Ordering::Relaxed) >= n).await {
            bail!(
                "only {} of {n} hosts had their first state after {timeout:?} ({} errors, first: {:?})",
                fleet.ready.load(Ordering::Relaxed),
                fleet.errors.load(Ordering::Relaxed),
                fleet.first_error.lock().ok().and_then(|g| g.clone())
            );
        }
        res.open_polls = t0.elapsed();
        eprintln!(
            "  every host has its first state after {:.2} s; idle for 3 s",
            res.open_polls.as_secs_f64()
        );
        // Every host now waits in its second poll; the server idles with them.
        let answers0 = fleet.answers.load(Ordering::Relaxed);
        let changes0 = fleet.changes.load(Ordering::Relaxed);
        let c0 = cpu_ticks(&pids);
        let idle = Duration::from_secs(3);
        tokio::time::sleep(idle).await;
        res.idle_cpu = c0
            .zip(cpu_ticks(&pids))
            .map(|(a, b)| (b - a) as f64 / ticks / idle.as_secs_f64());
        let changes = fleet.changes.load(Ordering::Relaxed) - changes0;
        res.idle_changes = changes;
        res.idle_waits_ended = (fleet.answers.load(Ordering::Relaxed) - answers0).saturating_sub(changes);
        res.rss_polling = memory(&pids);
        if let Some(at) = args.revoke_at {
            let left = Duration::from_secs_f64(at).saturating_sub(enroll_start.elapsed());
            eprintln!("  revoking in {:.0} s", left.as_secs_f64());
            tokio::time::sleep(left).await;
        }

        // Sign a certificate, then revoke it: a new KRL for every host.
        let user = generate_key("ssh-ed25519", 0)?;
        let t = Instant::now();
        let signed = server
            .write(
                &admin,
                &format!("ssh/sign/{ROLE}"),
                &json!({ "public_key": user.public_key().to_openssh()? }),
            )
            .await?;
        res.sign = t.elapsed();
        let serial = signed
            .pointer("/data/serial_number")
            .and_then(Value::as_str)
            .context("sign returned no serial_number")?
            .to_string();
        // Let the wake-ups the sign caused settle (they keep the old index).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let c0 = cpu_ticks(&pids);
        let me = [std::process::id()];
        let s0 = cpu_ticks(&me);
        let p0 = postmaster.and_then(cluster_cpu_ticks);
        let q0 = db.and_then(pg_counts);
        let t = Instant::now();
        res.revoked_after = enroll_start.elapsed();
        if let Ok(mut g) = fleet.revoked_at.lock() {
            *g = Some(t);
        }
        server
            .write(&admin, "ssh/revoke", &json!({ "serial_number": serial }))
            .await?;
        res.revoke = t.elapsed();
        let all = wait_for(&fleet, timeout, || {
            fleet.reached_count.load(Ordering::Relaxed) >= n
        })
        .await;
        let took = t.elapsed();
        if let Some(((w0, c0), (w1, c1))) = q0.zip(db.and_then(pg_counts)) {
            res.pg_writes = Some(w1.saturating_sub(w0));
            res.pg_commits = Some(c1.saturating_sub(c0));
        }
        // /proc counts CPU time in ticks (10 ms): a shorter window says nothing.
        res.reach_cpu = c0
            .zip(cpu_ticks(&pids))
            .filter(|_| took >= Duration::from_millis(500))
            .map(|(a, b)| (b - a) as f64 / ticks / took.as_secs_f64());
        res.sim_reach_cpu = s0
            .zip(cpu_ticks(&me))
            .filter(|_| took >= Duration::from_millis(500))
            .map(|(a, b)| (b - a) as f64 / ticks / took.as_secs_f64());
        res.pg_reach_cpu = p0
            .zip(postmaster.and_then(cluster_cpu_ticks))
            .filter(|_| took >= Duration::from_millis(500))
            .map(|(a, b)| b.saturating_sub(a) as f64 / ticks / took.as_secs_f64());
        res.rss_after = memory(&pids);
        let mut reached: Vec<Duration> = fleet
            .reached
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .filter(|ns| *ns > 0)
            .map(Duration::from_nanos)
            .collect();
        reached.sort_unstable();
        res.reached = reached;
        if !all {
            eprintln!(
                "  only {} of {n} hosts received the revocation within {timeout:?}",
                res.reached.len()
            );
        }
        anyhow::Ok(())
    }
    .await;
    fleet.stop.store(true, Ordering::Relaxed);
    for h in &handles {
        h.abort();
    }
    for h in handles {
        let _ = h.await;
    }
    res.errors = fleet.errors.load(Ordering::Relaxed);
    res.acks = fleet.acks.load(Ordering::Relaxed);
    res.ack_errors = fleet.ack_errors.load(Ordering::Relaxed);
    res.first_error = fleet.first_error.lock().ok().and_then(|g| g.clone());
    outcome
}

/// The simulated hosts' runtime: one thread. Every host's poll is a few
/// microseconds of work, and on a multi-threaded runtime its threads
/// parked and woke each other for each of them: at 40,000 hosts the
/// simulated hosts' CPU per host reached was 27-31 µs on two threads and
/// 16 µs on one (BENCHMARKS.md, "Fleet"), CPU a real fleet spends on its
/// own machines but here taken from the cores the servers run on.
fn sim_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    args.common.budget()?;
    if !(1..=100_000).contains(&args.hosts) {
        bail!("--hosts takes 1 to 100000");
    }
    if !(1..=256).contains(&args.enroll_tasks) {
        bail!("--enroll-tasks takes 1 to 256");
    }
    if !(1..=10_000).contains(&args.streams_per_connection) {
        bail!("--streams-per-connection takes 1 to 10000");
    }
    if !(1.0..=1_000_000.0).contains(&args.start_rate) {
        bail!("--start-rate takes 1 to 1000000 hosts per second");
    }
    if !(1.0..=3600.0).contains(&args.timeout) {
        bail!("--timeout takes 1 to 3600 seconds");
    }
    if !(1..=8).contains(&args.servers) {
        bail!("--servers takes 1 to 8");
    }
    let nofile = raise_nofile();
    let server_bin = args.common.server_bin()?;
    let machine = machine::describe();
    let mut res = Results {
        nofile,
        ..Results::default()
    };
    if args.servers == 1 {
        let server = DevServer::start(&server_bin)?;
        DevServer::around_all(vec![server], sim_runtime()?, |servers, rt| {
            rt.block_on(measure(servers, None, None, args, &mut res))
        })?;
    } else {
        // A private cluster unless one was named; dropped (stopped and
        // removed) after the servers.
        let own;
        let base = match &args.postgres {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => {
                eprintln!("  starting a private PostgreSQL cluster…");
                own = gatepass_tests::pg::OwnedPg::start();
                own.base_url.clone()
            }
        };
        let db = format!("gp_fleet_{}", std::process::id());
        let created = std::process::Command::new("psql")
            .arg(&base)
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-c"])
            .arg(format!("CREATE DATABASE {db}"))
            .output()
            .context("running psql (Debian: postgresql-client)")?;
        if !created.status.success() {
            bail!(
                "creating the database on {base}: {}",
                String::from_utf8_lossy(&created.stderr).trim()
            );
        }
        let postmaster = postmaster_pid(&base);
        let db_url = format!("{base}/{db}");
        let servers = DevServer::serve_sharing(&server_bin, &db_url, args.servers)?;
        DevServer::around_all(servers, sim_runtime()?, |servers, rt| {
            rt.block_on(measure(servers, postmaster, Some(&db_url), args, &mut res))
        })?;
    }
    let body = section(&machine, args, &res);
    let name = if args.servers > 1 {
        format!("{SECTION}-{}-{}-servers", args.hosts, args.servers)
    } else {
        report::sized(SECTION, args.hosts, DEFAULT_HOSTS)
    };
    report::publish(args.common.write.as_deref(), &name, &body)?;
    if res.reached.len() < res.hosts {
        bail!(
            "{} of {} hosts never received the revocation",
            res.hosts - res.reached.len(),
            res.hosts
        );
    }
    Ok(())
}

fn section(m: &machine::Machine, args: &Args, r: &Results) -> String {
    let n = r.hosts;
    let ms = |d: Option<Duration>| report::millis(d);
    let servers = if r.servers > 1 {
        format!(
            "{} `gatepass-server serve` processes sharing one PostgreSQL database (a private cluster started with `fsync=off` unless `--postgres` named one), the hosts spread evenly over them and the revocation made on the first",
            r.servers
        )
    } else {
        "one `gatepass-server dev` (SQLite)".to_string()
    };
    let mut out = format!(
        "{}; {servers}; {n} simulated hosts enrolled {} at a time, starting to poll {} a second (the last {:.1} s after the first), long-polling (`wait={WAIT}`) over {} {} connections (≤ {} polls each) from this one process, {}; the revocation sent {:.0} s after enrollment began; open-files limit {}; references {} s each after a {:.1} s warm-up.\n\n",
        m.measured_on(),
        args.enroll_tasks,
        report::rate(args.start_rate),
        n.saturating_sub(1) as f64 / args.start_rate,
        r.connections,
        r.http.map(|v| format!("{v:?}")).unwrap_or_else(|| "HTTP".into()),
        args.streams_per_connection,
        if args.no_ack {
            "acknowledging nothing (`--no-ack`)"
        } else {
            "each acknowledging every new state as hostd does, with its next poll (`applied=<index>`)"
        },
        r.revoked_after.as_secs_f64(),
        r.nofile,
        args.common.seconds,
        crate::measure::Budget::from_seconds(args.common.seconds).warmup.as_secs_f64(),
    );
    let mut t = Table::new(&[
        ("measurement", Align::Left),
        ("rate /s", Align::Right),
        ("p50 ms", Align::Right),
        ("p99 ms", Align::Right),
        ("errors", Align::Right),
    ]);
    for (what, s) in [
        ("`GET /v1/sys/health`, 1 client (reference)", &r.health),
        (
            "`GET /v1/hosts/self/state`, no wait, 1 host (reference)",
            &r.plain_state,
        ),
    ] {
        if let Some(s) = s {
            t.push(vec![
                what.into(),
                report::rate(s.rate),
                ms(s.p50),
                ms(s.p99),
                s.errors.to_string(),
            ]);
        }
    }
    out += &t.to_markdown();
    out += "\n";
    let mut t = Table::new(&[
        ("fleet of simulated hosts", Align::Left),
        ("value", Align::Right),
    ]);
    let secs = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    t.push(vec![
        format!("enroll {n} hosts ({} concurrent)", args.enroll_tasks),
        format!(
            "{} ({} hosts/s)",
            secs(r.enroll),
            report::rate(n as f64 / r.enroll.as_secs_f64().max(1e-9))
        ),
    ]);
    t.push(vec![
        "every host's first state, from the polls' start".into(),
        secs(r.open_polls),
    ]);
    let rss_rows = |t: &mut Table, what: &str, v: &[(f64, f64)]| {
        for (i, (rss, hwm)) in v.iter().enumerate() {
            let who = if v.len() > 1 {
                format!("server {} ", i + 1)
            } else {
                "server ".to_string()
            };
            t.push(vec![
                format!("{who}RSS / VmHWM {what}"),
                format!("{} / {} MiB", report::mib(*rss), report::mib(*hwm)),
            ]);
        }
    };
    rss_rows(&mut t, "at start (before enrolling)", &r.rss_start);
    rss_rows(&mut t, &format!("with {n} polls open"), &r.rss_polling);
    t.push(vec![
        format!("server CPU while {n} polls wait (3 s, no changes; all servers)"),
        r.idle_cpu
            .map(|c| format!("{:.0}% of a core", c * 100.0))
            .unwrap_or_else(|| "–".into()),
    ]);
    t.push(vec![
        "answers with a new state while nothing changes (should be 0)".into(),
        r.idle_changes.to_string(),
    ]);
    t.push(vec![
        format!("polls whose {WAIT} wait ran out in those 3 s (the same state)"),
        r.idle_waits_ended.to_string(),
    ]);
    t.push(vec![
        "`POST /v1/ssh/sign/<role>` with the polls open".into(),
        format!("{} ms", ms(Some(r.sign))),
    ]);
    t.push(vec![
        "`POST /v1/ssh/revoke` answered".into(),
        format!("{} ms", ms(Some(r.revoke))),
    ]);
    for (label, p) in [("50%", 50.0), ("99%", 99.0), ("100%", 100.0)] {
        let v = if r.reached.len() < n && p >= 100.0 {
            format!("not all: {} of {n}", r.reached.len())
        } else {
            let k = ((p / 100.0) * n as f64).ceil() as usize;
            r.reached
                .get(k.clamp(1, n) - 1)
                .map(|d| format!("{} ms", ms(Some(*d))))
                .unwrap_or_else(|| "–".into())
        };
        t.push(vec![
            format!("revocation reached {label} of hosts (from the revoke request)"),
            v,
        ]);
    }
    t.push(vec![
        "server CPU from the revoke to the last host (all servers)".into(),
        r.reach_cpu
            .map(|c| format!("{:.0}% of a core", c * 100.0))
            .unwrap_or_else(|| "– (under 0.5 s)".into()),
    ]);
    t.push(vec![
        "the simulated hosts' CPU over the same time (this process)".into(),
        r.sim_reach_cpu
            .map(|c| format!("{:.0}% of a core", c * 100.0))
            .unwrap_or_else(|| "– (under 0.5 s)".into()),
    ]);
    if r.servers > 1 {
        t.push(vec![
            "PostgreSQL's CPU over the same time (every process of its cluster)".into(),
            r.pg_reach_cpu
                .map(|c| format!("{:.0}% of a core", c * 100.0))
                .unwrap_or_else(|| "– (not on this machine, or under 0.5 s)".into()),
        ]);
    }
    if let (Some(w), Some(c)) = (r.pg_writes, r.pg_commits) {
        t.push(vec![
            "PostgreSQL transactions over the same time: writing / all committed".into(),
            format!("{w} / {c}"),
        ]);
    }
    rss_rows(&mut t, "after the revocation", &r.rss_after);
    t.push(vec![
        "acknowledgements answered / failed (polls carrying `applied=<index>`, as hostd sends)"
            .into(),
        if args.no_ack {
            "– (`--no-ack`)".into()
        } else {
            format!("{} / {}", r.acks, r.ack_errors)
        },
    ]);
    t.push(vec![
        "poll errors".into(),
        match &r.first_error {
            Some(e) => format!("{} (first: {e})", r.errors),
            None => r.errors.to_string(),
        },
    ]);
    out += &t.to_markdown();
    let all = nearest_rank(&r.reached, 100.0).filter(|_| r.reached.len() >= n);
    if let (Some(all), Some(s)) = (all, r.plain_state.as_ref().and_then(|s| s.p50)) {
        let per_host = all.as_secs_f64() / n as f64;
        out += &format!(
            "\nFrom the revoke request to the last host: {:.1} µs per host, {:.2}× the median of one plain state request ({} ms, one after another), i.e. {} hosts reached per second.\n",
            per_host * 1e6,
            per_host / s.as_secs_f64().max(1e-9),
            ms(Some(s)),
            report::rate(n as f64 / all.as_secs_f64().max(1e-9)),
        );
        // CPU per host reached: unlike the times, robust to a machine that
        // other work keeps busy.
        let per = |c: Option<f64>| {
            c.map(|c| format!("{:.0} µs", c * all.as_secs_f64() / n as f64 * 1e6))
                .unwrap_or_else(|| "–".into())
        };
        if let (Some(w), Some(c)) = (r.pg_writes, r.pg_commits) {
            out += &format!(
                "PostgreSQL transactions per host reached: {:.2} writing, {:.2} in all.\n",
                w as f64 / n as f64,
                c as f64 / n as f64
            );
        }
        out += &format!(
            "CPU per host reached: servers {}, simulated hosts {}{}.\n",
            per(r.reach_cpu),
            per(r.sim_reach_cpu),
            if r.servers > 1 {
                format!(", PostgreSQL {}", per(r.pg_reach_cpu))
            } else {
                String::new()
            },
        );
    }
    // The largest server's peak.
    let hwm = r
        .rss_after
        .iter()
        .chain(&r.rss_polling)
        .map(|m| m.1)
        .fold(0.0, f64::max);
    let verdict = |ok: bool| if ok { "**met**" } else { "**not met**" };
    let reach_all = all
        .map(|d| format!("{:.2} s", d.as_secs_f64()))
        .unwrap_or_else(|| "not all reached".into());
    if r.servers > 1 && n >= TARGET_SCALE_HOSTS {
        out += &format!(
            "\nTargets (issue 20, {TARGET_SCALE_HOSTS} hosts over two servers):\n\n- each server under {TARGET_SCALE_RSS_MIB:.0} MB RSS (compared as MiB): largest peak {} MiB (VmHWM), {}.\n- a revocation on one server reaches every host in under {} s: {reach_all}, {}.\n",
            report::mib(hwm),
            verdict(hwm < TARGET_SCALE_RSS_MIB),
            TARGET_REACH.as_secs(),
            verdict(all.is_some_and(|d| d < TARGET_REACH)),
        );
    } else if r.servers > 1 {
        out += &format!(
            "\nIssue 20's targets are for {TARGET_SCALE_HOSTS} hosts over two servers (each under {TARGET_SCALE_RSS_MIB:.0} MB RSS, revocation to all under {} s); this run had {n} over {}: largest peak RSS {} MiB, revocation to all {reach_all}.\n",
            TARGET_REACH.as_secs(),
            r.servers,
            report::mib(hwm),
        );
    } else if n >= TARGET_HOSTS {
        out += &format!(
            "\nTargets (issue 9, {TARGET_HOSTS} hosts):\n\n- server RSS under {TARGET_RSS_MIB:.0} MB (compared as MiB): peak {} MiB (VmHWM), {}.\n- a revocation reaches all hosts in under {} s: {}, {}.\n",
            report::mib(hwm),
            verdict(hwm < TARGET_RSS_MIB),
            TARGET_REACH.as_secs(),
            all.map(|d| format!("{:.2} s", d.as_secs_f64()))
                .unwrap_or_else(|| "not all reached".into()),
            verdict(all.is_some_and(|d| d < TARGET_REACH)),
        );
    } else {
        out += &format!(
            "\nIssue 9's targets are for {TARGET_HOSTS} hosts (RSS under {TARGET_RSS_MIB:.0} MB, revocation to all under {} s); this run had {n}: peak RSS {} MiB, revocation to all {}.\n",
            TARGET_REACH.as_secs(),
            report::mib(hwm),
            all.map(|d| format!("{:.2} s", d.as_secs_f64()))
                .unwrap_or_else(|| "not reached".into()),
        );
    }
    out += &m.busy_warning();
    out
}
