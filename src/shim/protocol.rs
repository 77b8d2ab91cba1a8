//! What the supervisor and a replica's shim tell each other.
//!
//! The supervisor writes a [`ShimConfig`] as JSON on the shim's stdin. The
//! shim answers one [`Status`] line on its stdout once the replica is running
//! (or could not be started), and when the replica's whole process tree is
//! gone it writes an [`ExitRecord`] file and exits. The record is a file, not
//! a message, so that it outlives a supervisor that died in the meantime.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// File descriptor on which a shim finds the foreground output pipe, if any.
pub const TEE_FD: i32 = 3;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShimConfig {
    /// `service.N`, for messages.
    pub replica: String,
    pub generation: u64,
    pub argv: Vec<String>,
    /// Added to the inherited environment.
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub stop_signal: i32,
    pub stop_timeout_ms: u64,
    pub log: LogConfig,
    pub exit_record: PathBuf,
    /// The replica's instance lock, held by its shim (see `shim::claim`).
    pub lock: PathBuf,
    /// When set, each output line is also written, behind this prefix, to
    /// [`TEE_FD`] (the foreground supervisor's display pipe).
    pub tee_prefix: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogConfig {
    pub path: PathBuf,
    pub max_size: u64,
    pub keep: u32,
}

/// The one line a shim writes on its stdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Started { pid: u32 },
    SpawnFailed { error: String },
}

/// How a replica ended, written by its shim once no process of it is left.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub generation: u64,
    pub pid: Option<u32>,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// Set when the command could not be started at all.
    pub spawn_error: Option<String>,
    #[serde(with = "humantime_serde_compat")]
    pub at: SystemTime,
}

impl ExitRecord {
    /// Writes the record so that a reader sees all of it or none of it.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("exit.tmp");
        std::fs::write(&tmp, serde_json::to_vec(self)?)?;
        std::fs::rename(&tmp, path)
    }

    pub fn read(path: &Path) -> std::io::Result<ExitRecord> {
        let bytes = std::fs::read(path)?;
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)
    }
}

/// RFC 3339 timestamps in JSON, via humantime.
mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_micros(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}
