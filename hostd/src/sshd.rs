//! Talking to the sshd binary: `sshd -t` (is the config valid?), `sshd -T`
//! (what does sshd make of it?) and reloading the running daemon.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum SshdError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed: {output}")]
    Failed { command: String, output: String },
    #[error("{command} did not finish within {secs} s")]
    Timeout { command: String, secs: u64 },
}

/// How long an `sshd -t`/`-T` or a reload command may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// One sshd binary and the main config it reads.
#[derive(Clone, Debug)]
pub struct Sshd {
    pub binary: PathBuf,
    pub config: PathBuf,
}

impl Sshd {
    pub fn new(binary: &Path, config: &Path) -> Sshd {
        Sshd {
            binary: binary.to_path_buf(),
            config: config.to_path_buf(),
        }
    }

    /// `sshd -t -f CONFIG`: Ok when sshd accepts the config (and its includes).
    pub fn test(&self) -> Result<(), SshdError> {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-t").arg("-f").arg(&self.config);
        run(&mut cmd).map(|_| ())
    }

    /// Whether this sshd knows the `Include` keyword (OpenSSH 8.2 and
    /// later): `sshd -t` of a probe config holding only an `Include` must
    /// not fail on that line. Anything else going wrong says yes, so that
    /// the real config's own `sshd -t` check has the last word.
    pub fn supports_include(&self) -> bool {
        let Ok(dir) = tempfile::tempdir() else {
            return true;
        };
        let probe = dir.path().join("sshd_config");
        let text = format!("Include {}\n", dir.path().join("none.conf").display());
        if std::fs::write(&probe, text).is_err() {
            return true;
        }
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-t").arg("-f").arg(&probe);
        match run(&mut cmd) {
            Err(SshdError::Failed { output, .. }) => !output
                .to_ascii_lowercase()
                .contains("bad configuration option: include"),
            _ => true,
        }
    }

    /// The OpenSSH version of this sshd, as (major, minor), from what
    /// `sshd -V` prints: its version (OpenSSH 9.0 and later), or, before,
    /// "unknown option" and the usage text, which begins with it. None
    /// when it cannot be told (not OpenSSH, or it did not run).
    pub fn version(&self) -> Option<(u32, u32)> {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-V");
        let (_, stdout, stderr) = run_status(&mut cmd).ok()?;
        parse_version(&stderr).or_else(|| parse_version(&stdout))
    }

    /// `sshd -T -f CONFIG`: the effective global settings.
    pub fn effective(&self) -> Result<Effective, SshdError> {
        let mut cmd = Command::new(&self.binary);
        // sshd makes a relative path in its config absolute against its
        // working folder; the running sshd's is `/`, so `-T` runs there too.
        cmd.arg("-T").arg("-f").arg(&self.config).current_dir("/");
        run(&mut cmd).map(|out| Effective::parse(&out))
    }
}

/// sshd's view of its config, as `sshd -T` prints it: lower-case keyword,
/// then the value; keywords that may repeat (HostKey, HostCertificate) keep
/// every value.
#[derive(Clone, Debug, Default)]
pub struct Effective(BTreeMap<String, Vec<String>>);

