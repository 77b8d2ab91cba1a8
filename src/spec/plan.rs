//! The plan `supervise check` prints: what would run, in start order, with
//! every replica's templates expanded, so a user can see the effect of a spec
//! without starting anything. The output depends only on the [`Spec`], so it
//! is stable for tests and diffs.

use std::time::Duration;

use super::validate::normalize;
use super::{
    Alert, AlertTarget, Condition, Health, HealthAction, Limits, Policy, Probe, Promote,
    RestartPolicy, Service, Spec,
};

/// Renders the plan of `spec`, ending with a newline.
pub fn render_plan(spec: &Spec) -> String {
    let mut out = Vec::new();
    let order: Vec<&str> = spec.services.iter().map(|s| s.name.as_str()).collect();
    out.push(format!("start order: {}", order.join(", ")));
    for service in &spec.services {
        out.push(String::new());
        render_service(&mut out, spec, service);
    }
    if !spec.alerts.is_empty() {
        out.push(String::new());
        out.push("alerts".into());
        out.extend(spec.alerts.iter().map(render_alert));
    }
    let replicas: u64 = spec.services.iter().map(|s| u64::from(s.replicas)).sum();
    out.push(String::new());
    out.push(format!(
        "{} {}, {} {}; state dir {}",
        spec.services.len(),
        plural(spec.services.len() as u64, "service", "services"),
        replicas,
        plural(replicas, "replica", "replicas"),
        spec.supervisor.state_dir.display()
    ));
    let mut text = out.join("\n");
    text.push('\n');
    text
}

