//! `supervise export`: golden files for every bundled example and for
//! `tests/golden/everything.toml` (a spec that uses every key), the
//! Kubernetes output parsed back as YAML and the systemd units parsed back
//! as INI, each checked against the spec key by key, `systemd-analyze
//! verify` on the units where it runs, and the exit statuses.
//!
//! The golden files are in `tests/golden/<spec>/`; regenerate them with
//!     SUPERVISE_UPDATE_GOLDEN=1 cargo test --test export
//! (`.ci/run` also validates the Kubernetes ones against the API schemas.)
//!
//! This file holds the helpers, the golden files and the command's exit
//! statuses; `kubernetes.rs` and `systemd.rs` check each format key by key.

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

mod kubernetes;
mod systemd;

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
