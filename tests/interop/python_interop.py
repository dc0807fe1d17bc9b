"""Interop with the real Python tracker (snowplow-tracker 0.15.0).

Forward: the Python Tracker sends every kind of event through two emitters at once: its
RedisEmitter (into the test's redis-server, relayed by snowplow-relay to collector B) and
its own Emitter (straight to collector A). For each event id the two collectors must hold
exactly the same fields, `stm` aside. The 0.4.0 shape (numeric dtm/tid, plain co/ue_pr,
non-ASCII text) goes the same two ways from the fixture file. One of the two passes
writes through examples/python/batching_redis_emitter.py (100 events per RPUSH) instead
of the tracker's RedisEmitter: docs/producing.md recommends it.

Reverse: events made by the Rust tracker (`snowplow-relay track`) and relayed to
collector B must satisfy payload_data 1-0-4, the contexts envelope and the
unstruct_event envelope, checked here with Python's jsonschema and base64 decoding.

Run by tests/interop/run.sh, which starts Redis, the collectors and builds the binary.
"""

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
import warnings

import jsonschema
import redis
from snowplow_tracker import Emitter, SelfDescribingJson, Subject, Tracker
from snowplow_tracker.redis import RedisEmitter

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../examples/python"))
from batching_redis_emitter import BatchingRedisEmitter  # noqa: E402

warnings.simplefilter("ignore", DeprecationWarning)
import logging  # noqa: E402

for name in ("snowplow_tracker", "snowplow_tracker.emitters", "snowplow_tracker.redis.redis_emitter"):
    logging.getLogger(name).setLevel(logging.WARNING)

REDIS_PORT = int(os.environ["REDIS_PORT"])
COLLECTOR_A = os.environ["COLLECTOR_A"]  # host:port, fed by the Python Emitter
COLLECTOR_B = os.environ["COLLECTOR_B"]  # host:port, fed by snowplow-relay
RELAY_BIN = os.environ["RELAY_BIN"]
FIXTURES = os.environ["FIXTURES"]
TRACKER_FIXTURES = os.environ["TRACKER_FIXTURES"]
IGLU = os.environ["IGLU"]
KEY = "snowplow"


