//! `gatepass-bench recording`: what recording sessions costs, with the
//! gateway's recording on and off in the same run (the parts of the
//! gateway suite: a release `gatepass-server dev`, a release
//! `gatepass-gateway`, a private sshd on loopback, OpenSSH's ssh client).
//!
//! - **Throughput**: 1 GiB (`--mib`) of text output read from the target
//!   (`yes` of one 100-byte log line, cut with `head -c`) through the
//!   gateway to `ssh`'s stdout, with the gateway's recording on and then
//!   off (`[recording] enabled = false`, gateway restarted), `--rounds`
//!   times each (2) in turn; the best of each. Recorded, that output is
//!   `o` events of an exec channel, sealed in chunks, fsync'd to the
//!   gateway's spool and sent to the server as the session runs; before
//!   the next measurement the spool is drained, so one run's deliveries do
//!   not slow the next.
//!   Beside the time, the CPU seconds the gateway and the server processes
//!   used for each session (from /proc/PID/stat, until the spool is
//!   drained): the measure that shows what recording costs when other work
//!   shares the machine and moves the throughput ratio.
//! - **Bytes stored per minute of a busy terminal**: one shell session on
//!   a terminal (`ssh -tt`) prints 10 log lines (about 100 bytes each) every
//!   100 ms, 600 times (about a minute: 1,000 lines a second would be a
//!   build log; 100 a second is a busy `tail -f`). Once the recording is
//!   whole on the server, the bytes its chunks, end and key take in the
//!   server's database (`entries`: key and value, the value sealed at rest)
//!   are added up and scaled to 60 s of the session.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::gateway::{raise_nofile, Reaped, Setup};
use crate::machine;
use crate::report::{self, Align, Table};
use crate::Common;

const SECTION: &str = "recording";
/// Issue 17's target: throughput with recording on, as a fraction of off.
const TARGET_FRACTION: f64 = 0.8;
/// The busy terminal's line; 100 bytes with its line end (`%g` is the
/// line's number, 1 to 6 digits).
const LINE: &str = "2026-12-02T12:00:00.000Z INFO gatepass::api request %06g served path=/v1/ssh/sign/ops status=200";
/// Bursts of 10 lines, 100 ms apart.
const BURSTS: u32 = 600;
/// How long a drained spool or a whole recording may take to appear.
const SETTLE: Duration = Duration::from_secs(600);

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// MiB of output read through the gateway, recording on and off.
    #[arg(long, default_value_t = 1024)]
    pub mib: usize,
    /// Measurements of each (on, off, on, off, ...); the best of each.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Skip the busy-terminal minute (for a quick look at throughput).
    #[arg(long)]
    pub no_terminal: bool,
}

