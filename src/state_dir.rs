//! The state directory: where a supervisor keeps its lock, its replicas' logs,
//! their instance locks and their exit records. One supervisor per state directory, enforced by
//! an exclusive `flock` on `supervise.lock` that dies with its holder, so a
//! supervisor that was killed never leaves a stale lock behind.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("a supervisor is already running for state dir {dir} (pid {pid})")]
    Held { dir: PathBuf, pid: String },
    #[error("cannot use state dir {dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// Held for the supervisor's lifetime.
pub struct Lock {
    _file: Flock<File>,
}

impl StateDir {
    pub fn new(root: PathBuf) -> StateDir {
        StateDir { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    pub fn run(&self) -> PathBuf {
        self.root.join("run")
    }

    pub fn log_file(&self, replica: &str) -> PathBuf {
        self.logs().join(format!("{replica}.log"))
    }

    pub fn exit_record(&self, replica: &str) -> PathBuf {
        self.run().join(format!("{replica}.exit"))
    }

    pub fn running_record(&self, replica: &str) -> PathBuf {
        self.run().join(format!("{replica}.running"))
    }

    /// The control socket (see `control::protocol`).
    pub fn socket(&self) -> PathBuf {
        self.root.join(crate::control::protocol::SOCKET_NAME)
    }

    /// `NOTIFY_SOCKET` of notify services (see `supervisor::notify`).
    pub fn notify_socket(&self) -> PathBuf {
        self.root.join("notify.sock")
    }

    /// See `supervisor::checkpoint`.
    pub fn checkpoint(&self) -> PathBuf {
        self.root.join("checkpoint.json")
    }

    /// A detached supervisor's own log (its stdout and stderr), rotated by
    /// it at `log_max_size` (see `supervisor::display`).
    pub fn supervisor_log(&self) -> PathBuf {
        self.root.join("supervise.log")
    }

    /// The lock a replica's shim holds while any process of the replica runs.
    pub fn instance_lock(&self, replica: &str) -> PathBuf {
        self.run().join(format!("{replica}.lock"))
    }

    /// The pid of the shim holding `replica`'s instance lock, if one does.
    pub fn instance_holder(&self, replica: &str) -> Option<u32> {
        let file = File::open(self.instance_lock(replica)).ok()?;
        match Flock::lock(file, FlockArg::LockSharedNonblock) {
            Ok(_) => None,
            Err((mut file, _)) => {
                let mut pid = String::new();
                file.read_to_string(&mut pid).ok()?;
                pid.trim().parse().ok()
            }
        }
    }

    /// Creates the directories (mode 0700: logs and records are private) and
    /// takes the supervisor lock, writing our pid into it for the next one
    /// who asks.
    pub fn lock(&self) -> Result<Lock, LockError> {
        let io = |source| LockError::Io {
            dir: self.root.clone(),
            source,
        };
        let mut builder = DirBuilder::new();
        builder.recursive(true).mode(0o700);
        for dir in [self.root.clone(), self.logs(), self.run()] {
            builder.create(&dir).map_err(io)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.root.join("supervise.lock"))
            .map_err(io)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                return Err(LockError::Held {
                    dir: self.root.clone(),
                    pid: pid.trim().to_string(),
                });
            }
            Err((_, e)) => return Err(io(e.into())),
        };
        lock.set_len(0).map_err(io)?;
        lock.rewind().map_err(io)?;
        writeln!(lock, "{}", std::process::id()).map_err(io)?;
        Ok(Lock { _file: lock })
    }
}
