#!/usr/bin/env python3
"""Benchmark `supervise` side by side with runit, s6, supervisord, PM2 and
Horust, on this machine, in one run, interleaved.

Run it through `bench/run` (builds `supervise` and the stamp child, installs
the peers); `bench/run --help` lists the options. BENCHMARKS.md explains every
measure; the short version:

* every supervised child is `bench/stamp` (a static C program): its first act
  after exec is to read CLOCK_MONOTONIC, which it sends with its name and pid
  as one datagram to this harness's abstract unix socket, then it pauses like
  `sleep infinity`. "Exec'd" below always means "that datagram's timestamp";
* restart latency: SIGKILL a child (timestamp taken just before kill(2)) ->
  the replacement's timestamp;
* cold start: spawn of the supervisor -> the last of N timestamps;
* memory: PSS (smaps_rollup) summed over the supervisor's own processes
  (its whole process tree minus the children);
* idle: utime+stime and voluntary+involuntary context switches (all threads)
  of the same processes, over a window with nothing happening;
* status: fork+exec+wait of the status command, its output to /dev/null;
* kill -9: SIGKILL the main supervisor process, start it again the same way,
  wait until nothing changes, then count duplicates and orphans.

The harness makes itself a child subreaper, so whatever a supervisor leaves
behind (daemonized PM2, orphans of a killed supervisor) stays in its tree and
is killed, by pid, at the end. Nothing is ever killed by name.
"""

import argparse
import ctypes
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SOCK_NAME = os.environ.get("BENCH_SOCK", "supbench")
CLK_TCK = os.sysconf("SC_CLK_TCK")
ME = os.getpid()

ALL_TOOLS = ["supervise", "runit", "s6", "supervisord", "pm2", "horust"]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def now_ns():
    return time.monotonic_ns()


# --------------------------------------------------------------------------
# processes: spawning, reaping, /proc


EXITED = {}
KEEP = set()  # --background processes: kept across phases, killed at exit


def own_cgroup():
    """This process's cgroup v2 directory (None without one)."""
    try:
        rel = next(l[3:].strip() for l in open("/proc/self/cgroup") if l.startswith("0::"))
        mount = next(l.split()[4] for l in open("/proc/self/mountinfo")
                     if l.split(" - ")[1].split()[0] == "cgroup2")
    except (OSError, StopIteration, IndexError):
        return None
    return os.path.join(mount, rel.lstrip("/"))


def supervise_cgroups():
    base = own_cgroup()
    if not base or not os.path.isdir(base):
        return set()
    return {os.path.join(base, d) for d in os.listdir(base) if d.startswith("supervise.")}


# supervise's cgroups that were there before this run: never touched.
CGROUPS_BEFORE = supervise_cgroups()


def remove_left_cgroups():
    """The cgroup directories of the supervisors this run SIGKILLed, once
    empty (a kill -9 of everything leaves them, as it would for a user)."""
    for instance in supervise_cgroups() - CGROUPS_BEFORE:
        for leaf in os.listdir(instance):
            path = os.path.join(instance, leaf)
            if os.path.isdir(path):
                try:
                    os.rmdir(path)
                except OSError:
                    pass
        try:
            os.rmdir(instance)
        except OSError:
            pass


def reap():
    """Reap every exited child (the harness is a subreaper)."""
    while True:
        try:
            pid, st = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        EXITED[pid] = st


def wait_pid(pid, timeout=None):
    """Wait for one child; returns its wait status or None on timeout."""
    if pid in EXITED:
        return EXITED.pop(pid)
    if timeout is None:
        try:
            _, st = os.waitpid(pid, 0)
        except ChildProcessError:
            return EXITED.pop(pid, 0)
        return st
    deadline = time.monotonic() + timeout
    while True:
        try:
            p, st = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return EXITED.pop(pid, 0)
        if p == pid:
            return st
        if time.monotonic() > deadline:
            return None
        time.sleep(0.005)


def spawn(argv, env=None, out=os.devnull, setsid=True):
    """posix_spawn with stdin </dev/null and stdout+stderr >> out."""
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(out), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    argv = [str(x) for x in argv]
    path = shutil.which(argv[0], path=(env or os.environ).get("PATH")) or argv[0]
    pid = os.posix_spawn(path, argv, env if env is not None else os.environ,
                         file_actions=actions, setsid=setsid)
    # A status reaped earlier under the same pid number belongs to a dead
    # process: the pid is this new one's now.
    EXITED.pop(pid, None)
    return pid


def proc_table():
    """pid -> (ppid, state) for every live process."""
    table = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                s = f.read()
        except OSError:
            continue
        rest = s[s.rfind(b")") + 2:].split()
        table[int(d)] = (int(rest[1]), rest[0].decode())
    return table


def descendants(roots, table=None):
    """Every live, non-zombie process in the trees of `roots` (roots included)."""
    table = table or proc_table()
    kids = {}
    for pid, (ppid, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = set(), [r for r in roots if r in table]
    while todo:
        p = todo.pop()
        if p in out:
            continue
        out.add(p)
        todo.extend(kids.get(p, []))
    return {p for p in out if table[p][1] != "Z"}


def exe_of(pid):
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def stamp_name(pid):
    """The name a stamp process reports (argv[1], else its cwd's base name)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        if len(argv) > 2 and argv[1]:
            return argv[1].decode()
        return os.path.basename(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def live_stamps(table=None):
    """name -> [pid, ...] of every live stamp process on the machine."""
    table = table or proc_table()
    out = {}
    for pid, (ppid, st) in table.items():
        if st == "Z" or exe_of(pid) != STAMP:
            continue
        name = stamp_name(pid)
        if name:
            out.setdefault(name, []).append(pid)
    return out


def smaps_rollup(pid):
    vals = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == "kB":
                    vals[parts[0].rstrip(":")] = int(parts[1])
    except OSError:
        pass
    return vals


def cpu_and_switches(pid):
    """(utime+stime in ticks, voluntary+involuntary switches over all threads)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            s = f.read()
        rest = s[s.rfind(b")") + 2:].split()
        ticks = int(rest[11]) + int(rest[12])
        sw = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    for line in f:
                        if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                            sw += int(line.split()[1])
            except OSError:
                pass
        return ticks, sw
    except OSError:
        return None


def kill_everything(reason=""):
    """Stop, then SIGKILL, every process below the harness (by pid), and reap."""
    for _ in range(100):
        pids = descendants([ME]) - {ME} - KEEP
        if not pids:
            reap()
            remove_left_cgroups()
            return
        # Freeze first so nothing respawns between the scan and the kill.
        for _ in range(3):
            for p in pids:
                try:
                    os.kill(p, signal.SIGSTOP)
                except ProcessLookupError:
                    pass
            more = descendants([ME]) - {ME} - KEEP
            if more <= pids:
                break
            pids |= more
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.02)
        reap()
    log(f"warning: processes left after cleanup {reason}: {sorted(descendants([ME]) - {ME} - KEEP)}")


