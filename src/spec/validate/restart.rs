//! `restart` (docs/spec-file.md §6): which ends of a replica are restarted,
//! the backoff, and when to give up.

use toml::de::DeValue;

use super::read::Table;
use super::text::clip;
use super::{Checker, Value};
use crate::spec::{Policy, RestartPolicy};

const RESTART_KEYS: &[&str] = &[
    "policy",
    "exit_codes",
    "delay",
    "max_delay",
    "reset_after",
    "limit",
    "window",
];

impl Checker<'_> {
    /// The restart policy, and the `policy` itself unless it was invalid.
    pub(super) fn restart(
        &mut self,
        service: &Table,
        name: &str,
    ) -> (RestartPolicy, Option<Policy>) {
        let mut restart = RestartPolicy::default();
        let label = format!("[services.{}.restart]", clip(name));
        let Some(t) = self.sub_table(service, label, "restart", RESTART_KEYS) else {
            let policy = service.get("restart").is_none().then_some(restart.policy);
            return (restart, policy);
        };
        let policy = match t.get("policy") {
            Some(v) => self.choice(
                "policy",
                v,
                &[
                    ("always", Policy::Always),
                    ("on-failure", Policy::OnFailure),
                    ("never", Policy::Never),
                ],
            ),
            None => Some(restart.policy),
        };
        if let Some(policy) = policy {
            restart.policy = policy;
        }
        self.field_into(&t, "exit_codes", &mut restart.exit_codes, Self::exit_codes);
        self.field_into(&t, "delay", &mut restart.delay, Self::duration);
        self.field_into(&t, "reset_after", &mut restart.reset_after, Self::duration);
        self.field_into(&t, "limit", &mut restart.limit, |c, k, v| {
            c.count(
                k,
                v,
                0,
                "give the number of restarts allowed within `window`; 0 never gives up",
            )
        });
        self.field_into(&t, "window", &mut restart.window, Self::nonzero_duration);
        match t.get("max_delay") {
            Some(v) => {
                if let Some(max) = self.duration("max_delay", v) {
                    if max < restart.delay {
                        self.error(
                            v.span(),
                            format!(
                                "`max_delay` ({}) is shorter than `delay` ({})",
                                humantime::format_duration(max),
                                humantime::format_duration(restart.delay)
                            ),
                            "the backoff grows from `delay` up to `max_delay`; raise `max_delay` or lower `delay`",
                        );
                    }
                    restart.max_delay = max;
                }
            }
            // A long `delay` alone raises the default cap rather than contradicting it.
            None => restart.max_delay = restart.max_delay.max(restart.delay),
        }
        (restart, policy)
    }

    fn exit_codes(&mut self, key: &str, v: &Value) -> Option<Vec<i32>> {
        let DeValue::Array(items) = v.get_ref() else {
            return self.wrong_type(key, v, "an array of integers", "e.g. exit_codes = [0, 2]");
        };
        let codes: Vec<Option<i32>> = items
            .iter()
            .map(|item| self.bounded(key, item, 0..=255, "exit codes are between 0 and 255"))
            .collect();
        codes.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::spec;

    #[test]
    fn a_long_delay_raises_the_default_backoff_cap() {
        let s = spec("[services.a]\ncommand = [\"a\"]\nrestart = { delay = \"1m\" }\n");
        assert_eq!(s.services[0].restart.max_delay, Duration::from_secs(60));
    }
}
