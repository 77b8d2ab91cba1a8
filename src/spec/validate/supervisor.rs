//! `[supervisor]` (docs/spec-file.md §4): the settings of the supervisor
//! itself, every one optional.

use std::net::SocketAddr;

use super::read::{SIZE_HINT, STRING_HINT, Table};
use super::text::quote;
use super::{Checker, normalize};
use crate::spec::SupervisorSettings;

const SUPERVISOR_KEYS: &[&str] = &[
    "state_dir",
    "shutdown_timeout",
    "log_max_size",
    "log_keep",
    "metrics",
];

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
        settings
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::super::tests::spec;

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
}
