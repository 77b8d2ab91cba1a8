//! `supervise export`: golden files for every bundled example and for
//! `tests/golden/everything.toml` (a spec that uses every key), the
//! Kubernetes output parsed back as YAML and the systemd units parsed back
//! as INI, each checked against the spec key by key, `systemd-analyze
//! verify` on the units where it runs, and the exit statuses.
//!
//! The golden files are in `tests/golden/<spec>/`; regenerate them with
//!     SUPERVISE_UPDATE_GOLDEN=1 cargo test --test export
//! (`.ci/run` also validates the Kubernetes ones against the API schemas.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use saphyr::{LoadableYamlNode, Yaml};
use supervise::spec::{self, Condition, HealthAction, Policy, Probe, Service, Spec};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Runs `supervise` from the repository root with `PATH=/usr/bin:/bin`, so
/// that the commands of the specs resolve to the same absolute paths on
/// every Debian machine, whatever the developer's own `PATH`.
fn supervise(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_supervise"))
        .args(args)
        .current_dir(cwd)
        .env("PATH", "/usr/bin:/bin")
        .env("NO_COLOR", "1")
        .output()
        .expect("running supervise")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 output")
}

/// Every spec the golden tests cover, relative to the repository root.
fn specs() -> Vec<String> {
    let mut specs: Vec<String> = std::fs::read_dir(Path::new(ROOT).join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| format!("examples/{}", p.file_name().unwrap().to_string_lossy()))
        .collect();
    specs.sort();
    assert!(
        specs.len() >= 3,
        "expected the bundled examples, found {specs:?}"
    );
    specs.push("tests/golden/everything.toml".into());
    specs
}

fn load(spec: &str) -> Spec {
    spec::load(&Path::new(ROOT).join(spec)).expect("a valid spec")
}

fn stem(spec: &str) -> String {
    Path::new(spec)
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// The Kubernetes YAML of a spec, and the warnings.
fn kubernetes(spec: &str) -> (String, String) {
    let out = supervise(&["export", "--format", "kubernetes", spec], Path::new(ROOT));
    assert_eq!(out.status.code(), Some(0), "{spec}: {}", text(&out.stderr));
    (text(&out.stdout), text(&out.stderr))
}

/// The systemd files of a spec (written into `dir`), and the warnings.
fn systemd(spec: &str, dir: &Path) -> (BTreeMap<PathBuf, String>, String) {
    let out = supervise(
        &[
            "export",
            "--format",
            "systemd",
            spec,
            "-o",
            dir.to_str().unwrap(),
        ],
        Path::new(ROOT),
    );
    assert_eq!(out.status.code(), Some(0), "{spec}: {}", text(&out.stderr));
    (read_tree(dir), text(&out.stderr))
}

/// Every file below `dir`, by path relative to it.
fn read_tree(dir: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let content = std::fs::read_to_string(&path).unwrap();
                out.insert(path.strip_prefix(root).unwrap().to_path_buf(), content);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

// ---------------------------------------------------------------- golden files

#[test]
fn golden_files_are_up_to_date() {
    let update = std::env::var_os("SUPERVISE_UPDATE_GOLDEN").is_some();
    let mut stale = Vec::new();
    for spec in specs() {
        // The checkout's own path appears in WorkingDirectory= and ExecStart=.
        let normalize = |s: &str| s.replace(ROOT, "$ROOT");
        let mut actual = BTreeMap::new();
        let (yaml, warnings) = kubernetes(&spec);
        actual.insert(PathBuf::from("kubernetes.yaml"), yaml);
        actual.insert(PathBuf::from("kubernetes.stderr"), warnings);
        let tmp = tempfile::tempdir().unwrap();
        let (units, warnings) = systemd(&spec, tmp.path());
        for (path, content) in units {
            actual.insert(Path::new("systemd").join(path), normalize(&content));
        }
        actual.insert(PathBuf::from("systemd.stderr"), normalize(&warnings));

        let dir = Path::new(ROOT).join("tests/golden").join(stem(&spec));
        if update {
            let _ = std::fs::remove_dir_all(&dir);
            for (path, content) in &actual {
                let path = dir.join(path);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, content).unwrap();
            }
            continue;
        }
        let expected = read_tree(&dir);
        for (path, content) in &actual {
            if expected.get(path) != Some(content) {
                stale.push(format!("{} differs", dir.join(path).display()));
            }
        }
        for path in expected.keys().filter(|p| !actual.contains_key(*p)) {
            stale.push(format!("{} is no longer written", dir.join(path).display()));
        }
    }
    assert!(
        stale.is_empty(),
        "stale golden files:\n  {}\nregenerate with SUPERVISE_UPDATE_GOLDEN=1 cargo test --test export \
         and review the diff",
        stale.join("\n  ")
    );
}

// ------------------------------------------------------------- Kubernetes

/// The node at a dotted path (`spec.template.spec`); a numeric segment
/// indexes a sequence, a segment in brackets may contain dots
/// (`metadata.labels.[app.kubernetes.io/name]`).
fn get<'a>(node: &'a Yaml<'a>, path: &str) -> Option<&'a Yaml<'a>> {
    let mut node = node;
    let mut rest = path;
    while !rest.is_empty() {
        let (key, after) = match rest.strip_prefix('[') {
            Some(r) => r
                .split_once(']')
                .map(|(k, a)| (k, a.strip_prefix('.').unwrap_or(a)))?,
            None => rest.split_once('.').unwrap_or((rest, "")),
        };
        node = match key.parse::<usize>() {
            Ok(i) => node.as_sequence_get(i)?,
            Err(_) => node.as_mapping_get(key)?,
        };
        rest = after;
    }
    Some(node)
}

