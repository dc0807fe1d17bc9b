//! Property tests of the parse → encode path, over arbitrary bytes and arbitrary (often
//! hostile) JSON: lone surrogate escapes, escaped quotes, long and duplicate names, nested
//! values, numbers in every form. Whatever a producer pushes, parsing and encoding never
//! panic, and every accepted element encodes to exactly its own fields:
//! - the POST item is JSON carrying every field with its value as a string, plus `stm`,
//!   and its length is what the batch builder predicted;
//! - the GET query decodes back to the same name/value pairs, plus `stm`.
//!
//! Each property runs a tenth of its full case count (`CASES_*`) by default, or
//! `PROPTEST_CASES` when that is set; its full count runs in the soak set (the tests
//! marked `ignore`, which `.ci/run` runs with `./test.sh -- --ignored`). Failures print
//! the shrunk input.

use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, FileFailurePersistence, TestRunner};
use serde_json::value::RawValue;
use snowplow_relay_tracker::protocol::{BadElement, Element, Method, ParseOptions, get_query};

const CASES_JSON: u32 = 20_000;
const CASES_BYTES: u32 = 10_000;

/// The cases a default run makes of a property whose full count is `full`:
/// `PROPTEST_CASES` when set, else a tenth of `full`.
fn default_cases(full: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(full / 10)
}
const STM: &str = "1700000000000";

/// A runner that first replays every failure found before (kept, with the seed that
/// reproduces it, in `proptest-regressions/encoding_properties.txt`; commit that file)
/// and records any new one there.
fn runner(cases: u32) -> TestRunner {
    TestRunner::new(RunnerConfig {
        cases,
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/encoding_properties.txt",
        ))),
        ..RunnerConfig::default()
    })
}

/// A JSON string literal: plain text, every kind of escape, valid surrogate pairs and
/// lone surrogates.
fn json_string() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "[a-zA-Z0-9 /:?=&%+._-]{0,12}",
        Just("\\\"".to_owned()),
        Just("\\\\".to_owned()),
        Just("\\/".to_owned()),
        Just("\\n\\t\\r\\b\\f".to_owned()),
        Just("\\u00e9".to_owned()),
        Just("\\u0000".to_owned()),
        Just("\\ud83d\\ude00".to_owned()),
        Just("\\ud800".to_owned()),
        Just("\\uDFFF".to_owned()),
        Just("é€😀".to_owned()),
        "\\PC{0,4}".prop_map(|s| s.replace(['"', '\\'], "")),
    ];
    proptest::collection::vec(piece, 0..6).prop_map(|parts| format!("\"{}\"", parts.concat()))
}

fn json_value() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => json_string(),
        2 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| f.to_string()),
        1 => Just("1e5".to_owned()),
        1 => Just("-0.0".to_owned()),
        1 => Just("true".to_owned()),
        1 => Just("false".to_owned()),
        1 => Just("null".to_owned()),
        1 => Just("{\"a\":[1,{}]}".to_owned()),
        1 => Just("[]".to_owned()),
    ]
}

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(snowplow_relay_tracker::protocol::PAYLOAD_DATA_FIELDS)
            .prop_map(str::to_owned),
        2 => "[a-z_]{1,10}",
        1 => Just("x".repeat(300)),
        1 => Just("\\u0065".to_owned()),
        1 => Just("stm".to_owned()),
        1 => Just("é😀".to_owned()),
    ]
}

/// An object that usually carries the required fields, with arbitrary extra fields.
fn json_element() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        proptest::collection::vec((field_name(), json_value()), 0..12),
        "[ \t\n]{0,2}",
    )
        .prop_map(|(required, fields, space)| {
            let mut parts: Vec<String> = Vec::new();
            if required {
                parts.push(r#""e":"pv","p":"pc","tv":"t""#.to_owned());
            }
            for (name, value) in fields {
                parts.push(format!("\"{name}\":{space}{value}"));
            }
            format!("{{{space}{}}}", parts.join(","))
        })
}

#[path = "shared/wire.rs"]
mod wire;
use wire::{expected_fields, wire_text};

