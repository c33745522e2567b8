//! A private PostgreSQL cluster for the tests: initdb in a temp folder owned
//! by the `postgres` user, on a free loopback port, started once per test
//! process and stopped by a watchdog when that process exits. The machine's
//! own cluster is never touched.
//!
//! Set GATEPASS_TEST_PG_URL (e.g. postgres://postgres@127.0.0.1:5432) to use
//! an existing server instead.
//!
//! A test that stops and starts its database takes an [`OwnedPg`], a
//! cluster of its own, never the shared one.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

pub struct Pg {
    /// `postgres://postgres@127.0.0.1:PORT`
    pub base_url: String,
    pub host: String,
    pub port: u16,
}

static SHARED: OnceLock<Pg> = OnceLock::new();
static DB_SEQ: AtomicU32 = AtomicU32::new(0);

/// The cluster shared by every test in this process.
pub fn shared() -> &'static Pg {
    SHARED.get_or_init(|| match std::env::var("GATEPASS_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => {
            let rest = url.trim_start_matches("postgres://");
            let hostport = rest.rsplit('@').next().unwrap_or(rest);
            let (host, port) = hostport.split_once(':').unwrap_or((hostport, "5432"));
            Pg {
                base_url: url.trim_end_matches('/').to_string(),
                host: host.to_string(),
                port: port.trim_end_matches('/').parse().unwrap_or(5432),
            }
        }
        _ => start_private(),
    })
}

fn pg_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    versions.sort();
    for v in versions.iter().rev() {
        let p = v.join("bin").join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("PostgreSQL's {name} not found under /usr/lib/postgresql: install the postgresql package (tests/run does)");
}

fn as_postgres(cmd: &Path) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(cmd);
    c
}

/// A fresh folder owned by postgres with an initialized cluster in
/// `data/` (trust auth, UTF-8, C locale).
fn init_cluster(prefix: &str) -> PathBuf {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("pg temp dir")
        .keep();
    let ok = Command::new("chown")
        .args(["postgres:postgres"])
        .arg(&dir)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "cannot chown {} to postgres (run the tests as root, as tests/run does)",
        dir.display()
    );
    let out = as_postgres(&pg_bin("initdb"))
        .args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "-D",
        ])
        .arg(dir.join("data"))
        .output()
        .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