fn string<'a>(node: &'a Yaml<'a>, path: &str) -> &'a str {
    get(node, path)
        .and_then(|n| n.as_str())
        .unwrap_or_else(|| panic!("no string at {path} in {node:?}"))
}

fn integer(node: &Yaml, path: &str) -> i64 {
    get(node, path)
        .and_then(|n| n.as_integer())
        .unwrap_or_else(|| panic!("no integer at {path} in {node:?}"))
}

fn strings(node: &Yaml, path: &str) -> Vec<String> {
    get(node, path)
        .and_then(|n| n.as_sequence())
        .map(|s| s.iter().map(|n| n.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// Expands `$<open>NAME<close>` with `vars` as Kubernetes (`$(NAME)` in
/// `command`, `args`, `env`) and systemd (`${NAME}` in `ExecStart=`) do:
/// `$$` is `$`; an unknown name stays as written.
fn substitute(text: &str, open: char, close: char, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let reference = tail[1..]
            .strip_prefix(open)
            .and_then(|t| t.split_once(close))
            .and_then(|(name, after)| Some((vars.get(name)?, after)));
        if let Some(after) = tail.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some((value, after)) = reference {
            out.push_str(value);
            rest = after;
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

fn seconds_up(d: Duration) -> i64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)) as i64
}

fn k8s_name(service: &str) -> String {
    service.replace('_', "-")
}

/// Every service of every spec against its workload: kind, replicas, labels,
/// image, argv and environment as Kubernetes will expand them (replica 0;
/// every pod has the base port), ports and Service, probes, grace period,
/// user, working directory.
#[test]
fn kubernetes_manifests_parse_back_and_carry_every_mapped_key() {
    for spec_path in specs() {
        let spec = load(&spec_path);
        let project = stem(&spec_path);
        let (yaml, _) = kubernetes(&spec_path);
        let docs = Yaml::load_from_str(&yaml).unwrap_or_else(|e| panic!("{spec_path}: {e}"));
        let find = |kind: &str, name: &str| {
            docs.iter()
                .find(|d| string(d, "kind") == kind && string(d, "metadata.name") == name)
        };
        let mut expected_docs = 0;
        for service in &spec.services {
            let name = k8s_name(&service.name);
            let context = format!("{spec_path}: {}", service.name);
            let uses_replica = service
                .command
                .iter()
                .chain(service.env.iter().map(|(_, v)| v))
                .any(|t| t.contains("{replica}"));
            let kind = match service.restart.policy {
                Policy::Never => "Job",
                _ if uses_replica => "StatefulSet",
                _ => "Deployment",
            };
            let workload = find(kind, &name).unwrap_or_else(|| panic!("{context}: no {kind}"));
            expected_docs += 1;
            for labels in ["metadata.labels", "spec.template.metadata.labels"] {
                assert_eq!(
                    string(workload, &format!("{labels}.[app.kubernetes.io/name]")),
                    name
                );
                assert_eq!(
                    string(workload, &format!("{labels}.[app.kubernetes.io/part-of]")),
                    project
                );
            }
            match kind {
                "Job" => {
                    assert_eq!(integer(workload, "spec.backoffLimit"), 0, "{context}");
                    assert_eq!(string(workload, "spec.completionMode"), "Indexed");
                    assert_eq!(
                        string(workload, "spec.template.spec.restartPolicy"),
                        "Never"
                    );
                    let completions = integer(workload, "spec.completions");
                    assert_eq!(completions, i64::from(service.replicas.max(1)), "{context}");
                }
                _ => {
                    assert_eq!(
                        integer(workload, "spec.replicas"),
                        i64::from(service.replicas)
                    );
                    let selector = "spec.selector.matchLabels.[app.kubernetes.io/name]";
                    assert_eq!(string(workload, selector), name, "{context}");
                }
            }
            if kind == "StatefulSet" {
                assert_eq!(string(workload, "spec.serviceName"), name);
                assert!(yaml.contains(&format!(
                    "# {} is a StatefulSet because it uses {{replica}}",
                    service.name
                )));
            }
            let pod = get(workload, "spec.template.spec").unwrap();
            assert_eq!(
                integer(pod, "terminationGracePeriodSeconds"),
                seconds_up(service.stop_timeout),
                "{context}"
            );
            let container = get(pod, "containers.0").unwrap();
            assert_eq!(Some(string(container, "image")), service.image.as_deref());

            // argv and environment, as the kubelet expands them for replica 0.
            let plan = service.replica(&spec.dir, 0);
            let mut vars = BTreeMap::new();
            for entry in get(container, "env").and_then(|e| e.as_sequence()).unwrap() {
                let key = string(entry, "name").to_string();
                let value = match get(entry, "valueFrom.fieldRef.fieldPath")
                    .and_then(|p| p.as_str())
                {
                    Some(field) => {
                        assert!(field.contains("pod-index") || field.contains("completion-index"));
                        "0".to_string()
                    }
                    None => substitute(string(entry, "value"), '(', ')', &vars),
                };
                vars.insert(key, value);
            }
            let mut want: BTreeMap<String, String> = plan.env.iter().cloned().collect();
            if kind == "Deployment" {
                want.remove("SUPERVISE_REPLICA"); // a Deployment's pods have no number
            }
            assert_eq!(vars, want, "{context}: env");
            let argv: Vec<String> = strings(container, "command")
                .into_iter()
                .chain(strings(container, "args"))
                .map(|a| substitute(&a, '(', ')', &vars))
                .collect();
            assert_eq!(argv, plan.argv, "{context}: command and args");

            if let Some(port) = service.port {
                assert_eq!(integer(container, "ports.0.containerPort"), i64::from(port));
            }
            if service.port.is_some() || kind == "StatefulSet" {
                let svc = find("Service", &name).unwrap_or_else(|| panic!("{context}: no Service"));
                expected_docs += 1;
                if let Some(port) = service.port {
                    assert_eq!(integer(svc, "spec.ports.0.port"), i64::from(port));
                    assert_eq!(integer(svc, "spec.ports.0.targetPort"), i64::from(port));
                }
                assert_eq!(string(svc, "spec.selector.[app.kubernetes.io/name]"), name);
            }
            if let Some(user) = &service.user {
                assert_eq!(
                    integer(container, "securityContext.runAsUser"),
                    i64::from(user.uid)
                );
            }
            if let Some(group) = &service.group {
                assert_eq!(
                    integer(container, "securityContext.runAsGroup"),
                    i64::from(group.gid)
                );
            }
            match &service.cwd {
                Some(cwd) if cwd.starts_with('/') => {
                    assert_eq!(Path::new(string(container, "workingDir")), plan.cwd)
                }
                _ => assert!(get(container, "workingDir").is_none(), "{context}"),
            }
            check_probes(service, container, &context);
        }
        assert_eq!(docs.len(), expected_docs, "{spec_path}: documents");
    }
}

fn check_probes(service: &Service, container: &Yaml, context: &str) {
    let Some(health) = &service.health else {
        assert!(get(container, "readinessProbe").is_none(), "{context}");
        return;
    };
    let port = service.port.map(i64::from);
    let handler = match &health.probe {
        Probe::Http(_) => "httpGet",
        Probe::Tcp(_) => "tcpSocket",
        Probe::Exec(_) => "exec",
        Probe::Notify | Probe::Log(_) => {
            for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
                assert!(get(container, probe).is_none(), "{context}: {probe}");
            }
            return;
        }
    };
    let restart = health.action == HealthAction::Restart;
    let startup = restart && !health.start_period.is_zero();
    for (probe, present) in [
        ("readinessProbe", true),
        ("livenessProbe", restart),
        ("startupProbe", startup),
    ] {
        let Some(node) = get(container, probe) else {
            assert!(!present, "{context}: no {probe}");
            continue;
        };
        assert!(present, "{context}: unexpected {probe}");
        assert!(
            get(node, handler).is_some(),
            "{context}: {probe} has no {handler}"
        );
        assert_eq!(
            integer(node, "periodSeconds"),
            seconds_up(health.interval).max(1)
        );
        assert_eq!(
            integer(node, "timeoutSeconds"),
            seconds_up(health.timeout).max(1)
        );
        if probe != "startupProbe" {
            assert_eq!(integer(node, "failureThreshold"), i64::from(health.retries));
        }
        match &health.probe {
            Probe::Http(url) if url.contains("{port}") => {
                assert_eq!(Some(integer(node, "httpGet.port")), port, "{context}")
            }
            Probe::Tcp(addr) if addr.contains("{port}") => {
                assert_eq!(Some(integer(node, "tcpSocket.port")), port, "{context}")
            }
            Probe::Exec(argv) => assert_eq!(strings(node, "exec.command").len(), argv.len()),
            _ => {}
        }
    }
}

#[test]
fn kubernetes_maps_placeholders_and_escapes_dollars() {
    let (yaml, _) = kubernetes("tests/golden/everything.toml");
    let docs = Yaml::load_from_str(&yaml).unwrap();
    let db = docs
        .iter()
        .find(|d| string(d, "kind") == "StatefulSet" && string(d, "metadata.name") == "db")
        .unwrap();
    let container = get(db, "spec.template.spec.containers.0").unwrap();
    let args = strings(container, "args");
    assert_eq!(args[1], "data/$(SUPERVISE_REPLICA)");
    assert_eq!(args[2], "--port=5432");
    assert_eq!(
        args[5], "$HOME $$(date) $$$$",
        "a literal $( or $$ is escaped"
    );
    assert_eq!(
        string(container, "env.1.valueFrom.fieldRef.fieldPath"),
        "metadata.labels['apps.kubernetes.io/pod-index']"
    );
    let api = docs
        .iter()
        .find(|d| string(d, "kind") == "Deployment" && string(d, "metadata.name") == "api")
        .unwrap();
    let probe = get(
        api,
        "spec.template.spec.containers.0.readinessProbe.httpGet",
    )
    .unwrap();
    assert_eq!(string(probe, "path"), "/healthz?full=1");
    assert!(
        get(probe, "host").is_none(),
        "a loopback target probes the pod's IP"
    );
    let startup = get(api, "spec.template.spec.containers.0.startupProbe").unwrap();
    assert_eq!(
        integer(startup, "failureThreshold"),
        30 / 5 + 2,
        "start_period / interval + retries"
    );
    assert!(yaml.contains("health.http targets 127.0.0.1: the kubelet probes the pod's IP"));
}

// ---------------------------------------------------------------- systemd

/// A unit file as `[section] key=value` lines, comments left out. Keys may repeat.
fn ini(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {line}"));
        out.push((section.clone(), key.to_string(), value.to_string()));
    }
    out
}

