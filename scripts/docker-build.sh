#!/usr/bin/env bash
# Builds statically linked kvs-server and kvs-client (target/static) and the FROM-scratch
# image kvs:local (override with KVS_IMAGE). Needs no registry: nothing is pulled.
# Usage: scripts/docker-build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
image=${KVS_IMAGE:-kvs:local}
target=x86_64-unknown-linux-gnu
# The explicit --target keeps build scripts and proc-macros dynamic; only the binaries are
# static. A separate target dir keeps this build from invalidating the normal one.
export CARGO_TARGET_DIR=${KVS_STATIC_TARGET_DIR:-$PWD/target/static}
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked --target "$target" --bins
bin="$CARGO_TARGET_DIR/$target/release"
for b in kvs-server kvs-client; do
  if ! file "$bin/$b" | grep -q 'statically linked\|static-pie linked'; then
    echo "$bin/$b is not statically linked: $(file "$bin/$b")" >&2
    exit 1
  fi
done
ctx=$(mktemp -d /tmp/kvs-docker-ctx.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
cp docker/Dockerfile "$bin/kvs-server" "$bin/kvs-client" "$ctx/"
mkdir "$ctx/data"
# The release profile keeps line tables (debug = 1); the image does not need them.
if command -v strip >/dev/null 2>&1; then strip "$ctx/kvs-server" "$ctx/kvs-client"; fi
# The classic builder: it needs no buildx plugin and, FROM scratch, never contacts a registry.
DOCKER_BUILDKIT=0 docker build --quiet -t "$image" "$ctx" >/dev/null
echo "built $image ($(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.1f MB", $1/1e6}'))"
