//! `gatepass-bench acl`: what a large policy costs each request of its
//! tokens, beside a one-path policy in the same run.
//!
//! 1. Over HTTPS against a real `gatepass-server dev`: two tokens, one with a
//!    policy of one path (the reference) and one with a policy of 10,000
//!    paths (6,000 exact paths, 3,000 `*` prefixes, 999 rules with a `+`
//!    segment, and the one rule the request needs), each doing
//!    `GET /v1/ssh/roles/bench` one request at a time from a warm client:
//!    the one-path token, the 10,000-path token, the one-path token again.
//!    The difference of the medians is what the large policy adds to a
//!    request: reading the token's policies, finding their compiled ACL,
//!    and the lookup itself.
//! 2. In-process, the parts: `Acl::allows` on the two compiled ACLs (1,000
//!    lookups per timed operation) of the request's path (an exact rule) and
//!    of paths the large policy grants by a `*` prefix and by a `+` rule,
//!    and compiling the large policy
//!    (`Policy::parse` + `Acl::new`), which every request paid before
//!    compiled policies were cached.

use std::time::Duration;

use anyhow::{bail, Context};
use gatepass_server::policy::{Acl, Capability, Policy};
use serde_json::{json, Value};

use crate::machine;
use crate::measure::{self, Budget, Sample, Summary};
use crate::report::{self, Align, Table};
use crate::server::DevServer;
use crate::Common;

const SECTION: &str = "acl";
const REQUEST_PATH: &str = "ssh/roles/bench";
/// Paths the large policy grants through a `*` prefix and a `+` rule.
const PREFIX_PATH: &str = "secret/team-1500/app/db";
const PLUS_PATH: &str = "kv/team-500/app/config";
const LARGE_PATHS: usize = 10_000;
/// Issue 14's target for what a 10,000-path policy may add to a request.
const TARGET_ADDED: Duration = Duration::from_micros(100);
/// In-process lookups per timed operation: one is too short to time alone.
const LOOKUPS_PER_OP: u32 = 1000;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
}

impl Args {
    pub fn with(common: Common) -> Args {
        Args { common }
    }
}

fn small_policy() -> String {
    format!("path \"{REQUEST_PATH}\" {{ capabilities = [\"read\"] }}\n")
}

/// 10,000 paths of the usual shapes; only the last one grants the request.
fn large_policy() -> String {
    let mut text = String::with_capacity(LARGE_PATHS * 64);
    for i in 0..6000 {
        text += &format!("path \"ssh/creds/app-{i}\" {{ capabilities = [\"update\"] }}\n");
    }
    for i in 0..3000 {
        text += &format!("path \"secret/team-{i}/*\" {{ capabilities = [\"read\", \"list\"] }}\n");
    }
    for i in 0..999 {
        text += &format!("path \"kv/team-{i}/+/config\" {{ capabilities = [\"read\"] }}\n");
    }
    text += &small_policy();
    text
}

struct Row {
    what: String,
    /// Operations per timed unit (1, or [`LOOKUPS_PER_OP`]).
    per_op: u32,
    summary: Summary,
    ops: u64,
}

fn row(what: String, per_op: u32, sample: Sample) -> Row {
    let ops = sample.ops;
    let summary = sample.summarize();
    let r = Row {
        what,
        per_op,
        summary,
        ops,
    };
    eprintln!(
        "  {:<60} p50 {} µs, mean {} µs, {} errors",
        r.what,
        micros(r.p50()),
        micros(r.mean()),
        r.summary.errors
    );
    r
}

impl Row {
    fn p50(&self) -> Option<Duration> {
        self.summary.p50.map(|d| d / self.per_op)
    }

    fn p99(&self) -> Option<Duration> {
        self.summary.p99.map(|d| d / self.per_op)
    }

    /// Mean time per operation (one at a time: the inverse of the rate).
    fn mean(&self) -> Option<Duration> {
        (self.summary.rate > 0.0)
            .then(|| Duration::from_secs_f64(1.0 / self.summary.rate / f64::from(self.per_op)))
    }
}

