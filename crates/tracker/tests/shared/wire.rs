//! What an accepted element must arrive as, shared by the tracker's property tests and
//! the daemon's fuzz checks (`tests/support/properties.rs`), both by `#[path]`.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

/// The text a value stands for on the wire: a string's decoded text, or a number's or
/// boolean's JSON text as written. `None` for a string with no Unicode text.
pub fn wire_text(raw: &RawValue) -> Option<String> {
    let text = raw.get();
    if text.starts_with('"') {
        serde_json::from_str::<String>(text).ok()
    } else {
        Some(text.to_owned())
    }
}

/// The fields an accepted element must be sent with: nulls and `stm` left out.
pub fn expected_fields(element: &str) -> BTreeMap<String, Option<String>> {
    let fields: BTreeMap<String, &RawValue> =
        serde_json::from_str(element).expect("an accepted element is a JSON object");
    fields
        .into_iter()
        .filter(|(name, raw)| raw.get() != "null" && name != "stm")
        .map(|(name, raw)| (name, wire_text(raw)))
        .collect()
}
