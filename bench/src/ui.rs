//! `gatepass-bench ui`: the web UI's pages with a large store behind them.
//!
//! 1. A `gatepass-server dev` sets up its `ssh` mount (CA and a role) and
//!    stops.
//! 2. Its store is seeded in-process, through the domain layer
//!    (`ssh::certs::record`, `pam::sessions::store`: the records and their
//!    indexes, as signing and access write them), with 100,000 certificates
//!    and 10,000 sessions (by default).
//! 3. The server starts again on it; the benchmark signs in to the UI with
//!    the root token and fetches each page one request at a time from a
//!    warm HTTPS client on loopback: every main page, the inventory searched
//!    by key ID, principal and serial and its next page, the session list
//!    filtered by state, user and resource and its next page. Each page's
//!    time is the request's, p50 and p99 of its runs, beside
//!    `GET /v1/sys/health` measured the same way (the reference: what a
//!    request costs before any page work).
//!
//! Issue 19's target: every page under 100 ms on the server.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use gatepass_server::clock::Clock;
use gatepass_server::pam::sessions::{self, Session, Stage};
use gatepass_server::pam::Name;
use gatepass_server::seal::SealKey;
use gatepass_server::ssh::certs::{self, CertRecord};
use gatepass_server::{Core, Options};

use crate::machine;
use crate::measure::{Sample, Summary};
use crate::report::{self, Align, Table};
use crate::server::DevServer;
use crate::Common;

const SECTION: &str = "ui";
const DEFAULT_CERTS: usize = 100_000;
const DEFAULT_SESSIONS: usize = 10_000;
/// Issue 19's target for a page.
const TARGET: Duration = Duration::from_millis(100);
/// Records written per storage transaction while seeding.
const SEED_BATCH: usize = 64;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Certificates in the inventory.
    #[arg(long, default_value_t = DEFAULT_CERTS)]
    pub certs: usize,
    /// PAM sessions stored.
    #[arg(long, default_value_t = DEFAULT_SESSIONS)]
    pub sessions: usize,
    /// Fetches of each page (after two warm-up fetches).
    #[arg(long, default_value_t = 100)]
    pub runs: usize,
}

/// The key ID, principals, user and resource of the n-th seeded record:
/// 1,000 key IDs, 500 principals, 200 users and 50 resources, so each
/// search and filter matches many records and a page is full.
fn key_id(n: usize) -> String {
    format!("user{:04}@example.com-{}", n % 1000, n)
}
fn principal(n: usize) -> String {
    format!("login{:03}", n % 500)
}
fn user(n: usize) -> String {
    format!("userpass-person{:03}", n % 200)
}
fn resource(n: usize) -> String {
    format!("db-{:02}", n % 50)
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if args.certs == 0 || args.sessions == 0 || !(10..=100_000).contains(&args.runs) {
        bail!("--certs and --sessions must be positive, --runs between 10 and 100000");
    }
    let server_bin = args.common.server_bin()?;
    let machine = machine::describe();
    let work = tempfile::Builder::new()
        .prefix("gatepass-bench-ui-")
        .tempdir()?;
    let dir = work.path().join("data");
    let token = format!("bench-{:032x}", rand::random::<u128>());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    eprintln!("  setting up the ssh mount");
    let mut server = DevServer::start_with(&server_bin, Some((&dir, &token)), &[])?;
    let outcome = rt.block_on(async {
        let client = server.client()?;
        server.ca_and_user_role(&client, "bench").await
    });
    server.stop()?;
    outcome?;

    eprintln!(
        "  seeding {} certificates and {} sessions",
        args.certs, args.sessions
    );
    let t0 = Instant::now();
    let serials = rt.block_on(seed(&dir, args.certs, args.sessions))?;
    let seeding = t0.elapsed();
    eprintln!("  seeded in {:.1} s", seeding.as_secs_f64());

    let mut server = DevServer::start_with(&server_bin, Some((&dir, &token)), &[])?;
    let outcome = rt.block_on(measure_pages(&server, args, &serials));
    server.stop()?;
    let rows = outcome.map_err(|e| anyhow::anyhow!("{e:#}\nserver log:\n{}", server.log_tail()))?;

    let body = section(&machine, args, seeding, &rows);
    let name = report::sized(SECTION, args.certs, DEFAULT_CERTS);
    report::publish(args.common.write.as_deref(), &name, &body)?;
    report::fail_on_errors(
        "page fetches",
        rows.iter().map(|r| (r.what.clone(), &r.summary)),
    )?;
    Ok(())
}

