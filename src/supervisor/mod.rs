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
mod desired;
mod display;
mod failover;
mod health;
mod journal;
mod launch;
mod notify;
mod replica;
mod requests;
pub mod restart;
mod resume;

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::io::AsyncBufReadExt;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::alerts::Alerts;
use crate::control::protocol::EventRecord;
use crate::control::server;
use crate::exit;
use crate::metrics::{self, Metrics};
use crate::procfs;
use crate::reaper::Reaper;
use crate::shim::protocol::{ExitRecord, LogConfig, ShimConfig, Status, read_record};
use crate::spec::{Condition, Probe, Service, Spec};
use crate::state_dir::{LockError, StateDir};
use checkpoint::Checkpoint;
use desired::Desired;
use display::Display;
use journal::Journal;
use replica::{AfterStop, Health, Phase, Replica, ReplicaId};
use restart::{Decision, Outcome};

/// How `supervise up` was asked to run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Stop everything once this service's replicas have all exited, and
    /// exit with its exit code.
    pub exit_with: Option<String>,
    /// Show replica output on stdout.
    pub show_output: bool,
    pub quiet: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Locked(#[from] LockError),
    #[error("{0}")]
    Setup(String),
}

/// Exit code of a forced shutdown (a second Ctrl-C), as a shell reports SIGINT.
const FORCED_EXIT: i32 = 130;

/// Runs the supervisor until it is shut down; returns the process exit code.
pub async fn run(spec: Spec, options: Options) -> Result<i32, RunError> {
    let dir = StateDir::new(spec.supervisor.state_dir.clone());
    let _lock = dir.lock()?;
    let setup = |what: &str, e: std::io::Error| RunError::Setup(format!("cannot {what}: {e}"));
    // Signal streams exist before the first spawn, so no SIGCHLD is missed.
    let mut sigchld = signal(SignalKind::child()).map_err(|e| setup("watch SIGCHLD", e))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| setup("watch SIGINT", e))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| setup("watch SIGTERM", e))?;
    // Orphaned descendants of a shim that was killed come to us instead of
    // init, so they are reaped here (and as PID 1 in a container, all are).
    let _ = nix::sys::prctl::set_child_subreaper(true);

    let checkpoint = match Checkpoint::load(&dir.checkpoint()) {
        Ok(checkpoint) => checkpoint,
        Err(e) => {
            // Set aside, never overwritten; liveness does not depend on it,
            // so resuming without it still adopts and never duplicates.
            let aside = checkpoint::set_aside(&dir.checkpoint())
                .map(|p| format!("moved to {}", p.display()))
                .unwrap_or_else(|e| format!("could not be moved aside: {e}"));
            eprintln!("supervise: {e}; {aside}; resuming from the running replicas alone");
            None
        }
    };
    let (tx, mut reports) = mpsc::unbounded_channel();
    let (calls_tx, mut calls) = mpsc::unbounded_channel();
    server::listen(&dir.socket(), calls_tx).map_err(|e| setup("open the control socket", e))?;
    let width = spec
        .services
        .iter()
        .map(|s| s.name.len() + 1 + s.replicas.max(1).saturating_sub(1).to_string().len())
        .chain(["supervise".len()])
        .max()
        .unwrap_or_default();
    let display = Display::new(width, options.quiet, options.show_output)
        .map_err(|e| setup("set up the output pipe", e))?;
    let metrics = match spec.supervisor.metrics {
        Some(addr) => {
            let m = Arc::new(Metrics::default());
            metrics::serve(addr, Arc::clone(&m))
                .map_err(|e| setup(&format!("serve metrics on {addr}"), e))?;
            Some(m)
        }
        None => None,
    };
    if spec
        .services
        .iter()
        .any(|s| matches!(s.health.as_ref().map(|h| &h.probe), Some(Probe::Notify)))
    {
        notify::listen(&dir.notify_socket(), tx.clone())
            .map_err(|e| setup("open the notify socket", e))?;
    }
    let mut sup = Supervisor::new(spec, dir, options, display, tx, metrics);
    sup.resume(checkpoint);
    sup.announce();

    loop {
        let now = Instant::now();
        let wake = sup.reconcile(now);
        if sup.finished() {
            sup.clean_shutdown = true;
            sup.save_checkpoint();
            break;
        }
        let wake = earliest(wake, sup.checkpoint_due(now));
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
            Some(message) = reports.recv() => sup.on_message(message),
            Some(call) = calls.recv() => sup.on_call(call),
            _ = timer => {}
        }
        // Whatever happened may matter to the checkpoint (an unchanged one
        // is not rewritten) and to the metrics.
        sup.dirty = true;
        if let Some(metrics) = &sup.metrics {
            metrics.update(&sup.status_report());
        }
    }
    let code = sup.exit_code();
    for written in std::mem::take(&mut sup.farewells) {
        let _ = tokio::time::timeout(Duration::from_secs(1), written).await;
    }
    sup.display.event(&format!("exiting with code {code}"));
    let _ = std::fs::remove_file(sup.dir.socket());
    sup.display.finish().await;
    Ok(code)
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
    /// An adopted shim (not our child: its exit comes from a pidfd) is gone.
    ShimGone(Pid),
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

