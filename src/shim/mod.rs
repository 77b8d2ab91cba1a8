//! The shim: one small process per replica, between the supervisor and the
//! replica (forked from the zygote, see [`zygote`]).
//!
//! Why it exists (docs/design.md §3): a supervisor that is
//! killed must not take its children's output or exit status with it. The
//! shim owns exactly what would otherwise die with the supervisor:
//! - the read ends of the replica's stdout/stderr pipes (so the replica never
//!   gets SIGPIPE and no line is lost), and the log file they go to;
//! - the replica's exit status, written as an [`protocol::ExitRecord`] file;
//! - the replica's whole process tree: it is a child subreaper, so
//!   descendants that leave the process group are still its descendants, and
//!   it exits only once every one of them is gone. A restart can therefore
//!   never meet its predecessor's ghost on a port.
//!
//! It is single-threaded and blocking (poll over a self-pipe woken by its
//! signal handlers, and the replica's two output pipes): no tokio, no
//! threads, so it can be forked and stays small. Its signals are caught, not
//! blocked: a blocked mask would be inherited by the replica, which std
//! starts with `posix_spawn` (see `spawn`), while handlers are reset by exec.
//!
//! Requests come as signals: SIGTERM (or SIGINT/SIGHUP) = stop gracefully
//! (stop signal to the whole tree, SIGKILL after the stop timeout), SIGUSR1 =
//! kill the tree now, SIGUSR2 = give up the respawn leave (exit when the
//! replica ends, as without one), SIGWINCH = read the fencing order again
//! (see [`fence`]).

mod clone;
mod fence;
mod logfile;
pub mod protocol;
mod spawn;
pub mod zygote;

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, Flock, FlockArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::cgroup::Leaf;
use crate::procfs;

use logfile::{LogWriter, Stream};
use protocol::{ExitRecord, RunningRecord, ShimConfig, Status, TEE_FD, write_record};

/// How much of a pipe is read at once: small, as it is part of every
/// idle shim's memory, yet one syscall per 16 KiB keeps up with any replica.
const READ_CHUNK: usize = 16 * 1024;

/// While killing, the tree is swept again this often (new forks, slow exits).
const KILL_SWEEP: Duration = Duration::from_millis(50);

/// A record that could not be written (a full disk) is tried again this
/// often. Only a shim that owes one wakes up for it: an idle shim waits in
/// poll without a timeout.
const RETRY: Duration = Duration::from_secs(1);

enum Phase {
    Running,
    /// Stop signal sent; SIGKILL at the deadline.
    Stopping {
        deadline: Instant,
        /// The processes the stop signal was sent to, outside the group.
        signalled: HashSet<Pid>,
    },
    Killing,
}

/// The replica's process tree as the shim manages it: every process in its
/// cgroup leaf if it has one, else every descendant of the shim (it is their
/// subreaper); and the main process's exit status.
struct Tree<'l> {
    me: Pid,
    leaf: Option<&'l Leaf>,
    main: Pid,
    main_status: Option<WaitStatus>,
    stop_signal: Signal,
    stop_timeout: Duration,
    phase: Phase,
    /// The supervisor asked for the stop: what ends is not respawned.
    asked_to_stop: bool,
    /// SIGUSR2: the respawn leave is revoked.
    leave_revoked: bool,
    /// The leaf's OOM kills before this run (the leaf outlives respawns).
    oom_kills: u64,
}

