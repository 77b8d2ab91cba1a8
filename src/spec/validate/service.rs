//! `[services.NAME]` (docs/spec-file.md §5): one service's own keys (name,
//! command, replicas, cwd, environment, user and group, stop signal and
//! timeout, image), and the calls into the sections it holds (`health`,
//! `restart`, `depends_on`, `failover`, ports). What is read becomes a
//! [`Draft`], which keeps the spans that the checks across services point at.

use std::collections::BTreeSet;
use std::path::Path;

use nix::sys::signal::Signal;
use nix::unistd::{Gid, Group, Uid, User};
use toml::de::DeValue;

use super::env_file::{self, is_env_name, parse_env_file, set_env};
use super::read::{ARGV_HINT, Placeholders, STRING_HINT, Table};
use super::text::{clip, quote};
use super::values::{MAX_NAME_LEN, is_service_name};
use super::{Checker, Key, Span, Value};
use crate::spec::diagnostic::Diagnostic;
use crate::spec::{GroupSpec, Policy, Service, UserSpec};

/// More replicas than this is taken for a typo rather than a plan.
const MAX_REPLICAS: i64 = 10_000;
const SERVICE_KEYS: &[&str] = &[
    "command",
    "replicas",
    "cwd",
    "env",
    "env_file",
    "port",
    "user",
    "group",
    "stop_signal",
    "stop_timeout",
    "health",
    "restart",
    "depends_on",
    "failover",
    "image",
    "limits",
];

/// A user id or group id given by name or by number.
enum Account<'v> {
    Name(&'v str),
    Id(u32),
}

/// A service as far as it could be read, plus the spans the cross-service checks point at.
pub(super) struct Draft {
    pub(super) service: Service,
    /// The service's name in its header or key.
    pub(super) at: Span,
    pub(super) port_at: Option<Span>,
    /// Parallel to `service.depends_on`.
    pub(super) dependency_at: Vec<Span>,
    /// `None` when `restart.policy` was invalid, so no check relies on a guess.
    pub(super) policy: Option<Policy>,
}

