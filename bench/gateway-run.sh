#!/usr/bin/env bash
# East-west gateway (docs/benchmarks.md, "East-west gateway: cross-zone throughput, latency,
# time to first byte"). Three paths to the same apps, interleaved in one run:
#   direct   client → app
#   strait   client → zone a's client sidecar (VIP) → gateway a (HTTP/2 CONNECT, mTLS) → QUIC
#            → gateway b → zone b's sidecar of the app → app   (`strait up --zones a,b`, gateways
#            included, plus three sidecars of our own as `strait up --demo` starts them)
#   haproxy  client → haproxy 1 (plain→TLS) → 2 (TLS→TLS) → 3 (TLS→TLS) → 4 (TLS→plain) → app
# 1. one TCP stream's throughput (Gbit/s) and the proxies' CPU seconds per GB;
# 2. latency of 1 KB answers at a fixed 1,000 requests/s (oha), and CPU per request;
# 3. time to first byte of a new cross-zone connection over a 20 ms RTT link between two
#    network namespaces: a tunnel on the pooled QUIC connection vs fresh TCP+TLS
#    (`strait-bench-gateway ttfb`, two in-process gateways).
#
#   bench/gateway-run.sh [--rounds 3] [--bulk-seconds 8] [--duration 15s] [--warmup 3s]
#                        [--rate 1000] [--connections 8] [--ttfb-samples 200] [--keep]
#
# Installs haproxy, nginx and iproute2 (apt-get) and oha (`cargo install oha --locked`) if
# missing, builds `strait` and `strait-bench-gateway` in release mode, needs root (network
# namespaces), and writes the machine, the command and the tables to
# target/bench/gateway-<UTC time>.md. Everything it starts (the federation, the extra sidecars,
# nginx, the blast server, four haproxy, the namespaces and their link) is removed when it
# ends, fails or is interrupted.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
source "$root/bench/lib/common.sh"

rounds=3 bulk_secs=8 duration=15s warmup=3s rate=1000 connections=8 ttfb_samples=200 keep=0
args_given="$*"
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --bulk-seconds) bulk_secs=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --ttfb-samples) ttfb_samples=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
if [ "$(id -u)" != 0 ]; then echo "run as root (network namespaces, apt-get)" >&2; exit 1; fi

# --- Tools (idempotent) ---------------------------------------------------------------------
need=()
command -v haproxy >/dev/null || need+=(haproxy)
command -v nginx >/dev/null || need+=(nginx)
command -v ip >/dev/null || need+=(iproute2)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then apt_install "${need[*]} missing" "${need[@]}"; fi
ensure_oha
export CARGO_INCREMENTAL=0
cargo build --release -p strait -p strait-bench-gateway
helper="python3 $root/bench/gateway/gateway_bench.py"

# --- Addresses (loopback; out of the way of `strait up` and of its demo's fixed 127.1.{0,1}.x,
# which tests running beside this benchmark use) ----------------------------------------------
web_port=18580 bulk_port=18581      # the apps' ports, hence the VIP ports of `web` and `bulk`
app_ip=127.0.81.1
web_addr=$app_ip:$web_port bulk_addr=$app_ip:$bulk_port
web_inbound=127.0.84.1:15008 web_admin=127.0.84.1:15000     # zone b sidecars of the apps
bulk_inbound=127.0.84.2:15008 bulk_admin=127.0.84.2:15000
client_inbound=127.0.83.1:15008 client_admin=127.0.83.1:15000  # zone a's client sidecar
hap_ip=(127.0.82.1 127.0.82.2 127.0.82.3 127.0.82.4)        # haproxy 1..4
tls_http=18443 tls_tcp=18444                                 # TLS ports of haproxy 2..4
ns_a=sgwb-a ns_b=sgwb-b link_a=10.231.0.1 link_b=10.231.0.2