# --------------------------------------------------------------------------
# the stamp socket


class Stamps:
    def __init__(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.sock.bind("\0" + SOCK_NAME)
        except OSError as e:
            sys.exit(f"cannot bind the abstract socket @{SOCK_NAME} ({e}): is another benchmark running?")
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.latest = {}  # name -> (pid, ns)
        self.count = 0

    def _take(self, data):
        try:
            name, pid, ns = data.decode().split()
            pid, ns = int(pid), int(ns)
        except ValueError:
            return None
        self.latest[name] = (pid, ns)
        self.count += 1
        return name, pid, ns

    def poll(self, timeout):
        """Receive everything available within `timeout` seconds; list of messages."""
        msgs = []
        self.sock.settimeout(timeout)
        try:
            while True:
                m = self._take(self.sock.recv(1024))
                if m:
                    msgs.append(m)
                self.sock.settimeout(0)
        except (BlockingIOError, socket.timeout):
            pass
        return msgs

    def wait_for(self, pred, timeout):
        """Wait until a message satisfies pred; returns it or None."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                m = self._take(self.sock.recv(1024))
            except socket.timeout:
                return None
            if m and pred(*m):
                return m

    def drain(self):
        self.poll(0)


# --------------------------------------------------------------------------
# the tools


class Tool:
    name = "?"
    # the status command: how it is run (for BENCHMARKS.md)
    status_desc = ""

    def __init__(self, tools_dir):
        self.tools_dir = tools_dir
        self.base = None
        self.pid = None  # the process the harness spawned (the main one unless noted)

    def child_names(self, n):
        return [f"{self.name}.{i}" for i in range(n)]

    def env(self):
        e = dict(os.environ)
        e["BENCH_SOCK"] = SOCK_NAME
        return e

    def prepare(self, base, n):
        self.base = Path(base)
        if self.base.exists():
            shutil.rmtree(self.base)
        self.base.mkdir(parents=True)
        self.n = n
        self.write_config(n)

    def launch(self):
        self.pid = spawn(self.launch_argv(), env=self.env(), out=self.base / "harness-out.log")
        return self.pid

    def main_pid(self):
        return self.pid

    def roots(self):
        return [self.main_pid()]

    def own_pids(self, table=None):
        table = table or proc_table()
        pids = descendants([r for r in self.roots() if r], table)
        return {p for p in pids if exe_of(p) != STAMP}

    def status_run(self):
        """(argv, env) of the status command."""
        return self.status_argv(), self.env()

    def status_in_dir_runs(self):
        """The status commands as users type them in the project's
        directory, where they differ from status_run: a list of
        (result key, what it is, argv, env, cwd)."""
        return []

    def relaunch(self):
        return self.launch()

    def after_launch(self, timeout=30):
        """Called after launch() returned; e.g. PM2's CLI exits and leaves a daemon."""
        return True

    status_warmups = 2

    def max_status_runs(self, wanted):
        return wanted


class Supervise(Tool):
    name = "supervise"
    status_desc = "`supervise --state-dir D status --json`"

    def __init__(self, tools_dir, binary, name="supervise", extra_env=None):
        super().__init__(tools_dir)
        self.bin = binary
        self.name = name
        self.extra_env = extra_env or {}

    def env(self):
        e = super().env()
        e.update(self.extra_env)
        return e

    def available(self):
        if not os.access(self.bin, os.X_OK):
            return f"{self.bin} not built (cargo build --release)"
        return None

    def version(self):
        v = subprocess.run([self.bin, "--version"], capture_output=True, text=True).stdout.strip()
        if not os.path.realpath(self.bin).startswith(str(REPO) + "/"):
            return f"{v} ({self.bin})"
        try:
            c = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                               capture_output=True, text=True).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "src"],
                                   capture_output=True, text=True).stdout.strip()
            v += f" (commit {c}{', src/ modified' if dirty else ''})"
        except OSError:
            pass
        return v

    def write_config(self, n):
        # One service per child, as every peer is given: the spec's size,
        # which `status` in the spec's directory reads, grows as theirs do.
        services = "".join(f"""
[services.s{i}]
command = ["{STAMP}", "{name}"]
restart = {{ policy = "always", delay = "0s", limit = 0 }}
""" for i, name in enumerate(self.child_names(n)))
        (self.base / "supervise.toml").write_text(f"""[supervisor]
state_dir = "{self.base}/state"
{services}""")

    def launch_argv(self):
        return [self.bin, "up", self.base / "supervise.toml"]

    def status_argv(self):
        return [self.bin, "--state-dir", self.base / "state", "status", "--json"]

    def status_in_dir_runs(self):
        # `cd project && supervise status`: the spec is found and read.
        return [
            ("status_in_dir_ms", "status --json", [self.bin, "status", "--json"], self.env(), self.base),
            ("status_table_in_dir_ms", "status", [self.bin, "status"], self.env(), self.base),
        ]


class Runit(Tool):
    name = "runit"
    status_desc = "`sv status DIR…` (one `sv` run, all service dirs as arguments)"

    def available(self):
        for b in ("runsvdir", "runsv", "sv"):
            if not shutil.which(b):
                return f"{b} not found (apt-get install runit)"
        return None

    def version(self):
        return "runit " + dpkg_version("runit")

    def write_config(self, n):
        d = self.base / "sv"
        d.mkdir()
        for name in self.child_names(n):
            (d / name).mkdir()
            # ./run is the stamp itself: no shell between runsv and the child
            # (the stamp takes its name from its working directory).
            os.symlink(STAMP, d / name / "run")
        # runsvdir ignores a directory modified within the current second
        # until the next one (its mtime check cannot see later changes in the
        # same second); service dirs normally exist long before the start.
        past = time.time() - 10
        os.utime(d, (past, past))

    def launch_argv(self):
        return ["runsvdir", "-P", self.base / "sv"]

    def status_argv(self):
        return ["sv", "status"] + [self.base / "sv" / n for n in self.child_names(self.n)]


