//! `export --format kubernetes`: one YAML stream with, per service, a
//! workload (Deployment; StatefulSet when the service uses `{replica}`; Job
//! for `restart.policy = "never"`) and a Service when it has a `port`.
//!
//! Placeholders: `{service}` is the service's name; `{port}` is the port
//! itself (every pod has its own network namespace, so all replicas listen
//! on the same port and the Service spreads the traffic); `{replica}` is the
//! pod's ordinal, given to the container as `SUPERVISE_REPLICA` and written
//! `$(SUPERVISE_REPLICA)` in `command` and `env`, which Kubernetes expands.
//! Only StatefulSets (and indexed Jobs) number their pods, hence the
//! StatefulSet. `health` becomes the pod's probes, in `probes`.
//!
//! The YAML is built as a `saphyr` node tree and written by its emitter:
//! saphyr is a maintained, pure-Rust YAML 1.2 library (the successor of
//! yaml-rust2) that keeps mapping keys in insertion order and quotes the
//! strings that would otherwise read as numbers or booleans (`"8080"`).
//! serde_yaml is archived, and its forks still sit on a C-to-Rust
//! translation of libyaml.

use std::borrow::Cow;
use std::collections::BTreeMap;

use nix::sys::signal::Signal;
use saphyr::{Mapping, Scalar, Yaml, YamlEmitter};

use super::{
    Elsewhere, Export, ExportError, File, Part, Warnings, duration, parts, report_outside_services,
    uses, whole_seconds,
};
use crate::spec::{Dependency, Failover, Limits, Policy, RestartPolicy, Scope, Service, Spec};

mod probes;

use probes::probes;

const TARGET: &str = "Kubernetes";

type Node = Yaml<'static>;

fn string(s: impl Into<String>) -> Node {
    Yaml::Value(Scalar::String(Cow::Owned(s.into())))
}

fn int(n: impl Into<i64>) -> Node {
    Yaml::Value(Scalar::Integer(n.into()))
}

fn seq(items: impl IntoIterator<Item = Node>) -> Node {
    Yaml::Sequence(items.into_iter().collect())
}

