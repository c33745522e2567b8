//! Time-budgeted measurement: a warm-up, then operations until the budget
//! is spent, with each operation's latency kept for percentiles.

use std::time::{Duration, Instant};

/// Upper bound on operations in one measurement, whatever its duration, so
/// that every loop ends and the latency list stays bounded (40 MB at most).
pub const MAX_OPS: u64 = 5_000_000;

/// How long one measurement runs.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub warmup: Duration,
    pub measure: Duration,
}

impl Budget {
    /// `seconds` of measurement after a warm-up of a fifth of that, between
    /// 0.1 and 1 second.
    pub fn from_seconds(seconds: f64) -> Budget {
        Budget {
            warmup: Duration::from_secs_f64((seconds / 5.0).clamp(0.1, 1.0)),
            measure: Duration::from_secs_f64(seconds),
        }
    }
}

/// The outcome of one measurement (or of one client in a concurrent one).
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Operations that succeeded.
    pub ops: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Wall time of the measured part (not the warm-up).
    pub elapsed: Duration,
    /// Latency of each successful operation, in nanoseconds.
    latencies: Vec<u64>,
}

impl Sample {
    pub fn total(&self) -> u64 {
        self.ops + self.errors
    }

    pub fn record(&mut self, took: Duration, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                self.ops += 1;
                self.latencies
                    .push(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
            }
            Err(e) => {
                self.errors += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(e);
                }
            }
        }
    }

    /// Adds another client's operations; `elapsed` stays as it is (the
    /// caller sets the wall time of the whole concurrent run).
    pub fn merge(&mut self, other: Sample) {
        self.ops += other.ops;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latencies.extend(other.latencies);
    }

    pub fn summarize(mut self) -> Summary {
        self.latencies.sort_unstable();
        let secs = self.elapsed.as_secs_f64();
        Summary {
            rate: if secs > 0.0 {
                self.ops as f64 / secs
            } else {
                0.0
            },
            errors: self.errors,
            first_error: self.first_error,
            p50: percentile(&self.latencies, 50.0),
            p99: percentile(&self.latencies, 99.0),
            p999: percentile(&self.latencies, 99.9),
            max: self.latencies.last().map(|ns| Duration::from_nanos(*ns)),
        }
    }
}

/// Nearest-rank percentile of sorted nanoseconds.
fn percentile(sorted: &[u64], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let i = rank.clamp(1, sorted.len()) - 1;
    sorted.get(i).map(|ns| Duration::from_nanos(*ns))
}

/// What a measurement reports.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Successful operations per second.
    pub rate: f64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
    pub p999: Option<Duration>,
    /// The slowest successful operation.
    pub max: Option<Duration>,
}

/// Runs `op` one call at a time: first for the warm-up, then measured until
/// the budget is spent.
pub fn serial(budget: Budget, mut op: impl FnMut() -> Result<(), String>) -> Sample {
    let warm_end = Instant::now() + budget.warmup;
    let mut n = 0u64;
    while n < MAX_OPS && Instant::now() < warm_end {
        // A failing operation fails again below, where it is counted.
        let _ = op();
        n += 1;
    }
    let mut s = Sample::default();
    let start = Instant::now();
    let deadline = start + budget.measure;
    while s.total() < MAX_OPS {
        let t0 = Instant::now();
        if t0 >= deadline {
            break;
        }
        let outcome = op();
        s.record(t0.elapsed(), outcome);
    }
    s.elapsed = start.elapsed();
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(Duration::from_nanos(50)));
        assert_eq!(percentile(&v, 99.0), Some(Duration::from_nanos(99)));
        assert_eq!(percentile(&[7], 99.0), Some(Duration::from_nanos(7)));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn serial_stops_and_counts() {
        let mut i = 0u32;
        let s = serial(
            Budget {
                warmup: Duration::from_millis(1),
                measure: Duration::from_millis(20),
            },
            || {
                i += 1;
                if i % 2 == 0 {
                    Ok(())
                } else {
                    Err("odd".into())
                }
            },
        );
        assert!(s.ops > 0 && s.errors > 0);
        let sum = s.summarize();
        assert_eq!(sum.first_error.as_deref(), Some("odd"));
        assert!(sum.rate > 0.0);
    }
}
