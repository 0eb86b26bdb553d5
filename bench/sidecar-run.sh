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
  if [ "$(id -u)" != 0 ]; then
    echo "haproxy/nginx missing: run as root, or apt-get install haproxy nginx" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy nginx
fi
export PATH="$HOME/.cargo/bin:$PATH"
if ! oha --version >/dev/null 2>&1; then
  cargo install oha --locked
fi
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

stop_everything() {
  local status=$?
  trap - EXIT INT TERM
  if [ -n "$load_pid" ]; then   # a load step in progress: oha (its child), then the sampler
    pkill -TERM -P "$load_pid" 2>/dev/null || true
    kill -TERM "$load_pid" 2>/dev/null || true
  fi
  for pid in "${started[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 30); do
    local alive=0
    for pid in "${started[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for pid in "${started[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  if [ -f "$fed/processes.json" ]; then
    "$strait" down --dir "$fed" >/dev/null 2>&1 || true
    for pid in $(grep -o '"pid": *[0-9]*' "$fed/processes.json" | grep -o '[0-9]*$'); do
      kill -0 "$pid" 2>/dev/null && kill -KILL -- "-$pid" 2>/dev/null || true
    done
  fi
  if [ "$keep" = 1 ] || [ "$status_ok" = 0 ]; then
    echo "data and logs kept in $run_dir" >&2
  else
    rm -rf "$run_dir"
  fi
  exit "$status"
}
trap stop_everything EXIT
trap 'echo "bench/sidecar-run.sh: failed at line $LINENO: $BASH_COMMAND" >&2' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

for addr in $nginx_addr $echo_inbound $echo_admin $client_inbound $client_admin $hap_a_addr $hap_b_addr; do
  if ss -Htln "sport = :${addr##*:}" | grep -q "${addr%:*}:${addr##*:}"; then
    echo "$addr is already in use" >&2
    exit 1
  fi
done

# Polls a command until it succeeds, at most $1 seconds.
wait_for() {
  local secs=$1; shift
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then echo "timed out waiting for: $*" >&2; return 1; fi
    sleep 0.2
  done
}

# --- Certificates for the haproxy pair (own CA, ECDSA P-256 like Strait's) ------------------
certs=$run_dir/certs
mkdir -p "$certs"
(
  cd "$certs"
  ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
  openssl req -x509 $ec -keyout ca.key -out ca.pem -days 2 -subj /CN=bench-ca 2>/dev/null
  for who in a b; do
    openssl req $ec -keyout $who.key -out $who.csr -subj "/CN=haproxy-$who" 2>/dev/null
    printf 'subjectAltName=DNS:haproxy-%s\n' $who > $who.ext
    openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
      -extfile $who.ext -out $who.crt 2>/dev/null
    cat $who.crt $who.key > $who.pem
  done
)

# --- nginx: 1 KB answer -----------------------------------------------------------------------
body=$(head -c 1024 /dev/zero | tr '\0' 'x')
mkdir -p "$run_dir/nginx"
cat > "$run_dir/nginx/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $run_dir/nginx/nginx.pid;
error_log $run_dir/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $run_dir/nginx;
  proxy_temp_path $run_dir/nginx;
  fastcgi_temp_path $run_dir/nginx;
  uwsgi_temp_path $run_dir/nginx;
  scgi_temp_path $run_dir/nginx;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  server {
    listen $nginx_addr;
    location / { default_type text/plain; return 200 "$body"; }
  }
}
EOF
nginx -c "$run_dir/nginx/nginx.conf" -p "$run_dir/nginx" > "$run_dir/nginx/stdout.log" 2>&1 &
nginx_pid=$!
started+=("$nginx_pid")

# --- haproxy pair -----------------------------------------------------------------------------
# Two processes, like the two sidecars. Between them HTTP/2 over mutual TLS (as between Strait
# sidecars), upstream connections pooled (`http-reuse always`); HTTP/1.1 keep-alive to nginx.
hap_common="global
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
  option http-keep-alive
  http-reuse always
"
cat > "$run_dir/haproxy-a.cfg" <<EOF
$hap_common
frontend a_in
  bind $hap_a_addr
  default_backend to_b
backend to_b
  server b $hap_b_addr ssl alpn h2 crt $certs/a.pem ca-file $certs/ca.pem verify required verifyhost haproxy-b sni str(haproxy-b)
EOF
cat > "$run_dir/haproxy-b.cfg" <<EOF
$hap_common
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
zone_api=$(python3 -c '
import json, sys
for p in json.load(open(sys.argv[1])):
    if p.get("kind") == "zone" and p.get("zone") == "a":
        print(p["addresses"]["api"])' "$fed/processes.json")
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
check() { [ "$(curl -s -o /dev/null -w '%{http_code} %{size_download}' "http://$1/")" = "200 1024" ]; }
wait_for 10 check "$nginx_addr"
wait_for 10 check "$hap_a_addr"
wait_for 30 check "$strait_addr"
echo "paths: direct $nginx_addr, strait $strait_addr (VIP of demo/echo), haproxy $hap_a_addr" >&2

procs="client-sidecar=$client_pid,echo-sidecar=$echo_pid,haproxy-a=$hap_a_pid,haproxy-b=$hap_b_pid,nginx=$nginx_pid"
if [ "$hold" = 1 ]; then
  echo "holding (Ctrl-C stops everything); pids: $procs" >&2
  sleep infinity &
  started+=($!)
  wait $!
fi
records=$run_dir/records.jsonl
declare -A target=([direct]=$nginx_addr [strait]=$strait_addr [haproxy]=$hap_a_addr)

# Idle memory: everything ready, the one check request above served, then 3 s of nothing.
sleep 3
$helper rss --procs "$procs" > "$run_dir/idle-rss.json"

# In the background and waited for, so that a signal stops the run at once, not after the step.
load() { # phase round path duration
  $helper sample --procs "$procs" --record "$records" --oha-json "$run_dir/oha-$1-$2-$3.json" \
    --round "$2" --path "$3" --phase "$1" -- \
    oha -z "$4" -q "$rate" -c "$connections" --latency-correction --no-tui \
    --output-format json "http://${target[$3]}/" &
  load_pid=$!
  wait "$load_pid"
  load_pid=""
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
  echo "Run $stamp, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), binary $binary"
  echo
  echo '```'
  echo "\$ bench/sidecar-run.sh $args_given"
  echo "nproc: $(nproc); $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')"
  echo "memory: $(free -g | awk '/^Mem:/ {print $2}') GiB"
  echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "$(oha --version); $(haproxy -v | head -1); $(nginx -v 2>&1)"
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
