#!/usr/bin/env python3
"""What a tight crash loop costs the supervisor: N replicas (default 1) of
`false` with `restart = { policy = "always", delay = "0s", limit = 0 }`,
run with `up -d`.

After a warm-up, over a measuring window: restarts per second (the
replicas' `restarts` counters in `status --json`), the bytes the supervisor
process caused to be written to storage (`write_bytes` of
/proc/<pid>/io; the shims' own records are theirs, not counted), the growth
of supervise.log and its rotated files, the largest checkpoint seen
(sampled every 20 ms) and the supervisor's CPU time. Prints every run and
the medians.

    bench/crashloop.py --bin target/x86_64-unknown-linux-gnu/release/supervise
    bench/crashloop.py --bin ... --runs 3 --seconds 10 --replicas 2 --log-max-size 1MiB

The state directory is a fresh one under $TMPDIR (the file system is what
`write_bytes` measures: on tmpfs it reads 0). The supervisor is stopped
with `down` at the end of each run, and killed by pid if that fails.
"""

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def io_of(pid):
    fields = {}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        key, value = line.split(":")
        fields[key] = int(value)
    return fields


def cpu_of(pid):
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def restarts(binary, state):
    out = subprocess.run([binary, "--state-dir", state, "status", "--json"],
                         check=True, capture_output=True, text=True).stdout
    return sum(r["restarts"] for r in json.loads(out)["services"][0]["replicas"])


def log_bytes(state):
    return sum(p.stat().st_size for p in Path(state).glob("supervise.log*"))


def one_run(binary, seconds, warmup, replicas, log_max_size):
    work = Path(tempfile.mkdtemp(prefix="supervise-crashloop."))
    state = work / "state"
    extra = f'log_max_size = "{log_max_size}"\n' if log_max_size else ""
    (work / "spec.toml").write_text(f"""[supervisor]
state_dir = "{state}"
{extra}
[services.c]
command = ["false"]
replicas = {replicas}
restart = {{ policy = "always", delay = "0s", limit = 0 }}
""")
    out = subprocess.run([binary, "up", "-d", str(work / "spec.toml")],
                         check=True, capture_output=True, text=True).stdout
    pid = int(out.split("(pid ")[1].split(",")[0])
    try:
        time.sleep(warmup)
        r0, io0, cpu0, log0 = restarts(binary, state), io_of(pid), cpu_of(pid), log_bytes(state)
        t0 = time.monotonic()
        biggest = 0
        # Sampled: it is replaced by rename, never written in place.
        while time.monotonic() - t0 < seconds:
            try:
                biggest = max(biggest, (state / "checkpoint.json").stat().st_size)
            except FileNotFoundError:
                pass
            time.sleep(0.02)
        r1, io1, cpu1, log1 = restarts(binary, state), io_of(pid), cpu_of(pid), log_bytes(state)
        span = time.monotonic() - t0
        return {
            "restarts_per_s": (r1 - r0) / span,
            "write_bytes_per_s": (io1["write_bytes"] - io0["write_bytes"]) / span,
            "log_growth_per_s": (log1 - log0) / span,
            "log_on_disk": log1,
            "checkpoint_max": biggest,
            "cpu_pct": 100 * (cpu1 - cpu0) / span,
        }
    finally:
        down = subprocess.run([binary, "--state-dir", state, "down", "--timeout", "10s"],
                              capture_output=True)
        if down.returncode != 0:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        subprocess.run(["rm", "-rf", str(work)], check=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", required=True, help="the supervise binary")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10, help="measuring window")
    ap.add_argument("--warmup", type=float, default=3)
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--log-max-size", help="[supervisor] log_max_size for the run")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores, kernel {os.uname().release}")
    runs = []
    for i in range(args.runs):
        r = one_run(args.bin, args.seconds, args.warmup, args.replicas, args.log_max_size)
        runs.append(r)
        print(f"run {i + 1}: " + ", ".join(f"{k} {v:.0f}" for k, v in r.items()), flush=True)
    print("median: " + ", ".join(
        f"{k} {statistics.median(r[k] for r in runs):.0f}" for k in runs[0]))


if __name__ == "__main__":
    main()
