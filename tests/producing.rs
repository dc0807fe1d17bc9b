//! The producing side end to end: the Rust tracker into a real redis-server, the relay,
//! and the local collector (`snowplow-relay collector`) that validates what it receives;
//! the HTTP emitter's hooks; the `track` and `collector` commands as processes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Map, Value, json};
use snowplow_relay::config::Method;
use snowplow_relay::micro::{CollectorOptions, LocalCollector};
use snowplow_relay_tracker::{
    EcommerceTransaction, Emit, HttpEmitter, PagePing, PageView, Payload, Platform, RedisEmitter,
    ScreenView, SelfDescribingJson, Structured, Subject, Timestamp, Timing, TrackOptions, Tracker,
    TransactionItem,
};

use crate::support::*;

const CONTEXTS_SCHEMA_JSON: &str = include_str!("fixtures/schemas/contexts-1-0-1.json");
const UNSTRUCT_SCHEMA_JSON: &str = include_str!("fixtures/schemas/unstruct_event-1-0-0.json");

/// Starts the local collector on a free port, with the example Iglu registry (the
/// `com.acme` schemas these tests use); returns it and its URL.
async fn local_collector(options: CollectorOptions) -> (LocalCollector, String) {
    let collector = LocalCollector::new(CollectorOptions {
        iglu_dirs: vec![concat!(env!("CARGO_MANIFEST_DIR"), "/examples/iglu").into()],
        ..options
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(collector.clone().serve(listener, std::future::pending()));
    (collector, url)
}

/// The collector's good events by eid, as parameter maps.
fn good_by_eid(collector: &LocalCollector) -> HashMap<String, Map<String, Value>> {
    collector
        .good()
        .into_iter()
        .map(|event| {
            let parameters = event["rawEvent"]["parameters"].as_object().unwrap().clone();
            (parameters["eid"].as_str().unwrap().to_owned(), parameters)
        })
        .collect()
}

fn context(name: &str, data: Value) -> SelfDescribingJson {
    SelfDescribingJson::new(format!("iglu:com.acme/{name}/jsonschema/1-0-0"), data).unwrap()
}

/// One event of every kind, with contexts, timestamps and per-event subjects mixed in.
fn every_kind() -> Vec<(snowplow_relay_tracker::Event, TrackOptions)> {
    let contexts = Some(vec![
        context("user", json!({"plan": "pro", "since": 2019})),
        context("page", json!({"lang": "日本語", "tags": ["a", "b"]})),
    ]);
    let mobile = Subject::new()
        .platform(Platform::Mob)
        .user_id("user-ü")
        .screen_resolution(390, 844)
        .viewport(390, 700)
        .color_depth(24)
        .timezone("Asia/Tokyo")
        .language("ja-JP")
        .ip_address("203.0.113.9")
        .useragent("Mozilla/5.0 (iPhone)")
        .domain_user_id("duid-1")
        .network_user_id("nuid-1");
    let with = |contexts: Option<Vec<SelfDescribingJson>>,
                timestamp: Option<Timestamp>,
                subject: Option<Subject>| TrackOptions {
        contexts,
        timestamp,
        subject,
    };
    vec![
        (
            PageView::new("https://shop.example.com/ç?q=1&r=2")
                .title("Ünïcode “title”")
                .referrer("https://example.com/")
                .into(),
            with(contexts.clone(), None, None),
        ),
        (
            PagePing::new("https://shop.example.com/")
                .offsets(0, 10, 20, 900)
                .into(),
            with(
                None,
                Some(Timestamp::True(1_700_000_000_123)),
                Some(mobile.clone()),
            ),
        ),
        (
            Structured::new("shop", "add")
                .label("sku-1")
                .property("p")
                .value(9.99)
                .into(),
            with(
                contexts.clone(),
                Some(Timestamp::Device(1_700_000_000_456)),
                None,
            ),
        ),
        (
            context(
                "checkout",
                json!({"step": 2, "nested": {"ok": true, "none": null}}),
            )
            .into(),
            with(contexts.clone(), None, Some(mobile.clone())),
        ),
        (
            ScreenView::new().name("Home").id("s-1").into(),
            with(None, None, None),
        ),
        (
            Timing::new("load", "dom", 250).label("cold").into(),
            with(contexts.clone(), None, None),
        ),
        (
            EcommerceTransaction::new("order-1", 21.5)
                .affiliation("web")
                .tax_value(1.5)
                .shipping(2.0)
                .address("Paris", "IDF", "FR")
                .currency("EUR")
                .item(
                    TransactionItem::new("sku-1", 9.75, 2)
                        .name("Mug")
                        .category("kitchen"),
                )
                .item(TransactionItem::new("sku-2", 0.5, 1))
                .into(),
            with(contexts, None, Some(mobile)),
        ),
    ]
}

/// Each received event holds exactly the tracker's fields, as strings, plus `stm`.
fn assert_exactly(sent: &Payload, received: &Map<String, Value>) {
    for (name, value) in sent.fields() {
        let expected = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        assert_eq!(received[name], Value::String(expected), "field {name}");
    }
    assert!(received["stm"].as_str().unwrap().parse::<u64>().is_ok());
    assert_eq!(received.len(), sent.fields().count() + 1, "only stm added");
}

/// The payload_data, contexts and unstruct_event schemas all accept `parameters`.
fn assert_schemas_accept(parameters: &Map<String, Value>) {
    let payload_data = validator(PAYLOAD_DATA_SCHEMA);
    let contexts = validator(CONTEXTS_SCHEMA_JSON);
    let unstruct = validator(UNSTRUCT_SCHEMA_JSON);
    let array = Value::Array(vec![Value::Object(parameters.clone())]);
    let errors: Vec<String> = payload_data
        .iter_errors(&array)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "payload_data: {errors:?}");
    let decode = |field: &str, base64: bool| -> Option<Value> {
        let text = parameters.get(field)?.as_str().unwrap();
        let bytes = if base64 {
            base64::engine::general_purpose::URL_SAFE
                .decode(text)
                .unwrap()
        } else {
            text.as_bytes().to_vec()
        };
        Some(serde_json::from_slice(&bytes).unwrap())
    };
    if let Some(envelope) = decode("cx", true).or_else(|| decode("co", false)) {
        assert_eq!(envelope["schema"], snowplow_relay_tracker::CONTEXTS_SCHEMA);
        let errors: Vec<String> = contexts
            .iter_errors(&envelope["data"])
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "contexts: {errors:?}");
    }
    if let Some(envelope) = decode("ue_px", true).or_else(|| decode("ue_pr", false)) {
        assert_eq!(
            envelope["schema"],
            snowplow_relay_tracker::UNSTRUCT_EVENT_SCHEMA
        );
        let errors: Vec<String> = unstruct
            .iter_errors(&envelope["data"])
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "unstruct_event: {errors:?}");
    }
}