fn micros(d: Option<Duration>) -> String {
    match d {
        Some(d) if d < Duration::from_micros(10) => format!("{:.3}", d.as_secs_f64() * 1e6),
        Some(d) => format!("{:.1}", d.as_secs_f64() * 1e6),
        None => "–".into(),
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let budget = args.common.budget()?;
    let server_bin = args.common.server_bin()?;
    let machine = machine::describe();
    let (small, large) = (small_policy(), large_policy());
    let mut rows = DevServer::around(&server_bin, |server, rt| {
        rt.block_on(over_https(server, budget, &small, &large))
    })?;
    rows.extend(in_process(budget, &small, &large)?);
    let body = section(&machine, budget, &rows);
    report::publish(args.common.write.as_deref(), SECTION, &body)?;
    report::fail_on_errors(
        "requests",
        rows.iter().map(|r| (r.what.to_string(), &r.summary)),
    )
}

async fn token_with(
    server: &DevServer,
    client: &reqwest::Client,
    name: &str,
    text: &str,
) -> anyhow::Result<String> {
    server
        .write(
            client,
            &format!("sys/policies/acl/{name}"),
            &json!({ "policy": text }),
        )
        .await?;
    let v = server
        .write(client, "auth/token/create", &json!({ "policies": [name] }))
        .await?;
    Ok(v.pointer("/auth/client_token")
        .and_then(Value::as_str)
        .context("auth/token/create returned no client_token")?
        .to_string())
}

async fn timed_reads(client: &reqwest::Client, url: &str, token: &str, budget: Budget) -> Sample {
    let read = || async {
        let r = client.get(url).header("X-Vault-Token", token).send().await;
        crate::load::answer(r).await.map(|_| ())
    };
    let warm_end = std::time::Instant::now() + budget.warmup;
    while std::time::Instant::now() < warm_end {
        let _ = read().await;
    }
    let mut s = Sample::default();
    let start = std::time::Instant::now();
    while s.total() < measure::MAX_OPS && start.elapsed() < budget.measure {
        let t0 = std::time::Instant::now();
        let outcome = read().await;
        s.record(t0.elapsed(), outcome);
    }
    s.elapsed = start.elapsed();
    s
}

async fn over_https(
    server: &DevServer,
    budget: Budget,
    small: &str,
    large: &str,
) -> anyhow::Result<Vec<Row>> {
    let client = server.client()?;
    server.ca_and_user_role(&client, "bench").await?;
    let small_token = token_with(server, &client, "bench-one-path", small).await?;
    let large_token = token_with(server, &client, "bench-10000-paths", large).await?;
    let url = server.url(REQUEST_PATH);
    let mut rows = Vec::new();
    for (what, token) in [
        ("one-path policy (reference, start)", &small_token),
        ("10,000-path policy", &large_token),
        ("one-path policy (reference, end)", &small_token),
    ] {
        let sample = timed_reads(&client, &url, token, budget).await;
        rows.push(row(
            format!("HTTPS `GET /v1/{REQUEST_PATH}`, token with a {what}"),
            1,
            sample,
        ));
    }
    Ok(rows)
}

fn in_process(budget: Budget, small: &str, large: &str) -> anyhow::Result<Vec<Row>> {
    let small = Policy::parse("small", small)?;
    let large = Policy::parse("large", large)?;
    if large.rules().count() != LARGE_PATHS {
        bail!("the large policy has {} paths", large.rules().count());
    }
    let mut rows = Vec::new();
    // The request's own path is an exact rule; the others are found by the
    // prefix search and the `+` rules (granted in the large policy only).
    let lookups: [(&str, &Policy, &str, bool); 6] = [
        ("one-path policy (reference)", &small, REQUEST_PATH, true),
        ("10,000-path policy", &large, REQUEST_PATH, true),
        ("one-path policy (reference)", &small, PREFIX_PATH, false),
        ("10,000-path policy", &large, PREFIX_PATH, true),
        ("one-path policy (reference)", &small, PLUS_PATH, false),
        ("10,000-path policy", &large, PLUS_PATH, true),
    ];
    for (what, policy, path, granted) in lookups {
        let acl = Acl::new([policy]);
        let sample = measure::serial(budget, || {
            for _ in 0..LOOKUPS_PER_OP {
                if acl.allows(std::hint::black_box(path), Capability::Read) != granted {
                    return Err(format!("the lookup of {path} did not answer {granted}"));
                }
            }
            Ok(())
        });
        rows.push(row(
            format!("in-process `Acl::allows` of `{path}`, compiled {what}"),
            LOOKUPS_PER_OP,
            sample,
        ));
    }
    let text = large_policy();
    let sample = measure::serial(budget, || {
        let p = Policy::parse("large", &text).map_err(|e| e.to_string())?;
        let acl = Acl::new([&p]);
        match acl.allows(REQUEST_PATH, Capability::Read) {
            true => Ok(()),
            false => Err("the compiled policy denied the request".into()),
        }
    });
    rows.push(row(
        "in-process compile of the 10,000-path policy (`Policy::parse` + `Acl::new`; before this cache, every request)".into(),
        1,
        sample,
    ));
    Ok(rows)
}

fn section(m: &machine::Machine, budget: Budget, rows: &[Row]) -> String {
    let mut t = Table::new(&[
        ("measurement", Align::Left),
        ("ops", Align::Right),
        ("p50 µs", Align::Right),
        ("p99 µs", Align::Right),
        ("mean µs", Align::Right),
        ("errors", Align::Right),
    ]);
    for r in rows {
        t.push(vec![
            r.what.clone(),
            (r.ops * u64::from(r.per_op)).to_string(),
            micros(r.p50()),
            micros(r.p99()),
            micros(r.mean()),
            r.summary.errors.to_string(),
        ]);
    }
    let find = |part: &str| rows.iter().find(|r| r.what.contains(part));
    let avg = |a: Option<Duration>, b: Option<Duration>| Some((a? + b?) / 2);
    let (start, end, large) = (
        find("reference, start"),
        find("reference, end"),
        find("HTTPS `GET /v1/ssh/roles/bench`, token with a 10,000"),
    );
    let added = |f: fn(&Row) -> Option<Duration>| -> Option<f64> {
        let reference = avg(f(start?), f(end?))?;
        Some(f(large?)?.as_secs_f64() - reference.as_secs_f64())
    };
    let ms = |v: Option<f64>| match v {
        Some(v) => format!("{:.3} ms", v * 1e3),
        None => "–".into(),
    };
    let (p50, mean) = (added(Row::p50), added(Row::mean));
    let met = match (p50, mean) {
        (Some(a), Some(b)) if a.max(b) < TARGET_ADDED.as_secs_f64() => "**met**",
        (Some(_), Some(_)) => "**not met**",
        _ => "not measured",
    };
    format!(
        "{}; {:.1} s per measurement after a {:.1} s warm-up, one request at a time.{}\n\n{}\n\
         Target (issue 14) — a 10,000-path policy adds less than 0.1 ms per request: \
         over HTTPS it added {} at the median and {} on average over the one-path \
         policy (the mean of the start and end references): {met}.\n",
        m.measured_on(),
        budget.measure.as_secs_f64(),
        budget.warmup.as_secs_f64(),
        m.busy_warning(),
        t.to_markdown(),
        ms(p50),
        ms(mean),
    )
}
