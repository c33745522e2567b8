//! A commit's WAL frames written to the file in one system call.
//!
//! SQLite's unix VFS writes each frame of the write-ahead log with two
//! `pwrite`s, its 24-byte header and then its page, so the group-commit
//! writer made some 28 calls a commit under load, and the kernel's work
//! per call (finding, locking and dirtying the page cache's pages for each)
//! was over half of the writer's CPU (BENCHMARKS.md, "What the two signing
//! targets would take"). SQLite has no setting that gathers them, and no
//! crate does this; its unix VFS does let a process replace the system
//! calls it makes (`xSetSystemCall`), which is what this module does:
//!
//! - A write to a WAL file (a file SQLite opened under a name ending in
//!   `-wal`) that follows the bytes held for its file descriptor is held
//!   with them instead of being made. Each descriptor is its connection's
//!   own, so whichever thread a connection runs on finds what it holds.
//! - The held bytes are written, in one call, when the page of a commit
//!   frame (a frame header whose "database size after commit" field is
//!   not zero) has been added: the end of a transaction's frames. SQLite
//!   publishes a commit to readers only after that write returns, and a
//!   failure (a full disk) is returned from it, so SQLite sees it as the
//!   commit's own write failing and rolls back, as before.
//! - They are also written before a write to that descriptor that does
//!   not follow them, before it is read, truncated or closed, and once they
//!   exceed [`MAX_HELD`]: so a connection never reads a page of its log
//!   that is not in the file, whatever it does between a transaction's
//!   frames (spilling its cache, rewriting checksums). Other connections
//!   read only committed frames. The log's own header is never held: SQLite may sync it
//!   before it writes frames, and `fdatasync` is not a call SQLite lets
//!   be replaced.
//!
//! Nothing is held across a commit, so what is durable and when is
//! unchanged (`synchronous = NORMAL`: the WAL is synced by checkpoints).
//! The database file, the shared-memory index and every other file are
//! written as SQLite writes them.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, Once};

use rusqlite::ffi;

/// Bytes held at most before they are written anyway (a transaction large
/// enough to pass this writes in pieces of this size).
const MAX_HELD: usize = 1 << 20;

/// A WAL frame's header: 24 bytes, the database's size in pages after
/// the commit in bytes 4..8 (zero for frames that do not end a commit).
const FRAME_HEADER: usize = 24;

/// The WAL file's header: its first 32 bytes.
const WAL_HEADER: libc::off_t = 32;

/// File descriptors below this are tracked; a WAL file opened on a higher
/// one is written as SQLite writes it.
const TRACKED_FDS: usize = 4096;

/// Which file descriptors are open on a WAL file, set when SQLite opens
/// one and cleared when it closes it.
static WAL_FDS: [AtomicBool; TRACKED_FDS] = [const { AtomicBool::new(false) }; TRACKED_FDS];

/// The bytes held for each WAL file descriptor. Only the connection that
/// owns a descriptor uses its slot, so the lock is not contended.
static HELD: [Mutex<Held>; TRACKED_FDS] = [const { Mutex::new(Held::NONE) }; TRACKED_FDS];

type OpenFn = unsafe extern "C" fn(*const c_char, c_int, c_int) -> c_int;
type CloseFn = unsafe extern "C" fn(c_int) -> c_int;
type PreadFn = unsafe extern "C" fn(c_int, *mut c_void, usize, libc::off_t) -> isize;
type PwriteFn = unsafe extern "C" fn(c_int, *const c_void, usize, libc::off_t) -> isize;
type TruncateFn = unsafe extern "C" fn(c_int, libc::off_t) -> c_int;

/// The calls SQLite made before these replaced them, stored as addresses
/// (set once, before the replacements are installed).
static REAL_OPEN: AtomicUsize = AtomicUsize::new(0);
static REAL_CLOSE: AtomicUsize = AtomicUsize::new(0);
static REAL_PREAD: AtomicUsize = AtomicUsize::new(0);
static REAL_PWRITE: AtomicUsize = AtomicUsize::new(0);
static REAL_TRUNCATE: AtomicUsize = AtomicUsize::new(0);

/// The bytes held for one file descriptor: `bytes` belong at `start`.
struct Held {
    start: i64,
    bytes: Vec<u8>,
    /// Where the page of a commit frame whose header is held starts: the
    /// write there ends the transaction's frames.
    commit_page_at: Option<i64>,
}

impl Held {
    const NONE: Held = Held {
        start: 0,
        bytes: Vec::new(),
        commit_page_at: None,
    };
}

static INSTALL: Once = Once::new();

