//! The differential compatibility test: every request of
//! `tests/vault_diff.toml` goes to an OpenBao dev server and to a gatepass
//! dev server, and their answers are compared: the status code, the
//! envelope's keys, the keys of `data`, `auth` and `wrap_info`, and the
//! values a request names as `same` (or `near`, for seconds left). Values that must differ (IDs, tokens,
//! times, keys) are not compared unless named. Requests that need an
//! earlier answer (a secret ID, a token, an accessor, a lease ID) take it
//! from the same server's own earlier answer: `save` names it, `{{name}}`
//! uses it.
//!
//! A difference passes only when the request's `allow` lists it with a
//! reason from the table's `[reasons]` (each one also in README's
//! "Differences from Vault"); an allowance that no longer matches a
//! difference fails too, so the list stays true.

use std::collections::{BTreeMap, BTreeSet};

use gatepass_tests::openbao::OpenBaoDev;
use gatepass_tests::ssh::keypair;
use gatepass_tests::DevServer;
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    reasons: BTreeMap<String, String>,
    /// Differences accepted wherever they occur (each must occur once).
    allow_everywhere: BTreeMap<String, String>,
    request: Vec<Req>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Req {
    method: String,
    path: String,
    /// `root` (the default), `none`, or `{{name}}` of a saved token.
    #[serde(default)]
    token: Option<String>,
    /// A JSON body as a TOML table.
    #[serde(default)]
    json: Option<toml::Table>,
    /// A body sent as it is (`null`, `[1]`, broken JSON, a form), as
    /// JSON unless `headers` give a Content-Type.
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// name → dotted path in the answer (`data.secret_id`, `auth.client_token`).
    #[serde(default)]
    save: BTreeMap<String, String>,
    /// Dotted paths whose values must be equal on both servers.
    #[serde(default)]
    same: Vec<String>,
    /// Dotted paths of numbers (seconds left) that must be within 2 of
    /// each other: a TTL capped at a maximum counted from an earlier
    /// moment may be a second apart on the two servers.
    #[serde(default)]
    near: Vec<String>,
    /// Difference → reason name (a key of `[reasons]`).
    #[serde(default)]
    allow: BTreeMap<String, String>,
}

struct Server {
    name: &'static str,
    addr: String,
    client: reqwest::Client,
    vars: BTreeMap<String, String>,
}

impl Server {
    fn new(name: &'static str, addr: &str, cacert: &std::path::Path, root: &str) -> Server {
        let pem = std::fs::read(cacert).unwrap();
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .use_rustls_tls()
            .timeout(std::time::Duration::from_secs(20))
            .build()
            .unwrap();
        Server {
            name,
            addr: addr.to_string(),
            client,
            vars: BTreeMap::from([("root".to_string(), root.to_string())]),
        }
    }

    /// `{{name}}` replaced by this server's saved value.
    fn fill(&self, s: &str) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find("{{") {
            out.push_str(&rest[..i]);
            let end = rest[i..]
                .find("}}")
                .unwrap_or_else(|| panic!("unclosed {{{{ in {s:?}"));
            let name = &rest[i + 2..i + end];
            let v = self
                .vars
                .get(name)
                .unwrap_or_else(|| panic!("{}: nothing saved as {name:?} for {s:?}", self.name));
            out.push_str(v);
            rest = &rest[i + end + 2..];
        }
        out.push_str(rest);
        out
    }

    async fn send(&mut self, r: &Req) -> (u16, Option<Value>, Vec<String>) {
        let method = match r.method.as_str() {
            "LIST" => reqwest::Method::from_bytes(b"LIST").unwrap(),
            m => reqwest::Method::from_bytes(m.as_bytes()).unwrap(),
        };
        let url = format!("{}/v1/{}", self.addr, self.fill(&r.path));
        let mut b = self.client.request(method, url);
        let token = match r.token.as_deref().unwrap_or("root") {
            "root" => Some(self.vars["root"].clone()),
            "none" => None,
            t => Some(self.fill(t)),
        };
        if let Some(t) = token {
            b = b.header("X-Vault-Token", t);
        }
        for (k, v) in &r.headers {
            b = b.header(k, self.fill(v));
        }
        let body = match (&r.json, &r.body) {
            (Some(t), None) => Some(self.fill(&serde_json::to_string(t).unwrap())),
            (None, Some(raw)) => Some(self.fill(raw)),
            (None, None) => None,
            (Some(_), Some(_)) => panic!("{} {}: json and body both set", r.method, r.path),
        };
        if let Some(body) = body {
            if !r
                .headers
                .keys()
                .any(|k| k.eq_ignore_ascii_case("content-type"))
            {
                b = b.header("Content-Type", "application/json");
            }
            b = b.body(body);
        }
        let resp = b.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str::<Value>(&text).ok();
        let mut unsaved = Vec::new();
        for (name, path) in &r.save {
            let got = match v.as_ref().and_then(|v| lookup(v, path)) {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => {
                    // Later requests still go, with a value that is
                    // nothing; the missing answer is a difference.
                    unsaved.push(name.clone());
                    format!("nothing-saved-as-{name}")
                }
            };
            self.vars.insert(name.clone(), got);
        }
        (status, v, unsaved)
    }
}

