//! The state directory: where a supervisor keeps its lock, its replicas' logs,
//! their instance locks and their exit records. One supervisor per state directory, enforced by
//! an exclusive `flock` on `supervise.lock` that dies with its holder, so a
//! supervisor that was killed never leaves a stale lock behind.
//!
//! A supervisor (often root) writes its replicas' output and its records
//! into the state dir, so nobody else may control it: the directory and its
//! `logs/` and `run/` must belong to the user running the supervisor and be
//! writable by nobody else ([`StateDir::lock`] refuses them otherwise), and
//! no file in it is opened through a symlink ([`options`], [`create_new`]).

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
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
    /// Someone else could plant files or symlinks in it.
    #[error("refusing state dir {path}: {why}; fix: {fix}")]
    Unsafe {
        path: PathBuf,
        why: String,
        fix: String,
    },
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

    /// A cluster-scope replica's fencing order (see `shim::fence`).
    pub fn fence_order(&self, replica: &str) -> PathBuf {
        self.run().join(format!("{replica}.fence"))
    }

    /// The control socket (see `control::protocol`).
    pub fn socket(&self) -> PathBuf {
        self.root.join(crate::control::protocol::SOCKET_NAME)
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

    /// The pid of the shim holding `replica`'s instance lock, if one does:
    /// the one it wrote into the file or, when the file has none (the shim
    /// could not write it: a full disk), the kernel's word.
    pub fn instance_holder(&self, replica: &str) -> Option<u32> {
        let mut file = self.held_instance_lock(replica)?;
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        pid.trim()
            .parse()
            .ok()
            .or_else(|| crate::procfs::flock_holder(&file))
    }

    /// Who holds `replica`'s instance lock, as the kernel says
    /// (`/proc/locks`): what the file says could be stale.
    pub fn instance_holder_per_kernel(&self, replica: &str) -> Option<u32> {
        crate::procfs::flock_holder(&self.held_instance_lock(replica)?)
    }

    /// `replica`'s instance lock, opened, if someone holds it.
    fn held_instance_lock(&self, replica: &str) -> Option<File> {
        let file = options()
            .read(true)
            .open(self.instance_lock(replica))
            .ok()?;
        match Flock::lock(file, FlockArg::LockSharedNonblock) {
            Ok(_) => None,
            Err((file, _)) => Some(file),
        }
    }

    /// Removes the temp files in `run/` of replicas whose shim is gone (a
    /// writer killed mid-write leaves one); a live shim's are its own.
    pub fn remove_leftover_temp_files(&self) {
        for record in self.run_files_ending(".tmp") {
            // `web.0.running.tmp`, `web.0.exit.tmp`: the replica is `web.0`.
            let replica = record.rsplit_once('.').map_or(record.as_str(), |(r, _)| r);
            if self.instance_holder(replica).is_none() {
                let _ = std::fs::remove_file(self.run().join(format!("{record}.tmp")));
            }
        }
    }

    /// The replicas that have an instance lock file (held or not).
    pub fn locked_replicas(&self) -> Vec<String> {
        self.run_files_ending(".lock")
    }

    /// Removes the exit and running records of replicas `keep` does not
    /// name (replicas scaled away or removed from the spec before a crash),
    /// which would otherwise be taken one day for a new replica of that name.
    pub fn remove_records_except(&self, keep: impl Fn(&str) -> bool) {
        for suffix in [".exit", ".running"] {
            for replica in self.run_files_ending(suffix) {
                if !keep(&replica) {
                    let _ = std::fs::remove_file(self.run().join(format!("{replica}{suffix}")));
                }
            }
        }
    }

    /// The names of the files in `run/` ending in `suffix`, without it.
    fn run_files_ending(&self, suffix: &str) -> Vec<String> {
        std::fs::read_dir(self.run())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name();
                name.to_str()?.strip_suffix(suffix).map(str::to_string)
            })
            .collect()
    }

    /// Creates the directories (mode 0700: logs and records are private),
    /// checks that they are ours alone, and takes the supervisor lock,
    /// writing our pid into it for the next one who asks.
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
        self.check_ownership()?;
        let file = options()
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

    /// The state dir (followed if it is a symlink: that is the user's
    /// choice) and its subdirectories (never symlinks) must be owned by our
    /// effective user and not writable by group or others.
    fn check_ownership(&self) -> Result<(), LockError> {
        let io = |source| LockError::Io {
            dir: self.root.clone(),
            source,
        };
        let me = nix::unistd::geteuid().as_raw();
        let mut dirs = vec![(
            self.root.clone(),
            std::fs::metadata(&self.root).map_err(io)?,
        )];
        for dir in [self.logs(), self.run()] {
            let meta = std::fs::symlink_metadata(&dir).map_err(io)?;
            dirs.push((dir, meta));
        }
        for (path, meta) in dirs {
            let shown = path.display();
            let refuse = |why: String, fix: String| {
                Err(LockError::Unsafe {
                    path: path.clone(),
                    why,
                    fix,
                })
            };
            if !meta.is_dir() {
                return refuse(
                    "it is not a directory (a symlink?)".into(),
                    format!("remove {shown}"),
                );
            }
            if meta.uid() != me {
                return refuse(
                    format!(
                        "it is owned by uid {}, not by uid {me} running supervise",
                        meta.uid()
                    ),
                    format!("chown -R {me} {shown}, or use another --state-dir"),
                );
            }
            if meta.mode() & 0o022 != 0 {
                return refuse(
                    format!(
                        "group or others may write to it (mode {:o})",
                        meta.mode() & 0o7777
                    ),
                    format!("chmod 700 {shown}"),
                );
            }
        }
        Ok(())
    }
}

/// How every file in the state dir is opened: never through a symlink, so a
/// link planted there cannot redirect a write (or a read) elsewhere.
pub fn options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.custom_flags(nix::libc::O_NOFOLLOW);
    options
}

/// A file the caller alone writes and then renames into place (a temp
/// file): a leftover at `path`, from a crash or planted, is removed first
/// (unlink does not follow a symlink) and the file is created anew
/// (`O_EXCL`: if anything is there again, this fails rather than reuse it).
pub fn create_new(path: &Path) -> std::io::Result<File> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Replaces the file at `path` with `bytes` through `<path>.tmp` and a
/// rename, so that a reader sees all of it or none. A temp file that could
/// not be written in full (a full disk) is removed, not left behind as an
/// empty or partial file. `durable`: fsynced, file and directory, so that a
/// power loss too leaves the old or the new content.
pub fn replace(path: &Path, bytes: &[u8], durable: bool) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = create_new(&tmp)?;
    let written = file
        .write_all(bytes)
        .and_then(|()| if durable { file.sync_all() } else { Ok(()) })
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    if durable && let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The whole of a file in the state dir.
pub fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    options().read(true).open(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}
