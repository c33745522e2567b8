//! The server's layering, checked on its source: only the HTTP layer
//! (`http/`, and the listener in `serve.rs`, `tls.rs`, `main.rs`, `lib.rs`)
//! knows about HTTP. Domain modules take typed inputs and return typed
//! outputs or `Error`; they never name axum, the `http` crate,
//! `crate::http`, its `Reply` or the `Request` it routes (input fields come
//! as `crate::request::Fields`). The ssh engine does not call hosts (hosts
//! builds on ssh, not the other way round), state.rs holds what is open
//! while bootstrap.rs sets storage up, and no two top-level modules import
//! each other, directly or through others.

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
        // The web UI (`ui/`) is another face of the HTTP layer: pages and
        // forms over `http::execute`, with no domain logic of its own.
        if rel.starts_with("http/") || rel.starts_with("ui/") || http_layer.contains(&rel.as_str())
        {
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

/// A file's module path (`ssh/creds.rs` → ssh::creds, `hosts/mod.rs` →
/// hosts).
fn module_of(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(String::from)
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The module paths a file's code names: `crate::a::b`, `crate::{a, b::c}`,
/// `super::a` and `super::{a, b}` (one level of braces).
fn named_paths(rel: &str, code: &str) -> Vec<Vec<String>> {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut parent = module_of(rel);
    parent.pop();
    let mut out = Vec::new();
    for (prefix, base) in [("crate::", Vec::new()), ("super::", parent)] {
        for (i, _) in code.match_indices(prefix) {
            if code[..i].chars().next_back().is_some_and(ident) {
                continue;
            }
            let rest = &code[i + prefix.len()..];
            let path_len = rest
                .find(|c: char| !(ident(c) || c == ':'))
                .unwrap_or(rest.len());
            let path = rest[..path_len].trim_end_matches(':');
            let mut head = base.clone();
            head.extend(path.split("::").filter(|s| !s.is_empty()).map(String::from));
            if rest[path_len..].starts_with('{') {
                let group = &rest[path_len + 1..];
                let group = &group[..group.find('}').unwrap_or(group.len())];
                for item in group.split(',') {
                    let item = item.trim().split(" as ").next().unwrap_or("");
                    let mut p = head.clone();
                    p.extend(
                        item.split("::")
                            .map(str::trim)
                            .filter(|s| !s.is_empty() && *s != "{" && *s != "self")
                            .map(String::from),
                    );
                    out.push(p);
                }
            } else {
                out.push(head);
            }
        }
    }
    out
}

#[test]
fn domain_modules_form_no_import_cycle() {
    let src = server_src();
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    let rels: Vec<String> = paths
        .iter()
        .map(|p| p.strip_prefix(&src).unwrap().to_string_lossy().to_string())
        .filter(|r| r != "main.rs" && r != "lib.rs")
        .collect();
    let modules: Vec<Vec<String>> = rels.iter().map(|r| module_of(r)).collect();
    // Edges: file -> the files whose modules it names (longest match).
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); rels.len()];
    for (i, rel) in rels.iter().enumerate() {
        let text = std::fs::read_to_string(src.join(rel)).unwrap();
        // Unit tests (at the end of a file) are modules of their own.
        let text = text.split("#[cfg(test)]").next().unwrap_or("");
        let code: String = text.lines().map(code).collect::<Vec<_>>().join("\n");
        for path in named_paths(rel, &code) {
            let target = (1..=path.len())
                .rev()
                .find_map(|n| modules.iter().position(|m| m[..] == path[..n]));
            if let Some(t) = target.filter(|t| *t != i) {
                edges[i].push(t);
            }
        }
    }
    // Strongly connected components (Tarjan); a cycle within one
    // top-level module (a module and its own files) is allowed.
    struct Tarjan<'a> {
        edges: &'a [Vec<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        stack: Vec<usize>,
        on_stack: Vec<bool>,
        next: usize,
        sccs: Vec<Vec<usize>>,
    }
    impl Tarjan<'_> {
        fn visit(&mut self, v: usize) {
            self.index[v] = Some(self.next);
            self.low[v] = self.next;
            self.next += 1;
            self.stack.push(v);
            self.on_stack[v] = true;
            for &w in &self.edges[v] {
                match self.index[w] {
                    None => {
                        self.visit(w);
                        self.low[v] = self.low[v].min(self.low[w]);
                    }
                    Some(iw) if self.on_stack[w] => self.low[v] = self.low[v].min(iw),
                    Some(_) => {}
                }
            }
            if Some(self.low[v]) == self.index[v] {
                let mut scc = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack[w] = false;
                    scc.push(w);
                    if w == v {
                        break;
                    }
                }
                self.sccs.push(scc);
            }
        }
    }
    let n = rels.len();
    let mut t = Tarjan {
        edges: &edges,
        index: vec![None; n],
        low: vec![0; n],
        stack: Vec::new(),
        on_stack: vec![false; n],
        next: 0,
        sccs: Vec::new(),
    };
    for v in 0..n {
        if t.index[v].is_none() {
            t.visit(v);
        }
    }
    let cycles: Vec<Vec<&str>> = t
        .sccs
        .iter()
        .filter(|scc| scc.iter().any(|&f| modules[f][0] != modules[scc[0]][0]))
        .map(|scc| {
            let mut files: Vec<&str> = scc.iter().map(|&f| rels[f].as_str()).collect();
            files.sort_unstable();
            files
        })
        .collect();
    assert!(
        cycles.is_empty(),
        "server modules that import each other in a cycle: {cycles:?}"
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
    let named = named_paths(
        "ssh/creds.rs",
        "use crate::{hosts, ssh::roles};\nuse super::roles::{self, Role};\ncrate::hosts::find(x)",
    );
    let named: Vec<String> = named.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        named,
        [
            "hosts",
            "ssh::roles",
            "hosts::find",
            "ssh::roles",
            "ssh::roles::Role"
        ]
    );
}
