"""The local collector with the real Python tracker 1.1.0 (run by tests/micro/trackers.sh in
a venv of its own): events of each kind by POST and GET, checked as Micro users check them;
Python 1.x wraps contexts in the contexts 1-0-1 envelope, shown re-encoded under 1-0-0.
   python micro_trackers.py COLLECTOR_URL
"""

import json
import logging
import sys
import urllib.parse
import urllib.request

from snowplow_tracker import (Emitter, PageView, ScreenView, SelfDescribing,
                              SelfDescribingJson, StructuredEvent, Tracker)

logging.disable(logging.INFO)
URL = sys.argv[1]
SNOWPLOW = "iglu:com.snowplowanalytics.snowplow"
failures = 0


def micro(path, body=None):
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request(URL + path, data=data), timeout=10) as answer:
        return json.loads(answer.read())


def check(name, ok, detail=""):
    global failures
    print(("PASS: " if ok else "FAIL: ") + name + ("" if ok else f"\n{detail}"))
    failures += 0 if ok else 1


parts = urllib.parse.urlsplit(URL)
for method in ("post", "get"):
    micro("/micro/reset")
    emitter = Emitter(parts.hostname, protocol=parts.scheme, port=parts.port, method=method,
                      batch_size=1 if method == "get" else 10)
    tracker = Tracker(f"py-{method}", emitter, app_id="suite", encode_base64=method == "get")
    page = SelfDescribingJson(f"{SNOWPLOW}/web_page/jsonschema/1-0-0",
                              {"id": "2b4e0b2f-5b5c-4f0f-9f5e-1d0e6f7a8b9c"})
    tracker.track(PageView(page_url="https://shop.example/", page_title="Shop", context=[page]))
    tracker.track(StructuredEvent(category="checkout", action="pay", value=3))
    tracker.track(ScreenView(name="Home", id_="5b1ce3b8-2f2d-4b4c-a7cd-2a0f6f4e2d4b"))
    tracker.track(SelfDescribing(SelfDescribingJson(f"{SNOWPLOW}/link_click/jsonschema/1-0-1",
                                                    {"targetUrl": "https://shop.example/cart"}),
                                 context=[page]))
    tracker.flush()
    summary = micro("/micro/all")
    check(f"python tracker 1.1.0, {method}: every event good", summary == {"total": 4, "good": 4, "bad": 0},
          f"{summary} {json.dumps(micro('/micro/bad'))[:2000]}")
    good = micro("/micro/good")
    with_page = [e for e in good if e["event"]["contexts"].get("data")]
    check(f"python tracker 1.1.0, {method}: contexts re-encoded under contexts 1-0-0",
          len(with_page) == 2 and all(e["event"]["contexts"]["schema"] == f"{SNOWPLOW}/contexts/jsonschema/1-0-0"
                                      for e in with_page)
          and all(e["rawEvent"]["parameters"].get("cx", e["rawEvent"]["parameters"].get("co", "")) for e in with_page),
          json.dumps([e["event"]["contexts"] for e in good])[:2000])
    check(f"python tracker 1.1.0, {method}: newest first, every column",
          good[0]["event"]["event_name"] == "link_click" and good[-1]["event"]["event"] == "page_view"
          and all(len(e["event"]) == 131 for e in good),
          [e["event"]["event_name"] for e in good])
    struct = micro("/micro/good", {"event_type": "struct"})
    check(f"python tracker 1.1.0, {method}: by properties", len(struct) == 1
          and struct[0]["event"]["se_category"] == "checkout", json.dumps(struct)[:1000])

print("python tracker 1.1.0: all checks passed" if failures == 0 else f"python tracker 1.1.0: {failures} failed")
sys.exit(1 if failures else 0)
