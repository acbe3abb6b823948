#!/usr/bin/env bash
# Runs the containerised kvs cluster (docker/compose.yaml, or docker/compose.5.yaml for 5).
# Usage: scripts/docker-cluster.sh up|down|status [3|5]
#   up      builds kvs:local if it is missing (scripts/docker-build.sh), starts the replicas
#           and waits (bounded) until they elect a leader; prints the client endpoints
#   down    stops and removes the containers and network; the named volumes (the data) stay,
#           so the next `up` recovers every replica's log and snapshot
#   status  `docker-compose ps` and `kvs-client status` through the published ports
# Wipe the data with: docker-compose -p kvs -f docker/compose.yaml down -v
# Environment: KVS_PROJECT (compose project, default kvs / kvs5), KVS_IMAGE, and the
# compose file's own variables (KVS_NET_PREFIX, KVS_PORT_1.., ...).
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=${1:-}
n=${2:-3}
case "$n" in
  3) file=docker/compose.yaml; project=${KVS_PROJECT:-kvs} ;;
  5) file=docker/compose.5.yaml; project=${KVS_PROJECT:-kvs5} ;;
  *) echo "usage: $0 up|down|status [3|5]" >&2; exit 2 ;;
esac
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose -p "$project" -f "$file")
elif command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose -p "$project" -f "$file")
else
  echo "neither 'docker compose' nor docker-compose is installed" >&2
  exit 2
fi
image=${KVS_IMAGE:-kvs:local}
endpoints=""
for i in $(seq 1 "$n"); do
  port_var="KVS_PORT_$i"
  endpoints+="${endpoints:+,}127.0.0.1:${!port_var:-$((6000 + i))}"
done
# kvs-client from the image (the host may not have one built).
kvs_client() {
  docker run --rm --network host --entrypoint /usr/local/bin/kvs-client "$image" \
    --endpoints "$endpoints" "$@"
}
case "$cmd" in
  up)
    if ! docker image inspect "$image" >/dev/null 2>&1; then scripts/docker-build.sh; fi
    start=$(date +%s%N)
    "${compose[@]}" up -d
    for _ in $(seq 120); do
      if kvs_client -o json status 2>/dev/null | grep -q '"leader":[0-9]'; then
        echo "cluster up ($n replicas, leader elected after $(( ($(date +%s%N) - start) / 1000000 )) ms)"
        echo "KVS_ENDPOINTS=$endpoints"
        exit 0
      fi
      sleep 0.5
    done
    echo "no leader after 60s; see: ${compose[*]} logs" >&2
    exit 1
    ;;
  down) "${compose[@]}" down ;;
  status)
    "${compose[@]}" ps
    kvs_client status
    ;;
  *) echo "usage: $0 up|down|status [3|5]" >&2; exit 2 ;;
esac
