//! Cluster-scope failover under test: a real etcd (one member or three) on
//! loopback ports picked here, several supervisors standing for machines,
//! a replica that writes while it believes it is active, and the checker of
//! what it wrote.

use super::*;

/// One etcd member, started by the test and killed by pid at the end.
pub struct EtcdMember {
    pub name: String,
    pub client: String,
    peer: String,
    args: Vec<String>,
    child: Option<Child>,
    frozen: bool,
}

/// An etcd cluster of the test's own.
pub struct Etcd {
    pub members: Vec<EtcdMember>,
    dir: tempfile::TempDir,
}

impl Etcd {
    /// `n` members on free loopback ports, each with a data dir in a temp
    /// dir; returns once every one answers /health.
    pub fn start(n: usize) -> Etcd {
        let dir = tempfile::tempdir().expect("a temp dir");
        let token = format!("t-{:016x}", fastrand::u64(..));
        let mut members: Vec<EtcdMember> = (0..n)
            .map(|i| EtcdMember {
                name: format!("m{i}"),
                client: format!("http://127.0.0.1:{}", free_port()),
                peer: format!("http://127.0.0.1:{}", free_port()),
                args: Vec::new(),
                child: None,
                frozen: false,
            })
            .collect();
        let initial: Vec<String> = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer))
            .collect();
        for m in &mut members {
            let data = dir.path().join(&m.name);
            m.args = [
                "--name",
                &m.name,
                "--data-dir",
                &data.display().to_string(),
                "--listen-client-urls",
                &m.client,
                "--advertise-client-urls",
                &m.client,
                "--listen-peer-urls",
                &m.peer,
                "--initial-advertise-peer-urls",
                &m.peer,
                "--initial-cluster",
                &initial.join(","),
                "--initial-cluster-token",
                &token,
                // Fast elections, so killing the leader costs well under a lease.
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
                "--log-level",
                "error",
            ]
            .map(str::to_string)
            .to_vec();
        }
        let mut etcd = Etcd { members, dir };
        for i in 0..n {
            etcd.launch(i);
        }
        for i in 0..n {
            etcd.wait_healthy(i);
        }
        etcd
    }

    fn launch(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(
                self.dir
                    .path()
                    .join(format!("{}.log", self.members[i].name)),
            )
            .expect("etcd log");
        let m = &mut self.members[i];
        let child = Command::new("etcd")
            .args(&m.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start etcd (apt-get install etcd-server)");
        m.child = Some(child);
        m.frozen = false;
    }

    #[track_caller]
    pub fn wait_healthy(&self, i: usize) {
        let client = &self.members[i].client;
        let ok = wait_until(Duration::from_secs(30), || {
            http_post(client, "/v3/kv/range", r#"{"key":"AA=="}"#)
                .is_some_and(|b| b.contains("header"))
        });
        assert!(ok, "etcd member {i} did not answer within 30s");
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client.clone()).collect()
    }

    pub fn pid(&self, i: usize) -> Option<i32> {
        self.members[i].child.as_ref().map(|c| c.id() as i32)
    }

    /// `kill -9` of member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data dir.
    pub fn restart(&mut self, i: usize) {
        self.launch(i);
        self.wait_healthy(i);
    }

    /// Starts every member again (none answers before a quorum is up).
    pub fn restart_all(&mut self) {
        for i in 0..self.members.len() {
            self.launch(i);
        }
        for i in 0..self.members.len() {
            self.wait_healthy(i);
        }
    }

    pub fn freeze(&mut self, i: usize, frozen: bool) {
        if let Some(pid) = self.pid(i) {
            let signal = if frozen {
                Signal::SIGSTOP
            } else {
                Signal::SIGCONT
            };
            let _ = kill(Pid::from_raw(pid), signal);
            self.members[i].frozen = frozen;
        }
    }

    /// The member that leads, by its own status.
    pub fn leader(&self) -> Option<usize> {
        for (i, m) in self.members.iter().enumerate() {
            if m.child.is_none() || m.frozen {
                continue;
            }
            let body = http_post(&m.client, "/v3/maintenance/status", "{}")?;
            let status: serde_json::Value = serde_json::from_str(&body).ok()?;
            let (leader, me) = (&status["leader"], &status["header"]["member_id"]);
            if leader == me {
                return Some(i);
            }
        }
        None
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// A bare HTTP/1.0 POST (the test needs no client library); the body of a
/// 200 answer.
pub fn http_post(base: &str, path: &str, body: &str) -> Option<String> {
    http(base, "POST", path, body)
}

/// A bare HTTP/1.0 request; the body of a 200 answer.
pub fn http(base: &str, method: &str, path: &str, body: &str) -> Option<String> {
    use std::io::Write;
    let addr = base.strip_prefix("http://").unwrap_or(base);
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200")
        .then_some(body.to_string())
        .or_else(|| head.starts_with("HTTP/1.1 200").then_some(body.to_string()))
}

/// The replica of the cluster tests: while it believes it is active (from
/// its promote hook's SIGUSR1, with the token the hook left, until SIGUSR2
/// or its end) it appends `monotonic-time node token` to the shared log
/// every 10 ms, with O_APPEND. SIGTERM ends it (after the seconds in the
/// file `linger`, if there is one).
pub const WRITER: &str = r#"
import os, signal, sys, time
node, log = os.environ["NODE"], os.environ["ACTIVE_LOG"]
state = {"token": None}
def promote(*_):
    with open("token.%d" % os.getpid()) as f:
        state["token"] = f.read().strip()
def demote(*_):
    state["token"] = None
def stop(*_):
    state["token"] = None
    # A slow stopper, when a test asks for one: it lingers before exiting.
    if os.path.exists("linger"):
        time.sleep(float(open("linger").read()))
    sys.exit(0)
signal.signal(signal.SIGUSR1, promote)
signal.signal(signal.SIGUSR2, demote)
signal.signal(signal.SIGTERM, stop)
fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
while True:
    token = state["token"]
    if token is not None:
        os.write(fd, ("%.6f %s %s\n" % (time.monotonic(), node, token)).encode())
    time.sleep(0.01)
"#;

/// `CLOCK_MONOTONIC` in seconds, as the writer's `time.monotonic()`.
pub fn monotonic() -> f64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    Duration::from(t).as_secs_f64()
}

/// Supervisors on one etcd, each its own "machine": its own directory,
/// state dir and node name, running `replicas` writers of service `db`.
pub struct Machines {
    pub nodes: Vec<Option<Supervise>>,
    pub names: Vec<String>,
    pub shared: tempfile::TempDir,
    pub lease: Duration,
    /// Each node's metrics address.
    pub metrics: Vec<String>,
    /// The specs' `prefix`.
    pub prefix: String,
    specs: Vec<String>,
    /// Supervisors replaced by [`Machines::restart`].
    retired: Vec<Supervise>,
}

impl Machines {
    pub fn start(etcd: &Etcd, count: usize, replicas: u32, lease: Duration) -> Machines {
        Machines::demoted_by(etcd, count, replicas, lease, r#"demote_signal = "SIGUSR2""#)
    }

    /// As [`Machines::start`], with `demote` the spec's line of how an
    /// active is demoted (empty: it is stopped).
    pub fn demoted_by(
        etcd: &Etcd,
        count: usize,
        replicas: u32,
        lease: Duration,
        demote: &str,
    ) -> Machines {
        let shared = tempfile::tempdir().expect("a temp dir");
        let writer = shared.path().join("writer.py");
        std::fs::write(&writer, WRITER).unwrap();
        let log = shared.path().join("active.log");
        let prefix = format!("/test-{:016x}", fastrand::u64(..));
        let endpoints: Vec<String> = etcd
            .endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect();
        let names: Vec<String> = (0..count).map(|i| format!("n{i}")).collect();
        let metrics: Vec<String> = names
            .iter()
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let specs: Vec<String> = names
            .iter()
            .zip(&metrics)
            .map(|(node, metrics)| {
                format!(
                    r#"[supervisor]
metrics = "{metrics}"

[supervisor.cluster]
etcd = [{endpoints}]
node = "{node}"
prefix = "{prefix}"
lease = "{lease}s"

[services.db]
command = ["python3", "{writer}"]
replicas = {replicas}
stop_timeout = "2s"
env = {{ NODE = "{node}", ACTIVE_LOG = "{log}" }}

[services.db.failover]
mode = "active-standby"
scope = "cluster"
promote = ["sh", "-c", "echo {{token}} > token.{{pid}} && kill -USR1 {{pid}}"]
{demote}
"#,
                    endpoints = endpoints.join(", "),
                    lease = lease.as_secs(),
                    writer = writer.display(),
                    log = log.display(),
                )
            })
            .collect();
        let nodes = specs.iter().map(|s| Some(Supervise::start(s))).collect();
        Machines {
            nodes,
            names,
            shared,
            lease,
            metrics,
            prefix,
            specs,
            retired: Vec::new(),
        }
    }

    pub fn log(&self) -> PathBuf {
        self.shared.path().join("active.log")
    }

    pub fn node(&self, i: usize) -> &Supervise {
        self.nodes[i].as_ref().expect("a running supervisor")
    }

    /// The nodes whose supervisor says one of its replicas is active.
    pub fn actives(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i].as_ref().is_some_and(|s| {
                    socket_status(&s.state_dir()).is_some_and(|st| {
                        st["services"][0]["replicas"]
                            .as_array()
                            .is_some_and(|rs| rs.iter().any(|r| r["role"] == "active"))
                    })
                })
            })
            .collect()
    }

    /// The last line of the shared log: (time, node, token).
    pub fn last_write(&self) -> Option<(f64, String, u64)> {
        let text = std::fs::read_to_string(self.log()).ok()?;
        parse_line(text.lines().last()?)
    }

    /// Waits until some node writes as active after monotonic time `after`;
    /// that write.
    pub fn active_after(&self, after: f64, timeout: Duration) -> Option<(f64, String, u64)> {
        let mut found = None;
        wait_until(timeout, || {
            found = self.last_write().filter(|(t, _, _)| *t > after);
            found.is_some()
        });
        found
    }

    /// `supervise <args>` against node `i`'s supervisor, to completion.
    pub fn run(&self, i: usize, args: &[&str]) -> Ran {
        let node = self.node(i);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_supervise"));
        cmd.arg("--state-dir")
            .arg(node.state_dir())
            .args(args)
            .current_dir(node.dir())
            .env("NO_COLOR", "1");
        run_bounded(cmd, COMMAND_TIMEOUT)
    }

    /// Starts node `i` again (a new supervisor in the same directory).
    /// The old supervisor is kept until the end: dropping it would kill
    /// (by its marker) the replicas the new one adopts.
    pub fn restart(&mut self, i: usize) {
        let again = match &self.nodes[i] {
            Some(old) => old.another().start(),
            None => Supervise::start(&self.specs[i]),
        };
        if let Some(old) = self.nodes[i].replace(again) {
            self.retired.push(old);
        }
    }
}

