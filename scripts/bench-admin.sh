#!/usr/bin/env bash
# What monitoring costs: put at 256 clients (256-byte values, fsync on) against a 3-replica
# release cluster without the admin listener, and with it while every replica is scraped
# as an operator would (GET /metrics every second, the status page every 2 s, /health every
# second), round after round in one session; prints the medians side by side. With
# OLD_BIN_DIR (the release binaries of a build without metrics), that build is measured in
# the same rounds too.
# Usage: scripts/bench-admin.sh [ROUNDS] [OLD_BIN_DIR]   (default 3 rounds; BENCH_OPS ops
# per run, default 102400)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rounds=${1:-3}
old=${2:-}
cd "$root"
cargo build --release --bins -q
bin=$root/target/release
out=$(mktemp)
trap 'rm -f "$out"' EXIT
workload="--workload put --clients 256 --conns 16 --ops ${BENCH_OPS:-102400} --keys 10000"
# Scrapes every admin URL until the bench ends: at most 600 rounds (10 min).
scrape() {
  for tick in $(seq 1 600); do
    for url in $KVS_ADMIN_URLS; do
      curl -fsS -o /dev/null "$url/metrics" || true
      curl -sS -o /dev/null "$url/health" || true
      if [ $((tick % 2)) = 0 ]; then curl -fsS -o /dev/null "$url/" || true; fi
    done
    sleep 1
  done
}
export -f scrape
# The CPU time (user + system, in clock ticks) the replicas (KVS_PIDS) have used so far.
cpu_ticks() {
  local total=0 pid
  for pid in $KVS_PIDS; do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  echo "$total"
}
export -f cpu_ticks
# Runs the bench as LABEL with the client in BIN; adds the replicas' CPU time per put (µs),
# which a loaded machine disturbs much less than throughput.
run() {
  local label=$1 bin=$2 before after line
  before=$(cpu_ticks)
  # shellcheck disable=SC2086
  line=$("$bin/kvs-client" bench $workload | grep '^target=' | sed "s/^target=kvs/target=$label/")
  after=$(cpu_ticks)
  echo "$line cpu_us_per_op=$(( (after - before) * 1000000 / $(getconf CLK_TCK) / ${BENCH_OPS:-102400} ))"
}
export -f run
export workload
for r in $(seq 1 "$rounds"); do
  echo "== round $r" >&2
  if [ -n "$old" ]; then
    # shellcheck disable=SC2086
    scripts/cluster.sh -b "$old" -- bash -c "run no-metrics $old" | tee -a "$out" >&2
  fi
  # shellcheck disable=SC2086
  scripts/cluster.sh -b "$bin" -- bash -c "run no-admin $bin" | tee -a "$out" >&2
  # shellcheck disable=SC2086
  scripts/cluster.sh -b "$bin" -a 27000 -- bash -c "scrape & s=\$!; run admin-scraped $bin; kill \$s" | tee -a "$out" >&2
done
python3 - "$out" <<'PY'
import sys, statistics
rows = {}
for line in open(sys.argv[1]):
    fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
    target = fields.get("target")
    if not target:
        continue
    for key in ("ops_per_s", "p50_us", "p99_us", "cpu_us_per_op"):
        if key in fields:
            rows.setdefault((target, key), []).append(float(fields[key]))
targets = [t for t in ("no-metrics", "no-admin", "admin-scraped") if (t, "ops_per_s") in rows]
print(f"{'metric':<12}" + "".join(f"{t:>15}" for t in targets) + "   (medians; ratios to the first)")
for key in ("ops_per_s", "p50_us", "p99_us", "cpu_us_per_op"):
    if not all((t, key) in rows for t in targets):
        continue
    meds = [statistics.median(rows[(t, key)]) for t in targets]
    cells = "".join(f"{m:>15.0f}" for m in meds)
    ratios = " ".join(f"{m / meds[0]:.3f}" for m in meds[1:])
    print(f"{key:<12}{cells}   {ratios}")
PY
