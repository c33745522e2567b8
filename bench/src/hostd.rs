//! `gatepass-bench hostd`: gatepass-hostd applying a desired state of
//! 10,000 dynamic keys over 1,000 users, time and peak memory.
//!
//! The release `gatepass-hostd __bench-apply DIR --users U --keys K` builds
//! the state in memory, renders it, applies it into an empty folder
//! (atomically: temp file, one syncfs, rename, folder fsyncs), applies it
//! again unchanged and once more with one key replaced, and prints its
//! timings as JSON. Its peak RSS is taken from `wait4`'s `ru_maxrss`.
//!
//! References in the same run, over the tree hostd wrote: the same files
//! (same count, sizes and contents) written with plain `std::fs::write` to a
//! temp name and renamed, without fsync, and `cp -r` of the tree (a process,
//! whose peak RSS is taken the same way).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::machine;
use crate::report::{self, Align, Table};
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
}

impl Args {
    pub fn with(common: Common) -> Args {
        Args {
            common,
            users: 1000,
            keys: 10000,
            runs: 5,
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
    let bin = args.common.sibling_bin("gatepass-hostd")?;
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
            Command::new(&bin)
                .arg("__bench-apply")
                .arg(&hostd_dir)
                .args(["--users", &args.users.to_string()])
                .args(["--keys", &args.keys.to_string()])
                .env("GATEPASS_LOG", "warn"),
        )?;
        if !w.ok {
            bail!("gatepass-hostd __bench-apply failed: {}", w.stderr.trim());
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
    let body = section(&machine, args, &fs, &runs)?;
    println!("{body}");
    if let Some(path) = &args.common.write {
        report::write_section(path, SECTION, &body)?;
        eprintln!("wrote the {SECTION} section of {}", path.display());
    }
    Ok(())
}

fn section(m: &machine::Machine, args: &Args, fs: &str, runs: &[Run]) -> anyhow::Result<String> {
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
        "hostd: the whole `__bench-apply` process, spawn to exit".into(),
        "–".into(),
        ms(wall),
        mib(hwm),
        "–".into(),
        "–".into(),
    ]);
    let met = |ok: bool| if ok { "**met**" } else { "**not met**" };
    let rss_mib = hwm.max(rss) as f64 / 1024.0;
    let hwm_mib = hwm as f64 / 1024.0;
    Ok(format!(
        "{measured}; {users} users, {keys} dynamic keys; {n} runs, each into a new folder on {fs} \
         (the system's temporary folder); times are medians of the runs, peak RSS the largest; \
         hostd's tree: {files} files, {bytes} bytes.\n\n{table}\n\
         Targets (issue 9):\n\n\
         - applying the state (render + first apply) under {tt} ms: {at} ms, {m1}.\n\
         - peak RSS under {tr:.0} MiB: {hwm} MiB (the process's own `VmHWM`; `ru_maxrss` from `wait4`: \
         {rss} MiB, an upper bound), {m2}.\n\n\
         Peak RSS: hostd's row is its own high-water mark (`VmHWM`, which `__bench-apply` prints). \
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