impl<'l> Tree<'l> {
    fn new(config: &ShimConfig, main: u32, leaf: Option<&'l Leaf>) -> Tree<'l> {
        if let Some(leaf) = leaf {
            // Takes in the change the start made (`populated 1`), so that
            // poll does not wake the shim for it while the replica starts.
            leaf.populated();
        }
        Tree {
            me: Pid::this(),
            leaf,
            main: Pid::from_raw(main as i32),
            main_status: None,
            stop_signal: Signal::try_from(config.stop_signal).unwrap_or(Signal::SIGTERM),
            stop_timeout: Duration::from_millis(config.stop_timeout_ms),
            phase: Phase::Running,
            asked_to_stop: false,
            leave_revoked: false,
            oom_kills: oom_kills(leaf),
        }
    }

    /// Did the kernel's OOM killer kill in the leaf during this run?
    fn oom_killed(&self) -> bool {
        oom_kills(self.leaf) > self.oom_kills
    }

    /// Stop signal to every process of the replica; SIGKILL after the timeout.
    /// Called again while stopping, it sends the stop signal to processes
    /// of the tree it has not reached yet: those the main process left as it
    /// ended are re-parented to us meanwhile, and a walk of the tree during
    /// that move can miss them (they lived until stop_timeout).
    fn stop(&mut self) {
        match &mut self.phase {
            Phase::Running => {
                let signalled = self.signal_all(self.stop_signal);
                self.phase = Phase::Stopping {
                    deadline: Instant::now() + self.stop_timeout,
                    signalled,
                };
            }
            Phase::Stopping { signalled, .. } => {
                for pid in members(self.me, self.leaf) {
                    if signalled.insert(pid) {
                        let _ = nix::sys::signal::kill(pid, self.stop_signal);
                    }
                }
            }
            Phase::Killing => {}
        }
    }

    /// Fencing: the stop signal now, SIGKILL after `kill_after` at most
    /// (the fencing margin), whatever the stop timeout.
    fn stop_within(&mut self, kill_after: Duration) {
        if let Phase::Running = self.phase {
            self.stop();
            if let Phase::Stopping { deadline, .. } = &mut self.phase {
                *deadline = (*deadline).min(Instant::now() + kill_after);
            }
        }
    }

    /// SIGKILL to the tree: with a leaf, `cgroup.kill` (the kernel misses
    /// no fork in flight), once; without, a sweep now and at every tick.
    fn kill(&mut self) {
        self.phase = Phase::Killing;
        match self.leaf.map(Leaf::kill) {
            Some(Ok(())) => {}
            _ => {
                let _ = self.signal_all(Signal::SIGKILL);
            }
        }
    }

    /// The replica's process group first: the kernel lets no fork in flight
    /// escape a group signal, while a child forked during the scan of /proc
    /// would be missed by it (and live until stop_timeout). The group's id is
    /// the main process's pid, which cannot be reused before the shim reaps
    /// it. Then every process of the tree that left the group (one still
    /// in it had the signal once: a second can mean "stop now" to a program
    /// that counts them); returns the whole tree.
    fn signal_all(&self, signal: Signal) -> HashSet<Pid> {
        let group = self.main.as_raw() as u32;
        let grouped = self.main_status.is_none() && killpg(self.main, signal).is_ok();
        let tree: HashSet<Pid> = members(self.me, self.leaf).into_iter().collect();
        for &pid in &tree {
            if grouped && procfs::process_group(pid.as_raw() as u32) == Some(group) {
                continue;
            }
            let _ = nix::sys::signal::kill(pid, signal);
        }
        tree
    }

    fn on_signal(&mut self, signal: Signal) {
        match signal {
            Signal::SIGCHLD | protocol::FENCE_SIGNAL => {}
            Signal::SIGUSR2 => self.leave_revoked = true,
            Signal::SIGUSR1 => {
                self.asked_to_stop = true;
                self.kill();
            }
            _ => {
                self.asked_to_stop = true;
                self.stop();
            }
        }
    }

    /// Reaps whatever exited; true once no process of the replica is left.
    /// Called on every wake-up, not only on SIGCHLD, as signals coalesce.
    fn reap(&mut self) -> bool {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {
                    if self.main_status.is_some() {
                        // What the main process left behind is part of the
                        // replica and goes with it (systemd's
                        // KillMode=control-group).
                        self.stop();
                    }
                    return false;
                }
                Ok(status) if status.pid() == Some(self.main) => self.main_status = Some(status),
                Ok(_) | Err(Errno::EINTR) => {}
                // ECHILD: no child left, hence (as their subreaper) no
                // descendant either; no need to look through /proc. A leaf
                // is done only at `populated 0` (its cgroup.events wakes us).
                Err(_) => {
                    if self.main_status.is_none() {
                        return false;
                    }
                    if self.leaf.is_some_and(Leaf::populated) {
                        self.stop();
                        return false;
                    }
                    return true;
                }
            }
        }
    }

    /// Escalates a stop whose time is up, and keeps sweeping while killing
    /// (a process may fork between two sweeps).
    fn tick(&mut self) {
        if let Phase::Stopping { deadline, .. } = self.phase
            && Instant::now() >= deadline
        {
            self.kill();
        } else if let Phase::Killing = self.phase
            && self.leaf.is_none()
        {
            procfs::signal_descendants(self.me, Signal::SIGKILL);
        }
    }

    /// How long the stop may wait for the tree before acting again.
    fn wait(&self) -> Option<Duration> {
        match self.phase {
            Phase::Running => None,
            Phase::Stopping { deadline, .. } => {
                Some(deadline.saturating_duration_since(Instant::now()))
            }
            // cgroup.kill missed nothing; the leaf's events say when it is empty.
            Phase::Killing if self.leaf.is_some() => None,
            Phase::Killing => Some(KILL_SWEEP),
        }
    }

    /// The main process's exit code or signal.
    fn outcome(&self) -> (Option<i32>, Option<i32>) {
        match self.main_status {
            Some(WaitStatus::Exited(_, code)) => (Some(code), None),
            Some(WaitStatus::Signaled(_, sig, _)) => (None, Some(sig as i32)),
            _ => (None, None),
        }
    }

    fn record(&self, generation: u64) -> ExitRecord {
        let (code, signal) = self.outcome();
        ExitRecord {
            generation,
            pid: Some(self.main.as_raw() as u32),
            code,
            signal,
            spawn_error: None,
            oom: self.oom_killed(),
            at: SystemTime::now(),
        }
    }
}

