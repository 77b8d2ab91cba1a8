//! Desired state that outlives the supervisor: replica counts set with
//! `scale` and replicas marked with `stop`. Kept in `<state_dir>/desired.json`,
//! written atomically (temp file, fsync, rename, fsync of the directory) on
//! every change; changes are rare, so there is nothing to batch.
//!
//! A `scale` is remembered together with the spec's replica count at the
//! time. If the spec's count has changed since (the file was edited), the
//! spec wins and the override is dropped: the newest intent counts.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::spec::Service;

const VERSION: u32 = 1;

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Desired {
    pub version: u32,
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
    /// Reads the file; a missing file is an empty desired state. A file
    /// that cannot be understood is an error for the caller to report.
    pub fn load(path: &Path) -> Result<Desired, String> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let desired: Desired = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("{} is unreadable: {e}", path.display()))?;
                if desired.version != VERSION {
                    return Err(format!(
                        "{} has version {}, this supervise understands {VERSION}",
                        path.display(),
                        desired.version
                    ));
                }
                Ok(desired)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Desired {
                version: VERSION,
                ..Desired::default()
            }),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&serde_json::to_vec_pretty(self)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

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

    #[test]
    fn round_trips_through_the_file_and_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("desired.json");
        let empty = Desired::load(&path).unwrap();
        assert!(empty.scaled.is_empty() && empty.stopped.is_empty());
        let mut d = empty.clone();
        d.scaled.insert(
            "api".into(),
            Scaled {
                replicas: 5,
                spec_replicas: 2,
            },
        );
        d.stopped.insert("api.1".into());
        d.save(&path).unwrap();
        assert_eq!(Desired::load(&path).unwrap(), d);
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("desired.json");
        std::fs::write(&path, "{\"version\": 1, \"scal").unwrap();
        let err = Desired::load(&path).unwrap_err();
        assert!(err.contains("desired.json is unreadable"), "{err}");
    }
}
