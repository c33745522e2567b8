//! One user channel bridged to one target channel.
//!
//! Each direction is a loop reading the next message of one side and
//! writing it to the other. A write waits for the receiving side's SSH
//! window, and meanwhile nothing more is read from that direction: russh
//! holds at most its bounded channel buffer of messages per channel and
//! then stops reading the socket, so a fast producer is slowed to the pace
//! of the slow consumer instead of filling the gateway's memory. The two
//! directions run concurrently so one stalled direction never stalls the
//! other (an sftp server writing replies while the client still uploads).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use russh::{client, server, Channel, ChannelMsg};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::recording::ChannelTap;

/// When data last went through any channel of a connection, for the idle
/// timeout.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    pub fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// The instant of the last activity.
    pub fn last(&self) -> Instant {
        self.start + std::time::Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

/// What a channel's start request asks the target to run.
enum Start {
    Shell,
    Exec(Vec<u8>),
    Subsystem(String),
}

/// A request the user's client made on the channel, waiting for its
/// answer.
enum Pending {
    /// Forwarded to the target wanting its reply. The target answers a
    /// channel's requests in the order they were sent (RFC 4254 5.4), so
    /// its replies are matched to the queue. For a start request: what it
    /// starts, and who waits to learn whether the target took it.
    Forwarded(Option<(Start, oneshot::Sender<bool>)>),
    /// Answered by the gateway itself, once every request before it is.
    Local(bool),
}

/// The answers to a channel's requests, in the order the requests came.
///
/// russh keeps one want-reply flag per channel, set by each request as it
/// arrives, and sends a reply only while it is set. So a reply is sent
/// from the connection's handler, while it handles the very request the
/// reply is for (see `accept`); the handler takes the answers from here,
/// one per request, and the connection reads nothing more of the user's
/// until it has one. The bridge puts them here as the target answers, or
/// as it answers itself.
pub type Answers = mpsc::UnboundedReceiver<bool>;

/// How long a request waits for the target's answer before the channel is
/// given up: the connection's handler waits as long for it.
pub const REPLY_WAIT: Duration = Duration::from_secs(30);

/// The bridge's side of [`Answers`].
struct Replies {
    queue: Mutex<VecDeque<Pending>>,
    answers: mpsc::UnboundedSender<bool>,
}

impl Replies {
    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Pending>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request forwarded to the target; with `start`, a start request.
    fn forwarded(&self, start: Option<(Start, oneshot::Sender<bool>)>) {
        self.queue().push_back(Pending::Forwarded(start));
    }

    /// A request the gateway answers itself, after those before it.
    fn local(&self, ok: bool) {
        let mut queue = self.queue();
        if queue.is_empty() {
            // A handler that went away has nothing to answer.
            let _ = self.answers.send(ok);
        } else {
            queue.push_back(Pending::Local(ok));
        }
    }

    /// The target answered its oldest request: passed on, with the
    /// gateway's own answers queued behind it. The start request it
    /// answered, if it was one.
    fn target_answered(&self, ok: bool) -> Option<(Start, oneshot::Sender<bool>)> {
        let mut queue = self.queue();
        // A reply to nothing asked (a confused target) is dropped.
        let Some(Pending::Forwarded(start)) = queue.pop_front() else {
            return None;
        };
        let _ = self.answers.send(ok);
        while let Some(Pending::Local(ok)) = queue.front() {
            let _ = self.answers.send(*ok);
            queue.pop_front();
        }
        start
    }
}

/// Bridges until either side closes the channel or goes away.
///
/// The recording learns what a channel runs (a shell, a command, sftp)
/// only from the target's acceptance of the request, never from the
/// request alone: a request the target refuses (a second start request on
/// a running channel, a subsystem it has not got) must not change how the
/// rest of the channel is read, or a client could send `subsystem sftp`
/// after `exec sh` and have its shell read as sftp packets, that is not
/// recorded at all. And nothing more of the user's is read while a start
/// request is unanswered, so every byte is read in the mode of what the
/// target runs when it arrives. Once the target runs something, later
/// start requests, terminals and variables are refused without asking it
/// (its sshd refuses a second start request too), so that no answer ever
/// waits behind the program's output.
///
/// Returns at once the channel's [`Answers`], for the connection's handler;
/// the bridge runs in `bridging`.
pub fn start(
    user: Channel<server::Msg>,
    target: Channel<client::Msg>,
    user_handle: server::Handle,
    activity: Arc<Activity>,
    tap: Option<ChannelTap>,
) -> (
    Answers,
    impl std::future::Future<Output = Option<ChannelTap>>,
) {
    let (answers, taken) = mpsc::unbounded_channel();
    let replies = Replies {
        queue: Mutex::new(VecDeque::new()),
        answers,
    };
    let bridging = async move {
        run(user, target, user_handle, activity, tap.as_ref(), replies).await;
        tap
    };
    (taken, bridging)
}

async fn run(
    user: Channel<server::Msg>,
    target: Channel<client::Msg>,
    user_handle: server::Handle,
    activity: Arc<Activity>,
    tap: Option<&ChannelTap>,
    replies: Replies,
) {
    let user_id = user.id();
    let (mut user_rx, user_tx) = user.split();
    let (mut target_rx, target_tx) = target.split();
    let replies = &replies;
    // A start request: queued, then sent, then waited for.
    let start = |what: Start| {
        let (tx, rx) = oneshot::channel();
        replies.forwarded(Some((what, tx)));
        rx
    };
    // The target's answer to a start request, if it came in time; the
    // channel is closed if not.
    let answered = async |rx: oneshot::Receiver<bool>| -> Option<bool> {
        match tokio::time::timeout(REPLY_WAIT, rx).await {
            Ok(Ok(ok)) => Some(ok),
            Ok(Err(_)) => None,
            Err(_) => {
                debug!("the target did not answer a start request");
                None
            }
        }
    };
    // Whether the target runs something on the channel.
    let mut started = false;

    let upstream = async {
        while let Some(msg) = user_rx.wait().await {
            // A start request's, sent: the target's answer to wait for.
            let mut awaiting = None;
            // Every request that may want a reply is forwarded wanting one
            // (or answered here), whatever the user's client asked: the
            // connection's handler sends the answer only if it was wanted.
            let sent = match msg {
                ChannelMsg::Data { data } => {
                    activity.touch();
                    if let Some(tap) = tap {
                        tap.input(&data).await;
                    }
                    target_tx.data_bytes(data).await
                }
                ChannelMsg::ExtendedData { data, ext } => {
                    activity.touch();
                    target_tx.extended_data_bytes(ext, data).await
                }
                ChannelMsg::Eof => target_tx.eof().await,
                ChannelMsg::Close => {
                    let _ = target_tx.close().await;
                    return;
                }
                // Once something runs: refused here (see above).
                ChannelMsg::RequestPty { .. }
                | ChannelMsg::SetEnv { .. }
                | ChannelMsg::RequestShell { .. }
                | ChannelMsg::Exec { .. }
                | ChannelMsg::RequestSubsystem { .. }
                    if started =>
                {
                    replies.local(false);
                    Ok(())
                }
                ChannelMsg::RequestPty {
                    term,
                    col_width,
                    row_height,
                    pix_width,
                    pix_height,
                    terminal_modes,
                    ..
                } => {
                    if let Some(tap) = tap {
                        tap.resize(col_width, row_height);
                    }
                    replies.forwarded(None);
                    target_tx
                        .request_pty(
                            true,
                            &term,
                            col_width,
                            row_height,
                            pix_width,
                            pix_height,
                            &terminal_modes,
                        )
                        .await
                }
                ChannelMsg::RequestShell { .. } => {
                    awaiting = Some(start(Start::Shell));
                    target_tx.request_shell(true).await
                }
                ChannelMsg::Exec { command, .. } => {
                    awaiting = Some(start(Start::Exec(command.clone())));
                    target_tx.exec(true, command).await
                }
                ChannelMsg::RequestSubsystem { name, .. } => {
                    awaiting = Some(start(Start::Subsystem(name.clone())));
                    target_tx.request_subsystem(true, name).await
                }
                ChannelMsg::SetEnv {
                    variable_name,
                    variable_value,
                    ..
                } => {
                    replies.forwarded(None);
                    target_tx.set_env(true, variable_name, variable_value).await
                }
                ChannelMsg::WindowChange {
                    col_width,
                    row_height,
                    pix_width,
                    pix_height,
                } => {
                    if let Some(tap) = tap {
                        tap.resize(col_width, row_height);
                    }
                    target_tx
                        .window_change(col_width, row_height, pix_width, pix_height)
                        .await
                }
                ChannelMsg::Signal { signal } => target_tx.signal(signal).await,
                // X11 and agent forwarding would hand the target a way back
                // into the user's machine: not bridged (russh answers the
                // agent request with failure itself).
                ChannelMsg::RequestX11 { .. } => {
                    replies.local(false);
                    Ok(())
                }
                _ => Ok(()),
            };
            if let Err(e) = sent {
                debug!(error = %e, "target channel gone");
                return;
            }
            if let Some(rx) = awaiting {
                match answered(rx).await {
                    Some(ok) => started = ok,
                    None => break,
                }
            }
        }
        let _ = target_tx.close().await;
    };

    let downstream = async {
        while let Some(msg) = target_rx.wait().await {
            let sent = match msg {
                ChannelMsg::Data { data } => {
                    activity.touch();
                    if let Some(tap) = tap {
                        tap.output(&data).await;
                    }
                    user_tx.data_bytes(data).await.is_ok()
                }
                ChannelMsg::ExtendedData { data, ext } => {
                    activity.touch();
                    if let Some(tap) = tap {
                        tap.output(&data).await;
                    }
                    user_tx.extended_data_bytes(ext, data).await.is_ok()
                }
                ChannelMsg::Eof => user_tx.eof().await.is_ok(),
                ChannelMsg::Close => {
                    let _ = user_tx.close().await;
                    return;
                }
                ChannelMsg::ExitStatus { exit_status } => {
                    if let Some(tap) = tap {
                        tap.exit(exit_status);
                    }
                    user_tx.exit_status(exit_status).await.is_ok()
                }
                ChannelMsg::ExitSignal {
                    signal_name,
                    core_dumped,
                    error_message,
                    lang_tag,
                } => user_handle
                    .exit_signal_request(user_id, signal_name, core_dumped, error_message, lang_tag)
                    .await
                    .is_ok(),
                // The target's pty says whether the client may do ^S/^Q
                // flow control itself (RFC 4254 6.8).
                ChannelMsg::XonXoff { client_can_do } => user_handle
                    .xon_xoff_request(user_id, client_can_do)
                    .await
                    .is_ok(),
                ChannelMsg::Success => {
                    if let Some((what, waiting)) = replies.target_answered(true) {
                        if let Some(tap) = tap {
                            match what {
                                Start::Shell => tap.shell(),
                                Start::Exec(command) => tap.exec(&command),
                                Start::Subsystem(name) => tap.subsystem(&name),
                            }
                        }
                        let _ = waiting.send(true);
                    }
                    true
                }
                // A refused start request changes nothing of the recording.
                ChannelMsg::Failure => {
                    if let Some((_, waiting)) = replies.target_answered(false) {
                        let _ = waiting.send(false);
                    }
                    true
                }
                _ => true,
            };
            if !sent {
                debug!("user channel gone");
                return;
            }
        }
        let _ = user_tx.close().await;
    };

    // Either side closing ends the bridge; the other direction's pending
    // messages are then of no use to anyone.
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
    }
}
