//! `failover` (docs/spec-file.md §9): active-standby roles among a
//! service's replicas, and the hook that tells a replica it was promoted.

use nix::sys::signal::Signal;

use super::Checker;
use super::read::{Placeholders, Table};
use super::text::clip;
use crate::spec::{Failover, Promote};

const FAILOVER_KEYS: &[&str] = &["mode", "promote", "promote_signal"];

impl Checker<'_> {
    pub(super) fn failover(&mut self, service: &Table, name: &str) -> Option<Failover> {
        let label = format!("[services.{}.failover]", clip(name));
        let t = self.sub_table(service, label, "failover", FAILOVER_KEYS)?;
        match t.get("mode") {
            Some(v) => {
                self.choice("mode", v, &[("active-standby", ())]);
            }
            None => self.missing(&t, "mode", "add mode = \"active-standby\""),
        }
        let command = self.field(&t, "promote", |c, k, v| c.argv(k, v, Placeholders::Hook));
        let signal = self.field(&t, "promote_signal", |c, k, v| {
            c.signal(
                k,
                v,
                &[Signal::SIGKILL, Signal::SIGSTOP],
                "SIGKILL and SIGSTOP cannot be caught, so the replica could not react; use e.g. SIGUSR1",
            )
        });
        if let (Some(_), Some((k, _))) = (t.get("promote"), t.entry("promote_signal")) {
            self.error(
                k.span(),
                "both `promote` and `promote_signal` are set",
                "choose one: a command to run, or a signal for the promoted replica",
            );
        }
        Some(Failover {
            promote: command
                .map(Promote::Command)
                .or(signal.map(Promote::Signal)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{one_problem, spec};
    use super::*;

    #[test]
    fn signals_per_key() {
        let s = spec(
            "[services.a]\ncommand = [\"a\"]\nstop_signal = \"kill\"\nreplicas = 2\n\
             failover = { mode = \"active-standby\", promote_signal = \"usr1\" }\n",
        );
        assert_eq!(s.services[0].stop_signal, Signal::SIGKILL);
        let promote = s.services[0]
            .failover
            .as_ref()
            .and_then(|f| f.promote.clone());
        assert_eq!(promote, Some(Promote::Signal(Signal::SIGUSR1)));
        let (_, message) = one_problem(
            "[services.a]\ncommand = [\"a\"]\n\
             failover = { mode = \"active-standby\", promote_signal = \"SIGKILL\" }\n",
        );
        assert_eq!(message, "SIGKILL cannot be used as `promote_signal`");
    }
}
