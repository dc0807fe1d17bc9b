"""A test suite written the way Snowplow Micro's users write theirs, run against
`snowplow-relay collector` unchanged: events from the real Python tracker (0.15), then
Micro's API: /micro/reset, /micro/all, /micro/good with each filter, /micro/bad with
each filter, /micro/iglu. Also the validation rules Micro applies (atomic field types,
self-describing data against Iglu schemas), each with a bad case next to the good ones.

Run by tests/interop/run.sh with MICRO=host:port of a collector started with
--iglu-dir examples/iglu.
"""

import json
import os
import sys
import urllib.parse
import urllib.request
import uuid

import logging
import warnings

from snowplow_tracker import Emitter, SelfDescribingJson, Subject, Tracker

warnings.simplefilter("ignore", DeprecationWarning)
for name in ("snowplow_tracker", "snowplow_tracker.emitters"):
    logging.getLogger(name).setLevel(logging.WARNING)

MICRO = os.environ["MICRO"]
SNOWPLOW = "iglu:com.snowplowanalytics.snowplow"
SCREEN_VIEW = f"{SNOWPLOW}/screen_view/jsonschema/1-0-0"
USER = "iglu:com.acme/user/jsonschema/1-0-0"
checks = 0


def micro(path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{MICRO}{path}", data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def check(condition, what):
    global checks
    if not condition:
        sys.exit(f"micro suite: FAILED: {what}")
    checks += 1


def raw_get(**fields):
    """One event by GET /i, as a hand-written tracker would send it."""
    query = urllib.parse.urlencode({"e": "pv", "p": "web", "tv": "test-0", "eid": str(uuid.uuid4()), **fields})
    urllib.request.urlopen(f"http://{MICRO}/i?{query}", timeout=10).read()


def main():
    check(micro("/micro/reset") == {"total": 0, "good": 0, "bad": 0}, "reset answers zero counts")
    host, port = MICRO.split(":")
    for method in ("post", "get"):
        emitter = Emitter(host, protocol="http", port=int(port), method=method, batch_size=1)
        tracker = Tracker(emitter, subject=Subject().set_platform("web").set_user_id("u-1"),
                          namespace="suite", app_id="micro-suite")
        user = [SelfDescribingJson(USER, {"plan": "pro"})]
        tracker.track_page_view("https://shop.example.com/", "Shop", context=user)
        tracker.track_struct_event("shop", "add", "sku-1", value=2)
        tracker.track_screen_view("Home", "s-1")
        tracker.track_link_click("https://out.example/", "cta")
        # Bad: data its schema refuses, and a schema that resolves nowhere.
        tracker.track_self_describing_event(SelfDescribingJson(SCREEN_VIEW, {"name": 123}))
        tracker.track_page_view("https://shop.example.com/x",
                                context=[SelfDescribingJson("iglu:com.acme/nowhere/jsonschema/1-0-0", {})])
        emitter.flush()

    summary = micro("/micro/all")
    check(set(summary) == {"total", "good", "bad"}, f"/micro/all holds exactly total, good, bad: {summary}")
    check(summary == {"total": 12, "good": 8, "bad": 4}, f"counts: {summary}")

    good = micro("/micro/good")
    check(len(good) == 8, "all good events listed")
    first = good[0]
    for key in ("rawEvent", "eventType", "schema", "contexts", "event"):
        check(key in first, f"a good event has {key}")
    for key in ("api", "parameters", "contentType", "source", "context"):
        check(key in first["rawEvent"], f"rawEvent has {key}")
    check(first["rawEvent"]["api"]["vendor"] == "com.snowplowanalytics.snowplow", "rawEvent.api.vendor")
    check("useragent" in first["rawEvent"]["context"] and "ipAddress" in first["rawEvent"]["context"],
          "rawEvent.context has useragent and ipAddress")
    # Newest first: the GET round came last, its link click is first.
    check(first["eventType"] == "unstruct" and first["rawEvent"]["api"]["version"] == "tp1",
          f"newest first: {first['eventType']} via {first['rawEvent']['api']['version']}")

    page_views = micro("/micro/good", {"event_type": "page_view"})
    check(len(page_views) == 2 and all(e["eventType"] == "page_view" for e in page_views), "event_type filter")
    event = page_views[0]["event"]
    check(event["app_id"] == "micro-suite" and event["platform"] == "web" and event["event"] == "page_view",
          f"enriched atomic fields: {event['app_id']}, {event['platform']}")
    check(event["page_url"] == "https://shop.example.com/" and event["page_urlhost"] == "shop.example.com",
          "page_url and its parts")
    check(event["user_id"] == "u-1" and event["name_tracker"] == "suite", "user_id and name_tracker")
    check(event["contexts"]["data"][0]["schema"] == USER, "contexts in the enriched event")
    check(event["derived_tstamp"] is not None and event["event_id"] == page_views[0]["rawEvent"]["parameters"]["eid"],
          "derived_tstamp and event_id")

    structs = micro("/micro/good", {"event_type": "struct"})
    check(structs[0]["event"]["se_category"] == "shop" and structs[0]["event"]["se_value"] == 2,
          "se_category and se_value")

    screens = micro("/micro/good", {"schema": SCREEN_VIEW})
    check(len(screens) == 2 and screens[0]["event"]["unstruct_event"]["data"]["data"]["name"] == "Home",
          "schema filter and unstruct_event")
    with_user = micro("/micro/good", {"contexts": [USER]})
    check(len(with_user) == 2 and all(USER in e["contexts"] for e in with_user), "contexts filter")
    newest = micro("/micro/good", {"limit": 1})
    check(len(newest) == 1 and newest[0] == first, "limit keeps the newest")
    check(micro("/micro/good", {"event_type": "page_view", "limit": 1}) == page_views[:1], "filters combine")

    bad = micro("/micro/bad")
    check(len(bad) == 4 and all(e["errors"] for e in bad), "bad events carry errors")
    errors = " ".join(error for e in bad for error in e["errors"])
    check("screen_view" in errors and "/name" in errors, f"the failed check names schema and field: {errors}")
    check("com.acme/nowhere" in errors and "not found" in errors, "an unresolvable schema is named")
    check(len(micro("/micro/bad", {"vendor": "com.snowplowanalytics.snowplow", "version": "tp2"})) == 2,
          "bad filtered by vendor and version (POST: tp2)")
    check(len(micro("/micro/bad", {"version": "tp1"})) == 2, "bad filtered by version (GET: tp1)")
    check(len(micro("/micro/bad", {"vendor": "com.other"})) == 0, "bad filtered by vendor")
    check(len(micro("/micro/bad", {"limit": 1})) == 1, "bad limit")

    schema = micro("/micro/iglu/com.snowplowanalytics.snowplow/screen_view/jsonschema/1-0-0")
    check(schema["self"]["name"] == "screen_view", "/micro/iglu serves Snowplow's schemas")
    check(micro("/micro/iglu/com.acme/user/jsonschema/1-0-0")["self"]["vendor"] == "com.acme",
          "/micro/iglu serves the --iglu-dir schemas")
    try:
        micro("/micro/iglu/com.acme/nowhere/jsonschema/1-0-0")
        check(False, "an unknown schema is 404")
    except urllib.error.HTTPError as error:
        check(error.code == 404, "an unknown schema is 404")

    # Atomic fields typed as the enrichment types them: a good and a bad case each.
    micro("/micro/reset")
    cases = [("eid", str(uuid.uuid4()), "invalidEventId"), ("dtm", "1700000000000", "notanumber"),
             ("p", "mob", "xyz"), ("ttm", "1700000000000", "soon")]
    for field, good_value, bad_value in cases:
        raw_get(**{field: good_value})
        raw_get(**{field: bad_value})
    for field, good_value, bad_value in [("se_va", "9.5", "notnum")]:
        raw_get(e="se", se_ca="c", se_ac="a", **{field: good_value})
        raw_get(e="se", se_ca="c", se_ac="a", **{field: bad_value})
    for field, good_value, bad_value in [("tr_tt", "21.5", "lots"), ("ti_pr", "9", "cheap")]:
        base = {"e": "tr", "tr_id": "o", "tr_tt": "1"} if field == "tr_tt" else {"e": "ti", "ti_id": "o", "ti_sk": "s", "ti_qu": "1", "ti_pr": "1"}
        raw_get(**{**base, field: good_value})
        raw_get(**{**base, field: bad_value})
    all_now = micro("/micro/all")
    check(all_now == {"total": 14, "good": 7, "bad": 7}, f"one good, one bad per atomic rule: {all_now}")
    messages = " ".join(error for e in micro("/micro/bad") for error in e["errors"])
    for field, _, bad_value in cases + [("se_va", "", "notnum"), ("tr_tt", "", "lots"), ("ti_pr", "", "cheap")]:
        check(f"atomic field {field}" in messages and bad_value in messages, f"{field}={bad_value} is named")
    check(micro("/micro/reset") == {"total": 0, "good": 0, "bad": 0}, "reset")
    check(micro("/micro/all") == {"total": 0, "good": 0, "bad": 0}, "nothing after reset")
    print(f"micro suite: {checks} checks passed against http://{MICRO}")


if __name__ == "__main__":
    main()
