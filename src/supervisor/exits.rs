//! How a replica's run begins and ends, and how its end is learned and
//! judged: reaping (SIGCHLD, or a pidfd for adopted shims), reading the
//! shim's exit record, sweeping what a killed shim left behind, and applying
//! the restart policy — plus the `--exit-with` rule that may end the whole
//! run. Every run goes through `begin` and `began` (the `spawned` event)
//! and ends in `on_exit` (`stopped`, or the policy's `exited`/`failed`,
//! judged by `apply_policy` alone); every restart is counted and told by
//! `count_restart`, whether we respawn it after its backoff or its shim
//! respawned it by itself (`on_respawned`).

use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::Supervisor;
use super::replica::{AfterStop, Incarnation, Judged, Phase, ReplicaId, Role};
use super::restart::{Decision, Ending};
use crate::shim::protocol::{ExitRecord, read_record};
use crate::{cgroup, procfs};

impl Supervisor {
    /// Reaps every child that has exited: probe and alert commands, the
    /// zygote, and orphans that were re-parented to us (among them shims
    /// whose zygote died: their exit is handled through their pidfd).
    pub(super) fn reap(&mut self) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return,
                Ok(status) => {
                    let Some(pid) = status.pid() else { continue };
                    if !self.reaper.deliver(pid, status) {
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

    /// A shim is gone: its exit record says how its replica ended.
    pub(super) fn on_shim_exit(&mut self, id: &ReplicaId) {
        let name = id.to_string();
        let record: Option<ExitRecord> = read_record(&self.dir.exit_record(&name)).ok();
        let Some(replica) = self.replicas.get_mut(id) else {
            self.remove_records(&name, u64::MAX);
            return;
        };
        // An adopted shim may have respawned once before it got our SIGUSR2.
        if let Some(record) = &record {
            super::resume::catch_up(replica, record.generation);
        }
        let generation = replica.generation;
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
            self.emit_spawned(id, *pid);
        }
        let outcome = match record {
            Some(r) if r.generation == generation => Ending::of_record(&r),
            _ => {
                let detail = format!(
                    "the shim of {id} ended without saying how its replica ended (it was killed?)"
                );
                self.emit("shim_lost", Some(id), None, detail);
                self.kill_leftovers(id);
                Ending::Unknown
            }
        };
        // An end we asked for (a stop, or the stop of a restart) is not
        // judged by the policy: after a crash, desired state (written before
        // the request was answered) says what follows, as with no record.
        // Any other end waits on disk for the checkpoint that has it.
        let then = match self.replicas[id].phase {
            Phase::Stopping { then, .. } => Some(then),
            _ => None,
        };
        match then {
            Some(AfterStop::Judge(_)) | None => {
                self.judged_records.insert(name, generation);
            }
            Some(_) => self.remove_records(&name, generation),
        }
        self.replica_mut(id).ended = generation;
        self.on_exit(id, outcome, Instant::now());
        if matches!(then, Some(AfterStop::Judge(_))) {
            // Why we stopped it (unhealthy, over its memory limit) is in no
            // record: on disk now, or a crash would leave only the stop
            // signal's exit to judge.
            self.save_checkpoint();
        }
    }

    /// A shim that was killed could not stop its replica's tree, which lives
    /// on, re-parented to us: find its processes by the replica's marker and
    /// kill them, so the restart meets no predecessor.
    pub(super) fn kill_leftovers(&mut self, id: &ReplicaId) {
        let killed = match self.leaf(&id.to_string()) {
            // Its leaf holds them all, the environment they keep or not.
            Some(leaf) => cgroup::kill_and_remove(&leaf, cgroup::LEFTOVER_WAIT),
            None => {
                let leftovers =
                    procfs::with_marker(&procfs::marker(&id.to_string(), self.dir.root()));
                for &pid in &leftovers {
                    let _ = kill(pid, Signal::SIGKILL);
                }
                leftovers.len()
            }
        };
        if killed > 0 {
            let detail = format!("killed {killed} leftover process(es) of {id}");
            self.emit("leftovers_killed", Some(id), None, detail);
        }
    }

    /// A shim started its replica again by itself, under the leave it was
    /// given (see `launch::respawn_leave`): the end is judged by the policy
    /// as any other (`on_exit`), and the new incarnation is taken on only
    /// if the policy says to restart.
    pub(super) fn on_respawned(
        &mut self,
        id: &ReplicaId,
        shim: Pid,
        generation: u64,
        pid: u32,
        outcome: Ending,
    ) {
        let replica = self.replica_mut(id);
        replica.generation = generation;
        if let Phase::Stopping {
            pid: shown, run, ..
        } = &mut replica.phase
        {
            // It started again before our stop reached the shim; the stop
            // takes the new incarnation down. It ran all the same: counted
            // and told, as every restart is.
            *shown = Some(pid);
            *run = Incarnation {
                started_at: Some(SystemTime::now()),
                ..Incarnation::default()
            };
            self.count_restart(id);
            self.emit_spawned(id, pid);
            return;
        }
        let now = Instant::now();
        match self.on_exit(id, outcome, now) {
            Some(Decision::Restart { .. }) => {
                self.count_restart(id);
                self.begin(id, shim, now, None);
                self.began(id, pid);
            }
            Some(Decision::Done | Decision::GiveUp { .. }) => {
                // The policy did not restart it after all (the spec changed
                // meanwhile): take the new incarnation down again.
                self.set_phase(
                    id,
                    Phase::Stopping {
                        shim,
                        pid: Some(pid),
                        then: AfterStop::Stay,
                        run: Incarnation::default(),
                    },
                );
                self.signal_shim(shim, Signal::SIGTERM);
            }
            // Its service was removed meanwhile.
            None => self.signal_shim(shim, Signal::SIGTERM),
        }
    }

    /// The one place a restart is counted, and told: `restarted`.
    pub(super) fn count_restart(&mut self, id: &ReplicaId) {
        self.replica_mut(id).restarts += 1;
        self.tell_restarting(id);
    }

    /// The `restarted` event, with the count so far.
    pub(super) fn tell_restarting(&mut self, id: &ReplicaId) {
        let detail = format!("restarting {id} (restart {})", self.replicas[id].restarts);
        self.emit("restarted", Some(id), None, detail);
    }

    /// A new incarnation begins: its shim is started (by us, or by itself
    /// for a respawn), in `role`.
    pub(super) fn begin(&mut self, id: &ReplicaId, shim: Pid, since: Instant, role: Option<Role>) {
        let run = Incarnation {
            role,
            ..Incarnation::default()
        };
        self.set_phase(id, Phase::Starting { shim, since, run });
    }

    /// The command of the starting incarnation runs: `spawned`, then its
    /// health and role begin.
    pub(super) fn began(&mut self, id: &ReplicaId, pid: u32) {
        let replica = self.replica_mut(id);
        let Phase::Starting {
            shim,
            since,
            mut run,
        } = std::mem::replace(&mut replica.phase, Phase::Pending)
        else {
            unreachable!("only a starting incarnation is reported started");
        };
        run.started_at = Some(SystemTime::now());
        replica.phase = Phase::Running {
            shim,
            pid,
            since,
            run,
        };
        self.emit_spawned(id, pid);
        self.on_running(id);
    }

    /// Every incarnation whose command ran has its `spawned` event, also
    /// one whose end was learned before its start (see `on_shim_exit`).
    pub(super) fn emit_spawned(&mut self, id: &ReplicaId, pid: u32) {
        let detail = format!("spawned {id} (pid {pid})");
        self.emit("spawned", Some(id), Some(pid), detail);
    }

    /// A replica's processes are all gone: `stopped` if we stopped it, else
    /// its restart policy decides (the decision is returned).
    pub(super) fn on_exit(
        &mut self,
        id: &ReplicaId,
        outcome: Ending,
        now: Instant,
    ) -> Option<Decision> {
        // The run's data (health, probe, role) goes with the phase that
        // follows.
        let how = describe(&outcome);
        let replica = self.replica_mut(id);
        let pid = replica.phase.pid();
        replica.last_exit = Some((outcome.clone(), SystemTime::now()));
        let since = match replica.phase {
            Phase::Stopping {
                then: AfterStop::Judge(why),
                ..
            } => {
                self.emit("stopped", Some(id), pid, format!("stopped {id} ({how})"));
                let ending = match why {
                    Judged::Unhealthy => Ending::Unhealthy,
                    Judged::OverMemory => {
                        // What `status` shows: the reason, not the stop signal.
                        self.replica_mut(id).last_exit =
                            Some((Ending::MemoryLimit, SystemTime::now()));
                        Ending::MemoryLimit
                    }
                };
                return self.apply_policy(id, ending, Duration::ZERO, now);
            }
            Phase::Stopping { then, .. } => {
                self.emit("stopped", Some(id), pid, format!("stopped {id} ({how})"));
                self.after_stop(id, then);
                return None;
            }
            Phase::Starting { since, .. } | Phase::Running { since, .. } => since,
            _ => now,
        };
        self.apply_policy(id, outcome, now.saturating_duration_since(since), now)
    }

    /// Decides, by its restart policy, what follows an exit after `uptime`:
    /// the one judgement of every end, whoever restarts it. None if its
    /// service is gone.
    pub(super) fn apply_policy(
        &mut self,
        id: &ReplicaId,
        outcome: Ending,
        uptime: Duration,
        now: Instant,
    ) -> Option<Decision> {
        let Some(service) = self.spec.service(&id.service) else {
            // Its service was removed by a reload while it was exiting.
            self.replicas.remove(id);
            return None;
        };
        let policy = service.restart.clone();
        let mut how = describe(&outcome);
        if let (Ending::Oom | Ending::MemoryLimit, Some(limit)) = (&outcome, service.limits.memory)
        {
            how = format!("{how} (limit {})", crate::usage::size(limit));
        }
        let oom = outcome == Ending::Oom;
        let replica = self.replica_mut(id);
        let pid = replica.phase.pid();
        let jitter = fastrand::f64() * 2.0 - 1.0;
        let next_restart = replica.restarts + 1;
        let decision = replica
            .history
            .on_exit(&policy, &outcome, uptime, now, jitter);
        let (phase, event, detail) = match &decision {
            &Decision::Restart { delay } => (
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
        if oom {
            // Alertable and counted on its own; the `exited` or `failed`
            // that follows says what comes next.
            self.emit("oom", Some(id), pid, format!("{id} {how}"));
        }
        self.emit(event, Some(id), pid, detail);
        self.check_exit_with(&id.service);
        Some(decision)
    }

    /// `--exit-with SVC`: once all of SVC's replicas are settled, shut down
    /// with SVC's exit code (the first failure's, else 0).
    pub(super) fn check_exit_with(&mut self, service: &str) {
        if self.options.exit_with.as_deref() != Some(service) {
            return;
        }
        let policy = &self
            .spec
            .service(service)
            .expect("checked at start")
            .restart;
        let replicas: Vec<_> = self.replicas_of(service).collect();
        let Some(code) = super::plan::exit_with_code(&replicas, policy) else {
            return;
        };
        self.begin_shutdown(
            &format!("{service} has finished with exit code {code}"),
            code,
            None,
        );
    }
}

fn describe(outcome: &Ending) -> String {
    match outcome {
        Ending::Code(c) => format!("exited with code {c}"),
        Ending::Signal(s) => match Signal::try_from(*s) {
            Ok(sig) => format!("was killed by {}", sig.as_str()),
            Err(_) => format!("was killed by signal {s}"),
        },
        Ending::SpawnFailed => "could not start".into(),
        Ending::Unknown => "ended (exit status unknown)".into(),
        Ending::Unhealthy => "was unhealthy".into(),
        Ending::Oom => "was killed by the OOM killer".into(),
        Ending::MemoryLimit => "was stopped for going over its memory limit".into(),
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}