class S6(Tool):
    name = "s6"
    status_desc = "`s6-svstat DIR` for each service dir, in one `sh` loop (s6-svstat takes one dir)"

    def available(self):
        for b in ("s6-svscan", "s6-supervise", "s6-svstat"):
            if not shutil.which(b):
                return f"{b} not found (apt-get install s6)"
        return None

    def version(self):
        return "s6 " + dpkg_version("s6")

    def write_config(self, n):
        d = self.base / "scan"
        d.mkdir()
        for name in self.child_names(n):
            (d / name).mkdir()
            os.symlink(STAMP, d / name / "run")

    def launch_argv(self):
        return ["s6-svscan", self.base / "scan"]

    def status_argv(self):
        return ["sh", "-c", 'for d in "$0"/*; do s6-svstat "$d"; done', self.base / "scan"]


class Supervisord(Tool):
    name = "supervisord"
    status_desc = "`supervisorctl -c CONF status`"

    def bindir(self):
        return self.tools_dir / "venv" / "bin"

    def available(self):
        if not (self.bindir() / "supervisord").exists():
            return f"supervisord not installed in {self.bindir()}"
        return None

    def version(self):
        v = subprocess.run([self.bindir() / "supervisord", "--version"], capture_output=True,
                           text=True).stdout.strip()
        py = subprocess.run([self.bindir() / "python", "--version"], capture_output=True,
                            text=True).stdout.strip()
        return f"supervisor {v} ({py})"

    def write_config(self, n):
        b = self.base
        (b / "childlogs").mkdir()
        (b / "supervisord.conf").write_text(f"""[unix_http_server]
file={b}/supervisor.sock

[supervisord]
nodaemon=true
user=root
logfile={b}/supervisord.log
pidfile={b}/supervisord.pid
childlogdir={b}/childlogs

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{b}/supervisor.sock

[program:p]
command={STAMP} supervisord.%(process_num)d
process_name=%(program_name)s_%(process_num)d
numprocs={n}
numprocs_start=0
autorestart=true
startsecs=0
startretries=1000000
""")

    def launch_argv(self):
        return [self.bindir() / "supervisord", "-n", "-c", self.base / "supervisord.conf"]

    def status_argv(self):
        return [self.bindir() / "supervisorctl", "-c", self.base / "supervisord.conf", "status"]


class PM2(Tool):
    name = "pm2"
    status_desc = "`pm2 jlist`"

    def pm2(self):
        return self.tools_dir / "pm2" / "node_modules" / ".bin" / "pm2"

    def available(self):
        if not shutil.which("node"):
            return "node not found"
        if not self.pm2().exists():
            return f"pm2 not installed in {self.pm2()}"
        return None

    def version(self):
        pj = json.loads((self.tools_dir / "pm2" / "node_modules" / "pm2" / "package.json").read_text())
        node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
        return f"pm2 {pj['version']} (node {node})"

    def env(self):
        e = super().env()
        e["PM2_HOME"] = str(self.base / "pm2home")
        e["PM2_DISCRETE_MODE"] = "true"
        return e

    def write_config(self, n):
        apps = [{
            "name": name, "script": STAMP, "args": [name], "interpreter": "none",
            "autorestart": True, "restart_delay": 0, "max_restarts": 1000000,
            "vizion": False, "cwd": str(self.base),
        } for name in self.child_names(n)]
        (self.base / "ecosystem.json").write_text(json.dumps({"apps": apps}))

    def launch_argv(self):
        return [self.pm2(), "start", self.base / "ecosystem.json"]

    def after_launch(self, timeout=60):
        # `pm2 start` is a client: it starts the God daemon (which daemonizes
        # and, the harness being a subreaper, becomes the harness's child),
        # asks it to start the apps and exits.
        st = wait_pid(self.pid, timeout)
        return st is not None

    def main_pid(self):
        try:
            return int((self.base / "pm2home" / "pm2.pid").read_text())
        except (OSError, ValueError):
            return None

    def status_argv(self):
        return [self.pm2(), "jlist"]


class Horust(Tool):
    name = "horust"
    status_desc = "`horustctl status NAME` for each service, in one `sh` loop (no all-services status)"

    def bin(self):
        return self.tools_dir / "horust" / "bin" / "horust"

    def ctl(self):
        return self.tools_dir / "horust" / "bin" / "horustctl"

    def available(self):
        if not self.bin().exists():
            return f"horust not installed in {self.bin()}"
        return None

    def version(self):
        return "horust " + cargo_installed_version(self.tools_dir / "horust", "horust")

    def write_config(self, n):
        d = self.base / "services"
        d.mkdir()
        (self.base / "uds").mkdir()
        for name in self.child_names(n):
            (d / f"{name}.toml").write_text(f"""command = "{STAMP} {name}"

[restart]
strategy = "always"
backoff = "0s"
attempts = 0
""")

    def launch_argv(self):
        return [self.bin(), "--services-path", self.base / "services",
                "--uds-folder-path", self.base / "uds"]

    status_warmups = 0

    def max_status_runs(self, wanted):
        # horustctl answers one service per run, after up to ~0.3 s (Horust
        # polls its socket), so 100 services take ~25 s a run: a few runs.
        return min(wanted, 3 if wanted > 3 else 1)

    def status_run(self):
        if not self.ctl().exists():
            return None
        argv = ["sh", "-c",
                'c=$0; u=$1; shift 2; for s in "$@"; do "$c" --uds-folder-path "$u" status "$s"; done',
                self.ctl(), self.base / "uds"] + [f"{n}.toml" for n in self.child_names(self.n)]
        return argv, self.env()


def dpkg_version(pkg):
    r = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", pkg], capture_output=True, text=True)
    return r.stdout.strip() or "?"


def cargo_installed_version(root, crate):
    try:
        data = json.loads((root / ".crates2.json").read_text())
        for k in data.get("installs", {}):
            if k.startswith(crate + " "):
                return k.split()[1]
    except (OSError, ValueError):
        pass
    return "?"


# --------------------------------------------------------------------------
# installing the peers


