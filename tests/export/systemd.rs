//! The systemd units parsed back as INI, checked key by key, and verified
//! by `systemd-analyze verify` where it runs.

use super::*;

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
