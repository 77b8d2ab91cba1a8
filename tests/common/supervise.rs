//! [`Supervise`]: a foreground `supervise up` of a test, its output
//! collected line by line and its events followed (see `events`), killed
//! with everything it started when the guard drops.

use super::*;

/// How to start a supervisor.
pub struct Builder {
    spec: String,
    args: Vec<String>,
    wrapper: Vec<String>,
    dir: Option<Arc<tempfile::TempDir>>,
    inherited: Option<(i32, std::fs::File)>,
    open_files: Option<u64>,
    envs: Vec<(String, String)>,
}

impl Builder {
    /// Extra arguments after `up <spec>`.
    pub fn arg(mut self, a: &str) -> Builder {
        self.args.push(a.to_string());
        self
    }

    /// Runs `<wrapper…> supervise up <spec>` (e.g. `unshare --pid --fork`).
    /// The supervisor is then the wrapper's child.
    pub fn wrapped(mut self, wrapper: &[&str]) -> Builder {
        self.wrapper = wrapper.iter().map(|s| s.to_string()).collect();
        self
    }

    /// The supervisor starts with this limit on open files (soft and hard),
    /// which it cannot raise.
    pub fn open_files(mut self, limit: u64) -> Builder {
        self.open_files = Some(limit);
        self
    }

    /// The supervisor starts with `key=value` in its environment.
    pub fn env(mut self, key: &str, value: &str) -> Builder {
        self.envs.push((key.to_string(), value.to_string()));
        self
    }

    /// The supervisor inherits `file` as descriptor `fd` (see [`only_descriptors`]).
    pub fn inherit(mut self, fd: i32, file: std::fs::File) -> Builder {
        self.inherited = Some((fd, file));
        self
    }

    pub fn start(self) -> Supervise {
        let dir = self
            .dir
            .unwrap_or_else(|| Arc::new(tempfile::tempdir().expect("a temp dir")));
        let spec = dir.path().join("supervise.toml");
        if !spec.exists() {
            std::fs::write(&spec, &self.spec).expect("write the spec");
        }
        let marker = new_marker();
        let bin = env!("CARGO_BIN_EXE_supervise");
        let mut argv: Vec<String> = self.wrapper.clone();
        argv.push(bin.to_string());
        argv.push("up".into());
        argv.push(spec.display().to_string());
        argv.extend(self.args.iter().cloned());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(dir.path())
            .env(MARKER_VAR, &marker)
            .env_remove("SUPERVISE_STATE_DIR")
            .env_remove("SUPERVISE_LOG")
            .env_remove("NO_COLOR")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // A descriptor a replica finds beyond stdin/stdout/stderr (and the
        // one asked for) then came from supervise itself.
        only_descriptors(&mut cmd, self.inherited.as_ref());
        if let Some(limit) = self.open_files {
            // SAFETY: setrlimit is async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sys::resource::setrlimit(
                        nix::sys::resource::Resource::RLIMIT_NOFILE,
                        limit,
                        limit,
                    )?;
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("start supervise");
        let out = Lines::spawn_reader(child.stdout.take().unwrap());
        let err = Lines::spawn_reader(child.stderr.take().unwrap());
        let launched = child.id() as i32;
        let mut sup = Supervise {
            child,
            launched,
            pid: launched,
            marker,
            dir,
            spec,
            out,
            err,
            status: None,
            follower: std::sync::OnceLock::new(),
        };
        if !self.wrapper.is_empty() {
            // The supervisor is the wrapper's child: the one that announces itself.
            let found = sup.err.wait_for(Duration::from_secs(10), |l| {
                event_text(l).is_some_and(|e| e.starts_with("supervising "))
            });
            if found.is_some() {
                let mut pid = None;
                wait_until(Duration::from_secs(5), || {
                    pid = descendants(launched).into_iter().find(|&p| {
                        std::fs::read_link(format!("/proc/{p}/exe"))
                            .is_ok_and(|exe| exe == Path::new(bin))
                            && proc_stat(p).is_some_and(|(_, ppid)| ppid == launched)
                    });
                    pid.is_some()
                });
                if let Some(pid) = pid {
                    sup.pid = pid;
                }
            }
        }
        sup
    }
}

/// A running `supervise up`, killed with everything it started when dropped.
pub struct Supervise {
    child: Child,
    /// The process we started (the supervisor, or its wrapper).
    launched: i32,
    /// The supervisor's pid (in this namespace).
    pub pid: i32,
    marker: String,
    dir: Arc<tempfile::TempDir>,
    spec: PathBuf,
    pub out: Arc<Lines>,
    pub err: Arc<Lines>,
    status: Option<ExitStatus>,
    follower: std::sync::OnceLock<EventStream>,
}

/// Generous bound for something that should happen "at once" on a noisy machine.
pub const SOON: Duration = Duration::from_secs(10);

