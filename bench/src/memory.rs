//! `gatepass-bench memory`: the server's memory while it issues many OTPs
//! that expire during the run (issue 9: memory must not grow with expired
//! creds).
//!
//! 1. A real `gatepass-server dev`, an OTP role with a short `ttl`, and the
//!    server's storage opened by this process, which only reads it, to count
//!    the leases (through the lease-expiry index: no work for the server).
//! 2. The reference: the server's RSS at start, and after the same clients
//!    sent `GET /v1/sys/health` for `--seconds` (what the connections and
//!    the allocator take without any state).
//! 3. `--creds` `POST /v1/ssh/creds/<role>` by `--clients` keep-alive
//!    clients; at every tenth of them the server's VmRSS and VmHWM, the
//!    leases it stores (and how many have not expired yet) and the size of
//!    its data directory.
//! 4. Once the last OTP has expired: the same again when the lease sweeper
//!    has removed every lease (or `--settle` seconds have passed).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use gatepass_server::clock::Clock;
use gatepass_server::seal::SealKey;
use gatepass_server::storage::Storage;
use serde_json::{json, Value};

use crate::load;
use crate::measure::{Sample, Summary};
use crate::report::{self, Align, Table};
use crate::server::DevServer;
use crate::{machine, Common};

/// The default run's section of BENCHMARKS.md; other counts write
/// `memory-N`, so that the 1,000,000-cred run sits beside the default one.
const SECTION: &str = "memory";
const DEFAULT_CREDS: u64 = 200_000;
const ROLE: &str = "bench-memory";
/// Issue 9's target: RSS under 200 MB after 1,000,000 creds.
const TARGET_CREDS: u64 = 1_000_000;
const TARGET_RSS_MIB: f64 = 200.0;
/// Keys read per storage query when counting leases.
const PAGE: i64 = 100_000;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// OTPs to create; other counts than 200000 write the section `memory-N`.
    #[arg(long, default_value_t = DEFAULT_CREDS)]
    pub creds: u64,
    /// Concurrent keep-alive HTTPS clients.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// The role's ttl in seconds: how long each OTP (and its lease) lives.
    #[arg(long, default_value_t = 5)]
    pub ttl: u64,
    /// Give up waiting for the sweeper to remove every expired lease after
    /// this many seconds past the last OTP's expiry.
    #[arg(long, default_value_t = 300.0)]
    pub settle: f64,
}

impl Args {
    pub fn with(common: Common) -> Args {
        Args {
            common,
            creds: DEFAULT_CREDS,
            clients: 16,
            ttl: 5,
            settle: 300.0,
        }
    }
}

/// The server's `--data-dir`, from its command line.
fn data_dir(pid: u32) -> anyhow::Result<PathBuf> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
    let i = args
        .iter()
        .position(|a| *a == b"--data-dir")
        .context("the server has no --data-dir")?;
    let dir = args.get(i + 1).context("--data-dir without a value")?;
    use std::os::unix::ffi::OsStrExt;
    Ok(PathBuf::from(std::ffi::OsStr::from_bytes(dir)))
}

/// Bytes in the files under `dir` (their length, not blocks).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn file_mib(path: &Path) -> f64 {
    std::fs::metadata(path)
        .map(|m| m.len() as f64 / (1024.0 * 1024.0))
        .unwrap_or(0.0)
}

/// Keys `from <= key < to`, counted a page at a time.
async fn count_keys(st: &Storage, from: &str, to: &str) -> anyhow::Result<u64> {
    let mut from = from.to_string();
    let mut n = 0u64;
    loop {
        let page = st.keys_between(&from, to, PAGE).await?;
        n += page.len() as u64;
        match page.last() {
            // Keys hold no control characters: this is the next possible key.
            Some(last) if page.len() as i64 == PAGE => from = format!("{last}\u{1}"),
            _ => return Ok(n),
        }
    }
}

