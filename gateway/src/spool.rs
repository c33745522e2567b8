//! The recording spool: every sealed chunk and signed end is first a file
//! here (under the gateway's state directory, mode 0600, fsync'd with its
//! folder), then sent to the server ([`deliver`]), and removed once the
//! server has it. While the server cannot be reached the files wait; a
//! gateway that restarts (even after SIGKILL) finds them and sends them.
//! The server takes a chunk it already has again without harm, so a file
//! sent but not yet removed when the gateway died is simply sent again.
//!
//! Writes are group commits: [`Spool::put`] queues the item and returns;
//! one writer thread takes whatever is queued, writes each recording's
//! consecutive chunks as one file, and fsyncs it and the folder once. An
//! fsync costs milliseconds, so one per chunk in the session's data
//! path would hold a busy session to a few MB/s; with the writer a busy
//! session's chunks gather while the previous batch syncs. What a SIGKILL
//! can lose is what was queued during the last fsync (milliseconds of the
//! session) besides the chunk being gathered. The queue is bounded
//! ([`MAX_QUEUED`]): past it, `put` waits for the writer.
//!
//! A spool that cannot keep what it is given fails closed: when a batch
//! cannot be written (a full or broken disk), or the files waiting for the
//! server reach the spool's bound (`[recording] spool_max_mib`), its
//! [`Spool::trouble`] says why. The gateway then ends the sessions being
//! recorded and refuses new ones, until a batch is written again and the
//! spool is back under nine tenths of its bound.
//!
//! File names sort in sending order within a recording: its chunks by
//! index, then its end.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use gatepass_api::recording::{RecordingEnd, SealedChunk};
use gatepass_api::Client;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

/// One file of the spool.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "item", rename_all = "snake_case")]
pub enum SpoolItem {
    Chunk {
        session: String,
        recording: String,
        chunk: SealedChunk,
    },
    /// Consecutive chunks of one recording, written in one go.
    Chunks {
        session: String,
        recording: String,
        chunks: Vec<SealedChunk>,
    },
    End {
        session: String,
        recording: String,
        end: RecordingEnd,
    },
}

impl SpoolItem {
    fn ids(&self) -> (&str, &str) {
        match self {
            SpoolItem::Chunk {
                session, recording, ..
            }
            | SpoolItem::Chunks {
                session, recording, ..
            }
            | SpoolItem::End {
                session, recording, ..
            } => (session, recording),
        }
    }

    fn file_name(&self) -> String {
        match self {
            SpoolItem::Chunk {
                session,
                recording,
                chunk,
            } => format!("{session}.{recording}.{:012}.chunk", chunk.index),
            SpoolItem::Chunks {
                session,
                recording,
                chunks,
            } => format!(
                "{session}.{recording}.{:012}.chunks",
                chunks.first().map_or(0, |c| c.index)
            ),
            SpoolItem::End {
                session, recording, ..
            } => format!("{session}.{recording}.end"),
        }
    }

    /// Roughly how much memory it holds while queued.
    fn size(&self) -> usize {
        match self {
            SpoolItem::Chunk { chunk, .. } => chunk.data.len(),
            SpoolItem::Chunks { chunks, .. } => chunks.iter().map(|c| c.data.len()).sum(),
            SpoolItem::End { .. } => 0,
        }
    }

    /// The server paths and bodies it goes to, in order.
    fn requests(&self) -> Vec<(String, Value)> {
        let chunk = |session: &str, recording: &str, chunk: &SealedChunk| {
            (
                format!(
                    "pam/gateway/self/sessions/{session}/recordings/{recording}/chunks/{}",
                    chunk.index
                ),
                serde_json::to_value(chunk).unwrap_or_default(),
            )
        };
        match self {
            SpoolItem::Chunk {
                session,
                recording,
                chunk: c,
            } => vec![chunk(session, recording, c)],
            SpoolItem::Chunks {
                session,
                recording,
                chunks,
            } => chunks
                .iter()
                .map(|c| chunk(session, recording, c))
                .collect(),
            SpoolItem::End {
                session,
                recording,
                end,
            } => vec![(
                format!("pam/gateway/self/sessions/{session}/recordings/{recording}/end"),
                serde_json::to_value(end).unwrap_or_default(),
            )],
        }
    }
}

