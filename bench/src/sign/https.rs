//! Signing through the HTTPS API of a real `gatepass-server dev`: N clients,
//! each a tokio task with its own keep-alive connection, POST
//! `ssh/sign/<role>` back to back for the time budget.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use gatepass_server::clock::Clock;
use serde_json::{json, Value};
use ssh_key::{Certificate, HashAlg, PublicKey};
use tokio::sync::Barrier;

use crate::measure::{Budget, Sample, MAX_OPS};
use crate::server::DevServer;

pub const ROLE: &str = "bench";

/// A request error with its causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s += &format!(": {c}");
        cur = c.source();
    }
    s
}

/// Gives the mount an ed25519 CA and the benchmark role, signs once and
/// checks the certificate against the CA. Returns the CA's public key.
pub async fn configure(
    server: &DevServer,
    user: &PublicKey,
    role_fields: &Value,
) -> anyhow::Result<String> {
    let client = server.client()?;
    let ca = server
        .write(
            &client,
            "ssh/config/ca",
            &json!({ "key_type": "ssh-ed25519" }),
        )
        .await?;
    let ca_key = ca
        .pointer("/data/public_key")
        .and_then(Value::as_str)
        .context("config/ca returned no public_key")?
        .to_string();
    server
        .write(&client, &format!("ssh/roles/{ROLE}"), role_fields)
        .await?;
    let signed = server
        .write(
            &client,
            &format!("ssh/sign/{ROLE}"),
            &json!({ "public_key": user.to_openssh()? }),
        )
        .await?;
    let text = signed
        .pointer("/data/signed_key")
        .and_then(Value::as_str)
        .context("sign returned no signed_key")?;
    let cert = Certificate::from_openssh(text.trim())?;
    let fp = PublicKey::from_openssh(&ca_key)?.fingerprint(HashAlg::Sha256);
    cert.validate_at(u64::try_from(Clock::System.now())?, [&fp])
        .context("the server's certificate does not verify against its CA")?;
    Ok(ca_key)
}

struct Job {
    /// Parsed once: a client parsing the same URL for every request spends
    /// measurable CPU on it (IDNA included), which the server would lose.
    url: reqwest::Url,
    token: String,
    body: String,
}

/// One signing request; the HTTP version it went over.
async fn sign_once(client: &reqwest::Client, job: &Job) -> Result<reqwest::Version, String> {
    let r = client
        .post(job.url.clone())
        .header("X-Vault-Token", &job.token)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(job.body.clone())
        .send()
        .await
        .map_err(|e| chain(&e))?;
    let status = r.status();
    let version = r.version();
    // Read the whole answer, as a client must to reuse the connection.
    let text = r.text().await.map_err(|e| chain(&e))?;
    if !status.is_success() {
        return Err(format!("{status}: {}", text.trim()));
    }
    if !text.contains("-cert-v01@openssh.com") {
        return Err(format!("no certificate in the answer: {}", text.trim()));
    }
    Ok(version)
}

async fn client_task(
    client: reqwest::Client,
    job: Arc<Job>,
    budget: Budget,
    barrier: Arc<Barrier>,
) -> (Sample, Option<reqwest::Version>) {
    let mut version = None;
    // Warm-up: opens the connection and runs until the warm-up ends. Every
    // task reaches the barrier exactly once, even when requests fail.
    let warm_end = Instant::now() + budget.warmup;
    let mut n = 0u64;
    while n < MAX_OPS && (n == 0 || Instant::now() < warm_end) {
        if let Ok(v) = sign_once(&client, &job).await {
            version = Some(v);
        }
        n += 1;
    }
    barrier.wait().await;
    let mut s = Sample::default();
    let start = Instant::now();
    let deadline = start + budget.measure;
    while s.total() < MAX_OPS {
        let t0 = Instant::now();
        if t0 >= deadline {
            break;
        }
        let outcome = sign_once(&client, &job).await;
        if let Ok(v) = outcome {
            version = Some(v);
        }
        s.record(t0.elapsed(), outcome.map(|_| ()));
    }
    s.elapsed = start.elapsed();
    (s, version)
}

/// `clients` concurrent clients for the budget. The sample's elapsed time is
/// from the common start to the last client's last answer.
pub async fn measure(
    server: &DevServer,
    user: &PublicKey,
    clients: usize,
    http1: bool,
    budget: Budget,
) -> anyhow::Result<(Sample, Option<reqwest::Version>)> {
    if clients == 0 {
        bail!("at least one client");
    }
    let job = Arc::new(Job {
        url: server.url(&format!("ssh/sign/{ROLE}")).parse()?,
        token: server.token.clone(),
        body: json!({ "public_key": user.to_openssh()? }).to_string(),
    });
    // Every client is built before any task starts, so that the barrier
    // below is always complete.
    let http: Vec<reqwest::Client> = (0..clients)
        .map(|_| server.client_for(http1))
        .collect::<anyhow::Result<_>>()?;
    let barrier = Arc::new(Barrier::new(clients + 1));
    let tasks: Vec<_> = http
        .into_iter()
        .map(|client| tokio::spawn(client_task(client, job.clone(), budget, barrier.clone())))
        .collect();
    barrier.wait().await;
    let start = Instant::now();
    let mut total = Sample::default();
    let mut version = None;
    for t in tasks {
        let (s, v) = t.await?;
        total.merge(s);
        version = version.or(v);
    }
    total.elapsed = start.elapsed();
    Ok((total, version))
}
