#!/usr/bin/env bash
# gRPC unary latency (docs/benchmarks.md, "gRPC: unary latency through sidecars and across
# zones"; issue 20): grpc.testing.TestService/UnaryCall at a fixed 1,000 calls/s (grpc-load,
# open loop, one HTTP/2 connection) over four paths to grpc-go's interop server, interleaved in
# rounds in one run:
#   direct      grpc-load → interop server (zone a's)
#   strait      grpc-load → zone a's client sidecar (the service VIP) → mTLS → interop's
#               sidecar in zone a → interop server
#   cross-zone  grpc-load → client sidecar (the VIP pinned to zone b) → gateway a → QUIC →
#               gateway b → interop's sidecar in zone b → interop server in zone b
#   haproxy     grpc-load → haproxy A (h2c in) → h2 over mutual TLS → haproxy B → h2c → the
#               interop server of "direct"
# Reports p50/p90/p99/p99.9 per path, the latency each adds over direct (median over rounds),
# Strait / haproxy ratios and CPU seconds per 1,000 calls of each path's proxies.
#
#   bench/grpc-run.sh [--duration 20s] [--warmup 5s] [--rounds 3] [--rate 1000]
#                     [--binary PATH [--commit NAME]] [--keep] [--hold]
#
# Gets grpc-load and the interop server (grpc-go's, listening on one address:
# tests/peers/interop-server) from scripts/peers.sh (cached in ~/.cache/strait), installs
# haproxy (apt-get, as root) if missing, builds `strait` in release mode (or runs `--binary
# PATH`, named NAME in the report), and writes target/bench/grpc-<UTC time>.{md,json}, copied
# to grpc-latest.{md,json}. With `--hold` it sets everything up, prints the addresses and pids,
# and waits until interrupted, measuring nothing. Exits 1 (report written, logs kept) if any
# measured call failed or was dropped.
#
# Everything it starts (the federation, three sidecars, two interop servers, both haproxy, the
# load step) is stopped when it ends, fails or is interrupted; all of it listens on loopback.
set -euo pipefail
start_dir=$PWD
cd "$(dirname "$0")/.."
root=$PWD
source "$root/bench/lib/common.sh"

duration=20s warmup=5s rounds=3 rate=1000 keep=0 hold=0 binary="" commit=""
args_given="$*"
while [ $# -gt 0 ]; do
  case $1 in
    --duration|--warmup|--rounds|--rate|--binary|--commit)
      [ $# -ge 2 ] || { echo "$1 needs a value" >&2; exit 2; } ;;&
    --duration) duration=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --binary) binary=$(binary_path "$start_dir" "$2") || exit 2; shift 2 ;;
    --commit) commit=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --hold) hold=1; shift ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

# --- Validate, then act -----------------------------------------------------------------------
# Durations go to grpc-load as Go durations; whole seconds or milliseconds keep the arithmetic
# below (timeouts, warm-up call counts) simple.
require_durations duration warmup
require_positive_ints rounds rate

# --- Tools (idempotent) ---------------------------------------------------------------------
require_tools "" go python3 openssl curl ss
command -v haproxy >/dev/null || apt_install "haproxy is missing" haproxy
# grpc-load (and grpc-go's interop programs, the Python venv) from the shared peers cache.
# (Assigned first: a failure of peers.sh inside `eval "$(...)"` would go unnoticed.)
peers_env=$(bash scripts/peers.sh --print-env --quiet)
eval "$peers_env"
grpc_load=$STRAIT_GRPC_LOAD

# grpc-go's interop server bound to one address (tests/peers/interop-server; peers.sh).
interop_server=$STRAIT_GRPC_INTEROP_SERVER

resolve_binary -p strait
helper="python3 $root/bench/grpc/grpc_bench.py"

