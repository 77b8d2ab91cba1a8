//! `health` (docs/spec-file.md §7): exactly one probe, and the timing keys
//! that judge it.

use super::read::{Placeholders, STRING_HINT, Table};
use super::text::{clip, quote};
use super::values::{is_host_port, regex_reason};
use super::{Checker, Key, Value};
use crate::spec::{Health, HealthAction, Probe};

const PROBE_KEYS: &[&str] = &["exec", "http", "tcp", "notify", "log"];
const HEALTH_KEYS: &[&str] = &[
    "exec",
    "http",
    "tcp",
    "notify",
    "log",
    "interval",
    "timeout",
    "retries",
    "start_period",
    "action",
    "watchdog",
];

impl Checker<'_> {
    pub(super) fn health(&mut self, service: &Table, name: &str) -> Option<Health> {
        let label = format!("[services.{}.health]", clip(name));
        let t = self.sub_table(service, label, "health", HEALTH_KEYS)?;
        let probes: Vec<(&Key, &Value)> = t
            .entries
            .iter()
            .filter(|(k, _)| PROBE_KEYS.contains(&k.get_ref().as_ref()))
            .copied()
            .collect();
        let parsed: Vec<Option<Probe>> = probes
            .iter()
            .map(|(k, v)| self.probe(k.get_ref(), v))
            .collect();
        if let [(first, _), rest @ ..] = probes.as_slice() {
            for (k, _) in rest {
                self.error(
                    k.span(),
                    format!(
                        "`health` has more than one probe: `{}` and `{}`",
                        first.get_ref(),
                        k.get_ref()
                    ),
                    "keep exactly one of exec, http, tcp, notify and log",
                );
            }
        } else {
            self.error(
                t.at.clone(),
                format!("{} has no probe", t.label),
                "add one of exec = [...], http = \"URL\", tcp = \"HOST:PORT\", notify = true or log = \"REGEX\"",
            );
        }
        let is_notify = matches!(parsed.first(), Some(Some(Probe::Notify)));

        let mut health = Health::with_defaults(Probe::Notify);
        self.field_into(&t, "interval", &mut health.interval, Self::nonzero_duration);
        self.field_into(&t, "timeout", &mut health.timeout, Self::nonzero_duration);
        self.field_into(&t, "retries", &mut health.retries, |c, k, v| {
            c.count(
                k,
                v,
                1,
                "retries counts the consecutive failures that make a replica unhealthy; use 1 or more",
            )
        });
        self.field_into(&t, "start_period", &mut health.start_period, Self::duration);
        self.field_into(&t, "action", &mut health.action, |c, k, v| {
            c.choice(
                k,
                v,
                &[
                    ("restart", HealthAction::Restart),
                    ("none", HealthAction::None),
                ],
            )
        });
        if let Some((k, v)) = t.entry("watchdog") {
            health.watchdog = self.nonzero_duration("watchdog", v);
            if !is_notify && !probes.is_empty() {
                self.error(
                    k.span(),
                    "`watchdog` needs `notify = true`",
                    "the watchdog expects WATCHDOG=1 notifications; use notify = true or remove `watchdog`",
                );
            }
        }
        health.probe = parsed.into_iter().next().flatten()?;
        Some(health)
    }

    fn probe(&mut self, key: &str, v: &Value) -> Option<Probe> {
        match key {
            "exec" => self.argv(key, v, Placeholders::Replica).map(Probe::Exec),
            "http" => self
                .http_url(key, v, Some(Placeholders::Replica))
                .map(Probe::Http),
            "tcp" => {
                let target = self.templated_string(key, v, Placeholders::Replica)?;
                if is_host_port(&target) {
                    Some(Probe::Tcp(target))
                } else {
                    self.error(
                        v.span(),
                        format!("expected \"HOST:PORT\" in `tcp`, got {}", quote(&target)),
                        "e.g. tcp = \"127.0.0.1:{port}\"",
                    );
                    None
                }
            }
            "notify" => {
                if self.boolean(key, v)? {
                    Some(Probe::Notify)
                } else {
                    self.error(
                        v.span(),
                        "`notify = false` is not a probe",
                        "set notify = true, or remove it and use another probe",
                    );
                    None
                }
            }
            _ => {
                let pattern = self.string(key, v, STRING_HINT)?;
                match regex::Regex::new(pattern) {
                    Ok(_) => Some(Probe::Log(pattern.to_string())),
                    Err(e) => {
                        self.error(
                            v.span(),
                            format!("invalid regular expression in `{key}`: {}", regex_reason(&e)),
                            "`log` is a regular expression matched against each output line; escape special characters with \\\\",
                        );
                        None
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::spec;
    use super::*;

    #[test]
    fn notify_with_watchdog() {
        let s = spec(
            "[services.a]\ncommand = [\"a\"]\n\
             health = { notify = true, watchdog = \"10s\", action = \"none\" }\n",
        );
        let h = s.services[0].health.as_ref().unwrap();
        assert_eq!(h.probe, Probe::Notify);
        assert_eq!(h.watchdog, Some(Duration::from_secs(10)));
        assert_eq!(h.action, HealthAction::None);
    }
}
