//! `gatepass-bench gateway`: what the PAM gateway costs a session, beside
//! direct `ssh` to the same target in the same run.
//!
//! The parts are the real ones: a release `gatepass-server dev`, a release
//! `gatepass-gateway` enrolled with `setup` and started with `run`, a
//! private OpenSSH sshd on loopback (the target; a key account `root`
//! through authorized_keys, host key pinned in the resource), and the
//! system `ssh` client. Each session is granted through
//! `pam/resources/bench/accounts/root/access` for the person's key.
//!
//! - **Round trips**: one session runs `stty raw -echo; exec cat` on the
//!   target in a terminal (`ssh -tt`, so both legs send each byte at once);
//!   `--round-trips` (1,000) single bytes are each written and read back,
//!   through the gateway and directly, after 50 untimed ones. The gateway's
//!   added latency is the difference of the medians (and of the p99s).
//! - **Throughput**: 1 GiB (`--mib`) from the bench into `cat > /dev/null`
//!   on the target, through the gateway and directly: the gateway's rate
//!   as a fraction of direct.
//! - **Memory**: `--sessions` (500) sessions open at once through the
//!   gateway, each a `ssh … 'echo up; exec sleep 600'` that has printed
//!   `up` (so the whole path to the target is established): the gateway's
//!   resident memory then, beside itself idle with no session.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::machine;
use crate::measure::Sample;
use crate::report::{self, Align, Table};
use crate::server::DevServer;
use crate::Common;

const SECTION: &str = "gateway";
const SSHD: &str = "/usr/sbin/sshd";
/// Issue 16's targets.
const TARGET_THROUGHPUT: f64 = 0.5;
const TARGET_MEMORY_MIB: f64 = 200.0 * 1_000_000.0 / 1_048_576.0;
const START_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Timed one-byte round trips in one session, through the gateway and
    /// directly.
    #[arg(long, default_value_t = 1000)]
    pub round_trips: usize,
    /// MiB sent through one session, through the gateway and directly.
    #[arg(long, default_value_t = 1024)]
    pub mib: usize,
    /// Sessions held open at once for the memory figure.
    #[arg(long, default_value_t = 500)]
    pub sessions: usize,
}

