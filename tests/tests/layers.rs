//! The server's layering, checked on its source: only the HTTP layer
//! (`http/`, and the listener in `serve.rs`, `tls.rs`, `main.rs`, `lib.rs`)
//! knows about HTTP. Domain modules take typed inputs and return typed
//! outputs or `Error`; they never name axum, the `http` crate,
//! `crate::http`, its `Reply` or the `Request` it routes (input fields come
//! as `crate::request::Fields`). The ssh engine does not call hosts (hosts
//! builds on ssh, not the other way round), and state.rs holds what is open
//! while bootstrap.rs sets storage up.

use std::path::{Path, PathBuf};

fn server_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../server/src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a line: without its comment and string literals.
fn code(line: &str) -> String {
    let mut out = String::new();
    let mut in_str = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if in_str => {
                chars.next();
            }
            '"' => in_str = !in_str,
            '/' if !in_str && chars.peek() == Some(&'/') => break,
            _ if !in_str => out.push(c),
            _ => {}
        }
    }
    out
}

/// Whether `word` appears in `code` as a whole identifier.
fn names(code: &str, word: &str) -> bool {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    code.match_indices(word).any(|(i, _)| {
        let before = code[..i].chars().next_back();
        let after = code[i + word.len()..].chars().next();
        !before.is_some_and(ident) && !after.is_some_and(ident)
    })
}

/// Lines of the server's domain modules (every file outside the HTTP layer)
/// that name any of `words`, as "file:line: text".
fn offending(words: &[&str], only_under: Option<&str>) -> Vec<String> {
    let src = server_src();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let http_layer = ["serve.rs", "tls.rs", "main.rs", "lib.rs"];
    let mut out = Vec::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap().to_string_lossy().to_string();
        if rel.starts_with("http/") || http_layer.contains(&rel.as_str()) {
            continue;
        }
        if only_under.is_some_and(|dir| !rel.starts_with(dir)) {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let c = code(line);
            if words.iter().any(|w| names(&c, w)) {
                out.push(format!("server/src/{rel}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    out
}

#[test]
fn domain_modules_do_not_know_http() {
    let bad = offending(
        &[
            "axum",
            "http",
            "Reply",
            "StatusCode",
            "Request",
            "Operation",
        ],
        None,
    );
    assert!(
        bad.is_empty(),
        "domain modules must not use axum, http or crate::http, nor take the request \
         (map to HTTP in server/src/http/):\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_ssh_engine_does_not_call_hosts() {
    let bad = offending(&["hosts"], Some("ssh/"));
    assert!(
        bad.is_empty(),
        "ssh/ must not use crate::hosts (resolve hosts in the HTTP layer):\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_state_only_holds_what_is_open() {
    // First-time set-up and upgrades (root token, policies, mounts, data
    // migrations) are bootstrap.rs's.
    let bad = offending(
        &["token", "mounts", "ensure_default", "migrate", "initialize"],
        Some("state.rs"),
    );
    assert!(
        bad.is_empty(),
        "state.rs must not set up or upgrade storage (that is bootstrap.rs):\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_check_sees_what_it_looks_for() {
    assert!(names(&code("use crate::http::{no_route, Reply};"), "http"));
    assert!(names(&code("use axum::http::StatusCode;"), "axum"));
    assert!(names(&code("use crate::{hosts, ssh};"), "hosts"));
    assert!(!names(&code("// see crate::http"), "http"));
    assert!(!names(&code(r#"let u = "https://x/http";"#), "http"));
    assert!(!names(&code("let https = http_body;"), "http"));
}
