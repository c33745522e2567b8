//! `gatepass-bench load`: a load generator for any Vault-compatible server
//! (gatepass or `vault server -dev`), so the two can be compared side by
//! side with the same command. N clients, each a tokio task with its own
//! keep-alive connection, send one request after another (closed loop) for
//! `--seconds`; the result is requests/s, p50, p99, p99.9 and the answers
//! counted by status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::measure::MAX_OPS;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The server, e.g. https://127.0.0.1:8200 (default: $VAULT_ADDR).
    #[arg(long, env = "VAULT_ADDR")]
    pub addr: String,
    /// A PEM CA to trust for HTTPS (default: $VAULT_CACERT, else the
    /// system's roots).
    #[arg(long, env = "VAULT_CACERT", value_name = "PEM")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// Sent as X-Vault-Token (default: $VAULT_TOKEN; none when empty).
    #[arg(long, env = "VAULT_TOKEN", default_value = "", hide_env_values = true)]
    pub token: String,
    /// GET, POST or LIST.
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// The API path, e.g. v1/ssh/sign/my-role.
    #[arg(long)]
    pub path: String,
    /// A JSON body; every `{{uuid}}` in it is replaced by a new random UUID
    /// for each request.
    #[arg(long)]
    pub body: Option<String>,
    /// Concurrent clients, each with its own keep-alive connection.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Seconds to measure, after a warm-up of a fifth of that (0.1 to 1 s).
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Speak HTTP/1.1 only (default: HTTP/2 where TLS offers it).
    #[arg(long)]
    pub http1: bool,
}

fn uuid4() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The body for one request: each `{{uuid}}` replaced by its own UUID.
fn fill(body: &str) -> String {
    let parts: Vec<&str> = body.split("{{uuid}}").collect();
    let mut out = String::with_capacity(body.len() + 36 * parts.len());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out += &uuid4();
        }
        out += p;
    }
    out
}

#[derive(Default)]
struct Tally {
    /// Latencies of 2xx answers, nanoseconds.
    ok: Vec<u64>,
    /// Answers by status ("200", "403", or "error: …" for no answer).
    by_status: BTreeMap<String, u64>,
    first_error: Option<String>,
}

fn percentile(sorted: &[u64], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.clamp(1, sorted.len()) - 1)
        .map(|n| Duration::from_nanos(*n))
}

fn client(args: &Args, ca: Option<&reqwest::Certificate>) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .pool_max_idle_per_host(1)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30));
    if let Some(ca) = ca {
        b = b
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca.clone());
    }
    if args.http1 {
        b = b.http1_only();
    }
    Ok(b.build()?)
}

