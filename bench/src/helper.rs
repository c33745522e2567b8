//! `gatepass-bench helper`: the time the PAM helper adds to a login.
//!
//! `target/release/gatepass-helper` is run the way `pam_exec.so
//! expose_authtok` runs it: a fresh process with PAM_USER, PAM_RHOST,
//! PAM_TYPE=auth and PAM_SERVICE=sshd in its environment, the OTP on stdin
//! (ended by a NUL), and a configuration file pointing at a real
//! `gatepass-server dev` with its CA pinned. Every iteration first creates
//! an OTP through the API (not timed), then times the helper from spawn to
//! exit, which must be 0.
//!
//! References in the same run: `/bin/true` spawned the same way (the cost
//! of starting a process alone) and `POST /v1/ssh/verify` from a warm
//! in-process HTTPS client (the verify alone). With `pamtester` installed
//! and root, the native module `pam_gatepass.so` is timed through
//! `pamtester` beside `pam_permit.so`.
//!
//! The helper and the module are each timed both ways they can go: direct
//! (`hostd_socket = ""`: their own TLS connection to the server) and
//! through `gatepass-hostd`'s login socket (a `gatepass-hostd
//! __login-socket` started for the run, which keeps its connection to the
//! server open between attempts).
//!
//! Each row and its references take turns, round by round (the helper's
//! rows with `/bin/true` and the in-process verify, the module's with
//! `pam_permit.so`), so that what a row adds over its reference is
//! measured under the same conditions.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::load;
use crate::machine;
use crate::measure::{Sample, Summary};
use crate::report::{self, Align, Table};
use crate::server::DevServer;
use crate::Common;

const SECTION: &str = "helper";
const ROLE: &str = "bench-otp";
const USER: &str = "bench";
/// Issue 20's targets: what the module adds at the median over
/// `pam_permit.so`, and the helper over `/bin/true`.
const TARGET_MODULE_ADDS: Duration = Duration::from_millis(1);
const TARGET_HELPER_ADDS: Duration = Duration::from_millis(2);

const HELPER_DIRECT: &str = "`gatepass-helper`, direct, spawned as pam_exec does";
const HELPER_HOSTD: &str = "`gatepass-helper` through hostd, spawned as pam_exec does";
const PERMIT: &str = "`pamtester` with `pam_permit.so` (reference)";
const MODULE_DIRECT: &str = "`pamtester` with `pam_gatepass.so`, direct";
const MODULE_HOSTD: &str = "`pamtester` with `pam_gatepass.so` through hostd";

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Timed runs of each measurement (after a few untimed ones).
    #[arg(long, default_value_t = 300)]
    pub iterations: usize,
    /// Skip the native PAM module (pamtester) rows.
    #[arg(long)]
    pub no_pam: bool,
}

impl Args {
    pub fn with(common: Common) -> Args {
        Args {
            common,
            iterations: 300,
            no_pam: false,
        }
    }
}

struct Row {
    what: String,
    summary: Summary,
    mean: Duration,
    runs: u64,
}

/// A login check to time, given its OTP.
type Check<'a> = Box<dyn FnMut(&str) -> Result<(), String> + 'a>;

/// Times several checks `n` times each after `warm` untimed rounds, taking
/// turns: each round runs every check once, each after its own `prepare`
/// (which makes the check's OTP, outside the timed part), starting with
/// another check every round. A row and the reference it is compared with then
/// run under the same conditions; run one block after the other, they
/// did not (this machine's speed drifts by more than the module costs
/// from one block of 300 runs to the next, and two runs of the same code
/// a minute apart differed by 1 ms in what the module added).
fn iterate_together(
    n: usize,
    warm: usize,
    mut prepare: impl FnMut() -> anyhow::Result<String>,
    checks: &mut [Check<'_>],
) -> anyhow::Result<Vec<(Sample, Duration)>> {
    let k = checks.len();
    let mut out: Vec<(Sample, Duration)> = (0..k)
        .map(|_| (Sample::default(), Duration::ZERO))
        .collect();
    for round in 0..warm + n {
        for j in 0..k {
            let c = (round + j) % k;
            let input = prepare()?;
            let t0 = Instant::now();
            let outcome = checks[c](&input);
            let took = t0.elapsed();
            if round >= warm {
                out[c].0.record(took, outcome);
                out[c].1 += took;
            }
        }
    }
    let runs = u32::try_from(n.max(1)).unwrap_or(u32::MAX);
    Ok(out
        .into_iter()
        .map(|(mut s, sum)| {
            s.elapsed = sum;
            (s, sum / runs)
        })
        .collect())
}

fn row(what: &str, (sample, mean): (Sample, Duration)) -> Row {
    let runs = sample.total();
    let summary = sample.summarize();
    eprintln!(
        "  {what:<52} p50 {} ms, p99 {} ms, mean {} ms, {} errors",
        report::millis(summary.p50),
        report::millis(summary.p99),
        report::millis(Some(mean)),
        summary.errors
    );
    Row {
        what: what.to_string(),
        summary,
        mean,
        runs,
    }
}

/// Spawns `cmd` as pam_exec does: the token on stdin, ended by a NUL, and
/// waits; exit 0 is success.
fn exec_like_pam(mut cmd: Command, otp: &str) -> Result<(), String> {
    let mut child = cmd
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("PAM_USER", USER)
        .env("PAM_RHOST", "127.0.0.1")
        .env("PAM_RUSER", "")
        .env("PAM_TTY", "ssh")
        .env("PAM_SERVICE", "sshd")
        .env("PAM_TYPE", "auth")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // `/bin/true` may be gone before it reads: a broken pipe is fine.
        let _ = stdin.write_all(otp.as_bytes());
        let _ = stdin.write_all(b"\0");
    }
    let out = child.wait_with_output().map_err(|e| format!("wait: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// A syslog socket of our own, drained by a thread, so the helper's lines
/// cost what they cost without going to the system's log.
struct Syslog {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Syslog {
    fn start(path: PathBuf) -> anyhow::Result<Syslog> {
        let sock =
            UnixDatagram::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 8192];
            let mut lines = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                if sock.recv(&mut buf).is_ok() {
                    lines += 1;
                }
            }
            lines
        });
        Ok(Syslog {
            path,
            stop,
            thread: Some(thread),
        })
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0)
    }
}