/// What may wait in memory for the writer, in bytes of sealed chunks;
/// past it [`Spool::put`] waits (the session's data waits with it).
pub const MAX_QUEUED: usize = 16 << 20;

/// The free space a spool whose writes failed needs again before it takes
/// sessions: room for all that may wait for its writer.
const ROOM_NEEDED: u64 = MAX_QUEUED as u64;

/// Items given to [`Spool::put`] and not yet on disk.
#[derive(Default)]
struct Queue {
    items: Vec<SpoolItem>,
    bytes: usize,
    /// The writer is writing a batch it took.
    busy: bool,
    /// The spool is dropped: the writer ends once the queue is empty.
    closed: bool,
    /// Why a batch could not be written, until a probe writes (see
    /// [`Spool::check`]).
    write_failed: Option<String>,
    /// Batches written, and batches that failed.
    batches: u64,
    failures: u64,
    /// Why the spool takes no more chunks: it holds its bound.
    full: Option<String>,
}

impl Queue {
    fn trouble(&self) -> Option<String> {
        self.write_failed.clone().or_else(|| self.full.clone())
    }
}

/// The queue and its two signals, shared with the writer thread.
#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// Something was queued (or the spool closed).
    queued: Condvar,
    /// A batch is on disk.
    written: Condvar,
    /// Bytes in the files waiting to be sent.
    on_disk: std::sync::atomic::AtomicU64,
    /// Files that left the spool (sent or set aside) since it opened.
    forgotten: std::sync::atomic::AtomicU64,
    /// What [`Queue::trouble`] says, for sessions to watch.
    trouble: watch::Sender<Option<String>>,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            queue: Mutex::default(),
            queued: Condvar::new(),
            written: Condvar::new(),
            on_disk: std::sync::atomic::AtomicU64::new(0),
            forgotten: std::sync::atomic::AtomicU64::new(0),
            trouble: watch::Sender::new(None),
        }
    }

    /// Tells the watchers what `q` says now, if it changed.
    fn publish(&self, q: &Queue) {
        let now = q.trouble();
        self.trouble.send_if_modified(|t| {
            let changed = *t != now;
            *t = now;
            changed
        });
    }

    fn on_disk(&self) -> u64 {
        self.on_disk.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// IDs are UUIDs; anything else must not become a path.
fn plain(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

pub struct Spool {
    dir: PathBuf,
    /// The most bytes the files waiting for the server may hold.
    max_bytes: u64,
    /// Files are there to deliver.
    ready: Arc<Notify>,
    shared: Arc<Shared>,
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Ok(mut q) = self.shared.queue.lock() {
            q.closed = true;
        }
        self.shared.queued.notify_all();
    }
}

impl Spool {
    /// The spool in `dir`, made (0700) if missing, holding at most
    /// `max_bytes` of files waiting for the server.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, String> {
        if !dir.is_dir() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("cannot make the recording spool {}: {e}", dir.display()))?;
        }
        let spool = Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            ready: Arc::new(Notify::new()),
            shared: Arc::new(Shared::new()),
        };
        let found: u64 = spool
            .pending()
            .iter()
            .filter_map(|p| fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        spool
            .shared
            .on_disk
            .store(found, std::sync::atomic::Ordering::SeqCst);
        // Over its bound already (the server away before a restart): full
        // from the start, not at each session's first chunk.
        spool.settle();
        let (shared, ready, dir) = (spool.shared.clone(), spool.ready.clone(), spool.dir.clone());
        std::thread::Builder::new()
            .name("recording-spool".into())
            .spawn(move || write_batches(&shared, &ready, &dir))
            .map_err(|e| format!("cannot start the recording spool's writer: {e}"))?;
        Ok(spool)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Why the spool cannot keep recordings now; None while it can.
    pub fn trouble(&self) -> Option<String> {
        self.shared.trouble.borrow().clone()
    }

    /// Sees every change of [`Spool::trouble`].
    pub fn watch_trouble(&self) -> watch::Receiver<Option<String>> {
        self.shared.trouble.subscribe()
    }

    /// Queues `item` for the writer, which makes it a 0600 file, fsync'd,
    /// renamed into place, and fsyncs the folder (see the module's text);
    /// waits only while the queue is full. A chunk that would take the
    /// spool past its bound is refused (an end, a few hundred bytes, is
    /// always taken: the recording then ends where it was cut).
    pub fn put(&self, item: SpoolItem) -> Result<(), String> {
        let (session, recording) = item.ids();
        if !plain(session) || !plain(recording) {
            return Err(format!(
                "not a session or recording ID: {session:?} {recording:?}"
            ));
        }
        let mut q = self
            .shared
            .queue
            .lock()
            .map_err(|_| "the recording spool's queue is broken".to_string())?;
        while q.bytes >= MAX_QUEUED && !q.closed {
            q = self
                .shared
                .written
                .wait(q)
                .map_err(|_| "the recording spool's queue is broken".to_string())?;
        }
        let size = item.size();
        if size > 0 && self.shared.on_disk() + (q.bytes + size) as u64 > self.max_bytes {
            if q.full.is_none() {
                let why = self.full_reason();
                warn!("{why}: sessions being recorded end, and new ones are refused, until the server takes them");
                q.full = Some(why);
                self.shared.publish(&q);
            }
            return Err(q.full.clone().unwrap_or_default());
        }
        q.bytes += size;
        q.items.push(item);
        drop(q);
        self.shared.queued.notify_one();
        Ok(())
    }

    /// Waits until everything queued is on disk (before the gateway exits).
    pub fn flush(&self) {
        let Ok(mut q) = self.shared.queue.lock() else {
            return;
        };
        while !q.items.is_empty() || q.busy {
            q = match self.shared.written.wait(q) {
                Ok(q) => q,
                Err(_) => return,
            };
        }
    }

    /// `path` is about to leave the files waiting (sent, or set aside): its
    /// bytes no longer count.
    fn forget(&self, path: &Path) {
        let size = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let _ = self.shared.on_disk.fetch_update(
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
            |n| Some(n.saturating_sub(size)),
        );
        self.shared
            .forgotten
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.settle();
    }

    /// Says "full" while what the spool holds (on disk and queued) is over
    /// its bound, until it is back under nine tenths of it.
    fn settle(&self) {
        let Ok(mut q) = self.shared.queue.lock() else {
            return;
        };
        let held = self.shared.on_disk() + q.bytes as u64;
        if q.full.is_some() && held < self.max_bytes / 10 * 9 {
            q.full = None;
            info!("the recording spool has room again");
            self.shared.publish(&q);
        } else if q.full.is_none() && held > self.max_bytes {
            let why = self.full_reason();
            warn!("{why}: sessions being recorded end, and new ones are refused, until the server takes them");
            q.full = Some(why);
            self.shared.publish(&q);
        }
    }

    fn full_reason(&self) -> String {
        format!(
            "the recording spool {} holds its limit of {} MiB of recordings not yet taken by the server ([recording] spool_max_mib)",
            self.dir.display(),
            self.max_bytes >> 20
        )
    }

    /// Looks again at what the spool holds and whether it can be written;
    /// run every second while the gateway runs ([`deliver`]).
    ///
    /// The bytes waiting are counted from the files themselves, so files
    /// removed by hand count too (the count is kept only while no file
    /// was written or sent during the look).
    ///
    /// While batches could not be written, a small probe file is written,
    /// fsync'd and removed, and the free space measured: once the folder
    /// takes files and has [`ROOM_NEEDED`] free, the spool takes
    /// recordings again. Without it a spool whose writes failed would stay
    /// failed, since it refuses the sessions whose chunks would show it
    /// works; and with room for less than the chunks of a batch, it would
    /// take sessions only to end them again.
    fn check(&self) {
        let Some((batches, failures, failed)) =
            self.shared.queue.lock().ok().and_then(|q| {
                (!q.busy).then_some((q.batches, q.failures, q.write_failed.is_some()))
            })
        else {
            return;
        };
        let forgotten = self
            .shared
            .forgotten
            .load(std::sync::atomic::Ordering::SeqCst);
        // A folder that cannot be read says nothing of what is in it; a
        // file gone between the listing and its size was sent.
        if let Ok(files) = self.pending_files() {
            let found: u64 = files
                .iter()
                .filter_map(|p| fs::metadata(p).ok())
                .map(|m| m.len())
                .sum();
            if let Ok(q) = self.shared.queue.lock() {
                // Kept only if no file was written or sent meanwhile,
                // which would be counted twice or not at all.
                let sent = self
                    .shared
                    .forgotten
                    .load(std::sync::atomic::Ordering::SeqCst);
                if q.batches == batches && !q.busy && sent == forgotten {
                    self.shared
                        .on_disk
                        .store(found, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
        self.settle();
        if !failed {
            return;
        }
        // Writable at all (a file made, synced and removed), and room for
        // all the queue may hold: measured, not written, since a probe
        // that took the last free space could make the writer lose a
        // batch of its own.
        let path = self.dir.join(".probe");
        let works = (|| {
            write_synced(&path, b"probe")?;
            fs::remove_file(&path)?;
            let st = nix::sys::statvfs::statvfs(&self.dir).map_err(std::io::Error::from)?;
            let free = st.blocks_available().saturating_mul(st.fragment_size());
            if free < ROOM_NEEDED {
                return Err(std::io::Error::other(format!("{free} bytes free")));
            }
            Ok(())
        })();
        if works.is_err() {
            let _ = fs::remove_file(&path);
        }
        if works.is_ok() {
            if let Ok(mut q) = self.shared.queue.lock() {
                // A batch that failed meanwhile stands.
                if q.failures == failures && q.write_failed.take().is_some() {
                    info!("the recording spool can be written again");
                    self.shared.publish(&q);
                }
            }
        }
    }

    /// The spooled files, in sending order.
    fn pending(&self) -> Vec<PathBuf> {
        self.pending_files().unwrap_or_default()
    }

    /// [`Spool::pending`], or why the folder could not be read.
    fn pending_files(&self) -> std::io::Result<Vec<PathBuf>> {
        let entries = fs::read_dir(&self.dir)?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    !n.starts_with('.')
                        && (n.ends_with(".chunk") || n.ends_with(".chunks") || n.ends_with(".end"))
                })
            })
            .collect();
        files.sort();
        Ok(files)
    }
}

