//! Retention: the storage forgets what it no longer needs after a set time
//! (the database's copy of the audit log, expired certificates), the KRL
//! stays right while it does, SQLite gives the space back, and the sizes
//! are metrics. In process with a manual clock on SQLite and PostgreSQL,
//! and a real `gatepass-server dev` for the periodic run and the metrics.

use std::time::Duration;

use gatepass_server::config::Retention;
use gatepass_server::retention;
use gatepass_tests::inproc::{Backend, Server, BACKENDS, T0};
use gatepass_tests::ssh::{keypair, krl_revokes};
use serde_json::{json, Value};

const HOUR: i64 = 3600;
const DAY: i64 = 86_400;

async fn ok(s: &Server, method: &str, path: &str, body: Value) -> Value {
    let (st, v) = s.root(method, path, Some(body)).await;
    assert!(st.is_success(), "{method} {path}: {st} {v}");
    v
}

fn policy(audit_copy_days: u64, cert_margin_hours: u64) -> Retention {
    Retention {
        audit_copy: Duration::from_secs(audit_copy_days * DAY as u64),
        expired_certificates: Duration::from_secs(cert_margin_hours * HOUR as u64),
        interval: Duration::from_secs(600),
        recordings: None,
    }
}

async fn krl(s: &Server) -> Vec<u8> {
    let m = gatepass_server::mounts::get(&s.core, "ssh")
        .await
        .unwrap()
        .unwrap();
    gatepass_server::ssh::certs::krl(&s.core, &m, s.clock.now())
        .await
        .unwrap()
}

