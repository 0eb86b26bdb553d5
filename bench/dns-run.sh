#!/usr/bin/env bash
# Zone DNS (docs/benchmarks.md, "DNS: zone server vs NSD"): dnsperf against a zone control
# plane's DNS server (`strait up --zones a --demo`) and against NSD serving an equivalent static
# zone (the same names, records and TTL, generated from `strait services`), interleaved in one
# run. Each server is pinned to CPU 1 and dnsperf to CPU 0 (taskset), so neither steals the
# other's core. Two loads per round: as fast as the server answers (queries per second, and the
# latency at that load), and a fixed 10,000 queries/s (latency when not saturated).
#
#   bench/dns-run.sh [--duration 10] [--rounds 3] [--rate 10000] [--keep]
#
# Installs dnsperf and nsd (apt-get, as root) if missing, builds `strait` in release mode, and
# writes the machine, the command and the tables to target/bench/dns-<UTC time>.md.
# Everything it starts is stopped when it ends, fails or is interrupted; all of it listens on
# loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
source "$root/bench/lib/common.sh"

duration=10 rounds=3 rate=10000 keep=0
args_given="$*"
while [ $# -gt 0 ]; do
  case $1 in
    --duration) duration=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
if [ "$(nproc)" -lt 2 ]; then
  echo "needs 2 CPUs: one for the server, one for dnsperf" >&2
  exit 1
fi

# --- Tools (idempotent) ---------------------------------------------------------------------
if ! command -v dnsperf >/dev/null || ! command -v nsd >/dev/null; then
  apt_install "dnsperf/nsd missing" dnsperf nsd
fi
NSD=$(command -v nsd || echo /usr/sbin/nsd)
cargo build --release -p strait
bin=$root/target/release/strait

stamp=$(date -u +%Y%m%dT%H%M%SZ)
work=$(mktemp -d /tmp/strait-dns-bench.XXXXXX)
out_dir=$root/target/bench
mkdir -p "$out_dir"
report=$out_dir/dns-$stamp.md
nsd_pid=""

cleanup() {
  [ -n "$nsd_pid" ] && kill "$nsd_pid" 2>/dev/null || true
  "$bin" down --dir "$work/fed" >/dev/null 2>&1 || true
  if [ "$keep" = 0 ]; then rm -rf "$work"; else echo "kept $work" >&2; fi
}
trap cleanup EXIT INT TERM

