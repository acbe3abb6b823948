#!/usr/bin/env bash
# Runs the backup and restore procedure of the README, command for command, on loopback
# (ports 6001-6003 and 7001-7003 for the cluster backed up, 6011-6013 and 7011-7013 for the
# one restored), in a new temp dir, and checks the outcome of each step:
#   1. three replicas, some data;
#   2. snapshot save while a writer keeps writing, snapshot status;
#   3. a damaged copy of the backup is refused by snapshot status and by restore;
#   4. the old cluster is stopped; three new data dirs are restored from the backup;
#   5. the new cluster starts, serves every key written before the save, takes writes.
# Usage: scripts/backup-restore-procedure.sh [BIN_DIR]   (default target/release; build
# first with cargo build --release --bins). Exits non-zero, naming the step, if one fails.
set -euo pipefail
bin=${1:-"$(cd "$(dirname "$0")/.." && pwd)/target/release"}
[ -x "$bin/kvs-server" ] && [ -x "$bin/kvs-client" ] || {
  echo "no kvs-server/kvs-client in $bin: run cargo build --release --bins" >&2
  exit 2
}
bin=$(cd "$bin" && pwd)
export PATH="$bin:$PATH"
dir=$(mktemp -d /tmp/kvs-backup.XXXXXX)
cd "$dir"
cleanup() {
  jobs -p | xargs -r kill 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT
step() { echo "== $*"; }
die() {
  echo "FAILED: $*" >&2
  tail -n 5 "$dir"/*.log >&2 || true
  echo "logs and data kept in $dir" >&2
  trap - EXIT
  cleanup
  exit 1
}

step "three replicas, some data"
for i in 1 2 3; do
  kvs-server --id $i --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 \
    --client-addr 127.0.0.1:600$i --client-addrs 1=127.0.0.1:6001,2=127.0.0.1:6002,3=127.0.0.1:6003 \
    --data-dir ./data/node-$i >> node-$i.log 2>&1 &
done
export KVS_ENDPOINTS=127.0.0.1:6001,127.0.0.1:6002,127.0.0.1:6003
for _ in $(seq 100); do kvs-client put greeting hello 2>/dev/null && break; sleep 0.1; done
for k in $(seq 1 200); do kvs-client put key-$k value-$k; done

step "snapshot save while a writer keeps writing, then snapshot status"
( for k in $(seq 1 100000); do kvs-client put later-$k x >/dev/null 2>&1 || true; done ) &
writer=$!
kvs-client snapshot save backup.kvs
kvs-client snapshot status backup.kvs
kill "$writer" 2>/dev/null || true
wait "$writer" 2>/dev/null || true
keys=$(kvs-client -o json snapshot status backup.kvs | grep -o '"keys":[0-9]*' | grep -o '[0-9]*$')
[ "$keys" -ge 201 ] || die "the backup holds $keys keys, not at least 201"

step "a damaged copy is refused"
head -c 1000 backup.kvs > cut.kvs
if kvs-client snapshot status cut.kvs 2> status.err; then die "status accepted a truncated file"; fi
grep -q "cut.kvs" status.err || die "status did not name the truncated file: $(cat status.err)"
if kvs-server restore --from cut.kvs --data-dir ./restored/cut --id 1 \
  --peers 1=127.0.0.1:7011 2> restore.err; then die "restore accepted a truncated file"; fi
grep -q "cut.kvs" restore.err || die "restore did not name the truncated file: $(cat restore.err)"
[ ! -e ./restored/cut ] || die "restore wrote a data dir from a truncated file"

step "stop the old cluster; restore three new data dirs from the backup"
jobs -p | xargs -r kill
wait 2>/dev/null || true
for i in 1 2 3; do
  kvs-server restore --from backup.kvs --data-dir ./restored/node-$i --id $i \
    --peers 1=127.0.0.1:7011,2=127.0.0.1:7012,3=127.0.0.1:7013 \
    --client-addrs 1=127.0.0.1:6011,2=127.0.0.1:6012,3=127.0.0.1:6013 \
    --initial-cluster-token restored-1
done
if kvs-server restore --from backup.kvs --data-dir ./restored/node-1 --id 1 \
  --peers 1=127.0.0.1:7011,2=127.0.0.1:7012,3=127.0.0.1:7013 2> again.err; then
  die "restore wrote over a data dir that is not empty"
fi

step "start the restored cluster; every key is there"
for i in 1 2 3; do
  kvs-server --id $i --peers 1=127.0.0.1:7011,2=127.0.0.1:7012,3=127.0.0.1:7013 \
    --client-addr 127.0.0.1:601$i --client-addrs 1=127.0.0.1:6011,2=127.0.0.1:6012,3=127.0.0.1:6013 \
    --data-dir ./restored/node-$i >> restored-$i.log 2>&1 &
done
export KVS_ENDPOINTS=127.0.0.1:6011,127.0.0.1:6012,127.0.0.1:6013
for _ in $(seq 100); do kvs-client get greeting >/dev/null 2>&1 && break; sleep 0.1; done
[ "$(kvs-client get greeting)" = hello ] || die "greeting lost"
for k in 1 77 200; do
  [ "$(kvs-client get key-$k)" = value-$k ] || die "key-$k lost"
done
kvs-client put after-restore yes
[ "$(kvs-client get after-restore)" = yes ] || die "the restored cluster does not take writes"
kvs-client member list
echo "backup and restore done; logs in $dir"
