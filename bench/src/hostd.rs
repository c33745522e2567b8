//! `gatepass-bench hostd`: gatepass-hostd applying a desired state of
//! 10,000 dynamic keys over 1,000 users, time and peak memory.
//!
//! The release `gatepass-hostd-testkit bench-apply DIR --users U --keys K`
//! (hostd's apply code, built with hostd's `testkit` feature) builds
//! the state in memory, renders it, applies it into an empty folder
//! (atomically: temp file, one syncfs, rename, folder fsyncs), applies it
//! again unchanged and once more with one key replaced, and prints its
//! timings as JSON. Its peak RSS is taken from `wait4`'s `ru_maxrss`.
//!
//! References in the same run, over the tree hostd wrote: the same files
//! (same count, sizes and contents) written with plain `std::fs::write` to a
//! temp name and renamed, without fsync, and `cp -r` of the tree (a process,
//! whose peak RSS is taken the same way).
//!
//! Idle hostd: the release `gatepass-hostd run`, enrolled with `setup`
//! against a real `gatepass-server dev` and pointed at a private
//! sshd_config in a temporary folder (no sshd runs on it; hostd only runs
//! `sshd -t`/`-T` on it), started as the shipped systemd unit starts it
//! (notify socket, `WatchdogSec=60s`). Once it has applied its first state:
//! its CPU time and context switches from /proc over `--idle-seconds` in
//! which nothing changes, beside an idle `sleep 3600`; then one revocation,
//! how long hostd takes to apply it and what CPU that costs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use gatepass_server::ssh::issuers::generate_key;
use serde_json::{json, Value};

use crate::machine;
use crate::report::{self, Align, Table};
use crate::server::DevServer;
use crate::Common;

const SECTION: &str = "hostd";
/// Issue 9's targets.
const TARGET_TIME: Duration = Duration::from_secs(1);
const TARGET_RSS_MIB: f64 = 30.0;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    #[arg(long, default_value_t = 10000)]
    pub keys: usize,
    /// Runs of each measurement; the table gives the median (peak RSS: the
    /// largest).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Seconds of the idle window in which hostd's CPU time and context
    /// switches are counted.
    #[arg(long, default_value_t = 10.0)]
    pub idle_seconds: f64,
}

impl Args {
    pub fn with(common: Common) -> Args {
        Args {
            common,
            users: 1000,
            keys: 10000,
            runs: 5,
            idle_seconds: 10.0,
        }
    }
}

