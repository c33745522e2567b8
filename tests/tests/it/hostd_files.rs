//! gatepass-hostd's file writes survive SIGKILL at any instant: a writer
//! (`gatepass-hostd-testkit write-loop DIR`, which applies two alternating
//! desired states through hostd's real apply code and rewrites a drop-in)
//! is killed at random moments, and every managed file must then be one
//! complete version, old or new, root-owned and 0644, in 0755 folders.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gatepass_tests::bin;

const TEMP_MARK: &str = ".gatepass-tmp-";

/// Every file under `dir` (relative path → bytes), temp files left out.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                assert_eq!(meta.mode() & 0o7777, 0o755, "{}", p.display());
                stack.push(p);
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            if name.contains(TEMP_MARK) {
                assert!(name.starts_with('.'), "temp files are hidden: {name}");
                continue;
            }
            assert!(meta.is_file(), "{}", p.display());
            assert_eq!(meta.mode() & 0o7777, 0o644, "{}", p.display());
            assert_eq!((meta.uid(), meta.gid()), (0, 0), "{}", p.display());
            // The drop-in names the folder; compare contents without it.
            let bytes = std::fs::read(&p).unwrap();
            let bytes = match String::from_utf8(bytes) {
                Ok(s) => s.replace(&dir.display().to_string(), "@DIR@").into_bytes(),
                Err(e) => e.into_bytes(),
            };
            out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), bytes);
        }
    }
    out
}

fn write_once(dir: &Path, variant: &str) {
    let st = Command::new(bin("gatepass-hostd-testkit"))
        .arg("write-loop")
        .arg(dir)
        .args(["--once", variant])
        .status()
        .unwrap();
    assert!(st.success());
}

/// A small xorshift generator: no crate needed for random delays.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn sigkill_never_leaves_a_partial_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (ref_a, ref_b, dir) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("live"),
    );
    for d in [&ref_a, &ref_b, &dir] {
        std::fs::create_dir(d).unwrap();
    }
    write_once(&ref_a, "a");
    write_once(&ref_b, "b");
    let (a, b) = (snapshot(&ref_a), snapshot(&ref_b));
    assert_ne!(a, b);
    // Files both versions have must always be there.
    let always: Vec<&PathBuf> = a.keys().filter(|k| b.contains_key(*k)).collect();
    assert!(always.len() >= 5, "{always:?}");
    write_once(&dir, "a");

    let seed = std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    let mut rng = Rng(seed | 1);
    let started = Instant::now();
    let mut seen_b = 0;
    let mut kills = 0;
    while kills < 80 && started.elapsed() < Duration::from_secs(90) {
        let mut child = Command::new(bin("gatepass-hostd-testkit"))
            .arg("write-loop")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(5_000 + rng.below(60_000)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        let now = snapshot(&dir);
        for k in &always {
            assert!(
                now.contains_key(*k),
                "after kill {kills}: {} is missing",
                k.display()
            );
        }
        for (k, v) in &now {
            let ok = a.get(k) == Some(v) || b.get(k) == Some(v);
            assert!(
                ok,
                "after kill {kills} (seed {seed}): {} is neither version ({} bytes)",
                k.display(),
                v.len()
            );
            assert!(!v.is_empty(), "{} is empty", k.display());
        }
        if now.get(Path::new("gatepass/user_ca.pub")) == b.get(Path::new("gatepass/user_ca.pub")) {
            seen_b += 1;
        }
    }
    assert!(kills >= 50, "only {kills} kills in time");
    assert!(
        seen_b > 0,
        "the writer never got to write the second version"
    );
    // The next writer removes what killed ones left behind.
    write_once(&dir, "a");
    let mut leftovers = Vec::new();
    for sub in [
        "gatepass",
        "gatepass/principals",
        "gatepass/authorized_keys",
        "sshd_config.d",
    ] {
        for e in std::fs::read_dir(dir.join(sub)).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            if name.contains(TEMP_MARK) {
                leftovers.push(format!("{sub}/{name}"));
            }
        }
    }
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(snapshot(&dir), a);
}

/// The shipped binary has no test or benchmark hooks: they live in
/// `gatepass-hostd-testkit`, which is built only with hostd's `testkit`
/// feature and not packaged.
#[test]
fn the_shipped_binary_has_no_test_hooks() {
    let tmp = tempfile::tempdir().unwrap();
    // Arguments that made the old hooks finish at once.
    for (hook, args) in [
        ("__write-loop", ["--once", "a"]),
        ("__bench-apply", ["--keys", "1"]),
    ] {
        let out = Command::new(bin("gatepass-hostd"))
            .arg(hook)
            .arg(tmp.path())
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{hook}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("unrecognized subcommand"),
            "{hook}: {out:?}"
        );
    }
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}
