#!/usr/bin/env bash
# Proves each real peer works DIRECTLY, client -> server on loopback with no mesh in between, so
# a failure in an end-to-end test through the sidecars is the mesh's and not the peers'.
#
#   bash tests/peers/selftest.sh
#
# Installs the peers first when missing (scripts/peers.sh), then: grpc-go's interop client runs
# 13 test cases against grpc-go's interop server; grpc_client.py runs every scenario against
# grpc_server.py; ws_client.py against ws_echo_server.py (1,000 messages, 1 MiB binary, 3 s
# idle); grpc-load at 200 calls/s for 3 s against the interop server. Prints PASS/FAIL and the
# time of each item, and exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/../.."

# An assignment first: `eval "$(...)"` alone would hide a failed install.
peers_env=$(bash scripts/peers.sh --print-env)
eval "$peers_env"
peers=tests/peers
py=$STRAIT_PEERS_PYTHON
logs=$(mktemp -d "${TMPDIR:-/tmp}/strait-peers-selftest.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

now() { date +%s.%N; }
passed=0
failed=0
failures=()
# check NAME CMD...: runs CMD, its output in $logs/NAME.log; PASS or FAIL with the time.
check() {
  local name=$1 t rc=0
  shift
  t=$(now)
  "$@" >"$logs/$name.log" 2>&1 || rc=$?
  local secs
  secs=$(awk -v a="$t" -v b="$(now)" 'BEGIN { printf "%6.2f", b - a }')
  if [ "$rc" = 0 ]; then
    passed=$((passed + 1))
    printf 'PASS %s s  %s\n' "$secs" "$name"
  else
    failed=$((failed + 1))
    failures+=("$name")
    printf 'FAIL %s s  %s (exit %s)\n' "$secs" "$name" "$rc"
    sed 's/^/    | /' "$logs/$name.log" | tail -20
  fi
}

# wait_ready LOG: the port from the server's `READY port=N` line, within 20 s.
wait_ready() {
  local log=$1 i
  for i in $(seq 200); do
    if grep -q '^READY port=' "$log" 2>/dev/null; then
      sed -n 's/^READY port=\([0-9]*\).*/\1/p' "$log" | head -1
      return 0
    fi
    sleep 0.1
  done
  echo "no READY line in $log:" >&2
  cat "$log" >&2
  return 1
}

# The interop server takes a fixed port and prints nothing when ready: ask the kernel for a
# free port, then wait until it accepts connections.
free_port() {
  "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_listening() {
  local port=$1 i
  for i in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listening on 127.0.0.1:$port after 20 s" >&2
  return 1
}

echo "== peers (logs in $logs)"
started=$(now)

# --- grpc-go interop --------------------------------------------------------------------------
interop_port=$(free_port)
"$STRAIT_GRPC_INTEROP_SERVER" -listen "127.0.0.1:$interop_port" >"$logs/interop-server.log" 2>&1 &
pids+=($!)
wait_listening "$interop_port"
for case in empty_unary large_unary client_streaming server_streaming ping_pong empty_stream \
  custom_metadata status_code_and_message special_status_message unimplemented_method \
  timeout_on_sleeping_server cancel_after_begin cancel_after_first_response; do
  check "interop-$case" "$STRAIT_GRPC_INTEROP_CLIENT" --server_host 127.0.0.1 \
    --server_port "$interop_port" --use_tls=false --test_case "$case"
done

# --- grpc-load: open loop, 200 calls/s for 3 s, every call OK --------------------------------
load_ok() {
  "$STRAIT_GRPC_LOAD" -target "127.0.0.1:$interop_port" -rate 200 -duration 3s -warmup 0s \
    >"$logs/load.json"
  cat "$logs/load.json"
  "$py" - "$logs/load.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["scheduled"] == 600 and r["ok"] == 600, r
assert r["latency_ms"]["p99"] > 0, r
PY
}
check grpc-load-200rps-3s load_ok

# --- Python gRPC ------------------------------------------------------------------------------
"$py" "$peers/grpc_server.py" --port 0 --name selftest >"$logs/grpc-server.log" 2>&1 &
pids+=($!)
grpc_port=$(wait_ready "$logs/grpc-server.log")
for scenario in health unary stream bidi status; do
  check "py-grpc-$scenario" "$py" "$peers/grpc_client.py" "$scenario" \
    --target "127.0.0.1:$grpc_port" --expect-server selftest
done
check py-grpc-status-by-number "$py" "$peers/grpc_client.py" status \
  --target "127.0.0.1:$grpc_port" --code 7 --message "denied: 100% sure"
check py-grpc-unary-authority "$py" "$peers/grpc_client.py" unary \
  --target "127.0.0.1:$grpc_port" --authority echo.demo.svc.clusterset.local:50051
check py-grpc-unary-1mib "$py" "$peers/grpc_client.py" unary \
  --target "127.0.0.1:$grpc_port" --size 1048576
check py-grpc-load "$py" "$peers/grpc_client.py" load \
  --target "127.0.0.1:$grpc_port" --count 1000 --concurrency 16
# The checks must be able to fail: a wrong server name is a failure.
check py-grpc-wrong-server-fails \
  bash -c '! "$0" "$1" unary --target "$2" --expect-server someone-else' \
  "$py" "$peers/grpc_client.py" "127.0.0.1:$grpc_port"

# --- WebSocket --------------------------------------------------------------------------------
"$py" "$peers/ws_echo_server.py" --port 0 --name selftest >"$logs/ws-server.log" 2>&1 &
pids+=($!)
ws_port=$(wait_ready "$logs/ws-server.log")
check ws-1000-msgs-1mib-idle-3s "$py" "$peers/ws_client.py" \
  --url "ws://127.0.0.1:$ws_port/echo" --count 1000 --idle 3 --expect-server selftest
check ws-host-header "$py" "$peers/ws_client.py" --url "ws://127.0.0.1:$ws_port/echo" \
  --host-header echo.demo.svc.clusterset.local:8080 \
  --expect-host echo.demo.svc.clusterset.local:8080 --count 10 --idle 0

total=$(awk -v a="$started" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
echo "== peers selftest: $total s"
if [ "$failed" -gt 0 ]; then
  echo "failed: ${failures[*]}"
fi
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