/// Puts the replacements in place in SQLite's unix VFS, once per process,
/// before the first database is opened (connections opened earlier keep
/// writing their WAL as SQLite does). Without a unix VFS, or one that
/// does not offer these calls, SQLite goes on writing as it does.
pub fn install() {
    INSTALL.call_once(|| {
        // SAFETY: `sqlite3_vfs_find` returns SQLite's registered VFS (or
        // null); the system-call table is read and written through the
        // VFS's own functions, once, before any connection of this server
        // exists. Each replacement has the signature SQLite casts that
        // entry to (os_unix.c's `aSyscall`), and each original is stored
        // before its replacement is installed.
        unsafe {
            let vfs = ffi::sqlite3_vfs_find(c"unix".as_ptr());
            if vfs.is_null() || (*vfs).iVersion < 3 {
                return;
            }
            let (Some(get), Some(set)) = ((*vfs).xGetSystemCall, (*vfs).xSetSystemCall) else {
                return;
            };
            let names: [(&CStr, &AtomicUsize, usize); 5] = [
                (c"open", &REAL_OPEN, wal_open as OpenFn as usize),
                (c"close", &REAL_CLOSE, wal_close as CloseFn as usize),
                (c"pread", &REAL_PREAD, wal_pread as PreadFn as usize),
                (
                    c"ftruncate",
                    &REAL_TRUNCATE,
                    wal_truncate as TruncateFn as usize,
                ),
                // Last: nothing is held until every call that writes what
                // is held is in place.
                (c"pwrite", &REAL_PWRITE, wal_pwrite as PwriteFn as usize),
            ];
            for (name, _, _) in &names {
                if get(vfs, name.as_ptr()).is_none() {
                    return;
                }
            }
            for (name, real, ours) in names {
                if let Some(f) = get(vfs, name.as_ptr()) {
                    real.store(f as usize, Ordering::Release);
                    let ptr: ffi::sqlite3_syscall_ptr =
                        Some(std::mem::transmute::<usize, unsafe extern "C" fn()>(ours));
                    set(vfs, name.as_ptr(), ptr);
                }
            }
        }
    });
}

/// The slot of a WAL file's descriptor; None for any other file.
fn slot(fd: c_int) -> Option<MutexGuard<'static, Held>> {
    let i = usize::try_from(fd).ok()?;
    if !WAL_FDS.get(i)?.load(Ordering::Acquire) {
        return None;
    }
    // Nothing panics while a slot is locked; a poisoned one is still whole.
    Some(HELD.get(i)?.lock().unwrap_or_else(|e| e.into_inner()))
}

fn set_wal(fd: c_int, wal: bool) {
    if let Some(f) = usize::try_from(fd).ok().and_then(|i| WAL_FDS.get(i)) {
        f.store(wal, Ordering::Release);
    }
}

/// The original call stored under `slot`, as type `F`.
///
/// SAFETY: `slot` holds the address of a function of type `F` (set by
/// `install` before any replacement that calls this can run).
unsafe fn real<F: Copy>(slot: &AtomicUsize) -> F {
    let addr = slot.load(Ordering::Acquire);
    std::mem::transmute_copy::<usize, F>(&addr)
}

fn set_errno(e: c_int) {
    // SAFETY: `__errno_location` returns this thread's errno.
    unsafe { *libc::__errno_location() = e };
}

/// Writes the bytes held for `fd`, then forgets them (written or not).
/// On failure errno is set and Err returned.
fn write_held(fd: c_int, held: &mut Held) -> Result<(), ()> {
    let mut done = 0;
    let mut result = Ok(());
    while done < held.bytes.len() {
        let rest = &held.bytes[done..];
        // SAFETY: the original `pwrite`, given a live buffer and its length.
        let n = unsafe {
            real::<PwriteFn>(&REAL_PWRITE)(
                fd,
                rest.as_ptr().cast(),
                rest.len(),
                held.start + done as i64,
            )
        };
        match usize::try_from(n) {
            Ok(0) => {
                // A write that takes nothing is a full disk to SQLite.
                set_errno(libc::ENOSPC);
                result = Err(());
                break;
            }
            Ok(n) => done += n,
            Err(_) => {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                set_errno(e.raw_os_error().unwrap_or(libc::EIO));
                result = Err(());
                break;
            }
        }
    }
    // `commit_page_at` stays: when a commit frame's header is what took
    // the held bytes past MAX_HELD, its page still ends the commit.
    held.bytes.clear();
    result
}

/// Writes what is held for `fd`, if it is a WAL file's.
fn flush(fd: c_int) -> Result<(), ()> {
    match slot(fd) {
        Some(mut held) if !held.bytes.is_empty() => write_held(fd, &mut held),
        _ => Ok(()),
    }
}

unsafe extern "C" fn wal_open(path: *const c_char, flags: c_int, mode: c_int) -> c_int {
    let fd = real::<OpenFn>(&REAL_OPEN)(path, flags, mode);
    if fd >= 0 {
        let wal = !path.is_null() && CStr::from_ptr(path).to_bytes().ends_with(b"-wal");
        set_wal(fd, wal);
        if let Some(mut held) = slot(fd) {
            // A new file on this descriptor: nothing held belongs to it.
            held.bytes.clear();
            held.commit_page_at = None;
        }
    }
    fd
}