/// Reaps a child on drop (killing it first), so no run leaves one behind.
pub(crate) struct Reaped(pub(crate) Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The run's parts, stopped when dropped.
pub(crate) struct Setup {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) server: DevServer,
    _sshd: Reaped,
    sshd_port: u16,
    pub(crate) gateway: Reaped,
    gateway_port: u16,
    gateway_bin: PathBuf,
    /// The person's key (also in the target's authorized_keys, for the
    /// direct reference).
    person_key: PathBuf,
    known_hosts: PathBuf,
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) admin: reqwest::Client,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn keygen(path: &Path) -> anyhow::Result<String> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f"])
        .arg(path)
        .output()
        .context("running ssh-keygen")?;
    if !out.status.success() {
        bail!("ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(std::fs::read_to_string(path.with_extension("pub"))?)
}

fn wait_port(port: u16, what: &str, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!(
                "{what} did not listen on port {port}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

impl Setup {
    pub(crate) fn start(common: &Common) -> anyhow::Result<Setup> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        let server = DevServer::start(&common.server_bin()?)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let admin = server.client()?;

        // The target: a private sshd that takes the account key and the
        // person's (for the direct reference), and many sessions at once.
        let account_key = d.join("account_key");
        let account_pub = keygen(&account_key)?;
        let person_key = d.join("person_key");
        let person_pub = keygen(&person_key)?;
        let host_key = d.join("target_host_key");
        let host_pub = keygen(&host_key)?;
        std::fs::write(
            d.join("authorized_keys"),
            format!("{account_pub}{person_pub}"),
        )?;
        std::fs::create_dir_all("/run/sshd")?;
        let sshd_port = free_port()?;
        let config = d.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {sshd_port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\n\
                 AuthorizedKeysFile {}\nStrictModes no\nUsePAM no\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\nMaxStartups 1000\nMaxSessions 10\n\
                 LogLevel ERROR\nSubsystem sftp internal-sftp\n",
                host_key.display(),
                d.join("sshd.pid").display(),
                d.join("authorized_keys").display(),
            ),
        )?;
        let sshd_log = d.join("sshd.log");
        let sshd = Reaped(
            Command::new(SSHD)
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&sshd_log)?)
                .spawn()
                .context("starting sshd")?,
        );
        wait_port(sshd_port, "the target sshd", &sshd_log)?;

        // The gateway, enrolled and running.
        let join = rt.block_on(server.write(&admin, "pam/gateways/join-tokens", &json!({})))?;
        let join = join
            .pointer("/data/join_token")
            .and_then(Value::as_str)
            .context("no join_token")?
            .to_string();
        let ca = d.join("server-ca.pem");
        std::fs::write(&ca, server.ca_pem())?;
        let gateway_port = free_port()?;
        let gateway_bin = common.sibling_bin("gatepass-gateway")?;
        let out = Command::new(&gateway_bin)
            .args(["setup", "--server", &server.addr, "--join-token", &join])
            .arg("--ca-cert")
            .arg(&ca)
            .args(["--listen", &format!("127.0.0.1:{gateway_port}")])
            .args(["--name", "bench-gw", "--config"])
            .arg(d.join("gateway.toml"))
            .arg("--token-file")
            .arg(d.join("gateway.token"))
            .arg("--host-key")
            .arg(d.join("gateway_host_key"))
            .stdin(Stdio::null())
            .output()
            .context("running gatepass-gateway setup")?;
        if !out.status.success() {
            bail!(
                "gatepass-gateway setup failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let gateway = run_gateway(&gateway_bin, d, gateway_port)?;

        rt.block_on(async {
            server
                .write(
                    &admin,
                    "pam/resources/bench",
                    &json!({ "host": "127.0.0.1", "port": sshd_port, "gateway": "bench-gw",
                             "known_hosts": [host_pub.trim()] }),
                )
                .await?;
            server
                .write(
                    &admin,
                    "pam/resources/bench/accounts/root",
                    &json!({ "auth_method": "key", "username": "root",
                             "private_key": std::fs::read_to_string(&account_key)?,
                             "max_duration": "2h" }),
                )
                .await
        })?;

        // The person pins the target's key (for the direct reference); the
        // gateway's keys come with the first access.
        let known_hosts = d.join("known_hosts");
        std::fs::write(
            &known_hosts,
            format!("[127.0.0.1]:{sshd_port} {}\n", host_pub.trim()),
        )?;
        Ok(Setup {
            dir,
            server,
            _sshd: sshd,
            sshd_port,
            gateway,
            gateway_port,
            gateway_bin,
            person_key,
            known_hosts,
            rt,
            admin,
        })
    }

    /// Stops the gateway and starts it again with its recording on or off
    /// (`[recording] enabled`).
    pub(crate) fn restart_gateway(&mut self, recording: bool) -> anyhow::Result<()> {
        let _ = self.gateway.0.kill();
        let _ = self.gateway.0.wait();
        let d = self.dir.path();
        let path = d.join("gateway.toml");
        let text = std::fs::read_to_string(&path)?.replace("enabled = false\n", "");
        let text = if recording {
            text
        } else if text.contains("[recording]\n") {
            text.replacen("[recording]\n", "[recording]\nenabled = false\n", 1)
        } else {
            format!("{text}\n[recording]\nenabled = false\n")
        };
        std::fs::write(&path, text)?;
        self.gateway = run_gateway(&self.gateway_bin, d, self.gateway_port)?;
        Ok(())
    }

    /// A new session for the person's key: its certificate's path.
    pub(crate) fn grant(&self, n: usize) -> anyhow::Result<PathBuf> {
        Ok(self.grant_session(n)?.0)
    }

    /// A new session for the person's key: its certificate's path and the
    /// session's ID.
    pub(crate) fn grant_session(&self, n: usize) -> anyhow::Result<(PathBuf, String)> {
        let public_key = std::fs::read_to_string(self.person_key.with_extension("pub"))?;
        let v = self.rt.block_on(self.server.write(
            &self.admin,
            "pam/resources/bench/accounts/root/access",
            &json!({ "duration": "1h", "public_key": public_key.trim() }),
        ))?;
        let cert = v
            .pointer("/data/signed_key")
            .and_then(Value::as_str)
            .context("access answered no signed_key")?;
        let id = v
            .pointer("/data/session_id")
            .and_then(Value::as_str)
            .context("access answered no session_id")?
            .to_string();
        let path = self.dir.path().join(format!("session-{n}-cert.pub"));
        std::fs::write(&path, cert)?;
        let pinned = std::fs::read_to_string(&self.known_hosts)?;
        let gateway = format!("[127.0.0.1]:{}", self.gateway_port);
        if !pinned.contains(&gateway) {
            let keys = v
                .pointer("/data/gateway_host_keys")
                .and_then(Value::as_array)
                .context("access answered no gateway_host_keys")?;
            let mut text = pinned;
            for k in keys.iter().filter_map(Value::as_str) {
                text.push_str(&format!("{gateway} {}\n", k.trim()));
            }
            std::fs::write(&self.known_hosts, text)?;
        }
        Ok((path, id))
    }

    /// `ssh` to the gateway with a session certificate, or (None) directly
    /// to the target with the person's key.
    pub(crate) fn ssh(&self, cert: Option<&Path>, args: &[&str]) -> Command {
        let port = match cert {
            Some(_) => self.gateway_port,
            None => self.sshd_port,
        };
        let mut c = Command::new("ssh");
        c.args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .args([
            "-o",
            "IdentityAgent=none",
            "-o",
            "StrictHostKeyChecking=yes",
        ])
        .args([
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
        ])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
        .arg("-i")
        .arg(&self.person_key);
        if let Some(cert) = cert {
            c.arg("-o")
                .arg(format!("CertificateFile={}", cert.display()));
        }
        c.args(["-p", &port.to_string(), "-l", "root", "127.0.0.1"])
            .args(args)
            .env_remove("SSH_AUTH_SOCK");
        c
    }
}

/// `gatepass-gateway run` with the config in `d`, once it listens.
fn run_gateway(bin: &Path, d: &Path, port: u16) -> anyhow::Result<Reaped> {
    let log = d.join("gateway.log");
    let gateway = Reaped(
        Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(d.join("gateway.toml"))
            .env("GATEPASS_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)?,
            )
            .spawn()
            .context("starting gatepass-gateway run")?,
    );
    wait_port(port, "the gateway", &log)?;
    Ok(gateway)
}

/// One-byte round trips through `stty raw -echo; exec cat` in a terminal.
fn round_trips(mut cmd: Command, n: usize) -> anyhow::Result<Sample> {
    let mut child = Reaped(
        cmd.args(["-tt", "stty raw -echo; echo ready; exec cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting ssh")?,
    );
    let mut input = child.0.stdin.take().context("stdin")?;
    let mut output = child.0.stdout.take().context("stdout")?;
    wait_for(&mut output, b"ready")?;
    let mut one = [0u8; 1];
    let mut trip = |output: &mut ChildStdout| -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        input.write_all(b"x")?;
        input.flush()?;
        output.read_exact(&mut one)?;
        let took = t0.elapsed();
        if one != *b"x" {
            bail!("read back {:?}, not \"x\"", one[0] as char);
        }
        Ok(took)
    };
    for _ in 0..50 {
        trip(&mut output)?;
    }
    let mut s = Sample::default();
    let start = Instant::now();
    for _ in 0..n {
        let took = trip(&mut output)?;
        s.record(took, Ok(()));
    }
    s.elapsed = start.elapsed();
    Ok(s)
}

/// Reads until `marker` has gone by (the remote shell's "ready" and its
/// line end), at most 20 s.
fn wait_for(output: &mut ChildStdout, marker: &[u8]) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.windows(marker.len()).any(|w| w == marker) {
        if Instant::now() > deadline {
            bail!("no {:?} from the session", String::from_utf8_lossy(marker));
        }
        output.read_exact(&mut byte)?;
        seen.push(byte[0]);
    }
    // "\r\n" after the marker.
    output.read_exact(&mut byte)?;
    if byte[0] == b'\r' {
        output.read_exact(&mut byte)?;
    }
    Ok(())
}