impl Drop for Syslog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `gatepass-hostd __login-socket` for the run, stopped when dropped.
struct Hostd(std::process::Child);

impl Hostd {
    fn start(bin: &Path, socket: &Path) -> anyhow::Result<Hostd> {
        let child = Command::new(bin)
            .args(["__login-socket", "--socket"])
            .arg(socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let h = Hostd(child);
        let start = Instant::now();
        while !socket.exists() {
            if start.elapsed() > Duration::from_secs(10) {
                bail!(
                    "gatepass-hostd made no login socket at {}",
                    socket.display()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(h)
    }
}

impl Drop for Hostd {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = self.0.wait();
    }
}

/// `/etc/pam.d/gatepass-bench-<pid>-<name>`, removed when dropped.
struct PamService {
    name: String,
    path: PathBuf,
}

impl PamService {
    fn create(tag: &str, text: &str) -> anyhow::Result<PamService> {
        let name = format!("gatepass-bench-{}-{tag}", std::process::id());
        let path = Path::new("/etc/pam.d").join(&name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(PamService { name, path })
    }
}

impl Drop for PamService {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn pamtester(service: &str, otp: &str) -> Result<(), String> {
    let mut child = Command::new("pamtester")
        .args([service, USER, "authenticate"])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn pamtester: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(otp.as_bytes());
        let _ = stdin.write_all(b"\n");
    }
    let out = child.wait_with_output().map_err(|e| format!("wait: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "pamtester {}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if !(10..=100_000).contains(&args.iterations) {
        bail!("--iterations takes 10 to 100000");
    }
    let server_bin = args.common.server_bin()?;
    let helper_bin = args.common.sibling_bin("gatepass-helper")?;
    let hostd_bin = args.common.sibling_bin("gatepass-hostd")?;
    let machine = machine::describe();
    let dir = tempfile::Builder::new()
        .prefix("gatepass-bench-helper-")
        .tempdir()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut server = DevServer::start(&server_bin)?;
    let result = measure_all(&rt, &server, args, &helper_bin, &hostd_bin, dir.path());
    drop(rt);
    let stopped = server.stop();
    let (rows, pam_note) =
        result.map_err(|e| anyhow::anyhow!("{e:#}\nserver log:\n{}", server.log_tail()))?;
    let status = stopped?;
    if !status.success() {
        eprintln!("note: the server exited with {status} after SIGTERM");
    }
    let body = section(&machine, args, &rows, &pam_note)?;
    report::publish(args.common.write.as_deref(), SECTION, &body)?;
    report::fail_on_errors(
        "runs",
        rows.iter().map(|r| (r.what.to_string(), &r.summary)),
    )
}

async fn create(server: &DevServer, c: &reqwest::Client) -> anyhow::Result<String> {
    let v = server
        .write(
            c,
            &format!("ssh/creds/{ROLE}"),
            &json!({ "ip": "127.0.0.1" }),
        )
        .await?;
    v.pointer("/data/key")
        .and_then(Value::as_str)
        .map(str::to_string)
        .context("creds returned no key")
}

fn measure_all(
    rt: &tokio::runtime::Runtime,
    server: &DevServer,
    args: &Args,
    helper_bin: &Path,
    hostd_bin: &Path,
    dir: &Path,
) -> anyhow::Result<(Vec<Row>, String)> {
    let n = args.iterations;
    let warm = 10;
    let client = server.client()?;
    rt.block_on(server.write(
        &client,
        &format!("ssh/roles/{ROLE}"),
        &json!({ "key_type": "otp", "default_user": USER, "cidr_list": "127.0.0.0/8" }),
    ))?;
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, server.ca_pem())?;
    let syslog = Syslog::start(dir.join("syslog.sock"))?;
    let socket = dir.join("hostd.sock");
    let write_config = |name: &str, hostd: &Path| -> anyhow::Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!(
                "servers = [{addr:?}]\nmount = \"ssh\"\nca_cert = {ca:?}\ntimeout = \"5s\"\n\
                 allowed_roles = [\"*\"]\nallowed_cidr_list = []\nsyslog_socket = {sock:?}\n\
                 hostd_socket = {hostd:?}\n",
                addr = server.addr,
                ca = ca.display().to_string(),
                sock = syslog.path.display().to_string(),
                hostd = hostd.display().to_string(),
            ),
        )?;
        Ok(path)
    };
    let config = write_config("helper.toml", Path::new(""))?;
    let via_hostd = write_config("helper-hostd.toml", &socket)?;
    let _hostd = Hostd::start(hostd_bin, &socket)?;
    let new_otp = || rt.block_on(create(server, &client));
    let mut rows = Vec::new();

    eprintln!(
        "/bin/true spawned like pam_exec (reference), in-process POST /v1/ssh/verify (reference) \
         and gatepass-helper as pam_exec runs it, taking turns"
    );
    let verify_url = server.url("ssh/verify");
    let helper = |config: &Path| {
        let mut c = Command::new(helper_bin);
        c.arg(format!("-config={}", config.display()));
        c
    };
    let mut checks: Vec<Check<'_>> = vec![
        Box::new(|otp: &str| exec_like_pam(Command::new("/bin/true"), otp)),
        Box::new(|otp: &str| {
            rt.block_on(async {
                let text = load::answer(
                    client
                        .post(&verify_url)
                        .json(&json!({ "otp": otp }))
                        .send()
                        .await,
                )
                .await?;
                if text.contains("\"username\":\"bench\"") {
                    Ok(())
                } else {
                    Err(format!("unexpected answer: {text}"))
                }
            })
        }),
        Box::new(|otp: &str| exec_like_pam(helper(&config), otp)),
        Box::new(|otp: &str| exec_like_pam(helper(&via_hostd), otp)),
    ];
    let names = [
        "`/bin/true`, spawned as pam_exec does (reference)",
        "in-process HTTPS `POST /v1/ssh/verify`, warm client (reference)",
        HELPER_DIRECT,
        HELPER_HOSTD,
    ];
    let timed = iterate_together(n, warm, new_otp, &mut checks)?;
    drop(checks);
    for (what, t) in names.into_iter().zip(timed) {
        rows.push(row(what, t));
    }
    let lines = syslog.finish();
    eprintln!("  ({lines} syslog lines received from the helper)");

    // The native module, through pamtester, when it can be done here.
    let module = helper_bin.with_file_name("libpam_gatepass.so");
    let pam_note = if args.no_pam {
        "not measured (--no-pam)".to_string()
    } else if Command::new("pamtester")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        "not measured: `pamtester` is not installed".to_string()
    } else if !nix::unistd::geteuid().is_root() {
        "not measured: writing a service into /etc/pam.d needs root".to_string()
    } else if !module.is_file() {
        format!("not measured: {} not found", module.display())
    } else {
        match pam_rows(n, warm, &module, &config, &via_hostd, new_otp) {
            Ok(mut r) => {
                rows.append(&mut r);
                String::new()
            }
            Err(e) => {
                eprintln!("  pamtester: {e:#}");
                format!("not measured: pamtester failed ({e:#})")
            }
        }
    };
    Ok((rows, pam_note))
}

fn pam_rows(
    n: usize,
    warm: usize,
    module: &Path,
    config: &Path,
    via_hostd: &Path,
    mut new_otp: impl FnMut() -> anyhow::Result<String>,
) -> anyhow::Result<Vec<Row>> {
    eprintln!("pamtester: pam_permit.so (reference) and pam_gatepass.so, taking turns");
    let permit = PamService::create("permit", "auth required pam_permit.so\n")?;
    let service = |tag: &str, config: &Path| {
        PamService::create(
            tag,
            // The helper beside the module asks the servers when hostd
            // does not (the direct rows).
            &format!(
                "auth required {} config={} helper={}\n",
                module.display(),
                config.display(),
                module.with_file_name("gatepass-helper").display()
            ),
        )
    };
    let direct = service("gatepass", config)?;
    let hostd = service("gatepass-hostd", via_hostd)?;
    // One check before timing: the module must accept a fresh OTP.
    pamtester(&direct.name, &new_otp()?).map_err(anyhow::Error::msg)?;
    pamtester(&hostd.name, &new_otp()?).map_err(anyhow::Error::msg)?;
    let mut checks: Vec<Check<'_>> = vec![
        Box::new(|otp: &str| pamtester(&permit.name, otp)),
        Box::new(|otp: &str| pamtester(&direct.name, otp)),
        Box::new(|otp: &str| pamtester(&hostd.name, otp)),
    ];
    let timed = iterate_together(n, warm, &mut new_otp, &mut checks)?;
    Ok([PERMIT, MODULE_DIRECT, MODULE_HOSTD]
        .into_iter()
        .zip(timed)
        .map(|(what, t)| row(what, t))
        .collect())
}

