#!/usr/bin/env bash
# The local collector with the real Snowplow trackers (tests/micro/trackers/suite.mjs):
# @snowplow/node-tracker and @snowplow/browser-tracker from npm at the versions of
# tests/micro/trackers/package-lock.json (installed into target/micro-trackers), the
# browser tracker in Debian's headless `chromium` driven by puppeteer-core (no browser is
# downloaded), then the Python tracker 1.1.0 from PyPI (tests/interop/micro_trackers.py).
#   tests/micro/trackers.sh   exit 0 pass, 1 fail, 77 node, npm or chromium unavailable
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$(pwd)"
source scripts/processes.sh

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; } \
    || { echo "trackers test skipped: cannot install ${need[*]}"; exit 77; }
fi
if [ -z "${RELAY_BIN:-}" ]; then
  cargo build --locked --quiet --bin snowplow-relay
  RELAY_BIN="$root/target/debug/snowplow-relay"
fi

modules="$root/target/micro-trackers"
mkdir -p "$modules"
cp tests/micro/trackers/package.json tests/micro/trackers/package-lock.json tests/micro/trackers/suite.mjs "$modules/"
if ! cmp -s "$modules/package-lock.json" "$modules/node_modules/.package-lock.json.installed" 2>/dev/null; then
  (cd "$modules" && PUPPETEER_SKIP_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error) \
    || { echo "trackers test skipped: npm ci failed (no registry?)"; exit 77; }
  cp "$modules/package-lock.json" "$modules/node_modules/.package-lock.json.installed"
fi

venv="$root/target/trackers-venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import snowplow_tracker' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'snowplow-tracker==1.1.0'
fi

port="$(free_port 9290)"
"$RELAY_BIN" collector --listen "127.0.0.1:$port" --log-level warn &
pids+=($!)
wait_for in_use "$port"
url="http://127.0.0.1:$port"

status=0
node "$modules/suite.mjs" "$url" "$(command -v chromium)" || status=1
"$venv/bin/python" tests/interop/micro_trackers.py "$url" || status=1
exit $status