def install(tools_dir, wanted):
    """Install what is missing; returns {tool: reason} for what could not be."""
    tools_dir.mkdir(parents=True, exist_ok=True)
    problems = {}

    def run(argv, **kw):
        log("+ " + " ".join(map(str, argv)))
        return subprocess.run(list(map(str, argv)), **kw).returncode == 0

    debs = []
    if "runit" in wanted and not shutil.which("runsvdir"):
        debs.append("runit")
    if "s6" in wanted and not shutil.which("s6-svscan"):
        debs.append("s6")
    if debs:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        ok = run(["apt-get", "install", "-y", "-qq", "--no-install-recommends"] + debs, env=env)
        if not ok:
            run(["apt-get", "update", "-qq"], env=env)
            run(["apt-get", "install", "-y", "-qq", "--no-install-recommends"] + debs, env=env)
    if "supervisord" in wanted and not (tools_dir / "venv" / "bin" / "supervisord").exists():
        if not (run([sys.executable, "-m", "venv", tools_dir / "venv"])
                and run([tools_dir / "venv" / "bin" / "pip", "install", "-q", "supervisor"])):
            problems["supervisord"] = "pip install supervisor failed"
    if "pm2" in wanted and not (tools_dir / "pm2" / "node_modules" / ".bin" / "pm2").exists():
        if not shutil.which("npm"):
            problems["pm2"] = "npm not found"
        else:
            (tools_dir / "pm2").mkdir(exist_ok=True)
            if not run(["npm", "install", "--silent", "--prefix", tools_dir / "pm2", "pm2"]):
                problems["pm2"] = "npm install pm2 failed"
    if "horust" in wanted:
        root = tools_dir / "horust"
        env = dict(os.environ, CARGO_TARGET_DIR=str(tools_dir / "cargo-target"))
        for crate in ("horust", "horustctl"):
            if not (root / "bin" / crate).exists():
                if not run(["cargo", "install", "--quiet", "--root", root, crate], env=env):
                    if crate == "horust":
                        problems["horust"] = "cargo install horust failed"
    return problems


# --------------------------------------------------------------------------
# the measures


def pct(xs, q):
    """Nearest-rank percentile."""
    xs = sorted(xs)
    if not xs:
        return None
    k = max(0, min(len(xs) - 1, int(round(q / 100 * len(xs) + 0.5)) - 1))
    return xs[k]


def start_and_wait(tool, stamps, base, n, timeout=120):
    """Prepare, launch and wait until all n children have exec'd.

    Returns the seconds from spawn to the last exec, or None on timeout."""
    tool.prepare(base, n)
    names = set(tool.child_names(n))
    stamps.drain()
    t0 = now_ns()
    tool.launch()
    seen = {}
    deadline = time.monotonic() + timeout
    launched = False
    while len(seen) < n and time.monotonic() < deadline:
        for name, pid, ns in stamps.poll(0.05):
            if name in names and ns >= t0 and name not in seen:
                seen[name] = ns
        if not launched:
            # PM2's client exits; reap it without blocking the count.
            if tool.name == "pm2":
                if tool.pid in EXITED or wait_pid(tool.pid, 0) is not None:
                    launched = True
            else:
                launched = True
    if len(seen) < n:
        log(f"  {tool.name}: only {len(seen)}/{n} children exec'd within {timeout}s")
        return None
    if tool.name == "pm2" and not launched:
        wait_pid(tool.pid, 60)
    return (max(seen.values()) - t0) / 1e9


def measure_restarts(tools, stamps, fsdir, kills, batch, k, min_life):
    """Restart latency, all tools up at once, batches of kills interleaved."""
    res = {t.name: [] for t in tools}
    failures = {t.name: 0 for t in tools}
    up = []
    for t in tools:
        if start_and_wait(t, stamps, fsdir / t.name, k) is None:
            log(f"  {t.name}: did not start; no restart figures")
            continue
        if not t.after_launch():
            log(f"  {t.name}: launcher did not return")
        up.append(t)
    done = {t.name: 0 for t in up}
    while any(done[t.name] < kills for t in up):
        for t in up:
            os.sync()
            for _ in range(min(batch, kills - done[t.name])):
                # kill the child that has lived longest, once it has lived
                # min_life (runit and s6 hold back a restart of a service that
                # ran less than 1 s).
                names = t.child_names(k)
                stamps.drain()
                name = min(names, key=lambda nm: stamps.latest.get(nm, (0, 0))[1])
                pid, born = stamps.latest[name]
                wait = born / 1e9 + min_life - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                stamps.drain()
                t0 = now_ns()
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                m = stamps.wait_for(lambda nm, p, ns: nm == name and p != pid and ns >= t0, 10)
                done[t.name] += 1
                if m is None:
                    failures[t.name] += 1
                    log(f"  {t.name}: {name} not restarted within 10 s")
                    continue
                res[t.name].append((m[2] - t0) / 1e6)
                time.sleep(0.01)
    kill_everything("after restart latency")
    return res, failures


def measure_raw_restart(stamps, kills):
    """The floor: posix_spawn of the stamp by this (Python) harness -> its exec."""
    out = []
    for i in range(kills):
        stamps.drain()
        t0 = now_ns()
        pid = spawn([STAMP, f"raw.{i}"], setsid=False)
        m = stamps.wait_for(lambda nm, p, ns: p == pid, 5)
        if m:
            out.append((m[2] - t0) / 1e6)
        os.kill(pid, signal.SIGKILL)
        wait_pid(pid)
    return out


def measure_raw_cold(stamps, n):
    stamps.drain()
    t0 = now_ns()
    pids = [spawn([STAMP, f"raw.{i}"], setsid=False) for i in range(n)]
    seen = {}
    deadline = time.monotonic() + 30
    while len(seen) < n and time.monotonic() < deadline:
        for name, pid, ns in stamps.poll(0.05):
            if name.startswith("raw."):
                seen[name] = ns
    for p in pids:
        os.kill(p, signal.SIGKILL)
    for p in pids:
        wait_pid(p)
    return (max(seen.values()) - t0) / 1e9 if len(seen) == n else None


def cold_start(tool, stamps, base, n):
    """One cold start of n children in a fresh `base`, then everything
    killed and `base` deleted; the seconds, or None."""
    os.sync()  # the previous tool's writeback is not this one's cost
    s = start_and_wait(tool, stamps, base, n)
    kill_everything(f"after cold start of {tool.name}")
    shutil.rmtree(base, ignore_errors=True)
    return s


def measure_build_pairs(builds, stamps, fsdir, n, rounds):
    """Cold start of n, the builds of supervise only, `rounds` interleaved
    rounds with the order reversed every other round: a few rounds among
    the peers' cannot tell 10 % from 25 % on a busy 2-core machine."""
    res = {t.name: [] for t in builds}
    for rep in range(rounds):
        for t in (builds if rep % 2 == 0 else builds[::-1]):
            s = cold_start(t, stamps, fsdir / t.name, n)
            if s is not None:
                res[t.name].append(s)
    return res


