#!/usr/bin/env bash
# bench/down.sh [--bin PATH] [--runs R] [N ...]: how long `supervise down`
# takes to stop N replicas of `sleep infinity` (default N = 100 1000 3000,
# R = 3 runs each; prints every run and the median). The replicas are
# started with `up -d` and awaited with `wait` before the clock starts; the
# clock covers `down` alone, which returns once the supervisor has exited.
# Everything runs in a fresh state directory under $TMPDIR; a run that leaves
# a supervisor behind has it killed by the pid in its lock file.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
bin=
runs=3
sizes=()
while [ $# -gt 0 ]; do
  case $1 in
    --bin) bin=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    -h|--help) sed -n '2,8s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) sizes+=("$1"); shift ;;
  esac
done
[ ${#sizes[@]} -gt 0 ] || sizes=(100 1000 3000)
if [ -z "$bin" ]; then
  (cd "$repo" && cargo build --release --quiet)
  triple=$(rustc -vV | sed -n "s/^host: //p")
  bin=${CARGO_TARGET_DIR:-$repo/target}/$triple/release/supervise
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/supervise-down.XXXXXX")
cleanup() {
  # A supervisor left running (a failed run) is killed by the pid it wrote.
  local pid
  pid=$(cat "$work/state/supervise.lock" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    "$bin" --state-dir "$work/state" down --timeout 5s >/dev/null 2>&1 || kill -9 "$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "machine: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), kernel $(uname -r)"
for n in "${sizes[@]}"; do
  cat >"$work/spec.toml" <<EOF
[supervisor]
state_dir = "$work/state"
shutdown_timeout = "60s"

[services.s]
command = ["sleep", "infinity"]
replicas = $n
EOF
  times=()
  for r in $(seq "$runs"); do
    rm -rf "$work/state"
    "$bin" -q up -d "$work/spec.toml" --timeout 5m
    "$bin" -q --state-dir "$work/state" wait --for running --timeout 5m
    start=$(date +%s%N)
    rc=0
    "$bin" -q --state-dir "$work/state" down || rc=$?
    end=$(date +%s%N)
    ms=$(( (end - start) / 1000000 ))
    times+=("$ms")
    echo "down of $n replicas, run $r: ${ms} ms (exit $rc)"
  done
  median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  echo "down of $n replicas: median ${median} ms over $runs runs"
done
