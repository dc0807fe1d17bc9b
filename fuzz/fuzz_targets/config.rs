//! Any configuration file and environment: the loader never panics and never shows the
//! password (see `tests/support/properties.rs`, `config_loading`).
#![no_main]

#[path = "../../tests/support/properties.rs"]
#[allow(dead_code)]
mod properties;

libfuzzer_sys::fuzz_target!(|data: &[u8]| properties::config_loading(data));
