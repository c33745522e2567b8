//! `gatepass-bench sign`: certificates per second.
//!
//! 1. The reference, `ssh-keygen -s` once per certificate (ed25519 CA at the
//!    start and again at the end of the run, and an RSA-2048 CA).
//! 2. In-process `ssh::sign::sign` per CA key type.
//! 3. `POST /v1/ssh/sign/<role>` on a real `gatepass-server dev` with 1, 4
//!    and 16 concurrent clients (ed25519 CA).
//!
//! Every rate is also given as a ratio to the ssh-keygen rate measured in
//! this run, which is what BENCHMARKS.md records.

mod https;
mod inproc;
mod keygen;

use std::path::Path;

use anyhow::{bail, Context};
use gatepass_server::clock::Clock;
use gatepass_server::ssh::issuers::generate_key;
use ssh_key::{LineEnding, PrivateKey};

use crate::machine;
use crate::measure::{Budget, Sample, Summary};
use crate::report::{self, Align, Table};
use crate::server::DevServer;
use crate::Common;

/// BENCHMARKS.md section this suite owns.
const SECTION: &str = "sign";
/// The project's target: ed25519 signing over HTTPS with this many clients
/// at least this many times the `ssh-keygen -s` rate.
const TARGET_CLIENTS: usize = 16;
const TARGET_RATIO: f64 = 45.0;
const HTTPS_ROW: &str = "HTTPS `POST /v1/ssh/sign/<role>`";
const HTTPS1_ROW: &str = "HTTPS `POST /v1/ssh/sign/<role>`, HTTP/1.1";

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Numbers of concurrent HTTPS clients, one measurement each.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub clients: Vec<usize>,
}

/// A CA key type measured in-process.
struct CaKind {
    label: &'static str,
    key_type: &'static str,
    bits: i64,
}

const CAS: [CaKind; 6] = [
    CaKind {
        label: "ed25519",
        key_type: "ssh-ed25519",
        bits: 0,
    },
    CaKind {
        label: "ecdsa-sha2-nistp256",
        key_type: "ecdsa-sha2-nistp256",
        bits: 0,
    },
    CaKind {
        label: "ecdsa-sha2-nistp384",
        key_type: "ecdsa-sha2-nistp384",
        bits: 0,
    },
    CaKind {
        label: "rsa-2048",
        key_type: "ssh-rsa",
        bits: 2048,
    },
    CaKind {
        label: "rsa-3072",
        key_type: "ssh-rsa",
        bits: 3072,
    },
    CaKind {
        label: "rsa-4096",
        key_type: "ssh-rsa",
        bits: 4096,
    },
];

struct Row {
    what: String,
    ca: &'static str,
    clients: usize,
    summary: Summary,
}

fn summarize(what: &str, ca: &'static str, clients: usize, sample: Sample) -> Row {
    let summary = sample.summarize();
    eprintln!(
        "  {what:<34} {ca:<20} {clients:>3} client(s): {:>9} certs/s, p50 {} ms, p99 {} ms, {} errors",
        report::rate(summary.rate),
        report::millis(summary.p50),
        report::millis(summary.p99),
        summary.errors
    );
    Row {
        what: what.to_string(),
        ca,
        clients,
        summary,
    }
}