impl Effective {
    pub fn parse(text: &str) -> Effective {
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (k, v) = line.split_once(' ').unwrap_or((line, ""));
            map.entry(k.to_ascii_lowercase())
                .or_default()
                .push(v.trim().to_string());
        }
        Effective(map)
    }

    /// The (first) value of a keyword.
    pub fn get(&self, keyword: &str) -> Option<&str> {
        self.0
            .get(keyword)
            .and_then(|v| v.first())
            .map(String::as_str)
    }

    /// Every value of a repeatable keyword.
    pub fn all(&self, keyword: &str) -> &[String] {
        self.0.get(keyword).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// `OpenSSH_9.2p1 Debian-2+deb12u3, OpenSSL …` → (9, 2).
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let at = text.find("OpenSSH_")? + "OpenSSH_".len();
    let rest = &text[at..];
    let (major, rest) = rest.split_once('.')?;
    let minor: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Runs a command with no stdin, bounded in time; Ok(stdout) on exit 0,
/// otherwise an error with what it printed.
pub fn run(cmd: &mut Command) -> Result<String, SshdError> {
    let shown = format!("{cmd:?}").replace('"', "");
    let (status, stdout, stderr) = run_status(cmd)?;
    if status.success() {
        Ok(stdout)
    } else {
        let mut output = stderr.trim().to_string();
        if output.is_empty() {
            output = stdout.trim().to_string();
        }
        if output.is_empty() {
            output = status.to_string();
        }
        Err(SshdError::Failed {
            command: shown,
            output,
        })
    }
}

/// Runs a command with no stdin, bounded in time: how it exited, what it
/// printed on stdout and on stderr.
fn run_status(cmd: &mut Command) -> Result<(std::process::ExitStatus, String, String), SshdError> {
    let shown = format!("{cmd:?}").replace('"', "");
    let mut out = tempfile_std()?;
    let mut err = tempfile_std()?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(clone(&out)?))
        .stderr(Stdio::from(clone(&err)?))
        .spawn()
        .map_err(|source| SshdError::Spawn {
            program: format!("{:?}", cmd.get_program()),
            source,
        })?;
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(SshdError::Timeout {
                    command: shown,
                    secs: TIMEOUT.as_secs(),
                });
            }
        }
    };
    Ok((status, read_all(&mut out), read_all(&mut err)))
}

// Output goes to unnamed temp files so no pipe can fill up and block.
fn tempfile_std() -> Result<std::fs::File, SshdError> {
    tempfile::tempfile().map_err(|source| SshdError::Spawn {
        program: "temp file".into(),
        source,
    })
}

fn clone(f: &std::fs::File) -> Result<std::fs::File, SshdError> {
    f.try_clone().map_err(|source| SshdError::Spawn {
        program: "temp file".into(),
        source,
    })
}

fn read_all(f: &mut std::fs::File) -> String {
    use std::io::{Read, Seek};
    let mut buf = Vec::new();
    let _ = f.rewind();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// How the running sshd is told to re-read its config and host certificates.
#[derive(Clone, Debug)]
pub enum Reload {
    /// `sh -c COMMAND`, e.g. `systemctl reload ssh`.
    Command(String),
    /// SIGHUP to the pid in sshd's PidFile (what `systemctl reload` does
    /// too); nothing to do when no sshd runs.
    PidFile,
}

/// What a reload did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reloaded {
    Command,
    Signaled(i32),
    NotRunning,
}

impl Reload {
    pub fn from_config(command: Option<&str>) -> Reload {
        match command.map(str::trim).filter(|c| !c.is_empty()) {
            Some(c) => Reload::Command(c.to_string()),
            None => Reload::PidFile,
        }
    }

    pub fn run(&self, sshd: &Sshd) -> Result<Reloaded, SshdError> {
        match self {
            Reload::Command(c) => {
                run(Command::new("/bin/sh").arg("-c").arg(c))?;
                Ok(Reloaded::Command)
            }
            Reload::PidFile => {
                let eff = sshd.effective()?;
                let pidfile = eff.get("pidfile").unwrap_or("/run/sshd.pid");
                let Some(pid) = std::fs::read_to_string(pidfile)
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                    .filter(|p| *p > 1)
                else {
                    return Ok(Reloaded::NotRunning);
                };
                // A pid file left by an sshd that died may name another
                // process by now, which SIGHUP would end: a process seen to
                // run something else is not sent it.
                if runs(pid, &sshd.binary) == Some(false) {
                    tracing::warn!(
                        pid,
                        pidfile,
                        "the pid file names a process that is not sshd: not signalled"
                    );
                    return Ok(Reloaded::NotRunning);
                }
                let pid = nix::unistd::Pid::from_raw(pid);
                match nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP) {
                    Ok(()) => Ok(Reloaded::Signaled(pid.as_raw())),
                    Err(nix::errno::Errno::ESRCH) => Ok(Reloaded::NotRunning),
                    Err(e) => Err(SshdError::Failed {
                        command: format!("kill -HUP {pid}"),
                        output: e.to_string(),
                    }),
                }
            }
        }
    }
}

