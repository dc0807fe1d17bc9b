//! Test events: the fixtures real Python trackers wrote, numbered copies of them, and
//! the check every POST body must pass (payload_data 1-0-4).

/// The events real Python trackers write, one JSON object per line.
pub const TRACKER_0_15: &str =
    include_str!("../../crates/tracker/tests/fixtures/python-tracker-0.15.0.jsonl");
/// Events in the shape the 0.4.0 tracker wrote them (numbers, plain and base64 contexts).
pub const TRACKER_0_4: &str =
    include_str!("../../crates/tracker/tests/fixtures/python-tracker-0.4.0-shape.jsonl");
/// The payload_data 1-0-4 schema every POST body must satisfy.
pub const PAYLOAD_DATA_SCHEMA: &str = include_str!("../fixtures/payload_data-1-0-4.json");

/// Every fixture event.
pub fn fixture_events() -> Vec<String> {
    TRACKER_0_15
        .lines()
        .chain(TRACKER_0_4.lines())
        .map(str::to_owned)
        .collect()
}

/// Gives a fixture event a unique `eid` (the 0.4.0 shape has none), so it can be traced.
pub fn with_eid(event: &str, eid: &str) -> String {
    let mut value: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(event).unwrap();
    value.insert("eid".into(), eid.into());
    serde_json::to_string(&value).unwrap()
}

/// `n` distinct events cycling through the fixtures, each with eid `ev-<i>`.
pub fn numbered_events(n: usize) -> Vec<String> {
    let fixtures = fixture_events();
    (0..n)
        .map(|i| with_eid(&fixtures[i % fixtures.len()], &format!("ev-{i}")))
        .collect()
}

/// A JSON Schema validator for an Iglu schema (its `$schema` and `self` keys removed,
/// as Iglu does).
pub fn validator(iglu_schema: &str) -> jsonschema::Validator {
    let mut schema: serde_json::Value = serde_json::from_str(iglu_schema).unwrap();
    let object = schema.as_object_mut().unwrap();
    object.remove("$schema");
    object.remove("self");
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .build(&schema)
        .unwrap()
}

/// Validates a POST body: the self-describing envelope, and its `data` against
/// payload_data 1-0-4.
pub fn assert_valid_payload_data(body: &[u8]) {
    let validator = validator(PAYLOAD_DATA_SCHEMA);
    let body: serde_json::Value = serde_json::from_slice(body).expect("POST body is JSON");
    assert_eq!(
        body["schema"],
        "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"
    );
    assert_eq!(body.as_object().unwrap().len(), 2, "only schema and data");
    let errors: Vec<String> = validator
        .iter_errors(&body["data"])
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "payload_data violations: {errors:?}");
}

/// A distinct event id of UUID form for `i` (the local collector, as Micro, refuses
/// other forms).
pub fn test_uuid(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

/// Settings under which a batch of 500 never fills with [`numbered_events`]: a byte bound
/// of 64 KiB holds ~60 of them at once, so the list never runs dry either and only the
/// flush timer (or SIGUSR1) sends.
pub const BATCHES_NEVER_FILL: [(&str, &str); 4] = [
    ("collector.buffer_size", "500"),
    ("events.max_element_bytes", "16384"),
    ("redis.claim_max_bytes", "65536"),
    ("worker.max_claimed_bytes", "65536"),
];
