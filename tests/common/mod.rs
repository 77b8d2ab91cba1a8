//! Harness for the end-to-end tests: runs the real `supervise` binary on a
//! spec in a temporary directory, collects its stdout and stderr line by line
//! (with the time each line arrived) and lets a test wait, with a deadline,
//! for a line it expects.
//!
//! Every supervisor gets a unique marker in its environment
//! (`SUPERVISE_TEST_MARKER=<random>`), which its shims, replicas and their
//! descendants inherit. That is how a test asks "is anything of mine still
//! alive?" ([`marked_processes`]) and how the drop guard finds and kills, by
//! PID, whatever a failed test left behind.

#![allow(dead_code)] // each test binary uses a different part of the harness

mod events;

pub use events::*;

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use regex::Regex;

/// The variable every process of one test run carries.
pub const MARKER_VAR: &str = "SUPERVISE_TEST_MARKER";

/// How often bounded polls look again.
const POLL: Duration = Duration::from_millis(10);

/// One line read from the supervisor, with the moment it arrived.
#[derive(Debug, Clone)]
pub struct Line {
    pub index: usize,
    pub at: Instant,
    pub text: String,
}

/// The lines of one output stream, filled by a reader thread.
#[derive(Default)]
pub struct Lines {
    state: Mutex<LinesState>,
    changed: Condvar,
}

#[derive(Default)]
struct LinesState {
    lines: Vec<Line>,
    closed: bool,
}

impl Lines {
    fn spawn_reader(stream: impl Read + Send + 'static) -> Arc<Lines> {
        let lines = Arc::new(Lines::default());
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let at = Instant::now();
                        let text = String::from_utf8_lossy(&buf)
                            .trim_end_matches(['\n', '\r'])
                            .to_string();
                        let mut state = sink.state.lock().unwrap();
                        let index = state.lines.len();
                        state.lines.push(Line { index, at, text });
                        sink.changed.notify_all();
                    }
                }
            }
            sink.state.lock().unwrap().closed = true;
            sink.changed.notify_all();
        });
        lines
    }

    /// Lines read from `stream` by a thread of their own.
    pub fn reading(stream: impl Read + Send + 'static) -> Arc<Lines> {
        Lines::spawn_reader(stream)
    }

    /// Everything read so far.
    pub fn snapshot(&self) -> Vec<Line> {
        self.state.lock().unwrap().lines.clone()
    }

    pub fn texts(&self) -> Vec<String> {
        self.snapshot().into_iter().map(|l| l.text).collect()
    }

    /// The first line at or after `from` that satisfies `pred`, waiting for
    /// it until `timeout` has passed (or the stream has ended).
    pub fn wait_from(
        &self,
        from: usize,
        timeout: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Option<Line> {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock().unwrap();
        let mut checked = from;
        loop {
            while checked < state.lines.len() {
                if pred(&state.lines[checked].text) {
                    return Some(state.lines[checked].clone());
                }
                checked += 1;
            }
            let now = Instant::now();
            if state.closed || now >= deadline {
                return None;
            }
            state = self.changed.wait_timeout(state, deadline - now).unwrap().0;
        }
    }

    pub fn wait_for(&self, timeout: Duration, pred: impl FnMut(&str) -> bool) -> Option<Line> {
        self.wait_from(0, timeout, pred)
    }
}

/// A supervisor event line (`supervise │ spawned web.0 (pid 123)`) without its label.
pub fn event_text(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("supervise")?;
    rest.trim_start_matches(' ').strip_prefix("│ ")
}

/// A replica output line on stdout (`web.0     │ hello`): (replica, text).
pub fn output_text(line: &str) -> Option<(&str, &str)> {
    let (name, text) = line.split_once(" │ ")?;
    Some((name.trim_end(), text))
}

/// The restart number and delay an `exited` event's detail announces
/// (`web.0 exited with code 3; restart 2 in 194ms` → (2, 194ms)): the delay
/// the policy chose is told nowhere else.
pub fn parse_restart(detail: &str) -> Option<(u32, Duration)> {
    let re = Regex::new(r"; restart (\d+) in (.+)$").unwrap();
    let c = re.captures(detail)?;
    Some((c[1].parse().ok()?, humantime::parse_duration(&c[2]).ok()?))
}

/// SIGKILLs `pid`, which must exist.
#[track_caller]
pub fn kill9(pid: i32) {
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill -9");
}