fn check_post(element: &str) -> Result<(), TestCaseError> {
    let options = ParseOptions::for_method(Method::Post, true);
    let Ok(event) = Element::parse(Bytes::copy_from_slice(element.as_bytes()), options) else {
        return Ok(());
    };
    let mut item = Vec::new();
    event.write_post_item(&mut item, STM);
    prop_assert_eq!(item.len(), event.post_item_len(), "size estimate is exact");
    // Into a `Vec` with room to spare, after what it holds, the item is written by offset
    // (above, with no room, piece by piece): the same bytes either way.
    let mut roomy = Vec::with_capacity(3 + 2 * element.len() + 64);
    roomy.extend_from_slice(b"[{}");
    event.write_post_item(&mut roomy, STM);
    prop_assert_eq!(&roomy[..3], b"[{}");
    prop_assert_eq!(
        &roomy[3..],
        &item[..],
        "written by offset as piece by piece"
    );
    // Valid JSON text whatever the escapes (a lone surrogate escape is valid JSON text).
    let raw: BTreeMap<String, &RawValue> = serde_json::from_slice(&item)
        .map_err(|e| TestCaseError::fail(format!("POST item is not JSON: {e}")))?;
    let mut expected = expected_fields(element);
    expected.insert("stm".into(), Some(STM.into()));
    prop_assert_eq!(
        raw.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (name, value) in &raw {
        prop_assert!(
            value.get().starts_with('"'),
            "`{}` is sent as a string",
            name
        );
        // Where the value has text, it is the same text.
        if let Some(want) = &expected[name] {
            let got = wire_text(value);
            prop_assert_eq!(got.as_ref(), Some(want), "field `{}`", name);
        }
    }
    Ok(())
}

fn check_get(element: &str) -> Result<(), TestCaseError> {
    let options = ParseOptions::for_method(Method::Get, false);
    let Ok(event) = Element::parse(Bytes::copy_from_slice(element.as_bytes()), options) else {
        return Ok(());
    };
    let query = get_query(&event, STM)
        .map_err(|e| TestCaseError::fail(format!("accepted for GET but not encodable: {e}")))?;
    let decoded: BTreeMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let mut expected: BTreeMap<String, String> = expected_fields(element)
        .into_iter()
        .map(|(name, value)| (name, value.expect("GET accepts only decodable strings")))
        .collect();
    expected.insert("stm".into(), STM.into());
    prop_assert_eq!(decoded, expected);
    Ok(())
}

/// The scanner agrees with serde_json on JSON syntax: whatever it accepts is JSON, and an
/// object serde_json accepts is never refused as "not JSON" (it may be refused for its
/// content: a nested value, an escaped name, a missing field).
fn check_syntax(element: &str) -> Result<(), TestCaseError> {
    let options = ParseOptions::for_method(Method::Post, true);
    let parsed = Element::parse(Bytes::copy_from_slice(element.as_bytes()), options);
    let oracle = serde_json::from_str::<&RawValue>(element);
    let is_object = oracle
        .as_ref()
        .is_ok_and(|raw| raw.get().trim_start().starts_with('{'));
    match parsed {
        Ok(_) => prop_assert!(
            is_object,
            "accepted, but serde_json says: {:?}",
            oracle.err()
        ),
        Err(BadElement::NotJson(why)) => {
            prop_assert!(
                !is_object,
                "refused as not JSON ({}), but it is a JSON object",
                why
            )
        }
        Err(_) => {}
    }
    Ok(())
}

/// A JSON element with one byte changed, inserted or removed: the edge of the grammar.
fn mutated_element() -> impl Strategy<Value = String> {
    let byte = prop_oneof![
        Just(b'"'),
        Just(b'\\'),
        Just(b'{'),
        Just(b'}'),
        Just(b'['),
        Just(b']'),
        Just(b','),
        Just(b':'),
        Just(b'0'),
        Just(b'1'),
        Just(b'-'),
        Just(b'+'),
        Just(b'.'),
        Just(b'e'),
        Just(b'u'),
        Just(b' '),
        Just(b'\t'),
        Just(0x01u8),
        Just(b'n'),
        Just(b't'),
        Just(b'x'),
    ];
    (json_element(), any::<prop::sample::Index>(), byte, 0..3u8).prop_map(
        |(element, index, byte, how)| {
            let mut bytes = element.into_bytes();
            let at = index.index(bytes.len() + 1);
            match how {
                0 if at < bytes.len() => bytes[at] = byte,
                1 if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, byte),
            }
            String::from_utf8(bytes).unwrap_or_default()
        },
    )
}

#[test]
fn the_scanner_agrees_with_serde_json_on_syntax() {
    scanner_agrees_with_serde_json(default_cases(CASES_JSON));
}

