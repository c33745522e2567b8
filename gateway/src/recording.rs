//! Recording what passes through the gateway: each user connection is one
//! recording ([`Recorder`]), each of its channels taps into it
//! ([`ChannelTap`]) from the bridge, message by message.
//!
//! Events are JSON lines ([`gatepass_api::recording::Event`]) with their
//! time since the connection began. They are cut into chunks of at most
//! `chunk_bytes`, or whatever gathered in `chunk_interval`, each sealed and
//! hash-chained ([`gatepass_api::recording::seal`]) and queued for the
//! spool ([`crate::spool`]), whose writer fsyncs it within milliseconds
//! (group commits, off the session's data path), so a gateway killed
//! mid-session loses at most the chunk being gathered and what was queued
//! during the last fsync. When the connection ends, the last chunk and the
//! signed end follow.
//!
//! Masking rules ([`Masking`]) apply in [`ChannelTap`], before an event is
//! made: each direction of a channel holds back its unfinished line, as
//! [`Utf8Carry`] holds back a split character, so a match across SSH
//! packets (and so across chunks, which are cut between events) is caught
//! before anything is sealed. Search reads the events where the server
//! opens the chunks (`server/src/pam/recordings.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use gatepass_api::recording::{
    self, Digest, Event, EventKind, RecordingGrant, SftpOp, Utf8Carry, GENESIS,
};
use tracing::warn;
use zeroize::Zeroizing;

use crate::spool::{Spool, SpoolItem};

/// How the gateway records.
pub struct RecordingSettings {
    pub spool: Arc<Spool>,
    /// Signs each recording's end; None for a gateway enrolled before
    /// recordings were signed (its recordings end unsigned).
    pub signer: Option<SigningKey>,
    /// A chunk is sealed once this much is gathered…
    pub chunk_bytes: usize,
    /// …or this long after its first event, whichever comes first.
    pub chunk_interval: Duration,
    /// What is masked before it is recorded; None: nothing.
    pub mask: Option<Masking>,
}

/// The longest text a masking rule may match, in bytes: a channel's
/// unfinished line is held back only this far, and a match longer than
/// this may be cut and be recorded in part.
pub const MASK_WINDOW: usize = 4096;

/// Masking rules: text they match in a channel's output or input is
/// recorded as `*`, one per character, so that the recording keeps the
/// terminal's columns (a full-screen program replays in place) while the
/// secret is never sealed, spooled or sent.
///
/// Text is settled line by line: a channel's text after its last line
/// break (`\n` or `\r`, which is what Enter sends in a terminal) is held
/// back until its line ends, the channel closes, or it grows past
/// [`MASK_WINDOW`]; so a rule matches within one line of at most 4 KiB,
/// however the text was split into packets and chunks. Held text is
/// recorded when it is settled, so with masking on a line's time in the
/// recording is when it ended, not when its first characters were shown.
pub struct Masking {
    rules: Vec<regex::Regex>,
}