async fn rust_tracker_through_redis_and_the_relay(method: &str) {
    let redis = RedisServer::start();
    let (collector, url) = local_collector(CollectorOptions::default()).await;
    let emitter = RedisEmitter::connect(&redis.url(), LIST).await.unwrap();
    let base64 = Tracker::new(
        "web",
        "shop",
        emitter.clone(),
        Some(Subject::new().user_id("u-1")),
    );
    let plain = Tracker::new("srv", "shop-backend", emitter, None).encode_base64(false);
    let mut sent = Vec::new();
    for tracker in [&base64, &plain] {
        for (event, options) in every_kind() {
            let payloads = tracker.payloads(&event, &options).unwrap();
            tracker.emit(payloads.clone()).await.unwrap();
            sent.extend(payloads);
        }
    }
    // track() itself, and a switched subject.
    let mut switching = base64.clone();
    switching.set_subject(Subject::new().platform(Platform::Tv).user_id("u-2"));
    let id = switching
        .track(PageView::new("https://tv.example/"), None)
        .await
        .unwrap();
    assert_eq!(redis.llen(LIST), sent.len() + 1);
    let last: Value = serde_json::from_slice(&redis.lrange(LIST).pop().unwrap()).unwrap();
    assert_eq!(last["eid"], id.to_string());
    assert_eq!(
        (last["p"].as_str(), last["uid"].as_str()),
        (Some("tv"), Some("u-2"))
    );

    let relay = Relay::start(config_for_urls(
        &redis.url(),
        &url,
        &[("collector.method", method)],
    ));
    wait_until("the collector holds every event", 20, async || {
        collector.totals().total as usize == sent.len() + 1
    })
    .await;
    relay.stop().await;
    assert_eq!(collector.bad(), Vec::<Value>::new(), "no bad events");
    let received = good_by_eid(&collector);
    for payload in &sent {
        let parameters = &received[payload.event_id().unwrap()];
        assert_exactly(payload, parameters);
        assert_schemas_accept(parameters);
    }
    // The collector classified them as Micro does.
    let good = collector.good();
    let types: Vec<&str> = good
        .iter()
        .map(|e| e["eventType"].as_str().unwrap())
        .collect();
    let kinds = [
        "page_view",
        "page_ping",
        "struct",
        "unstruct",
        "transaction",
        "transaction_item",
    ];
    assert_all_present(&types, &kinds);
    // Only self-describing events have a schema.
    let schemas: Vec<&str> = good.iter().filter_map(|e| e["schema"].as_str()).collect();
    let wanted = [
        "iglu:com.snowplowanalytics.snowplow/screen_view/jsonschema/1-0-0",
        "iglu:com.snowplowanalytics.snowplow/timing/jsonschema/1-0-0",
        "iglu:com.acme/checkout/jsonschema/1-0-0",
    ];
    assert_all_present(&schemas, &wanted);
}

#[tokio::test]
async fn rust_tracker_events_of_every_kind_arrive_intact_by_post() {
    rust_tracker_through_redis_and_the_relay("post").await;
}

#[tokio::test]
async fn rust_tracker_events_of_every_kind_arrive_intact_by_get() {
    rust_tracker_through_redis_and_the_relay("get").await;
}

#[tokio::test]
async fn python_fixtures_are_all_good_at_the_local_collector() {
    let redis = RedisServer::start();
    let (collector, url) = local_collector(CollectorOptions::default()).await;
    // The fixtures with event ids of UUID form (Micro's rule; `ev-N` would be bad).
    let fixtures = fixture_events();
    let events: Vec<String> = (0..360)
        .map(|i| with_eid(&fixtures[i % fixtures.len()], &test_uuid(i)))
        .collect();
    redis.rpush(LIST, &events);
    let relay = Relay::start(config_for_urls(&redis.url(), &url, &[]));
    wait_until("360 events", 20, async || collector.totals().total == 360).await;
    relay.stop().await;
    assert_eq!(collector.totals().bad, 0, "{:?}", collector.bad().first());
    assert_eq!(collector.good().len(), 360);
}

/// An HTTP client for the tests' own plain-HTTP requests.
fn http_client() -> TestClient {
    TestClient
}

/// A `/micro/…` endpoint's JSON answer: GET, or POST with `body` (a filter).
async fn micro(url: &str, path: &str, body: Option<&str>) -> Value {
    let client = http_client();
    let request = match body {
        Some(body) => client.post(format!("{url}{path}")).body(body.to_owned()),
        None => client.get(format!("{url}{path}")),
    };
    let answer = request.send().await.unwrap().bytes().await.unwrap();
    serde_json::from_slice(&answer).unwrap()
}

