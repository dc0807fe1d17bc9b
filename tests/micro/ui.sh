#!/usr/bin/env bash
# The local collector's page (/micro/ui) in headless Chromium (Debian's `chromium`,
# installed when missing): events of each kind, good and bad, and a hostile one are sent;
# the page, rendered by the browser with its script run, must list them newest first,
# filter them from its URL (?show=, ?event_type=), open one to its fields, show a bad
# event's errors, and show the hostile value as text (no element made from it). Leaves a
# screenshot at target/micro-ui.png.
#   tests/micro/ui.sh        exit 0 pass, 1 fail, 77 no browser can be installed here
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$(pwd)"
source scripts/processes.sh

if ! command -v chromium >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; } \
    || { echo "micro ui test skipped: cannot install chromium"; exit 77; }
fi
if [ -z "${RELAY_BIN:-}" ]; then
  cargo build --locked --quiet --bin snowplow-relay
  RELAY_BIN="$root/target/debug/snowplow-relay"
fi

port="$(free_port 9190)"
"$RELAY_BIN" collector --listen "127.0.0.1:$port" --iglu-dir examples/iglu --log-level warn &
pids+=($!)
wait_for in_use "$port"
url="http://127.0.0.1:$port"

track() { "$RELAY_BIN" track --collector "$url" -q "$@"; }
get() { python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1]).read()" "$url$1"; }
track page-view --url https://shop.example.com/ --title Shop
track struct --category shop --action add --value 2
track screen-view --name Home --id s-1
get "/i?e=pv&p=xyz&tv=t&eid=5b1ce3b8-2f2d-4b4c-a7cd-2a0f6f4e2d4b"      # bad: p
sleep 0.01
# Hostile: markup in a value must stay text.
track page-view --url https://evil.example/ --title '<img src=x onerror="document.body.dataset.pwned=1">'

browser() {
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$work/chromium" --virtual-time-budget=5000 "$@" 2>/dev/null
}
failures=0
expect() { if eval "$2"; then echo "PASS: $1"; else echo "FAIL: $1"; failures=$((failures + 1)); fi; }
count() { grep -o "$1" <<<"$dom" | wc -l; }

dom="$(browser --dump-dom "$url/micro/ui")"
expect "the page loaded its events" '[[ $dom == *data-loaded=\"true\"* ]]'
expect "five events listed, good and bad" '[ "$(count "<details ")" = 5 ]'
expect "four good, one bad" '[ "$(count "data-kind=\"good\"")" = 4 ] && [ "$(count "data-kind=\"bad\"")" = 1 ]'
first="$(grep -o '<details[^>]*>' <<<"$dom" | head -1)"
expect "newest first (the hostile page view)" '[[ $first == *page_view* ]] && [[ $dom == *evil.example* ]]'
expect "the counts in the header" '[[ $dom == *\<b\ id=\"total\"\>5\</b\>* ]]'
expect "markup from an event stays text" '[[ $dom == *"&lt;img src=x"* ]] && [[ $dom != *"<img src=\"x\""* ]] && [[ $dom != *data-pwned* ]]'

dom="$(browser --dump-dom "$url/micro/ui?show=good&event_type=page_view")"
expect "filtered by event type from the URL" '[ "$(count "<details ")" = 2 ] && [ "$(count "data-event-type=\"page_view\"")" = 2 ]'

dom="$(browser --dump-dom "$url/micro/ui?show=bad&open=first")"
expect "bad events with their errors, opened" '[ "$(count "<details ")" = 1 ] && [[ $dom == *"<details class=\"event bad\" data-kind=\"bad\" open=\"\""* ]] && [[ $dom == *"atomic field p"* ]]'

dom="$(browser --dump-dom "$url/micro/ui?q=Home&open=first")"
expect "text search, an event opened to its fields" '[ "$(count "<details ")" = 1 ] && [[ $dom == *"<td>unstruct_event</td>"* ]] && [[ $dom == *"<td>app_id</td>"* ]]'

mkdir -p target
browser --screenshot="$root/target/micro-ui.png" --window-size=1280,720 --hide-scrollbars \
  "$url/micro/ui?open=first" >/dev/null
expect "a screenshot was taken" '[ -s target/micro-ui.png ]'

if [ "$failures" -gt 0 ]; then
  echo "micro ui: $failures check(s) failed"
  exit 1
fi
echo "micro ui: all checks passed (screenshot: target/micro-ui.png)"