impl Supervise {
    pub fn builder(spec: &str) -> Builder {
        Builder {
            spec: spec.to_string(),
            args: Vec::new(),
            wrapper: Vec::new(),
            dir: None,
            inherited: None,
            open_files: None,
            envs: Vec::new(),
        }
    }

    pub fn start(spec: &str) -> Supervise {
        Supervise::builder(spec).start()
    }

    /// Another `up` of the same spec in the same directory (its own marker).
    pub fn another(&self) -> Builder {
        Builder {
            spec: String::new(),
            args: Vec::new(),
            wrapper: Vec::new(),
            dir: Some(Arc::clone(&self.dir)),
            inherited: None,
            open_files: None,
            envs: Vec::new(),
        }
    }

    pub fn marker(&self) -> &str {
        &self.marker
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn spec_path(&self) -> &Path {
        &self.spec
    }

    /// The default state dir, `.supervise` next to the spec.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join(".supervise")
    }

    /// Live processes of this supervisor (itself included).
    pub fn marked(&self) -> Vec<i32> {
        marked_processes(&self.marker)
    }

    /// The supervisor's event lines on stderr so far (labels stripped): the
    /// display. Tests of facts use [`Supervise::events`].
    pub fn said(&self) -> Vec<String> {
        self.err
            .texts()
            .iter()
            .filter_map(|l| event_text(l).map(str::to_string))
            .collect()
    }

    /// Replica output so far: (replica, text).
    pub fn output(&self) -> Vec<(String, String)> {
        self.out
            .texts()
            .iter()
            .filter_map(|l| output_text(l).map(|(r, t)| (r.to_string(), t.to_string())))
            .collect()
    }

    /// The supervisor's events as `events --json -f` has them, followed from
    /// the first call on (the history comes first, so nothing is missed).
    /// Events the supervisor records as it exits may not reach a follower:
    /// tests of those read the display ([`Supervise::said`]).
    pub fn events(&self) -> &EventStream {
        self.follower.get_or_init(|| {
            EventStream::follow(&self.state_dir())
                .unwrap_or_else(|e| panic!("cannot follow the events: {e}\n{}", self.transcript()))
        })
    }

    /// Waits for a `kind` event of `who` (see [`Event::is`]); panics on timeout.
    #[track_caller]
    pub fn expect(&self, kind: &str, who: &str) -> Event {
        self.events().expect(kind, who)
    }

    /// Waits for a `kind` event of `who` after `after`.
    #[track_caller]
    pub fn expect_after(&self, after: &Event, kind: &str, who: &str) -> Event {
        self.events().expect_after(after, kind, who)
    }

    /// Waits for `replica` (`web.0`) to be spawned; returns its pid.
    #[track_caller]
    pub fn expect_spawned(&self, replica: &str) -> i32 {
        self.events().spawned(replica)
    }

    /// Waits for the spawn of `replica` after `after`; the event and its pid.
    #[track_caller]
    pub fn expect_spawned_after(&self, after: &Event, replica: &str) -> (Event, i32) {
        let spawned = self.expect_after(after, "spawned", replica);
        let pid = spawned.pid.expect("a spawned event has a pid");
        (spawned, pid)
    }

    /// Waits for the restart of `replica` after its incarnation `pid`
    /// ended: its `exited` event (with that pid), then `restarted`, then
    /// `spawned`. Returns the spawn and the new pid.
    #[track_caller]
    pub fn expect_restart(&self, replica: &str, pid: i32) -> (Event, i32) {
        let exited =
            self.events()
                .expect_from(0, SOON, &format!("exited {replica} (pid {pid})"), |e| {
                    e.is("exited", replica) && e.pid == Some(pid)
                });
        let restarted = self.expect_after(&exited, "restarted", replica);
        self.expect_spawned_after(&restarted, replica)
    }

    /// `status` over the control socket (the `result` object of `status --json`).
    #[track_caller]
    pub fn status(&self) -> serde_json::Value {
        socket_status(&self.state_dir())
            .unwrap_or_else(|| panic!("no status from the supervisor\n{}", self.transcript()))
    }

    /// One replica's object in [`Supervise::status`].
    #[track_caller]
    pub fn replica(&self, service: &str, index: u64) -> serde_json::Value {
        replica_in(&self.status(), service, index).clone()
    }

    /// The `restarts` count of a replica, 0 while there is no answer.
    pub fn restarts(&self, service: &str, index: u64) -> u64 {
        restarts_in(&self.state_dir(), service, index)
    }

    /// Waits (bounded) until nothing of this supervisor is left; panics naming what is.
    #[track_caller]
    pub fn assert_nothing_left(&self) {
        let gone = wait_until(Duration::from_secs(5), || self.marked().is_empty());
        assert!(
            gone,
            "processes left after the supervisor exited: {:?}\n{}",
            self.marked(),
            self.transcript()
        );
    }