# --- Addresses (loopback only; out of the way of `strait up`'s ports, 20000-32000 on
# 127.0.0.1, of its demo's 127.1.Z.N:8080, and of the other bench scripts' 127.0.6x/8x) ------
# `strait up` gives every federation the same VIP ranges (127.240.0.0/16 for zone a,
# 127.241.0.0/16 for b): a VIP here can be a VIP of a test's federation too, so the VIP port,
# which is the app port, must be one no test or demo uses.
app_port=18680                  # the interop servers' port, hence the VIP port
interop_a=127.0.91.1:$app_port  # zone a's server: direct, strait and haproxy paths
interop_b=127.0.92.1:$app_port  # zone b's server: the cross-zone path
interop_a_inbound=127.0.91.2:15008 interop_a_admin=127.0.91.2:15000
interop_b_inbound=127.0.92.2:15008 interop_b_admin=127.0.92.2:15000
client_inbound=127.0.93.1:15008 client_admin=127.0.93.1:15000
hap_a_addr=127.0.94.1:$app_port # h2c in, h2 over TLS with a client certificate out
hap_b_addr=127.0.95.1:18443     # TLS in requiring a client certificate, h2c out

run_dir=$(mktemp -d "${TMPDIR:-/tmp}/strait-grpc-run-XXXXXX")
fed=$run_dir/fed
# A copy, so that a rebuild of target/ during the run does not mix binaries.
cp "$binary" "$run_dir/strait"
strait=$run_dir/strait
binary_sha256=$(sha256sum "$binary" | cut -d' ' -f1)
started=()        # pids of what this script started (not the federation: `strait down`)
load_pid=""
status_ok=0

install_traps stop_everything   # stops all of the above, load step and federation included

require_free_addresses "$interop_a" "$interop_b" "$interop_a_inbound" "$interop_a_admin" \
  "$interop_b_inbound" "$interop_b_admin" "$client_inbound" "$client_admin" "$hap_a_addr" "$hap_b_addr"

# --- The interop servers (zone a's and zone b's) --------------------------------------------
"$interop_server" -listen "$interop_a" > "$run_dir/interop-a.log" 2>&1 &
interop_a_pid=$!
started+=("$interop_a_pid")
"$interop_server" -listen "$interop_b" > "$run_dir/interop-b.log" 2>&1 &
interop_b_pid=$!
started+=("$interop_b_pid")

# --- Certificates for the haproxy pair (own CA) -----------------------------------------------
certs=$run_dir/certs
make_haproxy_certs "$certs" "" a b

# --- haproxy pair -----------------------------------------------------------------------------
# Two processes, like the two sidecars. HTTP/2 on every leg, as gRPC needs it and as the
# sidecars speak it: h2c from grpc-load (`proto h2`), h2 over mutual TLS between them (`alpn
# h2`), h2c to the interop server (`proto h2`); upstream connections pooled (`http-reuse
# always`), so a call is a stream on a connection already open, as through the sidecars.
cat > "$run_dir/haproxy-a.cfg" <<EOF
$haproxy_http_defaults
frontend a_in
  bind $hap_a_addr proto h2
  default_backend to_b
backend to_b
  server b $hap_b_addr ssl alpn h2 crt $certs/a.pem ca-file $certs/ca.pem verify required verifyhost haproxy-b sni str(haproxy-b)
EOF
cat > "$run_dir/haproxy-b.cfg" <<EOF
$haproxy_http_defaults
frontend b_in
  bind $hap_b_addr ssl crt $certs/b.pem ca-file $certs/ca.pem verify required alpn h2
  default_backend to_app
backend to_app
  server app $interop_a proto h2
EOF
haproxy -db -f "$run_dir/haproxy-b.cfg" > "$run_dir/haproxy-b.log" 2>&1 &
hap_b_pid=$!
started+=("$hap_b_pid")
haproxy -db -f "$run_dir/haproxy-a.cfg" > "$run_dir/haproxy-a.log" 2>&1 &
hap_a_pid=$!
started+=("$hap_a_pid")

