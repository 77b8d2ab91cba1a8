//! The supervisor: one event loop that owns all state and reconciles the
//! replicas it wants against the replicas it observes.
//!
//! Facts come in as events (a shim reported its replica's pid, a shim was
//! reaped, a signal arrived, a timer fired); after each one, `reconcile`
//! looks at the whole state and acts: spawn what should run and may, stop
//! what should not run, and say when it next needs to look (a backoff or
//! shutdown deadline). There is no polling tick and no shared mutex: tasks
//! only do I/O and send messages to the loop.

mod checkpoint;
mod cluster;
mod desired;
mod display;
mod exits;
mod failover;
mod health;
mod journal;
mod launch;
mod memory;
mod notify;
mod plan;
mod replica;
mod requests;
pub mod restart;
mod resume;
#[cfg(test)]
mod testing;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::alerts::Alerts;
use crate::control::protocol::EventRecord;
use crate::control::server;
use crate::metrics::{self, Metrics};
use crate::procfs;
use crate::reaper::Reaper;
use crate::shim::protocol::Status;
use crate::shim::zygote::Zygote;
use crate::spec::{Probe, Spec};
use crate::state_dir::{LockError, StateDir};
use checkpoint::Checkpoint;
use desired::Desired;
use display::Display;
use journal::Journal;
use launch::Shim;
use plan::Action;
use replica::{AfterStop, Phase, Replica, ReplicaId};

/// How `supervise up` was asked to run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Stop everything once this service's replicas have all exited, and
    /// exit with its exit code.
    pub exit_with: Option<String>,
    /// Show replica output on stdout.
    pub show_output: bool,
    pub quiet: bool,
    /// Stdout and stderr are `<state_dir>/supervise.log` (`up -d`): rotate it.
    pub own_log: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Locked(#[from] LockError),
    #[error("{0}")]
    Setup(String),
}

/// How long an exiting supervisor waits for alerts still being delivered.
const ALERT_FLUSH: Duration = Duration::from_secs(2);

/// Exit code of a forced shutdown (a second Ctrl-C), as a shell reports SIGINT.
const FORCED_EXIT: i32 = 130;

/// The event of an unreadable checkpoint that was moved aside at start.
pub const CHECKPOINT_SET_ASIDE: &str = "checkpoint_set_aside";
/// The event of a shutdown begun (a signal, `down`, the end of --exit-with).
pub const SHUTDOWN: &str = "shutdown";

