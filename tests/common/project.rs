//! Commands run to completion with a bound ([`run_bounded`]), and a
//! [`Project`]: a spec in a temporary directory driven as a user would,
//! `supervise up -d` and the shell commands, cleaned up on drop.

use super::*;

/// What a finished `supervise` command printed, and how it exited.
#[derive(Debug)]
pub struct Ran {
    /// `None` if it had to be killed at the deadline (or died of a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// Panics, showing everything, unless the exit code is `code`.
    #[track_caller]
    pub fn expect(&self, code: i32) -> &Ran {
        assert_eq!(self.code, Some(code), "wanted exit {code}: {self:#?}");
        self
    }
}

/// Runs `cmd` to completion with its output captured, killing it (by pid)
/// if it is still running after `timeout`, so a hung command fails a test
/// instead of hanging it.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Ran {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start supervise");
    let read = |stream: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut s) = stream {
                let _ = s.read_to_string(&mut text);
            }
            text
        })
    };
    let out = read(child.stdout.take().map(|s| Box::new(s) as _));
    let err = read(child.stderr.take().map(|s| Box::new(s) as _));
    let status = wait_bounded(&mut child, timeout);
    Ran {
        code: status.and_then(|s| s.code()),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Waits up to `timeout` for `child` to exit, and kills it if it has not.
pub fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let mut status = None;
    if !wait_until(timeout, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    }) {
        let _ = child.kill();
        status = child.wait().ok();
    }
    status
}

/// A spec in a temporary directory, driven through the command line the
/// way a user would (`up -d`, `status`, `down`, …), with the directory as
/// the working directory. Every command carries this project's marker, so
/// a detached supervisor and all it starts carry it too: dropping the
/// project runs `down`, then kills by pid whatever is left with the marker.
pub struct Project {
    dir: tempfile::TempDir,
    marker: String,
}

/// Bound on any one command of a test.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

impl Project {
    pub fn new(spec: &str) -> Project {
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::write(dir.path().join("supervise.toml"), spec).expect("write the spec");
        Project {
            dir,
            marker: new_marker(),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn marker(&self) -> &str {
        &self.marker
    }

    /// The default state dir, `.supervise` next to the spec.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join(".supervise")
    }

    /// `supervise <args>` in the project's directory, not yet run.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_supervise"));
        cmd.args(args)
            .current_dir(self.dir.path())
            .env(MARKER_VAR, &self.marker)
            .env("NO_COLOR", "1")
            .env_remove("SUPERVISE_STATE_DIR")
            .env_remove("SUPERVISE_LOG");
        cmd
    }

    /// Runs `supervise <args>` to completion (bounded by [`COMMAND_TIMEOUT`]).
    pub fn run(&self, args: &[&str]) -> Ran {
        run_bounded(self.command(args), COMMAND_TIMEOUT)
    }

    /// `supervise up -d <extra>`, which must succeed; returns the
    /// supervisor's pid from its closing line.
    pub fn up(&self, extra: &[&str]) -> i32 {
        let mut args = vec!["up", "-d"];
        args.extend_from_slice(extra);
        let ran = self.run(&args);
        ran.expect(0);
        let re = Regex::new(r"supervise running in the background \(pid (\d+), state dir (.+)\)")
            .unwrap();
        let caps = re
            .captures(&ran.stdout)
            .unwrap_or_else(|| panic!("no closing line: {ran:#?}"));
        caps[1].parse().unwrap()
    }

    /// The output of `supervise logs <args>` once it holds every one of
    /// `wanted` (the shims write what they read a moment after a replica
    /// runs); `Err` with the last output when that does not happen soon.
    pub fn logs_holding(&self, args: &[&str], wanted: &[&str]) -> Result<String, String> {
        let args: Vec<&str> = std::iter::once("logs")
            .chain(args.iter().copied())
            .collect();
        let mut out = String::new();
        let held = wait_until(SOON, || {
            out = self.run(&args).expect(0).stdout.clone();
            wanted.iter().all(|w| out.contains(w))
        });
        if held { Ok(out) } else { Err(out) }
    }

    /// `status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let ran = self.run(&["status", "--json"]);
        ran.expect(0);
        serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("{e}: {ran:#?}"))
    }

    /// The replicas of `service` in the status: (index, pid, state).
    pub fn replicas(&self, service: &str) -> Vec<(u64, Option<i64>, String)> {
        let status = self.status();
        let services = status["services"].as_array().expect("services");
        let svc = services
            .iter()
            .find(|s| s["name"] == service)
            .unwrap_or_else(|| panic!("no service {service} in {status:#}"));
        svc["replicas"]
            .as_array()
            .expect("replicas")
            .iter()
            .map(|r| {
                (
                    r["index"].as_u64().unwrap(),
                    r["pid"].as_i64(),
                    r["state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// Live processes of this project.
    pub fn marked(&self) -> Vec<i32> {
        marked_processes(&self.marker)
    }

    /// A follower of the running supervisor's events (history, then live).
    #[track_caller]
    pub fn events(&self) -> EventStream {
        EventStream::follow(&self.state_dir()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The `restarts` count of a replica, 0 while there is no answer.
    pub fn restarts(&self, service: &str, index: u64) -> u64 {
        restarts_in(&self.state_dir(), service, index)
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Ok(log) = std::fs::read_to_string(self.state_dir().join("supervise.log"))
        {
            eprintln!("--- supervise.log ---\n{log}");
        }
        if !self.marked().is_empty() {
            let _ = run_bounded(
                self.command(&["down", "--timeout", "5s"]),
                Duration::from_secs(20),
            );
        }
        let left = kill_marked(&self.marker, Duration::from_secs(5));
        remove_cgroups(&self.state_dir());
        if !left.is_empty() {
            eprintln!(
                "processes of marker {} survived cleanup: {left:?}",
                self.marker
            );
        }
    }
}

/// Two long-running replicas of `web` that wait for a one-shot `job`.
pub const JOB_THEN_WEB: &str = r#"
[services.job]
command = ["sh", "-c", "echo migrated; exit 0"]
restart = { policy = "never" }

[services.web]
command = ["sh", "-c", "echo hello from $SUPERVISE_REPLICA; exec sleep 1000"]
replicas = 2
depends_on = { job = "completed" }
"#;
