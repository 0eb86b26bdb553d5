#!/usr/bin/env bash
# Committed writes/s and p50/p99 commit latency: a 3-node Strait global cluster next to a
# 3-node etcd cluster, both on loopback with their data on the same disk (docs/benchmarks.md).
#
#   bench/run.sh [ARGS...]
#
# Installs Debian's etcd-server if it is missing (as root), builds Strait and the benchmark in
# release mode, runs it, and writes the machine, the command and the tables to
# target/bench/raft-writes-<UTC time>.md. ARGS go to strait-bench-raft, e.g.
# `--duration 10s --warmup 3s --writers 1,16,64 --dir /var/tmp` (see `--help`).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib/common.sh

[ -x /usr/bin/etcd ] || apt_install "etcd is missing" etcd-server

cargo build --release -p strait -p strait-bench-raft

mkdir -p target/bench
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out="target/bench/raft-writes-$stamp.md"
table=$(mktemp)
trap 'rm -f "$table"' EXIT

# The data directory is the system temp dir unless --dir is given; report its disk.
data_dir=${TMPDIR:-/tmp}
prev=""
for arg in "$@"; do
  [ "$prev" = "--dir" ] && data_dir=$arg
  case $arg in --dir=*) data_dir=${arg#--dir=} ;; esac
  prev=$arg
done

target/release/strait-bench-raft --strait-bin target/release/strait --out "$table" "$@"

{
  echo "Run $stamp, commit $(head_commit)"
  echo
  echo '```'
  echo "\$ bench/run.sh $*"
  echo "nproc: $(nproc); $(cpu_model)"
  echo "memory: $(free -g | awk '/^Mem:/ {print $2}') GiB"
  echo "data disk ($data_dir):"
  df -h "$data_dir"
  echo "etcd: $(/usr/bin/etcd --version | head -1)"
  echo '```'
  echo
  cat "$table"
} > "$out"
echo "report written to $out" >&2