fn parse_line(line: &str) -> Option<(f64, String, u64)> {
    let mut parts = line.split_whitespace();
    Some((
        parts.next()?.parse().ok()?,
        parts.next()?.to_string(),
        parts.next()?.parse().ok()?,
    ))
}

/// One leader's stretch in the shared log.
#[derive(Debug, Clone)]
pub struct Term {
    pub node: String,
    pub token: u64,
    pub from: f64,
    pub to: f64,
}

/// What the checker found: the terms in order, and the longest time
/// without an active outside the excused windows.
#[derive(Debug)]
pub struct Verdict {
    pub terms: Vec<Term>,
    pub longest_gap: f64,
    pub lines: usize,
}

/// Checks the shared log: no two (node, token) stretches overlap (each
/// writer's lines form one unbroken block in time order), tokens strictly
/// increase from one term to the next, and no gap between writes is longer
/// than `max_gap` unless it overlaps one of the `excused` windows
/// (monotonic seconds: etcd without quorum).
pub fn check_active_log(
    path: &Path,
    max_gap: f64,
    excused: &[(f64, f64)],
) -> Result<Verdict, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("no log: {e}"))?;
    let mut writes: Vec<(f64, String, u64)> = Vec::new();
    for line in text.lines() {
        writes.push(parse_line(line).ok_or_else(|| format!("bad line {line:?}"))?);
    }
    writes.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut terms: Vec<Term> = Vec::new();
    let mut longest_gap = 0.0_f64;
    for (i, (t, node, token)) in writes.iter().enumerate() {
        if i > 0 {
            let prev = writes[i - 1].0;
            let gap = t - prev;
            let excuse = excused.iter().any(|(a, b)| prev < *b && *t > *a);
            if !excuse {
                longest_gap = longest_gap.max(gap);
                if gap > max_gap {
                    return Err(format!("no active from {prev:.3} to {t:.3} ({gap:.3}s)"));
                }
            }
        }
        match terms.last_mut() {
            Some(term) if term.node == *node && term.token == *token => term.to = *t,
            last => {
                if let Some(prev) = last
                    && *token <= prev.token
                {
                    return Err(format!(
                        "at {t:.3} {node} writes with token {token} after {} with token {} (until {:.3})",
                        prev.node, prev.token, prev.to
                    ));
                }
                terms.push(Term {
                    node: node.clone(),
                    token: *token,
                    from: *t,
                    to: *t,
                });
            }
        }
    }
    Ok(Verdict {
        terms,
        longest_gap,
        lines: writes.len(),
    })
}