/// A child's exit status, wall time and peak RSS (KiB).
struct Waited {
    ok: bool,
    wall: Duration,
    maxrss_kib: u64,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to its end and takes its resource usage with `wait4`.
fn run_measured(cmd: &mut Command) -> anyhow::Result<Waited> {
    use std::io::Read;
    let t0 = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = libc::pid_t::try_from(child.id())?;
    // Small outputs: read them to the end, then reap.
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut o) = child.stdout.take() {
        o.read_to_string(&mut stdout)?;
    }
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut stderr)?;
    }
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, not yet reaped (`Child` only reaps in
    // wait/try_wait, which are never called on it); the pointers are valid.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = t0.elapsed();
    if r != pid {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    Ok(Waited {
        ok,
        wall,
        maxrss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
        stdout,
        stderr,
    })
}

/// Every file under `root`: path relative to it and contents.
fn tree(root: &Path) -> anyhow::Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let e = e?;
            let p = e.path();
            let ft = e.file_type()?;
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                let rel = p.strip_prefix(root)?.to_path_buf();
                out.push((rel, std::fs::read(&p)?));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The reference writer: each file to a temp name with `std::fs::write`,
/// then renamed; folders made as needed; no fsync.
fn plain_write(dest: &Path, files: &[(PathBuf, Vec<u8>)]) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    for (rel, data) in files {
        let path = dest.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        std::fs::write(&tmp, data)?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(t0.elapsed())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn ms(x: f64) -> String {
    report::millis(Some(Duration::from_secs_f64(x.max(0.0) / 1000.0)))
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn fs_type(dir: &Path) -> String {
    Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

struct Run {
    json: Value,
    wall_ms: f64,
    maxrss_kib: u64,
    plain_ms: f64,
    cp_ms: f64,
    cp_rss_kib: u64,
    files: usize,
    bytes: usize,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if !(1..=100).contains(&args.runs) || args.users == 0 || args.keys == 0 {
        bail!("--runs takes 1 to 100, --users and --keys at least 1");
    }
    if !(1.0..=3600.0).contains(&args.idle_seconds) {
        bail!("--idle-seconds takes 1 to 3600");
    }
    let testkit = args.common.sibling_bin("gatepass-hostd-testkit")?;
    let hostd = args.common.sibling_bin("gatepass-hostd")?;
    let machine = machine::describe();
    let base = tempfile::Builder::new()
        .prefix("gatepass-bench-hostd-")
        .tempdir()?;
    let fs = fs_type(base.path());
    let mut runs = Vec::new();
    for i in 0..args.runs {
        let dir = base.path().join(format!("run{i}"));
        std::fs::create_dir_all(&dir)?;
        let hostd_dir = dir.join("hostd");
        let w = run_measured(
            Command::new(&testkit)
                .arg("bench-apply")
                .arg(&hostd_dir)
                .args(["--users", &args.users.to_string()])
                .args(["--keys", &args.keys.to_string()])
                .env("GATEPASS_LOG", "warn"),
        )?;
        if !w.ok {
            bail!(
                "gatepass-hostd-testkit bench-apply failed: {}",
                w.stderr.trim()
            );
        }
        let json: Value = w
            .stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .with_context(|| format!("no JSON in hostd's output: {}", w.stdout))?;
        // The reference writes what hostd wrote (its final tree).
        let files = tree(&hostd_dir)?;
        let bytes = files.iter().map(|(_, d)| d.len()).sum();
        let plain = plain_write(&dir.join("plain"), &files)?;
        let cp = run_measured(
            Command::new("cp")
                .arg("-r")
                .arg(&hostd_dir)
                .arg(dir.join("cp")),
        )?;
        if !cp.ok {
            bail!("cp -r failed: {}", cp.stderr.trim());
        }
        let r = Run {
            json,
            wall_ms: w.wall.as_secs_f64() * 1e3,
            maxrss_kib: w.maxrss_kib,
            plain_ms: plain.as_secs_f64() * 1e3,
            cp_ms: cp.wall.as_secs_f64() * 1e3,
            cp_rss_kib: cp.maxrss_kib,
            files: files.len(),
            bytes,
        };
        let f = |k: &str| r.json.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
        eprintln!(
            "  run {}: render {} ms, first apply {} ms, unchanged {} ms, one key {} ms, process {} ms, \
             peak RSS {} MiB; plain write {} ms; cp -r {} ms ({} files, {} bytes)",
            i + 1,
            ms(f("render_ms")),
            ms(f("first_apply_ms")),
            ms(f("unchanged_apply_ms")),
            ms(f("one_key_changed_ms")),
            ms(r.wall_ms),
            mib(r.maxrss_kib),
            ms(r.plain_ms),
            ms(r.cp_ms),
            r.files,
            r.bytes
        );
        runs.push(r);
        std::fs::remove_dir_all(&dir)?;
    }
    let idle = if Path::new(SSHD).is_file() {
        eprintln!(
            "  idle: gatepass-hostd run enrolled with a dev server, {} s idle, then one revocation",
            args.idle_seconds
        );
        let i = idle(args, &hostd)?;
        eprintln!(
            "  idle {:.1} s: hostd {} ms CPU ({} ticks), {} context switches, RSS {} MiB; \
             sleep {} ms CPU, {} context switches; threads that ran: {}",
            i.hostd.secs,
            ms(i.hostd.cpu_ms(i.hz)),
            i.hostd.ticks,
            i.hostd.switches(),
            mib(i.hostd.rss_kib),
            ms(i.sleep.cpu_ms(i.hz)),
            i.sleep.switches(),
            i.hostd.woke_text()
        );
        eprintln!(
            "  revocation applied after {} ms; {} ms CPU, {} ms in children, {} context switches",
            ms(i.applied.as_secs_f64() * 1e3),
            ms(i.event.cpu_ms(i.hz)),
            ms(i.event.child_ticks as f64 * 1000.0 / i.hz),
            i.event.switches()
        );
        Some(i)
    } else {
        eprintln!("  idle: not measured, {SSHD} (for hostd's `sshd -t`) not found");
        None
    };
    let body = section(&machine, args, &fs, &runs, idle.as_ref())?;
    report::publish(args.common.write.as_deref(), SECTION, &body)?;
    Ok(())
}

fn section(
    m: &machine::Machine,
    args: &Args,
    fs: &str,
    runs: &[Run],
    idle: Option<&Idle>,
) -> anyhow::Result<String> {
    let Some(first) = runs.first() else {
        bail!("no runs");
    };
    let key = |k: &str| {
        median(
            runs.iter()
                .filter_map(|r| r.json.get(k)?.as_f64())
                .collect(),
        )
    };
    let count = |k: &str| {
        first
            .json
            .get(k)
            .and_then(Value::as_u64)
            .map(|n| n.to_string())
            .unwrap_or_else(|| "–".into())
    };
    let plain = median(runs.iter().map(|r| r.plain_ms).collect());
    let cp = median(runs.iter().map(|r| r.cp_ms).collect());
    let wall = median(runs.iter().map(|r| r.wall_ms).collect());
    let rss = runs.iter().map(|r| r.maxrss_kib).max().unwrap_or(0);
    // The process's own high-water mark (VmHWM), which hostd prints.
    let hwm = runs
        .iter()
        .filter_map(|r| r.json.get("peak_rss_kib")?.as_u64())
        .max()
        .unwrap_or(0);
    let cp_rss = runs.iter().map(|r| r.cp_rss_kib).max().unwrap_or(0);
    let render = key("render_ms");
    let first_apply = key("first_apply_ms");
    let apply_total = median(
        runs.iter()
            .filter_map(|r| {
                Some(r.json.get("render_ms")?.as_f64()? + r.json.get("first_apply_ms")?.as_f64()?)
            })
            .collect(),
    );
    let ratio = |x: f64, base: f64| report::ratio((base > 0.0).then(|| x / base));
    let mut t = Table::new(&[
        ("measurement", Align::Left),
        ("files written", Align::Right),
        ("time ms", Align::Right),
        ("peak RSS MiB", Align::Right),
        ("× plain write", Align::Right),
        ("× `cp -r`", Align::Right),
    ]);
    let files = first.files.to_string();
    t.push(vec![
        "plain `std::fs::write` + rename, no fsync (reference)".into(),
        files.clone(),
        ms(plain),
        "–".into(),
        ratio(plain, plain),
        ratio(plain, cp),
    ]);
    t.push(vec![
        "`cp -r` of hostd's tree (reference, a process)".into(),
        files.clone(),
        ms(cp),
        format!("≤ {}", mib(cp_rss)),
        ratio(cp, plain),
        ratio(cp, cp),
    ]);
    t.push(vec![
        "hostd: render the state".into(),
        "–".into(),
        ms(render),
        "–".into(),
        "–".into(),
        "–".into(),
    ]);
    t.push(vec![
        "hostd: first apply into an empty folder".into(),
        count("first_apply_files"),
        ms(first_apply),
        "–".into(),
        ratio(first_apply, plain),
        ratio(first_apply, cp),
    ]);
    t.push(vec![
        "hostd: render + first apply".into(),
        count("first_apply_files"),
        ms(apply_total),
        "–".into(),
        ratio(apply_total, plain),
        ratio(apply_total, cp),
    ]);
    t.push(vec![
        "hostd: render + apply, nothing changed".into(),
        count("unchanged_apply_files"),
        ms(key("unchanged_apply_ms")),
        "–".into(),
        "–".into(),
        "–".into(),
    ]);
    t.push(vec![
        "hostd: render + apply, one key replaced".into(),
        count("one_key_changed_files"),
        ms(key("one_key_changed_ms")),
        "–".into(),
        "–".into(),
        "–".into(),
    ]);
    t.push(vec![
        "hostd: the whole `bench-apply` process, spawn to exit".into(),
        "–".into(),
        ms(wall),
        mib(hwm),
        "–".into(),
        "–".into(),
    ]);
    let met = |ok: bool| if ok { "**met**" } else { "**not met**" };
    let rss_mib = hwm.max(rss) as f64 / 1024.0;
    let hwm_mib = hwm as f64 / 1024.0;
    let (idle_text, idle_target) = match idle {
        Some(i) => (idle_tables(i), idle_target(i)),
        None => (
            format!("Idle hostd: not measured ({SSHD}, which hostd runs as `sshd -t`, was not found).\n\n"),
            String::new(),
        ),
    };
    Ok(format!(
        "{measured}; {users} users, {keys} dynamic keys; {n} runs, each into a new folder on {fs} \
         (the system's temporary folder); times are medians of the runs, peak RSS the largest; \
         hostd's tree: {files} files, {bytes} bytes.\n\n{table}\n{idle_text}\
         Targets (issue 9):\n\n\
         - applying the state (render + first apply) under {tt} ms: {at} ms, {m1}.\n\
         - peak RSS under {tr:.0} MiB: {hwm} MiB (the process's own `VmHWM`; `ru_maxrss` from `wait4`: \
         {rss} MiB, an upper bound), {m2}.\n{idle_target}\n\
         Peak RSS: hostd's row is its own high-water mark (`VmHWM`, which `bench-apply` prints). \
         `ru_maxrss` from `wait4` is only an upper bound on Linux: exec carries the spawning process's \
         high-water mark over into the child's, so it cannot be below the benchmark process's own; \
         the `cp -r` row shows that bound.{busy}\n",
        measured = m.measured_on(),
        users = args.users,
        keys = args.keys,
        n = runs.len(),
        bytes = first.bytes,
        table = t.to_markdown(),
        tt = TARGET_TIME.as_millis(),
        at = ms(apply_total),
        m1 = met(apply_total < TARGET_TIME.as_secs_f64() * 1e3),
        tr = TARGET_RSS_MIB,
        rss = mib(rss),
        hwm = mib(hwm),
        m2 = if rss_mib < TARGET_RSS_MIB {
            met(true)
        } else {
            met(hwm_mib < TARGET_RSS_MIB)
        },
        busy = m.busy_warning(),
    ))
}

// Idle hostd: `gatepass-hostd run` against a real server, between events.

/// OpenSSH's sshd, which hostd runs as `sshd -t`/`-T` on its private config
/// (never as a daemon).
const SSHD: &str = "/usr/sbin/sshd";
/// hostd's long-poll wait (the default `[sync] wait_seconds`): the server
/// answers an unchanged state after this long, and hostd asks again.
const POLL_WAIT: Duration = Duration::from_secs(30);
/// The shipped unit's `WatchdogSec=60s`; hostd pings at half of it.
const WATCHDOG: Duration = Duration::from_secs(60);
/// Issue 9's "idle hostd: no CPU between events", as measured here: under
/// one clock tick of CPU per this much idle time...
const IDLE_TICK_PER: Duration = Duration::from_secs(10);
/// ...and no context switch that a long-poll answer or a watchdog ping does
/// not explain: none in a window without them, at most this many each.
const SWITCHES_PER_EXPECTED: u64 = 20;
const IDLE_ROLE: &str = "bench-idle";
/// After the first state: hostd's ack and its next long-poll go out.
const SETTLE: Duration = Duration::from_secs(2);
/// Counted with an event after it is applied: the ack and the next poll.
const EVENT_TAIL: Duration = Duration::from_secs(1);
const APPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// One thread's counters.
#[derive(Clone, Debug, Default)]
struct ThreadUse {
    name: String,
    voluntary: u64,
    involuntary: u64,
    /// Time on a CPU (schedstat), ns.
    run_ns: u64,
}

/// A process's counters from /proc at one moment.
#[derive(Clone, Debug, Default)]
struct Usage {
    /// utime + stime of all its threads, ended ones included (clock ticks).
    ticks: u64,
    /// cutime + cstime: the children it has reaped (hostd: `sshd -T`/`-t`).
    child_ticks: u64,
    threads: BTreeMap<u32, ThreadUse>,
    rss_kib: u64,
    hwm_kib: u64,
}

fn status_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn usage(pid: u32) -> anyhow::Result<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The name may hold spaces and parentheses; the fields follow the last ')'.
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .context("malformed /proc/PID/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts with field 3 (the state); utime is field 14 (proc(5)).
    let field = |n: usize| -> u64 { f.get(n - 3).and_then(|v| v.parse().ok()).unwrap_or(0) };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let mut u = Usage {
        ticks: field(14) + field(15),
        child_ticks: field(16) + field(17),
        threads: BTreeMap::new(),
        rss_kib: status_field(&status, "VmRSS:").unwrap_or(0),
        hwm_kib: status_field(&status, "VmHWM:").unwrap_or(0),
    };
    // Context switches are counted per thread only.
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(e) = e else { continue };
        let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else {
            continue;
        };
        // A thread may end between the listing and the reads.
        let Ok(st) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let run_ns = std::fs::read_to_string(e.path().join("schedstat"))
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        u.threads.insert(
            tid,
            ThreadUse {
                name: st
                    .lines()
                    .find_map(|l| l.strip_prefix("Name:"))
                    .unwrap_or("")
                    .trim()
                    .to_string(),
                voluntary: status_field(&st, "voluntary_ctxt_switches:").unwrap_or(0),
                involuntary: status_field(&st, "nonvoluntary_ctxt_switches:").unwrap_or(0),
                run_ns,
            },
        );
    }
    Ok(u)
}

/// What a process did between two readings.
#[derive(Clone, Debug, Default)]
struct Spent {
    secs: f64,
    ticks: u64,
    child_ticks: u64,
    run_ns: u64,
    voluntary: u64,
    involuntary: u64,
    /// Threads that were switched in between, by name: (name, threads, switches).
    woke: Vec<(String, usize, u64)>,
    /// Threads that ended in between (their last counts are lost).
    ended: usize,
    rss_kib: u64,
}

impl Spent {
    fn between(a: &Usage, b: &Usage, secs: f64) -> Spent {
        let mut s = Spent {
            secs,
            ticks: b.ticks.saturating_sub(a.ticks),
            child_ticks: b.child_ticks.saturating_sub(a.child_ticks),
            rss_kib: b.rss_kib,
            ended: a
                .threads
                .keys()
                .filter(|t| !b.threads.contains_key(t))
                .count(),
            ..Spent::default()
        };
        let mut woke: BTreeMap<String, (usize, u64)> = BTreeMap::new();
        for (tid, t) in &b.threads {
            // A thread born in between counts from zero.
            let was = a.threads.get(tid).cloned().unwrap_or_default();
            let v = t.voluntary.saturating_sub(was.voluntary);
            let i = t.involuntary.saturating_sub(was.involuntary);
            s.voluntary += v;
            s.involuntary += i;
            s.run_ns += t.run_ns.saturating_sub(was.run_ns);
            if v + i > 0 {
                let w = woke.entry(t.name.clone()).or_default();
                w.0 += 1;
                w.1 += v + i;
            }
        }
        s.woke = woke.into_iter().map(|(n, (t, c))| (n, t, c)).collect();
        s
    }

    fn switches(&self) -> u64 {
        self.voluntary + self.involuntary
    }

    fn per_sec(&self) -> f64 {
        self.switches() as f64 / self.secs.max(1e-9)
    }

    fn cpu_ms(&self, hz: f64) -> f64 {
        self.ticks as f64 * 1000.0 / hz
    }

    fn woke_text(&self) -> String {
        if self.woke.is_empty() {
            return "none".into();
        }
        self.woke
            .iter()
            .map(|(n, t, c)| {
                let threads = if *t > 1 {
                    format!(" ({t} threads)")
                } else {
                    String::new()
                };
                format!("`{n}`{threads}: {c}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A child process, ended (SIGTERM, then SIGKILL) when dropped.
struct Reaped(std::process::Child);

impl Reaped {
    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        use nix::sys::signal::{kill, Signal};
        if let Some(st) = self.0.try_wait()? {
            return Ok(st);
        }
        kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.0.id())?),
            Signal::SIGTERM,
        )?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(st) = self.0.try_wait()? {
                return Ok(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.0.kill()?;
        Ok(self.0.wait()?)
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The systemd notify socket, as the unit's `Type=notify` provides it:
/// every datagram hostd sends, with when it arrived.
struct NotifySocket {
    msgs: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NotifySocket {
    fn bind(path: &Path) -> anyhow::Result<NotifySocket> {
        let sock = std::os::unix::net::UnixDatagram::bind(path)
            .with_context(|| format!("binding {}", path.display()))?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (msgs.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !s.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if let Ok(mut g) = m.lock() {
                        g.push((Instant::now(), text));
                    }
                }
            }
        });
        Ok(NotifySocket {
            msgs,
            stop,
            thread: Some(thread),
        })
    }

    /// Datagrams with the line `what` that arrived between `from` and `to`.
    fn count(&self, what: &str, from: Instant, to: Instant) -> usize {
        self.msgs
            .lock()
            .map(|g| {
                g.iter()
                    .filter(|(t, m)| *t >= from && *t <= to && m.lines().any(|l| l == what))
                    .count()
            })
            .unwrap_or(0)
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The state index hostd's own state file records (written after each
/// apply); None while there is none.
fn applied_index(state_file: &Path) -> Option<u64> {
    let text = std::fs::read(state_file).ok()?;
    let v: Value = serde_json::from_slice(&text).ok()?;
    v.get("index")?.as_u64()
}

fn file_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// What the idle measurement found.
struct Idle {
    hz: f64,
    sleep: Spent,
    hostd: Spent,
    /// Long-poll answers that may have fallen into the window, at most.
    poll_answers: usize,
    watchdog_pings: usize,
    /// From spawning `run` to its first state applied.
    first_state: Duration,
    /// How long before the window hostd's first long-poll began, at most.
    poll_lead: Duration,
    revoke_answered: Duration,
    applied: Duration,
    event: Spent,
    hwm_kib: u64,
}

impl Idle {
    fn expected_wakeups(&self) -> u64 {
        (self.poll_answers + self.watchdog_pings) as u64
    }

    /// See [`IDLE_TICK_PER`] and [`SWITCHES_PER_EXPECTED`].
    fn met(&self) -> bool {
        let cpu_ok = (self.hostd.ticks as f64) * IDLE_TICK_PER.as_secs_f64() < self.hostd.secs;
        let switches_ok = self.hostd.switches() <= SWITCHES_PER_EXPECTED * self.expected_wakeups();
        cpu_ok && switches_ok
    }
}

fn keygen(path: &Path) -> anyhow::Result<()> {
    let out = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "gatepass-bench",
            "-f",
        ])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .context("running ssh-keygen")?;
    if !out.status.success() {
        bail!(
            "ssh-keygen: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Enrolls hostd against a dev server, runs it, and measures it idle and
/// through one revocation. Everything of the host's lives in a temporary
/// folder: no sshd is started or reloaded, /etc/ssh is not read or written.
fn idle(args: &Args, bin: &Path) -> anyhow::Result<Idle> {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let window = Duration::from_secs_f64(args.idle_seconds);
    let tree = tempfile::Builder::new()
        .prefix("gatepass-bench-hostd-idle-")
        .tempdir()?;
    let d = tree.path();
    let (ssh, etc, state_dir) = (d.join("ssh"), d.join("etc"), d.join("state"));
    let dropins = ssh.join("sshd_config.d");
    let managed = ssh.join("gatepass");
    std::fs::create_dir_all(&dropins)?;
    let host_key = ssh.join("ssh_host_ed25519_key");
    keygen(&host_key)?;
    // Includes the drop-in folder first, so hostd uses a drop-in; the PID
    // file is this folder's, so not even a default reload could reach a
    // running sshd (the reload command is `true` anyway).
    let sshd_config = ssh.join("sshd_config");
    std::fs::write(
        &sshd_config,
        format!(
            "# gatepass-bench: checked with `sshd -t`, never run.\n\
             Include {}/*.conf\nHostKey {}\nPidFile {}\n",
            dropins.display(),
            host_key.display(),
            ssh.join("sshd.pid").display()
        ),
    )?;

    let server = DevServer::start(&args.common.server_bin()?)?;
    let ca = d.join("server-ca.pem");
    std::fs::write(&ca, server.ca_pem())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let admin = server.client()?;
    // A CA and one certificate, revoked later as the event.
    let (join, serial) = rt.block_on(async {
        server.ca_and_user_role(&admin, IDLE_ROLE).await?;
        let user = generate_key("ssh-ed25519", 0)?;
        let signed = server
            .write(
                &admin,
                &format!("ssh/sign/{IDLE_ROLE}"),
                &json!({ "public_key": user.public_key().to_openssh()? }),
            )
            .await?;
        let serial = signed
            .pointer("/data/serial_number")
            .and_then(Value::as_str)
            .context("sign returned no serial_number")?
            .to_string();
        let join = server.join_token(&admin, 1).await?;
        anyhow::Ok((join, serial))
    })?;

    let config = etc.join("hostd.toml");
    let out = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .arg("setup")
        .args(["--server", &server.addr, "--join-token", &join, "--ca-cert"])
        .arg(&ca)
        .args(["--include-loopback", "--hostname", "bench-idle.example"])
        .arg("--sshd-config")
        .arg(&sshd_config)
        .arg("--sshd-config-dir")
        .arg(&dropins)
        .arg("--managed-dir")
        .arg(&managed)
        .arg("--sshd")
        .arg(SSHD)
        .arg("--state-dir")
        .arg(&state_dir)
        .args(["--reload-command", "true"])
        .env("GATEPASS_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .context("running gatepass-hostd setup")?;
    if !out.status.success() {
        bail!(
            "gatepass-hostd setup failed:\n{}{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            server.log_tail()
        );
    }
    // Without setup's record, `run` writes its state file only once it has
    // applied the server's state: that file's appearance is the signal.
    let state_file = state_dir.join("state.json");
    std::fs::remove_file(&state_file).context("removing setup's state file")?;

    let notify = NotifySocket::bind(&d.join("notify.sock"))?;
    let log = d.join("hostd.log");
    let spawned = Instant::now();
    // As systemd starts it: a notify socket and a watchdog for this very
    // process (sh sets WATCHDOG_PID to its own pid, which exec keeps).
    let mut hostd = Reaped(
        Command::new("/bin/sh")
            .args([
                "-c",
                "WATCHDOG_PID=$$; export WATCHDOG_PID; exec \"$0\" \"$@\"",
            ])
            .arg(bin)
            .arg("--config")
            .arg(&config)
            .arg("run")
            .env("NOTIFY_SOCKET", d.join("notify.sock"))
            .env("WATCHDOG_USEC", WATCHDOG.as_micros().to_string())
            .env("GATEPASS_LOG", "info")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting gatepass-hostd run")?,
    );
    let pid = hostd.pid();
    let outcome = (|| {
        let index0 = loop {
            if let Some(i) = applied_index(&state_file) {
                break i;
            }
            if let Some(st) = hostd.0.try_wait()? {
                bail!("gatepass-hostd run exited ({st}) before applying its first state");
            }
            if spawned.elapsed() > APPLY_TIMEOUT {
                bail!("gatepass-hostd run applied no state within {APPLY_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let seen = Instant::now();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != "gatepass-hostd" {
            bail!("process {pid} is {:?}, not gatepass-hostd", comm.trim());
        }
        // The reference idles from the same moment, its start long over.
        let mut sleeper = Reaped(
            Command::new("sleep")
                .arg("3600")
                .stdin(Stdio::null())
                .spawn()
                .context("starting sleep")?,
        );
        std::thread::sleep(SETTLE);
        let (h0, s0) = (usage(pid)?, usage(sleeper.pid())?);
        let w0 = Instant::now();
        std::thread::sleep(window);
        let (h1, s1) = (usage(pid)?, usage(sleeper.pid())?);
        let w1 = Instant::now();
        let secs = (w1 - w0).as_secs_f64();
        sleeper.stop()?;
        // hostd's first long-poll went out between its start and `seen`;
        // the server answers an unchanged state after POLL_WAIT (+ a margin).
        let mut poll_answers = 0;
        for k in 1u32.. {
            let earliest = spawned + POLL_WAIT * k;
            let latest = seen + POLL_WAIT * k + Duration::from_secs(1);
            if earliest > w1 {
                break;
            }
            if latest >= w0 {
                poll_answers += 1;
            }
        }
        let watchdog_pings = notify.count("WATCHDOG=1", w0, w1);

        // The event: the certificate is revoked, so the KRL in the host's
        // state changes.
        let krl = managed.join("revoked.krl");
        let krl0 = std::fs::read(&krl)?;
        let e0 = usage(pid)?;
        let t0 = Instant::now();
        rt.block_on(server.write(&admin, "ssh/revoke", &json!({ "serial_number": serial })))?;
        let revoke_answered = t0.elapsed();
        let applied = loop {
            if applied_index(&state_file).is_some_and(|i| i != index0) {
                break t0.elapsed();
            }
            if t0.elapsed() > APPLY_TIMEOUT {
                bail!("hostd did not apply the revocation within {APPLY_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        if std::fs::read(&krl)? == krl0 {
            bail!(
                "hostd applied a new state, but {} did not change",
                krl.display()
            );
        }
        std::thread::sleep(EVENT_TAIL);
        let e1 = usage(pid)?;
        let event = Spent::between(&e0, &e1, t0.elapsed().as_secs_f64());
        if let Some(st) = hostd.0.try_wait()? {
            bail!("gatepass-hostd run exited ({st}) during the measurement");
        }
        anyhow::Ok(Idle {
            hz,
            sleep: Spent::between(&s0, &s1, secs),
            hostd: Spent::between(&h0, &h1, secs),
            poll_answers,
            watchdog_pings,
            first_state: seen - spawned,
            poll_lead: w0 - spawned,
            revoke_answered,
            applied,
            event,
            hwm_kib: e1.hwm_kib,
        })
    })();
    let stopped = hostd.stop();
    let res = outcome.map_err(|e| {
        anyhow::anyhow!(
            "{e:#}\nhostd log:\n{}\nserver log:\n{}",
            file_tail(&log),
            server.log_tail()
        )
    })?;
    let st = stopped?;
    if !st.success() {
        eprintln!("note: gatepass-hostd run exited with {st} after SIGTERM");
    }
    Ok(res)
}

fn secs1(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64())
}

fn idle_row(what: &str, s: &Spent, hz: f64) -> Vec<String> {
    vec![
        what.into(),
        format!("{:.1}", s.secs),
        format!("{} ({})", ms(s.cpu_ms(hz)), s.ticks),
        ms(s.run_ns as f64 / 1e6),
        format!("{:.4}%", s.run_ns as f64 / 1e6 / (s.secs * 10.0)),
        format!("{} ({} + {})", s.switches(), s.voluntary, s.involuntary),
        format!("{:.2}", s.per_sec()),
        mib(s.rss_kib),
    ]
}

fn idle_tables(i: &Idle) -> String {
    let mut t = Table::new(&[
        ("idle, nothing changes on the server", Align::Left),
        ("seconds", Align::Right),
        ("CPU ms (ticks)", Align::Right),
        ("on-CPU ms (schedstat)", Align::Right),
        ("% of a core (on-CPU)", Align::Right),
        ("context switches (vol. + invol.)", Align::Right),
        ("per second", Align::Right),
        ("RSS MiB", Align::Right),
    ]);
    t.push(idle_row("`sleep 3600` (reference)", &i.sleep, i.hz));
    t.push(idle_row("`gatepass-hostd run`", &i.hostd, i.hz));
    let ended = if i.hostd.ended > 0 {
        format!(
            " {} of its threads ended in the window (their last counts are missing).",
            i.hostd.ended
        )
    } else {
        String::new()
    };
    let mut e = Table::new(&[
        ("one revocation, hostd running", Align::Left),
        ("value", Align::Right),
    ]);
    let tick_ms = 1000.0 / i.hz;
    e.push(vec![
        "`POST /v1/ssh/revoke` answered".into(),
        format!("{} ms", ms(i.revoke_answered.as_secs_f64() * 1e3)),
    ]);
    e.push(vec![
        "hostd applied it (its state file at the new index), from the request".into(),
        format!("{} ms", ms(i.applied.as_secs_f64() * 1e3)),
    ]);
    e.push(vec![
        format!(
            "hostd CPU, from the request to {} s after applying (ticks)",
            EVENT_TAIL.as_secs()
        ),
        format!("{} ms ({})", ms(i.event.cpu_ms(i.hz)), i.event.ticks),
    ]);
    e.push(vec![
        "… on-CPU time of its threads (schedstat)".into(),
        format!("{} ms", ms(i.event.run_ns as f64 / 1e6)),
    ]);
    e.push(vec![
        "… its children (`sshd -T`) meanwhile (ticks)".into(),
        format!(
            "{} ms ({})",
            ms(i.event.child_ticks as f64 * tick_ms),
            i.event.child_ticks
        ),
    ]);
    e.push(vec![
        "… context switches (vol. + invol.)".into(),
        format!(
            "{} ({} + {})",
            i.event.switches(),
            i.event.voluntary,
            i.event.involuntary
        ),
    ]);
    e.push(vec![
        "hostd RSS / VmHWM afterwards".into(),
        format!("{} / {} MiB", mib(i.event.rss_kib), mib(i.hwm_kib)),
    ]);
    format!(
        "Idle hostd: `gatepass-hostd run` as the shipped unit starts it (notify socket, \
         `WatchdogSec={wd}s`), enrolled with a local `gatepass-server dev`, applied its first state \
         {first} ms after its start. Then {secs:.1} s in which nothing changes on the server, from \
         {lead} s after its start; it re-polls every {poll} s (the long-poll's wait) and pings the \
         watchdog every {half} s: long-poll answers that can fall into the window: {answers}; \
         watchdog pings in it: {pings}. A clock tick is {tick:.0} ms.\n\n{t}\n\
         hostd's threads that were switched in the window: {woke}.{ended}\n\n{e}\n",
        wd = WATCHDOG.as_secs(),
        first = ms(i.first_state.as_secs_f64() * 1e3),
        secs = i.hostd.secs,
        lead = secs1(i.poll_lead),
        poll = POLL_WAIT.as_secs(),
        half = WATCHDOG.as_secs() / 2,
        answers = i.poll_answers,
        pings = i.watchdog_pings,
        tick = tick_ms,
        t = t.to_markdown(),
        woke = i.hostd.woke_text(),
        e = e.to_markdown(),
    )
}

fn idle_target(i: &Idle) -> String {
    let verdict = if i.met() { "**met**" } else { "**not met**" };
    format!(
        "- idle hostd: no CPU between events: {cpu} ms CPU over {secs:.0} s idle ({rate:.2} wakeups/s): \
         {verdict} ({ticks} clock ticks; on-CPU time by schedstat {run} ms; criterion: under one clock tick of CPU per {per} s idle, and no more context \
         switches than {k} per long-poll answer or watchdog ping in the window, of which there were \
         {expected}: here at most {allowed}, measured {n}).\n",
        cpu = ms(i.hostd.cpu_ms(i.hz)),
        ticks = i.hostd.ticks,
        run = ms(i.hostd.run_ns as f64 / 1e6),
        secs = i.hostd.secs,
        rate = i.hostd.per_sec(),
        per = IDLE_TICK_PER.as_secs(),
        k = SWITCHES_PER_EXPECTED,
        expected = i.expected_wakeups(),
        allowed = SWITCHES_PER_EXPECTED * i.expected_wakeups(),
        n = i.hostd.switches(),
    )
}