def median_ratio_interval(xs, ys, draws=4000):
    """The 95 % bootstrap interval of median(xs) / median(ys)."""
    rng = random.Random(1)
    rs = sorted(statistics.median(rng.choices(xs, k=len(xs))) / statistics.median(rng.choices(ys, k=len(ys)))
                for _ in range(draws))
    return rs[int(draws * 0.025)], rs[int(draws * 0.975) - 1]


def steady_phase(tools, stamps, fsdir, n, idle_secs, status_rounds, settle, quick):
    t_phase = time.monotonic()
    """All tools with n children each: memory, idle, status; then kill -9 each."""
    out = {t.name: {} for t in tools}
    up = []
    for t in tools:
        if start_and_wait(t, stamps, fsdir / t.name, n) is None:
            out[t.name]["error"] = "did not start"
            continue
        t.after_launch()
        up.append(t)
    time.sleep(0.5 if quick else 3)
    log(f"   all up after {time.monotonic() - t_phase:.1f} s")

    # memory: three samples, interleaved
    samples = {t.name: [] for t in up}
    for _ in range(3):
        table = proc_table()
        for t in up:
            pids = t.own_pids(table)
            pss = uss = 0
            per = []
            for p in pids:
                r = smaps_rollup(p)
                pss += r.get("Pss", 0)
                uss += r.get("Private_Clean", 0) + r.get("Private_Dirty", 0)
                per.append((p, r.get("Pss", 0), r.get("Private_Dirty", 0)))
            samples[t.name].append((pss, uss, len(pids), per))
        time.sleep(0.5)
    for t in up:
        s = sorted(samples[t.name], key=lambda x: x[0])[1]
        out[t.name]["pss_kib"] = s[0]
        out[t.name]["uss_kib"] = s[1]
        out[t.name]["procs"] = s[2]
        if isinstance(t, Supervise):
            main = t.main_pid()
            shims = [x for x in s[3] if x[0] != main]
            out[t.name]["pss_main_kib"] = next((x[1] for x in s[3] if x[0] == main), None)
            out[t.name]["pss_per_shim_kib"] = (sum(x[1] for x in shims) / len(shims)) if shims else None
            out[t.name]["private_dirty_per_shim_kib"] = (sum(x[2] for x in shims) / len(shims)) if shims else None

    # idle: one window for all tools at once
    table = proc_table()
    before = {}
    for t in up:
        pids = t.own_pids(table)
        before[t.name] = {p: cpu_and_switches(p) for p in pids}
    time.sleep(idle_secs)
    table = proc_table()
    for t in up:
        pids = t.own_pids(table)
        ticks = sw = 0
        gone = 0
        for p in pids | set(before[t.name]):
            a = before[t.name].get(p)
            b = cpu_and_switches(p) if p in pids else None
            if a and b:
                ticks += b[0] - a[0]
                sw += b[1] - a[1]
            elif b:  # appeared during the window: count all of it
                ticks += b[0]
                sw += b[1]
            else:
                gone += 1
        out[t.name]["idle_cpu_ms"] = ticks * 1000 / CLK_TCK
        out[t.name]["idle_switches"] = sw
        out[t.name]["idle_procs_changed"] = gone
        out[t.name]["idle_secs"] = idle_secs

    # status: rounds, interleaved, after two warm-ups each
    times = {t.name: [] for t in up}
    codes = {t.name: set() for t in up}
    runs = {t.name: t.status_run() for t in up}
    in_dir = {t.name: t.status_in_dir_runs() for t in up}
    dir_times = {t.name: {form[0]: [] for form in in_dir[t.name]} for t in up}
    t_status = time.monotonic()
    for r in range(status_rounds + 2):
        for t in up:
            if not runs[t.name]:
                continue
            warm = t.status_warmups
            if r < 2 - warm or r - 2 >= t.max_status_runs(status_rounds):
                continue
            argv, env = runs[t.name]
            t0 = now_ns()
            pid = spawn(argv, env=env, setsid=False)
            st = wait_pid(pid)
            dt = (now_ns() - t0) / 1e6
            if r >= 2:
                times[t.name].append(dt)
                codes[t.name].add(os.waitstatus_to_exitcode(st))
            for key, _, argv, env, cwd in in_dir[t.name]:
                here = os.getcwd()
                os.chdir(cwd)  # the child inherits it; posix_spawn has no cwd
                try:
                    t0 = now_ns()
                    pid = spawn(argv, env=env, setsid=False)
                    st = wait_pid(pid)
                    dt = (now_ns() - t0) / 1e6
                finally:
                    os.chdir(here)
                if r >= 2:
                    dir_times[t.name][key].append(dt)
                    codes[t.name].add(os.waitstatus_to_exitcode(st))
    log(f"   status runs took {time.monotonic() - t_status:.1f} s")
    for t in up:
        if runs[t.name]:
            out[t.name]["status_ms"] = times[t.name]
            for key, ms in dir_times[t.name].items():
                out[t.name][key] = ms
            out[t.name]["status_exit"] = sorted(codes[t.name])
        # one run with its output kept, to check it lists every child
        if runs[t.name]:
            argv, env = runs[t.name]
            r = subprocess.run(list(map(str, argv)), env=env, capture_output=True, text=True)
            txt = r.stdout
            if isinstance(t, Supervise):
                try:
                    listed = sum(len(s["replicas"]) for s in json.loads(txt)["services"])
                except (ValueError, KeyError):
                    listed = 0
            elif t.name == "pm2":
                try:
                    listed = len(json.loads(txt))
                except ValueError:
                    listed = 0
            else:
                listed = sum(1 for line in txt.splitlines() if line.strip())
            out[t.name]["status_lines"] = listed

    # kill -9 of the main process, one tool at a time
    for t in up:
        t0 = time.monotonic()
        out[t.name]["kill9"] = kill9(t, stamps, n, settle, 2.5 if quick else 5)
        log(f"   kill -9 of {t.name}: {time.monotonic() - t0:.1f} s")
    kill_everything("after steady phase")
    return out