# --- Strait: global + zones a and b (a gateway each), three sidecars -------------------------
"$strait" up --dir "$fed" --zones a,b > "$run_dir/up.log" 2>&1
export STRAIT_CONFIG=$fed/config.yaml
zone_a_api=$(fed_field zone a api) zone_b_api=$(fed_field zone b api)
"$strait" token workload --zone a --namespace demo --service interop > "$run_dir/interop-a.token"
"$strait" token workload --zone b --namespace demo --service interop > "$run_dir/interop-b.token"
"$strait" token workload --zone a --namespace demo --service client > "$run_dir/client.token"
start_sidecar() { # name zone-api zone token app inbound admin outbound
  local name=$1 api=$2 zone=$3 token=$4 app=$5 inbound=$6 admin=$7 outbound=$8
  local service=interop app_args=(--app "$app" --app-protocol grpc)
  if [ "$app" = none ]; then service=client app_args=(); fi
  "$strait" sidecar run --zone-cp "$api" --zone "$zone" --token-file "$token" \
    --service "$service" --namespace demo --instance "$name" "${app_args[@]}" \
    --inbound "$inbound" --admin "$admin" --outbound "$outbound" \
    --bundle-file "$fed/admin/bundle.pem" --data-dir "$run_dir/$name-data" \
    > "$run_dir/$name-sidecar.log" 2>&1 &
  started+=("$!")
}
start_sidecar interop-a "$zone_a_api" a "$run_dir/interop-a.token" "$interop_a" \
  "$interop_a_inbound" "$interop_a_admin" none
interop_a_sc_pid=${started[-1]}
start_sidecar interop-b "$zone_b_api" b "$run_dir/interop-b.token" "$interop_b" \
  "$interop_b_inbound" "$interop_b_admin" none
interop_b_sc_pid=${started[-1]}
start_sidecar client-a "$zone_a_api" a "$run_dir/client.token" none \
  "$client_inbound" "$client_admin" vips
client_sc_pid=${started[-1]}

wait_for 30 curl -fsS "http://$interop_a_admin/ready"
wait_for 30 curl -fsS "http://$interop_b_admin/ready"
wait_for 30 curl -fsS "http://$client_admin/ready"
# interop's VIP in zone a and its VIP pinned to zone b (in zone a's range), once both zones
# serve it.
interop_vips() {
  "$strait" services -o json | python3 -c '
import json, sys
for s in json.load(sys.stdin):
    if s["name"] != "interop" or s["namespace"] != "demo" or not s.get("vips", {}).get("a"):
        continue
    zones = {z["zone"]: z for z in s["zones"] if z["healthy"] > 0}
    if "a" in zones and "b" in zones and zones["b"].get("pinned_vips", {}).get("a"):
        print(s["vips"]["a"].split("/")[0], zones["b"]["pinned_vips"]["a"].split("/")[0])
        break'
}
have_vips() { [ -n "$(interop_vips)" ]; }
wait_for 60 have_vips
read -r vip_a vip_pinned_b < <(interop_vips)
strait_addr=$vip_a:$app_port cross_addr=$vip_pinned_b:$app_port

# Each path must complete unary calls before anything is measured (the VIP listeners and the
# cross-zone route come up a moment after the services show up).
answers() {
  timeout 20 "$grpc_load" -target "$1" -rate 50 -duration 200ms -warmup 0s -timeout 3s > /dev/null
}
wait_for 10 answers "$interop_a"
wait_for 10 answers "$hap_a_addr"
wait_for 30 answers "$strait_addr"
wait_for 60 answers "$cross_addr"
echo "paths: direct $interop_a, strait $strait_addr (VIP of demo/interop), cross-zone $cross_addr (VIP pinned to zone b), haproxy $hap_a_addr" >&2

gw_a_pid=$(fed_field gateway a pid) gw_b_pid=$(fed_field gateway b pid)
zone_a_pid=$(fed_field zone a pid) zone_b_pid=$(fed_field zone b pid) global_pid=$(fed_field global - pid)
procs="client-sidecar=$client_sc_pid,interop-a-sidecar=$interop_a_sc_pid,interop-b-sidecar=$interop_b_sc_pid"
procs+=",gateway-a=$gw_a_pid,gateway-b=$gw_b_pid,haproxy-a=$hap_a_pid,haproxy-b=$hap_b_pid"
# The control planes too: not on any path, but their CPU is not "other work" either.
procs+=",interop-a=$interop_a_pid,interop-b=$interop_b_pid,zone-a=$zone_a_pid,zone-b=$zone_b_pid,global=$global_pid"
if [ "$hold" = 1 ]; then hold_until_interrupted "$procs"; fi

