//! The Kubernetes manifests parsed back as YAML and checked key by key.

use super::*;

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
                    // Cluster scope: one pod at most, the old one gone first.
                    let cluster = service.failover.as_ref().is_some_and(|f| f.is_cluster());
                    let replicas = if cluster {
                        service.replicas.min(1)
                    } else {
                        service.replicas
                    };
                    assert_eq!(integer(workload, "spec.replicas"), i64::from(replicas));
                    if cluster && kind == "Deployment" {
                        assert_eq!(string(workload, "spec.strategy.type"), "Recreate");
                    }
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