/// Posts `body` to the collector's tp2 endpoint.
async fn post(url: &str, body: impl Into<bytes::Bytes>) -> crate::support::http::TestAnswer {
    http_client()
        .post(format!("{url}/com.snowplowanalytics.snowplow/tp2"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_local_collector_agrees_with_the_payload_data_schema() {
    let (collector, url) = local_collector(CollectorOptions::default()).await;
    let schema = validator(PAYLOAD_DATA_SCHEMA);
    let base = || json!({"e": "pv", "p": "pc", "tv": "t", "url": "u"});
    let mut cases = vec![base()];
    for (name, value) in [
        ("dtm", json!(1)),
        ("zz", json!("x")),
        ("aid", json!(null)),
        ("aid", json!(["x"])),
        ("ue_na", json!("name")),
        ("tnuid", json!("n")),
    ] {
        let mut case = base();
        case[name] = value;
        cases.push(case);
    }
    for required in ["e", "p", "tv"] {
        let mut case = base();
        case.as_object_mut().unwrap().remove(required);
        cases.push(case);
    }
    cases.push(json!("not an object"));
    for case in &cases {
        http_client()
            .get(format!("{url}/micro/reset"))
            .send()
            .await
            .unwrap();
        let body = json!({
            "schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4",
            "data": [case],
        });
        assert_eq!(post(&url, body.to_string()).await.status(), 200);
        let schema_says = schema.is_valid(&json!([case]));
        let collector_says = collector.totals().good == 1;
        assert_eq!(collector_says, schema_says, "{case}: {:?}", collector.bad());
        assert_eq!(collector.totals().total, 1);
    }
}

#[tokio::test]
async fn the_local_collector_answers_like_micro() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("good.jsonl");
    let (collector, url) = local_collector(CollectorOptions {
        max_events: 5,
        max_body_bytes: 4096,
        record: Some(record.clone()),
        ..Default::default()
    })
    .await;
    let client = http_client();
    // GET /i and the tp1 path; a pixel comes back.
    for path in ["/i", "/ice.png", "/com.snowplowanalytics.snowplow/tp1"] {
        let response = client
            .get(format!(
                "{url}{path}?e=se&p=pc&tv=t&se_ca=c&se_ac=a&eid={}",
                test_uuid(path.len())
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "image/gif");
        assert_eq!(
            response.headers()["cache-control"],
            "no-cache, no-store, must-revalidate",
            "the stream collector's"
        );
    }
    // A duplicate query parameter is bad.
    client
        .get(format!("{url}/i?e=pv&p=pc&tv=t&p=web"))
        .send()
        .await
        .unwrap();
    // Over the body limit: 413, nothing stored.
    let big = format!("{{\"data\":\"{}\"}}", "x".repeat(5000));
    assert_eq!(post(&url, big).await.status(), 413);
    // Not payload_data: 200 (as the real collector), one bad event.
    assert_eq!(post(&url, "[1,2]").await.status(), 200);
    let all = micro(&url, "/micro/all", None).await;
    assert_eq!(all, json!({"total": 5, "good": 3, "bad": 2}));
    // Filters, as Micro's; newest first, the limit keeping the newest.
    let filtered = micro(
        &url,
        "/micro/good",
        Some(r#"{"event_type":"struct","limit":2}"#),
    )
    .await;
    assert_eq!(filtered.as_array().unwrap().len(), 2);
    let tp1_path = "/com.snowplowanalytics.snowplow/tp1";
    assert_eq!(
        filtered[0]["rawEvent"]["parameters"]["eid"],
        test_uuid(tp1_path.len())
    );
    assert_eq!(
        filtered[1]["rawEvent"]["parameters"]["eid"],
        test_uuid("/ice.png".len())
    );
    let bad = micro(&url, "/micro/bad", None).await;
    let first_error = |i: usize| bad[i]["errors"][0].as_str().unwrap().to_owned();
    assert!(first_error(0).contains("payload_data"), "{bad}");
    assert!(first_error(1).contains("appears twice"), "{bad}");
    // A filter key Micro does not know is ignored, as Micro ignores it (582e716: 400).
    let unknown = micro(&url, "/micro/good", Some(r#"{"nope":1,"limit":1}"#)).await;
    assert_eq!(unknown.as_array().unwrap().len(), 1, "{unknown}");
    let refused = client
        .post(format!("{url}/micro/good"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    // Micro's API carries no CORS headers: another page in the developer's browser may
    // not read or reset the store (582e716 allowed any origin, with credentials).
    for request in [
        client.get(format!("{url}/micro/good")),
        client.get(format!("{url}/micro/all")),
        client.request("OPTIONS", format!("{url}/micro/reset")),
    ] {
        let response = request
            .header("origin", "https://evil.example")
            .send()
            .await
            .unwrap();
        assert!(
            !response
                .headers()
                .contains_key("access-control-allow-origin"),
            "{:?}",
            response.headers()
        );
    }
    assert_eq!(collector.totals().total, 5, "no reset by the preflight");
    // CORS preflight.
    let preflight = client
        .request(
            "OPTIONS",
            format!("{url}/com.snowplowanalytics.snowplow/tp2"),
        )
        .header("origin", "https://site.example")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 200);
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://site.example"
    );
    assert!(
        preflight.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("Content-Type")
    );
    // Bounded: the sixth and seventh events push the oldest out, counted.
    for i in 0..2 {
        client
            .get(format!("{url}/i?e=pv&p=pc&tv=t&eid={}", test_uuid(100 + i)))
            .send()
            .await
            .unwrap();
    }
    assert_eq!(collector.totals().dropped, 2);
    assert_eq!(collector.good().len() + collector.bad().len(), 5);
    // Every good event was recorded, one JSON line each (by the recording thread).
    wait_until("five lines recorded", 10, async || {
        std::fs::read_to_string(&record).is_ok_and(|lines| lines.lines().count() == 5)
    })
    .await;
    let lines = std::fs::read_to_string(&record).unwrap();
    assert!(
        lines
            .lines()
            .all(|l| serde_json::from_str::<Value>(l).is_ok())
    );
    // Health and reset.
    assert_eq!(
        client
            .get(format!("{url}/health"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "ok",
        "the stream collector 3.x's answer"
    );
    client
        .post(format!("{url}/micro/reset"))
        .send()
        .await
        .unwrap();
    assert_eq!(collector.totals().total, 0);
    assert!(collector.good().is_empty());
    // Credentials a client sent are never listed with the event.
    let with_credentials = http_client()
        .get(format!(
            "{url}/i?e=pv&p=pc&tv=t&url=http://x/&eid={}",
            test_uuid(99)
        ))
        .header("authorization", "Basic c2VjcmV0OnB3")
        .header("proxy-authorization", "Bearer proxy-token")
        .header("cookie", "sp=cookie-value")
        .header("x-kept", "yes")
        .send()
        .await
        .unwrap();
    assert_eq!(with_credentials.status(), 200);
    let good = micro(&url, "/micro/good", None).await;
    let headers = good[0]["rawEvent"]["context"]["headers"].to_string();
    assert!(headers.contains("x-kept: yes"), "{headers}");
    for secret in ["c2VjcmV0OnB3", "proxy-token", "cookie-value"] {
        assert!(!headers.contains(secret), "{secret} listed: {headers}");
    }
    // A batch is listed newest first too, as Micro 3.0 lists it: `limit 1` after one
    // batched POST is the last event tracked (582e716: the first).
    let batch = json!({
        "schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4",
        "data": [
            {"e": "pv", "p": "pc", "tv": "t", "url": "http://x/", "eid": test_uuid(201)},
            {"e": "pv", "p": "pc", "tv": "t", "url": "http://x/", "eid": test_uuid(202)},
        ]
    });
    assert_eq!(post(&url, batch.to_string()).await.status(), 200);
    let last = micro(&url, "/micro/good", Some(r#"{"limit":1}"#)).await;
    assert_eq!(last[0]["event"]["event_id"], test_uuid(202), "{last}");
}

#[tokio::test]
async fn the_http_emitter_reports_delivered_and_refused_events_to_its_hooks() {
    // The collector refuses (400, never retried) any batch holding a "refuse-me" title.
    let collector = Collector::start_with(Box::new(|request| {
        if String::from_utf8_lossy(&request.body).contains("refuse-me") {
            400
        } else {
            200
        }
    }))
    .await;
    /// What an `on_failure` hook hears: events sent before the failure, and the rest.
    type Refused = (usize, Vec<Payload>);
    let delivered = Arc::new(Mutex::new(0usize));
    let failed: Arc<Mutex<Vec<Refused>>> = Arc::default();
    let (d, f) = (delivered.clone(), failed.clone());
    let emitter = HttpEmitter::builder(collector.url())
        .buffer_size(5)
        .on_success(move |n| *d.lock().unwrap() += n)
        .on_failure(move |sent, unsent| f.lock().unwrap().push((sent, unsent)))
        .build()
        .unwrap();
    let tracker = Tracker::new("ns", "app", emitter, None);
    let mut refused_id = None;
    for i in 0..12 {
        let title = if i == 7 { "refuse-me" } else { "fine" };
        let id = tracker
            .track(PageView::new("https://e.example/").title(title), None)
            .await
            .unwrap();
        if i == 7 {
            refused_id = Some(id.to_string());
        }
    }
    tracker.close().await.unwrap();
    let failed = std::mem::take(&mut *failed.lock().unwrap());
    assert_eq!(failed.len(), 1, "one batch refused");
    let (sent, unsent) = &failed[0];
    assert_eq!((*sent, unsent.len()), (0, 5));
    assert!(unsent.iter().any(|p| p.event_id() == refused_id.as_deref()));
    assert_eq!(*delivered.lock().unwrap(), 7, "the other 7 delivered");
    assert_eq!(collector.delivered().len(), 7);

    // Emitting after close is refused.
    let emitter = HttpEmitter::builder(collector.url()).build().unwrap();
    emitter.close().await.unwrap();
    let payloads = Tracker::builder("ns", "app")
        .payloads(&PageView::new("u").into(), &TrackOptions::default())
        .unwrap();
    assert!(emitter.emit(payloads).await.is_err());
}

#[tokio::test]
async fn closing_an_http_emitter_that_cannot_deliver_hands_the_events_back() {
    let closed = ClosedPort::new(); // connections refused
    let unsent = Arc::new(Mutex::new(Vec::new()));
    let u = unsent.clone();
    let emitter = HttpEmitter::builder(closed.http_url())
        .method(Method::Get)
        .close_timeout(Duration::from_millis(300))
        .on_failure(move |_, events| u.lock().unwrap().extend(events))
        .build()
        .unwrap();
    let tracker = Tracker::new("ns", "app", emitter, None);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            tracker
                .track(Structured::new("c", "a"), None)
                .await
                .unwrap()
                .to_string(),
        );
    }
    let started = std::time::Instant::now();
    tracker.close().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    let mut back: Vec<String> = unsent
        .lock()
        .unwrap()
        .iter()
        .map(|p| p.event_id().unwrap().to_owned())
        .collect();
    back.sort();
    ids.sort();
    assert_eq!(back, ids, "every undelivered event is handed back");
}

#[tokio::test]
async fn the_track_and_collector_commands_work_as_processes() {
    let redis = RedisServer::start();
    // Into Redis: one id per line, the element as the Python RedisEmitter writes it.
    let output = run_bin(
        &[
            "track",
            "--redis-url",
            &redis.url(),
            "--user-id",
            "u-9",
            "--context",
            r#"{"schema":"iglu:com.acme/c/jsonschema/1-0-0","data":{"a":1}}"#,
            "transaction",
            "--order-id",
            "o-1",
            "--total",
            "3",
            "--item",
            "s1,1.5,2,Mug",
        ],
        &[],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let ids: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(ids.len(), 2, "the transaction and its item");
    let elements = redis.lrange(LIST);
    assert_eq!(elements.len(), 2);
    let item: Value = serde_json::from_slice(&elements[1]).unwrap();
    assert_eq!(item["eid"], ids[1].as_str());
    assert_eq!(
        (
            item["e"].as_str(),
            item["ti_qu"].as_i64(),
            item["uid"].as_str()
        ),
        (Some("ti"), Some(2), Some("u-9"))
    );
    // --count, quietly.
    let output = run_bin(
        &[
            "track",
            "--redis-url",
            &redis.url(),
            "--count",
            "2500",
            "-q",
            "page-view",
            "--url",
            "https://x/",
        ],
        &[],
    );
    assert!(output.status.success(), "{output:?}");
    assert_eq!(redis.llen(LIST), 2502);
    // Bad input: exit 2 and a message naming the problem; nothing pushed.
    for (args, says) in [
        (vec!["page-view", "--url", ""], "url must not be empty"),
        (
            vec!["--context", "{\"schema\":\"x\",\"data\":1}", "screen-view"],
            "Iglu URI",
        ),
        (
            vec!["self-describing", "--json", "[1]"],
            "must be an object",
        ),
    ] {
        let output = run_bin(
            &[&["track", "--redis-url", &redis.url()], &args[..]].concat(),
            &[],
        );
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains(says),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert_eq!(redis.llen(LIST), 2502);

    // The collector process, fed directly by track --collector.
    let collector = RelayProcess::start_with(&["collector", "--listen", "127.0.0.1:0"], &[]);
    let addr = collector.listening_addr("local collector listening").await;
    let url = format!("http://{addr}");
    let output = run_bin(
        &[
            "track",
            "--collector",
            &url,
            "--count",
            "3",
            "-q",
            "struct",
            "--category",
            "c",
            "--action",
            "a",
        ],
        &[],
    );
    assert!(output.status.success(), "{output:?}");
    // Flags after the event's subcommand, as people type them.
    let output = run_bin(
        &[
            "track",
            "page-view",
            "--url",
            "https://x/",
            "--collector",
            &url,
            "-q",
        ],
        &[],
    );
    assert!(output.status.success(), "{output:?}");
    let (status, all) = http_get(addr, "/micro/all").await;
    assert_eq!(status, 200);
    let all: Value = serde_json::from_str(&all).unwrap();
    assert_eq!(all["good"], 4);
    collector.stop_cleanly().await;
}

/// One element holding a lone surrogate escape (`"\ud800"`), relayed by POST in a batch
/// with 40 others, byte for byte: the local collector judges it as enrich does (the
/// escape is kept, then written as the replacement character), so it does not make the
/// other 40 events of its request bad. (On 582e716 the whole body was refused.)
#[tokio::test]
async fn one_lone_surrogate_never_makes_its_batch_bad() {
    let (collector, url) = local_collector(CollectorOptions::default()).await;
    let redis = RedisServer::start();
    let eid = |i: usize| format!("8c6c1b4e-6b7b-4d62-9b8e-{i:012}");
    let mut events: Vec<String> = (0..41)
        .map(|i| {
            format!(
                r#"{{"e":"pv","p":"pc","tv":"t","eid":"{}","url":"https://x/"}}"#,
                eid(i)
            )
        })
        .collect();
    events[20] = format!(
        r#"{{"e":"pv","p":"pc","tv":"t","eid":"{}","url":"http://x/\ud800"}}"#,
        eid(20)
    );
    redis.rpush(LIST, &events);
    let relay = Relay::start(config_for_urls(&redis.url(), &url, &[]));
    wait_until("41 events at the collector", 20, async || {
        collector.good().len() + collector.bad().len() == 41
    })
    .await;
    relay.stop().await;
    assert_eq!(collector.bad().len(), 0, "bad events");
    let lone = good_by_eid(&collector)
        .remove(&eid(20))
        .expect("the event with the lone surrogate is good");
    assert_eq!(lone["url"], "http://x/\u{fffd}");
}

/// Every default browser-tracker event carries the `web_page` entity (and often
/// `client_session`, `browser_context`): with all of Iglu Central shipped they are good
/// with no network, as at Micro (582e716 knew 22 Snowplow schemas and made them bad); a
/// schema Iglu Central does not have still makes the event bad, and `/micro/iglu` serves
/// what the collector resolves.
#[tokio::test]
async fn real_trackers_default_entities_resolve_against_the_shipped_iglu_central() {
    let (_collector, url) = local_collector(CollectorOptions::default()).await;
    let entity = |schema: &str, data: Value| json!({"schema": schema, "data": data});
    let contexts = |entities: Vec<Value>| {
        json!({"schema": "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0", "data": entities})
            .to_string()
    };
    let web_page = entity(
        "iglu:com.snowplowanalytics.snowplow/web_page/jsonschema/1-0-0",
        json!({"id": "2b4e0b2f-5b5c-4f0f-9f5e-1d0e6f7a8b9c"}),
    );
    let browser = entity(
        "iglu:com.snowplowanalytics.snowplow/browser_context/jsonschema/2-0-0",
        json!({"viewport": "1280x720", "documentSize": "1280x2000", "cookiesEnabled": true,
               "resolution": "1920x1080", "colorDepth": 24, "online": true}),
    );
    let unknown = entity("iglu:com.acme.nowhere/thing/jsonschema/1-0-0", json!({}));
    let batch = json!({
        "schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4",
        "data": [
            {"e": "pv", "p": "web", "tv": "js-4.6.0", "url": "http://x/", "eid": test_uuid(301),
             "co": contexts(vec![web_page.clone(), browser])},
            {"e": "pv", "p": "web", "tv": "js-4.6.0", "url": "http://x/", "eid": test_uuid(302),
             "co": contexts(vec![web_page, unknown])},
        ]
    });
    assert_eq!(post(&url, batch.to_string()).await.status(), 200);
    let good = micro(&url, "/micro/good", None).await;
    let bad = micro(&url, "/micro/bad", None).await;
    assert_eq!(good.as_array().unwrap().len(), 1, "{bad}");
    assert_eq!(good[0]["event"]["event_id"], test_uuid(301));
    let errors = bad[0]["errors"].to_string();
    assert!(
        errors.contains("com.acme.nowhere/thing") && errors.contains("not found"),
        "{errors}"
    );
    let served = micro(
        &url,
        "/micro/iglu/com.snowplowanalytics.snowplow/web_page/jsonschema/1-0-0",
        None,
    )
    .await;
    assert_eq!(served["self"]["name"], "web_page", "{served}");
    // Micro 3's `/micro/events` (582e716: 404): the good event and the incomplete one
    // (the bad event enriched all the same: its valid entity kept, the unknown one left
    // out, a `failure` entity with the errors), newest first, flattened.
    let events = micro(&url, "/micro/events", None).await;
    let listed = events.as_array().unwrap();
    assert_eq!(listed.len(), 2, "{events}");
    let (incomplete, good) = (&listed[0], &listed[1]);
    assert_eq!(good["event_id"], test_uuid(301));
    let pages = &good["contexts_com_snowplowanalytics_snowplow_web_page_1"];
    assert_eq!(
        pages[0]["id"], "2b4e0b2f-5b5c-4f0f-9f5e-1d0e6f7a8b9c",
        "{events}"
    );
    assert!(
        good.get("contexts_com_snowplowanalytics_snowplow_failure_1")
            .is_none()
    );
    assert_eq!(incomplete["event_id"], test_uuid(302));
    assert!(
        incomplete
            .get("contexts_com_snowplowanalytics_snowplow_web_page_1")
            .is_some()
    );
    assert!(
        incomplete
            .get("contexts_com_acme_nowhere_thing_1")
            .is_none(),
        "{incomplete}"
    );
    let failure = &incomplete["contexts_com_snowplowanalytics_snowplow_failure_1"][0];
    assert_eq!(failure["failureType"], "ValidationError");
    assert!(
        failure["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("com.acme.nowhere/thing")
    );
}

/// What the collector adds from the request, as the stream collector and enrich do
/// (582e716: `useragent`, `user_ipaddress` and `network_userid` null for every real
/// tracker, no cookie, header values cut at 64 bytes): the User-Agent, the client's
/// address (X-Forwarded-For's first, else the peer), the `sp` cookie set and read back,
/// `tnuid` winning over it; under `SP-Anonymous` nothing of the client is kept.
#[tokio::test]
async fn the_collector_adds_the_user_agent_the_address_and_its_cookie_as_the_stream_collector_does()
{
    let (_collector, url) = local_collector(CollectorOptions::default()).await;
    let client = http_client();
    // A real browser's User-Agent is longer than 64 bytes; it stays whole.
    let agent = format!(
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) {}",
        "Chrome/131.0.0.0 Safari/537.36 ".repeat(3).trim_end()
    );
    let pixel = |eid: usize| {
        format!(
            "{url}/i?e=pv&p=web&tv=js-4.6.0&url=http%3A%2F%2Fx%2F&eid={}",
            test_uuid(eid)
        )
    };
    let first = client
        .get(pixel(401))
        .header("user-agent", &agent)
        .header("x-forwarded-for", "203.0.113.7, 10.0.0.1")
        .send()
        .await
        .unwrap();
    let set_cookie = first.headers()["set-cookie"].to_str().unwrap().to_owned();
    let nuid = set_cookie
        .strip_prefix("sp=")
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("{set_cookie}"))
        .to_owned();
    assert!(uuid::Uuid::parse_str(&nuid).is_ok(), "{set_cookie}");
    for attribute in [
        "; Expires=",
        "; Path=/",
        "; SameSite=None",
        "; Secure",
        "; HttpOnly",
    ] {
        assert!(set_cookie.contains(attribute), "{attribute}: {set_cookie}");
    }
    // The cookie comes back; the peer's address when nothing is forwarded; `tnuid` wins.
    let cookie = format!("other=1; sp={nuid}");
    let second = client
        .get(pixel(402))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert!(
        second.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .starts_with(&format!("sp={nuid};"))
    );
    let third = format!("{}&tnuid=11111111-1111-4111-8111-111111111111", pixel(403));
    client
        .get(third)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    let good = micro(&url, "/micro/good", None).await;
    let by_eid = |eid: usize| {
        good.as_array()
            .unwrap()
            .iter()
            .find(|e| e["event"]["event_id"] == test_uuid(eid))
            .unwrap_or_else(|| panic!("{eid}: {good}"))
            .clone()
    };
    let (first, second, third) = (by_eid(401), by_eid(402), by_eid(403));
    assert_eq!(first["event"]["useragent"], agent.as_str());
    assert_eq!(first["event"]["user_ipaddress"], "203.0.113.7");
    assert_eq!(first["event"]["network_userid"], nuid.as_str());
    assert_eq!(first["rawEvent"]["context"]["userId"], nuid.as_str());
    let listed = first["rawEvent"]["context"]["headers"].to_string();
    assert!(listed.contains(&agent), "{listed}");
    assert_eq!(second["event"]["network_userid"], nuid.as_str());
    assert_eq!(second["event"]["user_ipaddress"], "127.0.0.1");
    assert_eq!(
        third["event"]["network_userid"],
        "11111111-1111-4111-8111-111111111111"
    );

    // A `nuid` that would add attributes to the cookie is not taken: a fresh id instead.
    let hostile = format!("{}&nuid=x%3B%20Domain%3Devil.example", pixel(405));
    let answer = client.get(hostile).send().await.unwrap();
    let set_cookie = answer.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(!set_cookie.contains("evil.example"), "{set_cookie}");
    assert!(!set_cookie.starts_with("sp=x"), "{set_cookie}");

    // SP-Anonymous: no address anywhere, the proxies' and the cookie's headers dropped,
    // the all-zero id, no cookie set.
    let body = json!({
        "schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4",
        "data": [{"e": "pv", "p": "web", "tv": "js-4.6.0", "url": "http://x/", "eid": test_uuid(404)}]
    });
    let anonymous = client
        .post(format!("{url}/com.snowplowanalytics.snowplow/tp2"))
        .header("content-type", "application/json")
        .header("sp-anonymous", "*")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-real-ip", "203.0.113.9")
        .header("cookie", &cookie)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 200);
    assert!(anonymous.headers().get("set-cookie").is_none());
    let last = micro(&url, "/micro/good", Some(r#"{"limit":1}"#)).await;
    let event = &last[0];
    assert_eq!(event["event"]["event_id"], test_uuid(404), "{last}");
    assert_eq!(event["event"]["user_ipaddress"], Value::Null);
    assert_eq!(event["rawEvent"]["context"]["ipAddress"], Value::Null);
    assert_eq!(
        event["event"]["network_userid"],
        "00000000-0000-0000-0000-000000000000"
    );
    let listed = event["rawEvent"]["context"]["headers"].to_string();
    for gone in [
        "x-forwarded-for",
        "x-real-ip",
        "cookie",
        "203.0.113.9",
        &nuid,
    ] {
        assert!(!listed.contains(gone), "{gone}: {listed}");
    }
}

/// Enrich's rules in both directions (issue 42, first part), each failing on 582e716:
/// good at enrich and bad here then (a cache-buster in a pixel's query, `se` without an
/// action, `tr` without a total, `ti` without price and quantity, `p=headset`), bad at
/// enrich and good here then (a tp2 POST that is not `application/json`), and enrich's
/// fill-ins (a fresh `event_id`; a pixel without `url` takes the page from `Referer`).
#[tokio::test]
async fn the_collector_judges_as_enrich_does_in_both_directions() {
    let (_collector, url) = local_collector(CollectorOptions::default()).await;
    let client = http_client();
    for (i, query) in [
        "e=pv&p=web&tv=t&url=http%3A%2F%2Fx%2F&cb=1733450000",
        "e=se&p=web&tv=t&se_ca=video",
        "e=tr&p=web&tv=t&tr_id=o1",
        "e=ti&p=web&tv=t&ti_id=o1&ti_sk=sku",
        "e=pv&p=headset&tv=t&url=http%3A%2F%2Fx%2F",
    ]
    .iter()
    .enumerate()
    {
        let query = format!("{query}&eid={}", test_uuid(500 + i));
        client.get(format!("{url}/i?{query}")).send().await.unwrap();
    }
    let all = micro(&url, "/micro/all", None).await;
    let bad = micro(&url, "/micro/bad", None).await;
    assert_eq!(all, json!({"total": 5, "good": 5, "bad": 0}), "{bad}");
    let good = micro(&url, "/micro/good", None).await;
    let cached = &good[4];
    assert_eq!(
        cached["rawEvent"]["parameters"]["cb"], "1733450000",
        "kept as sent"
    );

    micro(&url, "/micro/reset", None).await;
    let body = json!({
        "schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4",
        "data": [{"e": "pv", "p": "web", "tv": "t", "url": "http://x/"}]
    })
    .to_string();
    for (content_type, good) in [
        ("text/plain", false),
        ("application/x-www-form-urlencoded", false),
        ("application/json; charset=UTF-8", true),
        ("application/json", true),
    ] {
        client
            .post(format!("{url}/com.snowplowanalytics.snowplow/tp2"))
            .header("content-type", content_type)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let all = micro(&url, "/micro/all", None).await;
        let field = if good { "good" } else { "bad" };
        let last = micro(&url, &format!("/micro/{field}"), Some(r#"{"limit":1}"#)).await;
        assert_eq!(last.as_array().unwrap().len(), 1, "{content_type}: {all}");
        if good {
            // No `eid`: a fresh event id, as enrich gives it.
            let id = last[0]["event"]["event_id"].as_str().unwrap();
            assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
        } else {
            assert!(
                last[0]["errors"][0]
                    .as_str()
                    .unwrap()
                    .contains("Content-Type"),
                "{last}"
            );
        }
        micro(&url, "/micro/reset", None).await;
    }

    // Enrich's atomicFieldsLimits: bad here since this issue, good on 582e716.
    let over_limit = json!({
        "schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4",
        "data": [
            {"e": "pv", "p": "web", "tv": "t", "uid": "u".repeat(256)},
            {"e": "tr", "p": "web", "tv": "t", "tr_id": "o", "tr_cu": "EURO"},
            {"e": "se", "p": "web", "tv": "t", "se_ca": "c".repeat(1000), "uid": "u".repeat(255)},
        ]
    });
    post(&url, over_limit.to_string()).await;
    let bad = micro(&url, "/micro/bad", None).await;
    assert_eq!(
        micro(&url, "/micro/all", None).await,
        json!({"total": 3, "good": 1, "bad": 2}),
        "{bad}"
    );
    let errors = bad.to_string();
    assert!(
        errors.contains("atomic field user_id is longer than the maximum allowed size 255"),
        "{errors}"
    );
    assert!(
        errors.contains("atomic field tr_currency is longer than the maximum allowed size 3"),
        "{errors}"
    );
    micro(&url, "/micro/reset", None).await;

    // The body is checked against payload_data whole, as enrich's tp2 adapter checks it:
    // one item that is not an event object makes the whole body one bad event (582e716:
    // one bad event per item, so `[1,1,…]` of 2 MiB made a million of them).
    let mixed = json!({
        "schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4",
        "data": [{"e": "pv", "p": "web", "tv": "t"}, 1, {"e": "pv", "p": "web", "tv": "t", "x": "y"}]
    });
    post(&url, mixed.to_string()).await;
    let bad = micro(&url, "/micro/bad", None).await;
    assert_eq!(
        micro(&url, "/micro/all", None).await,
        json!({"total": 1, "good": 0, "bad": 1}),
        "{bad}"
    );
    let errors = bad[0]["errors"].to_string();
    assert!(
        errors.contains("data/1") && errors.contains("data/2"),
        "{errors}"
    );
    micro(&url, "/micro/reset", None).await;

    // A noscript pixel: no `url`; the page is the Referer.
    client
        .get(format!("{url}/i?e=pv&p=web&tv=t"))
        .header("referer", "https://shop.example/deals?week=49")
        .send()
        .await
        .unwrap();
    let last = micro(&url, "/micro/good", Some(r#"{"limit":1}"#)).await;
    let event = &last[0]["event"];
    assert_eq!(
        event["page_url"], "https://shop.example/deals?week=49",
        "{last}"
    );
    assert_eq!(event["page_urlhost"], "shop.example");
    assert_eq!(event["page_urlquery"], "week=49");
}

/// Routes as the collector has them (issue 42): GET and HEAD on the pixel and tp2 paths
/// make events; any other `/{vendor}/{version}` is answered 200 with one bad event naming
/// the adapter (582e716: 404, which a tracker retries forever).
#[tokio::test]
async fn every_vendor_version_path_is_taken_and_an_unknown_adapter_is_named() {
    let (_collector, url) = local_collector(CollectorOptions::default()).await;
    let client = http_client();
    let query = |i: usize| {
        format!(
            "e=pv&p=web&tv=t&url=http%3A%2F%2Fx%2F&eid={}",
            test_uuid(600 + i)
        )
    };
    let head = client
        .request("HEAD", format!("{url}/i?{}", query(1)))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    let get_tp2 = client
        .get(format!(
            "{url}/com.snowplowanalytics.snowplow/tp2?{}",
            query(2)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(get_tp2.status(), 200);
    let custom = client
        .post(format!("{url}/com.acme/track"))
        .header("content-type", "application/json")
        .body(r#"{"hello":"world"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(custom.status(), 200);
    let all = micro(&url, "/micro/all", None).await;
    assert_eq!(all, json!({"total": 3, "good": 2, "bad": 1}), "{all}");
    let good = micro(&url, "/micro/good", None).await;
    assert_eq!(good[0]["rawEvent"]["api"]["version"], "tp2", "{good}");
    assert_eq!(good[1]["event"]["event_id"], test_uuid(601));
    let bad = micro(
        &url,
        "/micro/bad",
        Some(r#"{"vendor":"com.acme","version":"track"}"#),
    )
    .await;
    assert_eq!(bad.as_array().unwrap().len(), 1, "{bad}");
    let error = bad[0]["errors"][0].as_str().unwrap();
    assert!(error.contains("no adapter for com.acme/track"), "{error}");

    // The Iglu webhook: a self-describing body is a good self-describing event (582e716:
    // 404); data its schema refuses is bad, named by the schema.
    micro(&url, "/micro/reset", None).await;
    let link_click = "iglu:com.snowplowanalytics.snowplow/link_click/jsonschema/1-0-1";
    for (data, status) in [
        (json!({"targetUrl": "https://shop.example/"}), 200),
        (json!({"targetUrl": 7}), 200),
    ] {
        let answer = client
            .post(format!("{url}/com.snowplowanalytics.iglu/v1?aid=webhooks"))
            .header("content-type", "application/json")
            .body(json!({"schema": link_click, "data": data}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), status);
    }
    let answer = client
        .get(format!(
            "{url}/com.snowplowanalytics.iglu/v1?schema={}&targetUrl=https%3A%2F%2Fx%2F",
            link_click.replace(':', "%3A").replace('/', "%2F")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let bad = micro(&url, "/micro/bad", None).await;
    assert_eq!(
        micro(&url, "/micro/all", None).await,
        json!({"total": 3, "good": 2, "bad": 1}),
        "{bad}"
    );
    assert!(
        bad[0]["errors"][0].as_str().unwrap().contains(link_click),
        "{bad}"
    );
    let good = micro(&url, "/micro/good", None).await;
    for event in good.as_array().unwrap() {
        assert_eq!(event["eventType"], "unstruct", "{event}");
        assert_eq!(event["schema"], link_click);
        assert_eq!(event["event"]["v_tracker"], "com.snowplowanalytics.iglu-v1");
        assert_eq!(
            event["rawEvent"]["api"]["vendor"],
            "com.snowplowanalytics.iglu"
        );
    }
    assert_eq!(good[1]["event"]["app_id"], "webhooks");
    assert_eq!(
        good[0]["event"]["unstruct_event"]["data"]["data"]["targetUrl"],
        "https://x/"
    );
}
