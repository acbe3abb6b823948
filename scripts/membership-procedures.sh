#!/usr/bin/env bash
# Runs the membership procedures of the README, command for command, on loopback (ports
# 6001-6006 and 7001-7006), in a new temp dir, and checks the outcome of each step:
#   1. three replicas, some data;
#   2. grow 3 -> 5 (add 4 and 5 as learners, start them empty, wait for catch-up, promote);
#   3. shrink back to 3 (remove 5 and 4, which stop by themselves with exit code 0);
#   4. replace replica 3 after its disk was lost (remove 3, add 6 empty, catch up, promote).
# Usage: scripts/membership-procedures.sh [BIN_DIR]   (default target/release; build first
# with cargo build --release --bins). Exits non-zero, naming the step, if one fails.
set -euo pipefail
bin=${1:-"$(cd "$(dirname "$0")/.." && pwd)/target/release"}
[ -x "$bin/kvs-server" ] && [ -x "$bin/kvs-client" ] || {
  echo "no kvs-server/kvs-client in $bin: run cargo build --release --bins" >&2
  exit 2
}
export PATH="$bin:$PATH"
dir=$(mktemp -d /tmp/kvs-membership.XXXXXX)
cd "$dir"
cleanup() {
  jobs -p | xargs -r kill 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT
step() { echo "== $*"; }
die() {
  echo "FAILED: $*" >&2
  tail -n 5 "$dir"/node-*.log >&2 || true
  echo "logs and data kept in $dir" >&2
  trap - EXIT
  cleanup
  exit 1
}
# Waits until `kvs-client member list` shows node $1 at most 16 slots behind the leader.
wait_caught_up() {
  for _ in $(seq 300); do
    lag=$(kvs-client -o json member list 2>/dev/null | grep -o "\"id\":$1,\"lag\":[0-9]*" | grep -o '[0-9]*$' || true)
    if [ -n "$lag" ] && [ "$lag" -le 16 ]; then return 0; fi
    sleep 0.1
  done
  die "node $1 did not catch up"
}
voters() { kvs-client -o json member list | grep -o '"id":[0-9]*,"lag":[0-9a-z]*,"leader":[a-z]*,"peer_addr":"[^"]*","role":"voter"' | grep -o '^"id":[0-9]*' | grep -o '[0-9]*' | tr '\n' ' '; }

step "three replicas, each its own process"
pids=()
for i in 1 2 3; do
  kvs-server --id $i --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 \
    --client-addr 127.0.0.1:600$i --client-addrs 1=127.0.0.1:6001,2=127.0.0.1:6002,3=127.0.0.1:6003 \
    --data-dir ./data/node-$i >> node-$i.log 2>&1 &
  pids[$i]=$!
done
export KVS_ENDPOINTS=127.0.0.1:6001,127.0.0.1:6002,127.0.0.1:6003
for _ in $(seq 100); do kvs-client put greeting hello 2>/dev/null && break; sleep 0.1; done
for k in $(seq 1 200); do kvs-client put key-$k value-$k; done
kvs-client member list

step "grow 3 -> 5"
kvs-client member add 4 --peer-addr 127.0.0.1:7004 --client-addr 127.0.0.1:6004
kvs-server --id 4 --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003,4=127.0.0.1:7004 \
  --client-addr 127.0.0.1:6004 --data-dir ./data/node-4 --initial-cluster-state existing >> node-4.log 2>&1 &
pid4=$!
wait_caught_up 4
kvs-client member list
kvs-client member promote 4
kvs-client member add 5 --peer-addr 127.0.0.1:7005 --client-addr 127.0.0.1:6005
kvs-server --id 5 --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003,5=127.0.0.1:7005 \
  --client-addr 127.0.0.1:6005 --data-dir ./data/node-5 --initial-cluster-state existing >> node-5.log 2>&1 &
pid5=$!
wait_caught_up 5
kvs-client member promote 5
kvs-client member list
[ "$(voters)" = "1 2 3 4 5 " ] || die "the voters are $(voters), not 1 2 3 4 5"
[ "$(kvs-client get key-77)" = value-77 ] || die "key-77 lost"

step "shrink back to 3"
kvs-client member remove 5
kvs-client member remove 4
kvs-client member list
[ "$(voters)" = "1 2 3 " ] || die "the voters are $(voters), not 1 2 3"
wait "$pid4" || die "removed replica 4 did not exit with success"
wait "$pid5" || die "removed replica 5 did not exit with success"
kvs-client put after-shrink yes

step "replace replica 3, whose disk was lost"
kill -9 "${pids[3]}"  # the stand-in for the lost machine
wait "${pids[3]}" 2>/dev/null || true
rm -rf ./data/node-3
kvs-client member remove 3
kvs-client member add 6 --peer-addr 127.0.0.1:7006 --client-addr 127.0.0.1:6006
kvs-server --id 6 --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,6=127.0.0.1:7006 \
  --client-addr 127.0.0.1:6006 --data-dir ./data/node-6 --initial-cluster-state existing >> node-6.log 2>&1 &
wait_caught_up 6
kvs-client member promote 6
kvs-client member list
[ "$(voters)" = "1 2 6 " ] || die "the voters are $(voters), not 1 2 6"
[ "$(kvs-client get key-150)" = value-150 ] || die "key-150 lost"
[ "$(kvs-client get after-shrink)" = yes ] || die "after-shrink lost"
echo "all procedures done; logs in $dir"
