//! `gatepass-bench otp`: OTP creations and verifications per second through
//! the HTTPS API of a real `gatepass-server dev`.
//!
//! 1. The reference: `GET /v1/sys/health` with the same clients (an empty
//!    request through the same TLS and HTTP stack), at the start and again
//!    at the end of the run.
//! 2. `POST /v1/ssh/creds/<role> {ip}` with 1, 4 and 16 clients for the time
//!    budget.
//! 3. `POST /v1/ssh/verify {otp}` without a token, each OTP once, from OTPs
//!    created before the clock starts, with 1, 4 and 16 clients.
//! 4. `POST /v1/ssh/verify` started at a fixed rate (open loop, 1,000/s).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::load::{self, Pacing, Pool};
use crate::machine;
use crate::measure::{Budget, Sample, Summary};
use crate::report::{self, Align, Table};
use crate::server::DevServer;
use crate::Common;

const SECTION: &str = "otp";
const ROLE: &str = "bench-otp";
/// Issue 9's targets.
const TARGET_CREDS: f64 = 5000.0;
const TARGET_VERIFY: f64 = 10000.0;
const TARGET_PACED_P99: Duration = Duration::from_millis(2);
/// Clients (connections) the pacer spreads its requests over.
const PACED_CLIENTS: usize = 16;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Numbers of concurrent HTTPS clients, one measurement each.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub clients: Vec<usize>,
    /// OTPs verified in each closed-loop verify measurement (created
    /// beforehand, not timed).
    #[arg(long, default_value_t = 6000)]
    pub verify_otps: usize,
    /// Verifies per second started by the open-loop pacer (0: skip).
    #[arg(long, default_value_t = 1000.0)]
    pub paced_rate: f64,
}

