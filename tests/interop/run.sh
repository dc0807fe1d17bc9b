#!/usr/bin/env bash
# Interop with the real Python tracker: creates a venv with snowplow-tracker[redis]==0.15.0
# from PyPI, starts a private redis-server and two local collectors on free ports, and runs
# python_interop.py against the snowplow-relay binary. Exit 0 = pass.
#   tests/interop/run.sh            (builds the debug binary; RELAY_BIN overrides)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
source "$root/scripts/processes.sh"

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


REDIS_PORT="$(free_port 6390)"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
  --logfile "$work/redis.log" &
pids+=($!)
wait_for redis-cli -p "$REDIS_PORT" ping

a_port="$(free_port 9091)"; b_port="$(free_port $((a_port + 1)))"
"$RELAY_BIN" collector --listen "127.0.0.1:$a_port" --iglu-dir "$root/examples/iglu" --log-level warn & pids+=($!)
"$RELAY_BIN" collector --listen "127.0.0.1:$b_port" --iglu-dir "$root/examples/iglu" --log-level warn & pids+=($!)
wait_for python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$a_port/health')"
wait_for python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$b_port/health')"

REDIS_PORT="$REDIS_PORT" COLLECTOR_A="127.0.0.1:$a_port" COLLECTOR_B="127.0.0.1:$b_port" \
  FIXTURES="$root/tests/fixtures" IGLU="$root/iglu" TRACKER_FIXTURES="$root/crates/tracker/tests/fixtures" "$venv/bin/python" "$here/python_interop.py"

# A Micro user's test suite, unchanged, against the local collector.
MICRO="127.0.0.1:$a_port" "$venv/bin/python" "$here/micro_suite.py"
