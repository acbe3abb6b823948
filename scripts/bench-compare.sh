#!/usr/bin/env bash
# Side-by-side benchmark in one session: the bare replicated write path, etcd, the kvs
# binaries in OLD_BIN_DIR (an earlier build) and this tree's release build, round after
# round, so that every ratio compares figures measured minutes apart on the same machine.
# Workloads: put at 1 and 256 clients, linearizable get at 64 (256-byte values, fsync on).
# Usage: scripts/bench-compare.sh OLD_BIN_DIR [ROUNDS]   (default 3 rounds; prints medians)
# OLD_BIN_DIR: e.g. a worktree's target/release built with `cargo build --release --bins`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
old=${1:?usage: $0 OLD_BIN_DIR [ROUNDS]}
rounds=${2:-3}
shared=${SHARED_BENCH:-$root/../shared/bench}
export ETCD_BASE_PORT=${ETCD_BASE_PORT:-24000}
cd "$root"
cargo build --release --bins -q
new=$root/target/release
out=$(mktemp)
trap 'rm -f "$out"' EXIT
kvs() { # label bin_dir
  local label=$1 bin=$2 cmds=""
  for w in "put 1 1 2000 10000" "put 256 16 51200 10000" "get 64 8 25600 1000"; do
    read -r kind clients conns ops keys <<<"$w"
    cmds+="$bin/kvs-client bench --workload $kind --clients $clients --conns $conns --ops $ops --keys $keys | grep '^target=' | sed 's/^target=kvs/target=$label/';"
  done
  scripts/cluster.sh -b "$bin" -- bash -c "$cmds"
}
for r in $(seq 1 "$rounds"); do
  echo "== round $r" >&2
  bash "$shared/bare-path.sh" 256 16 5 | sed 's/^/target=bare workload=put /' | tee -a "$out" >&2
  for w in "--workload put --clients 1 --conns 1 --ops 2000" \
           "--workload put --clients 256 --conns 16 --ops 51200" \
           "--workload get --clients 64 --conns 8 --ops 25600 --keys 1000"; do
    # shellcheck disable=SC2086
    bash "$shared/etcd-baseline.sh" -- $w | tee -a "$out" >&2
  done
  kvs kvs-before "$old" | tee -a "$out" >&2
  kvs kvs-after "$new" | tee -a "$out" >&2
done
python3 - "$out" <<'PY'
import sys, statistics
rows = {}
for line in open(sys.argv[1]):
    if not line.startswith("target="):
        continue
    f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
    key = (f.get("workload", "?"), f.get("clients", "?"))
    rows.setdefault(key, {}).setdefault(f["target"], []).append(f)
med = lambda xs, k: statistics.median(float(x[k]) for x in xs)
print("| workload | clients | target | ops/s (median) | p50 µs | p99 µs | rounds |")
print("|---|---|---|---|---|---|---|")
for (wl, c), targets in sorted(rows.items()):
    for t, xs in sorted(targets.items()):
        print(f"| {wl} | {c} | {t} | {med(xs,'ops_per_s'):.0f} | {med(xs,'p50_us'):.0f} | {med(xs,'p99_us'):.0f} | {len(xs)} |")
PY
