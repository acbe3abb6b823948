#!/usr/bin/env bash
# The cost of TLS: put (256-byte values, fsync on) at 1 client and at 256 clients against a
# 3-replica release cluster on loopback, with plain TCP and with TLS on every link (TLS 1.3
# on the client and peer ports, client certificates required, mutual TLS between the
# replicas: scripts/cluster.sh -t), round after round in one session so that both see the
# same machine; prints the medians side by side.
# Usage: scripts/bench-tls.sh [ROUNDS]   (default 3 rounds; BENCH_OPS_1 ops at 1 client,
# default 2000; BENCH_OPS_256 ops at 256 clients, default 51200)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rounds=${1:-3}
cd "$root"
cargo build --release --bins -q
bin=${CARGO_TARGET_DIR:-$root/target}/release
out=$(mktemp)
trap 'rm -f "$out"' EXIT
one="--workload put --clients 1 --conns 1 --ops ${BENCH_OPS_1:-2000} --keys 10000"
many="--workload put --clients 256 --conns 16 --ops ${BENCH_OPS_256:-51200} --keys 10000"
# Runs both workloads against the cluster of the environment, labelled LABEL.
run() {
  local label=$1
  # shellcheck disable=SC2086
  "$bin/kvs-client" bench $one | grep '^target=' | sed "s/^target=kvs/target=$label-1/"
  # shellcheck disable=SC2086
  "$bin/kvs-client" bench $many | grep '^target=' | sed "s/^target=kvs/target=$label-256/"
}
export -f run
export bin one many
for r in $(seq 1 "$rounds"); do
  echo "== round $r" >&2
  scripts/cluster.sh -b "$bin" -- bash -c "run plain" | tee -a "$out" >&2
  scripts/cluster.sh -b "$bin" -t -- bash -c "run tls" | tee -a "$out" >&2
done
python3 - "$out" <<'PY'
import sys, statistics
rows = {}
for line in open(sys.argv[1]):
    fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
    target = fields.get("target")
    if not target:
        continue
    for key in ("ops_per_s", "p50_us", "p99_us"):
        if key in fields:
            rows.setdefault((target, key), []).append(float(fields[key]))
print(f"{'clients':<8}{'metric':<11}{'TLS off':>10}{'TLS on':>10}   on/off   (medians of {len(rows.get(('plain-1', 'ops_per_s'), []))} rounds)")
for clients in ("1", "256"):
    for key in ("ops_per_s", "p50_us", "p99_us"):
        off, on = rows.get((f"plain-{clients}", key)), rows.get((f"tls-{clients}", key))
        if not off or not on:
            continue
        off, on = statistics.median(off), statistics.median(on)
        print(f"{clients:<8}{key:<11}{off:>10.0f}{on:>10.0f}   {on / off:.3f}")
PY
