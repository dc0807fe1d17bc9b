#!/usr/bin/env bash
# The whole pipeline on one machine, in one command: builds snowplow-relay, starts a
# private redis-server and the local collector, tracks a few events of each kind with
# `snowplow-relay track`, relays them, prints what the collector received, and stops
# everything it started.
#
#   ./quickstart.sh
#
# Needs: Rust (cargo) and redis-server, which it installs when missing (Debian/Ubuntu:
# apt-get, as root or through sudo; elsewhere it prints the command). Nothing else: no
# curl, no Python, no JVM. Ports: REDIS_PORT (default 6390) and COLLECTOR_PORT
# (default 9090), or the next free ones.
set -euo pipefail
cd "$(dirname "$0")"

source scripts/install-deps.sh
ensure_cargo quickstart
ensure_tools quickstart "it runs a private Redis for the relay to read from" \
  redis-server:redis-server:redis

source scripts/processes.sh
# GET a path from the collector with bash alone; prints the body.
http_get() {
  local response
  exec 3<>"/dev/tcp/127.0.0.1/$collector_port"
  printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$1" >&3
  response="$(cat <&3)"
  exec 3<&-
  printf '%s\n' "${response#*$'\r\n\r\n'}"
}

echo "==> building (cargo build --release)"
cargo build --release --locked --quiet
relay=target/release/snowplow-relay

redis_port="$(free_port "${REDIS_PORT:-6390}")"
collector_port="$(free_port "${COLLECTOR_PORT:-9090}")"
redis_url="redis://127.0.0.1:$redis_port"

echo "==> starting a private redis-server on 127.0.0.1:$redis_port"
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$work" --logfile "$work/redis.log" &
pids+=($!)
wait_for in_use "$redis_port"

echo "==> starting the local collector on 127.0.0.1:$collector_port"
"$relay" collector --listen "127.0.0.1:$collector_port" --record "$work/good.jsonl" \
  --iglu-dir examples/iglu --log-level warn &
pids+=($!)
wait_for in_use "$collector_port"

echo "==> tracking events into Redis (snowplow-relay track)"
context='{"schema":"iglu:com.acme/user/jsonschema/1-0-0","data":{"plan":"pro"}}'
track() {
  "$relay" track --redis-url "$redis_url" --user-id demo-user --platform web "$@" >>"$work/ids"
}
track --context "$context" page-view --url https://shop.example.com/ --title "Shop"
track struct --category basket --action add --label sku-1 --value 9.99
track self-describing --json '{"schema":"iglu:com.acme/checkout/jsonschema/1-0-0","data":{"step":2}}'
track --context "$context" screen-view --name Home --id screen-1
track transaction --order-id order-1 --total 21.5 --currency EUR \
  --item sku-1,9.75,2,Mug --item sku-2,2,1,Pen
expected="$(wc -l <"$work/ids")"
echo "    $expected events tracked (the transaction is one event plus one per item)"

echo "==> relaying (snowplow-relay run) until the collector has all $expected"
"$relay" run --redis-url "$redis_url" --collector "http://127.0.0.1:$collector_port" \
  --log-level warn &
relay_pid=$!
pids+=("$relay_pid")
received() { [[ "$(http_get /micro/all)" =~ \"total\":$expected[,}] ]]; }
wait_for received
kill -TERM "$relay_pid"
wait "$relay_pid"

echo
echo "GET /micro/all: $(http_get /micro/all)"
echo
printf '%-18s %-38s %s\n' "event type" "event id" "schema"
while IFS= read -r line; do
  type="$(sed -E 's/.*"eventType":"([^"]*)".*/\1/' <<<"$line")"
  eid="$(sed -E 's/.*"eid":"([^"]*)".*/\1/' <<<"$line")"
  schema="$(sed -E 's/.*"schema":"([^"]*)"\}$/\1/' <<<"$line")"
  printf '%-18s %-38s %s\n' "$type" "$eid" "$schema"
done <"$work/good.jsonl"
echo
echo "==> done; stopping the collector and redis-server"