/// The sampler: apart from the replicas' own log, asks every supervisor
/// that can answer (not frozen, not killed) for its roles every 50 ms. Two
/// nodes that both say they hold an active in two sweeps in a row are a
/// violation (one sweep may straddle a hand-over).
pub struct Sampler {
    /// The state dirs to ask; None for a node that cannot answer now.
    pub dirs: Arc<Mutex<Vec<Option<PathBuf>>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<(usize, Vec<String>)>>,
}

impl Sampler {
    pub fn start(machines: &Machines) -> Sampler {
        let dirs: Vec<Option<PathBuf>> = machines
            .nodes
            .iter()
            .map(|n| n.as_ref().map(Supervise::state_dir))
            .collect();
        let dirs = Arc::new(Mutex::new(dirs));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (d, s) = (Arc::clone(&dirs), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut sweeps = 0;
            let mut violations = Vec::new();
            let mut previous: Vec<usize> = Vec::new();
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let now: Vec<Option<PathBuf>> = d.lock().unwrap().clone();
                let active: Vec<usize> = now
                    .iter()
                    .enumerate()
                    .filter(|(_, dir)| {
                        dir.as_ref()
                            .and_then(|dir| socket_status(dir))
                            .is_some_and(|st| {
                                st["services"][0]["replicas"]
                                    .as_array()
                                    .is_some_and(|rs| rs.iter().any(|r| r["role"] == "active"))
                            })
                    })
                    .map(|(i, _)| i)
                    .collect();
                if active.len() > 1 && previous.len() > 1 {
                    violations.push(format!(
                        "at {:.3} nodes {active:?} all report an active (and {previous:?} before)",
                        monotonic()
                    ));
                }
                previous = active;
                sweeps += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            (sweeps, violations)
        });
        Sampler {
            dirs,
            stop,
            thread: Some(thread),
        }
    }

    /// Node `i` can (`Some(dir)`) or cannot be asked.
    pub fn set(&self, i: usize, dir: Option<PathBuf>) {
        self.dirs.lock().unwrap()[i] = dir;
    }

    /// Sweeps made and violations seen.
    pub fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}
