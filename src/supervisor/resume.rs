//! Starting over after the supervisor itself died: rebuild the replicas from
//! the spec and the checkpoint, then find out which are still running.
//!
//! Liveness never comes from the checkpoint. A replica is running if its
//! shim still holds the replica's instance lock; it is adopted only if the
//! shim's running record names processes that `/proc` confirms are the very
//! same (pid *and* start time, same boot), so a recycled pid is never taken
//! for a replica; or, when the record could not be written (a full disk),
//! if the kernel says the shim holds the lock and its command carries the
//! replica's marker (see `recognised`). An adopted shim is not our child: its exit is learned from
//! a pidfd, and its exit record says how its replica ended. A replica that
//! ended while no supervisor ran left an exit record (or, if its shim was
//! killed too, nothing: an exit with unknown status); either way its restart
//! policy decides what follows, with its counters and backoff carried over.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::Supervisor;
use super::checkpoint::{Checkpoint, ReplicaMemo, Settled};
use super::replica::{AfterStop, Incarnation, Phase, Replica, ReplicaId, Verdict};
use super::restart::Ending;
use crate::shim::protocol::{ExitRecord, RunningRecord, read_record};
use crate::{cgroup, procfs};

/// What a resume found, for its one summary line.
#[derive(Default)]
struct Found {
    adopted: usize,
    exited: usize,
    unknown: usize,
    swept: usize,
}

impl Supervisor {
    pub(super) fn resume(&mut self, checkpoint: Option<Checkpoint>) {
        let boot = procfs::boot_id();
        let checkpoint = checkpoint.filter(|c| c.boot_id == boot);
        if let Some(c) = &checkpoint {
            self.desired = c.desired.clone();
        }
        self.desired.prune(&self.spec.services);
        self.ensure_replicas();

        let mut found = Found::default();
        let ids: Vec<ReplicaId> = self.replicas.keys().cloned().collect();
        for id in ids {
            // After a clean shutdown nothing runs and nothing is owed: only
            // the desired state carries over.
            let memo = checkpoint
                .as_ref()
                .filter(|c| !c.clean_shutdown)
                .and_then(|c| c.replicas.get(&id.to_string()));
            if let Some(memo) = memo {
                restore(self.replicas.get_mut(&id).expect("listed above"), memo);
            }
            self.recover(&id, memo.cloned().unwrap_or_default(), &mut found);
        }
        // Processes of this state dir that no adopted shim accounts for
        // (their shim was killed while we were down, or their replica is
        // gone from the spec) must not live on.
        // Each replica's shim, if it has one, by name (looked up once per
        // lock, leaf or marked process: thousands of them at scale).
        let shims: HashMap<String, Option<Pid>> = self
            .replicas
            .values()
            .map(|r| (r.id.to_string(), r.phase.shim()))
            .collect();
        found.swept = self.kill_stray_shims(&shims) + self.sweep_strays(&shims);
        self.dir.remove_leftover_temp_files();
        self.dir
            .remove_records_except(|name| shims.contains_key(name));
        if checkpoint.is_some() || found.adopted + found.exited + found.unknown > 0 {
            self.display.event(&format!(
                "resumed: {} adopted, {} exited while down, {} unknown{}",
                found.adopted,
                found.exited,
                found.unknown,
                if found.swept > 0 {
                    format!(", {} stray process(es) killed", found.swept)
                } else {
                    String::new()
                }
            ));
        }
    }