run_dir=$(mktemp -d "${TMPDIR:-/tmp}/strait-gateway-run-XXXXXX")
fed=$run_dir/fed
cp target/release/strait "$run_dir/strait"                  # a rebuild of target/ changes nothing
cp target/release/strait-bench-gateway "$run_dir/bench"
strait=$run_dir/strait bench=$run_dir/bench
started=()
load_pid=""
status_ok=0

# The link of step 3, after the federation is down (stop_everything runs this).
remove_namespaces() {
  ip netns del "$ns_a" 2>/dev/null || true
  ip netns del "$ns_b" 2>/dev/null || true
}
on_stop=remove_namespaces
install_traps stop_everything   # stops all of the above, load step and federation included

for ns in $ns_a $ns_b; do
  if ip netns list | grep -qw "$ns"; then echo "namespace $ns exists (another run?)" >&2; exit 1; fi
done
require_free_addresses "$web_addr" "$bulk_addr" "$web_inbound" "$web_admin" "$bulk_inbound" \
  "$bulk_admin" "$client_inbound" "$client_admin" "${hap_ip[0]}:$web_port" "${hap_ip[0]}:$bulk_port"

# --- Apps: nginx (1 KB answer) and the bulk source ------------------------------------------
start_nginx_1kb "$web_addr"
"$bench" blast-server --listen "$bulk_addr" > "$run_dir/blast-server.log" 2>&1 &
blast_pid=$!; started+=("$blast_pid")

# --- haproxy chain: 1 plain→TLS, 2 and 3 TLS→TLS, 4 TLS→plain (mutual TLS on every TLS leg) --
certs=$run_dir/certs
make_haproxy_certs "$certs" h 1 2 3 4
hap_global="global
  maxconn 4096
defaults
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
"
for i in 1 2 3 4; do
  ip=${hap_ip[$((i - 1))]}
  if [ $i = 1 ]; then
    bind_http="bind $ip:$web_port" bind_tcp="bind $ip:$bulk_port"
  else
    tls_in="ssl crt $certs/h$i.pem ca-file $certs/ca.pem verify required"
    bind_http="bind $ip:$tls_http $tls_in alpn h2,http/1.1" bind_tcp="bind $ip:$tls_tcp $tls_in"
  fi
  if [ $i = 4 ]; then
    to_http="server app $web_addr" to_tcp="server app $bulk_addr"
  else
    next=${hap_ip[$i]} n=$((i + 1))
    tls_out="ssl crt $certs/h$i.pem ca-file $certs/ca.pem verify required verifyhost haproxy-$n sni str(haproxy-$n)"
    to_http="server next $next:$tls_http $tls_out alpn h2" to_tcp="server next $next:$tls_tcp $tls_out"
  fi
  cat > "$run_dir/haproxy-$i.cfg" <<HAP
$hap_global
frontend http_in
  mode http
  option http-keep-alive
  $bind_http
  default_backend http_out
backend http_out
  mode http
  http-reuse always
  $to_http
frontend tcp_in
  mode tcp
  $bind_tcp
  default_backend tcp_out
backend tcp_out
  mode tcp
  $to_tcp
HAP
  haproxy -db -f "$run_dir/haproxy-$i.cfg" > "$run_dir/haproxy-$i.log" 2>&1 &
  hap_pid[$i]=$!; started+=("$!")
done

# --- Strait: global + zones a, b (a gateway each); client sidecar in a, web and bulk in b ---
"$strait" up --dir "$fed" --zones a,b > "$run_dir/up.log" 2>&1
export STRAIT_CONFIG=$fed/config.yaml
zone_a_api=$(fed_field zone a api) zone_b_api=$(fed_field zone b api)
for svc in web bulk; do
  "$strait" token workload --zone b --namespace demo --service $svc > "$run_dir/$svc.token"
