//! `supervise top` end to end: the real binary in a real terminal (tmux),
//! keys typed, the screen read back.

mod common;

use common::tmux::{PROMPT, Tmux};
use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const SPEC: &str = r#"
[services.web]
command = ["sh", "-c", "echo hello from $SUPERVISE_REPLICA; exec sleep 1000"]
replicas = 2

[services.db]
command = ["sh", "-c", "echo db is ready; exec sleep 1000"]
"#;

/// The cells of replica `name`'s row on a screen of `top`.
fn row<'s>(screen: &'s str, name: &str) -> Option<Vec<&'s str>> {
    screen
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&name))
}

fn pid_on(screen: &str, name: &str) -> Option<i64> {
    row(screen, name)?.get(1)?.parse().ok()
}

/// A terminal in the project's directory, `top` running in it.
fn top(p: &Project) -> Tmux {
    let tmux = Tmux::start(p.dir(), &[(MARKER_VAR, p.marker())], 120, 32);
    tmux.type_line(&format!("{} top", env!("CARGO_BIN_EXE_supervise")));
    tmux
}

#[test]
fn top_shows_every_replica_follows_a_kill_9_shows_the_log_and_says_when_the_supervisor_is_gone() {
    let p = Project::new(SPEC);
    p.up(&[]);
    let tmux = top(&p);
    let web = p.replicas("web");
    let db = p.replicas("db");
    let every = [
        ("web.0", pid_of(&web, 0)),
        ("web.1", pid_of(&web, 1)),
        ("db.0", pid_of(&db, 0)),
    ];
    let screen = tmux
        .wait_screen(SOON, |s| {
            every.iter().all(|(n, pid)| pid_on(s, n) == Some(*pid))
        })
        .unwrap_or_else(|s| panic!("not every replica with its pid:\n{s}"));
    assert!(screen.contains("3 replicas: 3 running"), "{screen}");
    // The first replica (of db, first in start order) is selected, and
    // its log is shown.
    tmux.wait_screen(SOON, |s| {
        s.contains("log of db.0") && s.contains("db is ready")
    })
    .unwrap_or_else(|s| panic!("no log line of db.0:\n{s}"));

    let old = pid_of(&web, 1);
    kill9(old as i32);
    let screen = tmux
        .wait_screen(SOON, |s| {
            row(s, "web.1").is_some_and(|r| r.contains(&"SIGKILL"))
                && pid_on(s, "web.1").is_some_and(|pid| pid != old)
        })
        .unwrap_or_else(|s| panic!("web.1 not seen killed and back:\n{s}"));
    assert_eq!(
        pid_on(&screen, "web.1"),
        pid_of(&p.replicas("web"), 1).into(),
        "{screen}"
    );

    // A stopped supervisor is named on the status line, and the keys work
    // meanwhile.
    let sup = Pid::from_raw(p.status()["supervisor"]["pid"].as_i64().unwrap() as i32);
    kill(sup, Signal::SIGSTOP).unwrap();
    tmux.keys(&["?"]);
    let help = tmux.wait_screen(SOON, |s| {
        s.contains("rolling restart, one replica at a time")
    });
    let named = tmux.wait_screen(SOON, |s| s.contains("did not answer within 3s: it (pid"));
    kill(sup, Signal::SIGCONT).unwrap();
    help.unwrap_or_else(|s| panic!("no help while the supervisor is stopped:\n{s}"));
    named.unwrap_or_else(|s| panic!("the stopped supervisor not named:\n{s}"));
    tmux.keys(&["Escape"]);

    // The supervisor goes away: a banner, and a key ends top with exit 3.
    p.run(&["down"]).expect(0);
    tmux.wait_screen(SOON, |s| {
        s.contains("The supervisor has exited. Press any key to quit.")
    })
    .unwrap_or_else(|s| panic!("no banner:\n{s}"));
    tmux.keys(&["x"]);
    tmux.wait_screen(SOON, |s| s.trim_end().ends_with(PROMPT.trim_end()))
        .unwrap_or_else(|s| panic!("no prompt after a key:\n{s}"));
    tmux.type_line("echo top-exit=$?");
    tmux.wait_screen(SOON, |s| s.contains("top-exit=3"))
        .unwrap_or_else(|s| panic!("top did not exit 3:\n{s}"));
}

