//! What the user hands us besides options: KEY=VALUE pairs (with Vault's
//! `@file` and `-` for stdin) and secrets typed at the terminal.

use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Map, Value};

use crate::error::{Error, Result};

static STDIN_TAKEN: AtomicBool = AtomicBool::new(false);

/// Stdin can feed only one value; a second `-` would silently get nothing.
fn take_stdin(what: &str) -> Result<()> {
    if STDIN_TAKEN.swap(true, Ordering::SeqCst) {
        return Err(Error::Usage(format!(
            "{what}: standard input was already used for another value"
        )));
    }
    Ok(())
}

/// All of stdin, without the final line break (`echo secret |` adds one).
pub fn read_stdin(what: &str) -> Result<String> {
    take_stdin(what)?;
    let mut s = String::new();
    io::stdin()
        .read_to_string(&mut s)
        .map_err(|e| Error::Local(format!("{what}: cannot read standard input: {e}")))?;
    Ok(strip_newline(s))
}

fn strip_newline(mut s: String) -> String {
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    s
}

/// Asks for a secret. At a terminal the input is not echoed; otherwise the
/// first line of stdin is the secret (for scripts).
pub fn prompt_secret(prompt: &str, what: &str) -> Result<String> {
    take_stdin(what)?;
    let stdin = io::stdin();
    let interactive = stdin.is_terminal();
    let _echo = if interactive {
        eout!("{prompt}");
        let _ = io::stderr().flush();
        Some(EchoOff::new())
    } else {
        None
    };
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if interactive {
        eoutln!();
    }
    read.map_err(|e| Error::Local(format!("{what}: cannot read standard input: {e}")))?;
    let secret = strip_newline(line);
    if secret.is_empty() {
        return Err(Error::Usage(format!("no {what} given")));
    }
    Ok(secret)
}

/// Turns terminal echo off while it lives. No crate for this is among the
/// workspace's dependencies, so it asks `stty`, which works on the terminal
/// it inherits as stdin.
struct EchoOff {
    active: bool,
}

impl EchoOff {
    fn new() -> Self {
        let active = stty("-echo");
        if !active {
            eout!("(warning: cannot hide input; it will be visible) ");
        }
        EchoOff { active }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if self.active {
            stty("echo");
        }
    }
}

fn stty(arg: &str) -> bool {
    Command::new("stty")
        .arg(arg)
        .stdin(Stdio::inherit())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Parses Vault-style arguments into a request body:
/// - `KEY=VALUE`; `KEY=@FILE` reads a file, `KEY=-` reads stdin, `KEY=\@x`
///   is the literal `@x`. Values are sent as strings, as Vault's CLI does.
/// - A repeated key makes a list (`policies=a policies=b`).
/// - A lone `-` or `@FILE.json` merges a JSON object from stdin or a file.
pub fn parse_pairs(args: &[String]) -> Result<Map<String, Value>> {
    let mut map = Map::new();
    for (i, arg) in args.iter().enumerate() {
        if arg == "-" {
            merge_json(&mut map, &read_stdin("JSON input")?, "standard input")?;
            continue;
        }
        let Some((key, raw)) = arg.split_once('=') else {
            if let Some(path) = arg.strip_prefix('@') {
                merge_json(&mut map, &read_file(path)?, path)?;
                continue;
            }
            // The argument itself is not shown: it may well be a secret.
            return Err(Error::Usage(format!(
                "argument {} is not of the form KEY=VALUE",
                i + 1
            )));
        };
        if key.is_empty() {
            return Err(Error::Usage(format!("argument {} has an empty key", i + 1)));
        }
        let value = Value::String(pair_value(key, raw)?);
        match map.get_mut(key) {
            None => {
                map.insert(key.to_string(), value);
            }
            Some(Value::Array(list)) => list.push(value),
            Some(first) => *first = Value::Array(vec![first.take(), value]),
        }
    }
    Ok(map)
}

fn pair_value(key: &str, raw: &str) -> Result<String> {
    if raw == "-" {
        read_stdin(key)
    } else if let Some(literal) = raw.strip_prefix("\\@") {
        Ok(format!("@{literal}"))
    } else if let Some(path) = raw.strip_prefix('@') {
        read_file(path)
    } else {
        Ok(raw.to_string())
    }
}

fn read_file(path: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::Local(format!("cannot read {path}: {e}")))
}

fn merge_json(map: &mut Map<String, Value>, text: &str, source: &str) -> Result<()> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => {
            map.extend(m);
            Ok(())
        }
        Ok(_) => Err(Error::Usage(format!("{source}: expected a JSON object"))),
        Err(e) => Err(Error::Usage(format!("{source}: not valid JSON: {e}"))),
    }
}

/// Takes `key` out of the pairs as a single string.
pub fn take_string(map: &mut Map<String, Value>, key: &str) -> Result<Option<String>> {
    match map.remove(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Error::Usage(format!("{key} must be given once, as text"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pairs() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.hcl");
        std::fs::write(&file, "path \"x\" {}\n").unwrap();
        let m = parse_pairs(&strings(&[
            "a=1",
            "b=x=y",
            &format!("policy=@{}", file.display()),
            "p=a",
            "p=b",
            "lit=\\@home",
            "empty=",
        ]))
        .unwrap();
        assert_eq!(
            Value::Object(m),
            json!({"a": "1", "b": "x=y", "policy": "path \"x\" {}\n", "p": ["a", "b"], "lit": "@home", "empty": ""})
        );
    }

    #[test]
    fn bad_pairs_do_not_echo_the_argument() {
        let err = parse_pairs(&strings(&["a=1", "hunter2"])).unwrap_err();
        assert!(matches!(err, Error::Usage(_)));
        assert!(!err.to_string().contains("hunter2"));
        assert!(parse_pairs(&strings(&["=x"])).is_err());
        assert!(matches!(
            parse_pairs(&strings(&["k=@/nonexistent/file"])).unwrap_err(),
            Error::Local(_)
        ));
    }

    #[test]
    fn json_file_merges() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("d.json");
        std::fs::write(&file, r#"{"n": 3, "l": ["x"]}"#).unwrap();
        let m = parse_pairs(&strings(&[&format!("@{}", file.display()), "k=v"])).unwrap();
        assert_eq!(Value::Object(m), json!({"n": 3, "l": ["x"], "k": "v"}));
    }

    #[test]
    fn newline_stripping() {
        assert_eq!(strip_newline("a\n".into()), "a");
        assert_eq!(strip_newline("a\r\n".into()), "a");
        assert_eq!(strip_newline("a\n\n".into()), "a\n");
    }
}