/// A mapping built in the order Kubernetes users are used to reading.
#[derive(Default)]
struct Map(Mapping<'static>);

impl Map {
    fn with(mut self, key: &str, value: Node) -> Map {
        self.0.insert(string(key), value);
        self
    }

    fn maybe(self, key: &str, value: Option<Node>) -> Map {
        match value {
            Some(v) => self.with(key, v),
            None => self,
        }
    }

    fn node(self) -> Node {
        Yaml::Mapping(self.0)
    }
}

/// One YAML document, with comment lines written at its top.
struct Document {
    comments: Vec<String>,
    node: Node,
}

/// Translates `spec`; `source` names the spec file in the header comment.
pub fn export(spec: &Spec, project: &str, source: &str) -> Result<Export, ExportError> {
    let Spec {
        path: _,
        dir: _,
        supervisor,
        services,
        alerts,
    } = spec;
    let names = object_names(services)?;
    let mut warnings = Warnings::default();
    let mut docs = Vec::new();
    for service in services {
        let name = &names[&service.name];
        docs.extend(translate(service, name, project, &mut warnings));
    }
    let elsewhere = Elsewhere {
        target: TARGET,
        shutdown_timeout: "each pod has its terminationGracePeriodSeconds, from stop_timeout",
        logs: "the kubelet rotates container logs: containerLogMaxSize and \
               containerLogMaxFiles in its configuration",
        metrics: "kube-state-metrics reports restarts and readiness",
        alerts: "alert on Kubernetes events or kube-state-metrics instead",
    };
    report_outside_services(supervisor, alerts, &elsewhere, &mut warnings);
    let mut content = format!(
        "# Kubernetes manifests of project {project}, written by `supervise export --format \
         kubernetes` from {source}.\n# Every object is labelled app.kubernetes.io/part-of={project}.\n"
    );
    for doc in docs {
        let mut body = String::new();
        let mut emitter = YamlEmitter::new(&mut body);
        // Multi-line commands (a script given to `sh -c`) read best as literal blocks.
        emitter.multiline(true);
        emitter
            .dump(&doc.node)
            .expect("writing YAML into a String cannot fail");
        content.push_str("---\n");
        for comment in &doc.comments {
            content.push_str(&format!("# {comment}\n"));
        }
        content.push_str(body.strip_prefix("---\n").unwrap_or(&body));
        content.push('\n');
    }
    Ok(Export {
        files: vec![File {
            path: format!("{project}.yaml").into(),
            content,
        }],
        warnings: warnings.into_vec(),
    })
}

/// The name of each service's objects: a DNS label that starts with a
/// letter (what a Kubernetes Service needs). Every service needs an image.
fn object_names(services: &[Service]) -> Result<BTreeMap<String, String>, ExportError> {
    let mut errors = Vec::new();
    let mut names = BTreeMap::new();
    let mut taken: BTreeMap<String, &str> = BTreeMap::new();
    for service in services {
        if service.image.is_none() {
            errors.push(format!(
                "{0} has no image; Kubernetes runs every container from an image: add \
                 image = \"...\" to [services.{0}]",
                service.name
            ));
        }
        let mut name = service.name.replace('_', "-");
        if name.starts_with(|c: char| c.is_ascii_digit()) {
            name.insert_str(0, "s-");
        }
        name.truncate(63);
        let name = name.trim_end_matches('-').to_string();
        if let Some(other) = taken.insert(name.clone(), &service.name) {
            errors.push(format!(
                "{} and {other} would both be named {name} in Kubernetes (names take `-` for `_` \
                 and start with a letter); rename one",
                service.name
            ));
        }
        names.insert(service.name.clone(), name);
    }
    if errors.is_empty() {
        Ok(names)
    } else {
        Err(ExportError(errors))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Deployment,
    StatefulSet,
    Job,
}

/// How a service's templates are spelled in this workload.
struct Names<'a> {
    service: &'a str,
    port: Option<u16>,
}

impl Names<'_> {
    /// A template in `command`, `args` or an `env` value, where Kubernetes
    /// expands `$(VAR)`: `{replica}` becomes `$(SUPERVISE_REPLICA)` and a
    /// literal `$` that Kubernetes would read (before `(` or `$`) is doubled.
    fn expanded(&self, template: &str) -> String {
        let mut out = String::new();
        for part in parts(template) {
            match part {
                Part::Text(text) => {
                    let mut chars = text.chars().peekable();
                    while let Some(c) = chars.next() {
                        out.push(c);
                        // A `$` at the end of a piece may meet the `$(` of a placeholder.
                        if c == '$' && matches!(chars.peek(), Some('$' | '(') | None) {
                            out.push('$');
                        }
                    }
                }
                Part::Placeholder("replica") => out.push_str("$(SUPERVISE_REPLICA)"),
                Part::Placeholder(other) => out.push_str(&self.value(other)),
            }
        }
        out
    }

    /// A template where Kubernetes expands nothing (`workingDir`, probes):
    /// `None` when it needs `{replica}`.
    fn literal(&self, template: &str) -> Option<String> {
        let mut out = String::new();
        for part in parts(template) {
            match part {
                Part::Text(text) => out.push_str(&text),
                Part::Placeholder("replica") => return None,
                Part::Placeholder(other) => out.push_str(&self.value(other)),
            }
        }
        Some(out)
    }

    fn value(&self, placeholder: &str) -> String {
        match (placeholder, self.port) {
            ("service", _) => self.service.to_string(),
            ("port", Some(port)) => port.to_string(),
            // Validation allows no other placeholder here.
            (other, _) => format!("{{{other}}}"),
        }
    }
}