async fn inventory(s: &Server) -> Vec<String> {
    let (_, v) = s.root("LIST", "ssh/certs", None).await;
    v["data"]["keys"]
        .as_array()
        .map(|a| a.iter().map(|k| k.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn expired_certificates_leave_the_inventory_after_the_margin_and_the_krl_stays_right() {
    for backend in BACKENDS {
        let s = Server::start(backend).await;
        let dir = s.dir.path();
        ok(&s, "POST", "ssh/config/ca", json!({})).await;
        ok(
            &s,
            "POST",
            "ssh/roles/r",
            json!({"key_type": "ca", "allow_user_certificates": true, "allowed_users": "*",
                   "max_ttl": "30d"}),
        )
        .await;
        let pk = keypair(dir, "user", "ed25519", None).1;
        let sign = |ttl: &'static str| {
            let s = &s;
            let pk = pk.clone();
            async move {
                let v = ok(
                    s,
                    "POST",
                    "ssh/sign/r",
                    json!({"public_key": pk, "valid_principals": "dave", "ttl": ttl}),
                )
                .await;
                (
                    v["data"]["serial_number"].as_str().unwrap().to_string(),
                    v["data"]["signed_key"].as_str().unwrap().to_string(),
                )
            }
        };
        let (short, _) = sign("1h").await;
        let (short_revoked, short_revoked_cert) = sign("1h").await;
        let (long_revoked, long_revoked_cert) = sign("10d").await;
        for serial in [&short_revoked, &long_revoked] {
            ok(&s, "POST", "ssh/revoke", json!({"serial_number": serial})).await;
        }
        let k = krl(&s).await;
        assert!(krl_revokes(dir, &k, &short_revoked_cert));
        assert!(krl_revokes(dir, &k, &long_revoked_cert));

        // Expired, but within the margin: everything stays.
        s.clock.advance(2 * HOUR);
        let r = retention::run(&s.core, &policy(30, 24), s.clock.now())
            .await
            .unwrap();
        assert_eq!(r.certificates, 0, "{backend:?}");
        assert_eq!(inventory(&s).await.len(), 3, "{backend:?}");

        // Past the margin: the two short ones go, the KRL's bytes do not
        // change (it left the expired one out already) and still revoke
        // the long one.
        s.clock.advance(DAY);
        let before = krl(&s).await;
        let r = retention::run(&s.core, &policy(30, 24), s.clock.now())
            .await
            .unwrap();
        assert_eq!(r.certificates, 2, "{backend:?}");
        let left = inventory(&s).await;
        assert_eq!(left, vec![long_revoked.clone()], "{backend:?}");
        for gone in [&short, &short_revoked] {
            let (st, _) = s.root("GET", &format!("ssh/certs/{gone}"), None).await;
            assert_eq!(st.as_u16(), 404, "{backend:?}: {gone}");
        }
        let after = krl(&s).await;
        assert_eq!(before, after, "{backend:?}: the KRL changed");
        assert!(krl_revokes(dir, &after, &long_revoked_cert));
        let (_, v) = s
            .root("GET", &format!("ssh/certs/{long_revoked}"), None)
            .await;
        assert_eq!(v["data"]["revoked"], true, "{backend:?}");
        // A second run finds nothing more to do.
        let r = retention::run(&s.core, &policy(30, 24), s.clock.now())
            .await
            .unwrap();
        assert_eq!(r.certificates, 0, "{backend:?}");
    }
}

/// The audit copy's lines, oldest first, as `sys/audit-log` serves them.
async fn audit_copy(s: &Server) -> Vec<Value> {
    audit_copy_paged(s, 1000)
        .await
        .into_iter()
        .map(|(_, line)| serde_json::from_str(&line).unwrap())
        .collect()
}

#[tokio::test]
async fn the_audit_copy_keeps_only_its_retention_time() {
    for backend in BACKENDS {
        let s = Server::start(backend).await;
        for _ in 0..50 {
            ok(&s, "GET", "sys/mounts", json!({})).await;
        }
        s.clock.advance(2 * DAY);
        for _ in 0..5 {
            ok(&s, "GET", "sys/mounts", json!({})).await;
        }
        let all = audit_copy(&s).await;
        let old_time = gatepass_server::clock::rfc3339(T0);
        assert!(
            all.iter()
                .filter(|l| l["time"] == old_time.as_str())
                .count()
                >= 100,
            "{backend:?}: the copy holds the first requests"
        );
        let r = retention::run(&s.core, &policy(1, 24), s.clock.now())
            .await
            .unwrap();
        assert!(r.audit_lines >= 100, "{backend:?}: {r:?}");
        let kept = audit_copy(&s).await;
        assert!(!kept.is_empty(), "{backend:?}");
        let cutoff = gatepass_server::clock::rfc3339(s.clock.now() - DAY);
        for line in &kept {
            let t = line["time"].as_str().unwrap();
            assert!(t >= cutoff.as_str(), "{backend:?}: kept a line of {t}");
        }
    }
}

/// The copy's lines as `sys/audit-log` pages through them, `limit` at a
/// time: `(id, line)`, oldest first.
async fn audit_copy_paged(s: &Server, limit: usize) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let (st, v) = s
            .root(
                "GET",
                &format!("sys/audit-log?after={after}&limit={limit}"),
                None,
            )
            .await;
        assert!(st.is_success(), "{st} {v}");
        let events = v["data"]["events"].as_array().cloned().unwrap_or_default();
        // Each read adds lines of its own: a short page is the end.
        for e in &events {
            after = e["id"].as_i64().unwrap();
            out.push((after, e["line"].as_str().unwrap().to_string()));
        }
        if events.len() < limit {
            return out;
        }
    }
}

/// What the storage's database answers `sql` with (the first column of
/// its first row, as text), asked behind the server's back.
fn query(s: &Server, backend: Backend, sql: &str) -> String {
    use rusqlite::types::Value as V;
    match backend {
        Backend::Postgres => gatepass_tests::pg::exec(s.storage_url(), sql),
        Backend::Sqlite => {
            let c = rusqlite::Connection::open(s.dir.path().join("gp.db")).unwrap();
            let mut st = c.prepare(sql).unwrap();
            let mut rows = st.query([]).unwrap();
            match rows.next().unwrap().map(|r| r.get::<_, V>(0).unwrap()) {
                Some(V::Integer(i)) => i.to_string(),
                Some(V::Text(t)) => t,
                _ => String::new(),
            }
        }
    }
}

