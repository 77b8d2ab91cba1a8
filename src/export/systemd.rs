//! `export --format systemd`: one template unit per service
//! (`<service>@.service`, the instance is the replica index), a drop-in per
//! replica for what depends on its port, and `<project>.target`, which
//! wants every replica and stops them all.
//!
//! Placeholders: `{replica}` is the instance, `%i`; `{service}` is the
//! name; `{port}` (the base port plus the replica index) has no specifier,
//! so each replica's drop-in `<service>@<N>.service.d/port.conf` sets
//! `PORT`, and `ExecStart=` reads it as `${PORT}`; an `env` value or `cwd`
//! that uses `{port}` is written, expanded, into the drop-ins too.
//!
//! Quoting follows systemd.syntax(7) and systemd.service(5): specifiers are
//! expanded first (`%` is written `%%`), then words are unquoted (double
//! quotes, C escapes), then `ExecStart=` expands `$VAR` (a literal `$` is
//! written `$$`).

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{
    Elsewhere, Export, File, Part, Warnings, duration, parts, report_outside_services, uses,
};
use crate::spec::{
    Condition, Dependency, Failover, Health, HealthAction, Limits, Policy, Probe, RestartPolicy,
    Service, Spec,
};

const TARGET: &str = "systemd";

/// Where systemd itself looks for a command given without a path.
const SYSTEMD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Translates `spec`. `source` names the spec file in comments; `search`
/// is the `PATH` through which supervise would find a command given by
/// name, resolved here because the unit runs outside this environment.
pub fn export(spec: &Spec, project: &str, source: &str, search: &OsStr) -> Export {
    let Spec {
        path: _,
        dir,
        supervisor,
        services,
        alerts,
    } = spec;
    let mut warnings = Warnings::default();
    let mut files = Vec::new();
    for service in services {
        let unit = Unit {
            spec,
            service,
            project,
            dir,
        };
        files.extend(unit.files(source, search, &mut warnings));
    }
    let elsewhere = Elsewhere {
        target: TARGET,
        shutdown_timeout: "each unit stops within its TimeoutStopSec=, from stop_timeout",
        logs: "journald keeps the output: SystemMaxFileSize= and SystemMaxFiles= in \
               journald.conf",
        metrics: "`systemctl show -p NRestarts` counts restarts",
        alerts: "OnFailure= can start a unit when another fails",
    };
    report_outside_services(supervisor, alerts, &elsewhere, &mut warnings);
    let wants: Vec<String> = services
        .iter()
        .flat_map(|s| (0..s.replicas).map(|i| instance(&s.name, i)))
        .collect();
    let mut target = format!(
        "# Project {project}, written by `supervise export --format systemd` from {source}.\n\
         # `systemctl start {project}.target` starts every replica in dependency order;\n\
         # `systemctl stop {project}.target` stops them all, in reverse order.\n\
         [Unit]\nDescription={}\n",
        specifiers(&format!("{project} (exported by supervise from {source})"))
    );
    if !wants.is_empty() {
        target.push_str(&format!("Wants={}\n", wants.join(" ")));
    }
    target.push_str("\n[Install]\nWantedBy=multi-user.target\n");
    files.push(File {
        path: format!("{project}.target").into(),
        content: target,
    });
    Export {
        files,
        warnings: warnings.into_vec(),
    }
}

fn instance(service: &str, index: u32) -> String {
    format!("{service}@{index}.service")
}

/// `%` is the specifier character in every value of a unit file.
fn specifiers(text: &str) -> String {
    text.replace('%', "%%")
}

/// One word of `ExecStart=` or `Environment=`: as is when it is plain,
/// else double-quoted with C escapes.
fn word(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:,+=@%${}".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        return text.to_string();
    }
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() && (c as u32) < 0x80 => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// What `{port}` becomes.
#[derive(Clone, Copy)]
enum Port {
    /// `${PORT}`, which `ExecStart=` expands from the replica's drop-in.
    Variable,
    /// One replica's port, in its drop-in.
    Value(u16),
}