impl Args {
    pub fn with(common: Common, clients: Vec<usize>) -> Args {
        Args {
            common,
            clients,
            verify_otps: 6000,
            paced_rate: 1000.0,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    HealthStart,
    HealthEnd,
    Creds,
    Verify,
    Paced,
}

struct Row {
    kind: Kind,
    clients: usize,
    summary: Summary,
    pacing: Option<Pacing>,
}

fn row(kind: Kind, clients: usize, sample: Sample, pacing: Option<Pacing>) -> Row {
    let summary = sample.summarize();
    eprintln!(
        "  {kind:<12?} {clients:>3} client(s): {:>9}/s, p50 {} ms, p99 {} ms, {} errors",
        report::rate(summary.rate),
        report::millis(summary.p50),
        report::millis(summary.p99),
        summary.errors
    );
    Row {
        kind,
        clients,
        summary,
        pacing,
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let budget = args.common.budget()?;
    if args.clients.is_empty() || args.clients.iter().any(|c| !(1..=256).contains(c)) {
        bail!("--clients takes numbers from 1 to 256");
    }
    if !(100..=1_000_000).contains(&args.verify_otps) {
        bail!("--verify-otps takes 100 to 1000000");
    }
    if !(0.0..=100_000.0).contains(&args.paced_rate) {
        bail!("--paced-rate takes 0 to 100000");
    }
    let server_bin = args.common.server_bin()?;
    let machine = machine::describe();
    let mut rows = Vec::new();
    let version = DevServer::around(&server_bin, |server, rt| {
        rt.block_on(measure_all(server, args, budget, &mut rows))
    })?;

    let body = section(&machine, budget, args, version, &rows)?;
    report::publish(args.common.write.as_deref(), SECTION, &body)?;
    report::fail_on_errors(
        "requests",
        rows.iter()
            .map(|r| (format!("{:?} ({} clients)", r.kind, r.clients), &r.summary)),
    )
}

fn clients(server: &DevServer, n: usize) -> anyhow::Result<Vec<reqwest::Client>> {
    (0..n).map(|_| server.client()).collect()
}

fn health_op(
    url: Arc<String>,
) -> impl Fn(reqwest::Client) -> HealthFut + Clone + Send + Sync + 'static {
    move |c| {
        let url = url.clone();
        Box::pin(async move {
            let text = load::answer(c.get(url.as_str()).send().await).await?;
            if !text.contains("initialized") {
                return Err(format!("not a health answer: {}", text.trim()));
            }
            Ok(())
        })
    }
}

type HealthFut = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

/// Closed loop for the warm-up, then for the budget.
async fn timed<F, Fut>(http: &[reqwest::Client], budget: Budget, op: F) -> anyhow::Result<Sample>
where
    F: Fn(reqwest::Client) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let wrap = |op: F| {
        move |c| {
            let f = op(c);
            async move { Some(f.await) }
        }
    };
    load::closed_loop(http, Some(budget.warmup), wrap(op.clone())).await?;
    load::closed_loop(http, Some(budget.measure), wrap(op)).await
}

pub struct Urls {
    pub health: Arc<String>,
    pub creds: Arc<String>,
    pub verify: Arc<String>,
    pub token: Arc<String>,
    pub creds_body: Arc<String>,
}

pub async fn create_once(c: &reqwest::Client, u: &Urls) -> Result<String, String> {
    let text = load::answer(
        c.post(u.creds.as_str())
            .header("X-Vault-Token", u.token.as_str())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(u.creds_body.to_string())
            .send()
            .await,
    )
    .await?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
    match v.pointer("/data/key").and_then(Value::as_str) {
        Some(k) if v.pointer("/data/key_type").and_then(Value::as_str) == Some("otp") => {
            Ok(k.to_string())
        }
        _ => Err(format!("no OTP in the answer: {}", text.trim())),
    }
}

pub async fn verify_once(c: &reqwest::Client, url: &str, otp: &str) -> Result<(), String> {
    let text = load::answer(
        c.post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(json!({ "otp": otp }).to_string())
            .send()
            .await,
    )
    .await?;
    if !text.contains("\"username\":\"bench\"") {
        return Err(format!("unexpected verify answer: {}", text.trim()));
    }
    Ok(())
}

/// Creates `n` OTPs with 4 clients (not timed).
async fn precreate(http: &[reqwest::Client], u: &Arc<Urls>, n: usize) -> anyhow::Result<Arc<Pool>> {
    let made = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let left = Arc::new(std::sync::atomic::AtomicUsize::new(n));
    let (u2, made2) = (u.clone(), made.clone());
    let s = load::closed_loop(&http[..http.len().min(4)], None, move |c| {
        let (u, made, left) = (u2.clone(), made2.clone(), left.clone());
        async move {
            let claimed = left
                .fetch_update(
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                    |x| x.checked_sub(1),
                )
                .is_ok();
            if !claimed {
                return None;
            }
            Some(create_once(&c, &u).await.and_then(|k| {
                made.lock().map_err(|_| "poisoned".to_string())?.push(k);
                Ok(())
            }))
        }
    })
    .await?;
    if s.errors > 0 {
        bail!(
            "creating OTPs before a verify measurement: {} errors, first: {}",
            s.errors,
            s.first_error.unwrap_or_default()
        );
    }
    let items = std::mem::take(&mut *made.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    Ok(Pool::new(items))
}

/// Every OTP of the pool verified once by the clients, closed loop.
async fn verify_pool(
    http: &[reqwest::Client],
    url: &Arc<String>,
    pool: Arc<Pool>,
) -> anyhow::Result<Sample> {
    let url = url.clone();
    load::closed_loop(http, None, move |c| {
        let (url, pool) = (url.clone(), pool.clone());
        async move {
            let otp = pool.take()?.to_string();
            Some(verify_once(&c, &url, &otp).await)
        }
    })
    .await
}

/// All the measurements; the HTTP version the clients spoke.
async fn measure_all(
    server: &DevServer,
    args: &Args,
    budget: Budget,
    rows: &mut Vec<Row>,
) -> anyhow::Result<Option<reqwest::Version>> {
    let admin = server.client()?;
    server
        .write(
            &admin,
            &format!("ssh/roles/{ROLE}"),
            &json!({ "key_type": "otp", "default_user": "bench", "cidr_list": "127.0.0.0/8" }),
        )
        .await?;
    let u = Arc::new(Urls {
        health: Arc::new(server.url("sys/health")),
        creds: Arc::new(server.url(&format!("ssh/creds/{ROLE}"))),
        verify: Arc::new(server.url("ssh/verify")),
        token: Arc::new(server.token.clone()),
        creds_body: Arc::new(json!({ "ip": "127.0.0.1" }).to_string()),
    });
    // One round trip first: the OTP must verify, once.
    let otp = create_once(&admin, &u).await.map_err(anyhow::Error::msg)?;
    verify_once(&admin, &u.verify, &otp)
        .await
        .map_err(anyhow::Error::msg)
        .context("verifying a fresh OTP")?;
    let version = admin.get(u.health.as_str()).send().await?.version();

    let max = args
        .clients
        .iter()
        .copied()
        .max()
        .unwrap_or(1)
        .max(PACED_CLIENTS);
    let all = clients(server, max)?;

    eprintln!("reference: GET /v1/sys/health");
    for &n in &args.clients {
        let s = timed(&all[..n], budget, health_op(u.health.clone())).await?;
        rows.push(row(Kind::HealthStart, n, s, None));
    }

    eprintln!("POST /v1/ssh/creds/{ROLE}");
    for &n in &args.clients {
        let u2 = u.clone();
        let s = timed(&all[..n], budget, move |c| {
            let u = u2.clone();
            async move { create_once(&c, &u).await.map(|_| ()) }
        })
        .await?;
        rows.push(row(Kind::Creds, n, s, None));
    }

    eprintln!("POST /v1/ssh/verify (OTPs created beforehand)");
    for &n in &args.clients {
        let warm = (50 * n).min(args.verify_otps);
        let warm_pool = precreate(&all, &u, warm).await?;
        let pool = precreate(&all, &u, args.verify_otps).await?;
        let w = verify_pool(&all[..n], &u.verify, warm_pool).await?;
        if w.errors > 0 {
            rows.push(row(Kind::Verify, n, w, None));
            continue;
        }
        let expected = pool.len() as u64;
        let s = verify_pool(&all[..n], &u.verify, pool).await?;
        if s.ops + s.errors != expected {
            bail!("{} of {expected} OTPs verified", s.ops + s.errors);
        }
        rows.push(row(Kind::Verify, n, s, None));
    }

    if args.paced_rate > 0.0 {
        let count = (args.paced_rate * budget.measure.as_secs_f64())
            .ceil()
            .max(1.0) as usize;
        let warm = (args.paced_rate * budget.warmup.as_secs_f64())
            .ceil()
            .max(1.0) as usize;
        eprintln!(
            "POST /v1/ssh/verify at {} verifies/s, open loop ({count} OTPs)",
            args.paced_rate
        );
        let http = &all[..PACED_CLIENTS];
        let warm_pool = precreate(&all, &u, warm).await?;
        let pool = precreate(&all, &u, count).await?;
        let op = |pool: Arc<Pool>| {
            let url = u.verify.clone();
            move |c: reqwest::Client| {
                let (url, pool) = (url.clone(), pool.clone());
                async move {
                    let Some(otp) = pool.take().map(str::to_string) else {
                        return Err("out of OTPs".to_string());
                    };
                    verify_once(&c, &url, &otp).await
                }
            }
        };
        load::paced(http, args.paced_rate, warm, op(warm_pool)).await?;
        let (s, pacing) = load::paced(http, args.paced_rate, count, op(pool)).await?;
        rows.push(row(Kind::Paced, PACED_CLIENTS, s, Some(pacing)));
    }

    eprintln!("reference again: GET /v1/sys/health");
    for &n in &args.clients {
        let s = timed(&all[..n], budget, health_op(u.health.clone())).await?;
        rows.push(row(Kind::HealthEnd, n, s, None));
    }
    Ok(Some(version))
}

fn section(
    m: &machine::Machine,
    budget: Budget,
    args: &Args,
    version: Option<reqwest::Version>,
    rows: &[Row],
) -> anyhow::Result<String> {
    let health = |kind: Kind, n: usize| {
        rows.iter()
            .find(|r| r.kind == kind && r.clients == n)
            .map(|r| r.summary.rate)
    };
    let reference = |n: usize| match (health(Kind::HealthStart, n), health(Kind::HealthEnd, n)) {
        (Some(a), Some(b)) if a + b > 0.0 => Some((a + b) / 2.0),
        _ => None,
    };
    let mut t = Table::new(&[
        ("measurement", Align::Left),
        ("clients", Align::Right),
        ("requests/s", Align::Right),
        ("p50 ms", Align::Right),
        ("p99 ms", Align::Right),
        ("errors", Align::Right),
        ("× sys/health same clients", Align::Right),
    ]);
    let order = [
        Kind::HealthStart,
        Kind::HealthEnd,
        Kind::Creds,
        Kind::Verify,
        Kind::Paced,
    ];
    for kind in order {
        for r in rows.iter().filter(|r| r.kind == kind) {
            let what = match kind {
                Kind::HealthStart => "`GET /v1/sys/health` (reference, start)".to_string(),
                Kind::HealthEnd => "`GET /v1/sys/health` (reference, end)".to_string(),
                Kind::Creds => "`POST /v1/ssh/creds/<role>` (create)".to_string(),
                Kind::Verify => "`POST /v1/ssh/verify` (closed loop)".to_string(),
                Kind::Paced => format!(
                    "`POST /v1/ssh/verify` paced at {}/s (open loop)",
                    report::rate(args.paced_rate)
                ),
            };
            let ratio = match kind {
                Kind::Paced => None,
                _ => reference(r.clients).map(|h| r.summary.rate / h),
            };
            t.push(vec![
                what,
                r.clients.to_string(),
                report::rate(r.summary.rate),
                report::millis(r.summary.p50),
                report::millis(r.summary.p99),
                r.summary.errors.to_string(),
                report::ratio(ratio),
            ]);
        }
    }

    let best = |kind: Kind| {
        rows.iter()
            .filter(|r| r.kind == kind)
            .max_by(|a, b| a.summary.rate.total_cmp(&b.summary.rate))
    };
    let met = |ok: bool| if ok { "**met**" } else { "**not met**" };
    let mut targets = Vec::new();
    match best(Kind::Creds) {
        Some(r) => targets.push(format!(
            "- creations ≥ {TARGET_CREDS:.0}/s: best {} /s ({} clients), {} ({:.0}% of the target).",
            report::rate(r.summary.rate),
            r.clients,
            met(r.summary.rate >= TARGET_CREDS),
            100.0 * r.summary.rate / TARGET_CREDS
        )),
        None => targets.push("- creations: not measured in this run.".into()),
    }
    match best(Kind::Verify) {
        Some(r) => targets.push(format!(
            "- verifications ≥ {TARGET_VERIFY:.0}/s: best {} /s ({} clients), {} ({:.0}% of the target).",
            report::rate(r.summary.rate),
            r.clients,
            met(r.summary.rate >= TARGET_VERIFY),
            100.0 * r.summary.rate / TARGET_VERIFY
        )),
        None => targets.push("- verifications: not measured in this run.".into()),
    }
    let paced = rows.iter().find(|r| r.kind == Kind::Paced);
    match paced {
        Some(r) => {
            let p = r.pacing.unwrap_or_default();
            let kept_up = p.started_rate >= 0.95 * args.paced_rate;
            let p99_ok = r.summary.p99.is_some_and(|d| d < TARGET_PACED_P99);
            targets.push(format!(
                "- verify p99 < {} ms at {} verifies/s: p99 {} ms, {}; the pacer started {} requests/s \
                 (latest start {} ms behind schedule){}.",
                TARGET_PACED_P99.as_millis(),
                report::rate(args.paced_rate),
                report::millis(r.summary.p99),
                met(p99_ok && kept_up && r.summary.errors == 0),
                report::rate(p.started_rate),
                report::millis(Some(p.max_lag)),
                if kept_up { "" } else { ", **below the rate asked for**" }
            ));
        }
        None => targets.push("- verify p99 at a fixed rate: not measured in this run.".into()),
    }

    let drift = args
        .clients
        .iter()
        .filter_map(|&n| {
            let (a, b) = (health(Kind::HealthStart, n)?, health(Kind::HealthEnd, n)?);
            Some((a - b).abs() / ((a + b) / 2.0).max(1e-9))
        })
        .fold(0.0f64, f64::max);
    let drift_line = if drift > 0.15 {
        format!(
            "\n\n**The reference drifted** by up to {:.0}% between the start and the end of the run: \
             the load on the machine changed while it ran; run it again.",
            100.0 * drift
        )
    } else {
        String::new()
    };
    let http = version
        .map(|v| format!("{v:?}"))
        .unwrap_or_else(|| "HTTP (version unknown)".into());
    Ok(format!(
        "{measured}; {secs} s per timed measurement after a {warm} s warm-up, {otps} OTPs per closed-loop \
         verify measurement; HTTPS clients spoke {http}.\n\n\
         {table}\n\
         The ratios divide by the mean of the two `sys/health` rates with the same number of clients.\n\n\
         Targets (issue 9):\n\n{targets}\n\n\
         OpenBao beside gatepass, in one run under the same load: the peers suite.{busy}{drift_line}\n",
        measured = m.measured_on(),
        secs = budget.measure.as_secs_f64(),
        warm = budget.warmup.as_secs_f64(),
        otps = args.verify_otps,
        table = t.to_markdown(),
        targets = targets.join("\n"),
        busy = m.busy_warning(),
    ))
}
