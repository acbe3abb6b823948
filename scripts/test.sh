#!/usr/bin/env bash
# The project's test command: formatting, lints, then every test in the workspace
# (unit tests, the paxos-core simulation, wire and WAL tests, and the cluster tests that
# start real kvs-server processes). Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# Formatting and lints need rustfmt and clippy: added with rustup when they are missing.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  if command -v rustup >/dev/null 2>&1; then
    rustup component add rustfmt clippy
  else
    echo "scripts/test.sh needs rustfmt and clippy: install them (rustup component add" \
      "rustfmt clippy, or your distribution's rustfmt and rust-clippy packages)" >&2
    exit 1
  fi
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy -p kvs-client --no-default-features --all-targets -- -D warnings
# The cluster tests run the real binaries, so build them first.
cargo build --workspace --bins
# The container chaos test runs on its own, at the end, so that its SKIPPED line (or its
# summary, with KVS_DOCKER_CHAOS=1) shows; .ci/run requires it where a Docker engine answers.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast -E 'not binary(docker_chaos)'
  # nextest does not run doctests.
  cargo test --workspace --doc
else
  cargo test --workspace --no-fail-fast -- --skip docker_chaos
fi
cargo test -p tests --test docker_chaos -- --nocapture