def kill9(t, stamps, n, settle, min_wait):
    names = set(t.child_names(n))
    before = {nm: pids for nm, pids in live_stamps().items() if nm in names}
    originals = {nm: pids[0] for nm, pids in before.items()}
    main = t.main_pid()
    if not main:
        return {"error": "no main pid"}
    os.kill(main, signal.SIGKILL)
    time.sleep(0.3)
    reap()
    t.relaunch()
    if t.name == "pm2":
        t.after_launch()
    # settle: at least min_wait (a restarted supervisord takes ~1 s before it
    # starts anything), every name has a live child, and no child has exec'd
    # for `settle` s
    t_relaunch = time.monotonic()
    deadline = t_relaunch + 30
    quiet_since = t_relaunch
    while time.monotonic() < deadline:
        if stamps.poll(0.1):
            quiet_since = time.monotonic()
        if time.monotonic() - quiet_since >= settle and time.monotonic() - t_relaunch >= min_wait:
            live = live_stamps()
            if all(live.get(nm) for nm in names):
                break
    table = proc_table()
    live = {nm: pids for nm, pids in live_stamps(table).items() if nm in names}
    dups = sum(len(p) - 1 for p in live.values() if len(p) > 1)
    dup_services = sum(1 for p in live.values() if len(p) > 1)
    missing = sum(1 for nm in names if not live.get(nm))
    orphans = sum(1 for p in live.values() for pid in p if table[pid][0] in (ME, 1))
    survived = sum(1 for nm, pid in originals.items() if pid in table and table[pid][1] != "Z")
    # are the originals supervised again? kill three and look for a replacement
    probe = sorted(nm for nm, pid in originals.items() if pid in table)[:3]
    stamps.drain()
    t0 = now_ns()
    for nm in probe:
        try:
            os.kill(originals[nm], signal.SIGKILL)
        except ProcessLookupError:
            pass
    replaced = set()
    deadline = time.monotonic() + 3
    while len(replaced) < len(probe) and time.monotonic() < deadline:
        for name, p, ns in stamps.poll(0.05):
            if name in probe and p != originals[name] and ns >= t0:
                replaced.add(name)
    readopted = len(replaced)
    return {"duplicates": dups, "dup_services": dup_services, "orphans": orphans,
            "missing": missing, "originals_survived": survived,
            "originals_resupervised": f"{readopted}/{len(probe)}", "n": n}


# --------------------------------------------------------------------------
# reporting


def fmt_ms(x):
    if x is None:
        return "–"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def ratio(mine, best):
    if mine is None or best is None:
        return "–"
    if best == 0:
        return "∞" if mine else "1.00"
    return f"{mine / best:.2f}×"


def report(results, tools):
    """Markdown tables."""
    lines = []
    m = results["machine"]
    lines.append(f"Machine: {m['cpu']}, {m['cores']} cores, {m['mem_gib']:.0f} GiB, "
                 f"kernel {m['kernel']}; run {results['started']}, "
                 f"{'quick' if results['quick'] else 'full'} mode"
                 + (f", {results['params']['background']} idle background processes" if results['params'].get('background') else "")
                 + ".\n")
    lines.append("Versions: " + "; ".join(f"{k}: {v}" for k, v in results["versions"].items()) + "\n")
    if results["skipped"]:
        lines.append("Skipped: " + "; ".join(f"{k}: {v}" for k, v in results["skipped"].items()) + "\n")
    # variants of supervise (--variant) are not peers
    peers = [t for t in tools if not t.startswith("supervise")]

    def best_peer(vals):
        c = [(vals[t], t) for t in peers if vals.get(t) is not None]
        return min(c) if c else (None, None)

    for fs, r in results["fs"].items():
        lines.append(f"\n### {fs} ({r['path']}, {r['fstype']})\n")
        # restart
        rs = r.get("restart", {})
        if rs:
            lines.append("Restart latency (SIGKILL → replacement exec'd), ms:\n")
            lines.append("| tool | p50 | p99 | min | max | kills | not restarted | p50 vs best peer |")
            lines.append("|---|---|---|---|---|---|---|---|")
            p50 = {t: pct(rs[t]["ms"], 50) for t in rs if rs[t]["ms"]}
            bv, bt = best_peer(p50)
            for t in list(tools) + ["raw"]:
                if t not in rs:
                    continue
                xs = rs[t]["ms"]
                label = t if t != "raw" else "(floor: posix_spawn → exec from the harness)"
                lines.append(f"| {label} | {fmt_ms(pct(xs, 50))} | {fmt_ms(pct(xs, 99))} | "
                             f"{fmt_ms(min(xs) if xs else None)} | {fmt_ms(max(xs) if xs else None)} | "
                             f"{len(xs)} | {rs[t].get('failures', 0)} | "
                             f"{ratio(p50.get(t), bv) if t != 'raw' else ''} |")
            lines.append(f"\nBest peer: {bt}.\n")
        # cold start
        cs = r.get("cold", {})
        if cs:
            ns = sorted({int(k) for t in cs for k in cs[t]})
            lines.append("Cold start (spawn of the supervisor → all N children exec'd), ms, median (min–max):\n")
            lines.append("| tool | " + " | ".join(f"N={n}" for n in ns) + " | "
                         + " | ".join(f"N={n} vs best peer" for n in ns) + " |")
            lines.append("|---|" + "---|" * (2 * len(ns)))
            meds = {n: {t: (statistics.median(cs[t][str(n)]) * 1000 if cs[t].get(str(n)) else None)
                        for t in cs} for n in ns}
            for t in list(tools) + ["raw"]:
                if t not in cs:
                    continue
                cells, rats = [], []
                for n in ns:
                    xs = [x * 1000 for x in cs[t].get(str(n), [])]
                    cells.append(f"{fmt_ms(statistics.median(xs))} ({fmt_ms(min(xs))}–{fmt_ms(max(xs))})"
                                 if xs else "–")
                    rats.append(ratio(meds[n].get(t), best_peer(meds[n])[0]) if t != "raw" else "")
                label = t if t != "raw" else "(floor: N posix_spawn from the harness)"
                lines.append(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(rats) + " |")
            lines.append("")
        bp = r.get("build_pairs")
        if bp:
            secs = bp["seconds"]
            first = next(iter(secs))
            lines.append(f"Cold start of {bp['n']}, the builds of supervise alone, interleaved rounds "
                         f"(order reversed every other round), ms:\n")
            lines.append(f"| build | rounds | median (min–max) | {first} against it | 95 % interval |")
            lines.append("|---|---|---|---|---|")
            for t, xs in secs.items():
                if not xs:
                    continue
                ms = [x * 1000 for x in xs]
                rel, interval = "", ""
                if t != first and secs[first]:
                    rel = ratio(statistics.median(secs[first]), statistics.median(xs))
                    lo, hi = median_ratio_interval(secs[first], xs)
                    interval = f"{lo:.2f}–{hi:.2f}×"
                lines.append(f"| {t} | {len(xs)} | {fmt_ms(statistics.median(ms))} "
                             f"({fmt_ms(min(ms))}–{fmt_ms(max(ms))}) | {rel} | {interval} |")
            lines.append("")
        st = r.get("steady", {})
        if st:
            n = r["steady_n"]
            lines.append(f"At {n} children (all tools up at once; idle window {r['idle_secs']} s):\n")
            lines.append("| tool | PSS MiB (processes) | USS MiB | PSS vs best peer | idle CPU ms | "
                         "idle context switches | status ms median (min–max) | status vs best peer |")
            lines.append("|---|---|---|---|---|---|---|---|")
            pss = {t: st[t].get("pss_kib") for t in st}
            idle = {t: st[t].get("idle_switches") for t in st}
            stat = {t: (statistics.median(st[t]["status_ms"]) if st[t].get("status_ms") else None) for t in st}
            for t in tools:
                if t not in st:
                    continue
                s = st[t]
                if "error" in s:
                    lines.append(f"| {t} | {s['error']} |||||||")
                    continue
                sm = s.get("status_ms")
                lines.append(
                    f"| {t} | {s['pss_kib'] / 1024:.1f} ({s['procs']}) | {s['uss_kib'] / 1024:.1f} | "
                    f"{ratio(pss[t], best_peer(pss)[0])} | {s['idle_cpu_ms']:.0f} | {s['idle_switches']} | "
                    + (f"{fmt_ms(statistics.median(sm))} ({fmt_ms(min(sm))}–{fmt_ms(max(sm))}) | "
                       f"{ratio(stat[t], best_peer(stat)[0])} |" if sm else "– | – |"))
            lines.append("")
            best_stat = best_peer(stat)[0]
            for t in tools:
                for key, form in (("status_in_dir_ms", "status --json"),
                                  ("status_table_in_dir_ms", "status")):
                    sd = st.get(t, {}).get(key)
                    if sd:
                        lines.append(
                            f"`{t} {form}` as users type it, in the project's directory (the spec "
                            f"found and read, no flags): {fmt_ms(statistics.median(sd))} ms median "
                            f"({fmt_ms(min(sd))}–{fmt_ms(max(sd))}); "
                            f"{ratio(statistics.median(sd), best_stat)} against the best peer's "
                            f"status, in the same rounds as the rows above.\n")
            lines.append("Supervisor SIGKILLed, then started again the same way:\n")
            lines.append("| tool | duplicates | orphans | children missing | originals still running | "
                         "originals supervised again (killed → replaced) |")
            lines.append("|---|---|---|---|---|---|")
            for t in tools:
                k = st.get(t, {}).get("kill9")
                if not k:
                    continue
                if "error" in k:
                    lines.append(f"| {t} | {k['error']} |||||")
                    continue
                lines.append(f"| {t} | {k['duplicates']} of {k['n']} | {k['orphans']} | {k['missing']} | "
                             f"{k['originals_survived']} of {k['n']} | {k['originals_resupervised']} |")
            lines.append("")
            for t in tools:
                s = st.get(t, {})
                if t.startswith("supervise") and s.get("pss_per_shim_kib") is not None:
                    lines.append(f"{t} memory split: main process PSS {s['pss_main_kib'] / 1024:.2f} MiB; "
                                 f"per shim PSS {s['pss_per_shim_kib']:.0f} KiB, private dirty "
                                 f"{s['private_dirty_per_shim_kib']:.0f} KiB.\n")
    return "\n".join(lines)