def get(host, path, body=None):
    request = urllib.request.Request(
        f"http://{host}{path}", data=None if body is None else json.dumps(body).encode()
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def good_by_eid(host):
    events = get(host, "/micro/good")
    return {e["rawEvent"]["parameters"]["eid"]: e["rawEvent"]["parameters"] for e in events}


def relay_until(method, expected_total):
    """Runs snowplow-relay until collector B holds expected_total events, then SIGTERM."""
    relay = subprocess.Popen(
        [RELAY_BIN, "--redis-url", f"redis://127.0.0.1:{REDIS_PORT}",
         "--collector", f"http://{COLLECTOR_B}", "--method", method, "--log-level", "warn"],
    )
    deadline = time.time() + 60
    while get(COLLECTOR_B, "/micro/all")["total"] < expected_total:
        if time.time() > deadline or relay.poll() is not None:
            relay.kill()
            sys.exit(f"relay did not deliver {expected_total} events to B in time")
        time.sleep(0.05)
    relay.send_signal(signal.SIGTERM)
    if relay.wait(timeout=30) != 0:
        sys.exit(f"relay exited with {relay.returncode}")


def context(name, data):
    return SelfDescribingJson(f"iglu:com.acme/{name}/jsonschema/1-0-0", data)


def track_every_kind(tracker, subjects):
    """Every event kind the 0.15.0 tracker has, with contexts, timestamps, subjects."""
    ctx = [context("user", {"plan": "pro", "n": 3}), context("page", {"lang": "日本語 é"})]
    other = subjects[1]
    tracker.track_page_view("https://shop.example.com/ç?q=1&r=2", "Ünïcode “title”",
                            "https://ref.example/", context=ctx)
    tracker.track_page_ping("https://shop.example.com/", "Shop", None, 0, 10, 20, 900,
                            tstamp=1700000000123, event_subject=other)
    tracker.track_link_click("https://out.example/", "id1", ["a", "b"], "_blank", "Go",
                             context=ctx)
    tracker.track_add_to_cart("sku-1", 2, "Mug", "kitchen", 9.99, "EUR")
    tracker.track_struct_event("shop", "add", "sku-1", "prop", 6.88, context=ctx,
                               event_subject=other)
    tracker.track_struct_event("shop", "view", value=70)
    tracker.track_self_describing_event(
        context("checkout", {"step": 2, "nested": {"ok": True, "none": None}}), context=ctx)
    tracker.track_screen_view("Home", "screen-1", context=ctx)
    tracker.track_mobile_screen_view(id_="m-1", name="Basket", type="feed")
    tracker.track_ecommerce_transaction(
        "order-1", 21.5, "web", 1.5, 2.0, "Paris", "IDF", "FR", "EUR",
        items=[{"sku": "sku-1", "price": 9.75, "quantity": 2, "name": "Mug", "category": "k"},
               {"sku": "sku-2", "price": 0.5, "quantity": 1}],
        context=ctx, event_subject=other)


def forward(method):
    for host in (COLLECTOR_A, COLLECTOR_B):
        get(host, "/micro/reset")
    rdb = redis.StrictRedis(port=REDIS_PORT)
    assert rdb.llen(KEY) == 0
    host, port = COLLECTOR_A.split(":")
    direct = Emitter(host, protocol="http", port=int(port), method=method, batch_size=1)
    via_redis = RedisEmitter(rdb, KEY)
    batching = BatchingRedisEmitter(rdb, KEY, batch_size=7)
    web = (Subject().set_platform("web").set_user_id("user-ü").set_screen_resolution(1920, 1080)
           .set_viewport(1280, 720).set_color_depth(24).set_timezone("Europe/London")
           .set_lang("en-GB").set_domain_user_id("duid-1").set_domain_session_index(3)
           .set_ip_address("203.0.113.9").set_useragent("Mozilla/5.0").set_network_user_id("nu"))
    mobile = Subject().set_platform("mob").set_user_id("user-2").set_lang("ja-JP")
    for encode in (True, False):
        # The documented batching emitter on one pass, the tracker's own on the other.
        to_redis = batching if encode else via_redis
        tracker = Tracker([to_redis, direct], subject=web, namespace="ns-" + str(encode),
                          app_id="interop", encode_base64=encode)
        track_every_kind(tracker, [web, mobile])
    batching.flush()
    # The fixture shapes (0.15.0 as captured, 0.4.0: numeric dtm/tid, plain co/ue_pr,
    # non-ASCII), each with a fresh eid to compare by, through both emitters' input().
    for name in ("python-tracker-0.15.0.jsonl", "python-tracker-0.4.0-shape.jsonl"):
        with open(os.path.join(TRACKER_FIXTURES, name), encoding="utf-8") as lines:
            for line in lines:
                payload = json.loads(line)
                payload["eid"] = str(uuid.uuid4())
                via_redis.input(payload)
                direct.input(payload)
    direct.flush()
    direct.sync_flush()
    expected = rdb.llen(KEY)
    deadline = time.time() + 30
    while get(COLLECTOR_A, "/micro/all")["total"] < expected:
        if time.time() > deadline:
            sys.exit("the Python Emitter did not deliver everything to A")
        time.sleep(0.05)
    relay_until(method, expected)

    a, b = get(COLLECTOR_A, "/micro/all"), get(COLLECTOR_B, "/micro/all")
    if a["bad"] or b["bad"]:
        sys.exit(f"bad events: A {get(COLLECTOR_A, '/micro/bad')[:2]} B {get(COLLECTOR_B, '/micro/bad')[:2]}")
    direct_events, relayed_events = good_by_eid(COLLECTOR_A), good_by_eid(COLLECTOR_B)
    if len(direct_events) != expected or set(direct_events) != set(relayed_events):
        sys.exit(f"{method}: A has {len(direct_events)}, B {len(relayed_events)}, expected {expected}")
    for eid, sent in direct_events.items():
        got = dict(relayed_events[eid])
        sent = dict(sent)
        sent.pop("stm"), got.pop("stm")
        if sent != got:
            diff = {k: (sent.get(k), got.get(k)) for k in set(sent) | set(got) if sent.get(k) != got.get(k)}
            sys.exit(f"{method}: event {eid} differs (Python Emitter, relay): {diff}")
    kinds = sorted({e["eventType"] for e in get(COLLECTOR_B, "/micro/good")})
    print(f"forward {method}: {expected} events, identical field by field at both collectors; kinds {kinds}")


def schema_validator(path):
    with open(path, encoding="utf-8") as f:
        schema = json.load(f)
    schema.pop("$schema", None)
    schema.pop("self", None)
    return jsonschema.Draft4Validator(schema)


def reverse(method):
    get(COLLECTOR_B, "/micro/reset")
    redis_url = f"redis://127.0.0.1:{REDIS_PORT}"
    ctx = ["--context", json.dumps({"schema": "iglu:com.acme/user/jsonschema/1-0-0",
                                    "data": {"plan": "pro", "名前": "é"}})]
    commands = [
        ["page-view", "--url", "https://a.example/ç", "--title", "Ünïcode", "--referrer", "https://r/"],
        ["struct", "--category", "c", "--action", "a", "--label", "l", "--property", "p", "--value", "2.5"],
        ["self-describing", "--json", json.dumps({"schema": "iglu:com.acme/e/jsonschema/1-0-0",
                                                  "data": {"n": 1, "s": "ü"}})],
        ["screen-view", "--name", "Home", "--id", "s1"],
        ["transaction", "--order-id", "o1", "--total", "3.5", "--currency", "EUR",
         "--item", "s1,1.5,1,Mug", "--item", "s2,2,1"],
    ]
    ids = []
    for extra in ([], ["--no-base64"]):
        for command in commands:
            out = subprocess.run(
                [RELAY_BIN, "track", "--redis-url", redis_url, "--user-id", "u-1",
                 "--platform", "web", "--true-timestamp", "1700000000000"] + ctx + extra + command,
                check=True, capture_output=True, text=True).stdout
            ids += out.split()
    relay_until(method, len(ids))
    payload_data = schema_validator(os.path.join(FIXTURES, "payload_data-1-0-4.json"))
    contexts = schema_validator(os.path.join(FIXTURES, "schemas", "contexts-1-0-1.json"))
    unstruct = schema_validator(os.path.join(FIXTURES, "schemas", "unstruct_event-1-0-0.json"))
    received = good_by_eid(COLLECTOR_B)
    if sorted(received) != sorted(ids) or get(COLLECTOR_B, "/micro/all")["bad"]:
        sys.exit(f"reverse {method}: expected ids {sorted(ids)}, got {sorted(received)}")
    checked = {"payload_data": 0, "contexts": 0, "unstruct_event": 0}
    for parameters in received.values():
        payload_data.validate([parameters])
        checked["payload_data"] += 1
        assert parameters["tv"].startswith("rust-relay-"), parameters["tv"]
        for encoded, plain, validator, name in (("cx", "co", contexts, "contexts"),
                                                 ("ue_px", "ue_pr", unstruct, "unstruct_event")):
            if encoded in parameters:
                # Python's own decoder: base64url with padding, as the tracker writes it.
                envelope = json.loads(base64.urlsafe_b64decode(parameters[encoded]).decode("utf-8"))
            elif plain in parameters:
                envelope = json.loads(parameters[plain])
            else:
                continue
            assert envelope["schema"].startswith(f"iglu:com.snowplowanalytics.snowplow/{name}/jsonschema/1-0-")
            validator.validate(envelope["data"])
            checked[name] += 1
    print(f"reverse {method}: {len(ids)} Rust-tracked events valid; checks {checked}")


# The same calls through the Python tracker and `snowplow-relay track` (issue: a tracker
# that writes what Python writes). Each pair shares a true timestamp (ttm), by which the
# two events are found again at the collector.
PARITY_SUBJECT = [("set_platform", "web", "--platform"), ("set_user_id", "u-1", "--user-id"),
                  ("set_timezone", "Europe/London", "--timezone"), ("set_lang", "en-GB", "--lang"),
                  ("set_ip_address", "203.0.113.9", "--ip"), ("set_useragent", "Mozilla/5.0", "--useragent"),
                  ("set_domain_user_id", "duid-1", "--domain-user-id"),
                  ("set_network_user_id", "nu", "--network-user-id")]
PARITY_CONTEXT = {"schema": "iglu:com.acme/user/jsonschema/1-0-0", "data": {"plan": "pro", "n": 3, "x": 1.0, "名前": "é"}}


# The calls below that pass context=ctx; the CLI gets the same context as --context.
WITH_CONTEXT = {"page view", "structured, whole value", "self-describing", "transaction and items"}


def parity_calls(ctx):
    """(kind, Python call taking a tracker and tstamp, the CLI's arguments)."""
    sd = SelfDescribingJson
    return [
        ("page view", lambda t, ts: t.track_page_view("https://a.example/ç?q=1", "Ünïcode “t”", "https://r/", context=ctx, tstamp=ts),
         ["page-view", "--url", "https://a.example/ç?q=1", "--title", "Ünïcode “t”", "--referrer", "https://r/"]),
        ("page ping", lambda t, ts: t.track_page_ping("https://a.example/", "Shop", None, 0, 10, 20, 900, tstamp=ts),
         ["page-ping", "--url", "https://a.example/", "--title", "Shop", "--offsets", "0,10,20,900"]),
        ("structured, whole value", lambda t, ts: t.track_struct_event("shop", "add", "sku-1", "prop", 9, context=ctx, tstamp=ts),
         ["struct", "--category", "shop", "--action", "add", "--label", "sku-1", "--property", "prop", "--value", "9"]),
        ("structured, decimal value", lambda t, ts: t.track_struct_event("shop", "view", value=6.0, tstamp=ts),
         ["struct", "--category", "shop", "--action", "view", "--value", "6.0"]),
        ("self-describing", lambda t, ts: t.track_self_describing_event(sd("iglu:com.acme/checkout/jsonschema/1-0-0", {"step": 2, "total": 9.0, "ok": True, "none": None}), context=ctx, tstamp=ts),
         ["self-describing", "--json", json.dumps({"schema": "iglu:com.acme/checkout/jsonschema/1-0-0", "data": {"step": 2, "total": 9.0, "ok": True, "none": None}})]),
        ("screen view", lambda t, ts: t.track_screen_view("Home", "screen-1", tstamp=ts),
         ["screen-view", "--name", "Home", "--id", "screen-1"]),
        ("mobile screen view", lambda t, ts: t.track_mobile_screen_view(id_="m-1", name="Basket", type="feed", previous_name="Home", transition_type="push", tstamp=ts),
         ["screen-view", "--mobile", "--id", "m-1", "--name", "Basket", "--type", "feed", "--previous-name", "Home", "--transition-type", "push"]),
        ("link click", lambda t, ts: t.track_link_click("https://out.example/", "id1", ["a", "b"], "_blank", "Go", tstamp=ts),
         ["link-click", "--target-url", "https://out.example/", "--element-id", "id1", "--element-class", "a", "--element-class", "b", "--element-target", "_blank", "--element-content", "Go"]),
        ("add to cart", lambda t, ts: t.track_add_to_cart("sku-1", 2, "Mug", "kitchen", 9.99, "EUR", tstamp=ts),
         ["add-to-cart", "--sku", "sku-1", "--quantity", "2", "--name", "Mug", "--category", "kitchen", "--unit-price", "9.99", "--currency", "EUR"]),
        ("remove from cart", lambda t, ts: t.track_remove_from_cart("sku-1", 1, unit_price=9, tstamp=ts),
         ["remove-from-cart", "--sku", "sku-1", "--quantity", "1", "--unit-price", "9"]),
        ("form change", lambda t, ts: t.track_form_change("signup", "email", "INPUT", "a@example.com", "email", ["wide"], tstamp=ts),
         ["form-change", "--form-id", "signup", "--element-id", "email", "--node-name", "INPUT", "--value", "a@example.com", "--type", "email", "--element-class", "wide"]),
        ("form change, no value", lambda t, ts: t.track_form_change("signup", "note", "TEXTAREA", None, tstamp=ts),
         ["form-change", "--form-id", "signup", "--element-id", "note", "--node-name", "TEXTAREA"]),
        ("form submit", lambda t, ts: t.track_form_submit("signup", ["wide"], [{"name": "email", "value": "a@example.com", "nodeName": "INPUT", "type": "email"}, {"name": "note", "value": None, "nodeName": "TEXTAREA"}], tstamp=ts),
         ["form-submit", "--form-id", "signup", "--form-class", "wide", "--element", "email,INPUT,a@example.com,email", "--element", "note,TEXTAREA"]),
        ("site search", lambda t, ts: t.track_site_search(["red", "mug"], {"in_stock": True, "colour": "red"}, 12, 10, tstamp=ts),
         ["site-search", "--term", "red", "--term", "mug", "--filter", "in_stock=true", "--filter", "colour=red", "--total-results", "12", "--page-results", "10"]),
        ("transaction and items", lambda t, ts: t.track_ecommerce_transaction(
            "order-1", 21, "web", 1.5, 2, "Paris", "IDF", "FR", "EUR",
            items=[{"sku": "sku-1", "price": 9.75, "quantity": 2, "name": "Mug", "category": "k"},
                   {"sku": "sku-2", "price": 1, "quantity": 1}], context=ctx, tstamp=ts),
         ["transaction", "--order-id", "order-1", "--total", "21", "--affiliation", "web", "--tax", "1.5", "--shipping", "2",
          "--address", "Paris,IDF,FR", "--currency", "EUR", "--item", "sku-1,9.75,2,Mug,k", "--item", "sku-2,1,1"]),
    ]


def iglu_validator(uri):
    """A validator for `uri` from the project's copy of Iglu Central, or None if not there."""
    vendor, name, fmt, version = uri[len("iglu:"):].split("/")
    path = os.path.join(IGLU, "schemas", vendor, name, fmt, version)
    return schema_validator(path) if os.path.exists(path) else None


def parity(method):
    get(COLLECTOR_B, "/micro/reset")
    rdb = redis.StrictRedis(port=REDIS_PORT)
    subject = Subject()
    for setter, value, _ in PARITY_SUBJECT:
        getattr(subject, setter)(value)
    subject_flags = [arg for _, value, flag in PARITY_SUBJECT for arg in (flag, value)]
    ctx = [SelfDescribingJson(PARITY_CONTEXT["schema"], PARITY_CONTEXT["data"])]
    calls = parity_calls(ctx)
    ts = 1700000000000
    expected = 0
    for encode in (True, False):
        tracker = Tracker([RedisEmitter(rdb, KEY)], subject=subject, namespace="parity",
                          app_id="parity-app", encode_base64=encode)
        for kind, python_call, args in calls:
            ts += 1
            python_call(tracker, ts)
            context = ["--context", json.dumps(PARITY_CONTEXT, ensure_ascii=False)] if kind in WITH_CONTEXT else []
            subprocess.run(
                [RELAY_BIN, "track", "--redis-url", f"redis://127.0.0.1:{REDIS_PORT}", "-q",
                 "--namespace", "parity", "--app-id", "parity-app", "--true-timestamp", str(ts)]
                + subject_flags + context + ([] if encode else ["--no-base64"]) + args,
                check=True)
    # A timing has no Python 0.15 counterpart: tracked here for its schema check only.
    subprocess.run([RELAY_BIN, "track", "--redis-url", f"redis://127.0.0.1:{REDIS_PORT}", "-q",
                    "timing", "--category", "c", "--variable", "v", "--timing", "250", "--label", "l"], check=True)
    expected = rdb.llen(KEY)
    relay_until(method, expected)
    events = [e["rawEvent"]["parameters"] for e in get(COLLECTOR_B, "/micro/good")]
    if len(events) != expected or get(COLLECTOR_B, "/micro/all")["bad"]:
        sys.exit(f"parity {method}: {len(events)} good of {expected}")
    by_key = {}
    for event in events:
        if event.get("tna") != "parity":
            continue
        key = (event["ttm"], event["e"], event.get("ti_sk"))
        by_key.setdefault(key, []).append(event)
    ignored = {"eid", "dtm", "stm", "tv"}
    compared = 0
    for key, pair in sorted(by_key.items()):
        if len(pair) != 2 or {p["tv"].split("-")[0] for p in pair} != {"py", "rust"}:
            sys.exit(f"parity {method}: {key} has {[p['tv'] for p in pair]}, expected one Python and one Rust event")
        py, rust = sorted(pair, key=lambda p: p["tv"])
        py_fields = {k: v for k, v in py.items() if k not in ignored}
        rust_fields = {k: v for k, v in rust.items() if k not in ignored}
        if py_fields != rust_fields:
            diff = {k: (py_fields.get(k), rust_fields.get(k)) for k in set(py_fields) | set(rust_fields)
                    if py_fields.get(k) != rust_fields.get(k)}
            sys.exit(f"parity {method}: {key} differs (Python, Rust): {diff}")
        compared += 1
    # Every self-describing event, Python's and Rust's, against its Iglu schema.
    validated = set()
    for event in events:
        if "ue_px" in event:
            envelope = json.loads(base64.urlsafe_b64decode(event["ue_px"]).decode("utf-8"))
        elif "ue_pr" in event:
            envelope = json.loads(event["ue_pr"])
        else:
            continue
        inner = envelope["data"]
        validator = iglu_validator(inner["schema"])
        if validator is None:
            assert inner["schema"].startswith("iglu:com.acme/"), inner["schema"]
            continue
        validator.validate(inner["data"])
        validated.add(inner["schema"].split("/")[1])
    kinds = len(calls)
    if compared != 2 * kinds + 2 * 2:  # each call twice (base64 on/off); items are events too
        sys.exit(f"parity {method}: compared {compared} pairs, expected {2 * kinds + 4}")
    print(f"parity {method}: {kinds} kinds of call, {compared} Python/Rust pairs identical field by field "
          f"(eid, dtm, stm, tv aside); valid against Iglu: {sorted(validated)}")


if __name__ == "__main__":
    for method in ("post", "get"):
        forward(method)
        reverse(method)
        parity(method)
    print("python interop: OK")