records=$run_dir/records.jsonl
declare -A target=([direct]=$interop_a [strait]=$strait_addr [cross-zone]=$cross_addr [haproxy]=$hap_a_addr)
# Where the client sidecar must send each path's calls: the step fails otherwise.
declare -A expect=([direct]=none [strait]=local [cross-zone]=b [haproxy]=none)
# Each step is a new grpc-load process, so a new connection to the first proxy: its first call
# (made before the clock starts) and 1 s of calls at the rate, not reported, warm it up.
step_warmup=1s

load() { # phase round path duration
  local phase=$1 round=$2 path=$3 length=$4
  local in_step_warmup=$step_warmup
  [ "$phase" = warmup ] && in_step_warmup=0s
  local warmup_calls=$(( rate * $(secs "$in_step_warmup") ))
  run_load $helper sample --procs "$procs" --record "$records" --out "$run_dir/load-$phase-$round-$path.json" \
    --round "$round" --path "$path" --phase "$phase" --warmup-calls "$warmup_calls" \
    --metrics "http://$client_admin/metrics" --expect-zone "${expect[$path]}" -- \
    timeout $(( $(secs "$length") + $(secs "$in_step_warmup") + 60 )) \
    "$grpc_load" -target "${target[$path]}" -rate "$rate" -duration "$length" \
    -warmup "$in_step_warmup" -allow-errors
}

for path in direct strait cross-zone haproxy; do
  echo "warm-up $path ($warmup)" >&2
  load warmup 0 "$path" "$warmup"
done
order=(direct strait cross-zone haproxy)
for round in $(seq 1 "$rounds"); do
  for path in "${order[@]}"; do
    echo "round $round: $path ($duration at $rate calls/s)" >&2
    load measure "$round" "$path" "$duration"
  done
  order=("${order[@]:1}" "${order[0]}")   # rotate, so no path always follows the same one
done

mkdir -p target/bench
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=target/bench/grpc-$stamp
load_desc="grpc-load -rate $rate -duration $duration (+ $step_warmup unreported warm-up per step), unary grpc.testing.TestService/UnaryCall with empty payloads, one HTTP/2 connection, open loop; warm-up $warmup per path"
haproxy_version=$(haproxy_version)
{
  echo "Run $stamp, \`bench/grpc-run.sh\`: binary \`$binary\` (commit $commit, sha256 ${binary_sha256:0:12}), script at commit $script_commit."
  echo
  echo '```'
  echo "\$ bench/grpc-run.sh $args_given"
  machine_lines
  echo "$haproxy_version; $(GOTOOLCHAIN=local go version); grpc-go v1.85.0 (interop server and grpc-load)"
  echo "load: $load_desc"
  echo "paths: direct $interop_a; strait $strait_addr; cross-zone $cross_addr; haproxy $hap_a_addr"
  echo '```'
  echo
  $helper report --records "$records" --rate "$rate" --json "$out.json" \
    --meta "stamp=$stamp" --meta "commit=$commit" --meta "binary=$binary" \
    --meta "binary_sha256=$binary_sha256" --meta "script_commit=$script_commit" \
    --meta "duration=$duration" --meta "warmup=$warmup" --meta "load=$load_desc" \
    --meta "target.direct=$interop_a" --meta "target.strait=$strait_addr" \
    --meta "target.cross-zone=$cross_addr" --meta "target.haproxy=$hap_a_addr" \
    --meta "tool.command=bench/grpc-run.sh $args_given" \
    --meta "tool.machine=nproc $(nproc), $(cpu_model), load average at the end $(load_average)" \
    --meta "tool.haproxy=$haproxy_version" --meta "tool.go=$(GOTOOLCHAIN=local go version)" \
    --meta "tool.grpc-load=$grpc_load" --meta "tool.interop-server=$interop_server"
} > "$out.md"
cp "$out.json" target/bench/grpc-latest.json
cp "$out.md" target/bench/grpc-latest.md
cat "$out.md"
failed=$(python3 -c 'import json, sys; s = json.load(open(sys.argv[1])); print(s["failed_calls"] + s["dropped_calls"])' "$out.json")
if [ "$failed" != 0 ]; then
  echo "$failed measured calls failed or were dropped: see the report; logs kept" >&2
  exit 1
fi
status_ok=1
echo "report written to $out.md and $out.json (latest: target/bench/grpc-latest.*)" >&2