/// Whether process `pid` runs `binary` (the file itself, through any
/// symlinks; also when the package was upgraded under it and the file it
/// runs is the replaced one). None when this process cannot tell: under
/// its systemd unit hostd has no capabilities and `ProtectProc=invisible`,
/// so sshd's `/proc` entry is out of its sight (the signal still reaches
/// it, as one root process may signal another).
fn runs(pid: i32, binary: &Path) -> Option<bool> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let exe = exe.to_string_lossy();
    let exe = exe.strip_suffix(" (deleted)").unwrap_or(&exe);
    let binary = std::fs::canonicalize(binary).unwrap_or_else(|_| binary.to_path_buf());
    Some(Path::new(exe) == binary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_process_running_sshd_is_taken_for_it() {
        let me = std::process::id() as i32;
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert_eq!(runs(me, &exe), Some(true));
        assert_eq!(runs(me, Path::new("/usr/sbin/sshd")), Some(false));
        // Out of sight (or gone): not known.
        assert_eq!(runs(i32::MAX, Path::new("/usr/sbin/sshd")), None);
    }

    /// A pid file naming a process that is not sshd (an sshd died and its
    /// pid was taken): it is not sent SIGHUP, which would end it.
    #[test]
    fn a_stale_pid_file_naming_another_process_is_not_signalled() {
        let dir = tempfile::tempdir().unwrap();
        let mut other = Command::new("sleep").arg("30").spawn().unwrap();
        let pidfile = dir.path().join("sshd.pid");
        std::fs::write(&pidfile, format!("{}\n", other.id())).unwrap();
        let config = dir.path().join("sshd_config");
        std::fs::write(&config, format!("PidFile {}\n", pidfile.display())).unwrap();
        let sshd = Sshd::new(Path::new("/usr/sbin/sshd"), &config);
        assert_eq!(Reload::PidFile.run(&sshd).unwrap(), Reloaded::NotRunning);
        assert!(
            other.try_wait().unwrap().is_none(),
            "the other process was ended"
        );
        other.kill().unwrap();
        other.wait().unwrap();
    }

    #[test]
    fn the_version_is_read_from_what_sshd_prints() {
        // OpenSSH 9.2's `sshd -V`, and 8.9's answer to an unknown option.
        assert_eq!(
            parse_version("OpenSSH_9.2p1 Debian-2+deb12u3, OpenSSL 3.0.15 3 Sep 2024\n"),
            Some((9, 2))
        );
        assert_eq!(
            parse_version(
                "sshd: unknown option -- V\nOpenSSH_8.9p1 Ubuntu-3ubuntu0.10, OpenSSL 3.0.2 15 Mar 2022\nusage: sshd [-46DdeiqTt]"
            ),
            Some((8, 9))
        );
        assert_eq!(parse_version("OpenSSH_10.0, LibreSSL 4.1.0"), Some((10, 0)));
        assert_eq!(parse_version("dropbear v2022.83"), None);
        assert_eq!(parse_version("OpenSSH_x.y"), None);
    }

    /// The sshd on this machine answers with its version.
    #[test]
    fn the_installed_sshd_says_its_version() {
        let sshd = Sshd::new(Path::new("/usr/sbin/sshd"), Path::new("/dev/null"));
        let Some((major, _)) = sshd.version() else {
            panic!("no version from /usr/sbin/sshd -V");
        };
        assert!(major >= 7, "{major}");
        let none = Sshd::new(Path::new("/nonexistent/sshd"), Path::new("/dev/null"));
        assert_eq!(none.version(), None);
    }

    #[test]
    fn effective_keeps_repeats() {
        let e = Effective::parse(
            "port 22\nhostkey /a\nhostkey /b\nauthorizedkeysfile .ssh/authorized_keys /x/%u\n",
        );
        assert_eq!(e.get("port"), Some("22"));
        assert_eq!(e.all("hostkey"), ["/a".to_string(), "/b".to_string()]);
        assert_eq!(
            e.get("authorizedkeysfile"),
            Some(".ssh/authorized_keys /x/%u")
        );
        assert!(e.get("nothing").is_none());
    }

    #[test]
    fn run_reports_failure_output() {
        let e = run(Command::new("/bin/sh").args(["-c", "echo oops >&2; exit 3"])).unwrap_err();
        assert!(e.to_string().contains("oops"), "{e}");
        assert_eq!(
            run(Command::new("/bin/sh").args(["-c", "echo hi"])).unwrap(),
            "hi\n"
        );
    }
}