def machine():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) / (1 << 20)
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(), "mem_gib": mem,
            "python": platform.python_version()}


def fstype(path):
    r = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,OPTIONS", "-T", str(path)], capture_output=True, text=True)
    if r.returncode == 0 and r.stdout.strip():
        return " ".join(r.stdout.splitlines()[0].split())
    r = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True)
    return r.stdout.strip()


# --------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny N, tmpfs only, < 1 minute")
    ap.add_argument("--tools", default=",".join(ALL_TOOLS), help="comma-separated subset of " + ",".join(ALL_TOOLS))
    ap.add_argument("--fs", default=None, help="tmpfs,disk (default both; --quick: tmpfs)")
    ap.add_argument("--tmpfs-dir", default="/dev/shm", help="a directory on tmpfs")
    ap.add_argument("--disk-dir", default="/var/tmp", help="a directory on a disk file system")
    built = sorted((REPO / "target").glob("*/release/supervise"))  # target/<triple>/release
    ap.add_argument("--supervise", default=str(built[0] if built else REPO / "target" / "release" / "supervise"))
    ap.add_argument("--stamp", required=True, help="the compiled bench/stamp.c")
    ap.add_argument("--tools-dir", default=str(HERE / ".tools"), help="where peers are installed")
    ap.add_argument("--no-install", action="store_true", help="skip what is not installed")
    ap.add_argument("--kills", type=int, default=None, help="restart kills per tool (default 200)")
    ap.add_argument("--reps", type=int, default=None, help="cold-start repetitions (default 5)")
    ap.add_argument("--build-pairs", type=int, default=None, metavar="ROUNDS",
                    help="with --variant: cold start of the largest --cold-n, the supervise builds "
                         "only, ROUNDS interleaved rounds, with the ratio's 95%% interval (default 30)")
    ap.add_argument("--idle", type=float, default=None, help="idle window in seconds (default 30)")
    ap.add_argument("--status-runs", type=int, default=None, help="status runs per tool (default 30)")
    ap.add_argument("--steady-n", type=int, default=None, help="children for memory/idle/status/kill -9 (100)")
    ap.add_argument("--cold-n", default=None, help="cold-start sizes (default 100,500)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=PATH",
                    help="also measure another build of supervise under NAME (must start with 'supervise-'); "
                         "not a peer: ratios stay against runit, s6, …")
    ap.add_argument("--variant-env", action="append", default=[], metavar="NAME=KEY=VALUE",
                    help="run variant NAME with KEY=VALUE in its environment, e.g. "
                         "supervise-nocgroup=SUPERVISE_CGROUP=off (with --variant supervise-nocgroup=PATH)")
    ap.add_argument("--background", type=int, default=0, metavar="N",
                    help="keep N idle processes running throughout (a busier machine: some costs grow "
                         "with the number of processes)")
    ap.add_argument("--out", default=None, help="write results.json and results.md into this directory")
    a = ap.parse_args()

    global STAMP
    STAMP = os.path.realpath(a.stamp)
    q = a.quick
    kills = a.kills or (3 if q else 200)
    reps = a.reps or (1 if q else 5)
    build_pairs = a.build_pairs or (2 if q else 30)
    idle = a.idle if a.idle is not None else (2 if q else 30)
    status_runs = a.status_runs or (3 if q else 30)
    steady_n = a.steady_n or (10 if q else 100)
    cold_ns = [int(x) for x in (a.cold_n or ("10" if q else "100,500")).split(",")]
    fss = (a.fs or ("tmpfs" if q else "tmpfs,disk")).split(",")
    k = 3 if q else 10   # children per tool in the restart test
    batch = 3 if q else 20
    settle = 1.0 if q else 2.0

    wanted = [t.strip() for t in a.tools.split(",") if t.strip()]
    for t in wanted:
        if t not in ALL_TOOLS:
            sys.exit(f"unknown tool {t}; known: {', '.join(ALL_TOOLS)}")
    tools_dir = Path(a.tools_dir)
    skipped = {}
    if not a.no_install:
        skipped.update(install(tools_dir, [t for t in wanted if t != "supervise"]))

    classes = {"supervise": lambda: Supervise(tools_dir, os.path.abspath(a.supervise)), "runit": lambda: Runit(tools_dir),
               "s6": lambda: S6(tools_dir), "supervisord": lambda: Supervisord(tools_dir),
               "pm2": lambda: PM2(tools_dir), "horust": lambda: Horust(tools_dir)}
    variant_env = {}
    for v in a.variant_env:
        vname, _, setting = v.partition("=")
        key, _, value = setting.partition("=")
        if not key:
            sys.exit(f"--variant-env {v}: want NAME=KEY=VALUE")
        variant_env.setdefault(vname, {})[key] = value
    for v in a.variant:
        vname, _, vpath = v.partition("=")
        if not vname.startswith("supervise-") or not vpath:
            sys.exit(f"--variant {v}: want supervise-NAME=PATH")
        classes[vname] = (lambda n, p, e: lambda: Supervise(tools_dir, p, n, e))(
            vname, os.path.abspath(vpath), variant_env.get(vname))
        wanted.append(vname)
    tools = []
    for name in wanted:
        t = classes[name]()
        why = skipped.get(name) or t.available()
        if why:
            skipped[name] = why
            log(f"skipping {name}: {why}")
        else:
            tools.append(t)
    if not tools:
        sys.exit("nothing to measure")

    # A subreaper: orphans of killed supervisors (and PM2's daemon) come to us.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        sys.exit("prctl(PR_SET_CHILD_SUBREAPER) failed")
    stamps = Stamps()

    def on_signal(sig, frame):
        kill_everything("on interrupt")
        sys.exit(130)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    results = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "quick": q, "machine": machine(),
        "versions": {t.name: t.version() for t in tools},
        "skipped": skipped,
        "params": {"background": a.background, "kills": kills, "restart_children": k, "batch": batch, "reps": reps, "build_pairs": build_pairs, "idle_secs": idle,
                   "status_runs": status_runs, "steady_n": steady_n, "cold_n": cold_ns},
        "status_commands": {t.name: t.status_desc for t in tools},
        "fs": {},
    }
    log("machine: " + json.dumps(results["machine"]))
    for name, v in results["versions"].items():
        log(f"{name}: {v}")

    t_start = time.monotonic()
    try:
        if a.background:
            for i in range(a.background):
                KEEP.add(spawn([STAMP, f"bg.{i}"], setsid=False))
            seen = set()
            deadline = time.monotonic() + 60
            while len(seen) < a.background and time.monotonic() < deadline:
                seen |= {m[0] for m in stamps.poll(0.1) if m[0].startswith("bg.")}
            log(f"{len(KEEP)} background processes running")
        for fs in fss:
            root = Path(a.tmpfs_dir if fs == "tmpfs" else a.disk_dir) / f"supbench-{ME}"
            root.mkdir(parents=True, exist_ok=True)
            r = results["fs"][fs] = {"path": str(root), "fstype": fstype(root), "idle_secs": idle,
                                     "steady_n": steady_n}
            log(f"== {fs}: {root} ({r['fstype']})")

            log(f"-- restart latency: {kills} kills per tool, {k} children each, batches of {batch}")
            t_ph = time.monotonic()
            res, fails = measure_restarts(tools, stamps, root / "restart", kills, batch, k, 1.2)
            log(f"   ({time.monotonic() - t_ph:.0f} s)")
            r["restart"] = {t: {"ms": xs, "failures": fails[t]} for t, xs in res.items()}
            r["restart"]["raw"] = {"ms": measure_raw_restart(stamps, kills), "failures": 0}
            for t in res:
                xs = res[t]
                if xs:
                    log(f"   {t}: p50 {pct(xs, 50):.2f} ms, p99 {pct(xs, 99):.2f} ms ({len(xs)} kills)")

            log(f"-- cold start: N in {cold_ns}, {reps} rounds")
            t_ph = time.monotonic()
            cold = {t.name: {str(n): [] for n in cold_ns} for t in tools}
            cold["raw"] = {str(n): [] for n in cold_ns}
            for rep in range(reps):
                for n in cold_ns:
                    for t in tools:
                        s = cold_start(t, stamps, root / "cold" / t.name, n)
                        if s is not None:
                            cold[t.name][str(n)].append(s)
                            log(f"   {t.name} N={n}: {s * 1000:.0f} ms")
                    x = measure_raw_cold(stamps, n)
                    if x is not None:
                        cold["raw"][str(n)].append(x)
            r["cold"] = cold
            log(f"   ({time.monotonic() - t_ph:.0f} s)")

            builds = [t for t in tools if isinstance(t, Supervise)]
            if len(builds) > 1:
                n = max(cold_ns)
                log(f"-- cold start of {n}, supervise builds only: {build_pairs} rounds")
                t_ph = time.monotonic()
                pairs = measure_build_pairs(builds, stamps, root / "pairs", n, build_pairs)
                r["build_pairs"] = {"n": n, "seconds": pairs}
                log(f"   ({time.monotonic() - t_ph:.0f} s)")

            log(f"-- steady state at {steady_n} children: memory, idle {idle} s, status x{status_runs}, kill -9")
            r["steady"] = steady_phase(tools, stamps, root / "steady", steady_n, idle, status_runs, settle, q)
            for t, s in r["steady"].items():
                log(f"   {t}: " + json.dumps({kk: v for kk, v in s.items() if kk != 'status_ms'}))
            shutil.rmtree(root, ignore_errors=True)
    finally:
        KEEP.clear()
        kill_everything("at exit")
    results["elapsed_secs"] = time.monotonic() - t_start

    md = report(results, [t.name for t in tools])
    print(md)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=1))
        (out / "results.md").write_text(md + "\n")
        log(f"wrote {out}/results.json and results.md")
    log(f"elapsed: {results['elapsed_secs']:.0f} s")


if __name__ == "__main__":
    main()