/// Whether the tests run as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Polls `cond` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// A fresh marker, unique to this test process and this launch.
fn new_marker() -> String {
    static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{n}-{:016x}", std::process::id(), fastrand::u64(..))
}

/// What `/proc/<pid>/stat` says: (state, ppid). `None` once the process is gone.
pub fn proc_stat(pid: i32) -> Option<(char, i32)> {
    let fields = stat_fields(pid)?;
    Some((fields[0].chars().next()?, fields[1].parse().ok()?))
}

/// The session id of `pid`.
pub fn session_of(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(3)?.parse().ok()
}

/// The fields of `/proc/<pid>/stat` after the command name (state first),
/// read after the last `)` because a name may contain spaces and parentheses.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Alive: exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    matches!(proc_stat(pid), Some((state, _)) if state != 'Z' && state != 'X')
}

fn all_pids() -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

fn has_marker(pid: i32, marker: &str) -> bool {
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let wanted = format!("{MARKER_VAR}={marker}");
    environ.split(|&b| b == 0).any(|v| v == wanted.as_bytes())
}

/// Live (non-zombie) processes that carry `marker` in their environment.
pub fn marked_processes(marker: &str) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&p| has_marker(p, marker) && is_alive(p))
        .collect()
}

/// Every descendant of `root` (any state), from one pass over `/proc`.
pub fn descendants(root: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for pid in all_pids() {
        if let Some((_, ppid)) = proc_stat(pid) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut out = Vec::new();
    let mut queue = vec![root];
    while let Some(p) = queue.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or_default() {
            out.push(c);
            queue.push(c);
        }
    }
    out
}

/// Zombies among the descendants of `root` (children not reaped by their parent).
pub fn zombies_under(root: i32) -> Vec<i32> {
    descendants(root)
        .into_iter()
        .filter(|&p| matches!(proc_stat(p), Some(('Z', _))))
        .collect()
}

/// The pid, as seen from this (the outermost) namespace, of the marked
/// process whose pid in its own innermost namespace is `ns_pid`.
pub fn host_pid_of(marker: &str, ns_pid: i32) -> Option<i32> {
    marked_processes(marker).into_iter().find(|&p| {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{p}/status")) else {
            return false;
        };
        status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .map(|v| v.split_whitespace().collect::<Vec<_>>())
            .is_some_and(|ids| ids.len() > 1 && ids.last() == Some(&ns_pid.to_string().as_str()))
    })
}

/// SIGKILLs, by pid, every live process carrying `marker`, until none is left
/// (they may be forking while we look). Returns what could not be killed.
pub fn kill_marked(marker: &str, timeout: Duration) -> Vec<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = marked_processes(marker);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        for &p in &left {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        std::thread::sleep(POLL);
    }
}

