//! The spec loader seen from outside: `supervise::spec::load` on fixture
//! files. Every invalid fixture has one problem, checked for count, line and
//! wording; the valid ones check parsed values and defaults; the last tests
//! feed truncated, mutated and random files to make sure `load` never panics.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use supervise::spec::{
    AlertTarget, Condition, Diagnostics, HealthAction, Limits, Policy, Probe, Promote,
    RestartPolicy, Spec, load,
};

fn fixture(kind: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(kind)
        .join(name)
}

fn load_invalid(name: &str) -> Diagnostics {
    match load(&fixture("invalid", &format!("{name}.toml"))) {
        Ok(_) => panic!("{name}.toml was accepted"),
        Err(d) => d,
    }
}

fn load_valid(name: &str) -> Spec {
    load(&fixture("valid", name)).unwrap_or_else(|d| panic!("{name} was rejected:\n{d}"))
}

/// Asserts that fixture `name` has exactly one problem, on `line`, whose
/// message contains `fragment`; and that it renders with its source line.
fn assert_one_error(name: &str, line: usize, fragment: &str) {
    let all = load_invalid(name);
    assert_eq!(all.len(), 1, "{name}: expected one error, got:\n{all}");
    let d = &all.0[0];
    assert_eq!(d.location.map(|(l, _)| l), Some(line), "{name}:\n{all}");
    assert!(
        d.message.contains(fragment),
        "{name}: {:?} does not contain {fragment:?}",
        d.message
    );
    assert!(
        !d.hint.is_empty() && !d.hint.contains('\n'),
        "{name}: bad hint {:?}",
        d.hint
    );
    assert!(!d.message.contains('\n'), "{name}: multi-line message");
    let shown = all.to_string();
    assert!(shown.starts_with("error: "), "{shown}");
    assert!(
        shown.contains(&format!("   {line} | ")),
        "{name}: no source line in\n{shown}"
    );
    assert!(shown.contains("   hint: "), "{shown}");
    assert_check_rejects(name, &d.file, line);
}