/// The documents of one service: its Service (when it has a port, or is a
/// StatefulSet, which needs a governing Service), then its workload.
fn translate(
    service: &Service,
    name: &str,
    project: &str,
    warnings: &mut Warnings,
) -> Vec<Document> {
    let Service {
        name: spec_name,
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
        image,
        limits,
    } = service;
    let place = spec_name.as_str();
    let names = Names {
        service: spec_name,
        port: *port,
    };
    let mut comments = Vec::new();
    if name != spec_name {
        comments.push(format!(
            "{spec_name} is named {name} here: Kubernetes names start with a letter and have \
             no `_`."
        ));
    }

    let replica_in: Vec<&str> = [
        ("command", command.iter().any(|a| uses(a, "replica"))),
        ("env", env.iter().any(|(_, v)| uses(v, "replica"))),
    ]
    .into_iter()
    .filter_map(|(key, used)| used.then_some(key))
    .collect();
    let kind = if restart.policy == Policy::Never {
        comments.push(format!(
            "{spec_name} is a Job: restart.policy = \"never\" runs each replica once, and a \
             failure fails the Job (backoffLimit 0), as supervise marks it failed. Each pod \
             gets its replica number as SUPERVISE_REPLICA (its completion index)."
        ));
        Kind::Job
    } else if !replica_in.is_empty() {
        comments.push(format!(
            "{spec_name} is a StatefulSet because it uses {{replica}} (in {}): a Deployment's \
             pods have no number. Pods are numbered 0..N-1 like supervise's replicas, and each \
             gets its number as SUPERVISE_REPLICA (from the apps.kubernetes.io/pod-index label, \
             Kubernetes 1.28+).",
            replica_in.join(" and ")
        ));
        Kind::StatefulSet
    } else {
        Kind::Deployment
    };

    let mut container = Map::default()
        .with("name", string(name))
        .with("image", string(image.clone().unwrap_or_default()));
    let argv: Vec<String> = command.iter().map(|a| names.expanded(a)).collect();
    if let Some((program, args)) = argv.split_first() {
        container = container.with("command", seq([string(program.clone())]));
        if !args.is_empty() {
            container = container.with("args", seq(args.iter().cloned().map(string)));
        }
    }
    if let Some(cwd) = cwd {
        match names.literal(cwd) {
            Some(dir) if dir.starts_with('/') => {
                container = container.with("workingDir", string(dir))
            }
            Some(_) => warnings.add(
                place,
                format!(
                    "cwd {cwd:?} is relative to the spec's directory, which the image does not \
                     have; dropped (the image's WORKDIR applies; give an absolute cwd)"
                ),
            ),
            None => warnings.add(
                place,
                "cwd uses {replica}, which Kubernetes cannot expand in workingDir; dropped",
            ),
        }
    }
    container = container.with("env", seq(environment(spec_name, kind, *port, env, &names)));
    if let Some(port) = port {
        container = container.with(
            "ports",
            seq([Map::default().with("containerPort", int(*port)).node()]),
        );
    }
    if let Some(health) = health {
        for (key, probe) in probes(health, &names, place, &mut comments, warnings) {
            container = container.with(key, probe);
        }
    }
    if let Some(resources) = resources(limits, place, warnings) {
        container = container.with("resources", resources);
    }
    let run_as_group = group
        .as_ref()
        .map(|g| g.gid)
        .or(user.as_ref().map(|u| u.gid));
    if user.is_some() || run_as_group.is_some() {
        container = container.with(
            "securityContext",
            Map::default()
                .maybe("runAsUser", user.as_ref().map(|u| int(u.uid)))
                .maybe("runAsGroup", run_as_group.map(int))
                .node(),
        );
    }

    if *stop_signal != Signal::SIGTERM {
        warnings.add(
            place,
            format!(
                "stop_signal {0} cannot be expressed in a Kubernetes 1.30 manifest (pods are \
                 stopped with SIGTERM); dropped (set STOPSIGNAL {0} in the image)",
                stop_signal.as_str()
            ),
        );
    }
    let grace = whole_seconds(*stop_timeout, 0, place, "stop_timeout", TARGET, warnings);
    restart_policy(restart, kind, place, warnings);
    for Dependency { service, condition } in depends_on {
        let condition = format!("{condition:?}").to_lowercase();
        warnings.add(
            place,
            format!(
                "depends_on {service} = \"{condition}\" cannot be expressed in {TARGET}, which \
                 starts workloads in no order; dropped (make {spec_name} retry, or give it an init \
                 container that waits for {service})"
            ),
        );
    }
    // Cluster scope: one active across machines becomes one pod at most,
    // and a new pod only once the old one is gone.
    let mut single = false;
    match failover {
        Some(Failover {
            promote: _,
            scope: Scope::Cluster,
            demote: _,
        }) if kind != Kind::Job => {
            single = true;
            let shape = match kind {
                Kind::StatefulSet => "a StatefulSet of one replica",
                _ => "a Deployment of one replica with strategy Recreate",
            };
            comments.push(format!(
                "{spec_name} has cluster-scope failover: it is {shape}, so at most one pod runs \
                 (an old pod is gone before a new one starts)."
            ));
            warnings.add(
                place,
                format!(
                    "failover scope = \"cluster\" becomes {shape}; Kubernetes' own semantics \
                     apply: no etcd election, token or fencing deadline, no standby (a new pod \
                     starts after the old one is gone), and a pod on an unreachable node may run \
                     on until Kubernetes evicts it"
                ),
            );
        }
        Some(Failover {
            promote: _,
            scope: _,
            demote: _,
        }) => {
            warnings.add(
                place,
                "failover cannot be expressed in Kubernetes (every pod of a workload is equal); \
                 dropped (use leader election in the program)",
            );
        }
        None => {}
    }
    let replicas = if single {
        (*replicas).min(1)
    } else {
        *replicas
    };
    let replicas = &replicas;

    let labels = || {
        Map::default()
            .with("app.kubernetes.io/name", string(name))
            .with("app.kubernetes.io/part-of", string(project))
            .node()
    };
    let metadata = || {
        Map::default()
            .with("name", string(name))
            .with("labels", labels())
            .node()
    };
    let mut pod = Map::default();
    if kind == Kind::Job {
        pod = pod.with("restartPolicy", string("Never"));
    }
    pod = pod
        .with("terminationGracePeriodSeconds", int(grace as i64))
        .with("containers", seq([container.node()]));
    let template = Map::default()
        .with("metadata", Map::default().with("labels", labels()).node())
        .with("spec", pod.node())
        .node();

    let mut docs = Vec::new();
    if port.is_some() || kind == Kind::StatefulSet {
        let mut spec = Map::default();
        if kind == Kind::StatefulSet {
            // Headless: the StatefulSet's governing Service gives each pod a DNS name.
            spec = spec.with("clusterIP", string("None"));
        }
        spec = spec.with("selector", labels());
        if let Some(port) = port {
            spec = spec.with(
                "ports",
                seq([Map::default()
                    .with("port", int(*port))
                    .with("targetPort", int(*port))
                    .with("protocol", string("TCP"))
                    .node()]),
            );
        }
        docs.push(Document {
            comments: Vec::new(),
            node: Map::default()
                .with("apiVersion", string("v1"))
                .with("kind", string("Service"))
                .with("metadata", metadata())
                .with("spec", spec.node())
                .node(),
        });
    }
    let (api, kind_name, spec) = match kind {
        Kind::Deployment => (
            "apps/v1",
            "Deployment",
            Map::default()
                .with("replicas", int(*replicas))
                .maybe(
                    "strategy",
                    single.then(|| Map::default().with("type", string("Recreate")).node()),
                )
                .with(
                    "selector",
                    Map::default().with("matchLabels", labels()).node(),
                )
                .with("template", template),
        ),
        Kind::StatefulSet => (
            "apps/v1",
            "StatefulSet",
            Map::default()
                .with("serviceName", string(name))
                // supervise starts a service's replicas together, not one by one.
                .with("podManagementPolicy", string("Parallel"))
                .with("replicas", int(*replicas))
                .with(
                    "selector",
                    Map::default().with("matchLabels", labels()).node(),
                )
                .with("template", template),
        ),
        Kind::Job => {
            let spec = if *replicas == 0 {
                comments.push(
                    "replicas = 0: the Job is suspended; set completions and parallelism and \
                     suspend: false to run it."
                        .to_string(),
                );
                Map::default()
                    .with("suspend", Yaml::Value(Scalar::Boolean(true)))
                    .with("completions", int(1))
                    .with("parallelism", int(1))
            } else {
                Map::default()
                    .with("completions", int(*replicas))
                    .with("parallelism", int(*replicas))
            };
            (
                "batch/v1",
                "Job",
                spec.with("completionMode", string("Indexed"))
                    .with("backoffLimit", int(0))
                    .with("template", template),
            )
        }
    };
    docs.push(Document {
        comments,
        node: Map::default()
            .with("apiVersion", string(api))
            .with("kind", string(kind_name))
            .with("metadata", metadata())
            .with("spec", spec.node())
            .node(),
    });
    docs
}

