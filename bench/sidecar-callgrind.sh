#!/usr/bin/env bash
# Instructions per request of the sidecar pair and of the haproxy pair, counted with callgrind
# (docs/benchmarks.md, "After: instructions per request, counted"): the method done by hand
# there, automated. The sidecars' counts repeat to about ±0.3 % from run to run; haproxy's jump
# when one of its threads opens a new upstream connection (a TLS handshake) in the counted
# window, which the report measures and warns about.
#
#   bench/sidecar-callgrind.sh [--binary PATH] [--commit NAME] [--warmup 300] [--requests 1000]
#                              [--rate 50] [--connections 8] [--keep]
#
# 1. `bench/sidecar-run.sh --hold --binary PATH` sets up the federation, the two sidecars,
#    nginx and the haproxy pair, and waits.
# 2. Each of the two sidecars and the two haproxy processes is stopped and started again, with
#    its own command line, environment and working directory (/proc/PID/{cmdline,environ,cwd}),
#    under `valgrind --tool=callgrind --instr-atstart=no`; then every path must answer 200
#    with the 1,024-byte body again.
# 3. Per pair: `--warmup` requests (oha -n 300 -q 50 -c 8), `callgrind_control -z` and `-i on`
#    on both processes, exactly `--requests` requests (oha -n 1000 -q 50 -c 8; every answer
#    must be a 200), `callgrind_control -d` and `-i off`. The sidecar pair first, then haproxy.
# 4. Instructions per request = the dump's total Ir / requests, per process and per pair, and
#    the ratio Strait pair / haproxy pair. Written to target/bench/sidecar-callgrind-<UTC
#    time>.{json,md} and copied to target/bench/sidecar-callgrind-latest.{json,md}; the dumps
#    are kept in target/bench/sidecar-callgrind-<UTC time>/ for `callgrind_annotate
#    --inclusive=yes` (the report lists each sidecar's top functions).
#
# Without --binary it builds `strait` in release mode here and counts that (commit: HEAD of this
# checkout). With --binary, --commit names the build in the report (else "unknown"). Only
# user-space instructions are counted; the kernel's share is not in these numbers.
#
# Everything it starts (via sidecar-run.sh: the federation, nginx; itself: the processes under
# valgrind) is stopped when it ends, fails or is interrupted. It listens on loopback only, on the
# addresses of bench/sidecar-run.sh, so it cannot run next to that script or a second copy.
set -Eeuo pipefail
start_dir=$PWD
cd "$(dirname "$0")/.."
root=$PWD
source "$root/bench/lib/common.sh"

binary="" commit="" warmup=300 requests=1000 rate=50 connections=8 keep=0
args_given="$*"
while [ $# -gt 0 ]; do
  case $1 in
    --binary) [ $# -ge 2 ] || { echo "--binary needs a path" >&2; exit 2; }
              binary=$(binary_path "$start_dir" "$2") || exit 2; shift 2 ;;
    --commit) commit=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --requests) requests=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

# --- Validate, then act -----------------------------------------------------------------------
require_positive_ints warmup requests rate connections
require_tools "(apt-get install valgrind curl python3)" valgrind callgrind_control callgrind_annotate curl python3 sha256sum
resolve_binary --bin strait
helper="python3 $root/bench/sidecar/callgrind_report.py"
export PATH="$HOME/.cargo/bin:$PATH"

work=$(mktemp -d "${TMPDIR:-/tmp}/strait-sidecar-callgrind-XXXXXX")
hold_pid="" run_dir="" status_ok=0
declare -A vg_pid=()     # name -> pid of the process this script runs under valgrind

stop_valgrind_and_hold() {
  local status=$?
  trap - EXIT INT TERM ERR
  # Our valgrind processes first (a sidecar stops on SIGTERM, callgrind writes its last dump).
  for name in "${!vg_pid[@]}"; do kill -TERM "${vg_pid[$name]}" 2>/dev/null || true; done
  for _ in $(seq 1 100); do
    local alive=0
    for name in "${!vg_pid[@]}"; do kill -0 "${vg_pid[$name]}" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for name in "${!vg_pid[@]}"; do kill -KILL "${vg_pid[$name]}" 2>/dev/null || true; done
  # Then sidecar-run.sh: on SIGTERM it stops the federation, nginx and what is left of its own.
  if [ -n "$hold_pid" ] && kill -0 "$hold_pid" 2>/dev/null; then
    kill -TERM "$hold_pid" 2>/dev/null || true
    for _ in $(seq 1 300); do kill -0 "$hold_pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$hold_pid" 2>/dev/null && echo "bench/sidecar-run.sh (pid $hold_pid) did not stop" >&2
  fi
  if [ "$keep" = 0 ] && [ "$status_ok" = 1 ]; then
    rm -rf "$work"
    # sidecar-run.sh keeps its directory when interrupted, which --hold always is.
    case $run_dir in "${TMPDIR:-/tmp}"/strait-sidecar-run-*) rm -rf "$run_dir" ;; esac
  else
    echo "logs kept in $work${run_dir:+ and $run_dir}" >&2
  fi
  exit "$status"
}
exec 3>&2   # stderr for messages from inside wait_for, whose output goes to /dev/null
install_traps stop_valgrind_and_hold
# wait_for's poll: each check costs the processes under valgrind far more than it does natively.
wait_for_poll=0.5

