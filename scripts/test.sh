#!/usr/bin/env bash
# The project's test command: formatting, lints, then every test in the workspace
# (unit tests, the paxos-core simulation, wire and WAL tests, and the cluster tests that
# start real kvs-server processes). Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The cluster tests run the real binaries, so build them first.
cargo build --workspace --bins
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
  # nextest does not run doctests.
  cargo test --workspace --doc
else
  cargo test --workspace --no-fail-fast
fi
