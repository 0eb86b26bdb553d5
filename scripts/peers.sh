#!/usr/bin/env bash
# Installs the real third-party peers the gRPC/WebSocket end-to-end tests run behind and in
# front of the sidecars, into a cache outside the checkout keyed by version, and prints where
# they are. Idempotent: a piece already in the cache is checked and kept (a run with everything
# cached takes about a second). docs/testing.md ("Real peers") says what each one is.
#
#   bash scripts/peers.sh               install what is missing; progress and paths on stderr
#   bash scripts/peers.sh --print-env   the same, then shell assignments on stdout:
#                                         eval "$(bash scripts/peers.sh --print-env)"
#   --quiet                             say nothing about pieces already cached
#
# Also written to $STRAIT_CACHE/peers.env. STRAIT_CACHE defaults to ~/.cache/strait.
#
#   go/grpc-interop-v1.85.0/bin/grpc-interop-client  grpc-go's interop client
#   go/grpc-interop-server-HASH/bin/grpc-interop-server  grpc-go's interop server on one
#                                      address (tests/peers/interop-server), HASH of its source
#   go/grpc-load-HASH/bin/grpc-load    our fixed-rate load generator (bench/grpc-load), HASH of
#                                      its source and the Go version
#   py/HASH/bin/python                 a venv with tests/peers/requirements.txt, HASH of that file
#                                      and the Python version
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

print_env=false
quiet=false
for arg in "$@"; do
  case "$arg" in
    --print-env) print_env=true ;;
    --quiet) quiet=true ;;
    *) echo "usage: scripts/peers.sh [--print-env] [--quiet]" >&2; exit 2 ;;
  esac
done

GRPC_GO_VERSION=v1.85.0
cache=${STRAIT_CACHE:-$HOME/.cache/strait}
python=${STRAIT_PYTHON_BOOTSTRAP:-python3}

say() { echo "peers: $*" >&2; }
cached() { $quiet || say "$@"; }
die() { echo "peers: $*" >&2; exit 1; }
now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

command -v go >/dev/null || die "Go is needed to build the gRPC peers (go 1.26+; none on PATH)"
command -v "$python" >/dev/null || die "Python 3 is needed for the Python peers ($python: not on PATH)"
mkdir -p "$cache"
# One install at a time per cache (parallel CI jobs or test harnesses may call this together).
if command -v flock >/dev/null; then
  exec 9>"$cache/peers.lock"
  flock 9
fi
# Builds use only the module proxy and the local toolchain; never a toolchain download.
export GOTOOLCHAIN=local

hash_of() { cat "$@" | sha256sum | cut -c1-16; }

# --- grpc-go interop client, and its server bound to one address ------------------------------
interop_dir=$cache/go/grpc-interop-$GRPC_GO_VERSION/bin
interop_client=$interop_dir/grpc-interop-client
if [ -x "$interop_client" ]; then
  cached "grpc-go interop client $GRPC_GO_VERSION cached in $interop_dir"
else
  say "building grpc-go interop client $GRPC_GO_VERSION ..."
  t=$(now)
  tmp=$(mktemp -d "$cache/.build.XXXXXX")
  (cd "$tmp" && GOBIN=$tmp/bin GOFLAGS=-mod=mod go install \
    "google.golang.org/grpc/interop/client@$GRPC_GO_VERSION")
  mkdir -p "$interop_dir"
  mv "$tmp/bin/client" "$interop_client"
  rm -rf "$tmp"
  say "built grpc-go interop client in $(took "$t") -> $interop_dir"
fi
# grpc-go's own server program takes only -port and listens on every address: the client
# sidecar could then not bind VIP:PORT (a service's VIP port is its app's port), and calls to
# the VIP would reach the server directly, past the mesh. tests/peers/interop-server is the same
# server (grpc-go's TestService) with a -listen HOST:PORT.
# A Go program of this checkout (DIR, a module of its own) built once per hash of its source and
# the Go version, into $cache/go/NAME-HASH/bin/NAME; sets $built to that path.
go_program() {
  local name=$1 src=$root/$2 hash dir tmp t
  hash=$( (cd "$src" && cat go.mod go.sum ./*.go; go version) | sha256sum | cut -c1-16)
  dir=$cache/go/$name-$hash/bin
  built=$dir/$name
  if [ -x "$built" ]; then
    cached "$name cached in $dir"
    return
  fi
  say "building $name ($2) ..."
  t=$(now)
  tmp=$(mktemp -d "$cache/.build.XXXXXX")
  (cd "$src" && go build -mod=readonly -o "$tmp/$name" .)
  mkdir -p "$dir"
  mv "$tmp/$name" "$built"
  rm -rf "$tmp"
  say "built $name in $(took "$t") -> $dir"
}
go_program grpc-interop-server tests/peers/interop-server
interop_server=$built

# --- the fixed-rate load generator (our source, bench/grpc-load) -------------------------------
go_program grpc-load bench/grpc-load
load_bin=$built

# --- Python venv: grpcio, grpcio-health-checking, websockets, h2, wsproto ----------------------
requirements=$root/tests/peers/requirements.txt
py_version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
py_hash=$( (cat "$requirements"; echo "python $py_version") | sha256sum | cut -c1-16)
venv=$cache/py/$py_hash
peers_python=$venv/bin/python
# A venv cannot be moved, so it is built in place; .complete is written last, and a venv
# without it (an interrupted build) is built again.
if [ -f "$venv/.complete" ] && "$peers_python" -c 'import grpc, grpc_health.v1, websockets, h2, wsproto' 2>/dev/null; then
  cached "Python peers venv cached in $venv"
else
  say "building the Python peers venv (Python $py_version) ..."
  t=$(now)
  rm -rf "$venv"
  "$python" -m venv "$venv" ||
    die "'$python -m venv' failed (on Debian: apt-get install python3-venv)"
  "$venv/bin/pip" install -q --disable-pip-version-check --no-input -r "$requirements"
  "$venv/bin/pip" check >&2
  cp "$requirements" "$venv/requirements.txt"
  touch "$venv/.complete"
  say "built the venv in $(took "$t") -> $venv"
fi

env_file=$cache/peers.env
printf '%s=%q\n' \
  STRAIT_GRPC_INTEROP_SERVER "$interop_server" \
  STRAIT_GRPC_INTEROP_CLIENT "$interop_client" \
  STRAIT_GRPC_LOAD "$load_bin" \
  STRAIT_PEERS_PYTHON "$peers_python" >"$env_file.tmp"
mv "$env_file.tmp" "$env_file"
cached "paths in $env_file"
if $print_env; then
  sed 's/^/export /' "$env_file"
fi