/// Seconds to read `mib` MiB of text output of the target to the end.
fn pull(mut cmd: Command, mib: usize) -> anyhow::Result<Duration> {
    let bytes = mib * 1_048_576;
    let line = LINE.replace("%06g", "000001");
    let mut child = Reaped(
        cmd.arg(format!("yes '{line}' | head -c {bytes}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting ssh")?,
    );
    let mut out = child.0.stdout.take().context("stdout")?;
    let t0 = Instant::now();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0usize;
    loop {
        let n = out.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let status = child.0.wait()?;
    let took = t0.elapsed();
    if !status.success() || got != bytes {
        let mut err = String::new();
        if let Some(mut e) = child.0.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        bail!("ssh exited {status} after {got} of {bytes} bytes: {err}");
    }
    Ok(took)
}

/// Waits until the gateway's spool holds nothing: every chunk delivered.
fn drain(setup: &Setup) -> anyhow::Result<()> {
    let spool = setup.dir.path().join("recording-spool");
    let deadline = Instant::now() + SETTLE;
    loop {
        let left = match std::fs::read_dir(&spool) {
            Ok(entries) => entries.count(),
            Err(_) => 0,
        };
        if left == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{left} spool files still undelivered after {SETTLE:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The session's recording verdict once it is whole (or the last one seen
/// when it is not within the time allowed).
fn wait_whole(setup: &Setup, id: &str) -> anyhow::Result<Value> {
    let deadline = Instant::now() + SETTLE;
    loop {
        // A pooled connection the server closed meanwhile fails once: asked
        // again.
        let v = setup
            .rt
            .block_on(async {
                let r = setup
                    .admin
                    .get(setup.server.url(&format!("pam/sessions/{id}/recording")))
                    .header("X-Vault-Token", &setup.server.token)
                    .send()
                    .await?;
                r.json::<Value>().await
            })
            .unwrap_or_else(|e| Value::String(e.to_string()));
        if v.pointer("/data/whole") == Some(&Value::Bool(true)) {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("the recording of {id} is not whole: {v}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// (bytes, rows) the recordings of session `id` take in the database: the
/// keys and sealed values of its recording records and chunks.
fn stored_bytes(db: &Path, id: &str) -> anyhow::Result<(u64, u64)> {
    if !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        bail!("unexpected session ID {id:?}");
    }
    let sql = format!(
        "SELECT coalesce(sum(length(CAST(key AS BLOB)) + length(value)), 0), count(*) FROM entries \
         WHERE key LIKE 'pam/rec/{id}/%' OR key LIKE 'pam/rec-chunk/{id}/%';"
    );
    let out = Command::new("sqlite3")
        .args(["-readonly", "-separator", " "])
        .arg(db)
        .arg(&sql)
        .output()
        .context("running sqlite3 (Debian: sqlite3) to read the server's database")?;
    if !out.status.success() {
        bail!("sqlite3: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace().map(str::parse::<u64>);
    match (words.next(), words.next()) {
        (Some(Ok(bytes)), Some(Ok(rows))) => Ok((bytes, rows)),
        _ => bail!("sqlite3 answered {text:?}"),
    }
}

/// The busy terminal: (seconds the session ran, bytes of terminal output
/// the person's ssh received, bytes and rows stored, chunks).
fn busy_terminal(setup: &Setup) -> anyhow::Result<(f64, u64, u64, u64, u64)> {
    let (cert, id) = setup.grant_session(usize::MAX - 10)?;
    let script = format!(
        "i=0; while [ $i -lt {BURSTS} ]; do seq -f '{LINE}' $((i*10+1)) $((i*10+10)); \
         i=$((i+1)); sleep 0.1; done; exit"
    );
    let mut child = Reaped(
        setup
            .ssh(Some(&cert), &["-tt", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting ssh")?,
    );
    let mut out = child.0.stdout.take().context("stdout")?;
    let t0 = Instant::now();
    let mut seen = Vec::new();
    out.read_to_end(&mut seen)?;
    let status = child.0.wait()?;
    let took = t0.elapsed().as_secs_f64();
    let last = format!("{:06}", BURSTS * 10);
    if !status.success() || !String::from_utf8_lossy(&seen).contains(&last) {
        bail!(
            "the busy terminal session exited {status} after {} bytes",
            seen.len()
        );
    }
    let v = wait_whole(setup, &id)?;
    let chunks = v
        .pointer("/data/recordings")
        .and_then(Value::as_array)
        .map(|rs| {
            rs.iter()
                .filter_map(|r| r.pointer("/verdict/chunks").and_then(Value::as_u64))
                .sum()
        })
        .unwrap_or(0);
    let (bytes, rows) = stored_bytes(&setup.server.data_dir.join("gatepass.db"), &id)?;
    Ok((took, seen.len() as u64, bytes, rows, chunks))
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let m = machine::describe();
    raise_nofile();
    let mut setup = Setup::start(&args.common)?;
    let rounds = args.rounds.max(1);
    let (mut on, mut off) = (Vec::new(), Vec::new());
    let (mut cpu_on, mut cpu_off) = (Vec::new(), Vec::new());
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    // CPU seconds of the gateway and the server so far (both live through
    // a measurement; the gateway is restarted only between them).
    let cpu = |setup: &Setup| -> anyhow::Result<f64> {
        let pids = [setup.gateway.0.id(), setup.server.pid()];
        let mut sum = 0;
        for pid in pids {
            sum += machine::process_cpu_ticks(pid)
                .with_context(|| format!("reading the CPU time of process {pid}"))?;
        }
        Ok(sum as f64 / ticks)
    };
    for round in 0..rounds {
        for recording in [true, false] {
            eprintln!(
                "  throughput {}/{rounds}: {} MiB through the gateway, recording {}",
                round + 1,
                args.mib,
                if recording { "on" } else { "off" }
            );
            setup.restart_gateway(recording)?;
            let cert = setup.grant(round * 2 + usize::from(recording))?;
            let cpu0 = cpu(&setup)?;
            let took = pull(setup.ssh(Some(&cert), &[]), args.mib)?;
            if recording {
                drain(&setup)?;
            }
            let used = cpu(&setup)? - cpu0;
            eprintln!(
                "    {:.2} s; gateway and server CPU {used:.2} s",
                took.as_secs_f64()
            );
            if recording {
                on.push(took);
                cpu_on.push(used);
            } else {
                off.push(took);
                cpu_off.push(used);
            }
        }
    }
    let best = |v: &[Duration]| v.iter().min().copied().unwrap_or_default();
    let (best_on, best_off) = (best(&on), best(&off));
    let rate = |t: Duration| args.mib as f64 / t.as_secs_f64();
    let fraction = rate(best_on) / rate(best_off);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (mean_on, mean_off) = (mean(&cpu_on), mean(&cpu_off));

    let terminal = if args.no_terminal {
        None
    } else {
        eprintln!("  busy terminal: {BURSTS} bursts of 10 lines, 100 ms apart, recorded");
        setup.restart_gateway(true)?;
        Some(busy_terminal(&setup)?)
    };

    let mut thr = Table::new(&[
        ("MiB of output through the gateway", Align::Left),
        ("runs, seconds", Align::Right),
        ("best MiB/s", Align::Right),
        ("gateway + server CPU, s", Align::Right),
    ]);
    let secs = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{:.2}", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let cpus = |v: &[f64]| {
        v.iter()
            .map(|c| format!("{c:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    thr.push(vec![
        "recording on".into(),
        secs(&on),
        format!("{:.0}", rate(best_on)),
        cpus(&cpu_on),
    ]);
    thr.push(vec![
        "recording off (reference)".into(),
        secs(&off),
        format!("{:.0}", rate(best_off)),
        cpus(&cpu_off),
    ]);
    let met = |ok: bool| if ok { "met" } else { "not met" };
    let mut body = format!(
        "{}; the real gatepass-server dev (SQLite), gatepass-gateway (setup, run; default \
         chunks of 64 KiB, up to 4 MiB under load, or 2 s; compressed) and a private sshd on loopback, OpenSSH's ssh client; one \
         key account.{}\n\n{}\n\
         - throughput with recording on: {:.1}% of recording off ({} MiB of `yes` output, best \
         of {rounds} each; target at least {:.0}%: {}).\n\
         - CPU the gateway and the server used per session: {mean_on:.2} s recorded, \
         {mean_off:.2} s not ({:.2} s more, {:.0}% of the unrecorded session's), \
         the recorded ones until their spool was drained.\n",
        m.measured_on(),
        m.busy_warning(),
        thr.to_markdown(),
        100.0 * fraction,
        args.mib,
        100.0 * TARGET_FRACTION,
        met(fraction >= TARGET_FRACTION),
        mean_on - mean_off,
        100.0 * (mean_on - mean_off) / mean_off.max(f64::MIN_POSITIVE),
    );
    if let Some((took, shown, bytes, rows, chunks)) = terminal {
        let per_min = |b: u64| b as f64 * 60.0 / took;
        let mut t = Table::new(&[
            ("busy terminal, per minute", Align::Left),
            ("KB", Align::Right),
        ]);
        t.push(vec![
            "terminal output the person saw".into(),
            format!("{:.0}", per_min(shown) / 1000.0),
        ]);
        t.push(vec![
            "stored in the server's database".into(),
            format!("{:.0}", per_min(bytes) / 1000.0),
        ]);
        body.push_str(&format!(
            "\n{}\n- bytes stored per minute of a busy terminal: {:.0} KB ({:.2} bytes per byte \
             of output; {chunks} chunks and {} other rows in {took:.0} s; {:.1} MB an hour).\n",
            t.to_markdown(),
            per_min(bytes) / 1000.0,
            bytes as f64 / shown.max(1) as f64,
            rows.saturating_sub(chunks),
            per_min(bytes) * 60.0 / 1e6,
        ));
    }
    report::publish(args.common.write.as_deref(), SECTION, &body)
}