#[test]
fn top_restarts_the_selected_replica_on_r_and_q_or_sigterm_give_the_prompt_back() {
    let p = Project::new(SPEC);
    p.up(&[]);
    let tmux = top(&p);
    let before = p.replicas("web");
    tmux.wait_screen(SOON, |s| s.contains("log of db.0"))
        .unwrap_or_else(|s| panic!("no table:\n{s}"));
    // Rows: db, db.0 (selected), web, web.0, web.1.
    tmux.keys(&["j", "Down", "j"]);
    tmux.wait_screen(SOON, |s| {
        s.contains("log of web.1") && s.contains("hello from 1")
    })
    .unwrap_or_else(|s| panic!("web.1 not selected:\n{s}"));
    tmux.keys(&["r"]);
    let moved = wait_until(SOON, || {
        let now = p.replicas("web");
        now[1].1.is_some() && now[1].1 != before[1].1
    });
    assert!(moved, "web.1 not restarted:\n{}", tmux.screen());
    assert_eq!(
        p.replicas("web")[0].1,
        before[0].1,
        "web.0 was restarted too"
    );
    tmux.wait_screen(SOON, |s| s.contains("restart web.1: web.1"))
        .unwrap_or_else(|s| panic!("no result on the status line:\n{s}"));

    // A smaller terminal: drawn again at its size (the log's box ends at
    // the new right edge).
    tmux.resize(90, 24);
    tmux.wait_screen(SOON, |s| {
        s.lines().count() == 24
            && s.lines().any(|l| {
                l.starts_with("┌ log of web.1") && l.chars().count() == 90 && l.ends_with('┐')
            })
    })
    .unwrap_or_else(|s| panic!("not redrawn at 90x24:\n{s}"));

    tmux.keys(&["q"]);
    // The shell's screen is back, its prompt last: top is gone (what is
    // typed before would be top's).
    let screen = tmux
        .wait_screen(SOON, |s| s.trim_end().ends_with(PROMPT.trim_end()))
        .unwrap_or_else(|s| panic!("no prompt after q:\n{s}"));
    assert!(
        !screen.contains("REPLICA"),
        "the table stayed on screen:\n{screen}"
    );
    tmux.type_line("echo top-exit=$?");
    tmux.wait_screen(SOON, |s| s.contains("top-exit=0"))
        .unwrap_or_else(|s| panic!("top did not exit 0:\n{s}"));

    // SIGTERM restores the terminal too.
    tmux.type_line("clear");
    tmux.type_line(&format!("{} top", env!("CARGO_BIN_EXE_supervise")));
    tmux.wait_screen(SOON, |s| s.contains("REPLICA"))
        .unwrap_or_else(|s| panic!("no table:\n{s}"));
    let top = descendants(tmux.shell_pid());
    assert_eq!(top.len(), 1, "{top:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(top[0]),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    let screen = tmux
        .wait_screen(SOON, |s| s.trim_end().ends_with(PROMPT.trim_end()))
        .unwrap_or_else(|s| panic!("no prompt after SIGTERM:\n{s}"));
    assert!(
        !screen.contains("REPLICA"),
        "the table stayed on screen:\n{screen}"
    );
}

#[test]
fn top_without_a_supervisor_exits_3_with_the_hint_and_piped_exits_2() {
    let p = Project::new(SPEC);
    let tmux = Tmux::start(p.dir(), &[(MARKER_VAR, p.marker())], 120, 20);
    tmux.type_line(&format!(
        "{} top; echo top-exit=$?",
        env!("CARGO_BIN_EXE_supervise")
    ));
    let screen = tmux
        .wait_screen(SOON, |s| s.lines().any(|l| l.starts_with("top-exit=")))
        .unwrap_or_else(|s| panic!("top did not end:\n{s}"));
    assert!(screen.contains("top-exit=3"), "{screen}");
    assert!(
        screen.contains("error: no supervisor for state dir") && screen.contains("supervise up -d"),
        "{screen}"
    );

    let ran = p.run(&["top"]);
    ran.expect(2);
    assert!(
        ran.stderr.contains("top needs a terminal") && ran.stderr.contains("supervise status"),
        "{ran:#?}"
    );
}
