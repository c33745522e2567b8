//! `gatepass-hostd-testkit`: hostd's apply code driven without a server,
//! for the crash-safety test (tests/tests/it/hostd_files.rs) and the benchmark
//! (bench/src/hostd.rs). Built only with the `testkit` feature, which the
//! tests and bench crates turn on, so the packaged `gatepass-hostd` does not
//! carry it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use gatepass_api::hosts::{DynamicKey, HostState};
use gatepass_hostd::{apply, clock, files, sshd_config};

#[derive(Parser)]
#[command(
    name = "gatepass-hostd-testkit",
    version,
    about = "gatepass-hostd's apply code, for tests and benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Rewrite managed files in DIR in a loop (crash-safety test).
    WriteLoop {
        dir: PathBuf,
        /// Write variant "a" or "b" once and exit.
        #[arg(long)]
        once: Option<String>,
    },
    /// Print the authorized_keys line hostd writes for a dynamic key, its
    /// expiry in local time as for an sshd before OpenSSH 9.1 (`TZ` is the
    /// time zone, as for sshd).
    KeyLineLocal {
        /// The key's user.
        #[arg(long)]
        user: String,
        /// The public key, OpenSSH's one-line form.
        #[arg(long)]
        key: String,
        /// When it expires, Unix seconds.
        #[arg(long)]
        expires: i64,
    },
    /// Time applying a large state into DIR and print the figures (benchmark).
    BenchApply {
        dir: PathBuf,
        #[arg(long, default_value_t = 1000)]
        users: usize,
        #[arg(long, default_value_t = 10000)]
        keys: usize,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::WriteLoop { dir, once } => write_loop(&dir, once.as_deref()),
        Command::BenchApply { dir, users, keys } => bench_apply(&dir, users, keys),
        Command::KeyLineLocal { user, key, expires } => {
            let k = DynamicKey {
                user,
                public_key: key,
                options: String::new(),
                expires,
                lease_id: "ssh/creds/local/1".into(),
            };
            match apply::key_line(&k, apply::TimeForm::Local) {
                Ok(line) => {
                    println!("{line}");
                    Ok(())
                }
                Err(e) => bail!("{e}"),
            }
        }
    }
}

/// Two alternating desired states with different files and sizes, plus a
/// drop-in and a main config file, rewritten until killed.
fn write_loop(dir: &Path, once: Option<&str>) -> Result<()> {
    let layout = apply::Layout::new(&dir.join("gatepass"));
    let variant = |a: bool| -> Result<apply::Rendered> {
        let key = |i: u8| {
            let k = ssh_key::PublicKey::from(ssh_key::public::KeyData::Ed25519(
                ssh_key::public::Ed25519PublicKey([i; 32]),
            ));
            k.to_openssh().unwrap_or_default()
        };
        let keys = |user: &str, n: u8| -> Vec<DynamicKey> {
            (0..n)
                .map(|i| DynamicKey {
                    user: user.into(),
                    public_key: key(i),
                    options: if a { "no-pty".into() } else { String::new() },
                    expires: 4_000_000_000,
                    lease_id: format!("ssh/creds/{user}/{i}"),
                })
                .collect()
        };
        let mut principals = std::collections::BTreeMap::new();
        let mut dynamic_keys = Vec::new();
        if a {
            principals.insert("alice".to_string(), vec!["alice".into(), "ops".into()]);
            dynamic_keys.extend(keys("alice", 200));
            dynamic_keys.extend(keys("bob", 3));
        } else {
            principals.insert("alice".to_string(), vec!["admins".into()]);
            dynamic_keys.extend(keys("alice", 2));
            dynamic_keys.extend(keys("carol", 50));
        }
        let state = HostState {
            index: 1,
            user_ca_keys: (0..if a { 1 } else { 5 })
                .map(|i| key(100 + i) + "\n")
                .collect(),
            krl: String::new(),
            principals: Some(principals),
            dynamic_keys,
        };
        Ok(apply::render(&state, 0, apply::TimeForm::Utc)?)
    };
    let (ra, rb) = (variant(true)?, variant(false)?);
    let conf = |a: bool| {
        let d = layout.directives(a, vec![]);
        d.lines(&[".ssh/authorized_keys".into()]).join("\n") + "\n"
    };
    let write = |a: bool| -> Result<()> {
        apply::apply(&layout, if a { &ra } else { &rb })?;
        files::ensure_dir(&dir.join("sshd_config.d"), files::DIR)?;
        files::clean_temp_files(&dir.join("sshd_config.d"))?;
        files::write_atomic(
            &dir.join("sshd_config.d").join(sshd_config::DROPIN_NAME),
            conf(a).as_bytes(),
            files::PUBLIC_FILE,
        )?;
        Ok(())
    };
    match once {
        Some("a") => return write(true),
        Some("b") => return write(false),
        Some(other) => bail!("--once takes a or b, not {other:?}"),
        None => {}
    }
    let mut a = true;
    loop {
        write(a)?;
        a = !a;
    }
}

/// Peak resident memory of this process (VmHWM), in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A desired state of `keys` dynamic keys spread over `users` users,
/// rendered and applied: first into an empty folder, then again unchanged,
/// then with one key replaced.
fn bench_apply(dir: &Path, users: usize, keys: usize) -> Result<()> {
    use std::time::Instant;
    let layout = apply::Layout::new(&dir.join("gatepass"));
    let key = |i: usize| {
        let mut b = [0u8; 32];
        b[..8].copy_from_slice(&(i as u64).to_be_bytes());
        ssh_key::PublicKey::from(ssh_key::public::KeyData::Ed25519(
            ssh_key::public::Ed25519PublicKey(b),
        ))
        .to_openssh()
        .unwrap_or_default()
    };
    let mut state = HostState {
        index: 1,
        user_ca_keys: key(usize::MAX) + "\n",
        krl: String::new(),
        principals: None,
        dynamic_keys: (0..keys)
            .map(|i| DynamicKey {
                user: format!("user{:04}", i % users.max(1)),
                public_key: key(i),
                options: "no-port-forwarding,no-agent-forwarding".into(),
                expires: 4_000_000_000,
                lease_id: format!("ssh/creds/dyn/{i:08}"),
            })
            .collect(),
    };
    let now = clock::now();
    let t = Instant::now();
    let r = apply::render(&state, now, apply::TimeForm::Utc)?;
    let render = t.elapsed();
    let t = Instant::now();
    let first = apply::apply(&layout, &r)?;
    let first_t = t.elapsed();
    let t = Instant::now();
    let again = apply::apply(&layout, &apply::render(&state, now, apply::TimeForm::Utc)?)?;
    let again_t = t.elapsed();
    state.dynamic_keys[0].public_key = key(keys + 1);
    let t = Instant::now();
    let one = apply::apply(&layout, &apply::render(&state, now, apply::TimeForm::Utc)?)?;
    let one_t = t.elapsed();
    println!(
        "{}",
        serde_json::json!({
            "users": users,
            "keys": keys,
            "render_ms": render.as_secs_f64() * 1e3,
            "first_apply_ms": first_t.as_secs_f64() * 1e3,
            "first_apply_files": first.len(),
            "unchanged_apply_ms": again_t.as_secs_f64() * 1e3,
            "unchanged_apply_files": again.len(),
            "one_key_changed_ms": one_t.as_secs_f64() * 1e3,
            "one_key_changed_files": one.len(),
            "peak_rss_kib": peak_rss_kib(),
        })
    );
    Ok(())
}
