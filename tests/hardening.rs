//! Security hardening against a hostile or careless environment: what the
//! supervisor inherited, who owns its state dir, how many connections it
//! is sent, which signals it receives (issue 13).

mod common;

use std::time::Duration;

use common::*;

/// As root, the replica and its check run as nobody: a descriptor leaked to
/// them would cross users.
fn as_nobody() -> &'static str {
    if is_root() {
        "user = \"nobody\"\n"
    } else {
        eprintln!("not root: the replica runs as this user, not as nobody");
        ""
    }
}

/// A replica that should hold only stdin/stdout/stderr, and a health check
/// that is healthy only if it holds no descriptor 7.
fn fd_spec() -> String {
    format!(
        r#"
[services.web]
command = ["sleep", "1000"]
cwd = "/"
{user}
[services.web.health]
exec = ["sh", "-c", "[ ! -e /dev/fd/7 ]"]
interval = "100ms"
start_period = "0s"
retries = 1
action = "none"
"#,
        user = as_nobody()
    )
}

/// Descriptor 7, open on a file only root can read (when root).
fn secret() -> (tempfile::NamedTempFile, std::fs::File) {
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "secret\n").unwrap();
    let file = std::fs::File::open(secret.path()).unwrap();
    (secret, file)
}

#[test]
fn inherited_descriptors_reach_neither_replicas_nor_checks() {
    let (_secret, file) = secret();
    let sup = Supervise::builder(&fd_spec()).inherit(7, file).start();
    let pid = sup.expect_spawned("web.0");
    assert!(
        open_fds(sup.pid).contains(&7),
        "the test did not pass descriptor 7 to the supervisor"
    );
    assert_eq!(
        open_fds(pid),
        [0, 1, 2].into(),
        "the replica holds more than stdin/stdout/stderr"
    );
    let (line, _) = sup.expect_said(r"web\.0 is (healthy|unhealthy)", SOON);
    assert!(
        line.text.contains("is healthy"),
        "the health check saw descriptor 7: {}",
        line.text
    );
}

#[test]
fn inherited_descriptors_do_not_reach_detached_replicas() {
    let (_secret, file) = secret();
    let project = Project::new(&fd_spec());
    let mut up = project.command(&["up", "-d"]);
    // Held until `up` has started.
    let inherited = (7, file);
    only_descriptors(&mut up, Some(&inherited));
    run_bounded(up, COMMAND_TIMEOUT).expect(0);
    let (_, pid, _) = project.replicas("web")[0].clone();
    let pid = pid.expect("web.0 has a pid") as i32;
    assert_eq!(
        open_fds(pid),
        [0, 1, 2].into(),
        "the replica holds more than stdin/stdout/stderr"
    );
}

const HELLO: &str = r#"
[services.web]
command = ["sh", "-c", "echo hello; exec sleep 1000"]
"#;

/// Someone else's file that a planted symlink points at.
fn victim(project: &Project) -> std::path::PathBuf {
    let path = project.dir().join("victim");
    std::fs::write(&path, "precious\n").unwrap();
    path
}

fn assert_untouched(victim: &std::path::Path) {
    assert_eq!(
        std::fs::read_to_string(victim).unwrap(),
        "precious\n",
        "a symlink in the state dir was followed"
    );
}

/// The state dir as `up` would make it, before `up` runs.
fn make_state_dir(project: &Project) {
    use std::os::unix::fs::DirBuilderExt;
    for sub in ["logs", "run"] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(project.state_dir().join(sub))
            .unwrap();
    }
}

/// `up -d` and foreground `up` both refuse the state dir, exit 1, with one
/// line naming `path` and `fix`; nothing was started.
fn assert_refused(project: &Project, path: &std::path::Path, fix: &str) {
    for args in [&["up", "-d"][..], &["up"][..]] {
        let ran = project.run(args);
        ran.expect(1);
        let said = ran.stderr.trim();
        assert_eq!(said.lines().count(), 1, "{args:?}: {ran:#?}");
        let wanted = format!("refusing state dir {}", path.display());
        assert!(said.contains(&wanted), "{args:?}: {ran:#?}");
        assert!(said.contains(fix), "{args:?}: {ran:#?}");
    }
    assert!(project.marked().is_empty(), "something was started");
}