    /// Adopts replica `id` if it still runs, or records how it ended.
    fn recover(&mut self, id: &ReplicaId, memo: ReplicaMemo, found: &mut Found) {
        let name = id.to_string();
        let ended = self.replicas[id].ended;
        let running = unjudged(
            &self.dir.running_record(&name),
            ended,
            |r: &RunningRecord| r.generation,
        );
        let exited = unjudged(&self.dir.exit_record(&name), ended, |r: &ExitRecord| {
            r.generation
        });
        let held = self.dir.instance_holder(&name);
        if let (Some(shim), Some(record)) = (held, &running)
            && let Some(pidfd) = verified(shim, record)
        {
            self.adopt(id, record, pidfd, &memo, true);
            found.adopted += 1;
            return;
        }
        if let Some(shim) = held
            && let Some((pidfd, record)) = self.recognised(&name, shim, &memo)
        {
            self.adopt(id, &record, pidfd, &memo, false);
            found.adopted += 1;
            return;
        }
        if let Some(shim) = held
            && let Ok(pidfd) = procfs::pidfd_open(shim)
        {
            // A live shim we cannot vouch for (its command is gone, or the
            // lock is not its own): take its tree down and start afresh
            // once it is gone, never beside it.
            let _ = procfs::pidfd_signal(&pidfd, Signal::SIGUSR1);
            let shim = Pid::from_raw(shim as i32);
            self.watch(id, shim, pidfd, None);
            self.replica_mut(id).phase = Phase::Stopping {
                shim,
                pid: None,
                then: AfterStop::Start,
                run: Incarnation::default(),
            };
            found.unknown += 1;
            return;
        }
        let live_generation = running.as_ref().map(|r| r.generation);
        let was_live = running.is_some()
            || held.is_some()
            || matches!(self.replicas[id].phase, Phase::Starting { .. });
        let replica = self.replica_mut(id);
        match exited {
            // Newer than the checkpoint is fine: it may lag by one batch.
            Some(record) if record.generation >= replica.generation => {
                catch_up(replica, record.generation);
                replica.ended = record.generation;
                // Kept until a checkpoint has the end, as in `on_shim_exit`.
                self.judged_records.insert(name, record.generation);
                found.exited += 1;
                let outcome = Ending::of_record(&record);
                self.exited_while_down(id, outcome, record.at);
            }
            _ if was_live => {
                // A leaf elsewhere: the record of a supervisor that ran in
                // another cgroup of its own.
                if let Some(leaf) = running.and_then(|r| r.cgroup)
                    && Some(&leaf) != self.leaf(&name).as_ref()
                {
                    cgroup::kill_and_remove(&leaf, cgroup::LEFTOVER_WAIT);
                }
                let replica = self.replica_mut(id);
                replica.ended = replica.generation.max(live_generation.unwrap_or(0));
                let ended = replica.ended;
                self.judged_records.insert(name, ended);
                found.unknown += 1;
                self.exited_while_down(id, Ending::Unknown, SystemTime::now());
            }
            _ => {}
        }
    }

    /// A live shim whose running record is missing, unreadable or stale
    /// (the disk was full when it started its command) is still recognised:
    /// once a pidfd pins it, the kernel must say it holds the replica's
    /// instance lock (the file's content may be stale), and its command, a
    /// child carrying the replica's marker, must be found. What only the
    /// record knows is taken from the checkpoint (the generation) or
    /// assumed: a respawn leave (revoked all the same), and a current
    /// definition.
    fn recognised(
        &self,
        name: &str,
        shim: u32,
        memo: &ReplicaMemo,
    ) -> Option<(OwnedFd, RunningRecord)> {
        let pidfd = procfs::pidfd_open(shim).ok()?;
        if self.dir.instance_holder_per_kernel(name) != Some(shim) {
            return None;
        }
        let marker = procfs::marker(name, self.dir.root());
        let pid = procfs::command_of(Pid::from_raw(i32::try_from(shim).ok()?), &marker)?;
        let leaf = self.leaf(name);
        if leaf
            .as_ref()
            .is_some_and(|leaf| !cgroup::contains(leaf, pid))
        {
            return None;
        }
        let record = RunningRecord {
            generation: memo.generation,
            shim_pid: shim,
            shim_start: procfs::start_time(shim)?,
            pid,
            pid_start: procfs::start_time(pid)?,
            boot_id: procfs::boot_id(),
            started_at: procfs::started_at(pid).unwrap_or_else(SystemTime::now),
            respawns: true,
            definition: None,
            cgroup: leaf,
        };
        Some((pidfd, record))
    }

