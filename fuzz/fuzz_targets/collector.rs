//! Any request to the local collector: never a panic, every event counted, the store
//! within its byte bound (see `tests/support/properties.rs`, `collector_requests`). One
//! collector serves every input of a run, so the bound is tested as the store fills.
#![no_main]

#[path = "../../tests/support/properties.rs"]
#[allow(dead_code)]
mod properties;

use std::sync::LazyLock;

static COLLECTOR: LazyLock<snowplow_relay::micro::LocalCollector> =
    LazyLock::new(properties::collector_with_bounds);

libfuzzer_sys::fuzz_target!(|data: &[u8]| properties::collector_requests(&COLLECTOR, data));