/// `oom_kill` of the leaf's `memory.events` (0 without a memory controller).
fn oom_kills(leaf: Option<&Leaf>) -> u64 {
    leaf.and_then(Leaf::memory_events)
        .map_or(0, |events| events.oom_kill)
}

/// The processes of the replica: those in its leaf, else the shim's descendants.
fn members(shim: Pid, leaf: Option<&Leaf>) -> Vec<Pid> {
    match leaf {
        Some(leaf) => leaf.processes(),
        None => procfs::descendants(shim),
    }
}

/// The running record of the current incarnation, and when it is next
/// tried if it could not be written yet: a resuming supervisor recognises
/// the replica without it (by its instance lock and `/proc`), but its
/// generation and definition are only in the record.
struct Running<'c> {
    config: &'c ShimConfig,
    record: RunningRecord,
    retry_at: Option<Instant>,
}

impl Running<'_> {
    fn write(&mut self) {
        let path = &self.config.running_record;
        match write_record(&self.record, path) {
            Ok(()) if self.retry_at.take().is_some() => crate::say!(
                "supervise: {}: wrote {} after all",
                self.config.replica,
                path.display()
            ),
            Ok(()) => {}
            Err(e) => {
                if self.retry_at.is_none() {
                    crate::say!(
                        "supervise: {}: cannot write {}: {e}; retrying every {}s",
                        self.config.replica,
                        path.display(),
                        RETRY.as_secs()
                    );
                }
                self.retry_at = Some(Instant::now() + RETRY);
            }
        }
    }

    fn retry_if_due(&mut self) {
        if self.retry_at.is_some_and(|at| Instant::now() >= at) {
            self.write();
        }
    }

    fn wait(&self) -> Option<Duration> {
        self.retry_at
            .map(|at| at.saturating_duration_since(Instant::now()))
    }
}

/// The replica's stdout and stderr pipes, drained into its log.
struct Output<'t> {
    pipes: [Option<OwnedFd>; 2],
    log: LogWriter<'t>,
    /// Allocated at the first output: a quiet replica's shim does without.
    buf: Vec<u8>,
}

const STREAMS: [Stream; 2] = [Stream::Out, Stream::Err];

impl Output<'_> {
    /// Reads once from each pipe that poll reported ready (or closed).
    fn on_ready(&mut self, ready: &[bool]) {
        let open: Vec<usize> = (0..2).filter(|&i| self.pipes[i].is_some()).collect();
        for (slot, i) in open.into_iter().enumerate() {
            if ready.get(slot).copied().unwrap_or(false) {
                drain(
                    &mut self.pipes[i],
                    STREAMS[i],
                    &mut self.log,
                    &mut self.buf,
                    false,
                );
            }
        }
    }

    /// Every writer of this incarnation is gone: whatever is still in the
    /// pipes is its last output.
    fn finish(&mut self, replica: &str) {
        for (pipe, stream) in self.pipes.iter_mut().zip(STREAMS) {
            drain(pipe, stream, &mut self.log, &mut self.buf, true);
        }
        self.log.flush_partial();
        let dropped = std::mem::take(&mut self.log.dropped_lines);
        if dropped > 0 {
            crate::say!("supervise: {replica}: {dropped} log lines could not be written");
        }
    }
}

