//! `gatepass-hostd run`: long-polls the server's desired state and applies
//! it; removes expired dynamic keys on a local timer even while the server
//! is unreachable; checks its files every `sync.recheck_seconds` and writes
//! back what someone else changed, telling the server (drift); renews host
//! certificates at 2/3 of their life; tells systemd it is ready and alive.
//!
//! Network calls run in their own tasks and report over a channel, so the
//! main loop (which owns the files and pings the watchdog) never waits on
//! the server.

use std::path::PathBuf;
use std::time::Duration;

use gatepass_api::hosts::{Ack, HostState};
use gatepass_api::{Client, Settings};
use tokio::sync::{mpsc, oneshot};

use crate::clock;
use crate::config::Config;
use crate::host::{Host, NewCert, Outcome};
use crate::hostcerts::{self, HostKey};
use crate::remote;
use crate::state::LocalState;
use crate::Error;

/// A client for the server with the host's token and the pinned CA.
pub fn client(cfg: &Config, token: Option<String>, timeout: Duration) -> Result<Client, Error> {
    Ok(Client::new(&Settings {
        addr: cfg.server.clone(),
        token,
        ca_cert: Some(cfg.ca_cert.clone()),
        timeout: Some(timeout),
    })?)
}

/// Reads the host token (first line of the token file).
pub fn read_token(cfg: &Config) -> Result<String, Error> {
    let text = std::fs::read_to_string(&cfg.token_file).map_err(|e| {
        Error::Other(format!(
            "cannot read the host token {}: {e}",
            cfg.token_file.display()
        ))
    })?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.is_empty() {
        return Err(Error::Other(format!(
            "{} is empty",
            cfg.token_file.display()
        )));
    }
    Ok(token)
}

/// Records a convergence in the local state.
pub fn record(
    local: &mut LocalState,
    state: &HostState,
    out: &Outcome,
    now: i64,
    from_server: bool,
) {
    local.index = state.index;
    local.desired = Some(state.clone());
    local.last_apply = Some(now);
    if from_server {
        local.last_sync = Some(now);
    }
    local.last_error = None;
    local.installed = out.rendered.installed.clone();
    local.rejected = out.rendered.rejected.clone();
    if out.placement.is_some() {
        local.placement = out.placement;
    }
    local.notes = out.notes.clone();
    local.host_certs = out.host_certs.clone();
    local.time_form = out.rendered.form;
    local.own_digest = out.rendered.own_digest.clone();
}

/// What the journal has been told is left out, so that an entry is said
/// once when it appears and once when it goes, not at every check (every
/// `sync.recheck_seconds`) while it stays.
#[derive(Debug, Default)]
pub struct LeftOut(Vec<String>);

impl LeftOut {
    /// Takes the entries left out now; returns those new since the last
    /// call and those no longer left out.
    pub fn update(&mut self, now: &[String]) -> (Vec<String>, Vec<String>) {
        let new = now
            .iter()
            .filter(|r| !self.0.contains(r))
            .cloned()
            .collect();
        let gone = self
            .0
            .iter()
            .filter(|r| !now.contains(r))
            .cloned()
            .collect();
        self.0 = now.to_vec();
        (new, gone)
    }
}

/// Logs what a convergence did; entries left out are said as they
/// appear and go (see [`LeftOut`]).
pub fn log_outcome(out: &Outcome, told: &mut LeftOut) {
    for c in &out.changes {
        let what = if c.new.is_some() { "wrote" } else { "removed" };
        tracing::info!(path = %c.path.display(), "{what}");
    }
    let (new, gone) = told.update(&out.rendered.rejected);
    for r in &new {
        tracing::warn!("left out: {r}");
    }
    for r in &gone {
        tracing::info!("no longer left out: {r}");
    }
    // Notes repeat on every pass; say them when the config is written.
    if out.config_changed {
        for n in &out.notes {
            tracing::warn!("sshd_config: {n}");
        }
    }
    if let Some(r) = &out.reloaded {
        tracing::info!(?r, "reloaded sshd");
    }
}

