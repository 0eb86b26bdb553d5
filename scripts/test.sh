#!/usr/bin/env bash
# The README's test command: installs what the test suites call and nothing else, then runs
# every test. Safe to run again: each install step is skipped when its tool is already there.
#
# Debian packages: dig (bind9-dnsutils) for the DNS suites, curl for the mesh suites, iptables
# for traffic capture (tests/capture.rs). cargo-nextest runs the tests. The real gRPC and WebSocket
# peers (grpc-go interop programs, Python grpcio/websockets) are built into ~/.cache/strait by
# scripts/peers.sh, which says nothing when they are already there, and their paths exported as
# STRAIT_GRPC_INTEROP_SERVER, ... for the tests (docs/testing.md, "Real peers").
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for pair in dig:bind9-dnsutils curl:curl iptables:iptables; do
  command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null; then
    echo "scripts/test.sh: the tests need ${missing[*]} (Debian package names); install them and run again" >&2
    exit 1
  fi
  sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  echo "== installing ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}"
fi
command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked
# An assignment first: `eval "$(...)"` alone would hide a failed install.
peers_env=$(bash scripts/peers.sh --quiet --print-env)
eval "$peers_env"

echo "== tests"
exec cargo nextest run --workspace --no-fail-fast "$@"
