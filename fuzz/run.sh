#!/usr/bin/env bash
# Runs every fuzz target for a short, bounded time and fails if any of them finds a crash (a
# panic, a failed invariant, a timeout or an out-of-memory). What `.ci/run` calls; longer
# campaigns are in docs/fuzzing.md.
#
#   fuzz/run.sh                     # every target, FUZZ_SECONDS (default 15) each
#   FUZZ_SECONDS=600 fuzz/run.sh dns_request policy_yaml
#
# Installs cargo-fuzz (into ~/.cargo/bin, so a cached home skips it) and the nightly toolchain
# when missing. Builds every target once, then runs each from a scratch copy of its seeds
# (fuzz/target/corpus/TARGET), so the committed seeds in fuzz/corpus/ never grow. A crash
# leaves its input in fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${FUZZ_SECONDS:-15}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(tunnel_frame dns_request policy_yaml join_token workload_token sniff zone_inventory sidecar_config)
fi

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

# Not a member of the root workspace, so `cargo fmt --all` in .ci/run does not see it.
cargo fmt --manifest-path Cargo.toml -- --check

# No sanitizer: the workspace forbids `unsafe`, so AddressSanitizer has little to find and
# halves the speed; panics, overflows (debug assertions are on), timeouts and OOMs are still
# crashes. 16 codegen units: a build of every target in a few minutes on 2 cores, not 15.
build_flags=(--sanitizer none --debug-assertions --codegen-units 16)
# The build lives outside the checkout (CI starts from a fresh clone): the same machine reuses
# it, keyed by the toolchain, so only the project's own crates are rebuilt.
target_dir=${STRAIT_FUZZ_TARGET:-$HOME/.cache/strait/fuzz-target/$(rustup run nightly rustc --version | tr -c 'a-zA-Z0-9.\n' '-')}
build_flags+=(--target-dir "$target_dir")
mkdir -p target
start=$(date +%s)
cargo +nightly fuzz build "${build_flags[@]}"
echo "fuzz: built every target in $(($(date +%s) - start)) s"

failed=()
for target in "${targets[@]}"; do
  scratch=target/corpus/$target
  mkdir -p "$scratch" "artifacts/$target"
  echo "== fuzz $target (${seconds} s, $(ls "corpus/$target" | wc -l) seeds)"
  # The scratch corpus first: libFuzzer writes new inputs into the first directory.
  if ! cargo +nightly fuzz run "${build_flags[@]}" "$target" "$scratch" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    2>"target/$target.log"; then
    tail -n 60 "target/$target.log"
    failed+=("$target")
  else
    grep -E '^stat::number_of_executed_units|^Done' "target/$target.log" || true
  fi
done

echo "fuzz: ${#targets[@]} targets in $(($(date +%s) - start)) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in ${failed[*]}; inputs in fuzz/artifacts/ (docs/fuzzing.md: reproduce)" >&2
  exit 1
fi
