#!/usr/bin/env python3
"""What `supervise top` costs (issue 16's targets), against 100 idle replicas.

* first frame: `supervise top` started on a pseudo-terminal (160x50) ->
  the first bytes of the table's header row (REPLICA) read from it; the
  median of --starts runs;
* idle CPU: utime+stime (all threads, /proc/PID/stat) of `top` and of the
  supervisor's main process over --window seconds with nothing happening,
  `top` running in tmux; the supervisor also without `top` (its baseline);
* kill -9 -> on screen: SIGKILL of replica idle.N (visible on screen)
  timestamped just before kill(2) -> the first `tmux capture-pane` showing
  SIGKILL in idle.N's row; the capture is polled in a loop (one capture is
  ~2 ms here), so the figure includes up to one capture of delay.

Usage: bench/top.py [--supervise BIN] [--window 30] [--starts 10] [--kills 20]
Needs tmux. Builds nothing: pass a release binary (bench/run builds one).
"""

import argparse
import fcntl
import json
import os
import select
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def status(bin_, work):
    out = subprocess.run([bin_, "status", "--json"], cwd=work, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def pid_of(report, name):
    service, index = name.rsplit(".", 1)
    for s in report["services"]:
        for r in s["replicas"]:
            if s["name"] == service and r["index"] == int(index):
                return r["pid"]
    return None


def first_frame(bin_, work):
    """Seconds from spawning `top` on a fresh pty to its header row."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    env = dict(os.environ, TERM="xterm-256color")
    start = time.monotonic()
    proc = subprocess.Popen(
        [bin_, "top"], cwd=work, env=env, stdin=slave, stdout=slave, stderr=slave,
        start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    os.close(slave)
    seen = b""
    took = None
    deadline = start + 10
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            seen += os.read(master, 65536)
            if b"REPLICA" in seen:
                took = time.monotonic() - start
                break
    os.write(master, b"q")
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    os.close(master)
    if took is None:
        sys.exit(f"no first frame within 10 s: {seen[-500:]!r}")
    return took


class Tmux:
    def __init__(self, work, command):
        self.sock = os.path.join(work, "tmux.sock")
        self.run("new-session", "-d", "-x", "160", "-y", "50", "-c", work,
                 "-e", "TERM=xterm-256color", command)
        self.pid = int(self.run("display-message", "-p", "-t", "0", "#{pane_pid}"))

    def run(self, *args):
        return subprocess.run(["tmux", "-S", self.sock, *args], check=True,
                              capture_output=True, text=True).stdout

    def screen(self):
        return self.run("capture-pane", "-p", "-t", "0")

    def wait(self, pred, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if pred(screen):
                return time.monotonic()
        sys.exit(f"timed out; screen:\n{self.screen()}")

    def close(self):
        subprocess.run(["tmux", "-S", self.sock, "kill-server"], capture_output=True)


def row_has(screen, name, text):
    return any(line.split()[:1] == [name] and text in line for line in screen.splitlines())


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    triple = subprocess.run(["rustc", "-vV"], capture_output=True, text=True).stdout
    triple = [l.split()[1] for l in triple.splitlines() if l.startswith("host:")][0]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--supervise", default=os.path.join(
        here, "..", "target", triple, "release", "supervise"))
    p.add_argument("--replicas", type=int, default=100)
    p.add_argument("--window", type=float, default=30)
    p.add_argument("--starts", type=int, default=10)
    p.add_argument("--kills", type=int, default=20)
    a = p.parse_args()
    if not shutil.which("tmux"):
        sys.exit("bench/top.py needs tmux")
    bin_ = os.path.abspath(a.supervise)
    work = tempfile.mkdtemp(prefix="bench-top.")
    with open(os.path.join(work, "supervise.toml"), "w") as f:
        f.write(f'[services.idle]\ncommand = ["sleep", "1000000"]\nreplicas = {a.replicas}\n')
    subprocess.run([bin_, "up", "-d", "-q"], cwd=work, check=True)
    tmux = None
    try:
        sup = status(bin_, work)["supervisor"]["pid"]
        time.sleep(2)  # the start-up settles
        c0 = cpu_seconds(sup)
        time.sleep(a.window)
        baseline = (cpu_seconds(sup) - c0) / a.window * 100

        frames = [first_frame(bin_, work) * 1000 for _ in range(a.starts)]

        tmux = Tmux(work, f"{bin_} top")
        tmux.wait(lambda s: row_has(s, "idle.1", "running"))
        time.sleep(2)
        t0, s0 = cpu_seconds(tmux.pid), cpu_seconds(sup)
        time.sleep(a.window)
        top_cpu = (cpu_seconds(tmux.pid) - t0) / a.window * 100
        sup_cpu = (cpu_seconds(sup) - s0) / a.window * 100

        # Replicas on screen: rows 4.. of 50 (header, service row).
        latencies = []
        for i in range(1, a.kills + 1):
            name = f"idle.{i}"
            pid = pid_of(status(bin_, work), name)
            start = time.monotonic()
            os.kill(pid, 9)
            seen = tmux.wait(lambda s: row_has(s, name, "SIGKILL"))
            latencies.append((seen - start) * 1000)
            tmux.wait(lambda s: row_has(s, name, "running"))
        latencies.sort()
    finally:
        if tmux:
            tmux.close()
        subprocess.run([bin_, "down", "-q"], cwd=work)
        shutil.rmtree(work, ignore_errors=True)

    print(f"replicas: {a.replicas} idle; window {a.window:.0f} s")
    print(f"first frame: median {statistics.median(frames):.1f} ms, "
          f"max {max(frames):.1f} ms over {len(frames)} starts")
    print(f"top idle CPU: {top_cpu:.2f} % of a core")
    print(f"supervisor CPU: {sup_cpu:.2f} % with top attached, {baseline:.2f} % without")
    print(f"kill -9 -> on screen: median {statistics.median(latencies):.1f} ms, "
          f"max {max(latencies):.1f} ms over {len(latencies)} kills")


if __name__ == "__main__":
    main()