/// `data.keys.0` in a JSON value.
fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, seg| match v {
        Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => v.get(seg),
    })
}

fn keys(v: Option<&Value>) -> Option<BTreeSet<String>> {
    match v {
        Some(Value::Object(m)) => Some(m.keys().cloned().collect()),
        _ => None,
    }
}

fn kind(v: Option<&Value>) -> &'static str {
    match v {
        None => "absent",
        Some(Value::Null) => "null",
        Some(Value::Object(_)) => "object",
        Some(Value::Array(_)) => "array",
        Some(_) => "scalar",
    }
}

/// Vault's envelope: keys of its own, never copies of `data`'s.
const ENVELOPE: &[&str] = &[
    "request_id",
    "lease_id",
    "renewable",
    "lease_duration",
    "data",
    "wrap_info",
    "warnings",
    "auth",
    "mount_type",
];

/// The answer without top-level keys that repeat `data`'s, and whether
/// there were any.
fn without_copies(v: &Value) -> (Value, bool) {
    let mut v = v.clone();
    let data = v.get("data").cloned();
    let mut copied = false;
    if let (Some(Value::Object(d)), Value::Object(top)) = (data, &mut v) {
        for (k, dv) in d {
            if !ENVELOPE.contains(&k.as_str()) && top.get(&k) == Some(&dv) {
                top.remove(&k);
                copied = true;
            }
        }
    }
    (v, copied)
}