fn render_service(out: &mut Vec<String>, spec: &Spec, service: &Service) {
    out.push(service.name.clone());
    let field = |name: &str, value: String| format!("  {name:<11} {value}");
    let depends = if service.depends_on.is_empty() {
        "nothing".to_string()
    } else {
        service
            .depends_on
            .iter()
            .map(|d| format!("{} ({})", d.service, condition(d.condition)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    out.push(field("depends on:", depends));
    out.push(field("restart:", restart(&service.restart)));
    out.push(field(
        "stop:",
        format!(
            "{}, then SIGKILL after {}",
            service.stop_signal.as_str(),
            duration(service.stop_timeout)
        ),
    ));
    if let Some(h) = &service.health {
        out.push(field("health:", health(h)));
    }
    if let Some(f) = &service.failover {
        let hook = |hook: &Option<Promote>, verb: &str| match hook {
            Some(Promote::Command(argv)) => format!("{verb} runs {}", shell_words::join(argv)),
            Some(Promote::Signal(s)) => format!("{verb} sends {}", s.as_str()),
            None => format!("no {verb} hook"),
        };
        let promote = hook(&f.promote, "promote");
        let scope = match (&spec.supervisor.cluster, f.is_cluster()) {
            (Some(c), true) => format!(
                ", one active across the cluster (node {} of {}, lease {}), {}",
                c.node,
                c.prefix,
                duration(c.lease),
                match &f.demote {
                    None => "demote stops it".to_string(),
                    demote => hook(demote, "demote"),
                }
            ),
            _ => String::new(),
        };
        out.push(field(
            "failover:",
            format!("active-standby, {promote}{scope}"),
        ));
    }
    if let Some(u) = &service.user {
        out.push(field(
            "user:",
            format!("{} (uid {}, gid {})", u.name, u.uid, u.gid),
        ));
    }
    if let Some(g) = &service.group {
        out.push(field("group:", format!("{} (gid {})", g.name, g.gid)));
    }
    if let Some(image) = &service.image {
        out.push(field("image:", image.clone()));
    }
    if let Some(limits) = limits(&service.limits) {
        out.push(field("limits:", limits));
    }
    if service.replicas == 0 {
        out.push("  no replicas: defined, not started (replicas = 0)".into());
    }
    for index in 0..service.replicas {
        let plan = service.replica(&spec.dir, index);
        out.push(format!("  {}.{index}", service.name));
        out.push(format!("    argv  {}", shell_words::join(&plan.argv)));
        out.push(format!("    cwd   {}", normalize(&plan.cwd).display()));
        if let Some(port) = plan.port {
            out.push(format!("    port  {port}"));
        }
        for (i, (key, value)) in plan.env.iter().enumerate() {
            let label = if i == 0 { "env " } else { "    " };
            out.push(format!("    {label}  {key}={}", shell_words::quote(value)));
        }
    }
}

/// `memory 512MiB, cpu 1.5, nofile 65536`, per replica; None without limits.
fn limits(l: &Limits) -> Option<String> {
    let size = crate::usage::size;
    let parts: Vec<String> = [
        l.memory.map(|b| format!("memory {}", size(b))),
        l.memory_high.map(|b| format!("memory_high {}", size(b))),
        l.cpu.map(|c| format!("cpu {c}")),
        l.pids.map(|n| format!("pids {n}")),
        l.nofile.map(|n| format!("nofile {n}")),
        l.core.map(|b| match b {
            u64::MAX => "core unlimited".to_string(),
            b => format!("core {}", size(b)),
        }),
    ]
    .into_iter()
    .flatten()
    .collect();
    (!parts.is_empty()).then(|| format!("{} (per replica)", parts.join(", ")))
}

fn condition(c: Condition) -> &'static str {
    match c {
        Condition::Started => "started",
        Condition::Healthy => "healthy",
        Condition::Completed => "completed",
    }
}

fn restart(r: &RestartPolicy) -> String {
    let policy = match r.policy {
        Policy::Never => return "never".into(),
        Policy::Always => "always".to_string(),
        Policy::OnFailure => {
            let codes: Vec<String> = r.exit_codes.iter().map(i32::to_string).collect();
            format!("on-failure (success: exit {})", codes.join(", "))
        }
    };
    let limit = if r.limit == 0 {
        "never gives up".to_string()
    } else {
        format!("gives up after {} in {}", r.limit, duration(r.window))
    };
    format!(
        "{policy}, backoff {} to {}, reset after {}, {limit}",
        duration(r.delay),
        duration(r.max_delay),
        duration(r.reset_after)
    )
}

fn health(h: &Health) -> String {
    let action = match h.action {
        HealthAction::Restart => "restart when unhealthy",
        HealthAction::None => "no action when unhealthy",
    };
    let checks = format!(
        "every {}, timeout {}, {} {}, start period {}, {action}",
        duration(h.interval),
        duration(h.timeout),
        h.retries,
        plural(h.retries.into(), "retry", "retries"),
        duration(h.start_period)
    );
    match &h.probe {
        Probe::Exec(argv) => format!("exec {}, {checks}", shell_words::join(argv)),
        Probe::Http(url) => format!("http {url}, {checks}"),
        Probe::Tcp(target) => format!("tcp {target}, {checks}"),
        Probe::Notify => {
            let ready = format!("READY=1 within {}", duration(h.start_period));
            match h.watchdog {
                Some(w) => format!("notify, {ready}, watchdog {}, {action}", duration(w)),
                None => format!("notify, {ready}, {action}"),
            }
        }
        Probe::Log(regex) => format!("log line matching /{regex}/ (readiness only)"),
    }
}

fn render_alert(alert: &Alert) -> String {
    let target = match &alert.target {
        AlertTarget::Command(argv) => format!("runs {}", shell_words::join(argv)),
        AlertTarget::Webhook(url) => format!("posts to {url}"),
    };
    format!("  on {}: {target}", alert.events.join(", "))
}

fn duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn plural(n: u64, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use nix::sys::signal::Signal;

    use super::*;
    use crate::spec::{Dependency, Failover, SupervisorSettings};

    fn service(name: &str) -> Service {
        let command = ["./run", "--name", "{service} #{replica}"];
        Service::with_defaults(name, command.map(String::from).to_vec())
    }

    #[test]
    fn renders_services_replicas_and_summary() {
        let mut db = service("db");
        db.restart.policy = Policy::Never;
        db.replicas = 0;
        let mut api = service("api");
        api.replicas = 2;
        api.port = Some(8000);
        api.cwd = Some("data/{replica}".into());
        api.env = vec![("MODE".into(), "a b".into())];
        api.depends_on = vec![Dependency {
            service: "db".into(),
            condition: Condition::Healthy,
        }];
        api.health = Some(Health::with_defaults(Probe::Tcp("127.0.0.1:{port}".into())));
        api.failover = Some(Failover {
            promote: Some(Promote::Signal(Signal::SIGUSR1)),
            scope: crate::spec::Scope::Local,
            demote: None,
        });
        let spec = Spec {
            path: "s.toml".into(),
            dir: PathBuf::from("/srv"),
            supervisor: SupervisorSettings::with_defaults(Path::new("/srv")),
            services: vec![db, api],
            alerts: vec![Alert {
                events: vec!["failed".into()],
                target: AlertTarget::Webhook("http://h/x".into()),
            }],
        };
        let expected = "\
start order: db, api

db
  depends on: nothing
  restart:    never
  stop:       SIGTERM, then SIGKILL after 10s
  no replicas: defined, not started (replicas = 0)

api
  depends on: db (healthy)
  restart:    always, backoff 100ms to 30s, reset after 30s, gives up after 10 in 1m
  stop:       SIGTERM, then SIGKILL after 10s
  health:     tcp 127.0.0.1:{port}, every 2s, timeout 1s, 3 retries, start period 1m, restart when unhealthy
  failover:   active-standby, promote sends SIGUSR1
  api.0
    argv  ./run --name 'api #0'
    cwd   /srv/data/0
    port  8000
    env   MODE='a b'
          SUPERVISE_SERVICE=api
          SUPERVISE_REPLICA=0
          PORT=8000
  api.1
    argv  ./run --name 'api #1'
    cwd   /srv/data/1
    port  8001
    env   MODE='a b'
          SUPERVISE_SERVICE=api
          SUPERVISE_REPLICA=1
          PORT=8001

alerts
  on failed: posts to http://h/x

2 services, 2 replicas; state dir /srv/.supervise
";
        assert_eq!(render_plan(&spec), expected);
    }
}