/// The same fixture through the real binary: `supervise check` exits 2 and
/// names file and line (`file` is the spec, or the env file it points to).
fn assert_check_rejects(name: &str, file: &Path, line: usize) {
    let path = fixture("invalid", &format!("{name}.toml"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_supervise"))
        .arg("check")
        .arg(&path)
        .output()
        .expect("running supervise check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
    assert!(
        stderr.contains(&format!("{}:{line}:", file.display())),
        "{name}: stderr does not name {}:{line}:\n{stderr}",
        file.display()
    );
    assert!(
        out.stdout.is_empty(),
        "{name}: printed a plan for an invalid spec"
    );
}

macro_rules! invalid {
    ($($name:ident: $line:expr, $fragment:expr;)*) => {
        $(
            #[test]
            fn $name() {
                assert_one_error(stringify!($name), $line, $fragment);
            }
        )*
    };
}

invalid! {
    // TOML syntax and structure
    syntax_error: 4, "invalid TOML";
    duplicate_key: 4, "duplicate key `command`";
    unknown_key: 4, "unknown key `stop_sigal` in [services.api]";
    unknown_table: 5, "unknown table `service`";
    wrong_type: 4, "expected an integer for `replicas`, found a string";
    no_services: 1, "defines no services";
    // names and commands
    bad_service_name: 2, "invalid service name \"Api\"";
    long_service_name: 2, "invalid service name";
    missing_command: 2, "has no `command`";
    empty_command: 3, "`command` is empty";
    empty_command_string: 3, "`command` is empty";
    unbalanced_quotes: 3, "unbalanced quotes in `command`";
    shell_operator: 3, "shell operator \"|\"";
    // durations, sizes, signals
    bad_duration: 4, "invalid duration \"10 parsecs\" in `stop_timeout`";
    duration_not_string: 4, "expected a string for `stop_timeout`";
    bad_size: 3, "invalid size \"10XB\" in `log_max_size`";
    unknown_signal: 4, "unknown signal \"SIGFOO\" in `stop_signal`";
    stop_signal_sigstop: 4, "SIGSTOP cannot be used as `stop_signal`";
    // replicas and ports
    negative_replicas: 4, "`replicas` must be between 0 and 10000, got -1";
    too_many_replicas: 4, "got 100000";
    port_out_of_range: 4, "`port` must be between 1 and 65535";
    port_range_overflow: 5, "go past 65535";
    port_clash: 9, "service \"web\" (port 8002) clashes with service \"api\" (ports 8000-8002)";
    port_placeholder_without_port: 3, "`{port}` is used but service \"api\" has no `port`";
    // placeholders
    unknown_placeholder: 3, "unknown placeholder \"{name}\" in `command`";
    pid_outside_hook: 3, "`{pid}` is not available in `command`";
    unbalanced_brace: 4, "unbalanced `{` in `cwd`";
    // environment and accounts
    bad_env_name: 4, "invalid environment variable name \"API-KEY\"";
    env_not_string: 6, "expected a string for `env.PORT_OFFSET`";
    missing_env_file: 4, "env file \"does-not-exist.env\" not found";
    bad_env_file_line: 3, "expected KEY=VALUE";
    unknown_user: 4, "unknown user \"no-such-user-for-supervise\"";
    unknown_group: 4, "unknown group \"no-such-group-for-supervise\"";
    // dependencies
    unknown_dependency: 7, "unknown service \"bd\" in `depends_on`";
    self_dependency: 4, "service \"api\" depends on itself";
    dependency_cycle: 12, "dependency cycle: a -> b -> c -> a";
    completed_on_always: 7, "service \"migrate\" never completes";
    bad_condition: 7, "invalid value \"ready\" for `depends_on.db`";
    // restart
    bad_restart_policy: 4, "invalid value \"on_failure\" for `policy`";
    exit_code_out_of_range: 7, "`exit_codes` must be between 0 and 255, got 256";
    max_delay_below_delay: 7, "`max_delay` (1s) is shorter than `delay` (5s)";
    // health
    health_without_probe: 5, "has no probe";
    health_two_probes: 8, "more than one probe: `tcp` and `http`";
    bad_http_probe: 6, "`http` must be an http:// or https:// URL";
    bad_tcp_probe: 6, "expected \"HOST:PORT\" in `tcp`";
    bad_log_regex: 6, "invalid regular expression in `log`: unclosed group";
    zero_retries: 7, "`retries` must be at least 1, got 0";
    watchdog_without_notify: 7, "`watchdog` needs `notify = true`";
    bad_health_action: 7, "invalid value \"kill\" for `action`";
    // failover
    failover_without_mode: 6, "has no `mode`";
    failover_two_hooks: 9, "both `promote` and `promote_signal` are set";
    // alerts and supervisor
    alert_unknown_event: 6, "invalid value \"crashed\" for `events`";
    alert_empty_events: 6, "`events` is empty";
    alert_without_target: 5, "[[alerts]] has no `command`";
    alert_two_targets: 8, "both `command` and `webhook`";
    alerts_not_array: 5, "expected an array of tables for `alerts`";
    bad_metrics: 3, "invalid address \"localhost\" in `metrics`";
    // limits
    negative_memory_limit: 5, "invalid size \"-1\" in `memory`: sizes cannot be negative";
    zero_cpu_limit: 5, "`cpu` must be above 0 and at most 4096, got 0";
    unknown_limit: 6, "unknown key `swap` in [services.api.limits]";
    memory_high_above_memory: 6, "`memory_high` (419430400 bytes) is above `memory` (268435456 bytes)";
    nofile_not_integer: 5, "expected an integer for `nofile`, found a string";
    // cluster
    cluster_short_lease: 5, "`lease` must be whole seconds, at least 3s";
    cluster_bad_node: 4, "`node` \"db_A\" is not a DNS label";
    cluster_scope_without_cluster: 8, "`scope = \"cluster\"` needs a [supervisor.cluster] table";
    cluster_https_endpoint: 3, "`etcd` endpoints are http://HOST:PORT URLs";
}

#[test]
fn hints_suggest_the_closest_name() {
    let hint = |name: &str| load_invalid(name).0[0].hint.clone();
    assert_eq!(hint("unknown_key"), "did you mean `stop_signal`?");
    assert_eq!(hint("unknown_table"), "did you mean `services`?");
    assert_eq!(hint("unknown_dependency"), "did you mean \"db\"?");
    assert_eq!(hint("bad_restart_policy"), "did you mean \"on-failure\"?");
    assert_eq!(
        hint("unknown_signal"),
        "use a signal name such as \"SIGTERM\", \"SIGINT\" or \"SIGQUIT\""
    );
}

#[test]
fn errors_point_at_the_exact_column() {
    let column = |name: &str| load_invalid(name).0[0].location.map(|(_, c)| c);
    // stop_signal = "SIGFOO": the value starts at column 15.
    assert_eq!(column("unknown_signal"), Some(15));
    // command = ["./api", "--port", "{port}"]: the placeholder inside the string.
    assert_eq!(column("port_placeholder_without_port"), Some(32));
    // cwd = "data/{replica": the unclosed brace itself.
    assert_eq!(column("unbalanced_brace"), Some(13));
}

#[test]
fn env_file_errors_name_the_env_file_and_its_line() {
    let all = load_invalid("bad_env_file_line");
    let d = &all.0[0];
    assert!(d.file.ends_with("bad.env"), "{:?}", d.file);
    assert_eq!(d.location, Some((3, 1)));
    assert!(d.hint.contains("service \"api\""), "{}", d.hint);
}

#[test]
fn three_independent_errors_are_all_reported() {
    let all = load_invalid("three_errors");
    let found: Vec<(Option<usize>, &str)> = all
        .iter()
        .map(|d| (d.location.map(|(l, _)| l), d.message.as_str()))
        .collect();
    assert_eq!(found.len(), 3, "{all}");
    assert_eq!(found[0].0, Some(4));
    assert!(found[0].1.contains("unknown signal \"SIGFOO\""));
    assert_eq!(found[1].0, Some(8));
    assert!(found[1].1.contains("invalid duration \"soon\""));
    assert_eq!(found[2].0, Some(12));
    assert!(
        found[2]
            .1
            .contains("`replicas` must be between 0 and 10000, got -2")
    );
    assert!(all.to_string().ends_with("\n\n3 errors found\n"));
}

#[test]
fn full_example_parses_with_its_values() {
    let spec = load_valid("full.toml");
    let dir = fixture("valid", "").canonicalize().unwrap();
    assert_eq!(spec.dir, dir);
    assert_eq!(spec.supervisor.state_dir, dir.join(".supervise"));
    assert_eq!(spec.supervisor.log_max_size, 10 * 1024 * 1024);
    assert_eq!(
        spec.supervisor.metrics,
        Some("127.0.0.1:9464".parse().unwrap())
    );

    // Dependencies first, otherwise by name.
    let order: Vec<&str> = spec.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(order, ["db", "api", "migrate", "primary", "tests"]);

    let db = spec.service("db").unwrap();
    // env_file first (its braces kept literal), then `env`, which overrides PGPORT in place.
    let env: Vec<(&str, &str)> = db
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        env,
        [
            ("PGPORT", "{port}"),
            ("PGDATA", "/var/lib/pg data"),
            ("PGOPTIONS", "-c search_path={{x}}"),
        ]
    );
    assert_eq!(db.stop_signal, Signal::SIGINT);
    assert_eq!(db.stop_timeout, Duration::from_secs(15));
    assert_eq!(db.user.as_ref().map(|u| (u.uid, u.gid)), Some((0, 0)));
    let health = db.health.as_ref().unwrap();
    assert_eq!(health.probe, Probe::Tcp("127.0.0.1:{port}".into()));
    assert_eq!(health.start_period, Duration::from_secs(30));
    assert_eq!(health.action, HealthAction::Restart);
    let plan = db.replica(&spec.dir, 0);
    assert!(plan.env.contains(&("PGPORT".into(), "5432".into())));
    assert!(
        plan.env
            .contains(&("PGOPTIONS".into(), "-c search_path={x}".into()))
    );

    let api = spec.service("api").unwrap();
    let replica = api.replica(&spec.dir, 2);
    assert_eq!(
        replica.argv,
        ["./api", "--port", "8002", "--name", "api 2"].map(String::from)
    );
    assert_eq!(replica.port, Some(8002));
    assert!(replica.env.contains(&("PORT".into(), "8002".into())));
    assert!(
        replica
            .env
            .contains(&("SUPERVISE_REPLICA".into(), "2".into()))
    );
    assert_eq!(api.depends_on[0].condition, Condition::Healthy);

    let tests = spec.service("tests").unwrap();
    let deps: Vec<(&str, Condition)> = tests
        .depends_on
        .iter()
        .map(|d| (d.service.as_str(), d.condition))
        .collect();
    assert_eq!(
        deps,
        [
            ("api", Condition::Healthy),
            ("migrate", Condition::Completed)
        ]
    );
    assert_eq!(tests.restart.policy, Policy::Never);
    assert_eq!(tests.image.as_deref(), Some("rust:1"));
    assert_eq!(
        spec.service("db").unwrap().limits,
        Limits {
            memory: Some(512 << 20),
            memory_high: Some(400 << 20),
            cpu: Some(1.5),
            pids: Some(256),
            nofile: Some(65536),
            core: Some(0),
        }
    );
    assert_eq!(tests.limits, Limits::default());

    let primary = spec.service("primary").unwrap();
    let promote = primary.failover.as_ref().and_then(|f| f.promote.clone());
    assert_eq!(
        promote,
        Some(Promote::Command(
            ["./promote.sh", "{replica}", "{pid}"]
                .map(String::from)
                .to_vec()
        ))
    );

    assert_eq!(spec.alerts.len(), 2);
    assert_eq!(
        spec.alerts[0].events,
        ["failed", "unhealthy", "promoted", "restarted"]
    );
    assert_eq!(
        spec.alerts[1].target,
        AlertTarget::Webhook("http://127.0.0.1:9000/hook".into())
    );
}

#[test]
fn omitted_keys_take_their_documented_defaults() {
    let spec = load_valid("minimal.toml");
    let s = &spec.supervisor;
    assert_eq!(s.state_dir, spec.dir.join(".supervise"));
    assert_eq!(s.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(s.log_max_size, 10 << 20);
    assert_eq!(s.log_keep, 5);
    assert_eq!(s.metrics, None);
    assert!(spec.alerts.is_empty());

    let web = &spec.services[0];
    assert_eq!(web.command, ["python3", "-m", "http.server"]);
    assert_eq!(web.replicas, 1);
    assert_eq!(
        (web.cwd.as_ref(), web.port, web.health.as_ref()),
        (None, None, None)
    );
    assert!(web.env.is_empty() && web.depends_on.is_empty());
    assert_eq!((web.user.as_ref(), web.group.as_ref()), (None, None));
    assert_eq!(web.stop_signal, Signal::SIGTERM);
    assert_eq!(web.stop_timeout, Duration::from_secs(10));
    assert_eq!(web.restart, RestartPolicy::default());
    assert_eq!(web.failover, None);
    assert_eq!(web.replica(&spec.dir, 0).cwd, spec.dir);
}

#[test]
fn the_plan_lists_every_replica() {
    let spec = load_valid("full.toml");
    let plan = supervise::spec::render_plan(&spec);
    assert!(
        plan.starts_with("start order: db, api, migrate, primary, tests\n"),
        "{plan}"
    );
    assert!(
        plan.contains("  api.2\n    argv  ./api --port 8002 --name 'api 2'\n"),
        "{plan}"
    );
    assert!(
        plan.contains("depends on: api (healthy), migrate (completed)"),
        "{plan}"
    );
    assert!(
        plan.contains(
            "  limits:     memory 512MiB, memory_high 400MiB, cpu 1.5, pids 256, nofile 65536, \
             core 0B (per replica)\n"
        ),
        "{plan}"
    );
    let summary = format!(
        "5 services, 8 replicas; state dir {}\n",
        spec.supervisor.state_dir.display()
    );
    assert!(plan.ends_with(&summary), "{plan}");
}

#[test]
fn an_unreadable_file_is_one_error_without_location() {
    let all = load(Path::new("/nonexistent/supervise.toml")).unwrap_err();
    assert_eq!(all.len(), 1);
    assert_eq!(all.0[0].location, None);
    assert!(all.0[0].message.contains("cannot read the spec file"));
    assert_eq!(all.0[0].file, Path::new("/nonexistent/supervise.toml"));
}

#[test]
fn invalid_utf8_is_located() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spec.toml");
    std::fs::write(&path, b"[services.a]\ncommand = [\"\xff\"]\n").unwrap();
    let all = load(&path).unwrap_err();
    assert_eq!(all.len(), 1);
    assert_eq!(all.0[0].location, Some((2, 13)));
    assert!(all.0[0].message.contains("not valid UTF-8"));
}

/// Loads `bytes` as a spec (next to a copy of the env file the full example
/// uses) and renders the result; panics with the input if anything panicked.
fn assert_no_panic(dir: &Path, bytes: &[u8]) {
    let path = dir.join("spec.toml");
    std::fs::write(&path, bytes).unwrap();
    let outcome = catch_unwind(AssertUnwindSafe(|| match load(&path) {
        Ok(spec) => supervise::spec::render_plan(&spec),
        Err(all) => {
            assert!(!all.is_empty(), "an error without diagnostics");
            all.to_string()
        }
    }));
    if outcome.is_err() {
        panic!("load panicked on:\n{}", String::from_utf8_lossy(bytes));
    }
}

fn scratch_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("valid", "db.env"), dir.path().join("db.env")).unwrap();
    dir
}

