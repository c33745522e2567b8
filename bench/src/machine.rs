//! What a result was measured on: date, CPU, load, commit, OpenSSH version.

use std::path::Path;
use std::process::{Command, Stdio};

use gatepass_server::clock::Clock;

pub struct Machine {
    /// UTC, `YYYY-MM-DD HH:MM`.
    pub date: String,
    pub nproc: String,
    pub cpu: String,
    /// The 1-minute load average when the run started.
    pub load: String,
    /// Share of all CPUs (0 to 1) busy with other work over the second
    /// before the run.
    pub busy: Option<f64>,
    /// Short commit, with `+ uncommitted changes` when the tree differs.
    pub commit: String,
    pub openssh: String,
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stdin(Stdio::null()).output().ok()?;
    if !out.status.success() {
        return None;
    }
    // `ssh -V` prints on stderr.
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    let s = String::from_utf8_lossy(&text).trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn date(now: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(now) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute()
        ),
        Err(_) => format!("unix time {now}"),
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim() == "model name")
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn commit(repo: &Path) -> String {
    let git = |args: &[&str]| output(Command::new("git").arg("-C").arg(repo).args(args));
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        None => "unknown".into(),
        Some(c) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some();
            if dirty {
                format!("{c} + uncommitted changes")
            } else {
                c
            }
        }
    }
}

/// (busy, total) jiffies of all CPUs together, from /proc/stat.
fn cpu_jiffies() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is
    // already counted in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// How busy the CPUs are over `window`, from 0 to 1.
fn cpu_busy(window: std::time::Duration) -> Option<f64> {
    let (b0, t0) = cpu_jiffies()?;
    std::thread::sleep(window);
    let (b1, t1) = cpu_jiffies()?;
    let total = t1.checked_sub(t0)?;
    (total > 0).then(|| b1.saturating_sub(b0) as f64 / total as f64)
}

/// Describes the machine; takes a second, to see how busy the CPUs are.
pub fn describe() -> Machine {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    Machine {
        date: date(Clock::System.now()),
        nproc: output(&mut Command::new("nproc")).unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.to_string())
                .unwrap_or_else(|_| "unknown".into())
        }),
        cpu: cpu_model(),
        load: std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|t| t.split_whitespace().next().map(String::from))
            .unwrap_or_else(|| "unknown".into()),
        busy: cpu_busy(std::time::Duration::from_secs(1)),
        commit: commit(&repo),
        openssh: output(Command::new("ssh").arg("-V"))
            .and_then(|v| v.split([' ', ',']).next().map(String::from))
            .unwrap_or_else(|| "OpenSSH (version unknown)".into()),
    }
}

impl Machine {
    /// "Measured DATE on CPU (nproc N; CPUs X% busy in the second before
    /// the run, 1-minute load average L), commit C".
    pub fn measured_on(&self) -> String {
        let busy = self
            .busy
            .map(|b| format!("{:.0}%", 100.0 * b))
            .unwrap_or_else(|| "unknown".into());
        format!(
            "Measured {} on {} (nproc {}; CPUs {busy} busy in the second before the run, \
             1-minute load average {}), commit {}",
            self.date, self.cpu, self.nproc, self.load, self.commit
        )
    }

    /// A paragraph (with two leading newlines) when other work kept the
    /// CPUs busy just before the run; empty otherwise.
    pub fn busy_warning(&self) -> String {
        match self.busy.map(|b| 100.0 * b) {
            Some(b) if b >= 20.0 => format!(
                "\n\n**The machine was busy**: other work kept {b:.0}% of the CPUs busy just before \
                 the run, and shared them during it; compare these ratios only with runs on an idle machine."
            ),
            _ => String::new(),
        }
    }
}

/// A process's memory from /proc/PID/status, MiB: (VmRSS, VmHWM); NaN when
/// it cannot be read.
pub fn process_memory(pid: u32) -> (f64, f64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

/// The fields of /proc/PID/stat after the process's name (which may hold
/// spaces and parentheses: they follow the last ')').
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = text.get(text.rfind(')')? + 2..)?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// A process's parent's ID.
pub fn parent_pid(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// A process's user and system CPU time with that of the children it has
/// waited for, in clock ticks.
pub fn process_cpu_and_children_ticks(pid: u32) -> Option<u64> {
    let f = stat_fields(pid)?;
    (11..15).map(|i| f.get(i)?.parse::<u64>().ok()).sum()
}

/// A process's CPU time (user + system), in clock ticks.
pub fn process_cpu_ticks(pid: u32) -> Option<u64> {
    let f = stat_fields(pid)?;
    (11..13).map(|i| f.get(i)?.parse::<u64>().ok()).sum()
}

/// A process's CPU time (user + system) in seconds, from its clock ticks
/// (10 ms each on Linux: only a window of seconds says anything).
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    Some(process_cpu_ticks(pid)? as f64 / per_second)
}