/// The writer thread: takes what is queued, writes it, until the spool is
/// dropped and its queue empty.
fn write_batches(shared: &Shared, ready: &Notify, dir: &Path) {
    loop {
        let batch = {
            let Ok(mut q) = shared.queue.lock() else {
                return;
            };
            while q.items.is_empty() && !q.closed {
                q = match shared.queued.wait(q) {
                    Ok(q) => q,
                    Err(_) => return,
                };
            }
            if q.items.is_empty() {
                return;
            }
            q.busy = true;
            std::mem::take(&mut q.items)
        };
        let size: usize = batch.iter().map(SpoolItem::size).sum();
        let (written, result) = write_batch(dir, batch);
        if let Err(e) = &result {
            warn!("recording parts lost: {e}");
        }
        if let Ok(mut q) = shared.queue.lock() {
            // With the queue's bytes, under the lock: `put` never counts
            // a batch both queued and on disk.
            shared
                .on_disk
                .fetch_add(written, std::sync::atomic::Ordering::SeqCst);
            q.busy = false;
            q.bytes = q.bytes.saturating_sub(size);
            q.batches += 1;
            if let Err(e) = result {
                q.failures += 1;
                q.write_failed = Some(format!("the recording spool cannot be written: {e}"));
            }
            shared.publish(&q);
        }
        shared.written.notify_all();
        ready.notify_one();
    }
}