# --- The zone ------------------------------------------------------------------------------
up_args=(--dir "$work/fed" --zones a --demo)
# Cross-zone gateways play no part in DNS.
if "$bin" up --help 2>/dev/null | grep -q -- '--gateways'; then up_args+=(--gateways 0); fi
"$bin" up "${up_args[@]}" 2>"$work/up.log" || { cat "$work/up.log" >&2; exit 1; }
export STRAIT_CONFIG=$work/fed/config.yaml
read -r zone_pid zone_dns < <(python3 - "$work/fed/processes.json" <<'EOF'
import json, sys
zone = next(p for p in json.load(open(sys.argv[1])) if p["name"] == "zone-a")
print(zone["pid"], zone["addresses"]["dns"])
EOF
)
zone_ip=${zone_dns%:*} zone_port=${zone_dns##*:}
taskset -a -p -c 1 "$zone_pid" >/dev/null

# --- The same names for NSD, and the query list ----------------------------------------------
"$bin" services -o json >"$work/services.json"
mkdir -p "$work/nsd"
python3 - "$work/services.json" "$work" <<'EOF'
import json, sys
services, work = json.load(open(sys.argv[1])), sys.argv[2]
ttl = 5
zone = [
    f"$TTL {ttl}",
    "@ IN SOA ns.dns.clusterset.local. hostmaster.clusterset.local. 1 7200 1800 86400 5",
    "@ IN NS ns.dns.clusterset.local.",
]
queries = []
for s in services:
    vip = s["vips"].get("a")
    if not vip:
        continue
    base = f"{s['name']}.{s['namespace']}.svc"
    zone.append(f"{base} IN A {vip}")
    queries.append(f"{base}.clusterset.local A")
    for p in s["ports"]:
        if p.get("name"):
            zone.append(f"_{p['name']}._tcp.{base} IN SRV 0 100 {p['port']} {base}.clusterset.local.")
            queries.append(f"_{p['name']}._tcp.{base}.clusterset.local SRV")
# One negative answer (NXDOMAIN) and one NODATA for every few positive ones.
queries += ["nope.demo.svc.clusterset.local A", "echo.demo.svc.clusterset.local AAAA"]
open(f"{work}/nsd/clusterset.local.zone", "w").write("\n".join(zone) + "\n")
open(f"{work}/queries.txt", "w").write("\n".join(queries) + "\n")
EOF
nsd_port=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/nsd/nsd.conf" <<EOF
server:
  ip-address: 127.0.0.1@$nsd_port
  server-count: 1
  do-ip6: no
  username: ""
  chroot: ""
  zonesdir: "$work/nsd"
  zonelistfile: "$work/nsd/zone.list"
  database: ""
  pidfile: "$work/nsd/nsd.pid"
  xfrdfile: "$work/nsd/xfrd.state"
  xfrdir: "$work/nsd"
  logfile: "$work/nsd/nsd.log"
  verbosity: 0
  # Debian builds NSD with response rate limiting (200/s per client by default): it would
  # drop the load generator's queries. The zone server has no such limit.
  rrl-ratelimit: 0
  rrl-whitelist-ratelimit: 0
remote-control:
  control-enable: no
zone:
  name: clusterset.local
  zonefile: clusterset.local.zone
EOF
taskset -c 1 "$NSD" -d -c "$work/nsd/nsd.conf" >"$work/nsd/stdout.log" 2>&1 &
nsd_pid=$!

# Both must answer the same before anything is measured.
for i in $(seq 1 50); do
  dig +short +tries=1 +time=1 @127.0.0.1 -p "$nsd_port" echo.demo.svc.clusterset.local >/dev/null 2>&1 && break
  sleep 0.1
done
for q in "echo.demo.svc.clusterset.local A" "_http._tcp.echo.demo.svc.clusterset.local SRV"; do
  # shellcheck disable=SC2086
  a=$(dig +short @"$zone_ip" -p "$zone_port" $q) b=$(dig +short @127.0.0.1 -p "$nsd_port" $q)
  if [ "$a" != "$b" ] || [ -z "$a" ]; then
    echo "the servers disagree on $q: strait '$a', nsd '$b'" >&2
    exit 1
  fi
done
nx_a=$(dig @"$zone_ip" -p "$zone_port" nope.demo.svc.clusterset.local | grep -o 'status: [A-Z]*')
nx_b=$(dig @127.0.0.1 -p "$nsd_port" nope.demo.svc.clusterset.local | grep -o 'status: [A-Z]*')
[ "$nx_a" = "$nx_b" ] || { echo "NXDOMAIN differs: $nx_a / $nx_b" >&2; exit 1; }

# --- Runs ------------------------------------------------------------------------------------
# One dnsperf run: prints "qps avg_ms stddev_ms lost".
perf() { # server_ip port extra-args...
  local ip=$1 port=$2; shift 2
  taskset -c 0 dnsperf -s "$ip" -p "$port" -d "$work/queries.txt" -l "$duration" -T 1 "$@" \
    >"$work/last.txt" 2>&1
  awk '
    /Queries lost:/ { lost = $3 }
    /Queries per second:/ { qps = $4 }
    /Average Latency \(s\):/ { avg = $4 * 1000 }
    /Latency StdDev \(s\):/ { sd = $4 * 1000 }
    END { printf "%.0f %.3f %.3f %s\n", qps, avg, sd, lost }' "$work/last.txt"
}
results=$work/results.txt
: >"$results"
for r in $(seq 1 "$rounds"); do
  for server in strait nsd; do
    if [ $server = strait ]; then ip=$zone_ip port=$zone_port; else ip=127.0.0.1 port=$nsd_port; fi
    echo "round $r: $server, max load" >&2
    echo "$server max $(perf "$ip" "$port" -c 8 -q 500)" >>"$results"
    echo "round $r: $server, $rate/s" >&2
    echo "$server fixed $(perf "$ip" "$port" -c 8 -q 500 -Q "$rate")" >>"$results"
  done
done
zone_cpu=$(ps -o cputime= -p "$zone_pid" | tr -d ' ')
zone_rss=$(awk '/VmRSS/ {print $2 " " $3}' "/proc/$zone_pid/status")

# --- Report ----------------------------------------------------------------------------------
{
  echo "# DNS: zone server vs NSD (run $stamp)"
  echo
  echo '```'
  echo "bench/dns-run.sh $args_given"
  echo "  dnsperf -s IP -p PORT -d queries.txt -l $duration -T 1 -c 8 -q 500 [-Q $rate]   (taskset -c 0)"
  echo "  servers: strait zone run (zone a of strait up --demo), nsd $("$NSD" -v 2>&1 | head -1 | awk '{print $NF}') server-count 1   (taskset -c 1)"
  echo '```'
  echo
  echo "Machine: $(nproc) CPUs, $(cpu_model), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
  echo "Commit: $(head_commit)$(git diff --quiet 2>/dev/null || echo ' plus the working tree')"
  echo
  echo "Queries (cycled): $(wc -l <"$work/queries.txt") — $(paste -sd, "$work/queries.txt" | sed 's/,/; /g')"
  echo
  echo "| server | load | queries/s (each round) | median queries/s | avg latency ms (median) | stddev ms | lost |"
  echo "|---|---|---|---|---|---|---|"
  for server in strait nsd; do
    for load in max fixed; do
      awk -v s=$server -v l=$load -v rate="$rate" '
        $1 == s && $2 == l { n++; q[n] = $3; a[n] = $4; d[n] = $5; lost += $6; all = all (all ? ", " : "") $3 }
        END {
          # medians (n is small: sort by insertion)
          for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) {
            if (q[j] < q[i]) { t = q[i]; q[i] = q[j]; q[j] = t }
            if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
            if (d[j] < d[i]) { t = d[i]; d[i] = d[j]; d[j] = t }
          }
          m = int((n + 1) / 2)
          printf "| %s | %s | %s | %d | %.3f | %.3f | %d |\n", s, (l == "max" ? "as fast as it answers" : rate "/s"), all, q[m], a[m], d[m], lost
        }' "$results"
    done
  done
  echo
  median() { awk -v s="$1" '$1 == s && $2 == "max" { print $3 }' "$results" | sort -n |
    awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
  echo "Ratio (median queries/s at max load): strait / nsd = $(awk -v a="$(median strait)" -v b="$(median nsd)" 'BEGIN { printf "%.2f", a / b }')"
  echo
  echo "Zone control plane after the run: CPU time $zone_cpu, VmRSS $zone_rss."
} >"$report"
cat "$report"
echo "report: $report" >&2
