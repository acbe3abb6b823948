#!/usr/bin/env bash
# Measures kvs beside etcd 3.4 in one session on this machine: 3 replicas on loopback,
# fsync on, 256-byte values, closed-loop clients, the same workloads for both.
# Usage: scripts/bench.sh [matrix|quick] [OUTPUT.md]   (default: matrix, BENCHMARKS.md)
# It builds release binaries, runs etcd through ../shared/bench/etcd-baseline.sh (which
# installs etcd from Debian's packages if missing), then kvs through scripts/cluster.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mode=${1:-matrix}
out=${2:-$root/BENCHMARKS.md}
# Ports below the ephemeral range (32768 and up), so outgoing connections cannot take them.
export ETCD_BASE_PORT=${ETCD_BASE_PORT:-24000}
etcd_script=${ETCD_BASELINE:-$root/../shared/bench/etcd-baseline.sh}
cd "$root"
cargo build --release --bins -q
client=$root/target/release/kvs-client

case "$mode" in
  quick) workloads=("put 1 1 1000 10000" "put 256 16 25600 10000") ;;
  matrix) workloads=("put 1 1 2000 10000" "put 16 4 8000 10000" "put 64 8 25600 10000"
                     "put 256 16 51200 10000" "get 64 8 25600 1000" "get-stale 64 8 25600 1000") ;;
  *) echo "usage: $0 [matrix|quick] [OUTPUT.md]" >&2; exit 2 ;;
esac

results=$(mktemp)
trap 'rm -f "$results"' EXIT

echo "== etcd ($mode)" >&2
if [ -x "$etcd_script" ] || [ -f "$etcd_script" ]; then
  bash "$etcd_script" "$mode" | tee -a "$results" >&2
else
  echo "etcd baseline script not found at $etcd_script; measuring kvs only" >&2
fi

echo "== kvs ($mode)" >&2
kvs_cmds=""
for w in "${workloads[@]}"; do
  read -r kind clients conns ops keys <<<"$w"
  case "$kind" in
    get-stale) args="--workload get --stale" ;;
    *) args="--workload $kind" ;;
  esac
  kvs_cmds+="$client bench $args --clients $clients --conns $conns --ops $ops --keys $keys | grep '^target=';"
done
scripts/cluster.sh -- bash -c "$kvs_cmds" | tee -a "$results" >&2

mem_line=""
if [ "$mode" = matrix ]; then
  echo "== kvs memory: 1,000,000 keys of 256 bytes" >&2
  mem_line=$(scripts/cluster.sh -- bash -c '
    '"$client"' bench --workload get --keys 1000000 --ops 64 --clients 64 --conns 8 >/dev/null 2>&1
    sleep 1
    max=0
    for p in $KVS_PIDS; do
      kb=$(awk "/^VmRSS/ {print \$2}" /proc/$p/status)
      [ "$kb" -gt "$max" ] && max=$kb
    done
    echo "max_rss_kb=$max"')
  echo "$mem_line" >&2
fi

python3 - "$results" "$out" "$mode" "$mem_line" <<'PY'
import sys, platform, os, subprocess, datetime
res, out, mode, mem = sys.argv[1:5]
rows = {}
for line in open(res):
    if not line.startswith("target="):
        continue
    f = dict(kv.split("=", 1) for kv in line.split())
    wl = f["workload"].replace("(serializable)", "(stale)")
    rows.setdefault((wl, f["clients"]), {})[f["target"]] = f
def cpu():
    try:
        for l in open("/proc/cpuinfo"):
            if l.startswith("model name"):
                return l.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
mem_total = ""
try:
    for l in open("/proc/meminfo"):
        if l.startswith("MemTotal"):
            mem_total = f"{int(l.split()[1]) // 1024 // 1024} GiB"
except OSError:
    pass
lines = []
lines.append("# Benchmarks: kvs beside etcd 3.4\n")
lines.append(f"Measured {datetime.date.today()} with `scripts/bench.sh {mode}`: both systems in the same session on the same machine, "
             "3 replicas on loopback, fsync on, 256-byte values, closed-loop clients (N clients over M connections, uniform keys).\n")
lines.append(f"Machine: {os.cpu_count()} cores ({cpu()}), {mem_total} memory, Linux {platform.release()}.\n")
lines.append("| workload | clients | kvs ops/s | etcd ops/s | ratio | kvs p50 µs | etcd p50 µs | kvs p99 µs | etcd p99 µs | kvs errors | etcd errors |")
lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
def key(k):
    order = {"put": 0, "get": 1, "get(stale)": 2}
    return (order.get(k[0], 9), int(k[1]))
for (wl, clients) in sorted(rows, key=key):
    r = rows[(wl, clients)]
    k, e = r.get("kvs"), r.get("etcd")
    g = lambda d, n: d[n] if d else "–"
    ratio = f"{float(k['ops_per_s']) / float(e['ops_per_s']):.1f}x" if k and e and float(e["ops_per_s"]) > 0 else "–"
    lines.append(f"| {wl} | {clients} | {g(k,'ops_per_s')} | {g(e,'ops_per_s')} | {ratio} | {g(k,'p50_us')} | {g(e,'p50_us')} | {g(k,'p99_us')} | {g(e,'p99_us')} | {g(k,'errors')} | {g(e,'errors')} |")
if mem.startswith("max_rss_kb="):
    kb = int(mem.split("=")[1])
    raw = 1_000_000 * (256 + len("key00000000"))
    lines.append("")
    lines.append(f"Memory: after writing 1,000,000 keys of 256-byte values (raw data {raw/1e6:.0f} MB), the largest replica's resident set was "
                 f"{kb/1024:.0f} MiB, {kb*1024/raw:.2f}x the raw data.")
lines.append("")
lines.append("Reproduce: `scripts/bench.sh` (about two minutes; `scripts/bench.sh quick` for a short run). The machine is shared, so compare ratios measured in one run rather than absolute figures across runs.")
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
