#!/usr/bin/env bash
# A real container test of the runtime image (not part of `cargo test`).
#
# Builds the `runtime-prebuilt` image from target/release/snowplow-relay on a local
# debian:bookworm-slim made with debootstrap (Docker Hub is not reachable here), runs it
# with --network host against a private redis-server and a small collector, pushes
# events, checks they arrive (read-only root filesystem, no capabilities), checks the
# process runs as non-root and the health check passes, then `docker stop`s it mid-outage and checks every undelivered event is back
# in Redis. Starts its own dockerd (vfs storage, socket in a temp dir) and stops it.
#
# Usage: tests/docker/run.sh          exit 0 pass, 1 fail, 77 docker cannot run here
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/docker/lib.sh
begin_test docker relay-under-test

start_dockerd
# The runtime stage's base image.
import_rootfs debian:bookworm-slim

[ -x target/release/snowplow-relay ] || cargo build --release --locked
docker build --network host --target runtime-prebuilt \
  --build-arg BINARY=target/release/snowplow-relay -t snowplow-relay:test . >"$work/build.log" 2>&1 \
  || { tail -n 30 "$work/build.log"; echo "FAIL: docker build"; exit 1; }
size=$(docker image inspect snowplow-relay:test --format '{{.Size}}')
echo "image snowplow-relay:test: $((size / 1000000)) MB ($size bytes)"
# The size docs/operations.md#docker publishes ("Image size, measured by … **N MB**")
# must be what this measures, within 1 MB.
documented=$(tr '\n' ' ' <docs/operations.md | grep -o 'Image size, measured by [^*]*\*\*[0-9]* MB\*\*' \
  | grep -o '[0-9]* MB' | tail -n 1 | cut -d' ' -f1)
if [ -z "$documented" ] || [ "$size" -gt $(( (documented + 1) * 1000000 )) ] \
    || [ "$size" -lt $(( (documented - 1) * 1000000 )) ]; then
  echo "FAIL: docs/operations.md says the image is ${documented:-(not found)} MB; it is $((size / 1000000)) MB ($size bytes): update the docs"
  exit 1
fi
echo "PASS: the image size docs/operations.md gives (${documented} MB) is what it measures"

redis_port=$(free_port); collector_port=$(free_port); admin_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
redis_pid=$!
start_collector "$collector_port"
sleep 0.5
cli() { redis-cli -p "$redis_port" "$@"; }

docker run -d --name relay-under-test --network host --read-only --cap-drop ALL \
  --security-opt no-new-privileges \
  -e SNOWPLOW_RELAY_REDIS__URL="redis://127.0.0.1:$redis_port" \
  -e SNOWPLOW_RELAY_COLLECTOR__URL="http://127.0.0.1:$collector_port" \
  -e SNOWPLOW_RELAY_ADMIN__LISTEN="127.0.0.1:$admin_port" \
  -e SNOWPLOW_RELAY_WORKER__DRAIN_TIMEOUT_MS=1000 \
  snowplow-relay:test >/dev/null
push 1 500
for _ in $(seq 1 100); do [ "$(wc -l <"$work/received")" -ge 500 ] && break; sleep 0.1; done
received=$(received)
[ "$received" -eq 500 ] || { docker logs relay-under-test 2>&1 | tail -n 20; echo "FAIL: $received of 500 delivered"; exit 1; }
echo "delivered 500 of 500 through the container"

pid=$(docker inspect relay-under-test --format '{{.State.Pid}}')
uid=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")
[ "$uid" = 10001 ] || { echo "FAIL: the relay runs as uid $uid"; exit 1; }
echo "runs as uid $uid (non-root)"
docker exec relay-under-test snowplow-relay --config /etc/snowplow-relay/config.toml healthcheck >/dev/null \
  || { echo "FAIL: healthcheck inside the container"; exit 1; }
echo "healthcheck inside the container: ok"

touch "$work/outage"
push 501 800
for _ in $(seq 1 50); do [ "$(cli LLEN snowplow)" -lt 300 ] && break; sleep 0.1; done
started=$(date +%s.%N)
docker stop relay-under-test >/dev/null
stopped=$(date +%s.%N)
code=$(docker inspect relay-under-test --format '{{.State.ExitCode}}')
left=$(cli LLEN snowplow)
echo "docker stop during an outage: exit $code after $(python3 -c "print(round($stopped-$started,2))") s; $left of 300 back in the list"
[ "$code" = 0 ] || { docker logs relay-under-test | tail -n 20; echo "FAIL: exit code $code"; exit 1; }
[ "$left" = 300 ] || { echo "FAIL: $left of 300 undelivered events back in Redis"; exit 1; }
[ "$(cli LINDEX snowplow 0 | python3 -c 'import json,sys; print(json.load(sys.stdin)["eid"])')" = e501 ] \
  || { echo "FAIL: original order not kept"; exit 1; }
echo "PASS: container test"
