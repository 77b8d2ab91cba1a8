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

pub mod chromium;
mod cluster;
mod events;
mod project;
mod supervise;
pub mod tmux;

// Only tests/cluster.rs uses it.
#[allow(unused_imports)]
pub use cluster::*;
pub use events::*;
pub use project::*;
pub use supervise::*;

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

/// Removes the empty cgroup leaves a state dir's killed shims left behind
/// (and its cgroup, if then empty): the kernel keeps them otherwise. Only
/// empty ones: a later supervisor on the same state dir may still run.
pub fn remove_cgroups(state_dir: &Path) {
    if let Ok(dir) = ::supervise::cgroup::instance_path(state_dir) {
        for (_, leaf) in ::supervise::cgroup::leaves(&dir) {
            let _ = std::fs::remove_dir(leaf);
        }
        let _ = std::fs::remove_dir(dir);
    }
}

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

/// The pid of replica `index` in [`Project::replicas`]; panics without one.
#[track_caller]
pub fn pid_of(replicas: &[(u64, Option<i64>, String)], index: u64) -> i64 {
    replicas
        .iter()
        .find(|r| r.0 == index)
        .and_then(|r| r.1)
        .unwrap_or_else(|| panic!("no pid for replica {index} in {replicas:?}"))
}

/// The state dir's `checkpoint.json` as JSON; `Null` while there is none
/// that parses (not written yet, or mid-replacement never: it is renamed
/// into place).
pub fn checkpoint_in(state_dir: &Path) -> serde_json::Value {
    std::fs::read(state_dir.join("checkpoint.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
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

/// `$NOTIFY_SOCKET` as process `pid` has it. Read until found: a process
/// in the middle of an exec (a `python3` that is a wrapper script execing
/// the real one) reads as having no environment at all.
pub fn notify_socket_of(pid: i32) -> String {
    let mut socket = None;
    wait_until(SOON, || {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        socket = environ
            .split(|&b| b == 0)
            .find_map(|v| std::str::from_utf8(v).ok()?.strip_prefix("NOTIFY_SOCKET="))
            .map(str::to_string);
        socket.is_some()
    });
    socket.expect("NOTIFY_SOCKET in the replica's environment")
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

/// `GET path` over a plain TCP connection: (status code, headers, body).
pub fn http_get(port: u16, path: &str) -> (u16, HashMap<String, String>, String) {
    use std::io::Write;
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics port");
    stream.set_read_timeout(Some(SOON)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("a complete response");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    (status, headers, body.to_string())
}