impl Checker<'_> {
    pub(super) fn services(&mut self, root: &Table) -> Vec<Draft> {
        const HINT: &str = "add a service, e.g. [services.web] with command = [\"./web\"]";
        let Some((key, v)) = root.entry("services") else {
            self.error(0..0, "the spec defines no services", HINT);
            return Vec::new();
        };
        let DeValue::Table(services) = v.get_ref() else {
            self.wrong_type::<()>("services", v, "a table", HINT);
            return Vec::new();
        };
        let services = Table::new("[services]".into(), key.span(), services);
        if services.entries.is_empty() {
            self.error(key.span(), "the spec defines no services", HINT);
        }
        // A set, since every dependency of every service is looked up in it.
        let names: BTreeSet<&str> = services
            .entries
            .iter()
            .map(|(k, _)| k.get_ref().as_ref())
            .collect();
        services
            .entries
            .iter()
            .filter_map(|(k, v)| self.service(k, v, &names))
            .collect()
    }

    fn service(&mut self, key: &Key, v: &Value, names: &BTreeSet<&str>) -> Option<Draft> {
        let name = key.get_ref().as_ref();
        self.service_name(name, key.span());
        let label = format!("[services.{}]", clip(name));
        let t = self.table(label, name, key.span(), v, SERVICE_KEYS)?;
        self.port_uses.clear();

        // Every key read is set over its default, so the checks across
        // services see a whole service even where a value was wrong.
        let mut service = Service::with_defaults(name, Vec::new());
        match t.get("command") {
            Some(_) => self.field_into(&t, "command", &mut service.command, |c, k, v| {
                c.argv(k, v, Placeholders::Replica)
            }),
            None => self.missing(&t, "command", ARGV_HINT),
        }
        self.field_into(&t, "replicas", &mut service.replicas, |c, k, v| {
            c.bounded(
                k,
                v,
                0..=MAX_REPLICAS,
                "use 0 to define a service without starting it; more than 10000 replicas is not supported",
            )
        });
        service.port = self.field(&t, "port", |c, k, v| {
            c.bounded(k, v, 1..=65535, "use a TCP port between 1 and 65535")
        });
        service.cwd = self.field(&t, "cwd", |c, k, v| {
            c.templated_string(k, v, Placeholders::Replica)
        });
        service.env = self.service_env(&t, name);
        service.group = self.field(&t, "group", Self::group);
        service.user = self.field(&t, "user", |c, k, v| c.user(k, v, service.group.as_ref()));
        self.field_into(&t, "stop_signal", &mut service.stop_signal, |c, k, v| {
            c.signal(
                k,
                v,
                &[Signal::SIGSTOP],
                "SIGSTOP pauses a process instead of stopping it; use SIGTERM, SIGINT or SIGQUIT",
            )
        });
        self.field_into(
            &t,
            "stop_timeout",
            &mut service.stop_timeout,
            Self::duration,
        );
        service.health = self.health(&t, name);
        let (restart, policy) = self.restart(&t, name);
        service.restart = restart;
        let (depends_on, dependency_at) = self.depends_on(&t, name, names);
        service.depends_on = depends_on;
        service.failover = self.failover(&t, name);
        service.limits = self.limits(&t, name);
        service.image = self
            .field(&t, "image", |c, k, v| c.string(k, v, STRING_HINT))
            .map(str::to_string);
        let port_value = t.get("port");
        self.service_ports(name, port_value, service.port, service.replicas);

        Some(Draft {
            service,
            at: key.span(),
            port_at: port_value.map(|v| v.span()),
            dependency_at,
            policy,
        })
    }

    fn service_name(&mut self, name: &str, at: Span) {
        if is_service_name(name) {
            return;
        }
        let lower: String = name
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let hint = if is_service_name(&lower) {
            format!("use lowercase letters, digits, `-` and `_`, e.g. \"{lower}\"")
        } else {
            format!(
                "use lowercase letters, digits, `-` and `_`, starting with a letter or digit, at most {MAX_NAME_LEN} characters"
            )
        };
        self.error(at, format!("invalid service name {}", quote(name)), hint);
    }

    /// `env_file` entries, then `env` entries (which win), without duplicate keys.
    fn service_env(&mut self, t: &Table, service: &str) -> Vec<(String, String)> {
        let mut env = Vec::new();
        if let Some(v) = t.get("env_file") {
            for (key, value) in self.env_file(v, service) {
                // An env file is data, not a template: its braces are literal.
                set_env(&mut env, key, value.replace('{', "{{").replace('}', "}}"));
            }
        }
        let Some(v) = t.get("env") else {
            return env;
        };
        let DeValue::Table(vars) = v.get_ref() else {
            self.wrong_type::<()>("env", v, "a table", "write env = { NAME = \"value\" }");
            return env;
        };
        for (k, value) in Table::new(String::new(), v.span(), vars).entries {
            let key = k.get_ref().as_ref();
            if !is_env_name(key) {
                self.error(
                    k.span(),
                    format!("invalid environment variable name {}", quote(key)),
                    "use letters, digits and `_`, not starting with a digit",
                );
            }
            let name = format!("env.{}", clip(key));
            if let Some(value) = self.templated_string(&name, value, Placeholders::Replica) {
                set_env(&mut env, key.to_string(), value);
            }
        }
        env
    }

    fn env_file(&mut self, v: &Value, service: &str) -> Vec<(String, String)> {
        let Some(rel) = self.string("env_file", v, STRING_HINT) else {
            return Vec::new();
        };
        let full = self.dir.join(rel);
        let shown = self.path.parent().unwrap_or(Path::new("")).join(rel);
        let text = match env_file::read(&full) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => text,
                Err(_) => {
                    self.error(
                        v.span(),
                        format!("env file {} is not valid UTF-8", quote(rel)),
                        "save the env file as UTF-8 text",
                    );
                    return Vec::new();
                }
            },
            Err(why) => {
                self.error(
                    v.span(),
                    format!("env file {} {why}", quote(rel)),
                    format!(
                        "the path is relative to the spec's directory {}",
                        self.dir.display()
                    ),
                );
                return Vec::new();
            }
        };
        let (vars, errors) = parse_env_file(&text);
        for e in errors {
            let hint = format!("{} (env file of service {})", e.hint, quote(service));
            let diagnostic = Diagnostic::at(&shown, &text, e.span, e.message, hint);
            // Listed where the spec names the file, so the report stays in spec order.
            self.found.push((v.span().start, diagnostic));
        }
        vars
    }

    fn account<'v>(&mut self, key: &str, v: &'v Value) -> Option<Account<'v>> {
        let hint = "give a name in quotes or a numeric id";
        if let DeValue::Integer(_) = v.get_ref() {
            return self.count(key, v, 0, hint).map(Account::Id);
        }
        let text = self.string(key, v, hint)?;
        Some(match text.parse::<u32>() {
            Ok(id) => Account::Id(id),
            Err(_) => Account::Name(text),
        })
    }

    fn group(&mut self, key: &str, v: &Value) -> Option<GroupSpec> {
        let account = self.account(key, v)?;
        let found = match account {
            Account::Name(name) => Group::from_name(name),
            Account::Id(gid) => Group::from_gid(Gid::from_raw(gid)),
        };
        match (found, account) {
            (Ok(Some(g)), _) => Some(GroupSpec {
                name: g.name,
                gid: g.gid.as_raw(),
            }),
            // setgid only needs the number, so a gid without an entry is usable.
            (Ok(None), Account::Id(gid)) => Some(GroupSpec {
                name: gid.to_string(),
                gid,
            }),
            (Ok(None), Account::Name(name)) => {
                self.error(
                    v.span(),
                    format!("unknown group {}", quote(name)),
                    "create the group, or give an existing group name or a numeric gid",
                );
                None
            }
            (Err(e), _) => {
                self.error(
                    v.span(),
                    format!("cannot look up the group: {e}"),
                    "check the system's group database (/etc/group, NSS)",
                );
                None
            }
        }
    }

    fn user(&mut self, key: &str, v: &Value, group: Option<&GroupSpec>) -> Option<UserSpec> {
        let account = self.account(key, v)?;
        let found = match account {
            Account::Name(name) => User::from_name(name),
            Account::Id(uid) => User::from_uid(Uid::from_raw(uid)),
        };
        match (found, account) {
            (Ok(Some(u)), _) => Some(UserSpec {
                name: u.name,
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
            }),
            // Without a passwd entry the primary group is unknown; an explicit `group` supplies it.
            (Ok(None), Account::Id(uid)) => match group {
                Some(g) => Some(UserSpec {
                    name: uid.to_string(),
                    uid,
                    gid: g.gid,
                }),
                None => {
                    self.error(
                        v.span(),
                        format!("uid {uid} has no entry in the user database"),
                        "set `group` as well, so the replica's group is known",
                    );
                    None
                }
            },
            (Ok(None), Account::Name(name)) => {
                self.error(
                    v.span(),
                    format!("unknown user {}", quote(name)),
                    "create the user, or give an existing user name or a numeric uid",
                );
                None
            }
            (Err(e), _) => {
                self.error(
                    v.span(),
                    format!("cannot look up the user: {e}"),
                    "check the system's user database (/etc/passwd, NSS)",
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{one_problem, spec};

    #[test]
    fn accounts_by_name_or_number() {
        let s = spec("[services.a]\ncommand = [\"a\"]\nuser = 0\ngroup = \"0\"\n");
        assert_eq!(
            s.services[0].user.as_ref().map(|u| u.name.as_str()),
            Some("root")
        );
        assert_eq!(s.services[0].group.as_ref().map(|g| g.gid), Some(0));
        // A uid without a passwd entry needs `group` for its primary group.
        let (_, message) = one_problem("[services.a]\ncommand = [\"a\"]\nuser = 3999999\n");
        assert!(
            message.contains("no entry in the user database"),
            "{message}"
        );
        let s = spec("[services.a]\ncommand = [\"a\"]\nuser = 3999999\ngroup = 3999998\n");
        let user = s.services[0].user.as_ref().unwrap();
        assert_eq!((user.uid, user.gid), (3999999, 3999998));
    }
}
