#!/usr/bin/env bash
# The README's test command: installs what the test suites call and nothing else, then runs
# every test. Safe to run again: each install step is skipped when its tool is already there.
#
# Debian packages: dig (bind9-dnsutils) for the DNS suites, curl for the mesh suites, iptables
# for traffic capture (tests/capture.rs). cargo-nextest runs the tests.
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

echo "== tests"
exec cargo nextest run --workspace --no-fail-fast "$@"