impl Masking {
    /// The rules (regular expressions, the `regex` crate's syntax); None
    /// when there are none.
    pub fn new(patterns: &[String]) -> Result<Option<Masking>, String> {
        if patterns.is_empty() {
            return Ok(None);
        }
        let rules = patterns
            .iter()
            .map(|p| {
                regex::Regex::new(p).map_err(|e| format!("masking rule {p:?} is not valid: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Masking { rules }))
    }

    /// `text`, whole, masked (an exec command, which comes in one piece).
    pub fn apply(&self, text: &str) -> String {
        masked(text, &self.matches(text))
    }

    /// The ranges of `text` some rule matches, sorted, overlaps merged.
    fn matches(&self, text: &str) -> Vec<(usize, usize)> {
        let mut found: Vec<(usize, usize)> = self
            .rules
            .iter()
            .flat_map(|r| r.find_iter(text).map(|m| (m.start(), m.end())))
            .filter(|(a, b)| a < b)
            .collect();
        found.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(found.len());
        for (a, b) in found {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        merged
    }
}

/// One direction of a channel going through the masking rules: what is
/// held back (see [`Masking`]).
#[derive(Default)]
struct MaskTail {
    held: String,
}

impl MaskTail {
    /// The settled text after `text` is added, masked.
    fn push(&mut self, m: &Masking, text: &str) -> String {
        self.held.push_str(text);
        let len = self.held.len();
        let line_start = self.held.rfind(['\n', '\r']).map_or(0, |i| i + 1);
        let mut cut = line_start.max(floor_char_boundary(
            &self.held,
            len.saturating_sub(MASK_WINDOW),
        ));
        let found = m.matches(&self.held);
        // A match across the cut is settled whole.
        if let Some(&(_, b)) = found.iter().find(|&&(a, b)| a < cut && b > cut) {
            cut = b;
        }
        if cut == 0 {
            return String::new();
        }
        let out = masked(&self.held[..cut], &found);
        self.held.drain(..cut);
        out
    }

    /// All that is held, masked: the channel has closed.
    fn finish(&mut self, m: &Masking) -> String {
        let held = std::mem::take(&mut self.held);
        masked(&held, &m.matches(&held))
    }
}

/// The largest char boundary of `s` at or before `i`.
fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// `text` with the parts of `ranges` (of a text `text` begins) that lie in
/// it replaced by one `*` per character.
fn masked(text: &str, ranges: &[(usize, usize)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for &(a, b) in ranges {
        if a >= text.len() {
            break;
        }
        let b = b.min(text.len());
        out.push_str(&text[at..a]);
        out.extend(std::iter::repeat_n('*', text[a..b].chars().count()));
        at = b;
    }
    out.push_str(&text[at..]);
    out
}

/// One connection's recording.
pub struct Recorder {
    session: String,
    recording: String,
    key: Zeroizing<[u8; 32]>,
    record_input: bool,
    start: Instant,
    settings: Arc<RecordingSettings>,
    channels: AtomicU32,
    state: Mutex<State>,
}

struct State {
    buf: Vec<u8>,
    /// When the first event of `buf` came.
    since: Option<Instant>,
    index: u64,
    prev: Digest,
    finished: bool,
}

impl Recorder {
    /// Begins the recording `grant` of session `session`, now.
    pub fn start(
        session: &str,
        grant: &RecordingGrant,
        settings: Arc<RecordingSettings>,
    ) -> Result<Arc<Recorder>, String> {
        let key = recording::parse_key(&grant.key).map_err(|e| e.to_string())?;
        let interval = settings.chunk_interval;
        let rec = Arc::new(Recorder {
            session: session.to_owned(),
            recording: grant.recording_id.clone(),
            key: Zeroizing::new(key),
            record_input: grant.record_input,
            start: Instant::now(),
            settings,
            channels: AtomicU32::new(0),
            state: Mutex::new(State {
                buf: Vec::new(),
                since: None,
                index: 0,
                prev: GENESIS,
                finished: false,
            }),
        });
        // Seals what gathered once it is `interval` old; stops with the
        // recording.
        let weak: Weak<Recorder> = Arc::downgrade(&rec);
        tokio::spawn(async move {
            let tick = (interval / 4).max(Duration::from_millis(50));
            loop {
                tokio::time::sleep(tick).await;
                let Some(rec) = weak.upgrade() else { return };
                let Ok(mut st) = rec.state.lock() else { return };
                if st.finished {
                    return;
                }
                if st.since.is_some_and(|s| s.elapsed() >= interval) {
                    rec.seal_locked(&mut st);
                }
            }
        });
        Ok(rec)
    }

    pub fn id(&self) -> &str {
        &self.recording
    }

    /// A number for a new channel of the connection.
    pub fn next_channel(&self) -> u32 {
        self.channels.fetch_add(1, Ordering::Relaxed)
    }

    /// Records one event on channel `ch`.
    pub fn event(&self, ch: u32, kind: EventKind) {
        if matches!(kind, EventKind::Input { .. }) && !self.record_input {
            return;
        }
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if st.finished {
            return;
        }
        // Taken under the lock, so times never go back in the recording.
        let t = (self.start.elapsed().as_micros() as f64) / 1e6;
        let Ok(mut line) = serde_json::to_vec(&Event { t, ch, kind }) else {
            return;
        };
        line.push(b'\n');
        if st.buf.is_empty() {
            st.since = Some(Instant::now());
        }
        st.buf.extend_from_slice(&line);
        if st.buf.len() >= self.settings.chunk_bytes {
            self.seal_locked(&mut st);
        }
    }

    /// Seals and spools what gathered.
    fn seal_locked(&self, st: &mut State) {
        if st.buf.is_empty() {
            return;
        }
        let plain = Zeroizing::new(std::mem::take(&mut st.buf));
        st.since = None;
        match recording::seal(
            &self.key,
            &self.session,
            &self.recording,
            st.index,
            &st.prev,
            &plain,
        ) {
            Ok((chunk, digest)) => {
                let item = SpoolItem::Chunk {
                    session: self.session.clone(),
                    recording: self.recording.clone(),
                    chunk,
                };
                if let Err(e) = self.settings.spool.put(item) {
                    warn!(session = %self.session, "recording chunk {} lost: {e}", st.index);
                }
                st.index += 1;
                st.prev = digest;
            }
            Err(e) => warn!(session = %self.session, "cannot seal a recording chunk: {e}"),
        }
    }

    /// Ends the recording: the last chunk, then the signed end. Events
    /// after this are not recorded.
    pub fn finish(&self) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if st.finished {
            return;
        }
        self.seal_locked(&mut st);
        st.finished = true;
        let end = recording::sign_end(
            self.settings.signer.as_ref(),
            &self.session,
            &self.recording,
            st.index,
            &st.prev,
        );
        let item = SpoolItem::End {
            session: self.session.clone(),
            recording: self.recording.clone(),
            end,
        };
        if let Err(e) = self.settings.spool.put(item) {
            warn!(session = %self.session, "the recording's end is lost: {e}");
        }
    }
}

/// One channel's view of the recording, shared by the bridge's two
/// directions.
pub struct ChannelTap {
    rec: Arc<Recorder>,
    ch: u32,
    inner: Mutex<Tap>,
}

#[derive(Default)]
struct Tap {
    input: Utf8Carry,
    output: Utf8Carry,
    input_mask: MaskTail,
    output_mask: MaskTail,
    command: Option<String>,
    sftp: Option<Sftp>,
}

impl ChannelTap {
    pub fn new(rec: Arc<Recorder>) -> ChannelTap {
        let ch = rec.next_channel();
        ChannelTap {
            rec,
            ch,
            inner: Mutex::default(),
        }
    }

    pub fn recorder(&self) -> &Arc<Recorder> {
        &self.rec
    }

    pub fn channel(&self) -> u32 {
        self.ch
    }

    fn emit(&self, kind: EventKind) {
        self.rec.event(self.ch, kind);
    }

    pub fn resize(&self, cols: u32, rows: u32) {
        self.emit(EventKind::Resize { cols, rows });
    }

    pub fn shell(&self) {
        self.emit(EventKind::Shell);
    }

    pub fn exec(&self, command: &[u8]) {
        let mut command = String::from_utf8_lossy(command).into_owned();
        if let Some(m) = &self.rec.settings.mask {
            command = m.apply(&command);
        }
        if let Ok(mut t) = self.inner.lock() {
            t.command = Some(command.clone());
        }
        self.emit(EventKind::Exec { command });
    }

    pub fn subsystem(&self, name: &str) {
        if name == "sftp" {
            if let Ok(mut t) = self.inner.lock() {
                t.sftp = Some(Sftp::default());
            }
        }
        self.emit(EventKind::Subsystem { name: name.into() });
    }

    /// Bytes the user sent.
    pub fn input(&self, data: &[u8]) {
        let Ok(mut t) = self.inner.lock() else { return };
        if let Some(sftp) = &mut t.sftp {
            for kind in sftp.client_sent(data) {
                self.emit(kind);
            }
            return;
        }
        if !self.rec.record_input {
            return;
        }
        let mut text = t.input.push(data);
        if let Some(m) = &self.rec.settings.mask {
            text = t.input_mask.push(m, &text);
        }
        drop(t);
        if !text.is_empty() {
            self.emit(EventKind::Input { data: text });
        }
    }

    /// Bytes the target sent (stdout or stderr).
    pub fn output(&self, data: &[u8]) {
        let Ok(mut t) = self.inner.lock() else { return };
        if let Some(sftp) = &mut t.sftp {
            sftp.server_sent(data);
            return;
        }
        let mut text = t.output.push(data);
        if let Some(m) = &self.rec.settings.mask {
            text = t.output_mask.push(m, &text);
        }
        drop(t);
        if !text.is_empty() {
            self.emit(EventKind::Output { data: text });
        }
    }

    pub fn exit(&self, status: u32) {
        let command = self.inner.lock().ok().and_then(|t| t.command.clone());
        self.emit(EventKind::Exit { status, command });
    }

    /// The channel closed: what is left of split characters, and the sftp
    /// files still open.
    pub fn close(&self) {
        let Ok(mut t) = self.inner.lock() else { return };
        let (mut i, mut o) = (t.input.finish(), t.output.finish());
        if let Some(m) = &self.rec.settings.mask {
            i = t.input_mask.push(m, &i) + &t.input_mask.finish(m);
            o = t.output_mask.push(m, &o) + &t.output_mask.finish(m);
        }
        let open = t.sftp.as_mut().map(Sftp::close_all).unwrap_or_default();
        drop(t);
        if !o.is_empty() {
            self.emit(EventKind::Output { data: o });
        }
        if !i.is_empty() && self.rec.record_input {
            self.emit(EventKind::Input { data: i });
        }
        for kind in open {
            self.emit(kind);
        }
    }
}

/// A passive reader of the SFTP packets passing through the channel, both
/// ways. A hand parser of the few packet types it needs: the `russh-sftp`
/// crate's types are made for being one end of the protocol (its decoder
/// wants whole packets it reads itself, and takes every type of the full
/// protocol), while here packets arrive split across SSH messages and all
/// but six kinds are skipped by their length alone.
#[derive(Default)]
struct Sftp {
    up: Vec<u8>,
    down: Vec<u8>,
    /// OPEN requests waiting for their handle: id → (path, op).
    opens: HashMap<u32, (String, SftpOp)>,
    /// Open handles: handle → (path, op, bytes moved).
    handles: HashMap<Vec<u8>, (String, SftpOp, u64)>,
    /// READ requests waiting for their data: id → handle.
    reads: HashMap<u32, Vec<u8>>,
    /// A packet was longer than any sane one: the stream is no longer read.
    lost: bool,
}

/// Longest packet followed (OpenSSH's own limit is 256 KiB).
const MAX_PACKET: usize = 1 << 20;

const FXP_OPEN: u8 = 3;
const FXP_CLOSE: u8 = 4;
const FXP_READ: u8 = 5;
const FXP_WRITE: u8 = 6;
const FXP_REMOVE: u8 = 13;
const FXP_MKDIR: u8 = 14;
const FXP_RENAME: u8 = 18;
const FXP_STATUS: u8 = 101;
const FXP_HANDLE: u8 = 102;
const FXP_DATA: u8 = 103;
/// SSH_FXF_WRITE | APPEND | CREAT | TRUNC.
const WRITING: u32 = 0x02 | 0x04 | 0x08 | 0x10;

/// Reads SSH wire fields from a packet body.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn u32(&mut self) -> Option<u32> {
        let (b, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_be_bytes(*b))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        if self.0.len() < n {
            return None;
        }
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(b)
    }

    fn text(&mut self) -> Option<String> {
        self.bytes()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }
}

/// The whole packets at the front of `buf`, taken out of it.
fn packets(buf: &mut Vec<u8>, lost: &mut bool) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    while buf.len() - at >= 4 {
        let len = u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
        if len > MAX_PACKET {
            *lost = true;
            buf.clear();
            return out;
        }
        if buf.len() - at - 4 < len {
            break;
        }
        out.push(buf[at + 4..at + 4 + len].to_vec());
        at += 4 + len;
    }
    buf.drain(..at);
    out
}

impl Sftp {
    fn client_sent(&mut self, data: &[u8]) -> Vec<EventKind> {
        if self.lost {
            return Vec::new();
        }
        self.up.extend_from_slice(data);
        let mut events = Vec::new();
        for p in packets(&mut self.up, &mut self.lost) {
            let Some((&kind, body)) = p.split_first() else {
                continue;
            };
            let mut f = Fields(body);
            let Some(id) = f.u32() else { continue };
            match kind {
                FXP_OPEN => {
                    if let (Some(path), Some(flags)) = (f.text(), f.u32()) {
                        let op = if flags & WRITING != 0 {
                            SftpOp::Write
                        } else {
                            SftpOp::Read
                        };
                        self.opens.insert(id, (path, op));
                    }
                }
                FXP_READ => {
                    if let Some(h) = f.bytes() {
                        self.reads.insert(id, h.to_vec());
                    }
                }
                FXP_WRITE => {
                    if let Some(h) = f.bytes() {
                        let h = h.to_vec();
                        let _offset = (f.u32(), f.u32());
                        if let (Some(data), Some(open)) = (f.bytes(), self.handles.get_mut(&h)) {
                            open.2 += data.len() as u64;
                        }
                    }
                }
                FXP_CLOSE => {
                    if let Some((path, op, bytes)) = f.bytes().and_then(|h| self.handles.remove(h))
                    {
                        events.push(EventKind::Sftp {
                            op,
                            path,
                            to: None,
                            bytes: Some(bytes),
                        });
                    }
                }
                FXP_REMOVE | FXP_MKDIR => {
                    if let Some(path) = f.text() {
                        let op = if kind == FXP_REMOVE {
                            SftpOp::Remove
                        } else {
                            SftpOp::Mkdir
                        };
                        events.push(EventKind::Sftp {
                            op,
                            path,
                            to: None,
                            bytes: None,
                        });
                    }
                }
                FXP_RENAME => {
                    if let (Some(path), Some(to)) = (f.text(), f.text()) {
                        events.push(EventKind::Sftp {
                            op: SftpOp::Rename,
                            path,
                            to: Some(to),
                            bytes: None,
                        });
                    }
                }
                _ => {}
            }
        }
        events
    }

    fn server_sent(&mut self, data: &[u8]) {
        if self.lost {
            return;
        }
        self.down.extend_from_slice(data);
        for p in packets(&mut self.down, &mut self.lost) {
            let Some((&kind, body)) = p.split_first() else {
                continue;
            };
            let mut f = Fields(body);
            let Some(id) = f.u32() else { continue };
            match kind {
                FXP_HANDLE => {
                    if let (Some(open), Some(h)) = (self.opens.remove(&id), f.bytes()) {
                        self.handles.insert(h.to_vec(), (open.0, open.1, 0));
                    }
                }
                FXP_DATA => {
                    if let (Some(h), Some(data)) = (self.reads.remove(&id), f.bytes()) {
                        if let Some(open) = self.handles.get_mut(&h) {
                            open.2 += data.len() as u64;
                        }
                    }
                }
                FXP_STATUS => {
                    self.opens.remove(&id);
                    self.reads.remove(&id);
                }
                _ => {}
            }
        }
    }

    /// The files still open when the channel closed.
    fn close_all(&mut self) -> Vec<EventKind> {
        self.handles
            .drain()
            .map(|(_, (path, op, bytes))| EventKind::Sftp {
                op,
                path,
                to: None,
                bytes: Some(bytes),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(kind: u8, fields: &[&[u8]]) -> Vec<u8> {
        let mut body = vec![kind];
        for f in fields {
            body.extend_from_slice(f);
        }
        let mut p = (body.len() as u32).to_be_bytes().to_vec();
        p.extend(body);
        p
    }

    fn s(b: &[u8]) -> Vec<u8> {
        let mut v = (b.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(b);
        v
    }

    /// Records through a tap into a spool in a fresh folder, and reads the
    /// spool back as the server would: (verdict, events).
    async fn record(
        record_input: bool,
        chunk_bytes: usize,
        act: impl FnOnce(&ChannelTap),
    ) -> (recording::Verdict, Vec<Event>) {
        record_masked(record_input, chunk_bytes, None, act).await
    }

    async fn record_masked(
        record_input: bool,
        chunk_bytes: usize,
        mask: Option<Masking>,
        act: impl FnOnce(&ChannelTap),
    ) -> (recording::Verdict, Vec<Event>) {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(&dir.path().join("spool")).unwrap());
        let signer = recording::new_signing_key();
        let public = signer.verifying_key();
        let settings = Arc::new(RecordingSettings {
            spool: spool.clone(),
            signer: Some(signer),
            chunk_bytes,
            chunk_interval: Duration::from_secs(60),
            mask,
        });
        let key = recording::new_key();
        let grant = RecordingGrant {
            recording_id: "r1".into(),
            key: key.clone(),
            record_input,
        };
        let rec = Recorder::start("s1", &grant, settings).unwrap();
        let tap = ChannelTap::new(rec.clone());
        act(&tap);
        tap.close();
        rec.finish();
        spool.flush();
        let mut chunks = Vec::new();
        let mut end = None;
        let mut names: Vec<_> = std::fs::read_dir(dir.path().join("spool"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
            match serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap() {
                SpoolItem::Chunk { chunk, .. } => chunks.push((chunk.index, chunk)),
                SpoolItem::Chunks { chunks: cs, .. } => {
                    chunks.extend(cs.into_iter().map(|c| (c.index, c)))
                }
                SpoolItem::End { end: e, .. } => end = Some(e),
            }
        }
        let key = recording::parse_key(&key).unwrap();
        let (verdict, plain) = recording::check(
            &key,
            "s1",
            "r1",
            &chunks,
            end.as_ref(),
            Some(&public),
            false,
        );
        (
            verdict,
            plain.iter().flat_map(|p| recording::events_of(p)).collect(),
        )
    }

    #[tokio::test]
    async fn a_channel_is_recorded_in_signed_chunks_and_input_only_when_asked() {
        let session = |tap: &ChannelTap| {
            tap.resize(80, 24);
            tap.shell();
            tap.input(b"echo \xe2\x9c");
            tap.input(b"\x93\n");
            for _ in 0..50 {
                tap.output("✓ some output\r\n".as_bytes());
            }
            tap.exit(0);
        };
        // Small chunks: the events span several, chained and signed.
        let (verdict, events) = record(true, 256, session).await;
        let recording::Verdict::Whole { chunks } = verdict else {
            panic!("{verdict:?}");
        };
        assert!(chunks > 3, "{chunks}");
        let input: String = events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Input { data } => Some(data.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(input, "echo ✓\n");
        assert!(events.windows(2).all(|w| w[0].t <= w[1].t));
        assert!(matches!(
            events.last().map(|e| &e.kind),
            Some(EventKind::Exit { status: 0, .. })
        ));

        // An account whose input is not recorded.
        let (verdict, events) = record(false, 64 * 1024, session).await;
        assert_eq!(verdict, recording::Verdict::Whole { chunks: 1 });
        assert!(!events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Input { .. })));
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e.kind, EventKind::Output { .. }))
                .count(),
            50
        );
    }

    #[test]
    fn an_upload_split_across_messages_is_named_with_its_size() {
        let mut sftp = Sftp::default();
        let id = 7u32.to_be_bytes();
        let mut up = packet(
            FXP_OPEN,
            &[
                &id,
                &s(b"/tmp/up.bin"),
                &0x1au32.to_be_bytes(),
                &0u32.to_be_bytes(),
            ],
        );
        let write = packet(
            FXP_WRITE,
            &[
                &8u32.to_be_bytes(),
                &s(b"H1"),
                &0u64.to_be_bytes(),
                &s(&[0u8; 1000]),
            ],
        );
        // Each byte its own message: nothing is lost at any split.
        for b in up.drain(..) {
            assert!(sftp.client_sent(&[b]).is_empty());
        }
        sftp.server_sent(&packet(FXP_HANDLE, &[&id, &s(b"H1")]));
        for part in write.chunks(333) {
            assert!(sftp.client_sent(part).is_empty());
        }
        let closed = sftp.client_sent(&packet(FXP_CLOSE, &[&9u32.to_be_bytes(), &s(b"H1")]));
        assert_eq!(
            closed,
            vec![EventKind::Sftp {
                op: SftpOp::Write,
                path: "/tmp/up.bin".into(),
                to: None,
                bytes: Some(1000)
            }]
        );
        let renamed = sftp.client_sent(&packet(
            FXP_RENAME,
            &[&10u32.to_be_bytes(), &s(b"/a"), &s(b"/b")],
        ));
        assert!(
            matches!(&renamed[..], [EventKind::Sftp { op: SftpOp::Rename, to: Some(t), .. }] if t == "/b")
        );
    }

    fn rules(patterns: &[&str]) -> Masking {
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        Masking::new(&patterns).unwrap().unwrap()
    }

    #[test]
    fn a_secret_split_across_writes_is_masked_and_other_text_passes_whole() {
        let m = rules(&["ghp_[A-Za-z0-9]{36}", "(?i)password: *\\S+"]);
        let token = format!("ghp_{}", "a1B2".repeat(9));
        let mut tail = MaskTail::default();
        let mut out = String::new();
        // The token split in three writes, the line ended by a fourth.
        out += &tail.push(&m, "line one ✓\r\nyour token: ");
        assert_eq!(out, "line one ✓\r\n", "the unfinished line is held");
        out += &tail.push(&m, &token[..10]);
        out += &tail.push(&m, &token[10..30]);
        out += &tail.push(&m, &format!("{} ok\r\nPassword: hunter2", &token[30..]));
        out += &tail.finish(&m);
        assert!(!out.contains("a1B2"), "{out}");
        assert!(!out.contains("hunter2"), "{out}");
        assert_eq!(
            out,
            format!(
                "line one ✓\r\nyour token: {} ok\r\n{}",
                "*".repeat(40),
                "*".repeat(17)
            )
        );
        // Without rules nothing is held or changed.
        assert!(Masking::new(&[]).unwrap().is_none());
        assert!(Masking::new(&["(".to_string()]).is_err());
        // A line longer than the window is not held forever.
        let mut tail = MaskTail::default();
        let long = "x".repeat(MASK_WINDOW + 100);
        assert_eq!(tail.push(&m, &long).len(), 100);
    }

    #[tokio::test]
    async fn masked_text_is_never_sealed_even_across_chunks_and_packets() {
        let token = format!("ghp_{}", "Zz09".repeat(9));
        let t = token.clone();
        // Small chunks: the output before, with and after the token spans
        // several.
        let session = move |tap: &ChannelTap| {
            tap.shell();
            for i in 0..20 {
                tap.output(format!("some output line {i}\r\n").as_bytes());
            }
            tap.output(format!("export GH={}", &t[..7]).as_bytes());
            tap.output(&t.as_bytes()[7..20]);
            tap.output(format!("{}\r\n$ ", &t[20..]).as_bytes());
            // Typed one key a packet, as a terminal sends it.
            tap.output(b"Password: ");
            for b in b"s3cr3t-pw\r" {
                tap.input(&[*b]);
            }
            tap.output(b"\r\nwelcome\r\n");
            tap.exit(0);
        };
        let mask = rules(&["ghp_[A-Za-z0-9]{36}", "s3cr3t-\\S+"]);
        let (verdict, events) = record_masked(true, 64, Some(mask), session).await;
        let recording::Verdict::Whole { chunks } = verdict else {
            panic!("{verdict:?}");
        };
        assert!(chunks > 3, "{chunks}");
        let text: String = events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Output { data } | EventKind::Input { data } => Some(data.as_str()),
                _ => None,
            })
            .collect();
        assert!(!text.contains("Zz09"), "{text}");
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(
            text.contains(&format!("export GH={}\r\n", "*".repeat(40))),
            "{text}"
        );
        assert!(text.contains("some output line 19\r\n"), "{text}");
        assert!(text.contains("welcome"), "{text}");
        assert!(text.contains(&"*".repeat(9)), "{text}");
    }
}
