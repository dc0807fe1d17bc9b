//! Per-event subjects against what the real Python tracker 1.1.0 sends for the same calls
//! (`fixtures/python-tracker-1.1.0-subjects.jsonl`, written by the script beside it):
//! the event's subject merged over the tracker's, field by field, `eid`, `dtm` and `tv`
//! aside; and the one deliberate difference, the platform of an event subject that sets
//! none.

use serde_json::{Map, Value};
use snowplow_relay_tracker::{
    PageView, Platform, Subject, SubjectMerging, Timestamp, TrackOptions, Tracker,
};

const PYTHON: &str = include_str!("fixtures/python-tracker-1.1.0-subjects.jsonl");

fn python_events() -> Vec<Map<String, Value>> {
    PYTHON
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn tracker() -> Tracker {
    let base = Subject::new()
        .platform(Platform::Web)
        .user_id("u-tracker")
        .timezone("Europe/London")
        .screen_resolution(1920, 1080);
    Tracker::builder("merge", "merge-app")
        .subject(base)
        .encode_base64(false)
}

/// The page view `name` with `subject` and true timestamp `ttm`, as a field map without
/// the fields that differ by nature (`eid`, `dtm`, `tv`).
fn rust_event(
    tracker: &Tracker,
    name: &str,
    subject: Option<Subject>,
    ttm: u64,
) -> Map<String, Value> {
    let view = PageView::new(format!("https://{name}.example/")).title(name.to_uppercase());
    let options = TrackOptions {
        subject,
        timestamp: Some(Timestamp::True(ttm)),
        ..Default::default()
    };
    let payload = tracker.payloads(&view.into(), &options).unwrap().remove(0);
    without_ids(serde_json::to_value(&payload).unwrap())
}

fn without_ids(event: impl Into<Value>) -> Map<String, Value> {
    let Value::Object(mut fields) = event.into() else {
        panic!("an event is an object")
    };
    for name in ["eid", "dtm", "tv"] {
        fields.remove(name);
    }
    fields
}

#[test]
fn a_per_event_subject_merges_as_the_python_tracker_1_x_merges_it() {
    let python = python_events();
    let tracker = tracker();
    // An event subject setting platform, user id and language: those win, the
    // tracker's time zone and resolution stay.
    let own = Subject::new()
        .platform(Platform::Mob)
        .user_id("u-event")
        .language("fr");
    assert_eq!(
        rust_event(&tracker, "a", Some(own), 1_700_000_000_001),
        without_ids(python[0].clone())
    );
    // No event subject: the tracker's.
    assert_eq!(
        rust_event(&tracker, "c", None, 1_700_000_000_003),
        without_ids(python[2].clone())
    );
}

#[test]
fn an_event_subject_without_a_platform_keeps_the_trackers_unlike_python() {
    let python = without_ids(python_events()[1].clone());
    let rust = rust_event(
        &tracker(),
        "b",
        Some(Subject::new().user_id("u-bare")),
        1_700_000_000_002,
    );
    // Python's Subject always carries `p` (`pc` unless set), so its event subject resets
    // the tracker's platform; here only a platform set on the event's subject does.
    assert_eq!(python["p"], "pc");
    assert_eq!(rust["p"], "web");
    let others = |mut fields: Map<String, Value>| {
        fields.remove("p");
        fields
    };
    assert_eq!(others(rust), others(python));
}

#[test]
fn replace_is_the_python_tracker_0_15s_way() {
    let tracker = tracker().subject_merging(SubjectMerging::Replace);
    let own = Subject::new().user_id("u-event");
    let event = rust_event(&tracker, "a", Some(own), 1);
    assert_eq!(event["uid"], "u-event");
    assert_eq!(event["p"], "pc");
    assert!(!event.contains_key("tz") && !event.contains_key("res"));
}