/// Checkpoint writes are batched: at most one per this interval, so a
/// restart storm is not an fsync storm.
const CHECKPOINT_BATCH: Duration = Duration::from_millis(20);

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
    /// Pidfds of adopted shims (not our children), for signals without a
    /// pid-reuse race.
    pidfds: HashMap<Pid, OwnedFd>,
    options: Options,
    display: Display,
    journal: Journal,
    started_at: SystemTime,
    replicas: BTreeMap<ReplicaId, Replica>,
    /// Live shims, by pid: the reaper's way back to a replica.
    shims: HashMap<Pid, ReplicaId>,
    shutdown: Option<Shutdown>,
    reports: mpsc::UnboundedSender<Message>,
}

/// Can a service start, given the state of what it depends on?
enum Readiness {
    Ready,
    Waiting,
    Blocked(String),
}

impl Supervisor {
    fn new(
        spec: Spec,
        dir: StateDir,
        options: Options,
        display: Display,
        reports: mpsc::UnboundedSender<Message>,
        metrics: Option<Arc<Metrics>>,
    ) -> Supervisor {
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
            pidfds: HashMap::new(),
            options,
            display,
            journal: Journal::new(),
            started_at: SystemTime::now(),
            replicas: BTreeMap::new(),
            shims: HashMap::new(),
            shutdown: None,
            reports,
        }
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

