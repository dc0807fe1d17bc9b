#!/usr/bin/env bash
# Interop with the real Python tracker: creates a venv with snowplow-tracker[redis]==0.15.0
# from PyPI, starts a private redis-server and two local collectors on free ports, and runs
# python_interop.py against the snowplow-relay binary. Exit 0 = pass.
#   tests/interop/run.sh            (builds the debug binary; RELAY_BIN overrides)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

venv="${INTEROP_VENV:-$root/target/interop-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import snowplow_tracker, jsonschema, redis' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    'snowplow-tracker[redis]==0.15.0' 'jsonschema>=4,<5'
fi
"$venv/bin/python" -c 'import snowplow_tracker; print("snowplow-tracker", snowplow_tracker.__version__ if hasattr(snowplow_tracker, "__version__") else "0.15.0")'

if [ -z "${RELAY_BIN:-}" ]; then
  (cd "$root" && cargo build --locked --quiet --bin snowplow-relay)
  RELAY_BIN="$root/target/debug/snowplow-relay"
fi
export RELAY_BIN

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { for _ in $(seq 1 200); do "$@" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "timed out: $*" >&2; return 1; }

REDIS_PORT="$(free_port)"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
  --logfile "$work/redis.log" &
pids+=($!)
wait_for redis-cli -p "$REDIS_PORT" ping

a_port="$(free_port)"; b_port="$(free_port)"
"$RELAY_BIN" collector --listen "127.0.0.1:$a_port" --log-level warn & pids+=($!)
"$RELAY_BIN" collector --listen "127.0.0.1:$b_port" --log-level warn & pids+=($!)
wait_for python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$a_port/health')"
wait_for python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$b_port/health')"

REDIS_PORT="$REDIS_PORT" COLLECTOR_A="127.0.0.1:$a_port" COLLECTOR_B="127.0.0.1:$b_port" \
  FIXTURES="$root/tests/fixtures" TRACKER_FIXTURES="$root/crates/tracker/tests/fixtures" "$venv/bin/python" "$here/python_interop.py"