done
"$strait" token workload --zone a --namespace demo --service client > "$run_dir/client.token"
"$strait" sidecar run --zone-cp "$zone_a_api" --zone a --token-file "$run_dir/client.token" \
  --service client --namespace demo --instance client-a \
  --inbound "$client_inbound" --admin "$client_admin" --outbound vips \
  --bundle-file "$fed/admin/bundle.pem" --data-dir "$run_dir/client-data" \
  > "$run_dir/client-sidecar.log" 2>&1 &
client_sc_pid=$!; started+=("$client_sc_pid")
"$strait" sidecar run --zone-cp "$zone_b_api" --zone b --token-file "$run_dir/web.token" \
  --service web --namespace demo --instance web-b --app "$web_addr" \
  --inbound "$web_inbound" --admin "$web_admin" --outbound none \
  --bundle-file "$fed/admin/bundle.pem" --data-dir "$run_dir/web-data" \
  > "$run_dir/web-sidecar.log" 2>&1 &
web_sc_pid=$!; started+=("$web_sc_pid")
"$strait" sidecar run --zone-cp "$zone_b_api" --zone b --token-file "$run_dir/bulk.token" \
  --service bulk --namespace demo --instance bulk-b --app "$bulk_addr" \
  --inbound "$bulk_inbound" --admin "$bulk_admin" --outbound none \
  --bundle-file "$fed/admin/bundle.pem" --data-dir "$run_dir/bulk-data" \
  > "$run_dir/bulk-sidecar.log" 2>&1 &
bulk_sc_pid=$!; started+=("$bulk_sc_pid")
wait_for 30 curl -fsS "http://$web_admin/ready"
wait_for 30 curl -fsS "http://$bulk_admin/ready"
wait_for 30 curl -fsS "http://$client_admin/ready"

vip_in_a() { # service → its VIP in zone a, once zone b serves it
  "$strait" services -o json | python3 -c '
import json, sys
for s in json.load(sys.stdin):
    if s["name"] == sys.argv[1] and s["namespace"] == "demo" and s.get("vips", {}).get("a"):
        if any(z["zone"] == "b" and z["healthy"] > 0 for z in s["zones"]):
            print(s["vips"]["a"].split("/")[0]); break' "$1"
}
have_vips() { [ -n "$(vip_in_a web)" ] && [ -n "$(vip_in_a bulk)" ]; }
wait_for 60 have_vips
web_vip=$(vip_in_a web):$web_port bulk_vip=$(vip_in_a bulk):$bulk_port

wait_for 10 serves_1kb "$web_addr"
wait_for 10 serves_1kb "${hap_ip[0]}:$web_port"
wait_for 60 serves_1kb "$web_vip"
blast_ok() { "$bench" blast-client --connect "$1" --seconds 0.2; }
wait_for 10 blast_ok "$bulk_addr"
wait_for 10 blast_ok "${hap_ip[0]}:$bulk_port"
wait_for 60 blast_ok "$bulk_vip"
echo "paths: direct $web_addr/$bulk_addr, strait $web_vip/$bulk_vip, haproxy ${hap_ip[0]}" >&2
gateway_a_admin=$(fed_field gateway a admin)

fedprocs=$($helper pids --processes "$fed/processes.json")
procs="$fedprocs,client-a-sidecar=$client_sc_pid,web-sidecar=$web_sc_pid,bulk-sidecar=$bulk_sc_pid,haproxy-1=${hap_pid[1]},haproxy-2=${hap_pid[2]},haproxy-3=${hap_pid[3]},haproxy-4=${hap_pid[4]},nginx=$nginx_pid,blast-server=$blast_pid"
records=$run_dir/records.jsonl
declare -A web_target=([direct]=$web_addr [strait]=$web_vip [haproxy]=${hap_ip[0]}:$web_port)
declare -A bulk_target=([direct]=$bulk_addr [strait]=$bulk_vip [haproxy]=${hap_ip[0]}:$bulk_port)

step() { # kind phase round path -- command...
  local kind=$1 phase=$2 round=$3 path=$4; shift 5
  run_load $helper sample --procs "$procs" --record "$records" --kind "$kind" --phase "$phase" \
    --round "$round" --path "$path" --out "$run_dir/$kind-$phase-$round-$path.out" -- "$@"
}