#[test]
fn a_state_dir_another_user_made_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    if !is_root() || !have("setpriv") {
        eprintln!("skipped: needs root and setpriv to make the state dir as nobody");
        return;
    }
    let project = Project::new(HELLO);
    let victim = victim(&project);
    // nobody may create the state dir here, as in a shared directory.
    std::fs::set_permissions(project.dir(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let planted = std::process::Command::new("setpriv")
        .args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"])
        .args([
            "sh",
            "-c",
            "umask 077 && mkdir -p .supervise/logs && ln -s \"$1\" .supervise/logs/web.0.log",
            "sh",
        ])
        .arg(&victim)
        .current_dir(project.dir())
        .status()
        .unwrap();
    assert!(planted.success());
    std::fs::set_permissions(project.dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_refused(&project, &project.state_dir(), "chown");
    assert_untouched(&victim);
}

#[test]
fn a_state_dir_others_may_write_to_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let project = Project::new(HELLO);
    make_state_dir(&project);
    let state = project.state_dir();
    for dir in [state.clone(), state.join("logs"), state.join("run")] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_refused(&project, &dir, &format!("chmod 700 {}", dir.display()));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
}

/// Runs foreground `up` in `project` until its replica web.0 has said
/// hello (the shim writes a line to the log before it shows it), then
/// stops it.
fn run_until_hello(project: &Project) {
    let mut up = project.command(&["up"]);
    up.stdout(std::process::Stdio::piped());
    let mut child = up.spawn().unwrap();
    let out = Lines::reading(child.stdout.take().unwrap());
    let said = out.wait_for(SOON, |l| l.contains("hello"));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let ended = wait_bounded(&mut child, SOON);
    assert!(said.is_some(), "web.0 said nothing: {:?}", out.texts());
    assert_eq!(ended.and_then(|s| s.code()), Some(0));
}

#[test]
fn a_symlink_planted_as_a_log_file_is_not_written_through() {
    let project = Project::new(HELLO);
    let victim = victim(&project);
    make_state_dir(&project);
    std::os::unix::fs::symlink(&victim, project.state_dir().join("logs/web.0.log")).unwrap();
    run_until_hello(&project);
    assert_untouched(&victim);
}

#[test]
fn symlinks_planted_as_temp_files_are_not_written_through() {
    let project = Project::new(HELLO);
    let victim = victim(&project);
    make_state_dir(&project);
    let state = project.state_dir();
    for tmp in ["checkpoint.json.tmp", "run/web.0.running.tmp"] {
        std::os::unix::fs::symlink(&victim, state.join(tmp)).unwrap();
    }
    run_until_hello(&project);
    assert!(
        std::fs::symlink_metadata(state.join("checkpoint.json")).is_ok_and(|m| m.is_file()),
        "no checkpoint was written"
    );
    assert_untouched(&victim);
}

#[test]
fn a_connection_flood_leaves_the_supervisor_its_descriptors() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};

    const FLOOD: usize = 2000;
    // The test holds the flood; the supervisor gets a limit a flood that
    // is accepted whole would exhaust.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if hard < FLOOD as u64 + 100 {
        eprintln!("skipped: the hard limit on open files ({hard}) is below the flood");
        return;
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    let spec = r#"
[services.web]
command = ["sleep", "1000"]
restart = { delay = "0s" }
"#;
    let sup = Supervise::builder(spec).open_files(1024).start();
    let first = sup.expect_spawned("web.0");
    let address = UnixAddr::new(&sup.state_dir().join("control.sock")).unwrap();
    let mut held = Vec::new();
    for _ in 0..FLOOD {
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        // Once the listen backlog is full, the rest are refused (EAGAIN).
        if connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &address).is_ok() {
            held.push(fd);
        }
    }
    assert!(
        held.len() > 256,
        "only {} connections were made",
        held.len()
    );
    // A supervisor that accepts the whole flood runs out of descriptors
    // well within this; one that caps its connections never gets there.
    wait_until(Duration::from_secs(2), || open_fds(sup.pid).len() > 1000);
    let during = open_fds(sup.pid).len();
    let spawned = sup.expect("spawned", "web.0");
    kill9(first);
    let (_, second) = sup.expect_spawned_after(&spawned, "web.0");
    assert_ne!(first, second);
    drop(held);
    let mut status = None;
    assert!(
        wait_until(SOON, || {
            status = socket_status(&sup.state_dir());
            status.is_some()
        }),
        "status does not answer after the flood"
    );
    let report = status.unwrap();
    let replica = replica_in(&report, "web", 0);
    assert_eq!(replica["pid"], second, "{report:#}");
    assert_eq!(replica["state"], "running", "{report:#}");
    assert!(is_alive(second));
    assert!(
        !sup.transcript().contains("Too many open files"),
        "{}",
        sup.transcript()
    );
    assert!(
        during < 300,
        "the supervisor held {during} descriptors during the flood"
    );
}