/// Runs the supervisor until it is shut down; returns the process exit code.
pub async fn run(spec: Spec, options: Options) -> Result<i32, RunError> {
    keep_inherited_descriptors();
    let dir = StateDir::new(spec.supervisor.state_dir.clone());
    let _lock = dir.lock()?;
    let setup = |what: &str, e: std::io::Error| RunError::Setup(format!("cannot {what}: {e}"));
    let (tx, mut reports) = mpsc::unbounded_channel();
    // Signal streams exist before the first spawn, so no SIGCHLD is missed.
    let mut sigchld = signal(SignalKind::child()).map_err(|e| setup("watch SIGCHLD", e))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| setup("watch SIGINT", e))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| setup("watch SIGTERM", e))?;
    let mut sighup = signal(SignalKind::hangup()).map_err(|e| setup("watch SIGHUP", e))?;
    catch_stray_signals(&tx).map_err(|e| setup("watch signals", e))?;
    // Orphaned descendants of a shim that was killed come to us instead of
    // init, so they are reaped here (and as PID 1 in a container, all are).
    let _ = nix::sys::prctl::set_child_subreaper(true);

    let mut set_aside = None;
    let checkpoint = match Checkpoint::load(&dir.checkpoint()) {
        Ok(checkpoint) => checkpoint,
        Err(e) => {
            // Set aside, never overwritten; liveness does not depend on it,
            // so resuming without it still adopts and never duplicates.
            let aside = checkpoint::set_aside(&dir.checkpoint())
                .map(|p| format!("moved to {}", p.display()))
                .unwrap_or_else(|e| format!("could not be moved aside: {e}"));
            set_aside = Some(format!(
                "{e}; {aside}; resuming from the running replicas alone"
            ));
            None
        }
    };
    let (calls_tx, mut calls) = mpsc::unbounded_channel();
    server::listen(&dir.socket(), calls_tx.clone())
        .map_err(|e| setup("open the control socket", e))?;
    let width = spec
        .services
        .iter()
        .map(|s| s.name.len() + 1 + s.replicas.max(1).saturating_sub(1).to_string().len())
        .chain(["supervise".len()])
        .max()
        .unwrap_or_default();
    let mut display = Display::new(width, options.quiet, options.show_output)
        .map_err(|e| setup("set up the output pipe", e))?;
    if options.own_log {
        let settings = &spec.supervisor;
        display.rotate_own_log(
            dir.supervisor_log(),
            settings.log_max_size,
            settings.log_keep,
        );
    }
    let metrics = match spec.supervisor.metrics {
        Some(addr) => {
            let m = Arc::new(Metrics::default());
            metrics::serve(addr, Arc::clone(&m), calls_tx)
                .map_err(|e| setup(&format!("serve metrics on {addr}"), e))?;
            Some(m)
        }
        None => None,
    };
    let notify_socket =
        notify::socket_name(dir.root()).map_err(|e| setup("name the notify socket", e))?;
    let mut sup = Supervisor::new(spec, dir, options, display, tx, metrics, notify_socket);
    sup.join_cluster().map_err(RunError::Setup)?;
    if wants_notify(&sup.spec) {
        sup.listen_for_notify()
            .map_err(|e| setup("open the notify socket", e))?;
    }
    if let Some(detail) = set_aside {
        sup.display.warning_if_quiet(&detail);
        // An event, so that `up -d` and `events` can show it too.
        sup.record(CHECKPOINT_SET_ASIDE, None, None, None, detail);
    }
    sup.resume(checkpoint);
    sup.announce();
    // Reading and validating the spec is done with for this run.
    crate::pages::release_startup_pages();

    loop {
        let now = Instant::now();
        sup.check_memory(now);
        let wake = sup.reconcile(now);
        if sup.finished() {
            sup.clean_shutdown = true;
            sup.save_checkpoint();
            break;
        }
        let wake = earliest(wake, sup.checkpoint_due(now));
        let wake = earliest(wake, sup.memory_check_due());
        let timer = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sigchld.recv() => sup.reap(),
            _ = sigint.recv() => sup.on_stop_signal("SIGINT"),
            _ = sigterm.recv() => sup.on_stop_signal("SIGTERM"),
            _ = sighup.recv() => sup.on_hangup(),
            Some(message) = reports.recv() => sup.on_message(message),
            Some(call) = calls.recv() => {
                sup.on_call(call);
                // The connection's task writes the answer now, not after
                // this turn's reconciling and checkpoint: the client waits
                // for it, the rest does not. A next request is still read
                // by this loop only after them.
                tokio::task::yield_now().await;
            }
            _ = timer => {}
        }
        // Whatever happened may matter to the checkpoint (an unchanged one
        // is not rewritten) and to the metrics.
        sup.dirty = true;
        if let Some(metrics) = &sup.metrics {
            // The counts as counted: the metrics are this supervisor's own
            // counters, and are updated after events, not after the
            // batched checkpoint write.
            metrics.update(&sup.status_report(|r| r.restarts), |service, index| {
                let id = ReplicaId {
                    service: service.to_string(),
                    index,
                };
                sup.replicas.get(&id).and_then(|r| sup.usage_source(r))
            });
        }
    }
    let code = sup.exit_code();
    for written in std::mem::take(&mut sup.farewells) {
        let _ = tokio::time::timeout(Duration::from_secs(1), written).await;
    }
    // The last events (the `failed` that ended an --exit-with run) still
    // reach their alerts, within a bound, unless the user forced the exit;
    // alert commands are reaped meanwhile.
    if !sup.shutdown.as_ref().is_some_and(|s| s.forced) {
        let flushed = sup.alerts.finish();
        let deadline = tokio::time::sleep(ALERT_FLUSH);
        tokio::pin!(flushed, deadline);
        loop {
            tokio::select! {
                _ = &mut flushed => break,
                _ = sigchld.recv() => sup.reap(),
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
                _ = &mut deadline => break,
            }
        }
    }
    sup.leave_cluster().await;
    sup.display.event(&format!("exiting with code {code}"));
    let _ = std::fs::remove_file(sup.dir.socket());
    if let Some(dir) = &sup.cgroup {
        // Empty unless replicas were left running (a forced exit).
        let _ = std::fs::remove_dir(dir);
    }
    // The zygote holds the display pipe until it sees its socket close.
    drop(sup.zygote.take());
    sup.display.finish().await;
    Ok(code)
}