/// Leases the server stores, and how many of them have not expired at `now`
/// (the rest wait for the sweeper). `lease-exp/<expiry, 16 hex>/<id>` holds
/// one key per lease; `lease-exp0` is the first key after that prefix.
async fn leases(st: &Storage, now: i64) -> anyhow::Result<(u64, u64)> {
    let split = format!("lease-exp/{:016x}/", now.max(0) + 1);
    let due = count_keys(st, "lease-exp/", &split).await?;
    let later = count_keys(st, &split, "lease-exp0").await?;
    Ok((due + later, later))
}

/// One reading of the server.
#[derive(Clone, Debug)]
struct Point {
    label: String,
    /// Creds answered (successes and errors) when it was taken.
    issued: Option<u64>,
    /// Since the first cred request.
    at: Option<Duration>,
    rss: (f64, f64),
    disk: u64,
    /// (stored, of them unexpired).
    leases: Option<(u64, u64)>,
}

async fn point(
    label: String,
    pid: u32,
    dir: &Path,
    st: &Storage,
    issued: Option<u64>,
    at: Option<Duration>,
) -> Point {
    // Memory first: counting leases must not delay the moment measured.
    let rss = machine::process_memory(pid);
    let disk = dir_bytes(dir);
    let leases = leases(st, Clock::System.now()).await.ok();
    Point {
        label,
        issued,
        at,
        rss,
        disk,
        leases,
    }
}

#[derive(Default)]
struct Results {
    http: Option<reqwest::Version>,
    points: Vec<Point>,
    health: Option<Summary>,
    creds: Option<Summary>,
    issue_time: Duration,
    /// From the last cred's answer until no lease was left (None: timed out).
    swept_after: Option<Duration>,
    db_mib: f64,
    wal_mib: f64,
    audit_mib: f64,
}