#[test]
fn truncated_specs_never_panic() {
    let dir = scratch_dir();
    let full = std::fs::read(fixture("valid", "full.toml")).unwrap();
    for end in 0..=full.len() {
        assert_no_panic(dir.path(), &full[..end]);
    }
}

#[test]
fn mutated_specs_never_panic() {
    // Bytes that matter to TOML, templates and our parsers, plus a multi-byte character.
    const INTERESTING: &[&[u8]] = &[
        b"[",
        b"]",
        b"{",
        b"}",
        b"\"",
        b"'",
        b"=",
        b",",
        b"\n",
        b"#",
        b".",
        b"-",
        b"0",
        b"99999999999999999999",
        b"{port}",
        b"{pid}",
        b"\\",
        b" ",
        b"\xc3\xa9",
        b"\xff",
    ];
    let dir = scratch_dir();
    let full = std::fs::read(fixture("valid", "full.toml")).unwrap();
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    for _ in 0..1500 {
        let mut bytes = full.clone();
        for _ in 0..rng.usize(1..=4) {
            let at = rng.usize(0..=bytes.len());
            let insert = INTERESTING[rng.usize(..INTERESTING.len())];
            match rng.u8(0..3) {
                0 => drop(bytes.splice(at..(at + 1).min(bytes.len()), insert.iter().copied())),
                1 => drop(bytes.splice(at..at, insert.iter().copied())),
                _ => drop(bytes.drain(at..(at + rng.usize(1..20)).min(bytes.len()))),
            }
        }
        assert_no_panic(dir.path(), &bytes);
    }
}

