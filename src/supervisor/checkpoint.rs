//! The checkpoint: what a supervisor must remember to resume after its own
//! crash — desired state (`scale`, `stop`) and, per replica, its counters,
//! backoff and last exit. Which processes are alive is *not* taken from it:
//! that comes from the shims' instance locks and running records, checked
//! against `/proc`, so a checkpoint that lags behind (or is lost) can never
//! cause a duplicate or an adoption of a stranger.
//!
//! Format: versioned JSON in `<state_dir>/checkpoint.json`, written
//! atomically (temp file, fsync, rename, fsync of the directory) so it is
//! never torn. Why a file and not an embedded database: the state is small
//! (a few hundred bytes per replica), written whole, read once at start; a
//! file is inspectable with `cat`, easy to set aside when damaged, and needs
//! no C build or opaque format.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::desired::Desired;
use super::replica::Role;
use super::restart::Ending;

pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u32,
    pub boot_id: String,
    /// Written by a supervisor that stopped everything and exited: the next
    /// `up` starts its replicas afresh, keeping only the desired state.
    #[serde(default)]
    pub clean_shutdown: bool,
    pub desired: Desired,
    /// By replica name (`svc.N`).
    pub replicas: BTreeMap<String, ReplicaMemo>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplicaMemo {
    /// Incarnations so far; a running record of another generation is stale.
    pub generation: u64,
    pub restarts: u32,
    /// Failures in a row (the backoff exponent).
    pub consecutive: u32,
    /// The last restarts within the current window (at most the limit, see
    /// `restart::History`), as wall-clock times.
    pub recent: Vec<SystemTime>,
    /// Waiting to restart until then.
    pub backoff_until: Option<SystemTime>,
    pub last_exit: Option<(Ending, SystemTime)>,
    /// `exited`, `failed` or `stopped`: settled, not to be started again.
    pub settled: Option<String>,
    /// Of the running incarnation, kept for adoption: an adopted active
    /// stays the active, and a replica that said READY=1 (or matched its
    /// log pattern) before the crash need not say it again.
    #[serde(default)]
    pub role: Option<Role>,
    #[serde(default)]
    pub healthy: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is damaged ({reason})")]
    Damaged { path: PathBuf, reason: String },
}

impl Checkpoint {
    pub fn new(desired: Desired) -> Checkpoint {
        Checkpoint {
            version: VERSION,
            boot_id: crate::procfs::boot_id(),
            clean_shutdown: false,
            desired,
            replicas: BTreeMap::new(),
        }
    }

    /// `Ok(None)` when there is none (a first start).
    pub fn load(path: &Path) -> Result<Option<Checkpoint>, LoadError> {
        let bytes = match crate::state_dir::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(LoadError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let damaged = |reason: String| LoadError::Damaged {
            path: path.to_path_buf(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| damaged(e.to_string()))?;
        match value.get("version").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(VERSION) => {}
            Some(v) => {
                return Err(damaged(format!(
                    "version {v}, this supervise reads {VERSION}"
                )));
            }
            None => return Err(damaged("no version".into())),
        }
        serde_json::from_value(value)
            .map(Some)
            .map_err(|e| damaged(e.to_string()))
    }
}

/// Replaces the file at `path` with `bytes` so that a crash at any point
/// leaves either the old or the new content, durably.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    crate::state_dir::replace(path, bytes, true)
}

/// Moves a damaged checkpoint out of the way (never overwritten silently),
/// returning where it went.
pub fn set_aside(path: &Path) -> std::io::Result<PathBuf> {
    let stamp = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let aside = path.with_extension(format!("bad-{}", stamp.replace(':', "")));
    std::fs::rename(path, &aside)?;
    Ok(aside)
}

/// Checkpoint writes are batched: at most one per this interval, so a
/// restart storm is not an fsync storm.
const BATCH: Duration = Duration::from_millis(20);

impl super::Supervisor {
    /// Saves the checkpoint now (desired-state changes, which a request
    /// acknowledges, and shutdown).
    pub(super) fn save_checkpoint(&mut self) {
        let bytes = match serde_json::to_vec_pretty(&self.checkpoint()) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::error!(error = %e, "cannot serialise the checkpoint");
                return;
            }
        };
        self.last_save = Some(Instant::now());
        if bytes == self.saved {
            self.dirty = false;
            return;
        }
        match write_atomically(&self.dir.checkpoint(), &bytes) {
            Ok(()) => {
                self.saved = bytes;
                self.dirty = false;
            }
            Err(e) => {
                // Supervision goes on with the state in memory; the write is
                // retried with the next batch.
                self.display.event(&format!(
                    "checkpoint: cannot write {}: {e}; retrying",
                    self.dir.checkpoint().display()
                ));
            }
        }
    }

    /// When the batched checkpoint write is due, if one is pending; writes
    /// it if that is now.
    pub(super) fn checkpoint_due(&mut self, now: Instant) -> Option<Instant> {
        if !self.dirty {
            return None;
        }
        // A failed write is retried after a second, not every batch.
        let pause = if self.saved.is_empty() && self.last_save.is_some() {
            Duration::from_secs(1)
        } else {
            BATCH
        };
        match self.last_save.map(|t| t + pause) {
            Some(due) if due > now => Some(due),
            _ => {
                self.save_checkpoint();
                self.dirty.then(|| now + Duration::from_secs(1))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn save(checkpoint: &Checkpoint, path: &Path) {
        write_atomically(path, &serde_json::to_vec_pretty(checkpoint).unwrap()).unwrap();
    }

    #[test]
    fn round_trips_and_a_missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint.json");
        assert!(Checkpoint::load(&path).unwrap().is_none());
        let mut cp = Checkpoint::new(Desired::default());
        cp.replicas.insert(
            "api.0".into(),
            ReplicaMemo {
                generation: 3,
                restarts: 2,
                last_exit: Some((Ending::Code(3), SystemTime::UNIX_EPOCH)),
                ..ReplicaMemo::default()
            },
        );
        save(&cp, &path);
        assert_eq!(Checkpoint::load(&path).unwrap(), Some(cp));
    }

    #[test]
    fn truncated_corrupt_and_future_files_are_damaged_and_can_be_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint.json");
        save(&Checkpoint::new(Desired::default()), &path);
        let good = std::fs::read(&path).unwrap();
        for bad in [
            good[..good.len() / 2].to_vec(),
            b"\x00\x01garbage".to_vec(),
            br#"{"version": 99}"#.to_vec(),
            br#"{"version": 1, "boot_id": 5}"#.to_vec(),
        ] {
            std::fs::write(&path, &bad).unwrap();
            let err = Checkpoint::load(&path).unwrap_err();
            assert!(matches!(err, LoadError::Damaged { .. }), "{err}");
        }
        let aside = set_aside(&path).unwrap();
        assert!(!path.exists() && aside.exists());
        assert!(aside.to_string_lossy().contains("checkpoint.bad-"));
    }
}
