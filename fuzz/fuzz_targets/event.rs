//! Any bytes as a Redis list element: the scanner and both encoders (see
//! `tests/support/properties.rs`, `event_encodings`).
#![no_main]

#[path = "../../tests/support/properties.rs"]
#[allow(dead_code)]
mod properties;

libfuzzer_sys::fuzz_target!(|data: &[u8]| properties::event_encodings(data));
