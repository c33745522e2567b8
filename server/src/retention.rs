//! Retention: what the storage no longer needs goes after a set time, and
//! on SQLite the space it took goes back to the file system, so that the
//! data directory stays bounded however many OTPs and certificates are
//! issued. Used OTPs and expired leases need none of this: they go when
//! used, and the lease sweeper (`leases::sweeper`) deletes expired ones.
//!
//! Every step is a short write queued with the requests' writes, so a run
//! over millions of records never holds a request up for long.

use std::path::Path;

use crate::config::Retention;
use crate::error::Result;
use crate::state::{Core, State};

/// Audit copy lines deleted per step, and pages (4 KiB) given back to
/// the file system per step: each step is one write of a few milliseconds
/// that the requests' writes queue behind.
const AUDIT_STEP: i64 = 100;
const VACUUM_STEP: i64 = 32;

/// After each step retention waits as long as the step took, so that it
/// takes at most half of the writer's time, and the WAL it fills is copied
/// back by the checkpointer as it goes rather than in one long stall.
async fn pace(step: std::time::Instant) {
    tokio::time::sleep(step.elapsed().max(std::time::Duration::from_millis(1))).await;
}

/// What one run removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub audit_lines: u64,
    pub certificates: u64,
    /// Free pages left in the SQLite file afterwards (0 on PostgreSQL).
    pub free_pages_left: u64,
}

/// One run at `now`.
pub async fn run(core: &Core, cfg: &Retention, now: i64) -> Result<Removed> {
    let mut removed = Removed::default();
    let audit_before = now - secs(cfg.audit_copy);
    loop {
        let step = std::time::Instant::now();
        let n = core
            .storage
            .prune_audit_copy(audit_before, AUDIT_STEP)
            .await?;
        removed.audit_lines += n;
        if (n as i64) < AUDIT_STEP {
            break;
        }
        pace(step).await;
    }
    removed.certificates =
        crate::ssh::certs::remove_expired(core, now - secs(cfg.expired_certificates)).await?;
    // Until no free page is left, or a step frees none (another writer
    // freeing pages as fast would otherwise keep this going).
    let mut left = u64::MAX;
    loop {
        let step = std::time::Instant::now();
        let now_left = core.storage.give_back_space(VACUUM_STEP).await?;
        if now_left == 0 || now_left >= left {
            removed.free_pages_left = now_left;
            break;
        }
        left = now_left;
        pace(step).await;
    }
    Ok(removed)
}

fn secs(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2)
}

/// Runs retention every `cfg.interval` for the life of the server (the
/// first run one interval after start, so that start-up stays quick).
pub async fn task(core: State, cfg: Retention) {
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let started = std::time::Instant::now();
        match run(&core, &cfg, core.clock.now()).await {
            Ok(r) => {
                core.metrics.retention_ran(r.audit_lines, r.certificates);
                tracing::info!(
                    audit_lines = r.audit_lines,
                    certificates = r.certificates,
                    free_pages_left = r.free_pages_left,
                    seconds = started.elapsed().as_secs_f64(),
                    "retention run done"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "retention run failed; trying again next interval")
            }
        }
    }
}

/// Sets the size gauges (read when `sys/metrics` is scraped).
pub async fn refresh_size_metrics(core: &Core) {
    match core.storage.size_bytes().await {
        Ok(n) => {
            core.metrics.storage_bytes.set(saturate(n));
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the storage's size"),
    }
    if let Some(dir) = core.storage.data_dir() {
        let dir = dir.to_path_buf();
        if let Ok(n) = tokio::task::spawn_blocking(move || dir_size(&dir, 3)).await {
            core.metrics.data_dir_bytes.set(saturate(n));
        }
    }
}

fn saturate(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Bytes of the regular files under `dir`, `depth` levels of folders down.
fn dir_size(dir: &Path, depth: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0;
    for e in entries.flatten() {
        match e.metadata() {
            Ok(m) if m.is_file() => total += m.len(),
            Ok(m) if m.is_dir() && depth > 0 => total += dir_size(&e.path(), depth - 1),
            _ => {}
        }
    }
    total
}