/// Which host keys need a certificate now, and when the next one will.
fn renewal(keys: &[HostKey], now: i64) -> (Vec<HostKey>, Option<i64>) {
    let mut due = Vec::new();
    let mut next: Option<i64> = None;
    for k in keys {
        match hostcerts::installed(k) {
            Some(c) if now < c.renew_at() => {
                next = Some(next.map_or(c.renew_at(), |n| n.min(c.renew_at())));
            }
            _ => due.push(k.clone()),
        }
    }
    (due, next)
}

/// Asks the server to sign each key; a key it refuses does not keep the
/// others from getting theirs. Returns the certificates and the failures.
pub async fn sign_all(client: &Client, keys: &[HostKey]) -> (Vec<NewCert>, Vec<String>) {
    let mut out = Vec::new();
    let mut failed = Vec::new();
    for k in keys {
        match remote::sign_host_key(client, &k.public_line).await {
            Ok(signed) => out.push(NewCert {
                key: k.clone(),
                text: signed.signed_key,
            }),
            Err(e) => failed.push(format!("host certificate for {}: {e}", k.private.display())),
        }
    }
    (out, failed)
}

/// The files changed on disk by someone else since the last apply, by
/// comparing them with what that apply wrote (in the time form it wrote:
/// after an sshd upgrade, or a hostd upgrade on an sshd before 9.1, the
/// next apply rewrites the keys' times, and that is no repair); none when
/// nothing was applied yet (the first apply is not a repair).
fn drift_before(host: &Host, local: &LocalState) -> Vec<PathBuf> {
    let (Some(applied), Some(at)) = (&local.desired, local.last_apply) else {
        return Vec::new();
    };
    host.drifted(applied, at, local.time_form, local.own_digest.as_deref())
        .unwrap_or_else(|e| {
            // The apply that follows reports the same failure, if it lasts.
            tracing::warn!("cannot check the files for drift: {e}");
            Vec::new()
        })
}

