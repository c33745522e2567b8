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
use tokio::sync::oneshot;
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

/// A request forwarded wanting the target's reply. The target answers a
/// channel's requests in the order they were sent (RFC 4254 5.4), so the
/// replies are matched to a queue of these.
struct Pending {
    /// For a start request: what it starts, and who waits for the answer
    /// (whether the target took it).
    start: Option<(Start, oneshot::Sender<bool>)>,
}

/// How long the user's side waits for the target to answer a start
/// request before the channel is closed.
const START_REPLY: Duration = Duration::from_secs(30);

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
/// target runs when it arrives.
pub async fn run(
    user: Channel<server::Msg>,
    target: Channel<client::Msg>,
    user_handle: server::Handle,
    activity: Arc<Activity>,
    tap: Option<&ChannelTap>,
) {
    let user_id = user.id();
    let (mut user_rx, user_tx) = user.split();
    let (mut target_rx, target_tx) = target.split();
    let pending: Mutex<VecDeque<Pending>> = Mutex::new(VecDeque::new());
    let expect = |start: Option<(Start, oneshot::Sender<bool>)>| {
        pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(Pending { start });
    };
    // A start request: queued, then sent, then waited for.
    let start = |what: Start| {
        let (tx, rx) = oneshot::channel();
        expect(Some((what, tx)));
        rx
    };
    // Whether the target answered (either way) in time; the channel is
    // closed if not.
    let answered = async |rx: oneshot::Receiver<bool>| -> bool {
        match tokio::time::timeout(START_REPLY, rx).await {
            Ok(Ok(_)) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                debug!("the target did not answer a start request");
                false
            }
        }
    };

    let upstream = async {
        while let Some(msg) = user_rx.wait().await {
            // Requests the user's ssh sends with want_reply=1 (pty-req,
            // shell, exec, subsystem) are forwarded wanting a reply, and the
            // target's replies come back in the same order; `env` is sent
            // without one by OpenSSH, so its reply must not be forwarded.
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
                    expect(None);
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
                    let rx = start(Start::Shell);
                    match target_tx.request_shell(true).await {
                        Ok(()) if answered(rx).await => Ok(()),
                        Ok(()) => break,
                        Err(e) => Err(e),
                    }
                }
                ChannelMsg::Exec { command, .. } => {
                    let rx = start(Start::Exec(command.clone()));
                    match target_tx.exec(true, command).await {
                        Ok(()) if answered(rx).await => Ok(()),
                        Ok(()) => break,
                        Err(e) => Err(e),
                    }
                }
                ChannelMsg::RequestSubsystem { name, .. } => {
                    let rx = start(Start::Subsystem(name.clone()));
                    match target_tx.request_subsystem(true, name).await {
                        Ok(()) if answered(rx).await => Ok(()),
                        Ok(()) => break,
                        Err(e) => Err(e),
                    }
                }
                ChannelMsg::SetEnv {
                    variable_name,
                    variable_value,
                    ..
                } => {
                    target_tx
                        .set_env(false, variable_name, variable_value)
                        .await
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
                    let _ = user_handle.channel_failure(user_id).await;
                    Ok(())
                }
                _ => Ok(()),
            };
            if let Err(e) = sent {
                debug!(error = %e, "target channel gone");
                return;
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
                    if let Some((what, waiting)) = next_start(&pending) {
                        if let Some(tap) = tap {
                            match what {
                                Start::Shell => tap.shell(),
                                Start::Exec(command) => tap.exec(&command),
                                Start::Subsystem(name) => tap.subsystem(&name),
                            }
                        }
                        let _ = waiting.send(true);
                    }
                    user_handle.channel_success(user_id).await.is_ok()
                }
                // A refused start request changes nothing of the recording.
                ChannelMsg::Failure => {
                    if let Some((_, waiting)) = next_start(&pending) {
                        let _ = waiting.send(false);
                    }
                    user_handle.channel_failure(user_id).await.is_ok()
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

/// The next request waiting for a reply, if it is a start request.
fn next_start(pending: &Mutex<VecDeque<Pending>>) -> Option<(Start, oneshot::Sender<bool>)> {
    pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pop_front()
        .and_then(|p| p.start)
}
