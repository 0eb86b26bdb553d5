#!/usr/bin/env bash
# Zone control plane benchmarks (docs/benchmarks.md, "Zone control plane: config propagation
# and inventory scale"): policy propagation from `ApplyPolicies` to the ACK of 100 and 1,000
# simulated sidecar streams over zones a, b, c; and 3 x 10,000 exported services through global
# and the zone control planes (acks, full sync, message sizes, resident memory).
#
#   bench/zone-run.sh [ARGS...]
#
# Builds Strait and the benchmark in release mode, runs it, and writes the machine, the command
# and the tables to target/bench/zone-scale-<UTC time>.md. ARGS go to strait-bench-zone, e.g.
# `--streams 100,1000 --rounds 20 --services 10000 --phase all` (see `--help`).
#
# Every federation the run starts is stopped when it ends, fails or is interrupted: the
# benchmark stops its own (`strait down`, then SIGKILL to the process groups), and the trap
# below does the same for anything left under this run's directory (for example if the
# benchmark itself was killed).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib/common.sh

cargo build --release -p strait -p strait-bench-zone

# 1,000 streams share ~12 HTTP/2 connections by default (100 streams each), so a few dozen
# descriptors suffice; with --streams-per-connection 1 the benchmark holds one socket per
# stream and the zones ~340 each, past a 1,024 soft limit. Raise it to the hard limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

mkdir -p target/bench
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out="target/bench/zone-scale-$stamp.md"
run_dir=$(mktemp -d "${TMPDIR:-/tmp}/strait-zone-run-XXXXXX")
table="$run_dir/table.md"
bench_pid=""

stop_everything() {
  local status=$?
  trap - EXIT INT TERM
  if [ -n "$bench_pid" ] && kill -0 "$bench_pid" 2>/dev/null; then
    kill -TERM "$bench_pid" 2>/dev/null || true
    # The benchmark stops its federations on SIGTERM; give it time, then stop them here.
    for _ in $(seq 1 150); do kill -0 "$bench_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$bench_pid" 2>/dev/null || true
  fi
  while IFS= read -r procs; do
    stop_federation target/release/strait "$(dirname "$procs")"
  done < <(find "$run_dir" -name processes.json 2>/dev/null)
  rm -f "$table"
  rmdir "$run_dir" 2>/dev/null || echo "data and logs kept in $run_dir" >&2
  exit "$status"
}
trap stop_everything EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

target/release/strait-bench-zone --strait-bin target/release/strait --dir "$run_dir" \
  --out "$table" "$@" &
bench_pid=$!
wait "$bench_pid"
bench_pid=""

{
  echo "Run $stamp, commit $(head_commit)"
  echo
  echo '```'
  echo "\$ bench/zone-run.sh $*"
  machine_lines "; open files: $(ulimit -n)"
  echo '```'
  echo
  cat "$table"
} > "$out"
echo "report written to $out" >&2
