//! `[supervisor]` (docs/spec-file.md §4): the settings of the supervisor
//! itself, every one optional.

use std::net::SocketAddr;
use std::time::Duration;

use super::read::{SIZE_HINT, STRING_HINT, Table};
use super::text::quote;
use super::{Checker, normalize};
use crate::spec::{ClusterSettings, SupervisorSettings};

const SUPERVISOR_KEYS: &[&str] = &[
    "state_dir",
    "shutdown_timeout",
    "log_max_size",
    "log_keep",
    "metrics",
    "cluster",
];

const CLUSTER_KEYS: &[&str] = &["etcd", "node", "prefix", "lease"];

/// The shortest lease: a keep-alive goes out every third of it, and the
/// fencing margin (see `supervisor::cluster`) is a second.
const MIN_LEASE: Duration = Duration::from_secs(3);

impl Checker<'_> {
    pub(super) fn supervisor(&mut self, root: &Table) -> SupervisorSettings {
        let mut settings = SupervisorSettings::with_defaults(&self.dir);
        let Some(t) = self.sub_table(root, "[supervisor]".into(), "supervisor", SUPERVISOR_KEYS)
        else {
            return settings;
        };
        if let Some(v) = t.get("state_dir")
            && let Some(dir) = self.string("state_dir", v, STRING_HINT)
        {
            if dir.trim().is_empty() {
                self.error(
                    v.span(),
                    "`state_dir` is empty",
                    "name a directory, e.g. \".supervise\"",
                );
            } else {
                settings.state_dir = normalize(&self.dir.join(dir));
            }
        }
        self.field_into(
            &t,
            "shutdown_timeout",
            &mut settings.shutdown_timeout,
            Self::duration,
        );
        if let Some(v) = t.get("log_max_size")
            && let Some(size) = self.size("log_max_size", v)
        {
            if size == 0 {
                self.error(v.span(), "`log_max_size` must be more than zero", SIZE_HINT);
            } else {
                settings.log_max_size = size;
            }
        }
        self.field_into(&t, "log_keep", &mut settings.log_keep, |c, k, v| {
            c.count(k, v, 0, "give the number of rotated log files to keep")
        });
        if let Some(v) = t.get("metrics")
            && let Some(text) = self.string("metrics", v, STRING_HINT)
        {
            match text.parse::<SocketAddr>() {
                Ok(addr) => settings.metrics = Some(addr),
                Err(_) => self.error(
                    v.span(),
                    format!("invalid address {} in `metrics`", quote(text)),
                    "use an IP address and a port, e.g. \"127.0.0.1:9464\"",
                ),
            }
        }
        settings.cluster = self.cluster(&t);
        settings
    }

    fn cluster(&mut self, supervisor: &Table) -> Option<ClusterSettings> {
        let t = self.sub_table(
            supervisor,
            "[supervisor.cluster]".into(),
            "cluster",
            CLUSTER_KEYS,
        )?;
        self.has_cluster = true;
        let mut cluster = ClusterSettings {
            etcd: Vec::new(),
            node: String::new(),
            prefix: "/supervise".into(),
            lease: Duration::from_secs(10),
        };
        match t.get("etcd") {
            Some(v) => {
                for (url, span) in self.string_list("etcd", v).unwrap_or_default() {
                    let plain = url.strip_prefix("http://").filter(|rest| {
                        !rest.is_empty() && !rest.contains('/') || rest.ends_with('/')
                    });
                    match plain {
                        Some(_) => cluster.etcd.push(url.trim_end_matches('/').to_string()),
                        None => self.error(
                            span,
                            format!(
                                "`etcd` endpoints are http://HOST:PORT URLs, got {}",
                                quote(url)
                            ),
                            "e.g. \"http://127.0.0.1:2379\" (etcd's v3 JSON gateway, no TLS)",
                        ),
                    }
                }
                if matches!(v.get_ref(), toml::de::DeValue::Array(a) if a.is_empty()) {
                    self.error(v.span(), "`etcd` is empty", "list at least one endpoint");
                }
            }
            None => self.missing(&t, "etcd", "add etcd = [\"http://127.0.0.1:2379\"]"),
        }
        match t.get("node") {
            Some(v) => {
                if let Some(node) = self.string("node", v, STRING_HINT) {
                    if is_dns_label(node) {
                        cluster.node = node.to_string();
                    } else {
                        self.error(
                            v.span(),
                            format!("`node` {} is not a DNS label", quote(node)),
                            "use 1 to 63 lower-case letters, digits and inner hyphens, e.g. \"db-a\"",
                        );
                    }
                }
            }
            None => {
                let host = host_name();
                if is_dns_label(&host) {
                    cluster.node = host;
                } else {
                    self.missing(
                        &t,
                        "node",
                        &format!(
                            "the host name {} is not a DNS label: name this node, e.g. node = \"db-a\"",
                            quote(&host)
                        ),
                    );
                }
            }
        }
        if let Some(v) = t.get("prefix")
            && let Some(prefix) = self.string("prefix", v, STRING_HINT)
        {
            let trimmed = prefix.trim_end_matches('/');
            if prefix.starts_with('/') && !trimmed.is_empty() {
                cluster.prefix = trimmed.to_string();
            } else {
                self.error(
                    v.span(),
                    format!(
                        "`prefix` must be a path like \"/supervise/prod\", got {}",
                        quote(prefix)
                    ),
                    "start it with / and give it at least one name",
                );
            }
        }
        if let Some(v) = t.get("lease")
            && let Some(lease) = self.duration("lease", v)
        {
            if lease < MIN_LEASE || lease.subsec_nanos() != 0 {
                self.error(
                    v.span(),
                    format!(
                        "`lease` must be whole seconds, at least {}",
                        humantime::format_duration(MIN_LEASE)
                    ),
                    "the active is fenced a second before its lease ends, and keep-alives go out every quarter of it: use e.g. \"10s\"",
                );
            } else {
                cluster.lease = lease;
            }
        }
        Some(cluster)
    }
}