#[test]
fn random_bytes_never_panic() {
    const TOMLISH: &[u8] = b"[]{}=\"',.\n #abcdefsv0123456789{}:-_";
    let dir = scratch_dir();
    let mut rng = fastrand::Rng::with_seed(42);
    for round in 0..600 {
        let len = rng.usize(0..300);
        let bytes: Vec<u8> = if round % 2 == 0 {
            (0..len).map(|_| rng.u8(..)).collect()
        } else {
            (0..len)
                .map(|_| TOMLISH[rng.usize(..TOMLISH.len())])
                .collect()
        };
        assert_no_panic(dir.path(), &bytes);
    }
}

#[test]
fn an_env_file_must_be_a_small_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    nix::unistd::mkfifo(&dir.path().join("fifo.env"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    std::fs::write(dir.path().join("big.env"), vec![b'#'; 2 << 20]).unwrap();
    for (file, why) in [
        // Before: a FIFO with no writer hung `check`, /dev/zero ate memory.
        ("fifo.env", "is not a regular file"),
        ("/dev/zero", "is not a regular file"),
        ("big.env", "is larger than 1024 KiB"),
    ] {
        let path = dir.path().join("spec.toml");
        std::fs::write(
            &path,
            format!("[services.a]\ncommand = [\"true\"]\nenv_file = \"{file}\"\n"),
        )
        .unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_supervise"));
        cmd.arg("check").arg(&path);
        let ran = common::run_bounded(cmd, Duration::from_secs(20));
        ran.expect(2);
        assert!(
            ran.stderr.contains(&format!("env file \"{file}\" {why}")),
            "{file}: {ran:#?}"
        );
        assert!(ran.stderr.contains("spec.toml:3:"), "{file}: {ran:#?}");
    }
}