/// The cgroup of this state dir's replicas (see [`crate::cgroup`]), unless
/// there is no writable cgroup v2 here or `SUPERVISE_CGROUP=off`.
fn cgroup_instance(state_dir: &std::path::Path) -> Option<std::path::PathBuf> {
    if crate::cgroup::switched_off() {
        return None;
    }
    crate::cgroup::instance(state_dir)
        .inspect_err(|e| tracing::debug!("replicas get no cgroup: {e}"))
        .ok()
}

/// Descriptors the supervisor inherited beyond stdin, stdout and stderr (a
/// caller's `exec 7</root/secret`, a stray pipe) are made close-on-exec, so
/// nothing it starts gets them: not the zygote and through it the shims and
/// replicas (whatever user they run as), not health checks, hooks or alert
/// commands. What the supervisor itself opens is close-on-exec already.
fn keep_inherited_descriptors() {
    // SAFETY: only descriptor flags change; nothing is closed. (Linux 5.11
    // and later, as `up -d` already requires.)
    unsafe { nix::libc::close_range(3, u32::MAX, nix::libc::CLOSE_RANGE_CLOEXEC as i32) };
}

/// Signals that would end the supervisor by default but ask nothing of it
/// (SIGUSR1/2, timers, SIGPWR, resource limits, real-time signals): each is
/// logged and otherwise ignored, so a stray `kill -USR1` does not leave the
/// replicas unsupervised. Not here: SIGPIPE, which Rust's runtime ignores;
/// SIGQUIT, whose core dump is asked for on purpose; faults (SIGSEGV...).
/// Handlers, unlike ignored dispositions, are not inherited across exec.
fn catch_stray_signals(events: &mpsc::UnboundedSender<Message>) -> std::io::Result<()> {
    use Signal::*;
    let named = [
        SIGUSR1, SIGUSR2, SIGALRM, SIGVTALRM, SIGPROF, SIGIO, SIGPWR, SIGSTKFLT, SIGXCPU, SIGXFSZ,
    ]
    .map(|s| s as i32);
    let realtime = nix::libc::SIGRTMIN()..=nix::libc::SIGRTMAX();
    for number in named.into_iter().chain(realtime) {
        let mut stream = signal(SignalKind::from_raw(number))?;
        let events = events.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if events.send(Message::Signal(number)).is_err() {
                    return;
                }
            }
        });
    }
    Ok(())
}

/// Does `spec` have a service that reports over the notify socket?
fn wants_notify(spec: &Spec) -> bool {
    spec.services
        .iter()
        .any(|s| matches!(s.health.as_ref().map(|h| &h.probe), Some(Probe::Notify)))
}

