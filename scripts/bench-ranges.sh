#!/usr/bin/env bash
# Range reads against kvs and etcd in one session: loads KEYS keys (`key%08d`, VALUE_SIZE-byte
# values) into a fresh 3-replica cluster of each, then times, ROUNDS times each, a prefix read
# of 10,000 keys (`key0000`: key00000000..key00009999, keys and values) and a count of every
# key, and reports the median wall time of one CLI call (kvs-client, etcdctl) and the
# replicas' total RSS after the reads.
# Usage: scripts/bench-ranges.sh [KEYS] [VALUE_SIZE] [ROUNDS]   (default 1000000 64 5)
# Needs this tree's release build (cargo build --release --bins), etcd and etcdctl (as
# ../shared/bench/etcd-baseline.sh installs them). etcd is loaded with transactions of 10,000
# puts (its --max-txn-ops raised for that), 8 at a time.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/target/release

# median_ms CMD...: runs CMD ROUNDS times (output discarded), prints the median wall ms.
median_ms() {
  local times=() t0 t1
  for _ in $(seq 1 "$ROUNDS"); do
    t0=$(date +%s%N); "$@" >/dev/null; t1=$(date +%s%N)
    times+=($(((t1 - t0) / 1000000)))
  done
  printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}
# rss_mib PATTERN: total RSS in MiB of the processes whose command line holds PATTERN.
rss_mib() {
  local total=0
  for p in $(pgrep -f -- "$1"); do
    total=$((total + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
  done
  echo $((total / 1024))
}

if [ "${1:-}" = "--inside-kvs" ]; then # run by cluster.sh with KVS_ENDPOINTS set
  dir=$2
  "$bin/kvs-client" bench --workload get --clients 1 --conns 16 --ops 1 --keys "$KEYS" \
    --value-size "$VALUE_SIZE" >/dev/null
  n=$("$bin/kvs-client" get --prefix key --count-only)
  [ "$n" = "$KEYS" ] || { echo "loaded $n keys, not $KEYS" >&2; exit 1; }
  got=$("$bin/kvs-client" get --prefix key0000 --keys-only | wc -l)
  prefix=$(median_ms "$bin/kvs-client" get --prefix key0000)
  count=$(median_ms "$bin/kvs-client" get --prefix key --count-only)
  echo "target=kvs keys=$KEYS prefix_keys=$got prefix_read_ms=$prefix count_ms=$count rss_mib=$(rss_mib "$dir")"
  exit 0
fi

export KEYS=${1:-1000000} VALUE_SIZE=${2:-64} ROUNDS=${3:-5}
[ -x "$bin/kvs-client" ] || { echo "no $bin/kvs-client: run cargo build --release --bins" >&2; exit 2; }
command -v etcd >/dev/null && command -v etcdctl >/dev/null ||
  { echo "no etcd or etcdctl: run ../shared/bench/etcd-baseline.sh once" >&2; exit 2; }

dir=$(mktemp -d /tmp/kvs-ranges.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

echo "== kvs: $KEYS keys of $VALUE_SIZE bytes" >&2
mkdir -p "$dir/kvs"
"$root/scripts/cluster.sh" -b "$bin" -d "$dir/kvs" -- "$0" --inside-kvs "$dir/kvs"

echo "== etcd: $KEYS keys of $VALUE_SIZE bytes" >&2
base=${ETCD_BASE_PORT:-43000} cluster="" endpoints=""
for i in 1 2 3; do cluster+="${cluster:+,}e$i=http://127.0.0.1:$((base + 10 * i + 1))"; done
for i in 1 2 3; do
  client=$((base + 10 * i)) peer=$((base + 10 * i + 1))
  etcd --name "e$i" --data-dir "$dir/etcd/e$i" --quota-backend-bytes 8589934592 \
    --max-txn-ops 10000 --max-request-bytes 16777216 \
    --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "$cluster" --initial-cluster-state new --log-level error >"$dir/e$i.log" 2>&1 &
  pids+=($!)
  endpoints+="${endpoints:+,}127.0.0.1:$client"
done
export ETCDCTL_API=3
for _ in $(seq 50); do etcdctl --endpoints="$endpoints" endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
ctl=(etcdctl --endpoints="$endpoints")
value=$(head -c "$VALUE_SIZE" /dev/zero | tr '\0' v)
load_chunk() { # first key of 10,000
  awk -v from="$1" -v keys="$KEYS" -v value="$value" 'BEGIN {
    printf "\n"; for (k = from; k < from + 10000 && k < keys; k++) printf "put key%08d %s\n", k, value
    printf "\n\n" }' | "${ctl[@]}" txn >/dev/null
}
export -f load_chunk; export endpoints value
seq 0 10000 $((KEYS - 1)) | xargs -P 8 -I{} bash -c 'ctl=(etcdctl --endpoints="$endpoints"); load_chunk {}'
# etcdctl 3.4 has no --count-only: --limit 1 -w json returns one key and the range's count.
n=$("${ctl[@]}" get --prefix key --limit 1 -w json | grep -o '"count":[0-9]*' | cut -d: -f2)
[ "$n" = "$KEYS" ] || { echo "etcd: loaded $n keys, not $KEYS" >&2; exit 1; }
got=$("${ctl[@]}" get --prefix key0000 --keys-only | grep -c .)
prefix=$(median_ms "${ctl[@]}" get --prefix key0000)
count=$(median_ms "${ctl[@]}" get --prefix key --limit 1 -w json)
echo "target=etcd keys=$KEYS prefix_keys=$got prefix_read_ms=$prefix count_ms=$count rss_mib=$(rss_mib "$dir/etcd/")"