fn values(unit: &[(String, String, String)], section: &str, key: &str) -> Vec<String> {
    unit.iter()
        .filter(|(s, k, _)| s == section && k == key)
        .map(|(_, _, v)| v.clone())
        .collect()
}

fn value(unit: &[(String, String, String)], section: &str, key: &str) -> Option<String> {
    let mut all = values(unit, section, key);
    assert!(all.len() <= 1, "{key}= given {} times", all.len());
    all.pop()
}

/// Splits a value into words as systemd.syntax(7) does: whitespace
/// separates words; double quotes group, with C escapes inside.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&first) = chars.peek() else { break };
        let mut word = String::new();
        if first == '"' {
            chars.next();
            loop {
                match chars.next().expect("unbalanced quotes") {
                    '"' => break,
                    '\\' => match chars.next().unwrap() {
                        'n' => word.push('\n'),
                        't' => word.push('\t'),
                        'r' => word.push('\r'),
                        'x' => {
                            let hex: String = [chars.next().unwrap(), chars.next().unwrap()]
                                .iter()
                                .collect();
                            word.push(u8::from_str_radix(&hex, 16).unwrap() as char);
                        }
                        c => word.push(c),
                    },
                    c => word.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                assert!(
                    c != '"' && c != '\\',
                    "unquoted special character in {line}"
                );
                word.push(c);
            }
        }
        out.push(word);
    }
    out
}