const SLEEPER: &str = r#"
[services.web]
command = ["sleep", "1000"]
"#;

#[test]
fn stray_signals_are_logged_and_change_nothing() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let mut sup = Supervise::start(SLEEPER);
    let replica = sup.expect_spawned("web.0");
    let stray = [
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGALRM,
        Signal::SIGPWR,
        Signal::SIGXFSZ,
    ];
    for signal in stray {
        let from = sup.err.snapshot().len();
        kill(Pid::from_raw(sup.pid), signal).unwrap();
        sup.expect_said_from(from, &format!("^received {signal}; ignored"), SOON);
    }
    let from = sup.err.snapshot().len();
    // SAFETY: kill with a real-time signal number nix has no name for.
    assert_eq!(
        unsafe { nix::libc::kill(sup.pid, nix::libc::SIGRTMIN() + 3) },
        0
    );
    sup.expect_said_from(from, r"^received SIGRTMIN\+3; ignored", SOON);
    // Ignored outright (Rust's runtime does), so nothing is logged.
    kill(Pid::from_raw(sup.pid), Signal::SIGPIPE).unwrap();
    let report = socket_status(&sup.state_dir()).expect("status answers");
    assert!(sup.is_running(), "{}", sup.transcript());
    assert_eq!(replica_in(&report, "web", 0)["pid"], replica);
    assert!(is_alive(replica));
    assert_eq!(
        sup.said()
            .iter()
            .filter(|e| e.starts_with("spawned"))
            .count(),
        1,
        "{}",
        sup.transcript()
    );
}

#[test]
fn sighup_reloads_the_spec_and_a_detached_supervisor_logs_it() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let project = Project::new(SLEEPER);
    let supervisor = Pid::from_raw(project.up(&[]));
    let web = project.replicas("web")[0].1;
    let log = project.state_dir().join("supervise.log");
    let logged = |text: &str| {
        wait_until(SOON, || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains(text))
        })
    };
    std::fs::write(
        project.dir().join("supervise.toml"),
        format!("{SLEEPER}\n[services.api]\ncommand = [\"sleep\", \"1000\"]\n"),
    )
    .unwrap();
    kill(supervisor, Signal::SIGHUP).unwrap();
    assert!(logged("received SIGHUP; reloading"));
    assert!(logged("1 added, 0 removed, 0 changed, 1 unchanged"));
    assert!(logged("spawned api.0"));
    std::fs::write(project.dir().join("supervise.toml"), "[services.web\n").unwrap();
    kill(supervisor, Signal::SIGHUP).unwrap();
    assert!(logged("reload rejected, the running state is untouched"));
    kill(supervisor, Signal::SIGUSR1).unwrap();
    assert!(logged("received SIGUSR1; ignored"));
    let report = socket_status(&project.state_dir()).expect("status answers");
    assert_eq!(replica_in(&report, "web", 0)["pid"], web.unwrap());
    assert_eq!(replica_in(&report, "api", 0)["state"], "running");
}

#[test]
fn logs_of_a_state_dir_another_user_cannot_read_say_so() {
    if !is_root() || !have("setpriv") {
        eprintln!("skipped: needs root and setpriv to read the logs as nobody");
        return;
    }
    let project = Project::new(HELLO);
    project.up(&[]);
    let state = project.state_dir();
    for args in [&["logs"][..], &["logs", "web"]] {
        let ran = run_bounded(
            {
                let mut cmd = std::process::Command::new("setpriv");
                cmd.args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"])
                    .arg(env!("CARGO_BIN_EXE_supervise"))
                    .arg("--state-dir")
                    .arg(&state)
                    .args(args)
                    .current_dir("/");
                cmd
            },
            COMMAND_TIMEOUT,
        );
        // Before: exit 0 and nothing, or "no service named web".
        ran.expect(1);
        assert!(
            ran.stderr.contains("permission denied"),
            "{args:?}: {ran:#?}"
        );
    }
}
