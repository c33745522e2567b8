//! Retention: what the storage no longer needs goes after a set time, and
//! on SQLite the space it took goes back to the file system, so that the
//! data directory stays bounded however many OTPs and certificates are
//! issued, and session recordings go after their configured age (if one
//! is set). Used OTPs and expired leases need none of this: they go when
//! used, and the lease sweeper (`leases::sweeper`) deletes expired ones.
//!
//! Every step is a short write queued with the requests' writes, so a run
//! over millions of records never holds a request up for long.

use std::path::Path;
use std::time::Duration;

use crate::config::Retention;
use crate::error::Result;
use crate::state::{Core, State};

/// How long one step may hold the writer: the requests' writes queue
/// behind it, so a step that took longer makes the next one smaller.
const STEP_TIME: Duration = Duration::from_millis(15);

/// The size of the next step, adapted to how long the last one took: the
/// same number of lines or pages costs more on a cold cache, a slow disk or
/// a busy machine, and what matters to the requests is the time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Step {
    size: i64,
    min: i64,
    max: i64,
}

impl Step {
    /// Audit copy lines deleted per step. Steps never grow past their
    /// first size: bigger quick steps write the WAL faster, and every
    /// 64 MiB of it costs a restart that holds the writer up (see
    /// `storage::sqlite`), which is what requests notice.
    const AUDIT: Step = Step {
        size: 100,
        min: 5,
        max: 100,
    };
    /// Pages (4 KiB) given back to the file system per step.
    const VACUUM: Step = Step {
        size: 32,
        min: 2,
        max: 32,
    };

    /// Halved after a step over [`STEP_TIME`], doubled (back up to `max`)
    /// after one under a quarter of it, within `min..=max`.
    fn after(self, took: Duration) -> Step {
        let size = if took > STEP_TIME {
            self.size / 2
        } else if took < STEP_TIME / 4 {
            self.size * 2
        } else {
            self.size
        };
        Step {
            size: size.clamp(self.min, self.max),
            ..self
        }
    }
}

/// After each step retention waits as long as the step took, so that it
/// takes at most half of the writer's time, and the WAL it fills is copied
/// back by the checkpointer as it goes rather than in one long stall.
async fn pace(took: Duration) {
    tokio::time::sleep(took.max(Duration::from_millis(1))).await;
}

/// What one run removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub audit_lines: u64,
    pub certificates: u64,
    /// Session recordings deleted (`[retention] recordings`).
    pub recordings: u64,
    /// Sessions past their end taken off their gateway's open list.
    pub sessions: u64,
    /// Free pages left in the SQLite file afterwards (0 on PostgreSQL).
    pub free_pages_left: u64,
}

/// One run at `now`.
pub async fn run(core: &Core, cfg: &Retention, now: i64) -> Result<Removed> {
    let mut removed = Removed::default();
    let audit_before = now - secs(cfg.audit_copy);
    let mut step = Step::AUDIT;
    loop {
        let started = std::time::Instant::now();
        let n = core
            .storage
            .prune_audit_copy(audit_before, step.size)
            .await?;
        removed.audit_lines += n;
        if (n as i64) < step.size {
            break;
        }
        let took = started.elapsed();
        step = step.after(took);
        pace(took).await;
    }
    removed.certificates =
        crate::ssh::certs::remove_expired(core, now - secs(cfg.expired_certificates)).await?;
    // The list of open sessions is a small part of the storage; a failure
    // there is logged and does not hold back the recordings' retention.
    match crate::pam::sessions::close_expired(core, now).await {
        Ok(n) => removed.sessions = n,
        Err(e) => tracing::warn!(error = %e, "cannot end the sessions past their end"),
    }
    if let Some(age) = cfg.recordings {
        removed.recordings = crate::pam::recordings::expire(core, now - secs(age), now).await?;
    }
    // Until no free page is left, or a step frees none (another writer
    // freeing pages as fast would otherwise keep this going).
    let mut left = u64::MAX;
    let mut step = Step::VACUUM;
    loop {
        let started = std::time::Instant::now();
        let now_left = core.storage.give_back_space(step.size).await?;
        if now_left == 0 || now_left >= left {
            removed.free_pages_left = now_left;
            break;
        }
        left = now_left;
        let took = started.elapsed();
        step = step.after(took);
        pace(took).await;
    }
    Ok(removed)
}

fn secs(d: Duration) -> i64 {
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
                    recordings = r.recordings,
                    sessions = r.sessions,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_shrink_when_slow_and_grow_when_quick_within_bounds() {
        let ms = Duration::from_millis;
        let s = Step::AUDIT;
        assert_eq!(s.after(ms(40)).size, 50);
        assert_eq!(s.after(ms(10)).size, 100);
        assert_eq!(s.after(ms(1)).size, 100, "never past the first size");
        assert_eq!(
            s.after(ms(40)).after(ms(1)).size,
            100,
            "back up after a slow one"
        );
        let mut slow = s;
        for _ in 0..20 {
            slow = slow.after(ms(100));
        }
        assert_eq!(slow.size, Step::AUDIT.min);
        let mut quick = Step::VACUUM;
        for _ in 0..20 {
            quick = quick.after(ms(0));
        }
        assert_eq!(quick.size, Step::VACUUM.max);
    }
}