/// Runs the replica of `config` to its end; returns the shim's exit code.
fn run(config: ShimConfig) -> i32 {
    let signals = match watch_signals() {
        Ok(fd) => fd,
        Err(e) => {
            crate::say!(
                "supervise: {}: cannot set up signal handling: {e}",
                config.replica
            );
            return 1;
        }
    };
    // Without this, descendants that double-fork would be re-parented to init
    // and escape the stop.
    let _ = nix::sys::prctl::set_child_subreaper(true);

    let tee = config.tee_prefix.clone().and_then(|prefix| {
        // SAFETY: the supervisor passes the display pipe as fd 3 when it sets a tee prefix.
        let fd = unsafe { BorrowedFd::borrow_raw(TEE_FD) };
        // dup2 cleared close-on-exec; the display pipe is the shim's, not the replica's.
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).ok()?;
        fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).ok()?;
        Some((fd, prefix))
    });
    let mut log = LogWriter::open(config.log.clone(), tee);
    // Validated by `check`; a pattern that does not compile here is ignored.
    log.watch_for(
        config
            .ready_pattern
            .as_deref()
            .and_then(|p| regex::bytes::Regex::new(p).ok()),
    );

    // The leaf is made (or emptied of a killed predecessor's leftovers)
    // under the instance lock, before the replica starts.
    let started = claim(&config).and_then(|guard| {
        let leaf = config.cgroup.as_deref().map(Leaf::create).transpose()?;
        if let Some(leaf) = &leaf {
            leaf.limit(&config.limits)?;
        }
        match spawn::spawn(&config, leaf.as_ref()) {
            Ok(spawned) => Ok((guard, leaf, spawned)),
            Err(e) => {
                if let Some(leaf) = leaf {
                    leaf.remove();
                }
                Err(e)
            }
        }
    });
    let (_guard, leaf, (child, out, err)) = match started {
        Ok(started) => started,
        Err(error) => {
            log.note(&error);
            report(&Status::SpawnFailed {
                error: error.clone(),
            });
            let record = ExitRecord {
                generation: config.generation,
                pid: None,
                code: None,
                signal: None,
                spawn_error: Some(error),
                oom: false,
                at: SystemTime::now(),
            };
            return finish(&config, &record, &signals, false);
        }
    };
    // What identifies the shim is read once; each incarnation adds its own.
    let mut running = Running {
        config: &config,
        record: RunningRecord {
            generation: config.generation,
            shim_pid: std::process::id(),
            shim_start: procfs::start_time(std::process::id()).unwrap_or_default(),
            pid: child,
            pid_start: 0,
            boot_id: procfs::boot_id(),
            started_at: SystemTime::now(),
            respawns: config.respawn.is_some(),
            definition: Some(config.definition.clone()),
            cgroup: config.cgroup.clone(),
        },
        retry_at: None,
    };
    announce(
        &mut running,
        config.generation,
        child,
        &Status::Started { pid: child },
    );
    let mut fence = config.fence.as_ref().map(fence::Fence::new);
    // A fenced replica is said on it.
    if config.ready_pattern.is_none() && config.respawn.is_none() && fence.is_none() {
        close_status_pipe();
    }
    let mut tree = Tree::new(&config, child, leaf.as_ref());
    let mut output = Output {
        pipes: [out, err],
        log,
        buf: Vec::new(),
    };
    // What setting up took (the configuration, the command's environment,
    // the code that did it) goes back to the system.
    crate::pages::release_startup_pages();

    let mut generation = config.generation;
    let mut respawn = config.respawn.clone();
    loop {
        if let Err(code) =
            supervise_tree(&mut tree, &mut output, &mut running, &signals, &mut fence)
        {
            return code;
        }
        output.finish(&config.replica);
        if tree.leave_revoked {
            respawn = None;
        }
        let (code, signal) = tree.outcome();
        let oom = tree.oom_killed();
        if tree.asked_to_stop || !respawn.as_mut().is_some_and(|leave| leave.take(code)) {
            break;
        }
        match spawn::spawn(&config, leaf.as_ref()) {
            Ok((child, out, err)) => {
                generation += 1;
                announce(
                    &mut running,
                    generation,
                    child,
                    &Status::Respawned {
                        generation,
                        pid: child,
                        code,
                        signal,
                        oom,
                    },
                );
                tree = Tree::new(&config, child, leaf.as_ref());
                output.pipes = [out, err];
            }
            Err(error) => {
                // Ended as any end: the supervisor decides, and its own
                // start will say what is wrong.
                output.log.note(&error);
                break;
            }
        }
    }
    let (record, asked_to_stop) = (tree.record(generation), tree.asked_to_stop);
    // Empty (the tree is gone): removed before the exit record says so.
    if let Some(leaf) = leaf {
        leaf.remove();
    }
    finish(&config, &record, &signals, asked_to_stop)
}