/// The container's environment: supervise's own variables first (so the
/// spec's values can refer to them as `$(SUPERVISE_REPLICA)`), then the
/// spec's `env` (which already holds `env_file`'s entries). supervise's
/// variables win over the spec's, as when it runs the replica itself.
fn environment(
    service: &str,
    kind: Kind,
    port: Option<u16>,
    env: &[(String, String)],
    names: &Names,
) -> Vec<Node> {
    let value = |name: &str, value: String| {
        Map::default()
            .with("name", string(name))
            .with("value", string(value))
            .node()
    };
    let mut out = vec![value("SUPERVISE_SERVICE", service.to_string())];
    let index = match kind {
        Kind::StatefulSet => Some("metadata.labels['apps.kubernetes.io/pod-index']"),
        Kind::Job => Some("metadata.annotations['batch.kubernetes.io/job-completion-index']"),
        // A Deployment's pods have no number: SUPERVISE_REPLICA is not set.
        Kind::Deployment => None,
    };
    if let Some(path) = index {
        let field = Map::default().with("fieldPath", string(path)).node();
        out.push(
            Map::default()
                .with("name", string("SUPERVISE_REPLICA"))
                .with("valueFrom", Map::default().with("fieldRef", field).node())
                .node(),
        );
    }
    if let Some(port) = port {
        out.push(value("PORT", port.to_string()));
    }
    let own = ["SUPERVISE_SERVICE", "SUPERVISE_REPLICA", "PORT"];
    for (key, template) in env {
        if !own.contains(&key.as_str()) {
            out.push(value(key, names.expanded(template)));
        }
    }
    out
}