/// Of the files an apply wrote, those that had drifted: what it repaired.
fn repaired(drifted: &[PathBuf], out: &Outcome) -> Vec<String> {
    let mut paths: Vec<String> = out
        .changes
        .iter()
        .filter(|c| drifted.contains(&c.path))
        .map(|c| c.path.display().to_string())
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

/// Why the saved desired state must not be applied again at start: the
/// managed files were last written for another state, so the saved one is
/// older than they are (saving the newer one failed, or its apply failed
/// half way) and applying it would put back, say, a KRL without the latest
/// revocations. The files stay as they are until the server answers;
/// sshd drops dynamic keys at their `expiry-time` meanwhile.
fn stale_saved_state(host: &Host, local: &LocalState) -> Option<String> {
    let saved = local.desired.as_ref()?.index;
    match host.files_index() {
        Some(files) if files != saved => Some(format!(
            "the saved state ({saved}) is not the one gatepass's files were last written for \
             ({files}): they stay as they are until the server answers"
        )),
        _ => None,
    }
}

/// Seconds between two rounds of host-key signing, at least.
const MIN_SIGNING_INTERVAL: i64 = 60;

enum Event {
    /// A new state from the server, and where to say, once it is applied,
    /// which index that was.
    State(HostState, oneshot::Sender<Applied>),
    PollFailed(String),
    Signed(Vec<NewCert>, Vec<String>),
}

/// A state applied, as the main loop tells the poller.
struct Applied {
    index: u64,
    /// Acknowledged on its own (`hosts/self/ack`), having more to say
    /// than the index; otherwise the next poll acknowledges it.
    sent_apart: bool,
}

/// How long the poller waits for a new state to be applied before it
/// polls again without acknowledging it.
const APPLY_WAIT: Duration = Duration::from_secs(30);

/// Long-polls the server for the desired state. After a new state it waits
/// for it to be applied, and the next poll acknowledges it (`applied`):
/// one request per change rather than a poll and an acknowledgement, which
/// for a fleet is half the requests (and audit lines) a change costs the
/// servers. An acknowledgement with more to say than the index (dynamic
/// keys installed, files repaired) is sent on its own (see [`send_ack`]).
///
/// The poll after a failed one acknowledges the last state applied again:
/// a server keeps a poll's acknowledgement in memory for up to a second
/// before it writes it, and the poll that was waiting on a server that
/// stopped abruptly fails, so what that server lost is said again.
async fn poller(client: Client, tx: mpsc::Sender<Event>, wait: u64, max_backoff: u64) {
    let mut index: Option<u64> = None;
    // What the next poll acknowledges, and the last state applied.
    let mut applied: Option<u64> = None;
    let mut last_applied: Option<u64> = None;
    let mut backoff = 1u64;
    loop {
        let started = std::time::Instant::now();
        let res = match index {
            None => remote::state(&client, 0, None, applied).await,
            Some(i) => remote::state(&client, i, Some(wait), applied).await,
        };
        match res {
            Ok(s) => {
                backoff = 1;
                // The server has it (a failed poll keeps it for the next).
                applied = None;
                let changed = index != Some(s.index);
                index = Some(s.index);
                if changed {
                    let (done, was_applied) = oneshot::channel();
                    if tx.send(Event::State(s, done)).await.is_err() {
                        return;
                    }
                    let done = tokio::time::timeout(APPLY_WAIT, was_applied)
                        .await
                        .ok()
                        .and_then(Result::ok);
                    if let Some(done) = done {
                        last_applied = Some(done.index);
                        applied = (!done.sent_apart).then_some(done.index);
                    }
                } else if started.elapsed() < Duration::from_secs(1) {
                    // A server that answers at once with the same index
                    // must not make this a busy loop.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            Err(e) => {
                applied = applied.or(last_applied);
                if tx.send(Event::PollFailed(e.to_string())).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(backoff)).await;
                backoff = (backoff * 2).min(max_backoff);
            }
        }
    }
}

fn send_ack(client: &Client, index: u64, installed: Vec<String>, drift: Vec<String>) {
    let client = client.clone();
    tokio::spawn(async move {
        let ack = Ack {
            index,
            installed,
            drift,
        };
        for attempt in 0..3u64 {
            match remote::ack(&client, &ack).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(index, "ack failed: {e}");
                    tokio::time::sleep(Duration::from_secs(1 + attempt * 2)).await;
                }
            }
        }
    });
}

/// Renews the host token now and then every 12 hours (sooner after a
/// failure); a periodic token that is not renewed lapses.
async fn token_renewer(client: Client) {
    loop {
        let pause = match remote::renew_token(&client).await {
            Ok(ttl) => {
                tracing::debug!(ttl, "host token renewed");
                Duration::from_secs(12 * 3600)
            }
            Err(e) => {
                tracing::warn!("cannot renew the host token: {e}");
                Duration::from_secs(300)
            }
        };
        tokio::time::sleep(pause).await;
    }
}

fn notify(state: sd_notify::NotifyState<'_>) {
    // Outside systemd there is no socket; nothing to tell.
    let _ = sd_notify::notify(false, &[state]);
}

