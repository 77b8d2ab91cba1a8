//! `limits.memory` where the kernel cannot enforce it (no memory
//! controller for the leaves, or no cgroup at all): the replica's memory is
//! sampled every second while such a replica runs, and one over its limit
//! is stopped and judged as a failure with reason `memory limit`
//! (docs/spec-file.md §5.2). With no such replica, nothing is sampled and
//! the loop gets no timer from here.

use std::time::{Duration, Instant};

use super::Supervisor;
use super::replica::{AfterStop, Judged, Phase, ReplicaId};

/// How often a sampled memory limit is checked.
pub(super) const SAMPLE_EVERY: Duration = Duration::from_secs(1);

impl Supervisor {
    /// When the memory limits are next checked; None: none is sampled.
    pub(super) fn memory_check_due(&self) -> Option<Instant> {
        self.sampled_memory()
            .next()
            .map(|_| self.memory_checked + SAMPLE_EVERY)
    }

    /// Stops every running replica over its sampled memory limit, once due.
    pub(super) fn check_memory(&mut self, now: Instant) {
        if now < self.memory_checked + SAMPLE_EVERY {
            return;
        }
        self.memory_checked = now;
        let over: Vec<(ReplicaId, u64, u64)> = self
            .sampled_memory()
            .filter_map(|(id, limit)| {
                let used = self.usage_source(&self.replicas[id])?.sample().memory?;
                (used > limit).then(|| (id.clone(), used, limit))
            })
            .collect();
        for (id, used, limit) in over {
            let pid = self.replicas[&id].phase.pid();
            let detail = format!(
                "{id} uses {}, over its memory limit of {}; stopping it",
                crate::usage::size(used),
                crate::usage::size(limit)
            );
            self.emit("memory_limit", Some(&id), pid, detail);
            self.stop_replica(&id, AfterStop::Judge(Judged::OverMemory));
        }
    }

    /// Running replicas whose memory limit is ours to enforce, with it.
    fn sampled_memory(&self) -> impl Iterator<Item = (&ReplicaId, u64)> {
        self.replicas.values().filter_map(|r| {
            if self.kernel_memory || !matches!(r.phase, Phase::Running { .. }) {
                return None;
            }
            let limit = self.spec.service(&r.id.service)?.limits.memory?;
            Some((&r.id, limit))
        })
    }
}
