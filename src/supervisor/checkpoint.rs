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
use super::replica::{Phase, ReplicaId, Role};
use super::restart::Ending;
use crate::shim::protocol::read_record;

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
    /// Settled: not to be started again.
    pub settled: Option<Settled>,
    /// Of the running incarnation, kept for adoption: an adopted active
    /// stays the active, and a replica that said READY=1 (or matched its
    /// log pattern) before the crash need not say it again.
    #[serde(default)]
    pub role: Option<Role>,
    #[serde(default)]
    pub healthy: bool,
    /// The incarnation whose end this checkpoint has judged (0: none): its
    /// exit record, if a crash left it behind, is not judged again.
    #[serde(default)]
    pub ended: u64,
}

/// The phases nothing more happens to without a request, as the
/// checkpoint names them (their `status` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Settled {
    Exited,
    Failed,
    Stopped,
}

impl Settled {
    pub fn of(phase: &Phase) -> Option<Settled> {
        match phase {
            Phase::Exited => Some(Settled::Exited),
            Phase::Failed => Some(Settled::Failed),
            Phase::Stopped => Some(Settled::Stopped),
            _ => None,
        }
    }

    pub fn phase(self) -> Phase {
        match self {
            Settled::Exited => Phase::Exited,
            Settled::Failed => Phase::Failed,
            Settled::Stopped => Phase::Stopped,
        }
    }
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
    /// Saves the checkpoint now (shutdown, a promotion).
    pub(super) fn save_checkpoint(&mut self) {
        let _ = self.write_checkpoint(&self.checkpoint());
    }

    /// Saves a desired-state change before the request is answered; if it
    /// cannot be written, what the answer warns of. The change holds all the
    /// same (a `stop` is most needed when a replica's logs filled the disk),
    /// and is written with the next batch that can be.
    pub(super) fn record_desired(&mut self) -> Option<String> {
        let e = self.write_checkpoint(&self.checkpoint()).err()?;
        Some(format!(
            "not recorded in {} ({e}): it holds while this supervisor runs and is written \
             once the file can be; a supervisor killed before then would not keep it",
            self.dir.checkpoint().display()
        ))
    }

    /// Saves the checkpoint with `id`'s next incarnation in `role`, before
    /// that incarnation begins and is told its role.
    pub(super) fn save_checkpoint_telling(&mut self, id: &ReplicaId, role: Role) {
        let mut checkpoint = self.checkpoint();
        if let Some(memo) = checkpoint.replicas.get_mut(&id.to_string()) {
            memo.role = Some(role);
        }
        let _ = self.write_checkpoint(&checkpoint);
    }

    /// Err: why the checkpoint is not on disk (it is retried with the next
    /// batch; supervision goes on with the state in memory).
    fn write_checkpoint(&mut self, checkpoint: &Checkpoint) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(checkpoint).map_err(|e| {
            tracing::error!(error = %e, "cannot serialise the checkpoint");
            e.to_string()
        })?;
        self.last_save = Some(Instant::now());
        if bytes == self.saved {
            self.on_disk();
            return Ok(());
        }
        match write_atomically(&self.dir.checkpoint(), &bytes) {
            Ok(()) => {
                self.saved = bytes;
                self.on_disk();
                Ok(())
            }
            Err(e) => {
                self.display.event(&format!(
                    "checkpoint: cannot write {}: {e}; retrying",
                    self.dir.checkpoint().display()
                ));
                Err(e.to_string())
            }
        }
    }

    /// The checkpoint just written (or found unchanged) was made from the
    /// state as it is: its counts are on disk.
    fn on_disk(&mut self) {
        self.dirty = false;
        for replica in self.replicas.values_mut() {
            replica.checkpointed_restarts = replica.restarts;
        }
        let judged: Vec<(String, u64)> = self.judged_records.drain().collect();
        for (replica, generation) in judged {
            self.remove_records(&replica, generation);
        }
    }

    /// Removes `replica`'s exit and running records of incarnations up to
    /// `generation`: not a newer incarnation's, written since at the same
    /// paths, nor one that cannot be read.
    pub(super) fn remove_records(&self, replica: &str, generation: u64) {
        /// What both records begin with.
        #[derive(Deserialize)]
        struct Of {
            generation: u64,
        }
        for path in [
            self.dir.exit_record(replica),
            self.dir.running_record(replica),
        ] {
            if read_record::<Of>(&path).is_ok_and(|r| r.generation <= generation) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// Saves the checkpoint now if a restart count is not on it yet, before
    /// `status` shows the counts: a resuming supervisor takes a count from
    /// the checkpoint, or from a shim's record of a newer incarnation, which
    /// may not be written yet (its shim is starting) or no longer there (the
    /// next incarnation's start removed its exit record), so a count shown
    /// before the batched write
    /// could go backwards across a `kill -9`. Only a `status` within a batch
    /// of a restart pays for a write; the restart itself never waits for one.
    pub(super) fn checkpoint_restarts(&mut self) {
        if self
            .replicas
            .values()
            .any(|r| r.restarts != r.checkpointed_restarts)
        {
            self.save_checkpoint();
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

    /// The file as an earlier supervise wrote it (settled states as
    /// strings matched by hand) still loads, and means the same.
    #[test]
    fn a_checkpoint_written_before_settled_was_an_enum_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint.json");
        let old = r#"{
  "version": 1,
  "boot_id": "b0",
  "clean_shutdown": false,
  "desired": { "scaled": {}, "stopped": ["api.1"] },
  "replicas": {
    "api.0": {
      "generation": 4, "restarts": 3, "consecutive": 2,
      "recent": [{ "secs_since_epoch": 1700000000, "nanos_since_epoch": 0 }],
      "backoff_until": null,
      "last_exit": [{ "code": 3 }, { "secs_since_epoch": 1700000001, "nanos_since_epoch": 5 }],
      "settled": "failed",
      "role": "active",
      "healthy": true
    },
    "api.1": {
      "generation": 1, "restarts": 0, "consecutive": 0, "recent": [],
      "backoff_until": null, "last_exit": null, "settled": "stopped"
    },
    "job.0": {
      "generation": 1, "restarts": 0, "consecutive": 0, "recent": [],
      "backoff_until": null, "last_exit": [{ "signal": 9 }, { "secs_since_epoch": 1, "nanos_since_epoch": 0 }],
      "settled": "exited"
    },
    "web.0": {
      "generation": 2, "restarts": 1, "consecutive": 1, "recent": [],
      "backoff_until": { "secs_since_epoch": 1700000002, "nanos_since_epoch": 0 },
      "last_exit": null, "settled": null
    }
  }
}"#;
        std::fs::write(&path, old).unwrap();
        let cp = Checkpoint::load(&path).unwrap().unwrap();
        let memo = |name: &str| cp.replicas[name].clone();
        assert_eq!(memo("api.0").settled, Some(Settled::Failed));
        assert_eq!(memo("api.0").role, Some(Role::Active));
        assert_eq!(memo("api.0").last_exit.unwrap().0, Ending::Code(3));
        assert_eq!(memo("api.1").settled, Some(Settled::Stopped));
        assert_eq!(memo("job.0").settled, Some(Settled::Exited));
        assert_eq!(memo("web.0").settled, None);
        assert!(memo("web.0").backoff_until.is_some());
        // And it is written the same way.
        let again = serde_json::to_value(&cp).unwrap();
        assert_eq!(again["replicas"]["api.0"]["settled"], "failed");
        assert_eq!(
            again["replicas"]["web.0"]["settled"],
            serde_json::Value::Null
        );
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