    /// Saves the checkpoint now (desired-state changes, which a request
    /// acknowledges, and shutdown).
    fn save_checkpoint(&mut self) {
        let bytes = match serde_json::to_vec(&self.checkpoint()) {
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
        match self.checkpoint().save(&self.dir.checkpoint()) {
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
    fn checkpoint_due(&mut self, now: Instant) -> Option<Instant> {
        if !self.dirty {
            return None;
        }
        // A failed write is retried after a second, not every batch.
        let pause = if self.saved.is_empty() && self.last_save.is_some() {
            Duration::from_secs(1)
        } else {
            CHECKPOINT_BATCH
        };
        match self.last_save.map(|t| t + pause) {
            Some(due) if due > now => Some(due),
            _ => {
                self.save_checkpoint();
                self.dirty.then(|| now + Duration::from_secs(1))
            }
        }
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
        self.replicas
            .values()
            .filter(move |r| r.id.service == service)
    }

    /// The level-triggered heart: act on the difference between what should
    /// be and what is. Returns when it next needs to run without an event.
    fn reconcile(&mut self, now: Instant) -> Option<Instant> {
        if self.shutdown.is_some() {
            return self.reconcile_shutdown(now);
        }
        self.ensure_replicas();
        self.retire_surplus();
        self.reconcile_roles();
        let mut wake: Option<Instant> = self.check_watchdogs(now);
        for position in 0..self.spec.services.len() {
            let service = &self.spec.services[position];
            let name = service.name.clone();
            let readiness = self.readiness(service);
            let count = self.desired.replicas(service);
            // Replicas beyond the count are being retired by retire_surplus.
            let ids: Vec<ReplicaId> = self
                .replicas_of(&name)
                .filter(|r| r.id.index < count)
                .map(|r| r.id.clone())
                .collect();
            for id in ids {
                let replica = &self.replicas[&id];
                let phase = replica.phase.clone();
                if replica.stop_requested {
                    if !matches!(phase, Phase::Stopping { .. }) {
                        self.stop_replica(&id, AfterStop::Stay);
                    }
                    continue;
                }
                match (phase, &readiness) {
                    (Phase::Pending, Readiness::Ready) => self.spawn(&id, position, now),
                    (Phase::Pending, Readiness::Blocked(reason)) => {
                        let detail = format!("{id} failed: {reason}");
                        self.emit("failed", Some(&id), None, detail);
                        self.set_phase(&id, Phase::Failed);
                        self.check_exit_with(&name);
                    }
                    (Phase::Backoff { until }, _) if until <= now => {
                        let replica = self.replica_mut(&id);
                        replica.restarts += 1;
                        self.spawn(&id, position, now)
                    }
                    (Phase::Backoff { until }, _) => {
                        wake = Some(wake.map_or(until, |w| w.min(until)))
                    }
                    _ => {}
                }
            }
        }
        wake
    }

    /// Replicas beyond their service's desired count, or of services the
    /// spec no longer has, go: highest index first, since each is retired
    /// as soon as it is found and the map is walked from the top.
    fn retire_surplus(&mut self) {
        let surplus: Vec<ReplicaId> = self
            .replicas
            .keys()
            .rev()
            .filter(|id| match self.spec.service(&id.service) {
                Some(service) => id.index >= self.desired.replicas(service),
                None => true,
            })
            .cloned()
            .collect();
        for id in surplus {
            self.stop_replica(&id, AfterStop::Remove);
        }
    }

    /// Takes a replica down: a live one is asked to stop (its shim stops the
    /// whole tree), one without processes goes straight to what follows.
    fn stop_replica(&mut self, id: &ReplicaId, then: AfterStop) {
        let replica = &self.replicas[id];
        let (shim, pid) = match replica.phase {
            Phase::Starting { shim, .. } => (shim, None),
            Phase::Running { shim, pid, .. } => (shim, Some(pid)),
            Phase::Stopping { shim, pid, .. } => {
                // Already on its way down: only what follows may change.
                self.set_phase(id, Phase::Stopping { shim, pid, then });
                return;
            }
            _ => {
                self.after_stop(id, then);
                return;
            }
        };
        // An active on its way down is active no more: a standby can take
        // over now, not once this one is gone.
        self.demote(id);
        let shown = pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
        self.emit("stopping", Some(id), pid, format!("stopping {id}{shown}"));
        // The shim sends the stop signal to the whole tree and escalates to
        // SIGKILL after stop_timeout.
        self.signal_shim(shim, Signal::SIGTERM);
        self.set_phase(id, Phase::Stopping { shim, pid, then });
    }

    fn after_stop(&mut self, id: &ReplicaId, then: AfterStop) {
        match then {
            AfterStop::Stay => {
                if !matches!(self.replicas[id].phase, Phase::Exited | Phase::Failed) {
                    self.set_phase(id, Phase::Stopped);
                }
            }
            AfterStop::Start | AfterStop::Judge => {
                let replica = self.replica_mut(id);
                replica.phase = Phase::Pending;
                replica.history = Default::default();
            }
            AfterStop::Remove => {
                self.replicas.remove(id);
            }
        }
    }

    fn readiness(&self, service: &Service) -> Readiness {
        for dep in &service.depends_on {
            for r in self.replicas_of(&dep.service) {
                match (&r.phase, dep.condition) {
                    (Phase::Failed, _) => {
                        return Readiness::Blocked(format!("dependency {} failed", r.id));
                    }
                    (Phase::Exited, Condition::Completed) => {}
                    (Phase::Running { .. }, Condition::Started) => {}
                    (Phase::Running { .. }, Condition::Healthy) if r.health == Health::Healthy => {}
                    _ => return Readiness::Waiting,
                }
            }
        }
        Readiness::Ready
    }

    fn reconcile_shutdown(&mut self, now: Instant) -> Option<Instant> {
        // Replicas without processes have nothing to stop.
        for replica in self.replicas.values_mut() {
            if matches!(replica.phase, Phase::Pending | Phase::Backoff { .. }) {
                replica.phase = Phase::Stopped;
            }
        }
        // Reverse dependency order: a service stops once nothing that
        // depends on it has processes left.
        for position in (0..self.spec.services.len()).rev() {
            let service = &self.spec.services[position];
            let dependants_down = self
                .spec
                .services
                .iter()
                .filter(|s| s.depends_on.iter().any(|d| d.service == service.name))
                .all(|s| self.replicas_of(&s.name).all(|r| r.phase.shim().is_none()));
            if !dependants_down {
                continue;
            }
            let to_stop: Vec<ReplicaId> = self
                .replicas_of(&service.name)
                .filter(|r| matches!(r.phase, Phase::Starting { .. } | Phase::Running { .. }))
                .map(|r| r.id.clone())
                .collect();
            for id in to_stop {
                self.stop_replica(&id, AfterStop::Stay);
            }
        }
        let shutdown = self.shutdown.as_ref()?;
        if shutdown.forced {
            return None;
        }
        if now >= shutdown.deadline {
            let detail = format!(
                "shutdown_timeout ({}) reached; killing what is left",
                humantime::format_duration(self.spec.supervisor.shutdown_timeout)
            );
            self.emit("killed", None, None, detail);
            self.force();
            return None;
        }
        Some(shutdown.deadline)
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
            "shutdown",
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

    fn spawn(&mut self, id: &ReplicaId, position: usize, now: Instant) {
        let service = &self.spec.services[position];
        let plan = service.replica(&self.spec.dir, id.index);
        let name = id.to_string();
        let replica = self
            .replicas
            .get_mut(id)
            .expect("replica ids come from the map");
        replica.generation += 1;
        let generation = replica.generation;
        let restarts = replica.restarts;
        let mut env = plan.env;
        env.push((
            procfs::MARKER_VAR.into(),
            procfs::marker(&name, self.dir.root()),
        ));
        if service.failover.is_some() {
            // Every incarnation starts as a standby; promotion is announced
            // through the promote hook or signal.
            env.push(("SUPERVISE_ROLE".into(), "standby".into()));
        }
        let mut ready_pattern = None;
        match service.health.as_ref().map(|h| (&h.probe, h.watchdog)) {
            Some((Probe::Notify, watchdog)) => {
                env.push((
                    "NOTIFY_SOCKET".into(),
                    self.dir.notify_socket().display().to_string(),
                ));
                if let Some(w) = watchdog {
                    env.push(("WATCHDOG_USEC".into(), w.as_micros().to_string()));
                }
            }
            Some((Probe::Log(pattern), _)) => ready_pattern = Some(pattern.clone()),
            _ => {}
        }
        let config = ShimConfig {
            replica: name.clone(),
            generation,
            argv: plan.argv,
            env,
            cwd: plan.cwd,
            uid: service.user.as_ref().map(|u| u.uid),
            gid: service
                .group
                .as_ref()
                .map(|g| g.gid)
                .or(service.user.as_ref().map(|u| u.gid)),
            stop_signal: service.stop_signal as i32,
            stop_timeout_ms: service.stop_timeout.as_millis() as u64,
            log: LogConfig {
                path: self.dir.log_file(&name),
                max_size: self.spec.supervisor.log_max_size,
                keep: self.spec.supervisor.log_keep,
            },
            exit_record: self.dir.exit_record(&name),
            running_record: self.dir.running_record(&name),
            lock: self.dir.instance_lock(&name),
            ready_pattern,
            tee_prefix: self.display.prefix(&name, position),
        };
        let _ = std::fs::remove_file(&config.exit_record);
        match launch::spawn_shim(&config, self.display.tee_fd()) {
            Ok((shim, status_pipe)) => {
                self.shims.insert(shim, id.clone());
                self.set_phase(id, Phase::Starting { shim, since: now });
                if restarts > 0 {
                    let detail = format!("restarting {id} (restart {restarts})");
                    self.emit("restarted", Some(id), None, detail);
                }
                self.watch_status(id.clone(), generation, status_pipe);
            }
            Err(e) => {
                // Could not even fork the shim (EAGAIN, ENOMEM): the same as a
                // command that did not start, so the restart policy decides.
                let detail = format!("{id} could not be started: {e}");
                self.emit("spawn_failed", Some(id), None, detail);
                self.on_exit(id, Outcome::SpawnFailed, now);
            }
        }
    }

    /// Reads the shim's status lines (the start, then maybe readiness) in a
    /// task and hands each to the loop; ends when the shim closes the pipe.
    fn watch_status(&self, id: ReplicaId, generation: u64, pipe: OwnedFd) {
        let reports = self.reports.clone();
        tokio::spawn(async move {
            let Ok(rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(pipe) else {
                return;
            };
            let mut lines = tokio::io::BufReader::new(rx).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let report = Report {
                    id: id.clone(),
                    generation,
                    status: serde_json::from_str(&line).ok(),
                };
                if reports.send(Message::Status(report)).is_err() {
                    return;
                }
            }
        });
    }

    /// Signals a shim: through its pidfd when it was adopted (a pid that is
    /// not our child could be reused the moment it exits), else by pid (our
    /// own child's pid stays reserved until we reap it).
    fn signal_shim(&self, shim: Pid, signal: Signal) {
        match self.pidfds.get(&shim) {
            Some(pidfd) => {
                let _ = procfs::pidfd_signal(pidfd, signal);
            }
            None => {
                let _ = kill(shim, signal);
            }
        }
    }

    fn on_message(&mut self, message: Message) {
        match message {
            Message::Status(report) => self.on_report(report),
            Message::Probe(result) => self.on_probe(result),
            Message::Notify { pid, text } => self.on_notify(pid, &text),
            Message::ShimGone(shim) => {
                self.pidfds.remove(&shim);
                if let Some(id) = self.shims.remove(&shim) {
                    self.on_shim_exit(&id, "an adopted shim".into());
                }
            }
        }
    }

    fn on_report(&mut self, report: Report) {
        let Some(replica) = self.replicas.get_mut(&report.id) else {
            return;
        };
        if replica.generation != report.generation {
            return;
        }
        match (report.status, &replica.phase) {
            (Some(Status::Started { pid }), Phase::Starting { shim, since }) => {
                let (shim, since) = (*shim, *since);
                replica.phase = Phase::Running { shim, pid, since };
                replica.started_at = Some(SystemTime::now());
                let detail = format!("spawned {} (pid {pid})", report.id);
                self.emit("spawned", Some(&report.id), Some(pid), detail);
                self.on_running(&report.id);
            }
            (Some(Status::Ready), Phase::Running { .. }) => self.mark_healthy(&report.id),
            (Some(Status::Started { pid }), Phase::Stopping { shim, then, .. }) => {
                // Asked to stop before its start was reported: keep the pid for status.
                let (shim, then) = (*shim, *then);
                replica.phase = Phase::Stopping {
                    shim,
                    pid: Some(pid),
                    then,
                };
            }
            (Some(Status::SpawnFailed { error }), _) => {
                let detail = format!("{} could not be started: {error}", report.id);
                self.emit("spawn_failed", Some(&report.id), None, detail);
            }
            // The shim's exit is what settles the replica; it is reaped separately.
            _ => {}
        }
    }

    /// Reaps every child that has exited: shims (whose replica then exited)
    /// and orphans that were re-parented to us.
    fn reap(&mut self) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return,
                Ok(status) => {
                    let Some(pid) = status.pid() else { continue };
                    if let Some(id) = self.shims.remove(&pid) {
                        self.on_shim_exit(&id, format!("{status:?}"));
                    } else if !self.reaper.deliver(pid, status) {
                        tracing::debug!(pid = pid.as_raw(), ?status, "reaped an orphan");
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "waitpid failed");
                    return;
                }
            }
        }
    }

    /// A shim is gone; `how` says how, for when it left no exit record.
    fn on_shim_exit(&mut self, id: &ReplicaId, how: String) {
        let path = self.dir.exit_record(&id.to_string());
        let record: Option<ExitRecord> = read_record(&path).ok();
        let _ = std::fs::remove_file(&path);
        let generation = self.replicas[id].generation;
        // A replica that ended before its shim's start report was read is
        // announced now, so that every incarnation has its `spawned` event
        // (the late report is then ignored: the phase is no longer Starting).
        if let Some(ExitRecord {
            generation: g,
            pid: Some(pid),
            spawn_error: None,
            ..
        }) = &record
            && *g == generation
            && matches!(self.replicas[id].phase, Phase::Starting { .. })
        {
            let pid = *pid;
            self.emit(
                "spawned",
                Some(id),
                Some(pid),
                format!("spawned {id} (pid {pid})"),
            );
        }
        let outcome = match record {
            Some(r) if r.generation == generation => match (r.spawn_error, r.code, r.signal) {
                (Some(_), _, _) => Outcome::SpawnFailed,
                (None, Some(code), _) => Outcome::Code(code),
                (None, None, Some(sig)) => Outcome::Signal(sig),
                (None, None, None) => Outcome::Unknown,
            },
            _ => {
                let detail =
                    format!("the shim of {id} ended without saying how its replica ended ({how})");
                self.emit("shim_lost", Some(id), None, detail);
                self.kill_leftovers(id);
                Outcome::Unknown
            }
        };
        self.on_exit(id, outcome, Instant::now());
    }

    /// A shim that was killed could not stop its replica's tree. Its main
    /// process died with it (PDEATHSIG), but descendants that left the
    /// process group live on, re-parented to us: find them by the replica's
    /// marker and kill them, so the restart meets no predecessor.
    fn kill_leftovers(&mut self, id: &ReplicaId) {
        let leftovers = procfs::with_marker(&procfs::marker(&id.to_string(), self.dir.root()));
        for &pid in &leftovers {
            let _ = kill(pid, Signal::SIGKILL);
        }
        if !leftovers.is_empty() {
            let detail = format!("killed {} leftover process(es) of {id}", leftovers.len());
            self.emit("leftovers_killed", Some(id), None, detail);
        }
    }

    /// A replica's processes are all gone: apply its restart policy.
    fn on_exit(&mut self, id: &ReplicaId, outcome: Outcome, now: Instant) {
        self.end_health(id);
        let how = describe(&outcome);
        let replica = self.replica_mut(id);
        replica.role = None;
        let pid = replica.phase.pid();
        replica.last_exit = Some((outcome.clone(), SystemTime::now()));
        replica.started_at = None;
        let since = match replica.phase {
            Phase::Stopping {
                then: AfterStop::Judge,
                ..
            } => {
                self.emit("stopped", Some(id), pid, format!("stopped {id} ({how})"));
                self.apply_policy(id, Outcome::Unhealthy, Duration::ZERO, now);
                return;
            }
            Phase::Stopping { then, .. } => {
                self.emit("stopped", Some(id), pid, format!("stopped {id} ({how})"));
                self.after_stop(id, then);
                return;
            }
            Phase::Starting { since, .. } | Phase::Running { since, .. } => since,
            _ => now,
        };
        self.apply_policy(id, outcome, now.saturating_duration_since(since), now);
    }

    /// Decides, by its restart policy, what follows an exit after `uptime`.
    fn apply_policy(&mut self, id: &ReplicaId, outcome: Outcome, uptime: Duration, now: Instant) {
        let Some(service) = self.spec.service(&id.service) else {
            // Its service was removed by a reload while it was exiting.
            self.replicas.remove(id);
            return;
        };
        let policy = service.restart.clone();
        let how = describe(&outcome);
        let replica = self.replica_mut(id);
        let pid = replica.phase.pid();
        let jitter = fastrand::f64() * 2.0 - 1.0;
        let next_restart = replica.restarts + 1;
        let (phase, event, detail) = match replica
            .history
            .on_exit(&policy, &outcome, uptime, now, jitter)
        {
            Decision::Restart { delay } => (
                Phase::Backoff { until: now + delay },
                "exited",
                format!(
                    "{id} {how}; restart {next_restart} in {}",
                    humantime::format_duration(round_ms(delay))
                ),
            ),
            Decision::Done => (Phase::Exited, "exited", format!("{id} {how}; done")),
            Decision::GiveUp { reason } => (
                Phase::Failed,
                "failed",
                format!("{id} {how}; failed ({reason})"),
            ),
        };
        replica.phase = phase;
        self.emit(event, Some(id), pid, detail);
        self.check_exit_with(&id.service);
    }

    /// `--exit-with SVC`: once all of SVC's replicas are settled, shut down
    /// with SVC's exit code (the first failure's, else 0).
    fn check_exit_with(&mut self, service: &str) {
        if self.options.exit_with.as_deref() != Some(service) {
            return;
        }
        if !self.replicas_of(service).all(|r| r.phase.is_settled()) {
            return;
        }
        let policy = &self
            .spec
            .services
            .iter()
            .find(|s| s.name == service)
            .expect("checked at start")
            .restart;
        // A replica that failed without ever running (its dependency failed)
        // has no exit of its own, and must not read as a success.
        let code = self
            .replicas_of(service)
            .map(|r| match (&r.phase, &r.last_exit) {
                (_, Some((outcome, _))) if !outcome.is_success(policy) => outcome.shell_code(),
                (Phase::Failed, None) => exit::FAILED,
                _ => exit::OK,
            })
            .find(|&code| code != exit::OK)
            .unwrap_or(exit::OK);
        self.begin_shutdown(
            &format!("{service} has finished with exit code {code}"),
            code,
            None,
        );
    }
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Code(c) => format!("exited with code {c}"),
        Outcome::Signal(s) => match Signal::try_from(*s) {
            Ok(sig) => format!("was killed by {}", sig.as_str()),
            Err(_) => format!("was killed by signal {s}"),
        },
        Outcome::SpawnFailed => "could not start".into(),
        Outcome::Unknown => "ended (exit status unknown)".into(),
        Outcome::Unhealthy => "was unhealthy".into(),
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}