/// Undoes specifiers for instance `i`: `%%` is `%`, `%i` is the instance.
fn specifiers(text: &str, instance: u32) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (c, c == '%') {
            (_, true) => match chars.next() {
                Some('%') => out.push('%'),
                Some('i') => out.push_str(&instance.to_string()),
                other => panic!("unexpected specifier %{other:?} in {text}"),
            },
            (c, false) => out.push(c),
        }
    }
    out
}

fn parse_duration(text: &str) -> Duration {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number.parse().unwrap();
    match unit {
        "s" | "" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "us" => Duration::from_micros(n),
        other => panic!("unit {other}"),
    }
}

/// Every service of every spec against its template unit and drop-ins,
/// for each replica: Type, ExecStart (unquoted and expanded as systemd
/// would: the same argv as supervise runs), Environment, WorkingDirectory,
/// User, Group, Restart, RestartSec, start limits, SuccessExitStatus,
/// TimeoutStopSec, KillSignal, KillMode, WatchdogSec, Requires/After,
/// PartOf; and the target's Wants.
#[test]
fn systemd_units_parse_back_and_carry_every_mapped_key() {
    for spec_path in specs() {
        let spec = load(&spec_path);
        let project = stem(&spec_path);
        let tmp = tempfile::tempdir().unwrap();
        let (files, _) = systemd(&spec_path, tmp.path());
        let file = |name: &str| {
            files
                .get(Path::new(name))
                .unwrap_or_else(|| panic!("{spec_path}: no {name} in {:?}", files.keys()))
        };
        let target = ini(file(&format!("{project}.target")));
        let wants: Vec<String> = values(&target, "Unit", "Wants")
            .iter()
            .flat_map(|w| words(w))
            .collect();
        let all: Vec<String> = spec
            .services
            .iter()
            .flat_map(|s| (0..s.replicas).map(|i| format!("{}@{i}.service", s.name)))
            .collect();
        assert_eq!(wants, all, "{spec_path}: the target wants every replica");

        for service in &spec.services {
            let context = format!("{spec_path}: {}", service.name);
            let unit = ini(file(&format!("{}@.service", service.name)));
            let notify = matches!(&service.health, Some(h) if h.probe == Probe::Notify);
            let awaited = spec.services.iter().any(|s| {
                s.depends_on
                    .iter()
                    .any(|d| d.service == service.name && d.condition == Condition::Completed)
            });
            let kind = if notify {
                "notify"
            } else if awaited && service.restart.policy != Policy::Always {
                "oneshot"
            } else {
                "exec"
            };
            assert_eq!(
                value(&unit, "Service", "Type").as_deref(),
                Some(kind),
                "{context}"
            );
            assert_eq!(
                value(&unit, "Unit", "PartOf"),
                Some(format!("{project}.target"))
            );
            let restart = match service.restart.policy {
                Policy::Always => "always",
                Policy::OnFailure => "on-failure",
                Policy::Never => "no",
            };
            assert_eq!(
                value(&unit, "Service", "Restart").as_deref(),
                Some(restart),
                "{context}"
            );
            let r = &service.restart;
            if r.policy == Policy::Never {
                assert_eq!(value(&unit, "Service", "RestartSec"), None);
                assert_eq!(value(&unit, "Unit", "StartLimitBurst"), None);
            } else {
                let delay = value(&unit, "Service", "RestartSec").unwrap();
                assert_eq!(parse_duration(&delay), r.delay, "{context}");
                let interval =
                    parse_duration(&value(&unit, "Unit", "StartLimitIntervalSec").unwrap());
                if r.limit == 0 {
                    assert_eq!(
                        interval,
                        Duration::ZERO,
                        "{context}: limit 0 never gives up"
                    );
                } else {
                    assert_eq!(interval, r.window, "{context}");
                    let burst = value(&unit, "Unit", "StartLimitBurst").unwrap();
                    assert_eq!(
                        burst,
                        (r.limit + 1).to_string(),
                        "{context}: the first start counts"
                    );
                }
            }
            let success: Vec<String> = r
                .exit_codes
                .iter()
                .filter(|c| **c != 0)
                .map(|c| c.to_string())
                .collect();
            let want_success =
                (r.policy != Policy::Always && !success.is_empty()).then(|| success.join(" "));
            assert_eq!(
                value(&unit, "Service", "SuccessExitStatus"),
                want_success,
                "{context}"
            );
            let stop = parse_duration(&value(&unit, "Service", "TimeoutStopSec").unwrap());
            assert_eq!(stop, service.stop_timeout, "{context}");
            assert_eq!(
                value(&unit, "Service", "KillSignal").as_deref(),
                Some(service.stop_signal.as_str())
            );
            assert_eq!(
                value(&unit, "Service", "KillMode").as_deref(),
                Some("control-group")
            );
            let watchdog = service.health.as_ref().and_then(|h| h.watchdog);
            assert_eq!(
                value(&unit, "Service", "WatchdogSec").map(|w| parse_duration(&w)),
                watchdog
            );
            assert_eq!(
                value(&unit, "Service", "User"),
                service.user.as_ref().map(|u| u.name.clone())
            );
            assert_eq!(
                value(&unit, "Service", "Group"),
                service.group.as_ref().map(|g| g.name.clone())
            );
            let mut requires = Vec::new();
            for dependency in &service.depends_on {
                let dep = spec.service(&dependency.service).unwrap();
                requires.extend((0..dep.replicas).map(|i| format!("{}@{i}.service", dep.name)));
            }
            for key in ["Requires", "After"] {
                let got: Vec<String> = values(&unit, "Unit", key)
                    .iter()
                    .flat_map(|v| words(v))
                    .collect();
                assert_eq!(got, requires, "{context}: {key}=");
            }

            // Each replica: the unit plus its drop-in, with %i = the replica.
            for i in 0..service.replicas.max(1) {
                let plan = service.replica(&spec.dir, i);
                let mut lines = unit.clone();
                if service.port.is_some() {
                    let dropin = file(&format!("{}@{i}.service.d/port.conf", service.name));
                    lines.extend(ini(dropin));
                }
                let mut env = BTreeMap::new();
                for assignments in values(&lines, "Service", "Environment") {
                    for word in words(&assignments) {
                        let (k, v) = specifiers(&word, i)
                            .split_once('=')
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .unwrap();
                        env.insert(k, v);
                    }
                }
                let want: BTreeMap<String, String> = plan.env.iter().cloned().collect();
                assert_eq!(env, want, "{context}.{i}: Environment=");
                let dirs = values(&lines, "Service", "WorkingDirectory");
                let dir = specifiers(dirs.last().unwrap(), i);
                assert_eq!(
                    Path::new(&dir),
                    plan.cwd,
                    "{context}.{i}: WorkingDirectory="
                );
                let exec = value(&unit, "Service", "ExecStart").unwrap();
                let argv: Vec<String> = words(&exec)
                    .iter()
                    .map(|w| substitute(&specifiers(w, i), '{', '}', &env))
                    .collect();
                assert_eq!(argv[1..], plan.argv[1..], "{context}.{i}: ExecStart=");
                let program = Path::new(&argv[0]);
                assert!(program.is_absolute(), "{context}: {program:?}");
                if plan.argv[0].contains('/') {
                    assert_eq!(
                        program,
                        plan.cwd.join(plan.argv[0].trim_start_matches("./"))
                    );
                } else {
                    assert_eq!(
                        program.file_name().unwrap(),
                        plan.argv[0].as_str(),
                        "{context}"
                    );
                }
            }
        }
    }
}