fn start_private() -> Pg {
    let dir = init_cluster("gatepass-pg-");
    let data = dir.join("data");
    let port = crate::free_port();
    let log = std::fs::File::create(dir.join("postgres.log")).expect("pg log");
    let _ = Command::new("chown")
        .args(["postgres:postgres"])
        .arg(dir.join("postgres.log"))
        .status();
    // Runs for the life of the test process; the watchdog below stops it.
    #[allow(clippy::zombie_processes)]
    let child = as_postgres(&pg_bin("postgres"))
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-k"])
        .arg(&dir)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "max_connections=200",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start postgres");
    // The watchdog stops the cluster and removes its folder once this test
    // process is gone, however it ends.
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 1; done; kill -INT {pg} 2>/dev/null; \
         for i in $(seq 1 50); do kill -0 {pg} 2>/dev/null || break; sleep 0.2; done; rm -rf '{dir}'",
        me = std::process::id(),
        pg = child.id(),
        dir = dir.display()
    );
    #[allow(clippy::zombie_processes)]
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pg watchdog");
    for _ in 0..150 {
        let ready = Command::new(pg_bin("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ready {
            return Pg {
                base_url: format!("postgres://postgres@127.0.0.1:{port}"),
                host: "127.0.0.1".into(),
                port,
            };
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "PostgreSQL did not start; log: {}",
        std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default()
    );
}

impl Pg {
    /// A new empty database; returns its URL.
    pub fn new_database(&self, tag: &str) -> String {
        let name = format!(
            "gp_{}_{}_{}",
            tag.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            std::process::id(),
            DB_SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let out = Command::new("psql")
            .args([
                "-h",
                &self.host,
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
            ])
            .arg(format!("CREATE DATABASE {name}"))
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "CREATE DATABASE failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("{}/{name}", self.base_url)
    }
}

/// A cluster of a test's own, which it may stop and start again (the
/// shared one must keep running for the tests beside it). Stopped and
/// removed on drop, or by a watchdog if the test process dies first.
pub struct OwnedPg {
    pub pg: Pg,
    dir: PathBuf,
}

impl std::ops::Deref for OwnedPg {
    type Target = Pg;
    fn deref(&self) -> &Pg {
        &self.pg
    }
}

impl OwnedPg {
    /// initdb and start on a free loopback port.
    pub fn start() -> OwnedPg {
        let dir = init_cluster("gatepass-pg-own-");
        let script = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 1; done; \
             runuser -u postgres -- '{pg_ctl}' -D '{data}' -m immediate stop; rm -rf '{dir}'",
            me = std::process::id(),
            pg_ctl = pg_bin("pg_ctl").display(),
            data = dir.join("data").display(),
            dir = dir.display()
        );
        #[allow(clippy::zombie_processes)]
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pg watchdog");
        let port = crate::free_port();
        let own = OwnedPg {
            pg: Pg {
                base_url: format!("postgres://postgres@127.0.0.1:{port}"),
                host: "127.0.0.1".into(),
                port,
            },
            dir,
        };
        own.start_again();
        own
    }

    fn pg_ctl(&self, args: &[&str]) -> bool {
        as_postgres(&pg_bin("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Starts the cluster (again) on its port; returns once it accepts
    /// connections.
    pub fn start_again(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("postgres.log");
        let ok = self.pg_ctl(&[
            "-l",
            &log.display().to_string(),
            "-o",
            &opts,
            "-w",
            "-t",
            "60",
            "start",
        ]);
        assert!(
            ok,
            "PostgreSQL did not start; log: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops the cluster (fast shutdown: clients are disconnected); returns
    /// once it is down.
    pub fn stop(&self) {
        assert!(
            self.pg_ctl(&["-m", "fast", "-w", "-t", "60", "stop"]),
            "pg_ctl stop failed"
        );
    }
}

impl Drop for OwnedPg {
    fn drop(&mut self) {
        self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Another client takes an exclusive lock on the `entries` table of the
/// database at `url` and holds it for `hold`, as a slow migration or a
/// long transaction would: every query of the table waits behind it,
/// holding its connection. Returns once the lock is held; the child ends
/// when it lets go.
pub fn lock_entries_for(url: &str, hold: Duration) -> std::process::Child {
    lock_table_for(url, "entries", hold)
}

/// [`lock_entries_for`] for any table of the database.
pub fn lock_table_for(url: &str, table: &str, hold: Duration) -> std::process::Child {
    let mut child = Command::new("psql")
        .arg(url)
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-c"])
        .arg(format!(
            "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep({}); COMMIT;",
            hold.as_secs_f64()
        ))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("run psql");
    for _ in 0..200 {
        let out = Command::new("psql")
            .arg(url)
            .args(["-tA", "-c"])
            .arg(format!("SELECT count(*) FROM pg_locks WHERE relation = '{table}'::regclass AND mode = 'AccessExclusiveLock' AND granted"))
            .output()
            .expect("run psql");
        if String::from_utf8_lossy(&out.stdout).trim() == "1" {
            return child;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the lock on {table} was never granted");
}

/// Ends, before its time, the lock [`lock_table_for`] took on `table`:
/// the holder's session is ended (a killed `psql` would leave its
/// session sleeping, lock and all). Returns once the lock is gone.
pub fn end_lock_on(url: &str, table: &str) {
    exec(
        url,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_locks \
             WHERE relation = '{table}'::regclass AND mode = 'AccessExclusiveLock' AND granted"
        ),
    );
    for _ in 0..200 {
        let held = exec(
            url,
            &format!(
                "SELECT count(*) FROM pg_locks WHERE relation = '{table}'::regclass \
                 AND mode = 'AccessExclusiveLock' AND granted"
            ),
        );
        if held.trim() == "0" {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the lock on {table} did not go");
}

/// Runs SQL on the database at `url` directly, behind the servers' backs
/// (nothing announced to them).
pub fn exec(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .arg(url)
        .args(["-v", "ON_ERROR_STOP=1", "-tA", "-c", sql])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