    /// The first event line (display) from line `from` on that matches
    /// `re`, with the regex captures (0 = whole match); `None` on timeout.
    pub fn said_from(
        &self,
        from: usize,
        re: &str,
        timeout: Duration,
    ) -> Option<(Line, Vec<String>)> {
        let re = Regex::new(re).unwrap();
        let line = self.err.wait_from(from, timeout, |l| {
            event_text(l).is_some_and(|e| re.is_match(e))
        })?;
        let caps = re
            .captures(event_text(&line.text).unwrap())
            .unwrap()
            .iter()
            .map(|m| m.map_or(String::new(), |m| m.as_str().to_string()))
            .collect();
        Some((line, caps))
    }

    /// Waits for an event line (display) matching `re`; panics (showing all
    /// output) on timeout.
    #[track_caller]
    pub fn expect_said_from(
        &self,
        from: usize,
        re: &str,
        timeout: Duration,
    ) -> (Line, Vec<String>) {
        self.said_from(from, re, timeout).unwrap_or_else(|| {
            panic!(
                "no event line matching /{re}/ within {timeout:?}\n{}",
                self.transcript()
            )
        })
    }

    #[track_caller]
    pub fn expect_said(&self, re: &str, timeout: Duration) -> (Line, Vec<String>) {
        self.expect_said_from(0, re, timeout)
    }

    /// Waits for a replica output line (`svc.N │ text`) matching `re` (on the text).
    pub fn expect_output(&self, replica: &str, re: &str, timeout: Duration) -> (Line, Vec<String>) {
        let re = Regex::new(re).unwrap();
        let found = self.out.wait_for(timeout, |l| {
            output_text(l).is_some_and(|(r, t)| r == replica && re.is_match(t))
        });
        match found {
            Some(line) => {
                let text = output_text(&line.text).unwrap().1;
                let caps = re
                    .captures(text)
                    .unwrap()
                    .iter()
                    .map(|m| m.map_or(String::new(), |m| m.as_str().to_string()))
                    .collect();
                (line, caps)
            }
            None => panic!(
                "no output of {replica} matching /{re}/ within {timeout:?}\n{}",
                self.transcript()
            ),
        }
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid), signal).expect("signal the supervisor");
    }

    /// Waits (bounded) for the process we started to exit; its exit code, or
    /// `None` if it is still running at the deadline (or died of a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            let mut status = None;
            wait_until(timeout, || {
                status = self.child.try_wait().ok().flatten();
                status.is_some()
            });
            self.status = status;
        }
        self.status
    }

    /// `kill -9` of the supervisor, as a crash would; returns once it is
    /// gone (its replicas keep running).
    pub fn kill9(&mut self) {
        kill9(self.pid);
        assert!(
            self.wait_exit(SOON).is_some(),
            "the supervisor survived SIGKILL"
        );
    }

    /// Waits for the exit and returns the code; panics on timeout.
    pub fn expect_exit(&mut self, timeout: Duration) -> i32 {
        match self.wait_exit(timeout) {
            Some(status) => status
                .code()
                .unwrap_or_else(|| panic!("supervise died of a signal: {status:?}")),
            None => panic!(
                "supervise did not exit within {timeout:?}\n{}",
                self.transcript()
            ),
        }
    }

    /// Whether the supervisor is still running.
    pub fn is_running(&mut self) -> bool {
        self.status.is_none() && self.child.try_wait().ok().flatten().is_none()
    }

    /// Waits until the output streams are closed (the supervisor and every
    /// writer are gone), so snapshots are complete.
    pub fn drain(&self, timeout: Duration) {
        for lines in [&self.out, &self.err] {
            let _ = lines.wait_for(timeout, |_| false);
        }
    }

    /// Everything the supervisor printed, for failure messages.
    pub fn transcript(&self) -> String {
        let mut s = String::from("--- stderr ---\n");
        for l in self.err.texts() {
            s.push_str(&l);
            s.push('\n');
        }
        s.push_str("--- stdout ---\n");
        for l in self.out.texts() {
            s.push_str(&l);
            s.push('\n');
        }
        s
    }

    /// The drop guard's work, callable early: SIGINT, bounded wait, SIGKILL,
    /// then kill every marked process by pid. Returns the pids that survived.
    pub fn cleanup(&mut self) -> Vec<i32> {
        if self.is_running() {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGINT);
            if self.wait_exit(Duration::from_secs(5)).is_none() {
                let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
                let _ = kill(Pid::from_raw(self.launched), Signal::SIGKILL);
                let _ = self.child.kill();
                self.status = self.child.wait().ok();
            }
        }
        let left = kill_marked(&self.marker, Duration::from_secs(5));
        remove_cgroups(&self.state_dir());
        left
    }
}

impl Drop for Supervise {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.transcript());
        }
        let left = self.cleanup();
        if !left.is_empty() {
            eprintln!(
                "processes of marker {} survived cleanup: {left:?}",
                self.marker
            );
        }
    }
}