/// The copy is a row per batch of lines, compressed (on PostgreSQL a
/// fleet's polls made a row per line most of the database's work); the
/// readers still page through it line by line, after the lines an earlier
/// version stored a row each, and retention takes the old lines out of a
/// batch without renumbering the others.
#[tokio::test]
async fn the_audit_copy_is_a_row_per_batch_read_line_by_line() {
    for backend in BACKENDS {
        the_audit_copy_is_a_row_per_batch_on(backend).await;
    }
}

async fn the_audit_copy_is_a_row_per_batch_on(backend: Backend) {
    let s = Server::start(backend).await;
    let exec = |sql: &str| query(&s, backend, sql);
    // What an earlier version left: a row per line, from the same ids.
    for i in 0..3 {
        exec(&format!(
            "INSERT INTO audit_events (line, at) VALUES ('{{\"earlier\":{i}}}', {T0})"
        ));
    }
    for _ in 0..200 {
        ok(&s, "GET", "sys/mounts", json!({})).await;
    }
    s.core.storage.flush_audit().await.unwrap();
    let stored: Vec<i64> =
        exec("SELECT count(*) || ' ' || sum(lines) || ' ' || sum(length(body)) FROM audit_batches")
            .split(' ')
            .map(|n| n.parse().unwrap())
            .collect();
    let (rows, lines, bytes) = (stored[0], stored[1], stored[2]);
    assert!(lines >= 400, "{stored:?}");
    assert!(rows * 10 <= lines, "{rows} rows for {lines} lines");
    assert_eq!(exec("SELECT count(*) FROM audit_events"), "3");

    let copy = audit_copy_paged(&s, 7).await;
    assert!(copy.windows(2).all(|w| w[0].0 < w[1].0), "ids go up");
    let earlier: Vec<&str> = copy[..3].iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(
        earlier,
        [r#"{"earlier":0}"#, r#"{"earlier":1}"#, r#"{"earlier":2}"#]
    );
    // The rest is the audit file's lines, in its order.
    let file = s.audit_text();
    let file: Vec<&str> = file.lines().collect();
    let copied: Vec<&str> = copy[3..].iter().map(|(_, l)| l.as_str()).collect();
    assert!(copied.len() >= 400 && copied.len() <= file.len());
    assert_eq!(copied, file[..copied.len()]);
    let text: usize = copied.iter().map(|l| l.len()).sum();
    assert!(bytes * 4 < text as i64, "{bytes} bytes stored for {text}");

    // Two days on: retention keeps one day. The earlier rows and the
    // first day's lines go; the lines left keep their ids. (The first
    // day's lines are all copied first: a batch still open would take
    // lines of both days, besides the one made so below.)
    s.core.storage.flush_audit().await.unwrap();
    s.clock.advance(2 * DAY);
    for _ in 0..5 {
        ok(&s, "GET", "sys/mounts", json!({})).await;
    }
    // A batch holding lines of either side of the cutoff.
    let now = s.clock.now();
    for (i, at) in [T0, T0, now, now].into_iter().enumerate() {
        let time = gatepass_server::clock::rfc3339(at);
        let line = format!(r#"{{"time":"{time}","mixed":{i}}}"#);
        s.core.storage.append_audit(line, at).await.unwrap();
    }
    s.core.storage.flush_audit().await.unwrap();
    let mixed = format!(
        "SELECT count(*) FROM audit_batches WHERE first_at < {0} AND last_at >= {0}",
        now - DAY
    );
    assert_eq!(exec(&mixed), "1");
    let before = audit_copy_paged(&s, 1000).await;
    let r = retention::run(&s.core, &policy(1, 24), s.clock.now())
        .await
        .unwrap();
    assert!(r.audit_lines >= copy.len() as u64, "{r:?}");
    let after = audit_copy_paged(&s, 1000).await;
    let cutoff = gatepass_server::clock::rfc3339(s.clock.now() - DAY);
    let recent: Vec<&(i64, String)> = before
        .iter()
        .filter(|(_, l)| {
            serde_json::from_str::<Value>(l).unwrap()["time"]
                .as_str()
                .unwrap_or("")
                >= cutoff.as_str()
        })
        .collect();
    assert!(recent.len() >= 10, "{}", recent.len());
    assert_eq!(after[..recent.len()].iter().collect::<Vec<_>>(), recent);
    assert!(after.iter().any(|(_, l)| l.contains(r#""mixed":3"#)));
    assert!(!after.iter().any(|(_, l)| l.contains(r#""mixed":0"#)));
    assert_eq!(exec(&mixed), "0");
    assert_eq!(exec("SELECT count(*) FROM audit_events"), "0");
}

fn pragma(path: &std::path::Path, name: &str) -> i64 {
    let c = rusqlite::Connection::open(path).unwrap();
    c.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn sqlite_gives_the_space_of_what_it_deleted_back() {
    let s = Server::start(Backend::Sqlite).await;
    let db = s.dir.path().join("gp.db");
    assert_eq!(pragma(&db, "auto_vacuum"), 2, "incremental vacuum is on");
    // Requests whose audit lines fill some megabytes of the copy.
    let big = "x".repeat(4000);
    for i in 0..1500 {
        let (st, v) = s
            .root(
                "POST",
                "sys/policies/acl/filler",
                Some(json!({ "policy": format!("# {i} {big}\npath \"x/*\" {{ capabilities = [\"read\"] }}") })),
            )
            .await;
        assert!(st.is_success(), "{st} {v}");
    }
    s.core.storage.flush_audit().await.unwrap();
    let pages_before = pragma(&db, "page_count");
    s.clock.advance(2 * DAY);
    let r = retention::run(&s.core, &policy(1, 24), s.clock.now())
        .await
        .unwrap();
    assert!(r.audit_lines >= 3000, "{r:?}");
    assert_eq!(r.free_pages_left, 0);
    assert_eq!(pragma(&db, "freelist_count"), 0);
    let pages_after = pragma(&db, "page_count");
    assert!(
        pages_after * 4 < pages_before,
        "the file keeps {pages_after} of {pages_before} pages"
    );
}

#[tokio::test]
async fn a_database_made_before_incremental_vacuum_is_converted_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("old.db");
    {
        // A database file as SQLite makes it by default (auto_vacuum off),
        // with something in it.
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch("CREATE TABLE leftover (x); INSERT INTO leftover VALUES (1);")
            .unwrap();
    }
    assert_eq!(pragma(&db, "auto_vacuum"), 0);
    let storage = gatepass_server::storage::Storage::open(
        &format!("sqlite://{}", db.display()),
        &gatepass_server::seal::SealKey::generate(),
    )
    .await
    .unwrap();
    storage.close().await;
    assert_eq!(pragma(&db, "auto_vacuum"), 2);
}

/// `gatepass-server dev` runs retention on its interval, and
/// `sys/metrics` reports the storage's and the data directory's size.
#[tokio::test]
async fn the_dev_server_runs_retention_and_reports_sizes() {
    let server = gatepass_tests::DevServer::start_with(
        &["--retention-interval", "1s", "--retention-audit-copy", "1s"],
        &[],
    );
    let pem = std::fs::read(&server.cacert).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let metrics = || async {
        let r = client
            .get(format!("{}/v1/sys/metrics", server.addr))
            .header("X-Vault-Token", &server.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    };
    let metric = |text: &str, name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    let mut runs = 0.0;
    let mut text = String::new();
    for _ in 0..50 {
        text = metrics().await;
        runs = metric(&text, "gatepass_retention_runs_total");
        if runs >= 1.0
            && metric(
                &text,
                "gatepass_retention_removed_total{kind=\"audit_line\"}",
            ) > 0.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(runs >= 1.0, "retention never ran:\n{text}");
    assert!(metric(&text, "gatepass_storage_bytes") > 0.0, "{text}");
    let data_dir = metric(&text, "gatepass_data_dir_bytes");
    let db = std::fs::metadata(server.data_dir.join("gatepass.db"))
        .unwrap()
        .len() as f64;
    assert!(data_dir >= db, "data dir {data_dir} < database {db}");
}