/// Lifts the soft limit on open files to the hard one: the supervisor holds
/// two descriptors per replica (the shim's pidfd and its status
/// pipe), and 1024, a common default, would stop it near 500 replicas.
/// Returns the limit as it was, for the zygote to restore in what it starts:
/// programs that still use select() must not see descriptors past 1024.
fn raise_open_files_limit() -> Option<(u64, u64)> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        Some((soft, hard))
    } else {
        None
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// What the I/O tasks tell the loop.
enum Message {
    Status(Report),
    Probe(health::ProbeResult),
    /// A datagram on the notify socket, with its sender's pid.
    Notify {
        pid: u32,
        text: String,
    },
    /// A shim (not our child: its exit comes from a pidfd) is gone.
    ShimGone(Pid),
    /// A signal of [`catch_stray_signals`], by number.
    Signal(i32),
    Cluster(cluster::News),
}

/// What a shim's status pipe said, tagged with the incarnation it is about.
struct Report {
    id: ReplicaId,
    generation: u64,
    status: Option<Status>,
}

struct Shutdown {
    deadline: Instant,
    forced: bool,
    exit_code: i32,
}

struct Supervisor {
    spec: Spec,
    dir: StateDir,
    /// Scale and stop requests, persisted.
    desired: Desired,
    /// Something changed since the last checkpoint write.
    dirty: bool,
    /// Every replica has been stopped and the supervisor is exiting.
    clean_shutdown: bool,
    reaper: Reaper,
    alerts: Alerts,
    /// Set when `[supervisor] metrics` is.
    metrics: Option<Arc<Metrics>>,
    /// `down` replies still being written: exiting waits (briefly) for them.
    farewells: Vec<tokio::sync::oneshot::Receiver<()>>,
    last_save: Option<Instant>,
    /// The bytes last written, to skip writes that would change nothing.
    saved: Vec<u8>,
    /// Replicas whose end was judged since the last checkpoint written, with
    /// the incarnation that ended: their records (the exit record, and the
    /// running record a killed shim leaves) are removed once a checkpoint
    /// has the end, so that until then a supervisor resuming after a crash
    /// still finds them (and does not start again a replica that had
    /// ended). One entry per replica however long the checkpoint cannot be
    /// written.
    judged_records: HashMap<String, u64>,
    /// Forks the shims; started with the first replica.
    zygote: Option<Zygote>,
    /// The open-files limit we started with, which the zygote restores.
    open_files: Option<(u64, u64)>,
    options: Options,
    display: Display,
    journal: Journal,
    started_at: SystemTime,
    replicas: BTreeMap<ReplicaId, Replica>,
    /// Live shims, by pid.
    shims: HashMap<Pid, Shim>,
    shutdown: Option<Shutdown>,
    reports: mpsc::UnboundedSender<Message>,
    /// `NOTIFY_SOCKET` of notify services (see `notify`).
    notify_socket: String,
    /// The notify socket is bound: from the start, or from the first reload
    /// that brought a notify service.
    notify_listening: bool,
    /// The cgroup under which each replica gets its leaf (None: no cgroups).
    cgroup: Option<std::path::PathBuf>,
    /// The previous CPU reading of each replica, for `status`'s percentage.
    cpu_percent: crate::usage::CpuPercent<ReplicaId>,
    /// The open usage files of each running replica's leaf, for `status`.
    sampler: crate::usage::Sampler<ReplicaId>,
    /// The leaves have a memory controller: `limits.memory` is the
    /// kernel's to enforce, not ours to sample (see `memory`).
    kernel_memory: bool,
    /// When sampled memory limits were last checked.
    memory_checked: Instant,
    /// Cluster-scope failover (see `cluster`).
    cluster: Option<cluster::Cluster>,
}

impl Supervisor {
    fn new(
        spec: Spec,
        dir: StateDir,
        options: Options,
        display: Display,
        reports: mpsc::UnboundedSender<Message>,
        metrics: Option<Arc<Metrics>>,
        notify_socket: String,
    ) -> Supervisor {
        let cgroup = cgroup_instance(dir.root());
        let reaper = Reaper::default();
        let alerts = Alerts::start(&spec, reaper.clone());
        Supervisor {
            spec,
            dir,
            desired: Desired::default(),
            dirty: true,
            clean_shutdown: false,
            farewells: Vec::new(),
            alerts,
            metrics,
            reaper,
            last_save: None,
            saved: Vec::new(),
            judged_records: HashMap::new(),
            zygote: None,
            open_files: raise_open_files_limit(),
            options,
            display,
            journal: Journal::new(),
            started_at: SystemTime::now(),
            replicas: BTreeMap::new(),
            shims: HashMap::new(),
            shutdown: None,
            reports,
            notify_socket,
            notify_listening: false,
            kernel_memory: cgroup.as_deref().is_some_and(|dir| {
                crate::cgroup::leaf_controllers(dir)
                    .iter()
                    .any(|c| c == "memory")
            }),
            cgroup,
            cpu_percent: Default::default(),
            sampler: Default::default(),
            memory_checked: Instant::now(),
            cluster: None,
        }
    }

    /// Where the usage of `replica` is read, while it has processes.
    fn usage_source(&self, replica: &Replica) -> Option<crate::usage::Source> {
        let shim = replica.phase.shim()?;
        Some(match self.leaf(&replica.id.to_string()) {
            Some(path) => crate::usage::Source::Leaf {
                path,
                memory_controller: self.kernel_memory,
            },
            None => crate::usage::Source::Shim(shim),
        })
    }

    /// Replica `name`'s cgroup leaf, when replicas get one.
    fn leaf(&self, name: &str) -> Option<std::path::PathBuf> {
        self.cgroup.as_ref().map(|dir| dir.join(name))
    }

    /// Binds the notify socket, unless it is bound already.
    fn listen_for_notify(&mut self) -> std::io::Result<()> {
        if !self.notify_listening {
            notify::listen(&self.notify_socket, self.reports.clone())?;
            self.notify_listening = true;
        }
        Ok(())
    }

    /// Creates the replicas the desired counts call for that do not exist
    /// yet, carrying over `stop` marks.
    fn ensure_replicas(&mut self) {
        for service in &self.spec.services {
            for index in 0..self.desired.replicas(service) {
                let id = ReplicaId {
                    service: service.name.clone(),
                    index,
                };
                if !self.replicas.contains_key(&id) {
                    let mut replica = Replica::new(id.clone());
                    replica.stop_requested = self.desired.stopped.contains(&id.to_string());
                    self.replicas.insert(id, replica);
                }
            }
        }
    }

    /// Records an event: shown as a line, kept for `events`, streamed to
    /// followers.
    fn emit(&mut self, event: &str, id: Option<&ReplicaId>, pid: Option<u32>, detail: String) {
        self.record(
            event,
            id.map(|i| i.service.as_str()),
            id.map(|i| i.index),
            pid,
            detail,
        );
    }

    /// An event about a whole service (`scaled`).
    fn emit_for_service(&mut self, event: &str, service: &str, detail: String) {
        self.record(event, Some(service), None, None, detail);
    }

    fn record(
        &mut self,
        event: &str,
        service: Option<&str>,
        replica: Option<u32>,
        pid: Option<u32>,
        detail: String,
    ) {
        self.display.event(&detail);
        let record = EventRecord {
            at: journal::rfc3339(SystemTime::now()),
            event: event.to_string(),
            service: service.map(str::to_string),
            replica,
            pid,
            detail,
        };
        self.alerts.on_event(&record);
        if let Some(metrics) = &self.metrics {
            metrics.on_event(&record);
        }
        self.journal.push(record);
    }

    fn announce(&self) {
        self.display.event(&format!(
            "supervising {} services, {} replicas (pid {}, state dir {})",
            self.spec.services.len(),
            self.replicas.len(),
            std::process::id(),
            self.dir.root().display()
        ));
    }

    fn replicas_of<'a>(&'a self, service: &'a str) -> impl Iterator<Item = &'a Replica> + 'a {
        replica::of_service(&self.replicas, service)
    }

    /// The level-triggered heart: plan what closes the difference between
    /// what should be and what is (see `plan`), then carry it out. Returns
    /// when it next needs to run without an event.
    fn reconcile(&mut self, now: Instant) -> Option<Instant> {
        if self.shutdown.is_none() {
            self.ensure_replicas();
        }
        self.check_lease();
        let catches = |pid, signal| procfs::survives(pid, signal);
        let cluster = self.cluster.as_ref();
        let standing = |service: &str| {
            match self.spec.service(service).and_then(|s| s.failover.as_ref()) {
                // Without an etcd client (it could not be set up) nothing
                // is ever elected.
                Some(f) if f.is_cluster() => {
                    cluster.map_or(cluster::Standing::Wait, |c| c.standing(service))
                }
                _ => cluster::Standing::Local,
            }
        };
        let plan = plan::plan(
            &plan::View {
                services: &self.spec.services,
                desired: &self.desired,
                replicas: &self.replicas,
                shutdown: self.shutdown.as_ref(),
                catches: &catches,
                standing: &standing,
            },
            now,
        );
        for action in plan.actions {
            self.act(action, now);
        }
        earliest(plan.wake, self.cluster.as_ref().and_then(|c| c.wake()))
    }

    /// Carries out one planned action.
    fn act(&mut self, action: Action, now: Instant) {
        match action {
            Action::Stop { id, then } => self.stop_replica(&id, then),
            Action::Settle(id) => self.set_phase(&id, Phase::Stopped),
            Action::Spawn { id, position, role } => {
                // Started again, but on request (`restart`, a reload) or
                // after a resume: told, not counted.
                if self.replicas[&id].restarts > 0 {
                    self.tell_restarting(&id);
                }
                self.spawn(&id, position, role, now);
            }
            Action::Restart { id, position, role } => {
                self.count_restart(&id);
                self.spawn(&id, position, role, now);
            }
            Action::Fail { id, reason } => {
                self.emit("failed", Some(&id), None, format!("{id} failed: {reason}"));
                self.set_phase(&id, Phase::Failed);
                self.check_exit_with(&id.service);
            }
            Action::Demote(id) => self.demote(&id),
            Action::Promote(id) => self.promote(&id),
            Action::Campaign(service) => self.campaign(&service),
            Action::Resign(service) => self.resign(&service, "no standby is fit to take over"),
            Action::PassOver { id, signal } => self.pass_over(&id, signal, now),
            Action::Overdue(id) => self.watchdog_overdue(&id),
            Action::Kill => {
                let detail = format!(
                    "shutdown_timeout ({}) reached; killing what is left",
                    humantime::format_duration(self.spec.supervisor.shutdown_timeout)
                );
                self.emit("killed", None, None, detail);
                self.force();
            }
        }
    }

    /// Takes a replica down: a live one is asked to stop (its shim stops the
    /// whole tree), one without processes goes straight to what follows.
    fn stop_replica(&mut self, id: &ReplicaId, then: AfterStop) {
        let replica = self.replica_mut(id);
        if let Phase::Stopping { then: next, .. } = &mut replica.phase {
            // Already on its way down: only what follows may change.
            *next = then;
            return;
        }
        let (shim, pid, run) = match std::mem::replace(&mut replica.phase, Phase::Pending) {
            Phase::Starting { shim, run, .. } => (shim, None, run),
            Phase::Running { shim, pid, run, .. } => (shim, Some(pid), run),
            phase => {
                replica.phase = phase;
                self.after_stop(id, then);
                return;
            }
        };
        replica.phase = Phase::Stopping {
            shim,
            pid,
            then,
            run,
        };
        // An active on its way down is active no more: a standby can take
        // over now, not once this one is gone.
        self.demote(id);
        let shown = pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
        self.emit("stopping", Some(id), pid, format!("stopping {id}{shown}"));
        // The shim sends the stop signal to the whole tree and escalates to
        // SIGKILL after stop_timeout.
        self.signal_shim(shim, Signal::SIGTERM);
    }

    fn after_stop(&mut self, id: &ReplicaId, then: AfterStop) {
        match then {
            AfterStop::Stay => {
                if !matches!(self.replicas[id].phase, Phase::Exited | Phase::Failed) {
                    self.set_phase(id, Phase::Stopped);
                }
            }
            AfterStop::Start | AfterStop::Judge(_) => {
                let replica = self.replica_mut(id);
                replica.phase = Phase::Pending;
                replica.history = Default::default();
            }
            AfterStop::Remove => {
                self.replicas.remove(id);
            }
        }
    }

    fn finished(&self) -> bool {
        self.shutdown.is_some() && self.shims.is_empty()
    }

    fn exit_code(&self) -> i32 {
        self.shutdown.as_ref().map_or(0, |s| s.exit_code)
    }

    fn begin_shutdown(&mut self, why: &str, exit_code: i32, timeout: Option<Duration>) {
        if self.shutdown.is_some() {
            return;
        }
        self.emit(
            SHUTDOWN,
            None,
            None,
            format!("{why}; stopping all replicas"),
        );
        let timeout = timeout.unwrap_or(self.spec.supervisor.shutdown_timeout);
        self.shutdown = Some(Shutdown {
            deadline: Instant::now() + timeout,
            forced: false,
            exit_code,
        });
    }

    fn on_stop_signal(&mut self, name: &str) {
        if self.shutdown.is_none() {
            self.begin_shutdown(&format!("received {name}"), 0, None);
        } else {
            let detail = format!("received {name} again; killing all replicas now");
            self.emit("killed", None, None, detail);
            self.force();
        }
    }

    /// SIGHUP reloads the spec file, as `supervise reload` does (the
    /// convention of nginx and sshd); a rejected spec changes nothing.
    fn on_hangup(&mut self) {
        if self.shutdown.is_some() {
            self.display
                .event("received SIGHUP while stopping; not reloading");
            return;
        }
        self.display.event(&format!(
            "received SIGHUP; reloading {}",
            self.spec.path.display()
        ));
        if let Some(error) = self.reload(None, false).error {
            self.display.event(&error);
        }
    }

    /// Every shim kills its tree with SIGKILL at once.
    fn force(&mut self) {
        let shims: Vec<Pid> = self.shims.keys().copied().collect();
        for shim in shims {
            self.signal_shim(shim, Signal::SIGUSR1);
        }
        if let Some(s) = self.shutdown.as_mut() {
            s.forced = true;
            s.exit_code = FORCED_EXIT;
        }
    }

    fn replica_mut(&mut self, id: &ReplicaId) -> &mut Replica {
        self.replicas
            .get_mut(id)
            .expect("replica ids come from the map")
    }

    fn set_phase(&mut self, id: &ReplicaId, phase: Phase) {
        self.replica_mut(id).phase = phase;
    }

    fn on_message(&mut self, message: Message) {
        match message {
            Message::Status(report) => self.on_report(report),
            Message::Probe(result) => self.on_probe(result),
            Message::Notify { pid, text } => self.on_notify(pid, &text),
            Message::Cluster(news) => self.on_cluster(news),
            Message::ShimGone(shim) => {
                if let Some(Shim { id, .. }) = self.shims.remove(&shim) {
                    self.display.unfollow(&id.to_string());
                    self.on_shim_exit(&id);
                }
            }
            Message::Signal(number) => {
                let name = Signal::try_from(number).map_or_else(
                    |_| format!("SIGRTMIN+{}", number - nix::libc::SIGRTMIN()),
                    |s| s.as_str().to_string(),
                );
                self.display.event(&format!(
                    "received {name}; ignored (SIGTERM or SIGINT stop supervise, SIGHUP reloads the spec)"
                ));
            }
        }
    }

    fn on_report(&mut self, report: Report) {
        let Some(replica) = self.replicas.get_mut(&report.id) else {
            return;
        };
        // A respawn says which incarnation it started; other lines are about
        // the one the shim was started for.
        let current = match &report.status {
            Some(Status::Respawned { generation, .. }) => *generation == replica.generation + 1,
            _ => replica.generation == report.generation,
        };
        if !current {
            return;
        }
        match (report.status, &replica.phase) {
            (
                Some(Status::Respawned {
                    generation,
                    pid,
                    code,
                    signal,
                    oom,
                }),
                phase,
            ) => {
                if let Some(shim) = phase.shim() {
                    let outcome = match oom {
                        true => restart::Ending::Oom,
                        false => restart::Ending::ended(code, signal),
                    };
                    self.on_respawned(&report.id, shim, generation, pid, outcome);
                }
            }
            (Some(Status::Started { pid }), Phase::Starting { .. }) => {
                self.began(&report.id, pid);
            }
            (Some(Status::Ready), Phase::Running { .. }) => self.mark_healthy(&report.id),
            (Some(Status::Started { pid }), Phase::Stopping { .. }) => {
                // Asked to stop before its start was reported: keep the pid for status.
                if let Phase::Stopping { pid: shown, .. } = &mut replica.phase {
                    *shown = Some(pid);
                }
            }
            (Some(Status::Fenced { token }), _) => self.shim_fenced(&report.id, token),
            (Some(Status::SpawnFailed { error }), _) => {
                let detail = format!("{} could not be started: {error}", report.id);
                self.emit("spawn_failed", Some(&report.id), None, detail);
            }
            // The shim's exit is what settles the replica; it is reaped separately.
            _ => {}
        }
    }
}