/// Until SIGTERM or SIGINT.
pub async fn run(cfg: Config, config_path: &std::path::Path) -> Result<(), Error> {
    let _running = crate::service::mark_running(&cfg.paths.state_dir).map_err(Error::Other)?;
    let token = read_token(&cfg)?;
    let wait = cfg.sync.wait_seconds;
    let client = client(&cfg, Some(token), Duration::from_secs(wait + 30))?;
    let mut host = Host::new(&cfg.paths);
    let state_dir = cfg.paths.state_dir.clone();
    let mut local = LocalState::load(&state_dir);
    if let Some(note) = stale_saved_state(&host, &local) {
        tracing::warn!("{note}");
        local.desired = None;
        local.last_error = Some(note);
    }
    let sign_certs = cfg.host_mount.is_some();

    // The login check's socket, whatever the server says: it serves logins
    // with the OTP configuration's own servers and CAs.
    let login_socket = Some(cfg.paths.login_socket.clone()).filter(|p| !p.as_os_str().is_empty());
    let login_served = login_socket
        .as_ref()
        .and_then(|p| match crate::login::start(p) {
            Ok(served) => Some(served),
            Err(e) => {
                // Logins still work: the check asks the servers itself.
                tracing::warn!("{e}");
                None
            }
        });

    let (tx, mut rx) = mpsc::channel(16);
    let poll_task = tokio::spawn(poller(
        client.clone(),
        tx.clone(),
        wait,
        cfg.sync.max_backoff_seconds,
    ));

    let renew_task = tokio::spawn(token_renewer(client.clone()));

    let mut desired: Option<HostState> = local.desired.clone();
    let mut next_expiry: Option<i64> = None;
    let mut retry_at: Option<i64> = None;
    let mut recheck_at: Option<i64> = None;
    let recheck = cfg.sync.recheck_seconds.max(1) as i64;
    let mut renew_at: Option<i64> = None;
    let mut signing = false;
    // After a signing round, keys are not asked for again before this.
    let mut renew_backoff_until: Option<i64> = None;
    let mut pending_certs: Vec<NewCert> = Vec::new();
    let mut told = LeftOut::default();

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::Other(format!("SIGTERM handler: {e}")))?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| Error::Other(format!("SIGINT handler: {e}")))?;
    let mut usec = 0u64;
    let watchdog = sd_notify::watchdog_enabled(false, &mut usec);
    let period = if watchdog {
        Duration::from_micros((usec / 2).max(100_000))
    } else {
        Duration::from_secs(3600)
    };
    let mut ticker = tokio::time::interval(period);

    // Apply what we had before the restart: expired keys go even if the
    // server never answers.
    let mut apply_now = desired.is_some();
    let mut from_server = false;
    // The poller waits on this after a new state: the index applied, for
    // its next poll to acknowledge. Dropped unanswered when the apply
    // fails (the poller then polls without one).
    let mut applied_reply: Option<oneshot::Sender<Applied>> = None;
    let mut ready = false;

    loop {
        if apply_now {
            apply_now = false;
            if let Some(state) = &desired {
                // The host's own files as the config names them now: a
                // `setup` run since may have noted them.
                match Config::load(config_path) {
                    Ok(c) => host.set_own_files(&c.paths),
                    Err(e) => tracing::warn!(
                        "cannot read the config again for the host's own files (those it named when last read stay in use): {e}"
                    ),
                }
                let now = clock::now();
                let certs = std::mem::take(&mut pending_certs);
                let drifted = drift_before(&host, &local);
                // Answered below when the apply succeeds; dropped otherwise,
                // and the poller polls on without acknowledging.
                let reply = applied_reply.take();
                recheck_at = Some(now + recheck);
                match host.converge(state, now, &certs) {
                    Ok(out) => {
                        log_outcome(&out, &mut told);
                        let drift = repaired(&drifted, &out);
                        for p in &drift {
                            tracing::warn!(path = %p, "repaired: changed on disk since hostd wrote it");
                        }
                        record(&mut local, state, &out, now, from_server);
                        next_expiry = out.rendered.next_expiry;
                        retry_at = None;
                        if sign_certs {
                            let keys = host
                                .effective()
                                .map(|e| host.host_keys(&e))
                                .unwrap_or_default();
                            let (due, next) = renewal(&keys, now);
                            renew_at = if due.is_empty() { next } else { Some(now) };
                            if let Some(b) = renew_backoff_until.filter(|b| *b > now) {
                                renew_at = renew_at.map(|r| r.max(b));
                            }
                        }
                        if from_server || !out.changes.is_empty() {
                            let installed = out.rendered.installed.clone();
                            // The next poll says it, unless there is more to say.
                            let sent_apart =
                                reply.is_none() || !installed.is_empty() || !drift.is_empty();
                            if sent_apart {
                                send_ack(&client, state.index, installed, drift);
                            }
                            if let Some(reply) = reply {
                                let _ = reply.send(Applied {
                                    index: state.index,
                                    sent_apart,
                                });
                            }
                        }
                    }
                    Err(e) => {
                        tracing::error!("applying state {} failed: {e}", state.index);
                        local.last_error = Some(e.to_string());
                        retry_at = Some(now + 30);
                        // The certificates wait for the retry; asking for
                        // new ones before it would only repeat the failure.
                        renew_at = renew_at.map(|r| r.max(now + 30));
                        pending_certs = certs;
                    }
                }
                if let Err(e) = local.save(&state_dir) {
                    tracing::warn!("cannot save local state: {e}");
                }
            }
            from_server = false;
        }
        if !ready {
            ready = true;
            notify(sd_notify::NotifyState::Ready);
            tracing::info!("running; server {}", cfg.server);
        }

        let now = clock::now();
        if sign_certs && !signing && renew_at.is_some_and(|t| t <= now) {
            let keys = host
                .effective()
                .map(|e| host.host_keys(&e))
                .unwrap_or_default();
            let (due, _) = renewal(&keys, now);
            if due.is_empty() {
                renew_at = None;
            } else {
                signing = true;
                // However short the certificates' life, ask at most once a
                // minute (a certificate due at once would loop otherwise).
                renew_backoff_until = Some(now + MIN_SIGNING_INTERVAL);
                let (client, tx) = (client.clone(), tx.clone());
                tokio::spawn(async move {
                    let (certs, failed) = sign_all(&client, &due).await;
                    let _ = tx.send(Event::Signed(certs, failed)).await;
                });
            }
        }
        let wake = [
            next_expiry,
            retry_at,
            recheck_at,
            renew_at.filter(|_| !signing),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|t| Duration::from_secs((t - now).max(0) as u64).max(Duration::from_millis(200)))
        .unwrap_or(Duration::from_secs(3600));

        tokio::select! {
            ev = rx.recv() => match ev {
                Some(Event::State(s, reply)) => {
                    tracing::info!(index = s.index, "new desired state");
                    applied_reply = Some(reply);
                    desired = Some(s);
                    apply_now = true;
                    from_server = true;
                }
                Some(Event::PollFailed(e)) => {
                    tracing::warn!("cannot fetch the desired state: {e}");
                    local.last_error = Some(e);
                    let _ = local.save(&state_dir);
                }
                Some(Event::Signed(certs, failed)) => {
                    signing = false;
                    if !certs.is_empty() {
                        tracing::info!(count = certs.len(), "host certificates signed");
                        pending_certs = certs;
                        apply_now = true;
                    }
                    for f in &failed {
                        tracing::warn!("{f}");
                    }
                    if !failed.is_empty() {
                        // Retried later; the converge after new certificates
                        // would otherwise ask again at once.
                        renew_at = Some(clock::now() + 300);
                        renew_backoff_until = renew_at;
                    }
                }
                None => break,
            },
            _ = tokio::time::sleep(wake) => {
                apply_now = true;
            }
            _ = ticker.tick() => {
                if watchdog {
                    notify(sd_notify::NotifyState::Watchdog);
                }
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    notify(sd_notify::NotifyState::Stopping);
    poll_task.abort();
    renew_task.abort();
    if let (Some(served), Some(path)) = (login_served, &login_socket) {
        served.stop();
        crate::login::remove(path);
    }
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_left_out_is_told_when_it_appears_and_when_it_goes() {
        let mut told = LeftOut::default();
        let (a, b) = ("user x: bad".to_string(), "lease y: bad".to_string());
        let (just_a, just_b) = (vec![a.clone()], vec![b.clone()]);
        assert_eq!(told.update(&just_a), (vec![a.clone()], vec![]));
        assert_eq!(told.update(&just_a), (vec![], vec![]));
        assert_eq!(
            told.update(&[a.clone(), b.clone()]),
            (vec![b.clone()], vec![])
        );
        assert_eq!(told.update(&just_b), (vec![], vec![a.clone()]));
        assert_eq!(told.update(&[]), (vec![], vec![b]));
    }
}
