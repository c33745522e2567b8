//! When the storage goes away: a PostgreSQL cluster stopped under a running
//! `gatepass-server serve`, one not up yet when `serve` starts, an SQLite
//! file another process keeps locked. Health answers 503 at once, requests
//! fail fast with 503 naming the storage and the cause, and the server
//! serves again by itself once the storage is back.

use std::time::{Duration, Instant};

use gatepass_api::{Client, Error};
use gatepass_tests::pg::OwnedPg;
use gatepass_tests::{init_server, serve_config, start_serve, stop_child, DevServer, ServeProcess};
use serde_json::Map;

/// Status and error text of a request, with how long it took.
async fn call(c: &Client, method: &str, path: &str) -> (u16, String, Duration) {
    let t = Instant::now();
    let body = Map::new();
    let r = c
        .request(method, path, (method == "POST").then_some(&body))
        .await;
    let took = t.elapsed();
    match r {
        Ok(_) => (200, String::new(), took),
        Err(Error::Api { status, errors }) => (status, errors.join("; "), took),
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

/// Polls `sys/health` until it answers `want`; how long that took.
async fn health_becomes(c: &Client, want: u16, limit: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let (st, text, _) = call(c, "GET", "sys/health").await;
        if st == want {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < limit,
            "sys/health did not answer {want} within {limit:?}: {st} {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `serve` process on the database at `url`, answering, with a client
/// holding its root token that has made one token: its folder (the log is
/// `a.log`, the audit file `a-audit.log`), the process and the client.
async fn serving(url: &str) -> (tempfile::TempDir, ServeProcess, Client) {
    let dir = tempfile::tempdir().unwrap();
    let (config, mut settings) = serve_config(dir.path(), "a", url, "");
    settings.token = Some(init_server(&config));
    let server = start_serve(&config, &dir.path().join("a.log"), settings);
    server.wait_up().await;
    let c = Client::new(&server.settings).unwrap();
    assert_eq!(call(&c, "POST", "auth/token/create").await.0, 200);
    (dir, server, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_under_a_running_server_fails_fast_and_recovers() {
    let db = OwnedPg::start();
    let url = db.new_database("down");
    let name = url.rsplit('/').next().unwrap().to_string();
    // A password in the URL (trust authentication ignores it) must never
    // reach a client.
    let with_password = url.replace("postgres@", "postgres:hunter2@");
    let (dir, _server, c) = serving(&with_password).await;

    db.stop();
    // A health answer stands for up to 250 ms.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let where_ = format!("127.0.0.1:{}/{name}", db.port);
    // Health says so within a second, naming the database and why.
    let (st, text, took) = call(&c, "GET", "sys/health").await;
    assert_eq!(st, 503, "{text}");
    assert!(
        took < Duration::from_secs(1),
        "sys/health took {took:?}: {}",
        std::fs::read_to_string(dir.path().join("a.log")).unwrap()
    );
    assert!(text.contains(&where_), "{text}");
    assert!(text.contains("refused"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    // A write fails within 2 s, as unavailable, naming the database.
    for _ in 0..3 {
        let (st, text, took) = call(&c, "POST", "auth/token/create").await;
        assert_eq!(st, 503, "{text}");
        assert!(took < Duration::from_secs(2), "the write took {took:?}");
        assert!(text.contains(&where_), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }
    // Vault's sealedcode picks the status for "cannot serve".
    assert_eq!(call(&c, "GET", "sys/health?sealedcode=502").await.0, 502);
    // Health polled often stays quick (a cached probe).
    for _ in 0..5 {
        let (st, _, took) = call(&c, "GET", "sys/health").await;
        assert_eq!(st, 503);
        assert!(took < Duration::from_secs(1), "sys/health took {took:?}");
    }

    // Back: healthy again within 2 s, and writes work, without a restart.
    db.start_again();
    let took = health_becomes(&c, 200, Duration::from_secs(2)).await;
    eprintln!("healthy {took:?} after the database was back");
    let (st, text, _) = call(&c, "POST", "auth/token/create").await;
    assert_eq!(st, 200, "{text}");

    // The refused writes are on record in the audit file, and the
    // database's copy, read through the API, has every line the file has:
    // the lines of the outage were held and copied once it was back.
    let file = dir.path().join("a-audit.log");
    let refused = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .filter(|l| l.contains("auth/token/create") && l.contains("storage unavailable"))
        .count();
    assert!(refused >= 3, "{refused} refused writes in the file");
    every_line_of_the_file_is_copied(&c, &file).await;
}

#[tokio::test]
async fn a_server_stopped_while_postgres_is_down_says_how_many_audit_lines_it_did_not_copy() {
    let db = OwnedPg::start();
    let (dir, mut server, c) = serving(&db.new_database("stopdown")).await;
    let log = dir.path().join("a.log");

    // The database goes; three writes are refused, each audited in the
    // file (request and response) and held for the database's copy.
    db.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        assert_eq!(call(&c, "POST", "auth/token/create").await.0, 503);
    }
    // Stopped before the database is back: the log says how many lines
    // the copy is without (they are in the file).
    stop_child(&mut server.child);
    let text = std::fs::read_to_string(&log).unwrap();
    // A log written to a file, as under systemd, is plain text.
    assert!(
        !text.contains('\u{1b}'),
        "terminal escape codes in the log file"
    );
    let said = text
        .lines()
        .find(|l| l.contains("audit lines not copied to the database"))
        .unwrap_or_else(|| panic!("the stop did not say what the copy is without:\n{text}"));
    assert!(count_in(said) >= 6, "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_postgres_is_unavailable_and_the_audit_copy_waits_for_it() {
    let db = OwnedPg::start();
    let url = db.new_database("readonly");
    let (dir, _server, c) = serving(&url).await;

    // The database turns read-only under the running server, as a standby
    // does (every session, the server's open ones too, after the reload).
    let set_read_only = |on: &str| {
        gatepass_tests::pg::exec(
            &url,
            &format!("ALTER SYSTEM SET default_transaction_read_only = {on}"),
        );
        gatepass_tests::pg::exec(&url, "SELECT pg_reload_conf()");
    };
    set_read_only("on");
    // Health says so, and a write is refused as unavailable (503, to be
    // tried again elsewhere or later), not as a server fault (500).
    health_becomes(&c, 503, Duration::from_secs(5)).await;
    let (_, text, _) = call(&c, "GET", "sys/health").await;
    assert!(text.contains("read-only"), "{text}");
    for _ in 0..3 {
        let (st, text, _) = call(&c, "POST", "auth/token/create").await;
        assert_eq!(st, 503, "{text}");
    }

    // Writable again: health and writes come back without a restart, and
    // the copy of the audit log has the lines of the read-only spell.
    set_read_only("off");
    health_becomes(&c, 200, Duration::from_secs(5)).await;
    assert_eq!(call(&c, "POST", "auth/token/create").await.0, 200);
    every_line_of_the_file_is_copied(&c, &dir.path().join("a-audit.log")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_of_the_audit_copy_is_not_held_by_a_copier_that_waits() {
    let db = OwnedPg::start();
    let url = db.new_database("copylock");
    let (_dir, _server, c) = serving(&url).await;
    // Someone holds a lock on the copy's table (a long maintenance
    // transaction): the copier's next insert waits behind it.
    let mut lock =
        gatepass_tests::pg::lock_table_for(&url, "audit_batches", Duration::from_secs(30));
    assert_eq!(call(&c, "POST", "auth/token/create").await.0, 200);
    // A reader of the copy is answered within the storage's 5 s, saying
    // why, rather than when the lock goes.
    let (st, text, took) = call(&c, "GET", "sys/audit-log").await;
    assert_eq!(st, 503, "{text}");
    assert!(took < Duration::from_secs(8), "sys/audit-log took {took:?}");
    assert!(text.contains("audit log is behind"), "{text}");
    // Requests go on meanwhile.
    assert_eq!(call(&c, "POST", "auth/token/create").await.0, 200);
    let _ = lock.kill();
    let _ = lock.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_on_while_the_audit_copy_is_held_up_and_the_log_counts_what_it_missed() {
    let db = OwnedPg::start();
    let url = db.new_database("copystall");
    let (dir, server, c) = serving(&url).await;
    let hold = Duration::from_secs(120);
    let mut lock = gatepass_tests::pg::lock_table_for(&url, "audit_batches", hold);
    // Two audit lines a request: 10,000 requests are more than the
    // copier's queue holds (16,384 lines) while its insert waits.
    let started = Instant::now();
    let c = std::sync::Arc::new(c);
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                let mut slowest = Duration::ZERO;
                for _ in 0..625 {
                    let (st, text, took) = call(&c, "GET", "auth/token/lookup-self").await;
                    assert_eq!(st, 200, "{text}");
                    slowest = slowest.max(took);
                }
                slowest
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for t in clients {
        slowest = slowest.max(t.await.unwrap());
    }
    // Every request was answered while the lock was still held, none
    // waiting for it.
    assert!(
        started.elapsed() < hold - Duration::from_secs(10),
        "the requests took {:?}",
        started.elapsed()
    );
    assert!(
        slowest < Duration::from_secs(3),
        "a request took {slowest:?}"
    );
    let log = dir.path().join("a.log");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("is not keeping up"), "{text}");
    // The lock goes: the copier copies what it had taken, and the next
    // request's lines are copied again, the log counting those that were
    // not.
    gatepass_tests::pg::end_lock_on(&url, "audit_batches");
    let _ = lock.wait();
    let t = Instant::now();
    let counted = loop {
        assert_eq!(call(&c, "GET", "auth/token/lookup-self").await.0, 200);
        let text = std::fs::read_to_string(&log).unwrap();
        if let Some(l) = text.lines().find(|l| l.contains("fell behind")) {
            break l.to_string();
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no count in the log: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let missed = count_in(&counted);
    // The copy has every line of the file but those, in one run.
    assert_eq!(call(&c, "POST", "auth/token/create").await.0, 200);
    let missing = missing_from_copy(&c, &dir.path().join("a-audit.log")).await;
    assert_eq!(missing.len() as u64, missed, "{counted}");
    assert_eq!(
        missing.last().unwrap() - missing[0] + 1,
        missed,
        "not one gap: {missing:?}"
    );
    drop(server);
}

/// Every line of the audit file up to the last copied one is in the
/// database's copy as `sys/audit-log` serves it: no gap in `seq`.
async fn every_line_of_the_file_is_copied(c: &Client, file: &std::path::Path) {
    let missing = missing_from_copy(c, file).await;
    assert!(
        missing.is_empty(),
        "lines of the file not in the database's copy: {missing:?}"
    );
}

/// The `seq` of the lines of the audit file, up to the last copied one,
/// that are not in the database's copy.
async fn missing_from_copy(c: &Client, file: &std::path::Path) -> Vec<u64> {
    let copied = copied_seqs(c).await;
    let last = *copied.last().unwrap();
    file_seqs(file)
        .into_iter()
        .filter(|s| *s <= last && copied.binary_search(s).is_err())
        .collect()
}

/// The count a log line gives as `lines=N`.
fn count_in(log_line: &str) -> u64 {
    log_line
        .split("lines=")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {log_line:?}"))
}

/// The `seq` of every line of the database's audit copy, in order, read
/// through `sys/audit-log` a page at a time.
async fn copied_seqs(c: &Client) -> Vec<u64> {
    let mut seqs = Vec::new();
    let mut after = 0;
    loop {
        let path = format!("sys/audit-log?after={after}&limit=1000");
        let v = c.request("GET", &path, None).await.unwrap().unwrap();
        let events = v["data"]["events"].as_array().cloned().unwrap_or_default();
        for e in &events {
            after = e["id"].as_i64().unwrap();
            let line: serde_json::Value =
                serde_json::from_str(e["line"].as_str().unwrap()).unwrap();
            seqs.push(line["seq"].as_u64().unwrap());
        }
        if events.len() < 1000 {
            seqs.sort_unstable();
            return seqs;
        }
    }
}

/// The `seq` of every line of an audit file.
fn file_seqs(path: &std::path::Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_waits_for_postgres_up_to_storage_wait() {
    let db = OwnedPg::start();
    let url = db.new_database("late");
    let name = url.rsplit('/').next().unwrap().to_string();
    let where_ = format!("127.0.0.1:{}/{name}", db.port);
    let dir = tempfile::tempdir().unwrap();
    let (config, mut settings) = serve_config(dir.path(), "a", &url, "storage_wait = \"2s\"");
    settings.token = Some(init_server(&config));
    db.stop();

    // With no database for longer than storage_wait, serve gives up, naming
    // the database and the cause.
    let log = dir.path().join("short.log");
    let t = Instant::now();
    let mut server = start_serve(&config, &log, settings.clone());
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(8),
            "serve still running after {:?}",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{text}");
    assert!(t.elapsed() >= Duration::from_secs(2), "{text}");
    assert!(
        text.contains(&format!("waiting for storage PostgreSQL {where_}")),
        "{text}"
    );
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.contains(&where_) && last.contains("refused"),
        "last line: {last}\n{text}"
    );

    // With a longer wait it serves once the database comes up.
    let (config, mut settings_b) = serve_config(dir.path(), "b", &url, "storage_wait = \"60s\"");
    settings_b.token = settings.token.clone();
    let log = dir.path().join("b.log");
    let mut server = start_serve(&config, &log, settings_b);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(server.child.try_wait().unwrap().is_none(), "serve exited");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&format!("waiting for storage PostgreSQL {where_}")),
        "{text}"
    );
    db.start_again();
    server.wait_up().await;
    let c = Client::new(&server.settings).unwrap();
    let (st, text, _) = call(&c, "POST", "auth/token/create").await;
    assert_eq!(st, 200, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_sqlite_file_is_reported_as_unavailable() {
    let server = DevServer::start();
    let c = server.client();
    assert_eq!(call(&c, "POST", "auth/token/create").await.0, 200);
    let file = server.data_dir.join("gatepass.db");

    // Another process takes the write lock and keeps it.
    let other = rusqlite::Connection::open(&file).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (st, text, took) = call(&c, "POST", "auth/token/create").await;
    assert_eq!(st, 503, "{text}");
    assert!(took < Duration::from_secs(2), "the write took {took:?}");
    assert!(text.contains(&file.display().to_string()), "{text}");
    assert!(text.contains("locked"), "{text}");
    let (st, text, took) = call(&c, "GET", "sys/health").await;
    assert_eq!(st, 503, "{text}");
    assert!(took < Duration::from_secs(1), "sys/health took {took:?}");

    // Let go: served again.
    other.execute_batch("ROLLBACK").unwrap();
    health_becomes(&c, 200, Duration::from_secs(2)).await;
    let (st, text, _) = call(&c, "POST", "auth/token/create").await;
    assert_eq!(st, 200, "{text}");
    // The lines audited while the file was locked are in the copy too.
    every_line_of_the_file_is_copied(&c, &server.data_dir.join("audit.log")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_takes_vaults_status_code_parameters() {
    use gatepass_tests::inproc::{Backend, Server};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let s = Server::start(Backend::Sqlite).await;
    let status = |path: &'static str| {
        let s = &s;
        async move { s.call("GET", path, None, None).await }
    };
    let (st, v) = status("sys/health").await;
    assert_eq!(st.as_u16(), 200, "{v}");
    assert_eq!(v["storage"]["type"], "sqlite");
    assert_eq!(v["storage"]["available"], true);
    assert_eq!(status("sys/health?activecode=299").await.0.as_u16(), 299);
    // No standbys here: these change nothing.
    let (st, _) = status("sys/health?standbyok=true&perfstandbyok=true&standbycode=200").await;
    assert_eq!(st.as_u16(), 200);
    let (st, v) = status("sys/health?activecode=abc").await;
    assert_eq!(st.as_u16(), 400, "{v}");

    // Storage that was never initialized: Vault's 501, or uninitcode.
    let dir = tempfile::tempdir().unwrap();
    let core = gatepass_server::Core::open(gatepass_server::Options {
        storage_url: format!("sqlite://{}", dir.path().join("new.db").display()),
        seal_key: gatepass_server::seal::SealKey::generate(),
        audit_path: None,
        clock: gatepass_server::clock::Clock::manual(0),
        storage_connections: Default::default(),
    })
    .await
    .unwrap();
    for (path, want) in [("sys/health", 501), ("sys/health?uninitcode=200", 200)] {
        let mut req = axum::http::Request::get(format!("/v1/{path}"))
            .body(axum::body::Body::empty())
            .unwrap();
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(s.client));
        let resp = gatepass_server::app(core.clone())
            .oneshot(req)
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), want, "{path}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["initialized"], false);
    }
}

/// A busy database is not a down one. A server on PostgreSQL with a pool
/// far smaller than a burst of requests, while another client holds a lock
/// that every query waits behind: the requests queue for the connections
/// and are all answered once it lets go, `sys/health` stays 200 meanwhile,
/// and no connection is opened beyond `storage_connections`. A request
/// that waited longer than its bound fails alone, with a 503 that says
/// so, and the next ones are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_larger_than_the_pool_waits_its_turn_and_the_storage_stays_available() {
    use gatepass_tests::inproc::{Server, ROOT};
    use std::sync::Arc;

    // Four connections: the health probe's, the change listener's, and two
    // for every request and write.
    let s = Arc::new(Server::start_postgres_with(4).await);
    let url = s.storage_url().to_string();
    // Requests in flight together, half writes, half reads of the
    // database (hosts are listed from it: 404, none enrolled).
    let burst = |n: usize| {
        let calls: Vec<_> = (0..n)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    if i % 2 == 0 {
                        s.call("POST", "auth/token/create", Some(ROOT), None).await
                    } else {
                        s.call("LIST", "hosts", Some(ROOT), None).await
                    }
                })
            })
            .collect();
        async move {
            let mut out = Vec::new();
            for c in calls {
                out.push(c.await.unwrap());
            }
            out
        }
    };

    // The database is slow for 1.5 s: longer than a request used to wait
    // for a connection (1 s) before the server probed the database with a
    // connection beyond its pool and declared it unavailable.
    let mut lock = gatepass_tests::pg::lock_entries_for(&url, Duration::from_millis(1500));
    let t = Instant::now();
    let running = burst(120);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (st, v) = s.call("GET", "sys/health", None, None).await;
    assert_eq!(st.as_u16(), 200, "health while the pool is busy: {v}");
    let answers = running.await;
    eprintln!("120 requests answered in {:?}", t.elapsed());
    for (i, (st, v)) in answers.iter().enumerate() {
        let want = if i % 2 == 0 { 200 } else { 404 };
        assert_eq!(st.as_u16(), want, "request {i}: {v}");
    }
    lock.wait().unwrap();
    let open = count_connections(&url);
    assert!(open <= 4, "{open} connections to the database");

    // Slow for longer than a request waits for its turn (3 s): those that
    // got a connection finish when the lock goes; those still queued fail
    // alone, saying the connections stayed busy. Health stays 200 and the
    // next requests are served.
    let mut lock = gatepass_tests::pg::lock_entries_for(&url, Duration::from_millis(4000));
    let answers = burst(40).await;
    lock.wait().unwrap();
    let busy: Vec<_> = answers
        .iter()
        .filter(|(st, _)| st.as_u16() == 503)
        .collect();
    assert!(!busy.is_empty(), "no request waited out its turn");
    for (_, v) in &busy {
        let text = v.to_string();
        assert!(text.contains("stayed busy for 3 s"), "{text}");
        assert!(text.contains("storage_connections"), "{text}");
    }
    assert!(
        answers
            .iter()
            .all(|(st, _)| [200, 404, 503].contains(&st.as_u16())),
        "{answers:?}"
    );
    let (st, v) = s.call("GET", "sys/health", None, None).await;
    assert_eq!(st.as_u16(), 200, "{v}");
    let (st, v) = s.call("POST", "auth/token/create", Some(ROOT), None).await;
    assert_eq!(st.as_u16(), 200, "{v}");
}

/// Connections open to the database at `url`, this query's own left out.
fn count_connections(url: &str) -> usize {
    let db = url.rsplit('/').next().unwrap();
    let out = std::process::Command::new("psql")
        .arg(url)
        .args(["-tA", "-c"])
        .arg(format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid()"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}