# --- 1. Setup: sidecar-run.sh --hold ------------------------------------------------------------
echo "setting up with bench/sidecar-run.sh --hold --binary $binary" >&2
bash "$root/bench/sidecar-run.sh" --hold --binary "$binary" > "$work/sidecar-run.log" 2>&1 &
hold_pid=$!
holding() { grep -q '^holding .*pids: ' "$work/sidecar-run.log"; }
# Generous: on a new machine sidecar-run.sh first installs haproxy, nginx and oha (~3 min).
deadline=$((SECONDS + 1200))
until holding; do
  if ! kill -0 "$hold_pid" 2>/dev/null; then
    echo "bench/sidecar-run.sh --hold failed; its output:" >&2
    tail -n 30 "$work/sidecar-run.log" >&2
    exit 1
  fi
  if [ $SECONDS -ge $deadline ]; then echo "bench/sidecar-run.sh --hold not ready after 1200 s" >&2; exit 1; fi
  sleep 1
done
require_tools "(cargo install oha --locked)" oha

declare -A pid=() addr=()
for kv in $(sed -n 's/^holding .*pids: //p' "$work/sidecar-run.log" | tr ',' ' '); do
  pid[${kv%%=*}]=${kv#*=}
done
paths_line=$(grep -m1 '^paths: ' "$work/sidecar-run.log")
addr[strait]=$(sed -E 's/.* strait ([0-9.]+:[0-9]+).*/\1/' <<< "$paths_line")
addr[haproxy]=$(sed -E 's/.* haproxy ([0-9.]+:[0-9]+).*/\1/' <<< "$paths_line")
for name in client-sidecar echo-sidecar haproxy-a haproxy-b; do
  [[ ${pid[$name]:-} =~ ^[0-9]+$ ]] || { echo "no pid for $name in: $(grep '^holding' "$work/sidecar-run.log")" >&2; exit 1; }
done
for p in strait haproxy; do
  [[ ${addr[$p]} =~ ^[0-9.]+:[0-9]+$ ]] || { echo "no $p address in: $paths_line" >&2; exit 1; }
done
run_dir=$(dirname "$(tr '\0' '\n' < "/proc/${pid[haproxy-a]}/cmdline" | grep -m1 'haproxy-a.cfg$')")
echo "sidecar-run.sh holds (run dir $run_dir): $paths_line" >&2

# --- 2. The four proxies again, under callgrind -------------------------------------------------
# Alive and not a zombie (sidecar-run.sh, their parent, reaps them when it gets to it).
running() { [ -e "/proc/$1/stat" ] && ! grep -q '^[0-9]* (.*) Z' "/proc/$1/stat" 2>/dev/null; }
# Stops process $2 and starts its command line again under callgrind, as $1.
restart_under_callgrind() {
  local name=$1 old=$2
  local -a argv envv
  mapfile -d '' argv < "/proc/$old/cmdline"
  mapfile -d '' envv < "/proc/$old/environ"
  local cwd
  cwd=$(readlink "/proc/$old/cwd")
  printf '%q ' "${argv[@]}" > "$work/$name.cmdline"
  kill -TERM "$old"
  for _ in $(seq 1 100); do running "$old" || break; sleep 0.1; done
  running "$old" && { kill -KILL "$old" 2>/dev/null || true; sleep 0.5; }
  env -i -C "$cwd" "${envv[@]}" valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$work/$name.callgrind" "${argv[@]}" > "$work/$name.log" 2>&1 &
  vg_pid[$name]=$!
  echo "$name: pid $old stopped, now pid ${vg_pid[$name]} under callgrind" >&2
}
arg_of() { # pid flag -> the value after that flag on the process's command line
  tr '\0' '\n' < "/proc/$1/cmdline" | grep -A1 -x -- "$2" | tail -n 1
}
echo_admin=$(arg_of "${pid[echo-sidecar]}" --admin)
client_admin=$(arg_of "${pid[client-sidecar]}" --admin)
for name in echo-sidecar client-sidecar haproxy-b haproxy-a; do
  restart_under_callgrind "$name" "${pid[$name]}"
done
alive() { for name in "${!vg_pid[@]}"; do
  running "${vg_pid[$name]}" || { echo "$name exited under valgrind: $(tail -n 5 "$work/$name.log")" >&3; exit 1; }
done; }
ready_under_valgrind() { alive; "$@"; }
wait_for 180 ready_under_valgrind curl -fsS "http://$echo_admin/ready"
wait_for 180 ready_under_valgrind curl -fsS "http://$client_admin/ready"
wait_for 180 ready_under_valgrind serves_1kb "${addr[strait]}"
wait_for 60 ready_under_valgrind serves_1kb "${addr[haproxy]}"
echo "all four proxies answer under callgrind" >&2

# --- 3. Count -----------------------------------------------------------------------------------
cg() { # pid option...: callgrind_control on exactly that process (no pid would mean all of them)
  local target=$1; shift
  [[ $target =~ ^[0-9]+$ ]] || { echo "internal: callgrind_control without a pid" >&2; exit 1; }
  callgrind_control "$@" "$target" > "$work/callgrind_control.log" 2>&1 \
    || { echo "callgrind_control $* $target failed: $(cat "$work/callgrind_control.log")" >&2; exit 1; }
}
oha_run() { # out-file n target
  timeout $(( $2 / rate + 120 )) oha -n "$2" -q "$rate" -c "$connections" --no-tui \
    --output-format json "http://$3/" > "$1"
  $helper oha-check "$1" "$2"
}
declare -A count=() handshake=()
dumps() { # name: its callgrind dumps so far, in order (`.1`, `.2`, ...)
  local f
  for f in "$work/$1.callgrind".*; do if [ -e "$f" ]; then echo "$f"; fi; done | sort -V
}
measure() { # path first-process second-process
  local path=$1; shift
  echo "$path: $warmup requests to warm up, then $requests counted ($rate/s, $connections connections)" >&2
  oha_run "$work/oha-$path-warmup.json" "$warmup" "${addr[$path]}"
  for name in "$@"; do cg "${vg_pid[$name]}" -z; cg "${vg_pid[$name]}" -i on; done
  oha_run "$work/oha-$path-measure.json" "$requests" "${addr[$path]}"
  for name in "$@"; do
    local before
    before=$(dumps "$name" | wc -l)
    cg "${vg_pid[$name]}" -d
    cg "${vg_pid[$name]}" -i off
    more_dumps() { [ "$(dumps "$1" | wc -l)" -gt "$2" ]; }
    wait_for 30 more_dumps "$name" "$before"
    local dump
    dump=$(dumps "$name" | tail -n 1)
    wait_for 30 grep -q '^totals:' "$dump"
    cp "$dump" "$work/$name.measured.callgrind"
    count[$name]=$($helper totals "$dump")
    # A TLS handshake in the counted window (a proxy opening a new upstream connection) costs
    # tens of millions of instructions: counted apart, so that the report can say so.
    handshake[$name]=$(callgrind_annotate --inclusive=yes --auto=no --threshold=100 "$dump" 2>/dev/null \
      | awk '!done && /SSL_do_handshake|rustls::.*::handshake/ { gsub(",", "", $1); print $1; done = 1 }')
    echo "  $name: ${count[$name]} instructions, $((count[$name] / requests)) per request" >&2
  done
  alive
}
measure strait client-sidecar echo-sidecar
measure haproxy haproxy-a haproxy-b

# --- 4. Report ----------------------------------------------------------------------------------
mkdir -p target/bench
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=target/bench/sidecar-callgrind-$stamp
mkdir -p "$out"
count_args=()
for name in client-sidecar echo-sidecar haproxy-a haproxy-b; do
  cp "$work/$name.measured.callgrind" "$out/$name.callgrind"
  count_args+=(--count "$name=${count[$name]}:$out/$name.callgrind" --handshake "$name=${handshake[$name]:-0}")
done
$helper report "${count_args[@]}" --requests "$requests" --warmup "$warmup" --stamp "$stamp" \
  --commit "$commit" --binary "$binary" --binary-sha256 "$(sha256sum "$binary" | cut -d' ' -f1)" \
  --script-commit "$script_commit" \
  --meta "load=oha -n N -q $rate -c $connections, HTTP/1.1 keep-alive, 1 KB answers" \
  --meta "command=bench/sidecar-callgrind.sh $args_given" \
  --meta "machine=nproc $(nproc), $(cpu_model), load average at the end $(load_average)" \
  --meta "valgrind=$(valgrind --version)" \
  --meta "haproxy=$(haproxy -v | head -1 | awk '{print $1, $3}')" \
  --meta "oha=$(oha --version)" \
  --json "$out.json" --md "$out.md"
{
  for name in client-sidecar echo-sidecar; do
    echo
    echo "Top of \`callgrind_annotate --inclusive=yes\` for the $name:"
    echo
    echo '```'
    callgrind_annotate --inclusive=yes "$out/$name.callgrind" 2>/dev/null \
      | sed -n '/^Ir/,$p' | sed -n '1,40p' | cut -c1-200 || true
    echo '```'
  done
} >> "$out.md"
cp "$out.json" target/bench/sidecar-callgrind-latest.json
cp "$out.md" target/bench/sidecar-callgrind-latest.md
status_ok=1
echo "report written to $out.md and $out.json (latest: target/bench/sidecar-callgrind-latest.*)" >&2