/// Writes a batch: each recording's consecutive chunks as one file, each
/// end as its own, every file fsync'd, then the folder once. Returns the
/// bytes of the files written, and what failed.
fn write_batch(dir: &Path, batch: Vec<SpoolItem>) -> (u64, Result<(), String>) {
    let mut files: Vec<SpoolItem> = Vec::new();
    for item in batch {
        match (files.last_mut(), item) {
            (
                Some(SpoolItem::Chunks {
                    session,
                    recording,
                    chunks,
                }),
                SpoolItem::Chunk {
                    session: s,
                    recording: r,
                    chunk,
                },
            ) if *session == s && *recording == r => chunks.push(chunk),
            (
                _,
                SpoolItem::Chunk {
                    session,
                    recording,
                    chunk,
                },
            ) => files.push(SpoolItem::Chunks {
                session,
                recording,
                chunks: vec![chunk],
            }),
            (_, item) => files.push(item),
        }
    }
    let mut lost = Vec::new();
    let mut written = 0;
    for item in &files {
        match write_file(dir, item) {
            Ok(n) => written += n,
            Err(e) => lost.push(e),
        }
    }
    if let Err(e) = fs::File::open(dir).and_then(|d| d.sync_all()) {
        lost.push(format!("cannot sync {}: {e}", dir.display()));
    }
    if lost.is_empty() {
        (written, Ok(()))
    } else {
        (written, Err(lost.join("; ")))
    }
}

