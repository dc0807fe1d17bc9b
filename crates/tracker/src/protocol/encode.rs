//! The two wire encodings of whole requests: a POST body (the `payload_data` envelope
//! around each element's item) and a GET query string, and the byte counts the size model
//! relies on.

use super::element::{BadElement, Element};

/// Writes a complete POST body for `events`: the `payload_data` envelope with one item
/// per event, each stamped with the same `stm`.
pub fn write_post_body<'a>(
    events: impl IntoIterator<Item = &'a Element>,
    stm_millis: &str,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(POST_BODY_PREFIX.as_bytes());
    let mut first = true;
    for event in events {
        if !first {
            out.push(b',');
        }
        first = false;
        event.write_post_item(out, stm_millis);
    }
    out.extend_from_slice(POST_BODY_SUFFIX.as_bytes());
}

const POST_BODY_PREFIX: &str = concat!(
    r#"{"schema":"iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4","#,
    r#""data":["#
);
const POST_BODY_SUFFIX: &str = "]}";

/// Bytes a POST body takes besides its items (envelope and no separators).
pub const POST_BODY_OVERHEAD: usize = POST_BODY_PREFIX.len() + POST_BODY_SUFFIX.len();

/// The query string (without `?`) for a GET request carrying `event`.
pub fn get_query(event: &Element, stm_millis: &str) -> Result<String, BadElement> {
    let mut query = Vec::with_capacity(event.raw().len() * 3 / 2);
    event.write_query(&mut query, stm_millis)?;
    Ok(String::from_utf8(query).expect("a form-encoded query is ASCII"))
}