#[test]
#[ignore = "soak set: the full case count"]
fn the_scanner_agrees_with_serde_json_on_syntax_in_full() {
    scanner_agrees_with_serde_json(CASES_JSON);
}

fn scanner_agrees_with_serde_json(cases: u32) {
    runner(cases)
        .run(&mutated_element(), |element| {
            check_syntax(&element)?;
            check_post(&element)?;
            check_get(&element)
        })
        .unwrap();
    runner(cases / 4)
        .run(&json_element(), |element| check_syntax(&element))
        .unwrap();
    eprintln!("{} syntax cases passed", cases + cases / 4);
}

#[test]
fn arbitrary_json_elements_encode_to_exactly_their_fields() {
    json_elements_encode_to_their_fields(default_cases(CASES_JSON));
}

#[test]
#[ignore = "soak set: the full case count"]
fn arbitrary_json_elements_encode_to_exactly_their_fields_in_full() {
    json_elements_encode_to_their_fields(CASES_JSON);
}

fn json_elements_encode_to_their_fields(cases: u32) {
    runner(cases)
        .run(&json_element(), |element| {
            check_post(&element)?;
            check_get(&element)
        })
        .unwrap();
    eprintln!("{cases} JSON cases passed");
}

/// Arbitrary bytes: alone (they almost never parse), and as the value of `url` in an
/// otherwise valid element (so that the scanner's string handling and both encoders
/// see them whenever they make a valid JSON string).
fn arbitrary_bytes() -> impl Strategy<Value = Vec<u8>> {
    let raw = proptest::collection::vec(any::<u8>(), 0..256);
    // Mostly text, with an arbitrary byte now and then (an invalid one ends the string).
    let text_byte = prop_oneof![
        30 => (0x20u8..0x7f).prop_filter("not a quote or backslash", |b| *b != b'"' && *b != b'\\'),
        1 => any::<u8>(),
    ];
    prop_oneof![
        1 => raw,
        3 => proptest::collection::vec(text_byte, 0..64).prop_map(|bytes| {
            let mut element = br#"{"e":"pv","p":"pc","tv":"t","url":""#.to_vec();
            element.extend(bytes);
            element.extend(br#""}"#);
            element
        }),
    ]
}

#[test]
fn arbitrary_bytes_never_panic_and_what_is_accepted_encodes() {
    bytes_never_panic(default_cases(CASES_BYTES));
}

#[test]
#[ignore = "soak set: the full case count"]
fn arbitrary_bytes_never_panic_and_what_is_accepted_encodes_in_full() {
    bytes_never_panic(CASES_BYTES);
}

fn bytes_never_panic(cases: u32) {
    let accepted = std::sync::atomic::AtomicU32::new(0);
    runner(cases)
        .run(&arbitrary_bytes(), |bytes| {
            for method in [Method::Post, Method::Get] {
                let options = ParseOptions::for_method(method, true);
                if Element::parse(Bytes::from(bytes.clone()), options).is_ok() {
                    accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let text = std::str::from_utf8(&bytes).expect("accepted means UTF-8");
                    check_post(text)?;
                    check_get(text)?;
                }
            }
            Ok(())
        })
        .unwrap();
    let accepted = accepted.into_inner();
    eprintln!("{cases} byte cases passed; {accepted} parses reached the encoders");
    // The test is only worth its cases if the encoders see a good share of them.
    assert!(
        accepted >= cases / 10,
        "only {accepted} of {} parses were accepted",
        2 * cases
    );
}

#[test]
fn the_lone_surrogate_from_the_issue_is_dead_lettered_for_get_and_forwarded_for_post() {
    let element = br#"{"e":"pv","p":"pc","tv":"t","url":"\ud800"}"#;
    let get = Element::parse(
        Bytes::from_static(element),
        ParseOptions::for_method(Method::Get, false),
    );
    let reason = get.expect_err("GET cannot send it").to_string();
    assert!(
        reason.contains("`url`") && reason.contains("surrogate"),
        "{reason}"
    );
    let post = Element::parse(
        Bytes::from_static(element),
        ParseOptions::for_method(Method::Post, false),
    )
    .expect("POST forwards the producer's bytes");
    let mut item = Vec::new();
    post.write_post_item(&mut item, STM);
    assert!(
        String::from_utf8(item)
            .unwrap()
            .contains(r#""url":"\ud800""#)
    );
    // Parsed for POST, then (wrongly) encoded for GET: an error, not a panic.
    assert!(get_query(&post, STM).is_err());
}