/// `bytes` as the whole of a 0600 file, fsync'd.
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// One spool file: a 0600 file, fsync'd, renamed into place; its size.
fn write_file(dir: &Path, item: &SpoolItem) -> Result<u64, String> {
    let name = item.file_name();
    let path = dir.join(&name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let text = serde_json::to_vec(item).map_err(|e| e.to_string())?;
    let written = write_synced(&tmp, &text).and_then(|()| fs::rename(&tmp, &path));
    match written {
        Ok(()) => Ok(text.len() as u64),
        Err(e) => {
            // A part written file must not fill what little room is left.
            let _ = fs::remove_file(&tmp);
            Err(fail(e))
        }
    }
}

/// A refusal that says nothing about the recording itself: the gateway's
/// token (revoked by `setup --replace` while this run still holds the old
/// one, or lapsed during a long outage), its enrollment, or a rate limit.
/// The parts wait in the spool for a gateway the server takes again,
/// rather than being set aside for good.
fn refused_for_now(status: u16, errors: &[String]) -> bool {
    matches!(status, 401 | 403 | 408 | 429)
        || errors.iter().any(|e| e.contains("no longer enrolled"))
}

/// Sends the spool to the server for good: what is there at start, then
/// each new file as it comes; while the server cannot be reached, tries
/// again every second. A file the server refuses for what it holds (its
/// session is unknown to the server, a chunk out of order) is set aside as
/// `<name>.refused`, not retried forever; one refused because of the
/// gateway's token or enrollment waits ([`refused_for_now`]).
pub async fn deliver(spool: std::sync::Arc<Spool>, client: Client) {
    let found = spool.pending().len();
    if found > 0 {
        info!(files = found, dir = %spool.dir.display(), "sending the recording spool left by an earlier run");
    }
    // Looked at every second, on its own: a long pass over the files below
    // must not keep sessions refused after the disk has room again.
    let checking = spool.clone();
    let _checker = AbortOnDrop(tokio::spawn(async move {
        loop {
            let spool = checking.clone();
            let _ = tokio::task::spawn_blocking(move || spool.check()).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }));
    let mut failing = false;
    loop {
        let mut stuck = false;
        for path in spool.pending() {
            let item: SpoolItem = match fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
            {
                Some(item) => item,
                None => {
                    spool.forget(&path);
                    set_aside(&path, "unreadable");
                    continue;
                }
            };
            // A file of several chunks is removed once all are sent; one
            // that fails leaves it to be sent again (resends are harmless).
            let mut sent = true;
            for (api_path, body) in item.requests() {
                let body: Map<String, Value> = match body {
                    Value::Object(m) => m,
                    _ => Map::new(),
                };
                match client.write(&api_path, &body).await {
                    Ok(_) => {
                        if failing {
                            info!("recordings reach the server again");
                            failing = false;
                        }
                    }
                    Err(gatepass_api::Error::Api { status, errors })
                        if (400..500).contains(&status) && !refused_for_now(status, &errors) =>
                    {
                        warn!(file = %path.display(), status, "the server refused a recording part: {}", errors.join("; "));
                        spool.forget(&path);
                        set_aside(&path, "refused");
                        sent = false;
                        break;
                    }
                    Err(e) => {
                        if !failing {
                            warn!(
                                "recordings wait in the spool: the server cannot be reached: {}",
                                crate::server_source::with_causes(&e)
                            );
                            failing = true;
                        }
                        stuck = true;
                        sent = false;
                        break;
                    }
                }
            }
            if stuck {
                break;
            }
            if sent {
                debug!(file = %path.display(), "recording part delivered");
                spool.forget(&path);
                let _ = fs::remove_file(&path);
            }
        }
        let pause = if stuck {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(5)
        };
        let _ = tokio::time::timeout(pause, spool.ready.notified()).await;
    }
}

/// Ends the task when dropped (with [`deliver`], when it is aborted).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn set_aside(path: &Path, why: &str) {
    let mut to = path.as_os_str().to_owned();
    to.push(format!(".{why}"));
    let _ = fs::rename(path, PathBuf::from(to));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(session: &str, recording: &str, index: u64) -> SpoolItem {
        SpoolItem::Chunk {
            session: session.into(),
            recording: recording.into(),
            chunk: SealedChunk {
                index,
                prev: String::new(),
                data: format!("data-{index}"),
            },
        }
    }

    /// The chunks each file holds, in sending order.
    fn files(spool: &Spool) -> Vec<(String, Vec<u64>)> {
        spool
            .pending()
            .iter()
            .map(|p| {
                let item: SpoolItem = serde_json::from_slice(&fs::read(p).unwrap()).unwrap();
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                let indices = item
                    .requests()
                    .iter()
                    .filter_map(|(path, _)| {
                        path.rsplit_once("/chunks/")
                            .map(|(_, i)| i.parse().unwrap())
                    })
                    .collect();
                (name, indices)
            })
            .collect()
    }

    #[test]
    fn a_batch_is_one_file_per_run_of_chunks_sent_in_order_and_the_end_last() {
        let dir = tempfile::tempdir().unwrap();
        write_batch(
            dir.path(),
            vec![
                chunk("s1", "r1", 0),
                chunk("s1", "r1", 1),
                chunk("s2", "r2", 0),
                chunk("s1", "r1", 2),
                SpoolItem::End {
                    session: "s1".into(),
                    recording: "r1".into(),
                    end: RecordingEnd {
                        chunks: 3,
                        digest: String::new(),
                        signature: None,
                    },
                },
            ],
        )
        .1
        .unwrap();
        let spool = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(
            files(&spool),
            vec![
                ("s1.r1.000000000000.chunks".to_string(), vec![0, 1]),
                ("s1.r1.000000000002.chunks".to_string(), vec![2]),
                ("s1.r1.end".to_string(), vec![]),
                ("s2.r2.000000000000.chunks".to_string(), vec![0]),
            ]
        );
    }

    #[test]
    fn put_queues_and_the_writer_makes_the_files_private_and_durable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 30).unwrap();
        for i in 0..100 {
            spool.put(chunk("s1", "r1", i)).unwrap();
        }
        assert!(spool.put(chunk("../x", "r1", 0)).is_err());
        spool.flush();
        let found = files(&spool);
        let sent: Vec<u64> = found.iter().flat_map(|(_, i)| i.clone()).collect();
        assert_eq!(sent, (0..100).collect::<Vec<_>>());
        for p in spool.pending() {
            assert_eq!(
                fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }

    fn end(session: &str, recording: &str) -> SpoolItem {
        SpoolItem::End {
            session: session.into(),
            recording: recording.into(),
            end: RecordingEnd {
                chunks: 1,
                digest: String::new(),
                signature: None,
            },
        }
    }

    #[test]
    fn a_spool_that_cannot_be_written_says_why_until_it_can_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let spool = Spool::open(&path, 1 << 30).unwrap();
        let mut watched = spool.watch_trouble();
        assert_eq!(spool.trouble(), None);
        // The folder goes (a broken or vanished disk): the batch is lost.
        fs::rename(&path, dir.path().join("gone")).unwrap();
        spool.put(chunk("s1", "r1", 0)).unwrap();
        spool.flush();
        let why = spool.trouble().expect("the failed write is told");
        assert!(why.contains("cannot be written"), "{why}");
        assert!(watched.has_changed().unwrap());
        assert_eq!(watched.borrow_and_update().clone(), Some(why));
        // Still failing: the look changes nothing.
        spool.check();
        assert!(spool.trouble().is_some());
        // Back: a batch written is not enough (a few bytes may fit where a
        // chunk does not); the probe finds room for chunks, and leaves no
        // file.
        fs::rename(dir.path().join("gone"), &path).unwrap();
        spool.put(end("s1", "r1")).unwrap();
        spool.flush();
        assert!(spool.trouble().is_some());
        fs::remove_file(path.join("s1.r1.end")).unwrap();
        spool.check();
        assert_eq!(spool.trouble(), None);
        assert!(watched.has_changed().unwrap());
        assert_eq!(fs::read_dir(&path).unwrap().count(), 0);
    }

    #[test]
    fn a_spool_at_its_bound_refuses_chunks_until_it_has_room_again() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1000).unwrap();
        let mut taken = 0;
        let refused = loop {
            match spool.put(chunk("s1", "r1", taken)) {
                Ok(()) => taken += 1,
                Err(e) => break e,
            }
            spool.flush();
            assert!(taken < 1000, "the bound was never reached");
        };
        assert!(refused.contains("spool_max_mib"), "{refused}");
        assert_eq!(spool.trouble(), Some(refused));
        // An end is still taken: the recording ends where it was cut.
        spool.put(end("s1", "r1")).unwrap();
        spool.flush();
        // A spool opened again counts what waits there: full from the
        // start.
        let again = Spool::open(dir.path(), 1000).unwrap();
        assert!(again.trouble().is_some());
        assert!(again.put(chunk("s2", "r2", 0)).is_err());
        // Files removed by hand count at the next look.
        let mut files = again.pending();
        let by_hand = files.pop().unwrap();
        let size = fs::metadata(&by_hand).unwrap().len();
        fs::remove_file(&by_hand).unwrap();
        let before = again.shared.on_disk();
        again.check();
        assert_eq!(again.shared.on_disk(), before - size);
        // What the server takes leaves room; under nine tenths the spool
        // takes chunks again.
        for p in spool.pending() {
            spool.forget(&p);
            fs::remove_file(&p).unwrap();
        }
        assert_eq!(spool.trouble(), None);
        spool.put(chunk("s1", "r1", taken)).unwrap();
    }

    /// A server that answers `refusals` of the first requests with `status`
    /// and `error`, and every later one with 204; counts what it took.
    async fn server(
        refusals: usize,
        status: u16,
        error: &'static str,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use axum::http::StatusCode;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let seen = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        let app = axum::Router::new().fallback(move || {
            let counter = counter.clone();
            async move {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                if n < refusals {
                    (
                        StatusCode::from_u16(status).unwrap(),
                        axum::Json(serde_json::json!({ "errors": [error] })),
                    )
                        .into_response()
                } else {
                    StatusCode::NO_CONTENT.into_response()
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (addr, seen)
    }

    use axum::response::IntoResponse;

    async fn deliver_one(
        refusals: usize,
        status: u16,
        error: &'static str,
    ) -> (Vec<String>, usize) {
        let dir = tempfile::tempdir().unwrap();
        write_batch(dir.path(), vec![chunk("s1", "r1", 0)])
            .1
            .unwrap();
        let spool = std::sync::Arc::new(Spool::open(dir.path(), 1 << 30).unwrap());
        let (addr, seen) = server(refusals, status, error).await;
        let client = Client::new(&gatepass_api::Settings {
            addr,
            token: Some("gateway-token".into()),
            ca_cert: None,
            timeout: Some(Duration::from_secs(5)),
        })
        .unwrap();
        let task = tokio::spawn(deliver(spool.clone(), client));
        for _ in 0..100 {
            if spool.pending().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        task.abort();
        let left = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        (left, seen.load(std::sync::atomic::Ordering::SeqCst))
    }

    #[tokio::test]
    async fn parts_refused_for_the_gateways_token_wait_and_are_sent_once_it_is_taken_again() {
        // A revoked or lapsed token: the part waits, and goes once the
        // server takes the gateway again (here after two refusals).
        let (left, seen) = deliver_one(2, 403, "permission denied").await;
        assert!(left.is_empty(), "{left:?}");
        assert_eq!(seen, 3);
        let (left, _) = deliver_one(1, 429, "too many requests").await;
        assert!(left.is_empty(), "{left:?}");
        // A part the server refuses for what it holds is set aside.
        let (left, seen) = deliver_one(1, 400, "unknown session").await;
        assert_eq!(left, vec!["s1.r1.000000000000.chunks.refused".to_string()]);
        assert_eq!(seen, 1);
    }
}