/// `systemd-analyze verify` loads the units (and, through the target, every
/// instance with its drop-in) and reports any key or value it rejects; it
/// also checks that each ExecStart= program exists. It may print problems
/// and still exit 0, so any output fails the test.
#[test]
fn systemd_analyze_verify_accepts_every_unit() {
    match Command::new("systemd-analyze").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            println!(
                "skipped: systemd-analyze --version failed: {}",
                text(&out.stderr)
            );
            return;
        }
        Err(e) => {
            println!(
                "skipped: systemd-analyze cannot run here ({e}); .ci/run installs Debian's systemd"
            );
            return;
        }
    }
    for spec in specs() {
        let tmp = tempfile::tempdir().unwrap();
        let (files, _) = systemd(&spec, tmp.path());
        let units: Vec<String> = files
            .keys()
            .filter(|p| p.parent() == Some(Path::new("")))
            .map(|p| format!("./{}", p.display()))
            .collect();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .args(&units)
            .current_dir(tmp.path())
            .output()
            .unwrap();
        let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(
            out.status.success() && report.is_empty(),
            "{spec}: systemd-analyze verify:\n{report}"
        );
    }
}

// ------------------------------------------------------------- the command

/// Runs `supervise` with the words of `line` (no word has spaces) in `cwd`.
fn run(line: &str, cwd: &Path) -> Output {
    supervise(&line.split_whitespace().collect::<Vec<_>>(), cwd)
}

