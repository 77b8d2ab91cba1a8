//! `failover` (docs/spec-file.md §9): active-standby roles among a
//! service's replicas, and the hook that tells a replica it was promoted.

use nix::sys::signal::Signal;

use super::Checker;
use super::read::{Placeholders, Table};
use super::text::clip;
use crate::spec::template;
use crate::spec::{Failover, Promote, Scope};

const FAILOVER_KEYS: &[&str] = &[
    "mode",
    "promote",
    "promote_signal",
    "scope",
    "demote",
    "demote_signal",
];

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
        let scope = match t.get("scope") {
            Some(v) => self
                .choice(
                    "scope",
                    v,
                    &[("local", Scope::Local), ("cluster", Scope::Cluster)],
                )
                .unwrap_or(Scope::Local),
            None => Scope::Local,
        };
        if scope == Scope::Cluster
            && !self.has_cluster
            && let Some(v) = t.get("scope")
        {
            self.error(
                v.span(),
                "`scope = \"cluster\"` needs a [supervisor.cluster] table",
                "add [supervisor.cluster] with etcd = [\"http://127.0.0.1:2379\"] (docs/cluster.md §2)",
            );
        }
        let promote = self.hook(&t, "promote", "promote_signal");
        let uses_token = |arg: &String| {
            template::pieces(arg).is_ok_and(|p| p.contains(&template::Piece::Placeholder("token")))
        };
        if scope == Scope::Local
            && let (Some(v), Some(Promote::Command(argv))) = (t.get("promote"), &promote)
            && argv.iter().any(uses_token)
        {
            self.error(
                v.span(),
                "`{token}` is only given with scope = \"cluster\"",
                "a local promotion has no fencing token; remove it or set scope = \"cluster\"",
            );
        }
        let demote = self.hook(&t, "demote", "demote_signal");
        if scope == Scope::Local
            && let Some((k, _)) = t.entry("demote").or(t.entry("demote_signal"))
        {
            self.error(
                k.span(),
                format!("`{}` is only used with scope = \"cluster\"", k.get_ref().as_ref()),
                "a local active is demoted by being stopped; remove the key or set scope = \"cluster\"",
            );
        }
        Some(Failover {
            promote,
            scope,
            demote,
        })
    }

    /// A command (`key`) or a signal (`signal_key`), not both.
    fn hook(&mut self, t: &Table, key: &str, signal_key: &str) -> Option<Promote> {
        let command = self.field(t, key, |c, k, v| c.argv(k, v, Placeholders::Hook));
        let signal = self.field(t, signal_key, |c, k, v| {
            c.signal(
                k,
                v,
                &[Signal::SIGKILL, Signal::SIGSTOP],
                "SIGKILL and SIGSTOP cannot be caught, so the replica could not react; use e.g. SIGUSR1",
            )
        });
        if let (Some(_), Some((k, _))) = (t.get(key), t.entry(signal_key)) {
            self.error(
                k.span(),
                format!("both `{key}` and `{signal_key}` are set"),
                "choose one: a command to run, or a signal for the replica",
            );
        }
        command
            .map(Promote::Command)
            .or(signal.map(Promote::Signal))
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

    #[test]
    fn cluster_scope_needs_the_cluster_table_and_demote_needs_cluster_scope() {
        let (line, message) = one_problem(
            "[services.a]\ncommand = [\"a\"]\n[services.a.failover]\nmode = \"active-standby\"\n\
             scope = \"cluster\"\n",
        );
        assert_eq!(line, 5);
        assert!(
            message.contains("needs a [supervisor.cluster] table"),
            "{message}"
        );
        let (line, message) = one_problem(
            "[services.a]\ncommand = [\"a\"]\n[services.a.failover]\nmode = \"active-standby\"\n\
             demote_signal = \"SIGUSR2\"\n",
        );
        assert_eq!(line, 5);
        assert!(message.contains("only used with scope"), "{message}");
        let s = spec(
            "[supervisor.cluster]\netcd = [\"http://e:2379\"]\nnode = \"n\"\n\
             [services.a]\ncommand = [\"a\"]\n[services.a.failover]\nmode = \"active-standby\"\n\
             scope = \"cluster\"\npromote = [\"p\", \"{token}\"]\ndemote_signal = \"USR2\"\n",
        );
        let failover = s.services[0].failover.clone().unwrap();
        assert!(failover.is_cluster());
        let (line, message) = one_problem(
            "[services.a]\ncommand = [\"a\"]\n[services.a.failover]\nmode = \"active-standby\"\n\
             promote = [\"p\", \"{token}\"]\n",
        );
        assert_eq!(
            (line, message.as_str()),
            (5, "`{token}` is only given with scope = \"cluster\"")
        );
        assert_eq!(failover.demote, Some(Promote::Signal(Signal::SIGUSR2)));
    }
}
