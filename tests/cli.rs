//! The command line as a user meets it: help, usage errors, `check` on the
//! bundled examples, completions.

use std::path::Path;
use std::process::{Command, Output};

fn supervise(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_supervise"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NO_COLOR", "1")
        .output()
        .expect("running supervise")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn every_bundled_example_passes_check_and_prints_its_plan() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = supervise(&["check", path.to_str().unwrap()]);
            let text = stdout(&out);
            assert_eq!(out.status.code(), Some(0), "{}: {:?}", path.display(), out);
            assert!(text.starts_with("start order: "), "{text}");
            assert!(text.contains(" replicas; state dir "), "{text}");
            seen += 1;
        }
    }
    assert!(seen >= 3, "expected at least three examples, found {seen}");
}

#[test]
fn check_takes_the_spec_from_dash_f_too() {
    let out = supervise(&["-f", "examples/web.toml", "check"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("web.2\n    argv  python3 -m http.server 8082"));
}

#[test]
fn a_missing_spec_file_is_a_clear_error_with_exit_2() {
    let out = supervise(&["check", "no/such/spec.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no/such/spec.toml"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(supervise(&["up", "--no-such-flag"]).status.code(), Some(2));
    assert_eq!(supervise(&["frobnicate"]).status.code(), Some(2));
}

#[test]
fn exit_with_an_unknown_service_is_a_usage_error() {
    let out = supervise(&["up", "examples/ci.toml", "--exit-with", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--exit-with nope: no such service"));
}

#[test]
fn help_teaches_with_examples() {
    for args in [&["--help"][..], &["up", "--help"], &["check", "--help"]] {
        let text = stdout(&supervise(args));
        assert!(text.contains("Examples:"), "{args:?}: {text}");
    }
}

#[test]
fn completions_are_generated_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = supervise(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0));
        let text = stdout(&out);
        assert!(
            text.contains("supervise") && text.contains("exit-with"),
            "{shell}"
        );
    }
}