/// Runs one incarnation of the replica: drains its output, passes on stop
/// requests, and returns once no process of it is left (Err: the shim's exit
/// code, when it cannot go on).
fn supervise_tree(
    tree: &mut Tree,
    output: &mut Output,
    running: &mut Running,
    signals: &Signals,
    fence: &mut Option<fence::Fence>,
) -> Result<(), i32> {
    loop {
        let mut fds = vec![PollFd::new(signals.wake.as_fd(), PollFlags::POLLIN)];
        if let Some(leaf) = tree.leaf {
            // Woken by `populated 0`: the end of a tree with no child of ours.
            fds.push(leaf.poll_fd());
        }
        let pipes = fds.len();
        for pipe in output.pipes.iter().flatten() {
            fds.push(PollFd::new(pipe.as_fd(), PollFlags::POLLIN));
        }
        let wait = [
            tree.wait(),
            running.wait(),
            fence.as_ref().and_then(|f| f.wait()),
        ]
        .into_iter()
        .flatten()
        .min();
        if let Err(e) = poll(&mut fds, poll_timeout(wait))
            && e != Errno::EINTR
        {
            crate::say!("supervise: {}: poll failed: {e}", running.config.replica);
            return Err(1);
        }
        let ready: Vec<bool> = fds.iter().map(|f| f.any().unwrap_or(false)).collect();
        drop(fds);
        if let Some(leaf) = tree.leaf
            && ready[1]
        {
            // Reading re-arms the notification; unread, poll would report
            // the same change again at once, and forever.
            leaf.populated();
        }

        // Not only when the self-pipe is ready: a signal that interrupted
        // poll leaves no readiness behind, and a stop or revoke that came
        // with the replica's death must be seen before it is respawned.
        for signal in signals.take() {
            if let (protocol::FENCE_SIGNAL, Some(fence)) = (signal, fence.as_mut()) {
                fence.reload();
            }
            tree.on_signal(signal);
        }
        if let Some(token) = fence.as_mut().and_then(|f| f.act_if_due(tree)) {
            report(&Status::Fenced { token });
        }
        let gone = tree.reap();
        output.on_ready(&ready[pipes..]);
        if std::mem::take(&mut output.log.ready) {
            report(&Status::Ready);
            close_status_pipe();
        }
        if gone {
            return Ok(());
        }
        tree.tick();
        running.retry_if_due();
    }
}

/// Poll's timeout for a wait (None: until something happens), rounded up so
/// that a deadline is never woken for just before it.
fn poll_timeout(wait: Option<Duration>) -> PollTimeout {
    wait.map_or(PollTimeout::NONE, |wait| {
        PollTimeout::try_from(wait.as_millis().min(i32::MAX as u128 - 1) as i32 + 1)
            .unwrap_or(PollTimeout::MAX)
    })
}

/// Records who runs now, for a resuming supervisor, then tells the running
/// one: in that order, so a supervisor killed the moment it heard of an
/// incarnation finds its record when it resumes (unless the disk is full:
/// then the record follows once it can be written).
fn announce(running: &mut Running, generation: u64, pid: u32, status: &Status) {
    running.record.generation = generation;
    running.record.pid = pid;
    running.record.pid_start = procfs::start_time(pid).unwrap_or_default();
    running.record.started_at = SystemTime::now();
    running.write();
    report(status);
}

/// Takes the replica's instance lock, held for the shim's lifetime: a second
/// shim for the same replica (say, from a new supervisor while an old one's
/// replicas still run) refuses to start instead of making a duplicate.
fn claim(config: &ShimConfig) -> Result<Flock<File>, String> {
    let file = crate::state_dir::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&config.lock)
        .map_err(|e| format!("cannot open {}: {e}", config.lock.display()))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(format!(
                "another instance of {} is still running (shim pid {})",
                config.replica,
                holder.trim()
            ));
        }
        Err((_, e)) => return Err(format!("cannot lock {}: {e}", config.lock.display())),
    };
    let _ = lock
        .set_len(0)
        .and_then(|_| write!(lock, "{}", std::process::id()));
    Ok(lock)
}

/// The signals the shim acts on.
pub(super) const WATCHED: [Signal; 7] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    protocol::FENCE_SIGNAL,
];