/// What the row `what` adds at the median over `base` (seconds).
fn added_over(rows: &[Row], what: &str, base: Option<f64>) -> Option<Duration> {
    let x = rows
        .iter()
        .find(|r| r.what == what)
        .and_then(|r| r.summary.p50)?;
    Some(Duration::from_secs_f64((x.as_secs_f64() - base?).max(0.0)))
}

fn section(
    m: &machine::Machine,
    args: &Args,
    rows: &[Row],
    pam_note: &str,
) -> anyhow::Result<String> {
    let p50 = |prefix: &str| {
        rows.iter()
            .find(|r| r.what.starts_with(prefix))
            .and_then(|r| r.summary.p50)
            .map(|d| d.as_secs_f64())
            .filter(|d| *d > 0.0)
    };
    let (Some(truth), Some(verify)) = (p50("`/bin/true`"), p50("in-process")) else {
        bail!("a reference is missing");
    };
    let permit = p50(PERMIT);
    let mut t = Table::new(&[
        ("measurement", Align::Left),
        ("runs", Align::Right),
        ("p50 ms", Align::Right),
        ("p99 ms", Align::Right),
        ("mean ms", Align::Right),
        ("errors", Align::Right),
        ("p50 × `/bin/true`", Align::Right),
        ("p50 × in-process verify", Align::Right),
        ("p50 × pam_permit", Align::Right),
    ]);
    for r in rows {
        let x = r.summary.p50.map(|d| d.as_secs_f64());
        let pam = if r.what.starts_with("`pamtester`") {
            permit.and_then(|p| x.map(|x| x / p))
        } else {
            None
        };
        t.push(vec![
            r.what.clone(),
            r.runs.to_string(),
            report::millis(r.summary.p50),
            report::millis(r.summary.p99),
            report::millis(Some(r.mean)),
            r.summary.errors.to_string(),
            report::ratio(x.map(|x| x / truth)),
            report::ratio(x.map(|x| x / verify)),
            report::ratio(pam),
        ]);
    }
    // What each way adds: the helper over `/bin/true` (a process spawned
    // the same way), the module over `pam_permit.so` (pamtester and PAM
    // alone).
    let verdict = |d: Duration, target: Duration| {
        if d < target {
            "**met**"
        } else {
            "**not met**"
        }
    };
    let target_line = |name: &str,
                       target: Duration,
                       hostd: Option<Duration>,
                       direct: Option<Duration>,
                       base: &str| {
        match hostd {
            Some(h) => format!(
                "Target (issue 20) — {name} adds under {} ms at the median over {base}: through hostd \
                 {} ms, {}; direct (hostd not running) {} ms, {}.",
                report::millis(Some(target)),
                report::millis(Some(h)),
                verdict(h, target),
                report::millis(direct),
                direct.map_or("not measured", |d| verdict(d, target)),
            ),
            None => format!("Target (issue 20) — {name}: not measured in this run."),
        }
    };
    let target = target_line(
        "`gatepass-helper`",
        TARGET_HELPER_ADDS,
        added_over(rows, HELPER_HOSTD, Some(truth)),
        added_over(rows, HELPER_DIRECT, Some(truth)),
        "`/bin/true`",
    );
    let module_target = format!(
        "\n\n{}",
        target_line(
            "`pam_gatepass.so`",
            TARGET_MODULE_ADDS,
            added_over(rows, MODULE_HOSTD, permit),
            added_over(rows, MODULE_DIRECT, permit),
            "`pam_permit.so`",
        )
    );
    let pam = if pam_note.is_empty() {
        module_target
    } else {
        format!("{module_target}\n\nThe native module `pam_gatepass.so`: {pam_note}.")
    };
    Ok(format!(
        "{measured}; {n} timed runs per row after 10 untimed ones, each row taking turns with its references run by run.\n\n{table}\n\
         {target}{pam}{busy}\n",
        measured = m.measured_on(),
        n = args.iterations,
        table = t.to_markdown(),
        busy = m.busy_warning(),
    ))
}
