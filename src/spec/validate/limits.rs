//! `limits` (docs/spec-file.md §5.2): per-replica resource limits, applied
//! through the replica's cgroup leaf and its rlimits.

use toml::de::DeValue;

use super::read::Table;
use super::text::clip;
use super::{Checker, Value};
use crate::spec::Limits;

const LIMITS_KEYS: &[&str] = &["memory", "memory_high", "cpu", "pids", "nofile", "core"];

/// More cores than this is taken for a typo (cpu.max has no such bound).
const MAX_CPUS: f64 = 4096.0;

/// The kernel's ceiling for RLIMIT_NOFILE (`fs.nr_open` cannot go higher).
const MAX_NOFILE: i64 = 1 << 30;

impl Checker<'_> {
    pub(super) fn limits(&mut self, service: &Table, name: &str) -> Limits {
        let mut limits = Limits::default();
        let label = format!("[services.{}.limits]", clip(name));
        let Some(t) = self.sub_table(service, label, "limits", LIMITS_KEYS) else {
            return limits;
        };
        limits.memory = self.field(&t, "memory", Self::memory);
        limits.memory_high = self.field(&t, "memory_high", Self::memory);
        if let (Some(high), Some(max), Some(v)) =
            (limits.memory_high, limits.memory, t.get("memory_high"))
            && high > max
        {
            self.error(
                v.span(),
                format!("`memory_high` ({high} bytes) is above `memory` ({max} bytes)"),
                "memory_high throttles below the hard cap `memory`; lower it or drop it",
            );
        }
        limits.cpu = self.field(&t, "cpu", Self::cpus);
        limits.pids = self.field(&t, "pids", |c, k, v| {
            c.bounded(
                k,
                v,
                1..=i64::from(u32::MAX),
                "give the most processes (and threads) the replica may have, e.g. 256",
            )
        });
        limits.nofile = self.field(&t, "nofile", |c, k, v| {
            c.bounded(
                k,
                v,
                1..=MAX_NOFILE,
                "give the most open files per process, e.g. 65536",
            )
        });
        limits.core = self.field(&t, "core", |c, k, v| match v.get_ref() {
            DeValue::String(s) if s.as_ref() == "unlimited" => Some(u64::MAX),
            _ => c.size(k, v),
        });
        limits
    }

    /// A memory limit: a size above zero.
    fn memory(&mut self, key: &str, v: &Value) -> Option<u64> {
        let bytes = self.size(key, v)?;
        if bytes == 0 {
            self.error(
                v.span(),
                format!("`{key}` must be more than 0 bytes"),
                "give a size such as \"512MiB\"; leave the key out for no limit",
            );
            return None;
        }
        Some(bytes)
    }

    /// Cores, fractions allowed: `1.5`, `2`.
    fn cpus(&mut self, key: &str, v: &Value) -> Option<f64> {
        const HINT: &str = "give cores as a number above 0, e.g. 0.5 or 2";
        let cores = match v.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).ok()? as f64,
            DeValue::Float(f) => f.as_str().parse::<f64>().ok()?,
            _ => return self.wrong_type(key, v, "a number", HINT),
        };
        if !(cores > 0.0 && cores <= MAX_CPUS) {
            self.error(
                v.span(),
                format!("`{key}` must be above 0 and at most {MAX_CPUS}, got {cores}"),
                HINT,
            );
            return None;
        }
        Some(cores)
    }
}