/// The shim's signals, caught: each handler sets its flag and writes a byte
/// to the self-pipe that the poll loop watches (signal-hook's handlers).
struct Signals {
    wake: OwnedFd,
    /// The write end, which the handlers use (by number) for the shim's life.
    _wake_writer: OwnedFd,
    flags: Vec<(Signal, Arc<AtomicBool>)>,
}

impl Signals {
    /// Waits up to `wait` for a request to stop (SIGTERM, SIGINT, SIGHUP,
    /// SIGUSR1), once the replica is gone.
    fn stop_requested_within(&self, wait: Duration) -> bool {
        let mut fds = [PollFd::new(self.wake.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, poll_timeout(Some(wait)));
        self.take().into_iter().any(|signal| {
            !matches!(
                signal,
                Signal::SIGCHLD | Signal::SIGUSR2 | protocol::FENCE_SIGNAL
            )
        })
    }

    /// The signals that came since the last call; empties the self-pipe.
    fn take(&self) -> Vec<Signal> {
        let mut buf = [0u8; 64];
        while matches!(nix::unistd::read(self.wake.as_fd(), &mut buf), Ok(n) if n > 0) {}
        self.flags
            .iter()
            .filter(|(_, flag)| flag.swap(false, Ordering::SeqCst))
            .map(|(signal, _)| *signal)
            .collect()
    }
}

/// Installs the shim's signal handlers, after making every other signal's
/// disposition the default (what the replica inherits).
fn watch_signals() -> std::io::Result<Signals> {
    spawn::default_dispositions();
    let (wake, writer) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    let mut flags = Vec::new();
    for signal in WATCHED {
        let flag = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal as i32, Arc::clone(&flag))?;
        signal_hook::low_level::pipe::register_raw(signal as i32, writer.as_raw_fd())?;
        flags.push((signal, flag));
    }
    Ok(Signals {
        wake,
        _wake_writer: writer,
        flags,
    })
}

/// Reads what is available from a pipe into the log; closes it at end of
/// stream. With `to_end`, keeps reading until the pipe is empty.
fn drain(
    pipe: &mut Option<OwnedFd>,
    stream: Stream,
    log: &mut LogWriter,
    buf: &mut Vec<u8>,
    to_end: bool,
) {
    let Some(fd) = pipe.as_ref() else { return };
    if buf.is_empty() {
        buf.resize(READ_CHUNK, 0);
    }
    if to_end {
        let _ = fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
    }
    loop {
        match nix::unistd::read(fd.as_fd(), buf) {
            Ok(0) => {
                *pipe = None;
                return;
            }
            Ok(n) => log.feed(stream, &buf[..n]),
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return,
            Err(_) => {
                *pipe = None;
                return;
            }
        }
        if !to_end {
            return;
        }
    }
}

/// Tells the supervisor, on the shim's stdout, how the start went (and
/// later, with a ready pattern, that the replica is ready). A supervisor that
/// died meanwhile makes the write fail (EPIPE, SIGPIPE is ignored): no harm.
fn report(status: &Status) {
    let mut line = serde_json::to_vec(status).unwrap_or_default();
    line.push(b'\n');
    let _ = std::io::stdout().write_all(&line);
    let _ = std::io::stdout().flush();
}

/// Lets go of the status pipe once nothing more will be said on it.
fn close_status_pipe() {
    if let Ok(null) = std::fs::File::open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(null.as_fd());
    }
}

/// Writes the exit record and lets go of the running record. An exit record
/// that cannot be written (a full disk) is kept and tried again until it
/// can be, holding the instance lock meanwhile, so the end is judged by how
/// it really went; a stop request (the supervisor's `down`, `stop`), before
/// or during the wait, ends it, as the end is then a stop whatever the
/// record would say.
fn finish(config: &ShimConfig, record: &ExitRecord, signals: &Signals, stopping: bool) -> i32 {
    let mut owed = false;
    let code = loop {
        match write_record(record, &config.exit_record) {
            Ok(()) => break 0,
            Err(e) if !owed => crate::say!(
                "supervise: {}: cannot write exit record {}: {e}; retrying every {}s",
                config.replica,
                config.exit_record.display(),
                RETRY.as_secs()
            ),
            Err(_) => {}
        }
        owed = true;
        if stopping || signals.stop_requested_within(RETRY) {
            crate::say!(
                "supervise: {}: asked to stop; exit record {} not written",
                config.replica,
                config.exit_record.display()
            );
            break 1;
        }
    };
    // Only after the exit is on record: a supervisor that looks in between
    // must find one or the other.
    let _ = std::fs::remove_file(&config.running_record);
    code
}