/// Seconds to push `mib` MiB into `cat > /dev/null` on the target.
fn push(mut cmd: Command, mib: usize) -> anyhow::Result<Duration> {
    let mut child = Reaped(
        cmd.arg("cat > /dev/null")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting ssh")?,
    );
    let mut input = child.0.stdin.take().context("stdin")?;
    // Not zeros: the data should look like real data (no compression is
    // on, but nothing should be able to shortcut it either).
    let mut chunk = vec![0u8; 1 << 20];
    for (i, b) in chunk.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
    }
    let t0 = Instant::now();
    for _ in 0..mib {
        input.write_all(&chunk)?;
    }
    drop(input);
    let status = child.0.wait()?;
    let took = t0.elapsed();
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.0.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        bail!("ssh exited {status}: {err}");
    }
    Ok(took)
}

/// Raises the soft limit on open files to the hard limit (the gateway and
/// the many ssh clients inherit it).
pub(crate) fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            let want = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &want);
        }
    }
}

/// Holds `n` sessions open through the gateway; the gateway's (RSS, peak)
/// MiB with all of them up.
fn hold_sessions(setup: &Setup, n: usize) -> anyhow::Result<(f64, f64)> {
    let mut held: Vec<(Reaped, BufReader<ChildStdout>)> = Vec::with_capacity(n);
    const BATCH: usize = 20;
    for start in (0..n).step_by(BATCH) {
        let mut batch = Vec::new();
        for i in start..(start + BATCH).min(n) {
            let cert = setup.grant(i)?;
            let mut child = Reaped(
                setup
                    .ssh(Some(&cert), &["echo up; exec sleep 600"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting ssh")?,
            );
            let out = BufReader::new(child.0.stdout.take().context("stdout")?);
            batch.push((child, out));
        }
        for (child, mut out) in batch {
            let mut line = String::new();
            out.read_line(&mut line)?;
            if line.trim() != "up" {
                bail!(
                    "session {} did not come up ({line:?}); gateway log:\n{}",
                    held.len(),
                    std::fs::read_to_string(setup.dir.path().join("gateway.log"))
                        .unwrap_or_default()
                );
            }
            held.push((child, out));
        }
    }
    let mem = machine::process_memory(setup.gateway.0.id());
    drop(held);
    Ok(mem)
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let m = machine::describe();
    if !Path::new(SSHD).is_file() {
        bail!("{SSHD} not found: the gateway suite needs OpenSSH's server as its target");
    }
    raise_nofile();
    let setup = Setup::start(&args.common)?;
    let idle = machine::process_memory(setup.gateway.0.id());

    eprintln!(
        "  round trips: {} through the gateway, then direct",
        args.round_trips
    );
    let cert = setup.grant(usize::MAX)?;
    let via = round_trips(setup.ssh(Some(&cert), &[]), args.round_trips)?.summarize();
    let direct = round_trips(setup.ssh(None, &[]), args.round_trips)?.summarize();
    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e3).unwrap_or(f64::NAN);
    let added_p50 = ms(via.p50) - ms(direct.p50);
    let added_p99 = ms(via.p99) - ms(direct.p99);

    eprintln!(
        "  throughput: {} MiB through the gateway, then direct",
        args.mib
    );
    let cert = setup.grant(usize::MAX - 1)?;
    let via_push = push(setup.ssh(Some(&cert), &[]), args.mib)?;
    let direct_push = push(setup.ssh(None, &[]), args.mib)?;
    let rate = |t: Duration| args.mib as f64 / t.as_secs_f64();
    let fraction = rate(via_push) / rate(direct_push);

    eprintln!("  memory: {} sessions at once", args.sessions);
    let (rss, peak) = hold_sessions(&setup, args.sessions)?;

    let mut lat = Table::new(&[
        ("one-byte round trip", Align::Left),
        ("p50 ms", Align::Right),
        ("p99 ms", Align::Right),
        ("slowest ms", Align::Right),
    ]);
    for (what, s) in [
        ("through the gateway", &via),
        ("direct ssh (reference)", &direct),
    ] {
        lat.push(vec![
            what.into(),
            report::millis(s.p50),
            report::millis(s.p99),
            report::millis(s.max),
        ]);
    }
    let mut thr = Table::new(&[
        ("MiB into `cat > /dev/null`", Align::Left),
        ("seconds", Align::Right),
        ("MiB/s", Align::Right),
    ]);
    for (what, t) in [
        ("through the gateway", via_push),
        ("direct ssh (reference)", direct_push),
    ] {
        thr.push(vec![
            what.into(),
            format!("{:.2}", t.as_secs_f64()),
            format!("{:.0}", rate(t)),
        ]);
    }
    let mut mem = Table::new(&[
        ("gateway", Align::Left),
        ("RSS MiB", Align::Right),
        ("peak RSS MiB", Align::Right),
    ]);
    mem.push(vec![
        "idle, no session".into(),
        report::mib(idle.0),
        report::mib(idle.1),
    ]);
    mem.push(vec![
        format!("{} sessions open", args.sessions),
        report::mib(rss),
        report::mib(peak),
    ]);
    let met = |ok: bool| if ok { "met" } else { "not met" };
    let body = format!(
        "{}; the real gatepass-server dev, gatepass-gateway (setup, run) and a private sshd \
         on loopback, OpenSSH's ssh client; one key account.{}\n\n\
         {}\n{}\n{}\n\
         - added latency per round trip: p50 {added_p50:.3} ms, p99 {added_p99:.3} ms \
         ({} round trips each way, one session).\n\
         - throughput through the gateway: {:.0}% of direct ({} MiB; target at least {:.0}%: {}).\n\
         - memory with {} sessions: {} MB resident, peak {} MB (target under 200 MB: {}); \
         {:.0} KiB per session over idle.\n",
        m.measured_on(),
        m.busy_warning(),
        lat.to_markdown(),
        thr.to_markdown(),
        mem.to_markdown(),
        args.round_trips,
        100.0 * fraction,
        args.mib,
        100.0 * TARGET_THROUGHPUT,
        met(fraction >= TARGET_THROUGHPUT),
        args.sessions,
        report::mib(rss * 1.048_576),
        report::mib(peak * 1.048_576),
        met(peak < TARGET_MEMORY_MIB),
        (rss - idle.0) * 1024.0 / args.sessions.max(1) as f64,
    );
    report::publish(args.common.write.as_deref(), SECTION, &body)
}