/// 1 to 63 lower-case letters, digits and hyphens, not at either end
/// (RFC 1123): a node name is part of keys and of messages.
fn is_dns_label(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::super::tests::{problems, spec};

    #[test]
    fn supervisor_settings() {
        let s = spec(
            "[supervisor]\nstate_dir = \"./var/state\"\nlog_max_size = 4096\nlog_keep = 0\n\
             shutdown_timeout = \"2m\"\n[services.a]\ncommand = [\"a\"]\n",
        );
        assert_eq!(s.supervisor.state_dir, Path::new("/srv/var/state"));
        assert_eq!(s.supervisor.log_max_size, 4096);
        assert_eq!(s.supervisor.log_keep, 0);
        assert_eq!(s.supervisor.shutdown_timeout, Duration::from_secs(120));
        let s = spec("[supervisor]\nstate_dir = \"/run/x\"\n[services.a]\ncommand = [\"a\"]\n");
        assert_eq!(s.supervisor.state_dir, Path::new("/run/x"));
    }

    #[test]
    fn cluster_settings_and_their_errors() {
        let s = spec(
            "[supervisor.cluster]\netcd = [\"http://10.0.0.1:2379/\", \"http://e2:2379\"]\n\
             node = \"db-a\"\nprefix = \"/supervise/prod/\"\nlease = \"3s\"\n\
             [services.a]\ncommand = [\"a\"]\n",
        );
        let c = s.supervisor.cluster.unwrap();
        assert_eq!(c.etcd, ["http://10.0.0.1:2379", "http://e2:2379"]);
        assert_eq!(
            (c.node.as_str(), c.prefix.as_str()),
            ("db-a", "/supervise/prod")
        );
        assert_eq!(c.lease, Duration::from_secs(3));
        let found = problems(
            "[supervisor.cluster]\netcd = [\"https://e:2379\"]\nnode = \"Db_A\"\n\
             prefix = \"x\"\nlease = \"2s\"\n[services.a]\ncommand = [\"a\"]\n",
        );
        let lines: Vec<usize> = found.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [2, 3, 4, 5], "{found:?}");
        assert!(found[1].1.contains("not a DNS label"), "{found:?}");
        assert!(found[3].1.contains("at least 3s"), "{found:?}");
    }
}