fn write_spec(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path
}

#[test]
fn strict_turns_warnings_into_exit_1_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let units = tmp.path().join("units");
    let line = format!(
        "export --format systemd examples/web.toml -o {} --strict",
        units.display()
    );
    let out = run(&line, Path::new(ROOT));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("warning: web: health.http cannot be expressed in systemd"),
        "{err}"
    );
    let last = err.lines().last().unwrap();
    assert_eq!(last, "error: --strict: 3 warnings, so nothing was written");
    assert!(!units.exists(), "nothing is written under --strict");

    // Without anything to report, --strict changes nothing.
    let body = "[services.a]\ncommand = [\"true\"]\nimage = \"busybox\"\n";
    let spec = write_spec(tmp.path(), "calm.toml", body);
    for format in ["kubernetes", "systemd"] {
        let out_dir = tmp.path().join(format);
        let line = format!(
            "export --format {format} {} -o {} --strict",
            spec.display(),
            out_dir.display()
        );
        let out = run(&line, tmp.path());
        assert_eq!(
            out.status.code(),
            Some(0),
            "{format}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stderr), "", "{format}");
        assert!(out_dir.exists(), "{format}");
    }
}

#[test]
fn every_warning_is_one_line_naming_the_service_and_the_key() {
    let spec = load("tests/golden/everything.toml");
    let tmp = tempfile::tempdir().unwrap();
    let (_, systemd_warnings) = systemd("tests/golden/everything.toml", tmp.path());
    let (_, kubernetes_warnings) = kubernetes("tests/golden/everything.toml");
    for line in systemd_warnings.lines().chain(kubernetes_warnings.lines()) {
        let rest = line
            .strip_prefix("warning: ")
            .unwrap_or_else(|| panic!("{line}"));
        let (place, message) = rest.split_once(": ").unwrap();
        let known = place == "supervisor" || place.starts_with("alerts[");
        assert!(known || spec.service(place).is_some(), "{line}");
        let key = message.split(' ').next().unwrap();
        let is_key = |c: char| c.is_ascii_lowercase() || c == '_' || c == '.';
        assert!(key.chars().all(is_key), "{line}");
    }
    for expected in [
        "warning: api: health.http cannot be expressed in systemd",
        "warning: leader: failover cannot be expressed in systemd",
        "warning: alerts[0]: alert on failed, unhealthy cannot be expressed in systemd",
        "warning: supervisor: metrics cannot be expressed in systemd",
    ] {
        assert!(
            systemd_warnings.contains(expected),
            "{expected}\n{systemd_warnings}"
        );
    }
    for expected in [
        "warning: db: stop_signal SIGINT cannot be expressed",
        "warning: db: health.notify cannot be expressed in Kubernetes",
        "warning: api: depends_on db = \"healthy\" cannot be expressed in Kubernetes",
        "warning: worker_pool: health.interval 1500ms is rounded up to 2s",
    ] {
        assert!(
            kubernetes_warnings.contains(expected),
            "{expected}\n{kubernetes_warnings}"
        );
    }
}

