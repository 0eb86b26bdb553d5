# shellcheck shell=bash
# shellcheck disable=SC2154  # root, fed, strait, run_dir, keep, status_ok: the sourcing script's
# What the benchmark scripts under bench/ share: argument checks, tools, the cleanup of what a
# run started (its own processes and a `strait up` federation), waiting, the pieces of the
# nginx and haproxy setups they have in common, and the machine lines of their reports.
#
# Sourced, never run: `source "$root/bench/lib/common.sh"` after `cd` to the repository root.
# Functions that start a process append its pid to the caller's `started` array, so that
# stop_everything stops it whatever way the run ends.

# "bench/grpc-run.sh", for messages: scripts are run from anywhere, and say which one failed.
bench_script=bench/${0##*/}

# === Arguments =================================================================================

# Exits 2 unless each named variable holds a positive integer (what --rounds, --rate mean).
require_positive_ints() { # variable-name...
  local v
  for v in "$@"; do
    if ! [[ ${!v} =~ ^[1-9][0-9]*$ ]]; then echo "--$v must be a positive integer, got '${!v}'" >&2; exit 2; fi
  done
}

# Exits 2 unless each named variable holds whole seconds or milliseconds ("20s", "500ms"): Go
# durations the load generators take, and simple enough for `secs` to do arithmetic on.
require_durations() { # variable-name...
  local v
  for v in "$@"; do
    if ! [[ ${!v} =~ ^[1-9][0-9]*(s|ms)$ ]]; then echo "--$v must look like 20s or 500ms, got '${!v}'" >&2; exit 2; fi
  done
}

# Whole seconds of such a duration, rounded up (timeouts, call counts).
secs() { case $1 in *ms) echo $(( (${1%ms} + 999) / 1000 )) ;; *s) echo "${1%s}" ;; esac; }

# The absolute path of --binary's value, which must be an executable file. The script has
# changed to the repository root by then, so a relative path is taken from where it was started.
binary_path() { # start-dir path
  local path
  path=$(cd "$1" && realpath -e -- "$2") || { echo "--binary: no such file: $2" >&2; return 2; }
  [ -x "$path" ] || { echo "--binary $path is not executable" >&2; return 2; }
  echo "$path"
}

# Sets script_commit (HEAD of this checkout). Without a --binary, builds `strait` (cargo build
# --release ARGS...) and measures that, named after HEAD (and the working tree if it differs)
# unless --commit named it; a given binary is "unknown" unless --commit names it.
resolve_binary() { # cargo-build-args...
  script_commit=$(head_commit)
  if [ -z "$binary" ]; then
    cargo build --release "$@"
    binary=$root/target/release/strait
    if [ -z "$commit" ]; then
      commit=$script_commit
      git diff --quiet HEAD -- 2>/dev/null || commit="$commit plus the working tree"
    fi
  fi
  [ -n "$commit" ] || commit=unknown
}

head_commit() { git rev-parse --short HEAD 2>/dev/null || echo unknown; }

# === Tools =====================================================================================

# Exits 1 naming the first tool that is not on PATH, with HINT (how to get it) if given.
require_tools() { # hint tool...
  local hint=$1 tool
  shift
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "$tool is missing${hint:+ $hint}" >&2; exit 1; }
  done
}