/// The differences between gatepass's answer and OpenBao's, each as
/// (name for `allow`, what was seen).
fn compare(
    r: &Req,
    g: &(u16, Option<Value>, Vec<String>),
    o: &(u16, Option<Value>, Vec<String>),
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (side, a, other) in [("gatepass", g, o), ("openbao", o, g)] {
        for name in a.2.iter().filter(|n| !other.2.contains(n)) {
            out.push((
                format!("save {name}"),
                format!("{side} answered without it"),
            ));
        }
    }
    if g.0 != o.0 {
        // One answered and the other refused: the bodies differ as a
        // consequence.
        out.push(("status".into(), format!("gatepass {} openbao {}", g.0, o.0)));
        return out;
    }
    // OpenBao repeats some sys answers' data at the top level, for clients
    // older than the envelope; those copies are one difference, not one
    // per key.
    let (gb, ob) = (
        g.1.as_ref().map(without_copies),
        o.1.as_ref().map(without_copies),
    );
    for (side, v) in [("gatepass", &gb), ("openbao", &ob)] {
        if v.as_ref().is_some_and(|(_, copied)| *copied) {
            out.push((
                format!("top-level copy of data in {side}"),
                "data repeated beside the envelope".into(),
            ));
        }
    }
    let (gb, ob) = (gb.as_ref().map(|v| &v.0), ob.as_ref().map(|v| &v.0));
    let mut sides = |part: &str, gv: Option<&Value>, ov: Option<&Value>| match (keys(gv), keys(ov))
    {
        (Some(gk), Some(ok)) => {
            for k in gk.difference(&ok) {
                out.push((format!("{part} +{k}"), "only in gatepass".into()));
            }
            for k in ok.difference(&gk) {
                out.push((format!("{part} -{k}"), "only in openbao".into()));
            }
        }
        _ if kind(gv) != kind(ov) => out.push((
            format!("{part} kind"),
            format!("gatepass {} openbao {}", kind(gv), kind(ov)),
        )),
        _ => {}
    };
    sides("envelope", gb, ob);
    for part in ["data", "auth", "wrap_info"] {
        sides(
            part,
            gb.and_then(|v| v.get(part)),
            ob.and_then(|v| v.get(part)),
        );
    }
    for path in &r.same {
        let gv = gb.and_then(|v| lookup(v, path));
        let ov = ob.and_then(|v| lookup(v, path));
        if gv != ov {
            out.push((
                format!("same {path}"),
                format!("gatepass {gv:?} openbao {ov:?}"),
            ));
        }
    }
    for path in &r.near {
        let gv = gb.and_then(|v| lookup(v, path)).and_then(Value::as_i64);
        let ov = ob.and_then(|v| lookup(v, path)).and_then(Value::as_i64);
        let close = matches!((gv, ov), (Some(a), Some(b)) if (a - b).abs() <= 2);
        if !close {
            out.push((
                format!("near {path}"),
                format!("gatepass {gv:?} openbao {ov:?}"),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_answers_as_openbao_does() {
    let table_path = concat!(env!("CARGO_MANIFEST_DIR"), "/vault_diff.toml");
    let table: Table = toml::from_str(&std::fs::read_to_string(table_path).unwrap())
        .unwrap_or_else(|e| panic!("{table_path}: {e}"));
    assert!(
        table.request.len() >= 150,
        "the table has {} requests",
        table.request.len()
    );
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = readme
        .split("## Differences from Vault")
        .nth(1)
        .expect("README has a \"Differences from Vault\" section");

    let bao = OpenBaoDev::start();
    let gp = DevServer::start();
    let mut servers = [
        Server::new("gatepass", &gp.addr, &gp.cacert, &gp.token),
        Server::new("openbao", &bao.addr, &bao.cacert, &bao.token),
    ];
    // Keys the table signs: the same for both servers.
    let keys_dir = tempfile::tempdir().unwrap();
    let (_, user_pub) = keypair(keys_dir.path(), "user", "ed25519", None);
    let (_, host_pub) = keypair(keys_dir.path(), "host", "ed25519", None);
    for s in &mut servers {
        s.vars
            .insert("user_pub".into(), user_pub.trim().to_string());
        s.vars
            .insert("host_pub".into(), host_pub.trim().to_string());
    }

    let mut unexplained = Vec::new();
    let mut used: BTreeSet<(usize, String)> = BTreeSet::new();
    let mut used_everywhere: BTreeSet<String> = BTreeSet::new();
    for (i, r) in table.request.iter().enumerate() {
        let [g, o] = &mut servers;
        let ga = g.send(r).await;
        let oa = o.send(r).await;
        let line = format!("#{} {} {}", i + 1, r.method, r.path);
        let mut open = Vec::new();
        for (diff, seen) in compare(r, &ga, &oa) {
            if r.allow.contains_key(&diff) {
                used.insert((i, diff));
            } else if table.allow_everywhere.contains_key(&diff) {
                used_everywhere.insert(diff);
            } else {
                open.push(format!("{diff} ({seen})"));
            }
        }
        if !open.is_empty() {
            let show = |v: &Option<Value>| {
                let t = v.as_ref().map(Value::to_string).unwrap_or_default();
                t.chars().take(600).collect::<String>()
            };
            unexplained.push(format!(
                "{line}: {}\n    gatepass {}: {}\n    openbao  {}: {}",
                open.join("; "),
                ga.0,
                show(&ga.1),
                oa.0,
                show(&oa.1),
            ));
        }
    }

    let mut stale = Vec::new();
    for (i, r) in table.request.iter().enumerate() {
        for (diff, reason) in &r.allow {
            if !table.reasons.contains_key(reason) {
                stale.push(format!(
                    "#{} {}: reason {reason:?} is not in [reasons]",
                    i + 1,
                    r.path
                ));
            }
            if !used.contains(&(i, diff.clone())) {
                stale.push(format!(
                    "#{} {} {}: allowed difference {diff:?} did not occur",
                    i + 1,
                    r.method,
                    r.path
                ));
            }
        }
    }
    for (diff, reason) in &table.allow_everywhere {
        if !table.reasons.contains_key(reason) {
            stale.push(format!(
                "allow_everywhere: reason {reason:?} is not in [reasons]"
            ));
        }
        if !used_everywhere.contains(diff) {
            stale.push(format!(
                "allow_everywhere: difference {diff:?} did not occur"
            ));
        }
    }
    for name in table.reasons.keys() {
        if !section.contains(&format!("<!-- diff:{name} -->")) {
            stale.push(format!(
                "reason {name:?} is not in README's \"Differences from Vault\" (<!-- diff:{name} -->)"
            ));
        }
    }
    assert!(
        unexplained.is_empty() && stale.is_empty(),
        "{} unexplained differences:\n{}\n\n{} stale or unlisted allowances:\n{}",
        unexplained.len(),
        unexplained.join("\n"),
        stale.len(),
        stale.join("\n")
    );
}
