#!/usr/bin/env bash
# Fuzzing smoke run for CI. Usage: scripts/fuzz-smoke.sh
#
# Always: replays every committed input of fuzz/corpus/<target>/ through its decoder with
# the fuzz targets' own checks (kvs-server/tests/fuzz_corpus.rs, an ordinary cargo test;
# a few seconds once the workspace is built).
#
# With KVS_FUZZ_SMOKE_SECONDS=N (and cargo-fuzz installed): also builds the fuzz targets
# (fuzz/, its own workspace; about 5 minutes from cold on 2 cores, which is why CI does not
# do it by default) and runs each one for N seconds on libFuzzer. See fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --test fuzz_corpus
seconds="${KVS_FUZZ_SMOKE_SECONDS:-0}"
if [ "$seconds" -gt 0 ]; then
  if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "KVS_FUZZ_SMOKE_SECONDS is set but cargo-fuzz is missing:" \
      "cargo install cargo-fuzz --locked" >&2
    exit 1
  fi
  cd fuzz
  export RUSTC_BOOTSTRAP=1
  cargo fuzz build -O --sanitizer none
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  for target in $(cargo fuzz list); do
    mkdir -p "$work/$target"
    echo "fuzzing $target for ${seconds}s"
    cargo fuzz run -O --sanitizer none "$target" "$work/$target" "corpus/$target" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10
  done
fi
