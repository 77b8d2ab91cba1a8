//! Desired state that outlives the supervisor: replica counts set with
//! `scale` and replicas marked with `stop`. It is part of the checkpoint,
//! saved at once on every change (changes are rare: nothing to batch).
//!
//! A `scale` is remembered together with the spec's replica count at the
//! time. If the spec's count has changed since (the file was edited), the
//! spec wins and the override is dropped: the newest intent counts.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::spec::Service;

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Desired {
    /// Service → replica count set with `scale`.
    pub scaled: BTreeMap<String, Scaled>,
    /// Replicas (`svc.N`) stopped with `stop`.
    pub stopped: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scaled {
    pub replicas: u32,
    /// The spec's `replicas` when the scale was made.
    pub spec_replicas: u32,
}

impl Desired {
    /// How many replicas of `service` should exist.
    pub fn replicas(&self, service: &Service) -> u32 {
        match self.scaled.get(&service.name) {
            Some(s) if s.spec_replicas == service.replicas => s.replicas,
            _ => service.replicas,
        }
    }

    /// Drops what no longer applies to `services` (removed services, spec
    /// counts edited since a scale, stop marks of replicas that are gone).
    pub fn prune(&mut self, services: &[Service]) {
        self.scaled.retain(|name, s| {
            services
                .iter()
                .any(|svc| &svc.name == name && svc.replicas == s.spec_replicas)
        });
        let keep: BTreeSet<String> = services
            .iter()
            .flat_map(|svc| (0..self.replicas(svc)).map(move |i| format!("{}.{i}", svc.name)))
            .collect();
        self.stopped.retain(|r| keep.contains(r));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::testing::service;

    #[test]
    fn a_scale_holds_until_the_spec_count_changes() {
        let mut d = Desired::default();
        d.scaled.insert(
            "api".into(),
            Scaled {
                replicas: 5,
                spec_replicas: 2,
            },
        );
        assert_eq!(d.replicas(&service("api", 2)), 5);
        assert_eq!(d.replicas(&service("api", 3)), 3, "the edited spec wins");
    }

    #[test]
    fn prune_forgets_removed_services_and_replicas() {
        let mut d = Desired::default();
        d.scaled.insert(
            "gone".into(),
            Scaled {
                replicas: 5,
                spec_replicas: 1,
            },
        );
        d.stopped.insert("api.0".into());
        d.stopped.insert("api.7".into());
        d.prune(&[service("api", 2)]);
        assert!(d.scaled.is_empty());
        assert_eq!(d.stopped.iter().collect::<Vec<_>>(), ["api.0"]);
    }
}