/// `cmd` starts with stdin/stdout/stderr only, whatever this test process
/// inherited, plus `inherited` (`file` as descriptor `fd`, as from a
/// shell's `exec 7<file`).
pub fn only_descriptors(cmd: &mut Command, inherited: Option<&(i32, std::fs::File)>) {
    let inherited = inherited.map(|(fd, file)| (*fd, file.as_raw_fd()));
    // SAFETY: close_range, fcntl and dup2 are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            nix::libc::close_range(3, u32::MAX, nix::libc::CLOSE_RANGE_CLOEXEC as i32);
            // The new descriptor is left without close-on-exec.
            let failed = match inherited {
                Some((fd, file)) if fd == file => nix::libc::fcntl(fd, nix::libc::F_SETFD, 0) < 0,
                Some((fd, file)) => nix::libc::dup2(file, fd) < 0,
                None => false,
            };
            if failed {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// How to start a supervisor.
pub struct Builder {
    spec: String,
    args: Vec<String>,
    wrapper: Vec<String>,
    dir: Option<Arc<tempfile::TempDir>>,
    inherited: Option<(i32, std::fs::File)>,
    open_files: Option<u64>,
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
        kill_marked(&self.marker, Duration::from_secs(5))
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

/// A TCP port nobody listens on right now (the kernel's pick).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// The fds open in process `pid`, as numbers.
pub fn open_fds(pid: i32) -> BTreeSet<i32> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a program is on PATH.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

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

/// The pid of replica `index` in [`Project::replicas`]; panics without one.
#[track_caller]
pub fn pid_of(replicas: &[(u64, Option<i64>, String)], index: u64) -> i64 {
    replicas
        .iter()
        .find(|r| r.0 == index)
        .and_then(|r| r.1)
        .unwrap_or_else(|| panic!("no pid for replica {index} in {replicas:?}"))
}

/// `status` over the raw control socket, as JSON (the `result` object):
/// cheap enough to sample every few milliseconds.
pub fn socket_status(state_dir: &Path) -> Option<serde_json::Value> {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(state_dir.join("control.sock")).ok()?;
    s.set_read_timeout(Some(SOON)).ok()?;
    s.write_all(b"{\"version\":1,\"request\":{\"type\":\"status\"}}\n")
        .ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    serde_json::from_str::<serde_json::Value>(&line)
        .ok()?
        .get("result")
        .cloned()
}

/// The `restarts` count of a replica by the status of the supervisor of
/// `state_dir`, 0 while there is no answer.
pub fn restarts_in(state_dir: &Path, service: &str, index: u64) -> u64 {
    socket_status(state_dir)
        .and_then(|r| replica_in(&r, service, index)["restarts"].as_u64())
        .unwrap_or(0)
}

/// One replica's object in a status report.
pub fn replica_in<'a>(
    report: &'a serde_json::Value,
    service: &str,
    index: u64,
) -> &'a serde_json::Value {
    report["services"]
        .as_array()
        .and_then(|services| services.iter().find(|s| s["name"] == service))
        .and_then(|s| s["replicas"].as_array())
        .and_then(|rs| rs.iter().find(|r| r["index"] == index))
        .unwrap_or(&serde_json::Value::Null)
}

/// Sends one sd_notify datagram to `$NOTIFY_SOCKET` (a leading `@` names an
/// abstract socket, as sd_notify(3) says); a module for `python3 -c`.
pub const SD_NOTIFY: &str = r#"
import os, socket
def notify(msg, address=None):
    address = address or os.environ["NOTIFY_SOCKET"]
    if address.startswith("@"):
        address = "\0" + address[1:]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.sendto(msg.encode(), address)
"#;

/// A notify service `name` whose replica sends READY=1 once a file `go`
/// exists in its directory.
pub fn ready_on_go(name: &str) -> String {
    format!(
        r#"
[services.{name}]
command = ["python3", "-c", '''{SD_NOTIFY}
import os, time
while not os.path.exists("go"): time.sleep(0.02)
notify("READY=1")
time.sleep(1000)''']
[services.{name}.health]
notify = true
"#
    )
}

/// `$NOTIFY_SOCKET` as process `pid` has it.
pub fn notify_socket_of(pid: i32) -> String {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    environ
        .split(|&b| b == 0)
        .find_map(|v| std::str::from_utf8(v).ok()?.strip_prefix("NOTIFY_SOCKET="))
        .expect("NOTIFY_SOCKET in the replica's environment")
        .to_string()
}

/// Sends `message` to a `$NOTIFY_SOCKET` (`@name`: an abstract socket).
pub fn send_notify(socket: &str, message: &[u8]) {
    use std::os::linux::net::SocketAddrExt;
    let name = socket.strip_prefix('@').expect("an abstract socket name");
    let address = std::os::unix::net::SocketAddr::from_abstract_name(name).unwrap();
    std::os::unix::net::UnixDatagram::unbound()
        .unwrap()
        .send_to_addr(message, &address)
        .unwrap();
}

/// A small tmpfs mounted on a directory (created if need be): a disk a
/// test can fill. Mounting needs root; [`Tmpfs::mount`] says why it cannot
/// and returns `None`, for the test to skip. Unmounted on drop, even when
/// the test panics; lazily, so processes still holding files in it (a
/// failed test's, killed by their project's guard) do not keep it mounted.
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// `size` as mount(8) takes it: `1m`.
    pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        if !is_root() {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        std::fs::create_dir_all(dir).expect("the mount point");
        let mut mount = Command::new("mount");
        mount
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir);
        let ran = run_bounded(mount, Duration::from_secs(10));
        if ran.code != Some(0) {
            eprintln!("skipped: cannot mount a tmpfs: {}", ran.stderr.trim());
            return None;
        }
        Some(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }

    /// Fills the disk: a file in it, written until no space is left.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.dir.join("filler");
        let mut file = std::fs::File::create(&path).expect("the filler");
        let page = [b'x'; 4096];
        loop {
            match file.write(&page) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .status();
    }
}