/// Deployments and StatefulSets restart containers forever on a fixed
/// backoff (10s doubling to 5m); Jobs here never retry.
fn restart_policy(restart: &RestartPolicy, kind: Kind, place: &str, warnings: &mut Warnings) {
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
    if *exit_codes != default.exit_codes && *policy != Policy::Always {
        warnings.add(
            place,
            format!(
                "restart.exit_codes {exit_codes:?} cannot be expressed in {TARGET}, where only \
                 exit code 0 is a success; dropped"
            ),
        );
    }
    if kind == Kind::Job {
        // supervise never restarts these either: the backoff keys mean nothing.
        return;
    }
    if *policy == Policy::OnFailure {
        warnings.add(
            place,
            "restart.policy on-failure cannot be expressed in a Deployment, which restarts a \
             container after any exit (a successful one too); exported as always",
        );
    }
    let backoff = "Kubernetes' restart backoff is fixed (10s doubling up to 5m, reset after \
                   10m of running); dropped";
    let durations = [
        ("delay", delay, default.delay),
        ("max_delay", max_delay, default.max_delay),
        ("reset_after", reset_after, default.reset_after),
    ];
    for (key, value, default) in durations {
        if *value != default {
            warnings.add(
                place,
                format!(
                    "restart.{key} {} cannot be expressed: {backoff}",
                    duration(*value)
                ),
            );
        }
    }
    // limit = 0 (never give up) is exactly what Kubernetes does.
    if *limit != default.limit && *limit != 0 {
        warnings.add(
            place,
            format!(
                "restart.limit {limit} cannot be expressed: Kubernetes never gives up on a \
                 crashing container (CrashLoopBackOff); dropped"
            ),
        );
    }
    if *window != default.window && *limit != 0 {
        warnings.add(
            place,
            format!(
                "restart.window {} cannot be expressed: Kubernetes never gives up on a \
                 crashing container; dropped",
                duration(*window)
            ),
        );
    }
}

/// `limits` as `resources.limits`: memory and cpu; the rest cannot be
/// expressed in a pod spec and is reported.
fn resources(limits: &Limits, place: &str, warnings: &mut Warnings) -> Option<Node> {
    let dropped = [
        ("memory_high", limits.memory_high.is_some()),
        ("pids", limits.pids.is_some()),
        ("nofile", limits.nofile.is_some()),
        ("core", limits.core.is_some()),
    ];
    for (key, _) in dropped.into_iter().filter(|d| d.1) {
        warnings.add(
            place,
            format!(
                "limits.{key} cannot be expressed in a Kubernetes container's resources; dropped"
            ),
        );
    }
    let memory = limits.memory.map(|bytes| {
        let exact = [("Gi", 1u64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)]
            .into_iter()
            .find(|(_, unit)| bytes % unit == 0);
        string(match exact {
            Some((suffix, unit)) => format!("{}{suffix}", bytes / unit),
            None => bytes.to_string(),
        })
    });
    let cpu = limits
        .cpu
        .map(|cores| string(format!("{}m", (cores * 1000.0).round() as u64)));
    if memory.is_none() && cpu.is_none() {
        return None;
    }
    let limits = Map::default().maybe("memory", memory).maybe("cpu", cpu);
    Some(Map::default().with("limits", limits.node()).node())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_that_kubernetes_would_expand_are_doubled() {
        let names = Names {
            service: "api",
            port: Some(8000),
        };
        assert_eq!(
            names.expanded("echo $HOME $(date) $$"),
            "echo $HOME $$(date) $$$$"
        );
        assert_eq!(names.expanded("x$"), "x$$");
        assert_eq!(names.expanded("$${replica}"), "$$$$$(SUPERVISE_REPLICA)");
        assert_eq!(names.expanded("{service}:{port}"), "api:8000");
        assert_eq!(names.literal("/data/{replica}"), None);
        assert_eq!(names.literal("{{x}} {port}").as_deref(), Some("{x} 8000"));
    }
}