fn write_key(key: &PrivateKey, path: &Path) -> anyhow::Result<()> {
    key.write_openssh_file(path, LineEnding::LF)
        .with_context(|| format!("writing {}", path.display()))
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let budget = args.common.budget()?;
    if args.clients.is_empty() || args.clients.iter().any(|c| !(1..=256).contains(c)) {
        bail!("--clients takes numbers from 1 to 256");
    }
    let server_bin = args.common.server_bin()?;
    if !server_bin.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p gatepass-server` (bench/run does), or pass --server-bin",
            server_bin.display()
        );
    }
    let machine = machine::describe();
    let now = Clock::System.now();
    let dir = tempfile::Builder::new()
        .prefix("gatepass-bench-keys-")
        .tempdir()?;

    eprintln!("generating keys (RSA-4096 can take a few seconds)…");
    let user = generate_key("ssh-ed25519", 0)?;
    let user_pub = dir.path().join("user.pub");
    user.public_key()
        .write_openssh_file(&user_pub)
        .context("writing user.pub")?;
    let user = user.public_key().clone();
    let mut cas = Vec::with_capacity(CAS.len());
    for k in &CAS {
        cas.push((k, generate_key(k.key_type, k.bits)?));
    }
    let ca_file = |label: &str| -> anyhow::Result<(std::path::PathBuf, ssh_key::PublicKey)> {
        let (_, key) = cas
            .iter()
            .find(|(k, _)| k.label == label)
            .with_context(|| format!("no {label} CA"))?;
        let path = dir.path().join(format!("ca-{label}"));
        write_key(key, &path)?;
        Ok((path, key.public_key().clone()))
    };
    let (ca_ed, ca_ed_pub) = ca_file("ed25519")?;
    let (ca_rsa, ca_rsa_pub) = ca_file("rsa-2048")?;

    let keygen_what = "`ssh-keygen -s`, a process per cert";
    let mut rows = Vec::new();
    eprintln!("reference: ssh-keygen -s");
    rows.push(summarize(
        &format!("{keygen_what} (start)"),
        "ed25519",
        1,
        keygen::measure(&ca_ed, &ca_ed_pub, &user_pub, budget)?,
    ));
    rows.push(summarize(
        keygen_what,
        "rsa-2048",
        1,
        keygen::measure(&ca_rsa, &ca_rsa_pub, &user_pub, budget)?,
    ));

    eprintln!("in-process: gatepass_server::ssh::sign::sign");
    let role = inproc::role(https::ROLE)?;
    for (k, key) in &cas {
        let issuer = inproc::issuer(key, now)?;
        let sample = inproc::measure(&role, &issuer, &user, budget, now)
            .with_context(|| format!("in-process signing with {}", k.label))?;
        rows.push(summarize("in-process `sign::sign`", k.label, 1, sample));
    }

    eprintln!(
        "HTTPS: POST /v1/ssh/sign/{} on gatepass-server dev",
        https::ROLE
    );
    let version = https_rows(&server_bin, &user, &args.clients, budget, &mut rows)?;

    eprintln!("reference again: ssh-keygen -s");
    rows.push(summarize(
        &format!("{keygen_what} (end)"),
        "ed25519",
        1,
        keygen::measure(&ca_ed, &ca_ed_pub, &user_pub, budget)?,
    ));

    let body = section(&machine, budget, version, &rows)?;
    report::publish(args.common.write.as_deref(), SECTION, &body)?;
    report::fail_on_errors(
        "requests",
        rows.iter().map(|r| {
            (
                format!("{} ({}, {} clients)", r.what, r.ca, r.clients),
                &r.summary,
            )
        }),
    )
}

/// Runs the HTTPS measurements and stops the server, also on failure.
fn https_rows(
    bin: &Path,
    user: &ssh_key::PublicKey,
    clients: &[usize],
    budget: Budget,
    rows: &mut Vec<Row>,
) -> anyhow::Result<Option<reqwest::Version>> {
    DevServer::around(bin, |server, rt| {
        rt.block_on(async {
            https::configure(server, user, &inproc::role_fields()).await?;
            let mut version = None;
            for &c in clients {
                let (sample, v) = https::measure(server, user, c, false, budget).await?;
                version = version.or(v);
                rows.push(summarize(HTTPS_ROW, "ed25519", c, sample));
            }
            // The target's number of clients again over HTTP/1.1 keep-alive,
            // the protocol of most Vault clients (and of wrk).
            if clients.contains(&TARGET_CLIENTS) {
                let (sample, v) =
                    https::measure(server, user, TARGET_CLIENTS, true, budget).await?;
                if v != Some(reqwest::Version::HTTP_11) {
                    bail!("the HTTP/1.1 clients spoke {v:?}");
                }
                rows.push(summarize(HTTPS1_ROW, "ed25519", TARGET_CLIENTS, sample));
            }
            anyhow::Ok(version)
        })
    })
}

fn section(
    m: &machine::Machine,
    budget: Budget,
    version: Option<reqwest::Version>,
    rows: &[Row],
) -> anyhow::Result<String> {
    let keygen = |tag: &str| {
        rows.iter()
            .find(|r| {
                r.ca == "ed25519" && r.what.starts_with("`ssh-keygen") && r.what.ends_with(tag)
            })
            .map(|r| r.summary.rate)
    };
    let (Some(start), Some(end)) = (keygen("(start)"), keygen("(end)")) else {
        bail!("the ssh-keygen reference is missing");
    };
    let reference = (start + end) / 2.0;
    if reference <= 0.0 {
        bail!("the ssh-keygen reference signed nothing");
    }
    let reference_rsa = rows
        .iter()
        .find(|r| r.ca == "rsa-2048" && r.what.starts_with("`ssh-keygen"))
        .map(|r| r.summary.rate)
        .filter(|r| *r > 0.0);

    let mut t = Table::new(&[
        ("measurement", Align::Left),
        ("CA key", Align::Left),
        ("clients", Align::Right),
        ("certs/s", Align::Right),
        ("p50 ms", Align::Right),
        ("p99 ms", Align::Right),
        ("errors", Align::Right),
        ("× ssh-keygen ed25519", Align::Right),
        ("× ssh-keygen same CA", Align::Right),
    ]);
    // Reference rows first, in the order they ran.
    let mut ordered: Vec<&Row> = rows
        .iter()
        .filter(|r| r.what.starts_with("`ssh-keygen"))
        .collect();
    ordered.sort_by_key(|r| (r.ca != "ed25519", r.what.ends_with("(end)")));
    ordered.extend(rows.iter().filter(|r| !r.what.starts_with("`ssh-keygen")));
    for r in ordered {
        let same = match r.ca {
            "ed25519" => Some(reference),
            "rsa-2048" => reference_rsa,
            _ => None,
        };
        t.push(vec![
            r.what.clone(),
            r.ca.to_string(),
            r.clients.to_string(),
            report::rate(r.summary.rate),
            report::millis(r.summary.p50),
            report::millis(r.summary.p99),
            r.summary.errors.to_string(),
            report::ratio(Some(r.summary.rate / reference)),
            report::ratio(same.map(|s| r.summary.rate / s)),
        ]);
    }

    // Either protocol counts: both are HTTPS keep-alive.
    let target = rows
        .iter()
        .filter(|r| r.what.starts_with("HTTPS") && r.clients == TARGET_CLIENTS)
        .map(|r| r.summary.rate / reference)
        .reduce(f64::max);
    let target_line = match target {
        Some(x) if x >= TARGET_RATIO => format!(
            "Target — ed25519 over HTTPS with {TARGET_CLIENTS} clients ≥ {TARGET_RATIO:.0}× `ssh-keygen -s`: \
             measured {x:.1}×, **met**."
        ),
        Some(x) => format!(
            "Target — ed25519 over HTTPS with {TARGET_CLIENTS} clients ≥ {TARGET_RATIO:.0}× `ssh-keygen -s`: \
             measured {x:.1}×, **not met** ({:.0}% of the target).",
            100.0 * x / TARGET_RATIO
        ),
        None => format!(
            "Target — ed25519 over HTTPS with {TARGET_CLIENTS} clients ≥ {TARGET_RATIO:.0}× `ssh-keygen -s`: \
             not measured in this run."
        ),
    };
    // A busy machine slows the reference and the measurements unequally.
    let busy_pct = m.busy.map(|b| 100.0 * b);
    let busy = match busy_pct {
        Some(b) if b >= 20.0 => format!(
            "\n\n**The machine was busy**: other work kept {b:.0}% of the CPUs busy just before \
             the run, and shared them during it; compare these ratios only with runs on an idle machine."
        ),
        _ => String::new(),
    };
    let drift = (start - end).abs() / reference;
    let busy = if drift > 0.15 {
        format!(
            "{busy}\n\n**The reference drifted** by {:.0}% between the start and the end of the run: \
             the load on the machine changed while it ran; run it again.",
            100.0 * drift
        )
    } else {
        busy
    };
    let busy_before = busy_pct
        .map(|b| format!("{b:.0}%"))
        .unwrap_or_else(|| "unknown".into());
    let http = version
        .map(|v| format!("{v:?}"))
        .unwrap_or_else(|| "HTTP (version unknown)".into());
    Ok(format!(
        "Measured {date} on {cpu} (nproc {nproc}; CPUs {busy_before} busy in the second before the run, 1-minute load average {load}), \
         commit {commit}, {openssh}; {secs} s per measurement after a {warm} s warm-up; \
         HTTPS clients spoke {http} unless the row says HTTP/1.1.\n\n\
         {table}\n\
         `ssh-keygen -s` with the ed25519 CA: {start} certs/s at the start of the run, {end} at the end; \
         the ratios use their mean, {mean} certs/s.\n\n\
         {target_line}{busy}\n",
        date = m.date,
        cpu = m.cpu,
        nproc = m.nproc,
        load = m.load,
        commit = m.commit,
        openssh = m.openssh,
        secs = budget.measure.as_secs_f64(),
        warm = budget.warmup.as_secs_f64(),
        table = t.to_markdown(),
        start = report::rate(start),
        end = report::rate(end),
        mean = report::rate(reference),
    ))
}
