//! What must hold for any input, shared by the tests and the fuzz targets
//! (`fuzz/fuzz_targets/*.rs` include this file): each check panics when it does not.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::value::RawValue;
use snowplow_relay::config::{Overrides, Settings};
use snowplow_relay::micro::LocalCollector;
use snowplow_relay_tracker::protocol::{
    Element, Method, PAYLOAD_DATA_FIELDS, PAYLOAD_DATA_SCHEMA, ParseOptions, get_query,
    write_post_body,
};

/// The send time every encoding gets.
pub const STM: &str = "1700000000000";

#[path = "../../crates/tracker/tests/shared/wire.rs"]
mod wire;
use wire::{expected_fields, wire_text};

/// Any bytes as a list element, for both methods: parsing never panics, and an accepted
/// element encodes to exactly its own fields. The POST body is `payload_data` (the schema
/// URI, one item, every value a string, known names only unless allowed, `stm` added,
/// its length as predicted); the GET query decodes back to the same pairs plus `stm`.
pub fn event_encodings(data: &[u8]) {
    for method in [Method::Post, Method::Get] {
        for allow_unknown in [false, true] {
            let options = ParseOptions::for_method(method, allow_unknown);
            let Ok(event) = Element::parse(Bytes::copy_from_slice(data), options) else {
                continue;
            };
            let text = std::str::from_utf8(data).expect("accepted means UTF-8");
            let expected = expected_fields(text);
            match method {
                Method::Post => post_body(&event, &expected, allow_unknown),
                Method::Get => get_pairs(&event, &expected),
            }
        }
    }
}

fn post_body(event: &Element, expected: &BTreeMap<String, Option<String>>, allow_unknown: bool) {
    let mut body = Vec::new();
    write_post_body([event], STM, &mut body);
    assert_eq!(
        body.len(),
        snowplow_relay_tracker::protocol::POST_BODY_OVERHEAD + event.post_item_len(),
        "the size estimate is exact"
    );
    #[derive(serde::Deserialize)]
    struct PayloadData<'a> {
        schema: &'a str,
        #[serde(borrow)]
        data: Vec<BTreeMap<String, &'a RawValue>>,
    }
    let parsed: PayloadData =
        serde_json::from_slice(&body).expect("a POST body is JSON whatever the escapes");
    assert_eq!(parsed.schema, PAYLOAD_DATA_SCHEMA);
    assert_eq!(parsed.data.len(), 1);
    let item = &parsed.data[0];
    let mut names: Vec<&String> = expected.keys().collect();
    let stm = "stm".to_owned();
    names.push(&stm);
    names.sort();
    assert_eq!(item.keys().collect::<Vec<_>>(), names);
    for (name, value) in item {
        assert!(value.get().starts_with('"'), "`{name}` is sent as a string");
        if !allow_unknown {
            assert!(
                PAYLOAD_DATA_FIELDS.contains(&name.as_str()),
                "`{name}` is known"
            );
        }
        let want = if name == "stm" {
            Some(STM.to_owned())
        } else {
            expected[name].clone()
        };
        if let Some(want) = want {
            assert_eq!(wire_text(value), Some(want), "field `{name}`");
        }
    }
}

fn get_pairs(event: &Element, expected: &BTreeMap<String, Option<String>>) {
    let query = get_query(event, STM).expect("accepted for GET means encodable");
    let decoded: BTreeMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let mut want: BTreeMap<String, String> = expected
        .iter()
        .map(|(name, value)| {
            let value = value.clone().expect("GET accepts only decodable strings");
            (name.clone(), value)
        })
        .collect();
    want.insert("stm".into(), STM.into());
    assert_eq!(decoded, want);
}

/// The password every configuration case carries.
pub const SECRET: &str = "S3cr3t-Fuzz-Pw";

/// Any file text and environment (`data`: TOML text, a NUL, then `NAME=VALUE` lines):
/// loading never panics, and neither an error nor what `check` and the start-up line
/// show holds the password, whether it was set in the file or the environment.
pub fn config_loading(data: &[u8]) {
    let (file, env) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b""[..]),
    };
    let file = format!(
        "[redis]\npassword = \"{SECRET}\"\n{}",
        String::from_utf8_lossy(file)
    );
    let mut vars: BTreeMap<String, String> = String::from_utf8_lossy(env)
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (format!("SNOWPLOW_RELAY_{k}"), v.to_owned()))
        .collect();
    vars.remove("SNOWPLOW_RELAY_CONFIG");
    for with_env_password in [false, true] {
        if with_env_password {
            vars.insert("SNOWPLOW_RELAY_REDIS__PASSWORD".into(), SECRET.into());
        }
        match Settings::load_text(Some(&file), &Overrides::default(), &vars) {
            Err(error) => {
                let shown = error.to_string();
                assert!(
                    !shown.contains(SECRET),
                    "an error shows the password: {shown}"
                );
            }
            Ok(valid) => {
                for shown in [valid.to_masked_toml(), valid.to_shown_toml()] {
                    assert!(
                        !shown.contains(SECRET),
                        "`check` shows the password: {shown}"
                    );
                }
                for warning in valid.warnings() {
                    assert!(!warning.contains(SECRET), "a warning shows it: {warning}");
                }
            }
        }
    }
}

/// The store bound [`collector_with_bounds`] sets.
pub const COLLECTOR_STORE_BYTES: usize = 1024 * 1024;

/// A local collector with small bounds, for [`collector_requests`].
pub fn collector_with_bounds() -> LocalCollector {
    LocalCollector::new(snowplow_relay::micro::CollectorOptions {
        max_events: 1_000,
        max_store_bytes: COLLECTOR_STORE_BYTES,
        ..Default::default()
    })
    .expect("no record file")
}

/// Any request to the local collector (`data`: a first byte choosing GET or POST, then the
/// query or body): handling never panics, every event counts once as good or bad, and
/// the store stays within its bounds.
pub fn collector_requests(collector: &LocalCollector, data: &[u8]) {
    let Some((&how, rest)) = data.split_first() else {
        return;
    };
    let before = collector.totals();
    let (good, bad) = if how % 2 == 0 {
        collector.ingest_query(&String::from_utf8_lossy(rest))
    } else {
        collector.ingest_post(rest)
    };
    let after = collector.totals();
    assert_eq!(after.total - before.total, (good + bad) as u64);
    assert_eq!(after.good - before.good, good as u64);
    assert_eq!(after.bad - before.bad, bad as u64);
    assert!(collector.stored_bytes() <= COLLECTOR_STORE_BYTES);
}