unsafe extern "C" fn wal_close(fd: c_int) -> c_int {
    // The close goes ahead whatever the write did; SQLite is told only
    // of the close's own result, and a failed write of a commit frame was
    // already returned from that write.
    let _ = flush(fd);
    set_wal(fd, false);
    real::<CloseFn>(&REAL_CLOSE)(fd)
}

unsafe extern "C" fn wal_pread(fd: c_int, buf: *mut c_void, n: usize, off: libc::off_t) -> isize {
    if flush(fd).is_err() {
        return -1;
    }
    real::<PreadFn>(&REAL_PREAD)(fd, buf, n, off)
}

unsafe extern "C" fn wal_truncate(fd: c_int, len: libc::off_t) -> c_int {
    if flush(fd).is_err() {
        return -1;
    }
    real::<TruncateFn>(&REAL_TRUNCATE)(fd, len)
}

unsafe extern "C" fn wal_pwrite(
    fd: c_int,
    buf: *const c_void,
    n: usize,
    off: libc::off_t,
) -> isize {
    let direct = |buf, n, off| real::<PwriteFn>(&REAL_PWRITE)(fd, buf, n, off);
    let Some(mut held) = slot(fd) else {
        return direct(buf, n, off);
    };
    // The WAL's own header (at the start of the file, written when the
    // log starts over) goes straight to the file: SQLite may sync it
    // before the frames, and syncs are not among the calls replaced here.
    if buf.is_null() || off < WAL_HEADER {
        if write_held(fd, &mut held).is_err() {
            return -1;
        }
        return direct(buf, n, off);
    }
    let data = std::slice::from_raw_parts(buf.cast::<u8>(), n);
    let follows = held.start + held.bytes.len() as i64 == off;
    if !held.bytes.is_empty() && !follows && write_held(fd, &mut held).is_err() {
        return -1;
    }
    if held.bytes.is_empty() {
        held.start = off;
    }
    held.bytes.extend_from_slice(data);
    let ends_commit = held.commit_page_at == Some(off);
    held.commit_page_at =
        (n == FRAME_HEADER && data[4..8] != [0; 4]).then_some(off + FRAME_HEADER as i64);
    if (ends_commit || held.bytes.len() >= MAX_HELD) && write_held(fd, &mut held).is_err() {
        return -1;
    }
    n as isize
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    use rusqlite::{Connection, ErrorCode};

    /// Write system calls this thread has made (the kernel's count).
    fn write_calls() -> u64 {
        let io = std::fs::read_to_string("/proc/thread-self/io").unwrap();
        io.lines()
            .find_map(|l| l.strip_prefix("syscw: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// A connection as the server opens them (WAL, `synchronous = NORMAL`),
    /// to a database made when missing.
    fn open(path: &Path) -> Connection {
        drop(Connection::open(path).unwrap());
        let c = super::super::sqlite::open(path).unwrap();
        c.execute_batch("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
            .unwrap();
        c
    }

    /// Rows `from..to`, each `size` bytes that say which row they are.
    fn insert(c: &Connection, from: i64, to: i64, size: usize) {
        let mut st = c
            .prepare_cached("INSERT INTO t (id, v) VALUES (?1, ?2)")
            .unwrap();
        for id in from..to {
            st.execute(rusqlite::params![id, row(id, size)]).unwrap();
        }
    }

    fn row(id: i64, size: usize) -> Vec<u8> {
        id.to_le_bytes()
            .iter()
            .copied()
            .cycle()
            .take(size)
            .collect()
    }

    /// Every row is whole and says which it is; their ids.
    fn rows(c: &Connection) -> Vec<i64> {
        let mut st = c.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
        let got = st
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
            .unwrap();
        got.map(|r| {
            let (id, v) = r.unwrap();
            assert_eq!(v, row(id, v.len()), "row {id} is not what was written");
            id
        })
        .collect()
    }

    fn intact(path: &Path) -> Vec<i64> {
        let c = open(path);
        let check: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        rows(&c)
    }

    fn frames(wal: &Path) -> u64 {
        (std::fs::metadata(wal).unwrap().len().saturating_sub(32)) / (4096 + 24)
    }

    #[test]
    fn a_commits_frames_reach_the_wal_in_one_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let wal = dir.path().join("db.sqlite-wal");
        let mut c = open(&path);
        insert(&c, 0, 1, 100);
        let before = frames(&wal);
        let tx = c.transaction().unwrap();
        insert(&tx, 1, 201, 1000);
        let calls = write_calls();
        tx.commit().unwrap();
        let calls = write_calls() - calls;
        let written = frames(&wal) - before;
        assert!(written >= 50, "only {written} frames written");
        // SQLite alone makes two calls a frame.
        assert!(calls <= 2, "{calls} write calls for {written} frames");
        // Another connection sees the whole commit.
        assert_eq!(rows(&open(&path)), (0..201).collect::<Vec<_>>());
        drop(c);
        assert_eq!(intact(&path), (0..201).collect::<Vec<_>>());
    }

    #[test]
    fn a_commit_page_is_written_at_once_though_its_header_passed_the_size_limit() {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        super::install();
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("db.sqlite-wal");
        let path = CString::new(wal.as_os_str().as_bytes()).unwrap();
        // SAFETY: the replacements, called as SQLite calls them, with live
        // buffers and their lengths.
        unsafe {
            let fd = super::wal_open(path.as_ptr(), libc::O_RDWR | libc::O_CREAT, 0o600);
            assert!(fd >= 0);
            let write = |bytes: &[u8], off: usize| {
                let n = super::wal_pwrite(fd, bytes.as_ptr().cast(), bytes.len(), off as i64);
                assert_eq!(n, bytes.len() as isize);
            };
            // Frames up to 24 bytes short of the limit, then a commit
            // frame's header (database size 1 page), then its page.
            let page = [7u8; 4096];
            let mut off = 32;
            while off + 24 + page.len() < 32 + super::MAX_HELD - 24 {
                write(&[0; 24], off);
                write(&page, off + 24);
                off += 24 + page.len();
            }
            write(&vec![1; super::MAX_HELD + 32 - 24 - off], off);
            off = super::MAX_HELD + 32 - 24;
            write(
                &[
                    0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ],
                off,
            );
            write(&page, off + 24);
            // All of it is in the file now, the commit's page included.
            let len = std::fs::metadata(&wal).unwrap().len();
            assert_eq!(len, (off + 24 + page.len()) as u64);
            super::wal_close(fd);
        }
    }

    #[test]
    fn what_a_transaction_spills_and_reads_back_is_in_the_file_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let c = open(&path);
        // A cache of a few pages: the transactions below (about 3 MB, more
        // than is ever held at once) spill their pages into the WAL before
        // they commit, and read them back from there.
        c.pragma_update(None, "cache_size", 8).unwrap();
        // Written on one thread, read back and committed on another.
        c.execute_batch("BEGIN").unwrap();
        let c = std::thread::spawn(move || {
            insert(&c, 0, 1500, 2000);
            c
        })
        .join()
        .unwrap();
        assert_eq!(rows(&c), (0..1500).collect::<Vec<_>>());
        c.execute_batch("COMMIT").unwrap();
        let mut c = c;
        assert_eq!(rows(&open(&path)), (0..1500).collect::<Vec<_>>());

        // A spilled transaction rolled back, then another committed where
        // its frames were.
        let tx = c.transaction().unwrap();
        insert(&tx, 1500, 3000, 2000);
        assert_eq!(rows(&tx).len(), 3000);
        tx.rollback().unwrap();
        let tx = c.transaction().unwrap();
        insert(&tx, 5000, 5100, 3000);
        tx.commit().unwrap();
        let want: Vec<i64> = (0..1500).chain(5000..5100).collect();
        assert_eq!(rows(&open(&path)), want);
        drop(c);
        assert_eq!(intact(&path), want);
    }

    #[test]
    fn a_full_disk_fails_the_commit_and_takes_writes_again_once_there_is_room() {
        let dir = tempfile::tempdir().unwrap();
        let fs = dir.path().join("fs");
        std::fs::create_dir(&fs).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs"])
            .arg(&fs)
            .status()
            .unwrap();
        assert!(mounted.success(), "mount tmpfs (run as root)");
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = Command::new("umount").arg(self.0).status();
            }
        }
        let _unmount = Unmount(&fs);
        let path = fs.join("db.sqlite");
        let mut c = open(&path);
        insert(&c, 0, 10, 1000);
        // Take all the room that is left.
        let filler = fs.join("filler");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&filler).unwrap();
            while f.write_all(&[0; 4096]).is_ok() {}
        }
        let tx = c.transaction().unwrap();
        insert(&tx, 10, 300, 1000);
        let err = tx.commit().unwrap_err();
        assert_eq!(err.sqlite_error_code(), Some(ErrorCode::DiskFull), "{err}");
        assert_eq!(rows(&c), (0..10).collect::<Vec<_>>());
        assert_eq!(rows(&open(&path)), (0..10).collect::<Vec<_>>());

        std::fs::remove_file(&filler).unwrap();
        let tx = c.transaction().unwrap();
        insert(&tx, 10, 300, 1000);
        tx.commit().unwrap();
        drop(c);
        assert_eq!(intact(&path), (0..300).collect::<Vec<_>>());
    }
}