    /// `from_record`: the shim's own running record, not one [`Self::recognised`]
    /// made up.
    fn adopt(
        &mut self,
        id: &ReplicaId,
        record: &RunningRecord,
        pidfd: OwnedFd,
        memo: &ReplicaMemo,
        from_record: bool,
    ) {
        let shim = Pid::from_raw(record.shim_pid as i32);
        let age = SystemTime::now()
            .duration_since(record.started_at)
            .unwrap_or_default();
        let replica = self.replica_mut(id);
        catch_up(replica, record.generation);
        replica.phase = Phase::Running {
            shim,
            pid: record.pid,
            since: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
            run: Incarnation {
                started_at: Some(record.started_at),
                ..Incarnation::default()
            },
        };
        if record.respawns {
            // We would not hear of its respawns: it is to leave restarts to us.
            let _ = procfs::pidfd_signal(&pidfd, Signal::SIGUSR2);
        }
        self.watch(id, shim, pidfd, None);
        // The service's position picks its colour, as for the replicas we spawn.
        let position = self
            .spec
            .services
            .iter()
            .position(|s| s.name == id.service)
            .unwrap_or_default();
        self.display.follow(
            &id.to_string(),
            self.dir.log_file(&id.to_string()),
            position,
        );
        let detail = format!(
            "adopted {id} (pid {}, shim {}{})",
            record.pid,
            record.shim_pid,
            if from_record {
                ""
            } else {
                "; without its running record: recognised by its instance lock and /proc"
            }
        );
        self.emit("adopted", Some(id), Some(record.pid), detail);
        self.on_running(id);
        let now = self
            .spec
            .service(&id.service)
            .map(|s| s.fingerprint(&self.spec.dir, id.index));
        if record.definition.is_some() && record.definition != now {
            // As `reload` does with a changed service: never kept as if current.
            let pid = record.pid;
            self.emit(
                "outdated",
                Some(id),
                Some(pid),
                format!(
                    "{id} runs an older definition of {} (the spec changed while no supervisor \
                     ran); restarting it",
                    id.service
                ),
            );
            self.stop_replica(id, AfterStop::Start);
            return;
        }
        // What the checkpoint says of health and role is about this very
        // incarnation only if the generations agree (it may lag behind);
        // without a record, which incarnation runs is not known.
        if from_record
            && memo.generation == record.generation
            && let Some(run) = self.replica_mut(id).run_mut()
        {
            if memo.healthy {
                run.health = Verdict::Healthy;
            }
            if run.role.is_some() && memo.role.is_some() {
                run.role = memo.role;
            }
        }
    }

    /// A replica ended while no supervisor ran: its policy decides now.
    fn exited_while_down(&mut self, id: &ReplicaId, outcome: Ending, at: SystemTime) {
        self.kill_leftovers(id);
        let replica = self.replica_mut(id);
        let uptime = replica
            .phase
            .run()
            .and_then(|run| run.started_at)
            .and_then(|started| at.duration_since(started).ok())
            .unwrap_or_default();
        replica.last_exit = Some((outcome.clone(), at));
        self.apply_policy(id, outcome, uptime, Instant::now());
    }

    /// SIGKILLs the shims of replicas this supervisor does not have (removed
    /// from the spec, or scaled away, while no supervisor ran), as
    /// [`Self::sweep_strays`] then does their processes. Left alive, such a
    /// shim would hold the replica's instance lock (a replica of that name
    /// could never start again) and outlive every supervisor.
    fn kill_stray_shims(&self, shims: &HashMap<String, Option<Pid>>) -> usize {
        let mut killed = 0;
        for name in self.dir.locked_replicas() {
            if shims.contains_key(&name) {
                continue;
            }
            // The kernel's word (the file's pid may be stale), asked again
            // once a pidfd pins the process, so a recycled pid is never hit.
            let Some(shim) = self.dir.instance_holder_per_kernel(&name) else {
                continue;
            };
            if let Ok(pidfd) = procfs::pidfd_open(shim)
                && self.dir.instance_holder_per_kernel(&name) == Some(shim)
                && procfs::pidfd_signal(&pidfd, Signal::SIGKILL).is_ok()
            {
                tracing::debug!(replica = %name, shim, "killed the shim of a replica no longer here");
                killed += 1;
            }
        }
        killed
    }

    /// Kills what is in a leaf whose replica has no adopted shim; without
    /// cgroups, marked processes of this state dir whose replica has no
    /// adopted shim, or that are not in that shim's tree.
    fn sweep_strays(&self, shims: &HashMap<String, Option<Pid>>) -> usize {
        if let Some(dir) = &self.cgroup {
            return cgroup::leaves(dir)
                .into_iter()
                .filter(|(name, _)| !shims.get(name).is_some_and(Option::is_some))
                .map(|(_, leaf)| cgroup::kill_and_remove(&leaf, cgroup::LEFTOVER_WAIT))
                .sum();
        }
        let mut killed = 0;
        let marked = procfs::marked_by_state_dir(self.dir.root());
        // Read after the markers: a process that exists in `marked` is in
        // the map (unless it has exited), wherever it forked from.
        let parents = procfs::Parents::scan();
        for (pid, replica) in marked {
            let owner = shims.get(&replica).copied().flatten();
            let owned = owner.is_some_and(|shim| parents.is_within(pid, shim));
            if !owned && pid != Pid::this() {
                let _ = kill(pid, Signal::SIGKILL);
                killed += 1;
            }
        }
        killed
    }
}