/// Where a rendered template goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    /// `ExecStart=`: `$` is special.
    Exec,
    /// `Environment=`, `WorkingDirectory=`: only `%` is.
    Plain,
}

struct Unit<'a> {
    spec: &'a Spec,
    service: &'a Service,
    project: &'a str,
    dir: &'a Path,
}

impl Unit<'_> {
    fn render(&self, template: &str, port: Port, field: Field) -> String {
        let mut out = String::new();
        for part in parts(template) {
            match (part, port) {
                (Part::Text(text), _) if field == Field::Exec => {
                    out.push_str(&specifiers(&text.replace('$', "$$")))
                }
                (Part::Text(text), _) => out.push_str(&specifiers(&text)),
                (Part::Placeholder("replica"), _) => out.push_str("%i"),
                (Part::Placeholder("service"), _) => out.push_str(&specifiers(&self.service.name)),
                (Part::Placeholder("port"), Port::Variable) => out.push_str("${PORT}"),
                (Part::Placeholder("port"), Port::Value(p)) => out.push_str(&p.to_string()),
                // Validation allows no other placeholder here.
                (Part::Placeholder(other), _) => out.push_str(&format!("{{{other}}}")),
            }
        }
        out
    }

    /// `WorkingDirectory=`: the spec's directory, or `cwd` resolved against it.
    fn working_directory(&self, port: Port) -> String {
        let dir = specifiers(&self.dir.to_string_lossy());
        match &self.service.cwd {
            None => dir,
            Some(cwd) if cwd.starts_with('/') => self.render(cwd, port, Field::Plain),
            Some(cwd) => format!("{dir}/{}", self.render(cwd, port, Field::Plain)),
        }
    }

    fn files(&self, source: &str, search: &OsStr, warnings: &mut Warnings) -> Vec<File> {
        let Service {
            name,
            command,
            replicas,
            cwd,
            env,
            port,
            user,
            group,
            stop_signal,
            stop_timeout,
            health,
            restart,
            depends_on,
            failover,
            image: _, // for Kubernetes only
            limits,
        } = self.service;
        let place = name.as_str();
        let mut unit = vec![
            format!(
                "Description={}: {} replica %i",
                self.project,
                specifiers(name)
            ),
            format!("PartOf={}.target", self.project),
        ];
        let mut body = Vec::new();

        let notify = matches!(health, Some(h) if h.probe == Probe::Notify);
        // A service some dependant waits on to complete is a oneshot: its
        // dependants start once it has exited (successfully, or they fail).
        let awaited = self.spec.services.iter().any(|s| {
            s.depends_on
                .iter()
                .any(|d| d.service == *name && d.condition == Condition::Completed)
        });
        if notify {
            body.push("Type=notify".to_string());
            // supervise takes READY=1 from any process of the replica.
            body.push("NotifyAccess=all".to_string());
        } else if awaited && restart.policy != Policy::Always {
            body.push("Type=oneshot".to_string());
            body.push("RemainAfterExit=yes".to_string());
        } else {
            // Unlike `simple`, `exec` fails the start when the command cannot run.
            body.push("Type=exec".to_string());
        }

        let cwd_uses_port = cwd.as_deref().is_some_and(|c| uses(c, "port"));
        let working_directory = self.working_directory(Port::Variable);
        let argv: Vec<String> = command
            .iter()
            .enumerate()
            .map(|(i, arg)| match i {
                0 => self.program(arg, cwd_uses_port, &working_directory, search, warnings),
                _ => self.render(arg, Port::Variable, Field::Exec),
            })
            .collect();
        let exec: Vec<String> = argv.iter().map(|a| word(a)).collect();
        body.push(format!("ExecStart={}", exec.join(" ")));
        if !cwd_uses_port {
            body.push(format!("WorkingDirectory={working_directory}"));
        }
        body.push(format!(
            "Environment=SUPERVISE_SERVICE={}",
            word(&specifiers(name))
        ));
        body.push("Environment=SUPERVISE_REPLICA=%i".to_string());
        let own = ["SUPERVISE_SERVICE", "SUPERVISE_REPLICA", "PORT"];
        // supervise's own variables win over the spec's, as when it runs the replica.
        let env: Vec<&(String, String)> = env
            .iter()
            .filter(|(k, _)| !own.contains(&k.as_str()))
            .collect();
        for (key, value) in &env {
            if !uses(value, "port") {
                let value = self.render(value, Port::Variable, Field::Plain);
                body.push(format!(
                    "Environment={}",
                    word(&format!("{}={value}", specifiers(key)))
                ));
            }
        }
        if let Some(user) = user {
            body.push(format!("User={}", specifiers(&user.name)));
        }
        if let Some(group) = group {
            body.push(format!("Group={}", specifiers(&group.name)));
        }
        self.restart(restart, &mut unit, &mut body, place, warnings);
        body.push(format!("TimeoutStopSec={}", duration(*stop_timeout)));
        body.push(format!("KillSignal={}", stop_signal.as_str()));
        // The whole process tree, as supervise stops it.
        body.push("KillMode=control-group".to_string());
        body.extend(resource_limits(limits));
        if let Some(health) = health {
            self.health(health, &mut body, place, warnings);
        }
        for dependency in depends_on {
            self.dependency(dependency, &mut unit, place, warnings);
        }
        if let Some(Failover {
            promote: _,
            scope: _,
            demote: _,
        }) = failover
        {
            warnings.add(
                place,
                "failover cannot be expressed in systemd (every instance is equal); dropped",
            );
        }

        let content = format!(
            "# {name} of project {}, written by `supervise export --format systemd` from {source}.\n\
             # Replica N is the instance {name}@N.service; {}.target starts them all.\n\
             [Unit]\n{}\n\n[Service]\n{}\n",
            self.project,
            self.project,
            unit.join("\n"),
            body.join("\n")
        );
        let mut files = vec![File {
            path: format!("{name}@.service").into(),
            content,
        }];
        if let Some(base) = port {
            for i in 0..*replicas {
                let port = base + i as u16;
                let mut lines = vec![format!("Environment=PORT={port}")];
                for (key, value) in &env {
                    if uses(value, "port") {
                        let value = self.render(value, Port::Value(port), Field::Plain);
                        lines.push(format!(
                            "Environment={}",
                            word(&format!("{}={value}", specifiers(key)))
                        ));
                    }
                }
                if cwd_uses_port {
                    lines.push(format!(
                        "WorkingDirectory={}",
                        self.working_directory(Port::Value(port))
                    ));
                }
                files.push(File {
                    path: PathBuf::from(format!("{}.d", instance(name, i))).join("port.conf"),
                    content: format!(
                        "# Replica {i} of {name} has {{port}} = {base} + {i}; systemd has no \
                         specifier for it.\n[Service]\n{}\n",
                        lines.join("\n")
                    ),
                });
            }
        }
        files
    }

    /// The program of `ExecStart=`: systemd wants an absolute path (or finds
    /// a bare name in its own fixed path), so a name is looked up in the
    /// `PATH` supervise would use, and a relative path is resolved against
    /// the working directory, as supervise does.
    fn program(
        &self,
        template: &str,
        cwd_uses_port: bool,
        working_directory: &str,
        search: &OsStr,
        warnings: &mut Warnings,
    ) -> String {
        let rendered = self.render(template, Port::Variable, Field::Exec);
        let place = &self.service.name;
        if template.starts_with('/') {
            return rendered;
        }
        if template.contains('/') {
            if cwd_uses_port {
                warnings.add(
                    place,
                    format!(
                        "command {template} is relative to a cwd that uses {{port}}, which \
                         systemd cannot resolve in ExecStart=; kept relative"
                    ),
                );
                return rendered;
            }
            return format!("{working_directory}/{}", rendered.trim_start_matches("./"));
        }
        if !parts(template).iter().all(|p| matches!(p, Part::Text(_))) {
            return rendered;
        }
        let found = std::env::split_paths(search)
            .filter(|dir| dir.is_absolute())
            .map(|dir| dir.join(template))
            .find(|path| is_executable(path));
        match found {
            Some(path) => specifiers(&path.to_string_lossy().replace('$', "$$")),
            None => {
                warnings.add(
                    place,
                    format!(
                        "command {template} is not on PATH here; kept as a name, which systemd \
                         looks for in {SYSTEMD_PATH} only"
                    ),
                );
                rendered
            }
        }
    }

    fn restart(
        &self,
        restart: &RestartPolicy,
        unit: &mut Vec<String>,
        body: &mut Vec<String>,
        place: &str,
        warnings: &mut Warnings,
    ) {
        let RestartPolicy {
            policy,
            exit_codes,
            delay,
            max_delay,
            reset_after,
            limit,
            window,
        } = restart;
        let default = RestartPolicy::default();
        body.push(
            match policy {
                Policy::Always => "Restart=always",
                Policy::OnFailure => "Restart=on-failure",
                Policy::Never => "Restart=no",
            }
            .to_string(),
        );
        if *policy != Policy::Always {
            // Under `always` every exit restarts: success does not matter.
            let more: Vec<String> = exit_codes
                .iter()
                .filter(|c| **c != 0)
                .map(|c| c.to_string())
                .collect();
            if !more.is_empty() {
                body.push(format!("SuccessExitStatus={}", more.join(" ")));
            }
            if !exit_codes.contains(&0) {
                warnings.add(
                    place,
                    format!(
                        "restart.exit_codes {exit_codes:?} cannot be expressed in systemd, for \
                         which exit code 0 is always a success; 0 stays a success"
                    ),
                );
            }
        }
        if *policy == Policy::Never {
            // supervise never restarts it: the backoff and the limit mean nothing.
            return;
        }
        body.push(format!("RestartSec={}", duration(*delay)));
        if max_delay > delay {
            let steps = (max_delay.as_secs_f64() / delay.as_secs_f64())
                .log2()
                .ceil() as u32;
            body.push(
                "# supervise doubles the delay after each failure in a row; systemd 254 or \
                 later can too:"
                    .to_string(),
            );
            body.push(format!("#RestartSteps={steps}"));
            body.push(format!("#RestartMaxDelaySec={}", duration(*max_delay)));
            if *max_delay != default.max_delay {
                warnings.add(
                    place,
                    format!(
                        "restart.max_delay {} cannot be expressed before systemd 254; every \
                         restart waits RestartSec= (RestartSteps= and RestartMaxDelaySec= are \
                         in the unit, commented out)",
                        duration(*max_delay)
                    ),
                );
            }
        }
        if *reset_after != default.reset_after {
            warnings.add(
                place,
                format!(
                    "restart.reset_after {} cannot be expressed in systemd; dropped",
                    duration(*reset_after)
                ),
            );
        }
        if *limit == 0 {
            // limit = 0: never give up.
            unit.push("StartLimitIntervalSec=0".to_string());
        } else {
            unit.push(format!("StartLimitIntervalSec={}", duration(*window)));
            // systemd counts the first start too: `limit` restarts are limit + 1 starts.
            unit.push(format!("StartLimitBurst={}", limit + 1));
        }
    }

    fn health(
        &self,
        health: &Health,
        body: &mut Vec<String>,
        place: &str,
        warnings: &mut Warnings,
    ) {
        let Health {
            probe,
            // Checks of the probes systemd cannot run; notify has none.
            interval: _,
            timeout: _,
            retries: _,
            start_period,
            action,
            watchdog,
        } = health;
        let key = match probe {
            Probe::Notify => {
                // supervise, too, judges a replica not ready by then.
                body.push(format!("TimeoutStartSec={}", duration(*start_period)));
                if let Some(watchdog) = watchdog {
                    body.push(format!("WatchdogSec={}", duration(*watchdog)));
                }
                if *action == HealthAction::None {
                    warnings.add(
                        place,
                        "health.action none cannot be expressed in systemd: it stops a service \
                         not ready within TimeoutStartSec= or silent past WatchdogSec= (and \
                         Restart= applies)",
                    );
                }
                return;
            }
            Probe::Exec(_) => "exec",
            Probe::Http(_) => "http",
            Probe::Tcp(_) => "tcp",
            Probe::Log(_) => "log",
        };
        warnings.add(
            place,
            format!("health.{key} cannot be expressed in systemd (only notify is); dropped"),
        );
    }

    /// `Requires=` and `After=` on every replica of the dependency.
    fn dependency(
        &self,
        dependency: &Dependency,
        unit: &mut Vec<String>,
        place: &str,
        warnings: &mut Warnings,
    ) {
        let Dependency { service, condition } = dependency;
        let Some(dep) = self.spec.service(service) else {
            return; // validation guarantees it exists
        };
        let dep_notify = matches!(&dep.health, Some(h) if h.probe == Probe::Notify);
        match condition {
            Condition::Started => {}
            Condition::Healthy => {
                if let Some(h) = &dep.health
                    && !dep_notify
                {
                    let probe = match h.probe {
                        Probe::Exec(_) => "exec",
                        Probe::Http(_) => "http",
                        Probe::Tcp(_) => "tcp",
                        _ => "log",
                    };
                    warnings.add(
                        place,
                        format!(
                            "depends_on {service} = \"healthy\" cannot be expressed in systemd, \
                             which cannot check {service}'s health.{probe}; ordered after {service} \
                             has started"
                        ),
                    );
                }
            }
            Condition::Completed => {
                if dep_notify {
                    warnings.add(
                        place,
                        format!(
                            "depends_on {service} = \"completed\" cannot be expressed in systemd \
                             for a notify service; ordered after {service} is ready"
                        ),
                    );
                }
            }
        }
        let instances: Vec<String> = (0..dep.replicas).map(|i| instance(service, i)).collect();
        if !instances.is_empty() {
            unit.push(format!("Requires={}", instances.join(" ")));
            unit.push(format!("After={}", instances.join(" ")));
        }
    }
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `limits` as systemd's resource settings, the cgroup ones applied to the
/// unit's own cgroup as supervise applies them to the replica's leaf.
fn resource_limits(limits: &Limits) -> Vec<String> {
    let core = limits.core.map(|bytes| match bytes {
        u64::MAX => "infinity".to_string(),
        bytes => bytes.to_string(),
    });
    [
        ("MemoryMax", limits.memory.map(|b| b.to_string())),
        ("MemoryHigh", limits.memory_high.map(|b| b.to_string())),
        (
            "CPUQuota",
            limits
                .cpu
                .map(|cores| format!("{}%", (cores * 100.0).round() as u64)),
        ),
        ("TasksMax", limits.pids.map(|n| n.to_string())),
        ("LimitNOFILE", limits.nofile.map(|n| n.to_string())),
        ("LimitCORE", core),
    ]
    .into_iter()
    .filter_map(|(key, value)| Some(format!("{key}={}", value?)))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_only_when_needed() {
        assert_eq!(word("/usr/bin/python3"), "/usr/bin/python3");
        assert_eq!(word("--port=${PORT}"), "--port=${PORT}");
        assert_eq!(word(""), "\"\"");
        assert_eq!(word("a b"), "\"a b\"");
        assert_eq!(word("say \"hi\"\\n\n"), "\"say \\\"hi\\\"\\\\n\\n\"");
        assert_eq!(word("it's;"), "\"it's;\"");
        assert_eq!(word("\x01"), "\"\\x01\"");
    }

    #[test]
    fn specifiers_are_escaped() {
        assert_eq!(specifiers("100%"), "100%%");
    }
}
