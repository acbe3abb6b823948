#!/usr/bin/env bash
# Starts N kvs-server replicas (default 3) as separate processes on loopback, with data in
# DIR (default: a new temp dir), and prints their client endpoints. Stops them on exit.
# Usage: scripts/cluster.sh [-n N] [-d DIR] [-b BIN_DIR] [-a ADMIN_BASE_PORT] [-t] -- COMMAND...
# runs COMMAND with KVS_ENDPOINTS set (and KVS_ADMIN_URLS, with -a: replica i serves its
# admin HTTP listener on ADMIN_BASE_PORT+i), then stops the cluster. With -t, TLS on every
# client and peer port with client certificates required (`kvs-server certs` into DIR/tls),
# and KVS_CACERT, KVS_CERT, KVS_KEY set for COMMAND. Used by scripts/bench*.sh.
set -euo pipefail
n=3 dir="" admin="" tls="" bin="$(cd "$(dirname "$0")/.." && pwd)/target/release" base=${KVS_BASE_PORT:-26000}
while [ $# -gt 0 ]; do
  case "$1" in
    -n) n=$2; shift 2 ;;
    -d) dir=$2; shift 2 ;;
    -b) bin=$2; shift 2 ;;
    -a) admin=$2; shift 2 ;;
    -t) tls=1; shift ;;
    --) shift; break ;;
    *) echo "usage: $0 [-n N] [-d DIR] [-b BIN_DIR] [-a ADMIN_BASE_PORT] [-t] -- COMMAND..." >&2; exit 2 ;;
  esac
done
[ $# -gt 0 ] || { echo "usage: $0 [-n N] [-d DIR] [-b BIN_DIR] [-a ADMIN_BASE_PORT] [-t] -- COMMAND..." >&2; exit 2; }
[ -x "$bin/kvs-server" ] || { echo "no $bin/kvs-server: run cargo build --release --bins" >&2; exit 2; }
own_dir=0
if [ -z "$dir" ]; then dir=$(mktemp -d /tmp/kvs-cluster.XXXXXX); own_dir=1; fi
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$own_dir" = 1 ]; then rm -rf "$dir"; fi
}
trap cleanup EXIT
if [ -n "$tls" ]; then
  "$bin/kvs-server" certs --out "$dir/tls" --nodes "$n" --force >/dev/null
  export KVS_CACERT=$dir/tls/ca.pem KVS_CERT=$dir/tls/client-root.pem KVS_KEY=$dir/tls/client-root-key.pem
fi
peers="" clients=""
for i in $(seq 1 "$n"); do
  peers+="${peers:+,}$i=127.0.0.1:$((base + 100 + i))"
  clients+="${clients:+,}$i=127.0.0.1:$((base + i))"
done
endpoints="" admin_urls=""
for i in $(seq 1 "$n"); do
  admin_args=()
  if [ -n "$admin" ]; then
    admin_args=(--admin-addr "127.0.0.1:$((admin + i))")
    admin_urls+="${admin_urls:+ }http://127.0.0.1:$((admin + i))"
  fi
  tls_args=()
  if [ -n "$tls" ]; then
    tls_args=(--cert-file "$dir/tls/node-$i.pem" --key-file "$dir/tls/node-$i-key.pem"
      --trusted-ca-file "$dir/tls/ca.pem" --client-cert-auth
      --peer-cert-file "$dir/tls/node-$i.pem" --peer-key-file "$dir/tls/node-$i-key.pem"
      --peer-trusted-ca-file "$dir/tls/ca.pem")
  fi
  ${KVS_SERVER_WORKERS:+env TOKIO_WORKER_THREADS=$KVS_SERVER_WORKERS} "$bin/kvs-server" --id "$i" --peers "$peers" --client-addr "127.0.0.1:$((base + i))" \
    --client-addrs "$clients" --data-dir "$dir/node-$i" --log-level "${KVS_SERVER_LOG:-warn}" \
    "${admin_args[@]}" "${tls_args[@]}" >"$dir/node-$i.log" 2>&1 &
  pids+=($!)
  endpoints+="${endpoints:+,}127.0.0.1:$((base + i))"
done
export KVS_ENDPOINTS=$endpoints
export KVS_ADMIN_URLS=$admin_urls
export KVS_PIDS="${pids[*]}"
for _ in $(seq 100); do
  if "$bin/kvs-client" -o json status 2>/dev/null | grep -q "\"leader\":[0-9]" && ! "$bin/kvs-client" status 2>&1 | grep -q unreachable; then break; fi
  sleep 0.1
done
for i in $(seq 1 "$n"); do
  if ! kill -0 "${pids[$((i - 1))]}" 2>/dev/null; then
    echo "replica $i did not start:" >&2
    tail -5 "$dir/node-$i.log" >&2
    exit 1
  fi
done
"$@"