# Installs Debian packages that are missing; only root may, so anyone else is told how.
apt_install() { # "what is missing" package...
  local what=$1
  shift
  if [ "$(id -u)" != 0 ]; then
    echo "$what: run as root, or apt-get install $*" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

# oha, the HTTP load generator, from crates.io if it is not there yet (~/.cargo/bin on PATH).
ensure_oha() {
  export PATH="$HOME/.cargo/bin:$PATH"
  oha --version >/dev/null 2>&1 || cargo install oha --locked
}

# sed, not head: head exits after one line, and haproxy writing the rest into the closed pipe
# would fail the pipeline (SIGPIPE) under pipefail.
haproxy_version() { haproxy -v | sed -n 1p; }

# === Addresses and waiting =====================================================================

# Exits 1 if anything listens on one of the addresses (IP:PORT) already: a second run, or a
# test's federation. A wildcard listener on the port counts too (it would take the VIPs' port).
# Not grep -q: it may close the pipe before ss is done, and pipefail would turn a match into
# "free".
require_free_addresses() { # address...
  local addr
  for addr in "$@"; do
    if ss -Htln "sport = :${addr##*:}" | grep -E "(${addr%:*}|\*|0\.0\.0\.0|\[::\]):${addr##*:}" >/dev/null; then
      echo "$addr is already in use (another run of this script?)" >&2
      exit 1
    fi
  done
}

# Polls a command until it succeeds, at most $1 seconds, every $wait_for_poll seconds (0.2 unless
# the script sets it: polling a process under valgrind costs it time).
wait_for() { # seconds command...
  local secs=$1
  shift
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then echo "timed out after ${secs}s waiting for: $*" >&2; return 1; fi
    sleep "${wait_for_poll:-0.2}"
  done
}

# The path answers 200 with nginx's 1,024-byte body (start_nginx_1kb).
serves_1kb() { [ "$(curl -s -o /dev/null -w '%{http_code} %{size_download}' "http://$1/")" = "200 1024" ]; }

# === Starting and stopping =====================================================================

# A load step, in the background and waited for, so that a signal stops the run at once, not
# after the step; stop_everything stops it (and its children) via load_pid.
run_load() { # command...
  "$@" &
  load_pid=$!
  wait "$load_pid"
  load_pid=""
}

# With --hold: say what runs where (bench/sidecar-callgrind.sh reads the "holding ... pids:"
# line) and wait, measuring nothing, until interrupted.
hold_until_interrupted() { # name=pid,...
  echo "holding (Ctrl-C stops everything); pids: $1" >&2
  sleep infinity &
  started+=("$!")
  wait $!
}

# A field of a `strait up` federation's process from $fed/processes.json: its pid or one of its
# addresses (api, admin, dns...). Zone "-" matches any (global has none).
fed_field() { # kind zone-or-"-" field
  python3 -c '
import json, sys
for p in json.load(open(sys.argv[1])):
    if p.get("kind") == sys.argv[2] and sys.argv[3] in ("-", p.get("zone")):
        print(p[sys.argv[4]] if sys.argv[4] == "pid" else p["addresses"][sys.argv[4]]); break' \
    "$fed/processes.json" "$@"
}

# Stops a `strait up` federation: `strait down`, then SIGKILL to the process group of anything
# of it still alive (a process `down` could not reach).
stop_federation() { # strait-binary federation-dir
  local pid
  [ -f "$2/processes.json" ] || return 0
  "$1" down --dir "$2" >/dev/null 2>&1 || true
  for pid in $(grep -o '"pid": *[0-9]*' "$2/processes.json" | grep -o '[0-9]*$'); do
    kill -0 "$pid" 2>/dev/null && kill -KILL -- "-$pid" 2>/dev/null || true
  done
}

# The EXIT trap of the scripts that start their processes themselves. It stops, in order: the
# load step in progress (its child first, then the sampler), every pid in `started` (SIGTERM, up
# to 3 s, then SIGKILL), the federation in $fed (with $strait), whatever $on_stop names (e.g.
# network namespaces); then removes $run_dir, unless --keep or the run did not get to set
# status_ok=1 (its logs are what explains why). Exits with the run's status.
stop_everything() {
  local status=$? pid alive
  trap - EXIT INT TERM
  if [ -n "$load_pid" ]; then
    pkill -TERM -P "$load_pid" 2>/dev/null || true
    kill -TERM "$load_pid" 2>/dev/null || true
  fi
  for pid in "${started[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 30); do
    alive=0
    for pid in "${started[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for pid in "${started[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  stop_federation "$strait" "$fed"
  if [ -n "${on_stop:-}" ]; then "$on_stop"; fi
  if [ "$keep" = 1 ] || [ "$status_ok" = 0 ]; then
    echo "data and logs kept in $run_dir" >&2
  else
    rm -rf "$run_dir"
  fi
  exit "$status"
}

# The traps: CLEANUP on exit, the failing command named, and INT/TERM turned into an exit (with
# the usual 128+signal status) so that the EXIT trap runs once for every way a run ends.
install_traps() { # cleanup-function
  # shellcheck disable=SC2064  # the cleanup's name is fixed now, on purpose
  trap "$1" EXIT
  trap 'echo "$bench_script: failed at line $LINENO: $BASH_COMMAND" >&2' ERR
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# === Shared setups =============================================================================

# A CA (ca.pem, ca.key) and, per NAME, PREFIX+NAME.pem (certificate and key) for CN and SAN
# haproxy-NAME: ECDSA P-256 like Strait's, so that the haproxy legs do the same TLS work.
make_haproxy_certs() { # dir file-prefix name...
  local dir=$1 prefix=$2
  shift 2
  mkdir -p "$dir"
  (
    cd "$dir" || exit 1
    ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.pem -days 2 -subj /CN=bench-ca 2>/dev/null
    for who in "$@"; do
      f=$prefix$who
      openssl req "${ec[@]}" -keyout "$f.key" -out "$f.csr" -subj "/CN=haproxy-$who" 2>/dev/null
      printf 'subjectAltName=DNS:haproxy-%s\n' "$who" > "$f.ext"
      openssl x509 -req -in "$f.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
        -extfile "$f.ext" -out "$f.crt" 2>/dev/null
      cat "$f.crt" "$f.key" > "$f.pem"
    done
  )
}

# The global and defaults sections of a haproxy pair in HTTP mode: long timeouts and pooled
# upstream connections (`http-reuse always`), as between Strait's sidecars.
# shellcheck disable=SC2034  # used by the scripts that source this file
haproxy_http_defaults="global
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

# nginx answering every request with 1,024 bytes, one worker, keep-alive without limits, all of
# its files under $run_dir/nginx; sets nginx_pid.
start_nginx_1kb() { # listen-address
  local body
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
    listen $1;
    location / { default_type text/plain; return 200 "$body"; }
  }
}
EOF
  nginx -c "$run_dir/nginx/nginx.conf" -p "$run_dir/nginx" > "$run_dir/nginx/stdout.log" 2>&1 &
  nginx_pid=$!
  started+=("$nginx_pid")
}

# === Reports ===================================================================================

cpu_model() { grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'; }
load_average() { cut -d' ' -f1-3 /proc/loadavg; }

# The machine lines at the top of a report: CPUs, memory (with MORE appended, e.g. the kernel),
# and the load average at the end, which says whether other work shared the machine.
# shellcheck disable=SC2120  # the argument is optional
machine_lines() { # [more-on-the-memory-line]
  echo "nproc: $(nproc); $(cpu_model)"
  echo "memory: $(free -g | awk '/^Mem:/ {print $2}') GiB${1:-}"
  echo "load average at the end: $(load_average)"
}