# --- 1 + 2: bulk and latency, paths rotated each round ---------------------------------------
for path in direct strait haproxy; do
  echo "warm-up $path" >&2
  step bulk warmup 0 "$path" -- "$bench" blast-client --connect "${bulk_target[$path]}" --seconds 2
  step latency warmup 0 "$path" -- oha -z "$warmup" -q "$rate" -c "$connections" \
    --latency-correction --no-tui --output-format json "http://${web_target[$path]}/"
done
order=(direct strait haproxy)
for round in $(seq 1 "$rounds"); do
  for path in "${order[@]}"; do
    echo "round $round: $path bulk (${bulk_secs}s), latency ($duration at $rate/s)" >&2
    step bulk measure "$round" "$path" -- "$bench" blast-client --connect "${bulk_target[$path]}" \
      --seconds "$bulk_secs"
    step latency measure "$round" "$path" -- oha -z "$duration" -q "$rate" -c "$connections" \
      --latency-correction --no-tui --output-format json "http://${web_target[$path]}/"
  done
  order=("${order[@]:1}" "${order[0]}")
done

# The Strait steps really crossed zones: zone a's gateway counted their tunnels.
curl -fsS "http://$gateway_a_admin/metrics" | grep '^strait_gateway_tunnels_total' \
  > "$run_dir/gateway-a-tunnels.txt" || true
# The federation is not needed any more: stop it, so that it does not take CPU from step 3.
"$strait" down --dir "$fed" > /dev/null 2>&1 || true

# --- 3: time to first byte over a 20 ms RTT link ----------------------------------------------
# This kernel has no sch_netem (tc netem: "Specified qdisc kind is unknown"), so the link is
# two TUN devices and bench/gateway/wan_link.py, which delays every packet 10 ms each way.
ip netns add $ns_a
ip netns add $ns_b
ip -n $ns_a tuntap add dev sgwb-ta mode tun
ip -n $ns_b tuntap add dev sgwb-tb mode tun
ip -n $ns_a addr add $link_a/24 dev sgwb-ta
ip -n $ns_b addr add $link_b/24 dev sgwb-tb
for ns in $ns_a $ns_b; do ip -n $ns link set lo up; done
ip -n $ns_a link set sgwb-ta up
ip -n $ns_b link set sgwb-tb up
python3 "$root/bench/gateway/wan_link.py" --ns-a $ns_a --tun-a sgwb-ta --ns-b $ns_b \
  --tun-b sgwb-tb --delay-ms 10 > "$run_dir/wan-link.log" 2>&1 &
started+=("$!")
sleep 0.5
echo "time to first byte: $ttfb_samples samples per way over 20 ms RTT" >&2
run_load "$bench" ttfb --ns-a $ns_a --ns-b $ns_b --addr-a $link_a --addr-b $link_b \
  --samples "$ttfb_samples" --json "$run_dir/ttfb.json" > "$run_dir/ttfb.txt" 2> "$run_dir/ttfb.log"

mkdir -p target/bench
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=target/bench/gateway-$stamp.md
{
  echo "Run $stamp, commit $(head_commit)"
  echo
  echo '```'
  echo "\$ bench/gateway-run.sh $args_given"
  machine_lines "; kernel $(uname -r)"
  echo "$(oha --version); $(haproxy_version); $(nginx -v 2>&1)"
  echo "bulk: ${bulk_secs}s per step; latency: oha -z $duration -q $rate -c $connections --latency-correction; $rounds rounds"
  echo "zone a's gateway after the Strait steps:"
  cat "$run_dir/gateway-a-tunnels.txt"
  echo '```'
  echo
  $helper report --records "$records" --ttfb "$run_dir/ttfb.json"
} > "$out"
cat "$out"
status_ok=1
echo "report written to $out" >&2
