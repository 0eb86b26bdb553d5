#!/usr/bin/env bash
# Sidecar data plane (docs/benchmarks.md, "Sidecar: added latency, memory, CPU"): latency of
# 1 KB responses at a fixed 1,000 requests/s over three paths to the same nginx, interleaved in
# one run: direct; through a Strait sidecar pair (client sidecar VIP → mTLS → echo sidecar);
# through a haproxy pair doing the same mutual TLS. Also VmRSS of each sidecar idle and under
# load, and CPU seconds per 1,000 requests of each proxy pair.
#
#   bench/sidecar-run.sh [--duration 20s] [--warmup 5s] [--rounds 3] [--rate 1000]
#                        [--connections 8] [--perf 10] [--binary PATH] [--keep] [--hold]
#
# Installs haproxy and nginx (apt-get, as root) and oha (`cargo install oha --locked`) if they
# are missing, builds `strait` in release mode (or, with `--binary PATH`, runs that binary
# instead: e.g. one built with other profile settings), runs the benchmark, and writes the
# machine, the command and the tables to target/bench/sidecar-<UTC time>.md. With `--perf N`,
# one more Strait run records N seconds of `perf record -g` on both sidecars and adds the top
# symbols. With `--hold`, it sets everything up, prints the addresses and pids, and waits
# without measuring until interrupted: for A/B runs and `perf` by hand (bench/sidecar/legs.py).
#
# Everything it starts (the federation, both sidecars, nginx, both haproxy) is stopped when it
# ends, fails or is interrupted; all of it listens on loopback only.
set -euo pipefail
start_dir=$PWD
cd "$(dirname "$0")/.."
root=$PWD
source "$root/bench/lib/common.sh"

duration=20s warmup=5s rounds=3 rate=1000 connections=8 perf_secs=0 keep=0 hold=0 binary=""
args_given="$*"
while [ $# -gt 0 ]; do
  case $1 in
    --duration) duration=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --perf) perf_secs=$2; shift 2 ;;
    --binary) binary=$(cd "$start_dir" && realpath -- "$2"); shift 2 ;;
    --keep) keep=1; shift ;;
    --hold) hold=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

# --- Tools (idempotent) ---------------------------------------------------------------------
if ! command -v haproxy >/dev/null || ! command -v nginx >/dev/null; then
  apt_install "haproxy/nginx missing" haproxy nginx
fi
ensure_oha
if [ -z "$binary" ]; then
  cargo build --release -p strait
  binary=target/release/strait
fi
helper="python3 $root/bench/sidecar/sidecar_bench.py"

# --- Addresses (loopback only; out of the way of `strait up`'s 127.0.0.1 ports) -------------
app_port=18480                      # nginx's port, hence the VIP port of `echo`
nginx_addr=127.0.61.1:$app_port
echo_inbound=127.0.61.1:15008 echo_admin=127.0.61.1:15000
client_inbound=127.0.62.1:15008 client_admin=127.0.62.1:15000
hap_a_addr=127.0.63.1:$app_port     # plain HTTP in, TLS with a client certificate out
hap_b_addr=127.0.64.1:18443         # TLS in requiring a client certificate, plain HTTP out

run_dir=$(mktemp -d "${TMPDIR:-/tmp}/strait-sidecar-run-XXXXXX")
fed=$run_dir/fed
# A copy, so that a rebuild of target/ during the run does not mix binaries.
cp "$binary" "$run_dir/strait"
strait=$run_dir/strait
started=()        # pids of what this script started (not the federation: `strait down`)
load_pid=""
status_ok=0

install_traps stop_everything   # stops all of the above, load step and federation included

require_free_addresses "$nginx_addr" "$echo_inbound" "$echo_admin" "$client_inbound" \
  "$client_admin" "$hap_a_addr" "$hap_b_addr"

# --- Certificates for the haproxy pair (own CA) -----------------------------------------------
certs=$run_dir/certs
make_haproxy_certs "$certs" "" a b

# --- nginx: 1 KB answer -----------------------------------------------------------------------
start_nginx_1kb "$nginx_addr"

# --- haproxy pair -----------------------------------------------------------------------------
# Two processes, like the two sidecars. Between them HTTP/2 over mutual TLS (as between Strait
# sidecars), upstream connections pooled (`http-reuse always`); HTTP/1.1 keep-alive to nginx.
cat > "$run_dir/haproxy-a.cfg" <<EOF
$haproxy_http_defaults
frontend a_in
  bind $hap_a_addr
  default_backend to_b
backend to_b
  server b $hap_b_addr ssl alpn h2 crt $certs/a.pem ca-file $certs/ca.pem verify required verifyhost haproxy-b sni str(haproxy-b)
EOF
cat > "$run_dir/haproxy-b.cfg" <<EOF
$haproxy_http_defaults
frontend b_in
  bind $hap_b_addr ssl crt $certs/b.pem ca-file $certs/ca.pem verify required alpn h2,http/1.1
  default_backend to_app
backend to_app
  server app $nginx_addr
EOF
haproxy -db -f "$run_dir/haproxy-b.cfg" > "$run_dir/haproxy-b.log" 2>&1 &
hap_b_pid=$!
started+=("$hap_b_pid")
haproxy -db -f "$run_dir/haproxy-a.cfg" > "$run_dir/haproxy-a.log" 2>&1 &
hap_a_pid=$!
started+=("$hap_a_pid")