/// Opens a pidfd for the shim and checks, through it, that the processes of
/// `record` are the ones alive now: a pidfd opened first pins the process, so
/// the check cannot be fooled by a pid recycled in between.
fn verified(shim: u32, record: &RunningRecord) -> Option<OwnedFd> {
    if record.shim_pid != shim || record.boot_id != procfs::boot_id() {
        return None;
    }
    let pidfd = procfs::pidfd_open(shim).ok()?;
    let same_shim = procfs::start_time(shim) == Some(record.shim_start);
    // The command may have exited already, its shim still stopping the rest.
    // Alive, it must be in the leaf its shim recorded.
    let command_ok = match procfs::start_time(record.pid) {
        Some(start) => {
            start == record.pid_start
                && record
                    .cgroup
                    .as_ref()
                    .is_none_or(|leaf| cgroup::contains(leaf, record.pid))
        }
        None => true,
    };
    (same_shim && command_ok).then_some(pidfd)
}

fn since_wall(t: SystemTime) -> Instant {
    let age = SystemTime::now().duration_since(t).unwrap_or_default();
    Instant::now().checked_sub(age).unwrap_or_else(Instant::now)
}

fn wall_of(t: Instant) -> SystemTime {
    let now = Instant::now();
    if t >= now {
        SystemTime::now() + (t - now)
    } else {
        SystemTime::now() - (now - t)
    }
}

/// The record at `path`, unless it is of an end the checkpoint has judged
/// (`ended`: the crash came between the checkpoint's write and the record's
/// removal, or the shim was killed and left its running record), which is
/// removed instead.
fn unjudged<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    ended: u64,
    generation: fn(&T) -> u64,
) -> Option<T> {
    let record: T = read_record(path).ok()?;
    if generation(&record) <= ended {
        let _ = std::fs::remove_file(path);
        return None;
    }
    Some(record)
}

/// A shim's record may be newer than the checkpoint (written in batches):
/// each generation beyond the checkpoint's was one more restart, so the
/// count never goes backwards across a crash.
pub(super) fn catch_up(replica: &mut Replica, generation: u64) {
    if replica.generation == 0 {
        // No checkpoint to go by: every incarnation after the first was a restart.
        replica.restarts = u32::try_from(generation.saturating_sub(1)).unwrap_or(u32::MAX);
    } else if generation > replica.generation {
        let missed = u32::try_from(generation - replica.generation).unwrap_or(u32::MAX);
        replica.restarts = replica.restarts.saturating_add(missed);
    }
    replica.generation = replica.generation.max(generation);
}

/// Counters, backoff and settled states from the checkpoint.
fn restore(replica: &mut Replica, memo: &ReplicaMemo) {
    replica.generation = memo.generation;
    replica.restarts = memo.restarts;
    replica.checkpointed_restarts = memo.restarts;
    replica.history.consecutive = memo.consecutive;
    replica.history.recent = memo.recent.iter().copied().map(since_wall).collect();
    replica.last_exit = memo.last_exit.clone();
    replica.ended = memo.ended;
    replica.phase = match (memo.settled, memo.backoff_until) {
        (Some(settled), _) => settled.phase(),
        (None, Some(until)) => {
            let left = until
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            Phase::Backoff {
                until: Instant::now() + left,
            }
        }
        _ => Phase::Pending,
    };
}

impl Supervisor {
    /// The checkpoint of the current state.
    pub(super) fn checkpoint(&self) -> Checkpoint {
        let mut checkpoint = Checkpoint::new(self.desired.clone());
        checkpoint.clean_shutdown = self.clean_shutdown;
        for replica in self.replicas.values() {
            let memo = ReplicaMemo {
                generation: replica.generation,
                restarts: replica.restarts,
                consecutive: replica.history.consecutive,
                recent: replica
                    .history
                    .recent
                    .iter()
                    .copied()
                    .map(wall_of)
                    .collect(),
                backoff_until: match replica.phase {
                    Phase::Backoff { until } => Some(wall_of(until)),
                    _ => None,
                },
                last_exit: replica.last_exit.clone(),
                settled: Settled::of(&replica.phase),
                role: replica.role(),
                healthy: replica.health() == Verdict::Healthy,
                ended: replica.ended,
            };
            checkpoint.replicas.insert(replica.id.to_string(), memo);
        }
        checkpoint
    }
}