/// Writes the records into the stopped dev server's store; returns a few
/// of the serials (to search for).
async fn seed(dir: &Path, n_certs: usize, n_sessions: usize) -> anyhow::Result<Vec<u64>> {
    let seal = SealKey::load(&dir.join("seal.key")).context("the dev server's seal key")?;
    let core = Core::open(Options {
        storage_url: format!("sqlite://{}", dir.join("gatepass.db").display()),
        seal_key: seal,
        audit_path: None,
        clock: Clock::System,
        storage_connections: Default::default(),
    })
    .await?;
    let mount = gatepass_server::mounts::get(&core, "ssh")
        .await?
        .context("the ssh mount")?;
    let issuer = gatepass_server::ssh::issuers::resolve(&core, &mount, "default")
        .await?
        .context("the ssh mount's CA")?;
    let now = core.clock.now();
    // Signed over the last 30 days, valid for a day each; serials as the
    // server makes them (signing second, then a counter).
    let start = now - 30 * 86_400;
    let step = (30 * 86_400 / n_certs as i64).max(1);
    let mut serials = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in (0..n_certs).collect::<Vec<_>>().chunks(SEED_BATCH) {
        let chunk = chunk.to_vec();
        let core = core.clone();
        let mount = mount.clone();
        let issuer_id = issuer.id.clone();
        if let (Some(first), Some(last)) = (chunk.first(), chunk.last()) {
            if first % 10_000 == 0 || *last == n_certs - 1 {
                serials.push(cert_serial(start, step, *first));
            }
        }
        tasks.spawn(async move {
            for n in chunk {
                let signed = start + n as i64 * step;
                let rec = CertRecord {
                    serial: cert_serial(start, step, n),
                    key_id: key_id(n),
                    principals: vec![principal(n), format!("login{:03}", (n + 7) % 500)],
                    cert_type: "user".into(),
                    valid_after: signed as u64,
                    valid_before: (signed + 86_400) as u64,
                    issuer_id: issuer_id.clone(),
                    role: "bench".into(),
                    requested_by: user(n),
                    public_key: String::new(),
                    fingerprint: format!("SHA256:bench{n}"),
                    revoked_at: None,
                };
                certs::record(&core, &mount, &rec).await?;
            }
            anyhow::Ok(())
        });
        // Some transactions in flight at once: the writer commits them
        // together.
        while tasks.len() >= 32 {
            if let Some(r) = tasks.join_next().await {
                r??;
            }
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let s_step = (30 * 86_400 / n_sessions as i64).max(1);
    for chunk in (0..n_sessions).collect::<Vec<_>>().chunks(SEED_BATCH) {
        let chunk = chunk.to_vec();
        let core = core.clone();
        tasks.spawn(async move {
            for n in chunk {
                let created = start + n as i64 * s_step;
                // The newest 20 are still running; the rest ended.
                let stage = if n + 20 >= n_sessions {
                    Stage::Active {
                        started_at: created + 1,
                    }
                } else {
                    Stage::Ended {
                        started_at: Some(created + 1),
                        ended_at: created + 600,
                        reason: gatepass_api::pam::EndReason::Closed,
                        detail: None,
                    }
                };
                let s = Session {
                    id: uuid::Uuid::new_v4().to_string(),
                    resource: Name::parse("resource", &resource(n))?,
                    account: Name::parse("account", "app")?,
                    username: "app".into(),
                    gateway: Name::parse("gateway", "gw1")?,
                    user: user(n),
                    created_at: created,
                    expires_at: if n + 20 >= n_sessions {
                        now + 3600
                    } else {
                        created + 3600
                    },
                    stage,
                    reusable: false,
                    creator: None,
                    creator_person: None,
                };
                sessions::store(&core, &s).await?;
            }
            anyhow::Ok(())
        });
        while tasks.len() >= 32 {
            if let Some(r) = tasks.join_next().await {
                r??;
            }
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    core.storage.close().await;
    Ok(serials)
}

fn cert_serial(start: i64, step: i64, n: usize) -> u64 {
    ((start + n as i64 * step) as u64) << 30 | (n as u64 & ((1 << 30) - 1))
}

struct Row {
    what: String,
    path: String,
    summary: Summary,
    /// Bytes of the page's HTML.
    bytes: usize,
}

async fn measure_pages(
    server: &DevServer,
    args: &Args,
    serials: &[u64],
) -> anyhow::Result<Vec<Row>> {
    let ca = reqwest::Certificate::from_pem(server.ca_pem())?;
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()?;
    let r = http
        .post(format!("{}/ui/login", server.addr))
        .header("origin", &server.addr)
        .form(&[("method", "token"), ("token", server.token.as_str())])
        .send()
        .await?;
    if r.status() != reqwest::StatusCode::SEE_OTHER {
        bail!("signing in answered {}", r.status());
    }
    let cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("no session cookie")?
        .to_string();

    let serial = serials.get(serials.len() / 2).copied().unwrap_or_default();
    let mut pages: Vec<(String, String)> = vec![
        ("health (reference)".into(), "/v1/sys/health".into()),
        ("overview".into(), "/ui/".into()),
        ("SSH CAs".into(), "/ui/ssh".into()),
        ("certificates".into(), "/ui/certs?mount=ssh".into()),
        (
            "certificates by key ID".into(),
            "/ui/certs?mount=ssh&by=key_id&q=user0420%40".into(),
        ),
        (
            "certificates by principal".into(),
            "/ui/certs?mount=ssh&by=principal&q=login123".into(),
        ),
        (
            "certificates by serial".into(),
            format!("/ui/certs?mount=ssh&by=serial&q={serial:x}"),
        ),
        ("sessions".into(), "/ui/sessions".into()),
        (
            "sessions, active".into(),
            "/ui/sessions?state=active".into(),
        ),
        ("sessions, ended".into(), "/ui/sessions?state=ended".into()),
        (
            "sessions by user".into(),
            "/ui/sessions?user=userpass-person042".into(),
        ),
        (
            "sessions by resource, ended".into(),
            "/ui/sessions?resource=db-07&state=ended".into(),
        ),
        ("PAM".into(), "/ui/pam".into()),
        ("hosts".into(), "/ui/hosts".into()),
        ("audit".into(), "/ui/audit".into()),
        ("policies".into(), "/ui/policies".into()),
    ];
    // The second pages, by the cursors the first pages link to.
    for (what, path) in [
        ("certificates, next page", "/ui/certs?mount=ssh"),
        ("sessions, next page", "/ui/sessions"),
    ] {
        let page = fetch(&http, server, &cookie, path).await?;
        let next = page
            .split("id=\"next-page\" href=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .with_context(|| format!("{path} links to no next page"))?
            .replace("&amp;", "&");
        pages.push((what.into(), next));
    }

    let mut rows = Vec::new();
    for (what, path) in pages {
        let mut sample = Sample::default();
        let mut bytes = 0;
        for i in 0..args.runs + 2 {
            let t0 = Instant::now();
            let outcome = fetch(&http, server, &cookie, &path).await;
            let took = t0.elapsed();
            if let Ok(page) = &outcome {
                bytes = page.len();
            }
            // The first two warm the connection and caches.
            if i >= 2 {
                sample.record(took, outcome.map(|_| ()).map_err(|e| format!("{e:#}")));
            }
            sample.elapsed += took;
        }
        let summary = sample.summarize();
        eprintln!(
            "  {:<32} p50 {} ms, p99 {} ms, {} errors",
            what,
            report::millis(summary.p50),
            report::millis(summary.p99),
            summary.errors
        );
        rows.push(Row {
            what,
            path,
            summary,
            bytes,
        });
    }
    Ok(rows)
}

async fn fetch(
    http: &reqwest::Client,
    server: &DevServer,
    cookie: &str,
    path: &str,
) -> anyhow::Result<String> {
    let r = http
        .get(format!("{}{path}", server.addr))
        .header("cookie", cookie)
        .send()
        .await?;
    let status = r.status();
    let text = r.text().await?;
    if !status.is_success() {
        bail!("GET {path}: {status}");
    }
    Ok(text)
}

fn section(machine: &machine::Machine, args: &Args, seeding: Duration, rows: &[Row]) -> String {
    let mut t = Table::new(&[
        ("page", Align::Left),
        ("path", Align::Left),
        ("p50 ms", Align::Right),
        ("p99 ms", Align::Right),
        ("KiB", Align::Right),
        ("under 100 ms (p99)", Align::Left),
    ]);
    for r in rows {
        let ok = match r.summary.p99 {
            Some(d) if r.summary.errors == 0 && d < TARGET => "yes",
            _ => "**no**",
        };
        t.push(vec![
            r.what.clone(),
            format!("`{}`", r.path),
            report::millis(r.summary.p50),
            report::millis(r.summary.p99),
            format!("{:.1}", r.bytes as f64 / 1024.0),
            ok.into(),
        ]);
    }
    format!(
        "{}.{}\n\n{} certificates and {} sessions (seeded in {:.0} s), {} fetches of each page \
         after two warm-up ones, one at a time over HTTPS on loopback, signed in as root.\n\n{}",
        machine.measured_on(),
        machine.busy_warning(),
        args.certs,
        args.sessions,
        seeding.as_secs_f64(),
        args.runs,
        t.to_markdown()
    )
}
