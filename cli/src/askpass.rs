//! The askpass side of `gatepass ssh connect` in otp mode.
//!
//! ssh runs `$SSH_ASKPASS PROMPT` and reads the answer from its stdout. For
//! the OTP that program is this binary, through a symlink named
//! `gatepass-askpass` in connect's private folder (ssh cannot pass it
//! arguments, so the name selects the mode). It learns where the OTP is from
//! `GATEPASS_ASKPASS_FIFO` — a path, not a secret — and reads the OTP from
//! that named pipe, which `connect` removes as soon as a reader has opened
//! it: a second prompt (the OTP works once anyway) finds nothing and gets
//! no answer. Only the prompt of the login itself gets it (`USER@HOST` as
//! `ssh -G` resolves them, in `GATEPASS_ASKPASS_LOGIN`): a ProxyJump
//! host's prompt goes to the terminal. Questions that are not password prompts (ssh's "continue
//! connecting (yes/no)?" about an unknown host key) are never answered from
//! the pipe: they go to the terminal, or are answered "no" without one.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// The name ssh runs this binary by.
pub const NAME: &str = "gatepass-askpass";

/// Where the pipe with the OTP is.
pub const FIFO_VAR: &str = "GATEPASS_ASKPASS_FIFO";

/// The login (`USER@HOST`, as ssh's prompts name it) whose password
/// prompt the OTP answers. Any other password prompt goes to the terminal:
/// with a ProxyJump the jump host's ssh runs the same askpass, and the OTP
/// typed there would be the jump host's to use.
pub const LOGIN_VAR: &str = "GATEPASS_ASKPASS_LOGIN";

/// How long the askpass waits for `connect` to hand over the OTP.
const WAIT: Duration = Duration::from_secs(30);

/// Whether this process was started as the askpass.
pub fn invoked() -> bool {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n == OsStr::new(NAME)))
        .unwrap_or(false)
}

/// Puts the askpass link into `dir`; returns its path for SSH_ASKPASS.
pub fn install(dir: &Path) -> Result<PathBuf> {
    let exe = std::env::current_exe()
        .ok()
        .filter(|p| p.is_file())
        .ok_or_else(|| {
            Error::Local(
                "cannot find this program's own file (was it replaced while running?)".into(),
            )
        })?;
    let link = dir.join(NAME);
    std::os::unix::fs::symlink(&exe, &link)
        .map_err(|e| Error::Local(format!("cannot create {}: {e}", link.display())))?;
    Ok(link)
}

pub fn main() -> ExitCode {
    let prompt = std::env::args_os()
        .nth(1)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    match std::env::var("SSH_ASKPASS_PROMPT").as_deref() {
        // A notice ("confirm user presence…"), nothing to answer.
        Ok("none") => return ExitCode::SUCCESS,
        Ok("confirm") => return ask_terminal(&prompt),
        _ => {}
    }
    if is_question(&prompt) {
        return ask_terminal(&prompt);
    }
    let login = std::env::var(LOGIN_VAR).unwrap_or_default();
    if !is_prompt_of(&prompt, &login) {
        return ask_terminal(&prompt);
    }
    let Some(fifo) = std::env::var_os(FIFO_VAR) else {
        eoutln!("gatepass: {NAME} answers only for `gatepass ssh connect`");
        return ExitCode::FAILURE;
    };
    // Never leave ssh hanging if `connect` is gone.
    std::thread::spawn(|| {
        std::thread::sleep(WAIT);
        eoutln!("gatepass: no one-time password came within {WAIT:?}");
        std::process::exit(1);
    });
    match read_secret(Path::new(&fifo)) {
        Ok(otp) if !otp.trim().is_empty() => {
            let line = Zeroizing::new(format!("{}\n", otp.trim()));
            let mut out = io::stdout().lock();
            if out
                .write_all(line.as_bytes())
                .and_then(|()| out.flush())
                .is_ok()
            {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Ok(_) => ExitCode::FAILURE,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            eoutln!(
                "gatepass: the one-time password was already given to ssh; not answering \
                 {:?} again",
                prompt.trim()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eoutln!("gatepass: cannot read the one-time password: {e}");
            ExitCode::FAILURE
        }
    }
}

fn read_secret(fifo: &Path) -> io::Result<Zeroizing<String>> {
    let f = fs::File::open(fifo)?;
    let mut s = Zeroizing::new(String::new());
    f.take(4096).read_to_string(&mut s)?;
    Ok(s)
}

/// ssh's yes/no questions (an unknown host key), as opposed to prompts for
/// a password or a keyboard-interactive answer.
fn is_question(prompt: &str) -> bool {
    let p = prompt.to_ascii_lowercase();
    p.contains("yes/no")
}

/// Whether `prompt` asks for the password of `login` (`USER@HOST`): ssh's
/// own password prompt (`USER@HOST's password: `) or a keyboard-interactive
/// one, which ssh prefixes with `(USER@HOST) `.
fn is_prompt_of(prompt: &str, login: &str) -> bool {
    if login.is_empty() {
        return false;
    }
    let (p, l) = (prompt.to_lowercase(), login.to_lowercase());
    p.starts_with(&format!("{l}'s password:")) || p.starts_with(&format!("({l}) "))
}

/// Asks the person at the terminal, if there is one; else the answer is
/// no (an empty answer and a failure status).
fn ask_terminal(prompt: &str) -> ExitCode {
    let tty = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty");
    let Ok(mut tty) = tty else {
        eoutln!(
            "gatepass: not answering ssh's question without a terminal: {}",
            prompt.trim()
        );
        return ExitCode::FAILURE;
    };
    if tty
        .write_all(prompt.as_bytes())
        .and_then(|()| tty.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    let mut answer = String::new();
    if BufReader::new(tty).read_line(&mut answer).is_err() {
        return ExitCode::FAILURE;
    }
    let mut out = io::stdout().lock();
    match out.write_all(answer.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        // ssh has gone: there is no one left to answer.
        Err(_) => ExitCode::FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_are_not_password_prompts() {
        assert!(is_question(
            "The authenticity of host '[127.0.0.1]:2222' can't be established.\n\
             Are you sure you want to continue connecting (yes/no/[fingerprint])? "
        ));
        assert!(!is_question("root@127.0.0.1's password: "));
        assert!(!is_question("(root@127.0.0.1) Password: "));
    }

    #[test]
    fn only_the_prompts_of_the_login_itself_get_the_otp() {
        let login = "root@10.0.0.5";
        assert!(is_prompt_of("root@10.0.0.5's password: ", login));
        assert!(is_prompt_of("(root@10.0.0.5) Password: ", login));
        assert!(is_prompt_of("(root@10.0.0.5) Verification code: ", login));
        // A ProxyJump host's prompts, and look-alikes.
        assert!(!is_prompt_of("jump@bastion's password: ", login));
        assert!(!is_prompt_of("(jump@bastion) Password: ", login));
        assert!(!is_prompt_of("root@10.0.0.50's password: ", login));
        assert!(!is_prompt_of("(root@10.0.0.5.evil) Password: ", login));
        assert!(!is_prompt_of("xroot@10.0.0.5's password: ", login));
        assert!(!is_prompt_of("root@10.0.0.5's password: ", ""));
    }

    #[test]
    fn link_is_named_for_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let link = install(dir.path()).unwrap();
        assert_eq!(link.file_name().unwrap(), NAME);
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
    }
}