# --- Strait: global + zone a, two sidecars ----------------------------------------------------
"$strait" up --dir "$fed" --zones a > "$run_dir/up.log" 2>&1
export STRAIT_CONFIG=$fed/config.yaml
zone_api=$(fed_field zone a api)
"$strait" token workload --zone a --namespace demo --service echo > "$run_dir/echo.token"
"$strait" token workload --zone a --namespace demo --service client > "$run_dir/client.token"
"$strait" sidecar run --zone-cp "$zone_api" --zone a --token-file "$run_dir/echo.token" \
  --service echo --namespace demo --instance echo-v1-a --app "$nginx_addr" \
  --inbound "$echo_inbound" --admin "$echo_admin" --outbound none \
  --bundle-file "$fed/admin/bundle.pem" --data-dir "$run_dir/echo-data" \
  > "$run_dir/echo-sidecar.log" 2>&1 &
echo_pid=$!
started+=("$echo_pid")
"$strait" sidecar run --zone-cp "$zone_api" --zone a --token-file "$run_dir/client.token" \
  --service client --namespace demo --instance client-a \
  --inbound "$client_inbound" --admin "$client_admin" --outbound vips \
  --bundle-file "$fed/admin/bundle.pem" --data-dir "$run_dir/client-data" \
  > "$run_dir/client-sidecar.log" 2>&1 &
client_pid=$!
started+=("$client_pid")

wait_for 30 curl -fsS "http://$echo_admin/ready"
wait_for 30 curl -fsS "http://$client_admin/ready"
echo_vip() {
  "$strait" services -o json | python3 -c '
import json, sys
for s in json.load(sys.stdin):
    if s["name"] == "echo" and s["namespace"] == "demo" and s.get("vips", {}).get("a"):
        if any(z["zone"] == "a" and z["healthy"] > 0 for z in s["zones"]):
            print(s["vips"]["a"]); break'
}
have_vip() { [ -n "$(echo_vip)" ]; }
wait_for 30 have_vip
vip=$(echo_vip)
vip=${vip%%/*}
strait_addr=$vip:$app_port

# Each path must answer 200 with the 1,024-byte body before anything is measured.
wait_for 10 serves_1kb "$nginx_addr"
wait_for 10 serves_1kb "$hap_a_addr"
wait_for 30 serves_1kb "$strait_addr"
echo "paths: direct $nginx_addr, strait $strait_addr (VIP of demo/echo), haproxy $hap_a_addr" >&2

procs="client-sidecar=$client_pid,echo-sidecar=$echo_pid,haproxy-a=$hap_a_pid,haproxy-b=$hap_b_pid,nginx=$nginx_pid"
if [ "$hold" = 1 ]; then hold_until_interrupted "$procs"; fi
records=$run_dir/records.jsonl
declare -A target=([direct]=$nginx_addr [strait]=$strait_addr [haproxy]=$hap_a_addr)

# Idle memory: everything ready, the one check request above served, then 3 s of nothing.
sleep 3
$helper rss --procs "$procs" > "$run_dir/idle-rss.json"

load() { # phase round path duration
  run_load $helper sample --procs "$procs" --record "$records" --oha-json "$run_dir/oha-$1-$2-$3.json" \
    --round "$2" --path "$3" --phase "$1" -- \
    oha -z "$4" -q "$rate" -c "$connections" --latency-correction --no-tui \
    --output-format json "http://${target[$3]}/"
}

for path in direct strait haproxy; do
  echo "warm-up $path ($warmup)" >&2
  load warmup 0 "$path" "$warmup"
done
order=(direct strait haproxy)
for round in $(seq 1 "$rounds"); do
  for path in "${order[@]}"; do
    echo "round $round: $path ($duration at $rate/s, $connections connections)" >&2
    load measure "$round" "$path" "$duration"
  done
  order=("${order[@]:1}" "${order[0]}")   # rotate, so no path always follows the same one
done

sleep 3
$helper rss --procs "$procs" > "$run_dir/idle-rss-after.json"

perf_report=""
if [ "$perf_secs" != 0 ] && command -v perf >/dev/null; then
  echo "perf: $perf_secs s of Strait load" >&2
  # One recording per sidecar, so that each report is that process alone.
  perf_pids=()
  for who in client echo; do
    pid_var=${who}_pid
    perf record -F 999 -g -o "$run_dir/perf-$who.data" -p "${!pid_var}" -- sleep "$perf_secs" \
      > "$run_dir/perf-record-$who.log" 2>&1 &
    perf_pids+=($!)
    started+=($!)
  done
  load perf 0 strait "${perf_secs}s"
  for pid in "${perf_pids[@]}"; do wait "$pid" || true; done
  perf_report=$run_dir/perf-report.txt
  for who in client echo; do
    ( set +eo pipefail
      echo "== $who sidecar: self time by shared object"
      perf report -i "$run_dir/perf-$who.data" --no-children --sort dso --stdio -g none \
        2>/dev/null | grep -E '^ +[0-9]' | head -6
      echo "== $who sidecar: self time by symbol (>= 1 %)"
      perf report -i "$run_dir/perf-$who.data" --no-children --sort dso,sym --stdio -g none \
        --percent-limit 1 2>/dev/null | grep -E '^ +[0-9]' | head -25
      true )
  done > "$perf_report"
fi

mkdir -p target/bench
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=target/bench/sidecar-$stamp.md
{
  echo "Run $stamp, commit $(head_commit), binary $binary"
  echo
  echo '```'
  echo "\$ bench/sidecar-run.sh $args_given"
  machine_lines
  echo "$(oha --version); $(haproxy_version); $(nginx -v 2>&1)"
  echo "oha -z $duration -q $rate -c $connections --latency-correction, keep-alive; warm-up $warmup per path"
  echo '```'
  echo
  $helper report --records "$records" --idle-rss "$run_dir/idle-rss.json" \
    --idle-rss-after "$run_dir/idle-rss-after.json"
  if [ -n "$perf_report" ]; then
    echo
    echo '```'
    cat "$perf_report"
    echo '```'
  fi
} > "$out"
status_ok=1
echo "report written to $out" >&2