async fn one(
    c: &reqwest::Client,
    method: &reqwest::Method,
    url: &str,
    token: &str,
    body: Option<&str>,
) -> Result<(u16, String), String> {
    let mut rb = c.request(method.clone(), url);
    if !token.is_empty() {
        rb = rb.header("X-Vault-Token", token);
    }
    if let Some(b) = body {
        rb = rb.header("Content-Type", "application/json").body(fill(b));
    }
    let r = rb.send().await.map_err(|e| crate::load::chain(&e))?;
    let status = r.status().as_u16();
    // Read the whole answer so the connection can be reused.
    let text = r.text().await.map_err(|e| crate::load::chain(&e))?;
    Ok((status, text))
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if !(1..=4096).contains(&args.clients) {
        bail!("--clients takes 1 to 4096");
    }
    if !(0.1..=3600.0).contains(&args.seconds) {
        bail!("--seconds must be between 0.1 and 3600");
    }
    let method = match args.method.to_ascii_uppercase().as_str() {
        "GET" => reqwest::Method::GET,
        "POST" | "PUT" => reqwest::Method::POST,
        "LIST" => reqwest::Method::from_bytes(b"LIST")?,
        m => bail!("--method takes GET, POST or LIST, not {m}"),
    };
    if let Some(b) = &args.body {
        serde_json::from_str::<serde_json::Value>(&fill(b))
            .context("--body is not JSON (after replacing {{uuid}})")?;
    }
    let url = format!(
        "{}/{}",
        args.addr.trim_end_matches('/'),
        args.path.trim_start_matches('/')
    );
    let ca = match &args.ca_cert {
        Some(p) => Some(reqwest::Certificate::from_pem(
            &std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        )?),
        None => None,
    };
    let clients: Vec<reqwest::Client> = (0..args.clients)
        .map(|_| client(args, ca.as_ref()))
        .collect::<anyhow::Result<_>>()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let warmup = Duration::from_secs_f64((args.seconds / 5.0).clamp(0.1, 1.0));
    let measure = Duration::from_secs_f64(args.seconds);
    let shared = Arc::new((method, url.clone(), args.token.clone(), args.body.clone()));
    let (tally, elapsed, version) = rt.block_on(async move {
        // One request per client first: it opens the connection and says
        // whether the request works at all.
        let (m, u, t, b) = &*shared;
        let first = one(&clients[0], m, u, t, b.as_deref()).await;
        match &first {
            Ok((s, text)) if !(200..300).contains(s) => {
                eprintln!("note: the first request answered {s}: {}", text.trim())
            }
            Err(e) => bail!("the first request failed: {e}"),
            _ => {}
        }
        let version = clients[0]
            .get(format!("{}/v1/sys/health", args.addr.trim_end_matches('/')))
            .send()
            .await
            .ok()
            .map(|r| r.version());
        let start = Instant::now();
        let warm_end = start + warmup;
        let end = warm_end + measure;
        let tasks: Vec<_> = clients
            .into_iter()
            .map(|c| {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let (m, u, t, b) = &*shared;
                    let mut tally = Tally::default();
                    let mut n = 0u64;
                    while n < MAX_OPS {
                        let t0 = Instant::now();
                        if t0 >= end {
                            break;
                        }
                        let r = one(&c, m, u, t, b.as_deref()).await;
                        if t0 < warm_end {
                            continue;
                        }
                        n += 1;
                        let key = match r {
                            Ok((s, text)) => {
                                if (200..300).contains(&s) {
                                    tally.ok.push(
                                        u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX),
                                    );
                                } else if tally.first_error.is_none() {
                                    tally.first_error = Some(format!("{s}: {}", text.trim()));
                                }
                                s.to_string()
                            }
                            Err(e) => {
                                if tally.first_error.is_none() {
                                    tally.first_error = Some(e.clone());
                                }
                                "no answer".to_string()
                            }
                        };
                        *tally.by_status.entry(key).or_default() += 1;
                    }
                    tally
                })
            })
            .collect();
        let mut all = Tally::default();
        for t in tasks {
            let t = t.await?;
            all.ok.extend(t.ok);
            for (k, v) in t.by_status {
                *all.by_status.entry(k).or_default() += v;
            }
            all.first_error = all.first_error.or(t.first_error);
        }
        let elapsed = Instant::now().saturating_duration_since(warm_end);
        anyhow::Ok((all, elapsed, version))
    })?;
    let mut ok = tally.ok;
    ok.sort_unstable();
    let total: u64 = tally.by_status.values().sum();
    let secs = elapsed.as_secs_f64().max(1e-9);
    let ms = crate::report::millis;
    println!(
        "{} {url}: {} clients, {:.1} s after a {:.1} s warm-up{}",
        args.method.to_ascii_uppercase(),
        args.clients,
        secs,
        warmup.as_secs_f64(),
        version.map(|v| format!(", {v:?}")).unwrap_or_default()
    );
    println!(
        "requests/s {} (2xx {}/s), p50 {} ms, p99 {} ms, p99.9 {} ms (2xx answers)",
        crate::report::rate(total as f64 / secs),
        crate::report::rate(ok.len() as f64 / secs),
        ms(percentile(&ok, 50.0)),
        ms(percentile(&ok, 99.0)),
        ms(percentile(&ok, 99.9)),
    );
    let counts: Vec<String> = tally
        .by_status
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    println!("answers by status: {}", counts.join(", "));
    if let Some(e) = tally.first_error {
        println!("first error: {e}");
        bail!("{} of {total} requests failed", total - ok.len() as u64);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_fill_each_placeholder() {
        let b = fill(r#"{"a":"{{uuid}}","b":"{{uuid}}"}"#);
        let v: serde_json::Value = serde_json::from_str(&b).unwrap_or_default();
        let (a, c) = (v["a"].as_str().unwrap_or(""), v["b"].as_str().unwrap_or(""));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert_ne!(a, c);
        assert_eq!(fill("{}"), "{}");
    }
}