#[test]
fn a_service_without_an_image_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let body = "[services.web]\ncommand = [\"true\"]\nimage = \"busybox\"\n\
                [services.worker]\ncommand = [\"true\"]\n";
    let spec = write_spec(tmp.path(), "app.toml", body);
    let out = run(
        &format!("export --format kubernetes {}", spec.display()),
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(text(&out.stdout), "");
    let err = text(&out.stderr);
    assert!(err.starts_with("error: worker has no image"), "{err}");
    assert!(
        err.contains("add image = \"...\" to [services.worker]"),
        "{err}"
    );
    // systemd needs no image.
    let line = format!("export --format systemd {} -o units", spec.display());
    let out = run(&line, tmp.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn systemd_units_go_to_stdout_without_o_each_under_its_file_name() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = Path::new(ROOT).join("examples/web.toml");
    let out = run(
        &format!("export --format systemd {} -o units", spec.display()),
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // Trailing blank lines are not printed.
    let written: BTreeMap<PathBuf, String> = read_tree(&tmp.path().join("units"))
        .into_iter()
        .map(|(path, content)| (path, content.trim_end().to_string()))
        .collect();
    assert!(written.len() > 1);

    // Before, this refused (exit 2) and asked for -o DIR.
    let out = run(
        &format!("export --format systemd {}", spec.display()),
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    // Units hold `# ` comment lines too: a header names a written file.
    let mut printed: BTreeMap<PathBuf, String> = BTreeMap::new();
    let mut current = None;
    for line in stdout.lines() {
        let header = line
            .strip_prefix("# ")
            .map(PathBuf::from)
            .filter(|name| written.contains_key(name) && !printed.contains_key(name));
        if let Some(name) = header {
            printed.insert(name.clone(), String::new());
            current = Some(name);
        } else {
            let content = printed
                .get_mut(current.as_ref().expect("a header first"))
                .unwrap();
            content.push_str(line);
            content.push('\n');
        }
    }
    for content in printed.values_mut() {
        *content = content.trim_end().to_string();
    }
    assert_eq!(printed, written);
}

#[test]
fn usage_errors_and_invalid_specs_exit_2() {
    let out = run("export --format nomad examples/web.toml", Path::new(ROOT));
    assert_eq!(out.status.code(), Some(2));
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(tmp.path(), "bad.toml", "[services.a]\ncommand = []\n");
    let out = run(
        &format!("export --format kubernetes {}", spec.display()),
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("bad.toml:2:"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn output_names_and_the_project_name() {
    let tmp = tempfile::tempdir().unwrap();
    let shop = tmp.path().join("shop");
    std::fs::create_dir(&shop).unwrap();
    let body = "[services.a]\ncommand = [\"true\"]\nimage = \"busybox\"\n";
    write_spec(&shop, "supervise.toml", body);
    // ./supervise.toml is named after its directory; -o DIR writes DIR/<project>.yaml.
    let out_dir = tmp.path().join("k8s");
    std::fs::create_dir(&out_dir).unwrap();
    let out = run(
        &format!("export --format kubernetes -o {}", out_dir.display()),
        &shop,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let written = out_dir.join("shop.yaml");
    assert!(
        std::fs::read_to_string(&written)
            .unwrap()
            .contains("part-of: shop")
    );
    assert_eq!(text(&out.stdout), format!("wrote {}\n", written.display()));
    // -f as for every command; -o FILE; --project; -q.
    let file = tmp.path().join("all.yml");
    let line = format!(
        "-f supervise.toml export --format kubernetes -o {} --project store -q",
        file.display()
    );
    let out = run(&line, &shop);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");
    assert!(
        std::fs::read_to_string(&file)
            .unwrap()
            .contains("part-of: store")
    );
    let out = run("export --format systemd -o units --project store", &shop);
    assert_eq!(out.status.code(), Some(0));
    assert!(shop.join("units/store.target").exists() && shop.join("units/a@.service").exists());
    let out = run(
        "export --format systemd -o units --project Not_Valid",
        &shop,
    );
    assert_eq!(out.status.code(), Some(2));
}