async fn create_once(c: &reqwest::Client, url: &str, token: &str) -> Result<(), String> {
    let text = load::answer(
        c.post(url)
            .header("X-Vault-Token", token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(r#"{"ip":"127.0.0.1"}"#)
            .send()
            .await,
    )
    .await?;
    // The first answer is checked in full; here it is enough that it is one.
    if !text.contains(r#""key_type":"otp""#) {
        return Err(format!("no OTP in the answer: {}", text.trim()));
    }
    Ok(())
}

async fn measure(server: &DevServer, args: &Args, res: &mut Results) -> anyhow::Result<()> {
    let dir = data_dir(server.pid())?;
    let admin = server.client()?;
    server
        .write(
            &admin,
            &format!("ssh/roles/{ROLE}"),
            &json!({ "key_type": "otp", "default_user": "bench",
                     "cidr_list": "127.0.0.0/8", "ttl": format!("{}s", args.ttl) }),
        )
        .await?;
    let first = server
        .write(
            &admin,
            &format!("ssh/creds/{ROLE}"),
            &json!({ "ip": "127.0.0.1" }),
        )
        .await?;
    if first.pointer("/data/key_type").and_then(Value::as_str) != Some("otp")
        || first.pointer("/lease_duration").and_then(Value::as_u64) != Some(args.ttl)
    {
        bail!("expected an OTP with a {} s lease, got {first}", args.ttl);
    }
    res.http = Some(admin.get(server.url("sys/health")).send().await?.version());

    // The same SQLite file the server writes (WAL allows a reader beside
    // it); this process only reads keys from it.
    let seal = SealKey::load(&dir.join("seal.key"))?;
    let url = format!("sqlite://{}", dir.join("gatepass.db").display());
    let st = Arc::new(Storage::open(&url, &seal).await?);
    let outcome = issue(server, args, &dir, &st, &admin, res).await;
    st.close().await;
    res.db_mib = file_mib(&dir.join("gatepass.db"));
    res.wal_mib = file_mib(&dir.join("gatepass.db-wal"));
    res.audit_mib = file_mib(&dir.join("audit.log"));
    outcome
}

async fn issue(
    server: &DevServer,
    args: &Args,
    dir: &Path,
    st: &Arc<Storage>,
    admin: &reqwest::Client,
    res: &mut Results,
) -> anyhow::Result<()> {
    let (budget, pid) = (args.common.budget()?, server.pid());
    res.points
        .push(point("start (role made)".into(), pid, dir, st, None, None).await);
    let clients: Vec<reqwest::Client> = (0..args.clients)
        .map(|_| server.client())
        .collect::<anyhow::Result<_>>()?;

    eprintln!(
        "  reference: GET /v1/sys/health, {} clients, {} s",
        args.clients, args.common.seconds
    );
    let health = Arc::new(server.url("sys/health"));
    let op = move |c: reqwest::Client| {
        let url = health.clone();
        async move {
            let r = load::answer(c.get(url.as_str()).send().await).await;
            Some(r.map(|_| ()))
        }
    };
    load::closed_loop(&clients, Some(budget.warmup), op.clone()).await?;
    let s = load::closed_loop(&clients, Some(budget.measure), op).await?;
    res.health = Some(s.summarize());
    res.points.push(
        point(
            format!(
                "after `GET /v1/sys/health`, {} clients, {} s (reference)",
                args.clients, args.common.seconds
            ),
            pid,
            dir,
            st,
            None,
            None,
        )
        .await,
    );

    eprintln!(
        "  {} × POST /v1/ssh/creds/{ROLE} (ttl {} s), {} clients",
        args.creds, args.ttl, args.clients
    );
    let left = Arc::new(AtomicU64::new(args.creds));
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let points = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    // Readings at each tenth, taken beside the clients.
    let sampler = {
        let (done, stop, points, st) = (done.clone(), stop.clone(), points.clone(), st.clone());
        let (dir, n) = (dir.to_path_buf(), args.creds);
        tokio::spawn(async move {
            let mut tenth = 1u64;
            while tenth <= 10 && !stop.load(Ordering::Relaxed) {
                let d = done.load(Ordering::Relaxed);
                if d >= n * tenth / 10 {
                    let p = point(
                        format!("{}%", tenth * 10),
                        pid,
                        &dir,
                        &st,
                        Some(d),
                        Some(start.elapsed()),
                    )
                    .await;
                    eprintln!(
                        "  {:>4}: {d} creds, RSS {:.1} MiB, VmHWM {:.1} MiB, leases {:?}",
                        p.label, p.rss.0, p.rss.1, p.leases
                    );
                    if let Ok(mut v) = points.lock() {
                        v.push(p);
                    }
                    tenth += 1;
                } else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };
    let (url, token) = (
        Arc::new(server.url(&format!("ssh/creds/{ROLE}"))),
        Arc::new(server.token.clone()),
    );
    let issued = load::closed_loop(&clients, None, {
        let done = done.clone();
        move |c: reqwest::Client| {
            let (url, token, left, done) = (url.clone(), token.clone(), left.clone(), done.clone());
            async move {
                left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| x.checked_sub(1))
                    .ok()?;
                let r = create_once(&c, &url, &token).await;
                done.fetch_add(1, Ordering::Relaxed);
                Some(r)
            }
        }
    })
    .await;
    let last = Instant::now();
    // The sampler ends by itself after the last tenth; stop it on a failure.
    if issued.is_err() {
        stop.store(true, Ordering::Relaxed);
    }
    sampler.await?;
    let issued: Sample = issued?;
    res.issue_time = issued.elapsed;
    res.creds = Some(issued.summarize());
    res.points
        .extend(points.lock().map(|v| v.clone()).unwrap_or_default());

    // Once the last OTP has expired, the sweeper (every 5 s) must remove
    // every lease; memory is read again when it has.
    let ttl = Duration::from_secs(args.ttl);
    tokio::time::sleep_until((last + ttl + Duration::from_secs(1)).into()).await;
    let deadline = Instant::now() + Duration::from_secs_f64(args.settle);
    eprintln!("  waiting for the sweeper to remove the expired leases…");
    loop {
        // One key is enough to tell; a full count would compete with the
        // sweeper for the CPUs.
        let left = st.keys_between("lease-exp/", "lease-exp0", 1).await?;
        if left.is_empty() {
            res.swept_after = Some(last.elapsed());
            break;
        }
        if Instant::now() >= deadline {
            eprintln!("  leases still stored after {:?}", last.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let label = match res.swept_after {
        Some(d) => format!(
            "every lease swept, {:.0} s after the last cred",
            d.as_secs_f64()
        ),
        None => format!(
            "**not all leases swept** {:.0} s after the last cred",
            last.elapsed().as_secs_f64()
        ),
    };
    let p = point(
        label,
        pid,
        dir,
        st,
        Some(done.load(Ordering::Relaxed)),
        None,
    )
    .await;
    eprintln!(
        "  end: RSS {:.1} MiB, VmHWM {:.1} MiB, leases {:?}",
        p.rss.0, p.rss.1, p.leases
    );
    res.points.push(p);
    // The server still answers (and nothing above broke it).
    load::answer(admin.get(server.url("sys/health")).send().await)
        .await
        .map_err(anyhow::Error::msg)?;
    Ok(())
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    args.common.budget()?;
    if !(1_000..=10_000_000).contains(&args.creds) {
        bail!("--creds takes 1000 to 10000000");
    }
    if !(1..=256).contains(&args.clients) {
        bail!("--clients takes 1 to 256");
    }
    if !(1..=3600).contains(&args.ttl) {
        bail!("--ttl takes 1 to 3600 seconds");
    }
    if !(1.0..=3600.0).contains(&args.settle) {
        bail!("--settle takes 1 to 3600 seconds");
    }
    let server_bin = args.common.server_bin()?;
    let machine = machine::describe();
    let mut res = Results::default();
    DevServer::around(&server_bin, |server, rt| {
        rt.block_on(measure(server, args, &mut res))
    })?;
    let body = section(&machine, args, &res);
    let name = report::sized(SECTION, args.creds as usize, DEFAULT_CREDS as usize);
    report::publish(args.common.write.as_deref(), &name, &body)?;
    for (what, s) in [("sys/health", &res.health), ("creds", &res.creds)] {
        if let Some(s) = s.as_ref().filter(|s| s.errors > 0) {
            bail!(
                "{what}: {} requests failed, first: {}",
                s.errors,
                s.first_error.as_deref().unwrap_or("?")
            );
        }
    }
    Ok(())
}

fn section(m: &machine::Machine, args: &Args, r: &Results) -> String {
    let n = args.creds;
    let http = r
        .http
        .map(|v| format!("{v:?}"))
        .unwrap_or_else(|| "HTTP".into());
    let mut out = format!(
        "{}; {n} OTPs created (`POST /v1/ssh/creds/<role>`, role ttl {} s) by {} keep-alive {http} clients; \
         the reference `GET /v1/sys/health` ran {} s after a {:.1} s warm-up with the same clients.\n\n",
        m.measured_on(),
        args.ttl,
        args.clients,
        args.common.seconds,
        crate::measure::Budget::from_seconds(args.common.seconds)
            .warmup
            .as_secs_f64(),
    );
    let mut t = Table::new(&[
        ("reading", Align::Left),
        ("creds", Align::Right),
        ("elapsed s", Align::Right),
        ("creds/s since the last", Align::Right),
        ("leases stored", Align::Right),
        ("of them unexpired", Align::Right),
        ("data dir MiB", Align::Right),
        ("RSS MiB", Align::Right),
        ("VmHWM MiB", Align::Right),
    ]);
    let mut prev: Option<(u64, Duration)> = Some((0, Duration::ZERO));
    for p in &r.points {
        let rate = match (p.issued, p.at, prev) {
            (Some(i), Some(at), Some((pi, pat))) if at > pat => {
                report::rate((i - pi) as f64 / (at - pat).as_secs_f64())
            }
            _ => "–".into(),
        };
        if let (Some(i), Some(at)) = (p.issued, p.at) {
            prev = Some((i, at));
        }
        let (stored, unexpired) = match p.leases {
            Some((s, u)) => (s.to_string(), u.to_string()),
            None => ("?".into(), "?".into()),
        };
        t.push(vec![
            p.label.clone(),
            p.issued
                .map(|i| i.to_string())
                .unwrap_or_else(|| "–".into()),
            p.at.map(|d| format!("{:.1}", d.as_secs_f64()))
                .unwrap_or_else(|| "–".into()),
            rate,
            stored,
            unexpired,
            report::mib(p.disk as f64 / (1024.0 * 1024.0)),
            report::mib(p.rss.0),
            report::mib(p.rss.1),
        ]);
    }
    out += &t.to_markdown();
    out += "\n";

    let mut notes = Vec::new();
    if let Some(c) = &r.creds {
        notes.push(format!(
            "- creds: {} /s over the whole run ({:.1} s), p50 {} ms, p99 {} ms, {} errors; \
             the reference `sys/health`: {} /s{}.",
            report::rate(c.rate),
            r.issue_time.as_secs_f64(),
            report::millis(c.p50),
            report::millis(c.p99),
            c.errors,
            r.health
                .as_ref()
                .map(|h| report::rate(h.rate))
                .unwrap_or_else(|| "–".into()),
            r.health
                .as_ref()
                .map(|h| format!(", {} errors", h.errors))
                .unwrap_or_default(),
        ));
    }
    let find = |label: &str| r.points.iter().find(|p| p.label == label);
    let reference = r.points.get(1);
    if let (Some(a), Some(b)) = (find("10%"), find("100%")) {
        let (ia, ib) = (a.issued.unwrap_or(0), b.issued.unwrap_or(0));
        let grew = b.rss.0 - a.rss.0;
        let per = if ib > ia {
            format!(
                ", {:.1} bytes per cred",
                grew * 1024.0 * 1024.0 / (ib - ia) as f64
            )
        } else {
            String::new()
        };
        notes.push(format!(
            "- RSS from 10% to 100% of the creds: {} → {} MiB ({:+.1} MiB over {} creds{per}); \
             after the reference: {} MiB.",
            report::mib(a.rss.0),
            report::mib(b.rss.0),
            grew,
            ib.saturating_sub(ia),
            reference
                .map(|p| report::mib(p.rss.0))
                .unwrap_or_else(|| "–".into()),
        ));
    }
    if let Some((stored, unexpired)) = find("100%").and_then(|p| p.leases) {
        notes.push(format!(
            "- leases when the last cred was answered: {stored} stored, {unexpired} of them unexpired \
             (issued within the last ttl), {} expired and waiting for the sweeper; {}.",
            stored - unexpired,
            match r.swept_after {
                Some(d) => format!(
                    "every lease was gone {:.0} s after the last cred",
                    d.as_secs_f64()
                ),
                None => format!(
                    "**leases were still stored** after waiting {:.0} s past the last expiry",
                    args.settle
                ),
            }
        ));
    }
    notes.push(format!(
        "- the data directory at the end: `gatepass.db` {} MiB, its WAL {} MiB, `audit.log` {} MiB \
         (disk, not memory: the audit log and the database's copy of it keep every request).",
        report::mib(r.db_mib),
        report::mib(r.wal_mib),
        report::mib(r.audit_mib)
    ));
    out += &notes.join("\n");
    out += "\n";

    let hwm = r.points.iter().map(|p| p.rss.1).fold(0.0f64, f64::max);
    let verdict = if hwm < TARGET_RSS_MIB {
        "**met**"
    } else {
        "**not met**"
    };
    if n >= TARGET_CREDS {
        out += &format!(
            "\nTarget (issue 9): server RSS under {TARGET_RSS_MIB:.0} MB (compared as MiB, with VmHWM) \
             after {TARGET_CREDS} creds: peak {} MiB, {verdict}.\n",
            report::mib(hwm)
        );
    } else {
        out += &format!(
            "\nIssue 9's target is for {TARGET_CREDS} creds (RSS under {TARGET_RSS_MIB:.0} MB); this run \
             had {n}: peak RSS {} MiB (VmHWM).\n",
            report::mib(hwm)
        );
    }
    out += &m.busy_warning();
    out
}
