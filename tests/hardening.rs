//! Security hardening against a hostile or careless environment: what the
//! supervisor inherited, who owns its state dir, how many connections it
//! is sent, which signals it receives (issue 13).

mod common;

use common::*;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

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
    let (line, _) = sup.expect_event(r"web\.0 is (healthy|unhealthy)", SOON);
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
