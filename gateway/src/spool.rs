//! The recording spool: every sealed chunk and signed end is first a file
//! here (under the gateway's state directory, mode 0600, fsync'd with its
//! folder), then sent to the server ([`deliver`]), and removed once the
//! server has it. While the server cannot be reached the files wait; a
//! gateway that restarts (even after SIGKILL) finds them and sends them.
//! The server takes a chunk it already has again without harm, so a file
//! sent but not yet removed when the gateway died is simply sent again.
//!
//! File names sort in sending order within a recording: its chunks by
//! index, then its end.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use gatepass_api::recording::{RecordingEnd, SealedChunk};
use gatepass_api::Client;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::Notify;
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
    End {
        session: String,
        recording: String,
        end: RecordingEnd,
    },
}

impl SpoolItem {
    fn file_name(&self) -> String {
        match self {
            SpoolItem::Chunk {
                session,
                recording,
                chunk,
            } => format!("{session}.{recording}.{:012}.chunk", chunk.index),
            SpoolItem::End {
                session, recording, ..
            } => format!("{session}.{recording}.end"),
        }
    }

    /// The server path and body it goes to.
    fn request(&self) -> (String, Value) {
        match self {
            SpoolItem::Chunk {
                session,
                recording,
                chunk,
            } => (
                format!(
                    "pam/gateway/self/sessions/{session}/recordings/{recording}/chunks/{}",
                    chunk.index
                ),
                serde_json::to_value(chunk).unwrap_or_default(),
            ),
            SpoolItem::End {
                session,
                recording,
                end,
            } => (
                format!("pam/gateway/self/sessions/{session}/recordings/{recording}/end"),
                serde_json::to_value(end).unwrap_or_default(),
            ),
        }
    }
}

/// IDs are UUIDs; anything else must not become a path.
fn plain(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

pub struct Spool {
    dir: PathBuf,
    ready: Notify,
}

impl Spool {
    /// The spool in `dir`, made (0700) if missing.
    pub fn open(dir: &Path) -> Result<Spool, String> {
        if !dir.is_dir() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("cannot make the recording spool {}: {e}", dir.display()))?;
        }
        Ok(Spool {
            dir: dir.to_path_buf(),
            ready: Notify::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `item` durably: a 0600 file, fsync'd, renamed into place, and
    /// the folder fsync'd, before this returns.
    pub fn put(&self, item: &SpoolItem) -> Result<(), String> {
        let (session, recording) = match item {
            SpoolItem::Chunk {
                session, recording, ..
            }
            | SpoolItem::End {
                session, recording, ..
            } => (session, recording),
        };
        if !plain(session) || !plain(recording) {
            return Err(format!(
                "not a session or recording ID: {session:?} {recording:?}"
            ));
        }
        let name = item.file_name();
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
        let text = serde_json::to_vec(item).map_err(|e| e.to_string())?;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(fail)?;
        f.write_all(&text).map_err(fail)?;
        f.sync_all().map_err(fail)?;
        fs::rename(&tmp, &path).map_err(fail)?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(fail)?;
        self.ready.notify_one();
        Ok(())
    }

    /// The spooled files, in sending order.
    fn pending(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    !n.starts_with('.') && (n.ends_with(".chunk") || n.ends_with(".end"))
                })
            })
            .collect();
        files.sort();
        files
    }
}

/// Sends the spool to the server for good: what is there at start, then
/// each new file as it comes; while the server cannot be reached, tries
/// again every second. A file the server refuses (its session is unknown
/// to it) is set aside as `<name>.refused`, not retried forever.
pub async fn deliver(spool: std::sync::Arc<Spool>, client: Client) {
    let found = spool.pending().len();
    if found > 0 {
        info!(files = found, dir = %spool.dir.display(), "sending the recording spool left by an earlier run");
    }
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
                    set_aside(&path, "unreadable");
                    continue;
                }
            };
            let (api_path, body) = item.request();
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
                    debug!(file = %path.display(), "recording part delivered");
                    let _ = fs::remove_file(&path);
                }
                Err(gatepass_api::Error::Api { status, errors })
                    if (400..500).contains(&status) =>
                {
                    warn!(file = %path.display(), status, "the server refused a recording part: {}", errors.join("; "));
                    set_aside(&path, "refused");
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
                    break;
                }
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

fn set_aside(path: &Path, why: &str) {
    let mut to = path.as_os_str().to_owned();
    to.push(format!(".{why}"));
    let _ = fs::rename(path, PathBuf::from(to));
}
