//! Concurrent HTTPS load: N clients, each a tokio task with its own
//! keep-alive connection, sending one request after another (closed loop),
//! and an open-loop pacer that starts requests at a fixed rate whatever the
//! answers do.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::measure::{Sample, MAX_OPS};

/// A request error with its causes, on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s += &format!(": {c}");
        cur = c.source();
    }
    s
}

/// Reads the whole answer (as a client must to reuse the connection); its
/// text when the status is a success.
pub async fn answer(r: Result<reqwest::Response, reqwest::Error>) -> Result<String, String> {
    let r = r.map_err(|e| chain(&e))?;
    let status = r.status();
    let text = r.text().await.map_err(|e| chain(&e))?;
    if !status.is_success() {
        return Err(format!("{status}: {}", text.trim()));
    }
    Ok(text)
}

/// Runs `op` on every client concurrently, back to back, until `deadline`
/// (from the common start) has passed or `op` says there is no more work
/// (`None`). The sample's elapsed time runs from the common start to the
/// last client's last answer.
pub async fn closed_loop<F, Fut>(
    clients: &[reqwest::Client],
    deadline: Option<Duration>,
    op: F,
) -> anyhow::Result<Sample>
where
    F: Fn(reqwest::Client) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<Result<(), String>>> + Send + 'static,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let end = deadline.map(|d| start + d);
    let tasks: Vec<_> = clients
        .iter()
        .cloned()
        .map(|client| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut s = Sample::default();
                while s.total() < MAX_OPS {
                    let t0 = Instant::now();
                    if end.is_some_and(|e| t0 >= e) {
                        break;
                    }
                    let Some(outcome) = op(client.clone()).await else {
                        break;
                    };
                    s.record(t0.elapsed(), outcome);
                }
                s
            })
        })
        .collect();
    let mut total = Sample::default();
    for t in tasks {
        total.merge(t.await?);
    }
    total.elapsed = start.elapsed();
    Ok(total)
}

/// [`closed_loop`] for clients that each own their connection (the lean
/// [`crate::h1::Conn`]): `op` gets the connection and hands it back with
/// the outcome.
pub async fn closed_loop_owned<C, F, Fut>(
    conns: Vec<C>,
    deadline: Option<Duration>,
    op: F,
) -> anyhow::Result<(Sample, Vec<C>)>
where
    C: Send + 'static,
    F: Fn(C) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = (C, Option<Result<(), String>>)> + Send + 'static,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let end = deadline.map(|d| start + d);
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|conn| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut s = Sample::default();
                let mut conn = conn;
                while s.total() < MAX_OPS {
                    let t0 = Instant::now();
                    if end.is_some_and(|e| t0 >= e) {
                        break;
                    }
                    let (back, outcome) = op(conn).await;
                    conn = back;
                    let Some(outcome) = outcome else {
                        break;
                    };
                    s.record(t0.elapsed(), outcome);
                }
                (s, conn)
            })
        })
        .collect();
    let mut total = Sample::default();
    let mut back = Vec::with_capacity(tasks.len());
    for t in tasks {
        let (s, conn) = t.await?;
        total.merge(s);
        back.push(conn);
    }
    total.elapsed = start.elapsed();
    Ok((total, back))
}

/// A shared list of one-time items (OTPs), each handed out once.
pub struct Pool {
    items: Vec<String>,
    next: AtomicUsize,
}

impl Pool {
    pub fn new(items: Vec<String>) -> Arc<Pool> {
        Arc::new(Pool {
            items,
            next: AtomicUsize::new(0),
        })
    }

    pub fn take(&self) -> Option<&str> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.items.get(i).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }
}

/// What the pacer did besides the sample.
#[derive(Clone, Copy, Debug, Default)]
pub struct Pacing {
    /// Requests started per second over the run.
    pub started_rate: f64,
    /// The largest delay of a start behind its schedule.
    pub max_lag: Duration,
}

/// Open loop: starts request `i` at `i / rate` seconds after the start, on
/// client `i mod clients`, without waiting for earlier answers; `count`
/// requests in all. Each latency runs from the request's actual start to
/// its answer; how late starts were is in [`Pacing`].
pub async fn paced<F, Fut>(
    clients: &[reqwest::Client],
    rate: f64,
    count: usize,
    op: F,
) -> anyhow::Result<(Sample, Pacing)>
where
    F: Fn(reqwest::Client) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    anyhow::ensure!(!clients.is_empty() && rate > 0.0, "clients and a rate");
    let op = Arc::new(op);
    let results = Arc::new(Mutex::new(Sample::default()));
    let start = Instant::now();
    let mut max_lag = Duration::ZERO;
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        max_lag = max_lag.max(Instant::now().saturating_duration_since(due));
        let client = clients[i % clients.len()].clone();
        let op = op.clone();
        let results = results.clone();
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let outcome = op(client).await;
            let took = t0.elapsed();
            if let Ok(mut s) = results.lock() {
                s.record(took, outcome);
            }
        }));
    }
    let started = start.elapsed();
    for t in tasks {
        t.await?;
    }
    let elapsed = start.elapsed();
    let mut sample = std::mem::take(&mut *results.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    sample.elapsed = elapsed;
    let started_rate = if count > 1 {
        (count - 1) as f64 / started.as_secs_f64().max(1e-9)
    } else {
        0.0
    };
    Ok((
        sample,
        Pacing {
            started_rate,
            max_lag,
        },
    ))
}
