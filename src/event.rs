//! One Snowplow event as it sits in the Redis list: parsing, validation and the two wire
//! encodings (a GET query string and a POST `payload_data` item).
//!
//! An [`Event`] keeps the element's original bytes and, beside them, the byte ranges of
//! each name and value. Encoding copies those ranges straight into the request buffer, so
//! no value tree is built and no string is re-escaped: a JSON string literal from the
//! producer is already a valid JSON string literal in the POST body. Numbers and booleans
//! (0.4.0-era producers write `dtm`, `tid`, `tr_tt` … as JSON numbers) are wrapped in
//! quotes, because `payload_data` 1-0-4 requires every value to be a string.
//!
//! What is accepted (anything else is [`BadEvent`] and goes to the dead-letter list):
//! - a UTF-8 JSON object with at least one field;
//! - values that are strings, numbers or booleans; `null` values are left out, as the
//!   trackers themselves leave out empty fields;
//! - field names from `payload_data` 1-0-4 unless unknown names are allowed (a single
//!   unknown name makes the collector's enrichment reject the *whole* POST batch);
//! - the fields that schema requires: `e`, `p` and `tv`.
//!
//! `stm` (the send time) is never copied from the element: the emitter writes a fresh one
//! on every attempt.

use std::borrow::Cow;
use std::ops::Range;

use bytes::Bytes;

/// The field names that `payload_data` 1-0-4 allows (`additionalProperties: false`).
pub const PAYLOAD_DATA_FIELDS: &[&str] = &[
    "ad_ad", "ad_ba", "ad_ca", "ad_uid", "aid", "cd", "co", "cookie", "cs", "ctype", "cx", "ds",
    "dtm", "duid", "e", "eid", "f_ag", "f_dir", "f_fla", "f_gears", "f_java", "f_pdf", "f_qt",
    "f_realp", "f_wma", "fp", "ip", "lang", "mac", "nuid", "p", "page", "pp_max", "pp_may",
    "pp_mix", "pp_miy", "refr", "res", "sa", "se_ac", "se_ca", "se_la", "se_pr", "se_va", "sid",
    "sn", "sp", "st", "stm", "ti_ca", "ti_cu", "ti_id", "ti_na", "ti_nm", "ti_pr", "ti_qu",
    "ti_sk", "tid", "tna", "tnuid", "tr_af", "tr_ci", "tr_co", "tr_cu", "tr_id", "tr_sh", "tr_st",
    "tr_tt", "tr_tx", "ttm", "tv", "tz", "ua", "ue_na", "ue_pr", "ue_px", "uid", "url", "vid",
    "vp",
];

/// A field name of at most 8 bytes packed into an integer, so that looking it up costs a
/// few integer comparisons instead of string comparisons (profiling showed the string
/// binary search at 15 % of the relay's CPU). Longer names are never payload_data fields.
const fn pack(name: &[u8]) -> Option<u64> {
    if name.len() > 8 {
        return None;
    }
    let mut packed = [0u8; 8];
    let mut i = 0;
    while i < name.len() {
        if name[i] == 0 {
            return None; // zero is the padding; no field name contains it
        }
        packed[i] = name[i];
        i += 1;
    }
    Some(u64::from_be_bytes(packed))
}

/// [`PAYLOAD_DATA_FIELDS`] packed; big-endian packing keeps the alphabetical order.
const PACKED_FIELDS: [u64; PAYLOAD_DATA_FIELDS.len()] = {
    let mut packed = [0u64; PAYLOAD_DATA_FIELDS.len()];
    let mut i = 0;
    while i < PAYLOAD_DATA_FIELDS.len() {
        packed[i] = match pack(PAYLOAD_DATA_FIELDS[i].as_bytes()) {
            Some(p) => p,
            None => panic!("payload_data field names are at most 8 bytes"),
        };
        if i > 0 && packed[i] <= packed[i - 1] {
            panic!("PAYLOAD_DATA_FIELDS must be sorted and unique");
        }
        i += 1;
    }
    packed
};

/// The index of `name` in [`PAYLOAD_DATA_FIELDS`], if it is one.
fn payload_data_index(name: &str) -> Option<usize> {
    PACKED_FIELDS.binary_search(&pack(name.as_bytes())?).ok()
}

/// The fields `payload_data` 1-0-4 requires in every event.
pub const REQUIRED_FIELDS: &[&str] = &["e", "p", "tv"];

/// The self-describing schema of a POST body.
pub const PAYLOAD_DATA_SCHEMA: &str =
    "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4";

/// How strictly [`Event::parse`] checks an element; it depends on how it will be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseOptions {
    /// Accept field names that `payload_data` 1-0-4 does not list.
    pub allow_unknown_fields: bool,
    /// Every string value must decode to Unicode text. GET sends decoded text, and a JSON
    /// string holding a lone UTF-16 surrogate escape (`"\ud800"`, valid JSON that
    /// Python's `json.dumps` writes) has none; POST forwards the producer's bytes as they
    /// are, so it does not need this.
    pub require_decodable_strings: bool,
}

impl ParseOptions {
    /// The checks that fit `method`. GET query strings are not validated against
    /// `payload_data` downstream, so GET passes unknown field names through whatever
    /// `allow_unknown_fields` says; POST bodies are (`additionalProperties: false`).
    pub fn for_method(method: crate::config::Method, allow_unknown_fields: bool) -> ParseOptions {
        match method {
            crate::config::Method::Get => ParseOptions {
                allow_unknown_fields: true,
                require_decodable_strings: true,
            },
            crate::config::Method::Post => ParseOptions {
                allow_unknown_fields,
                require_decodable_strings: false,
            },
        }
    }
}

/// How much of a producer's field name a reason repeats: reasons go to the log and the
/// dead-letter entry, and a name can be a megabyte long.
pub const REASON_NAME_BYTES: usize = 64;

/// `text` cut to at most [`REASON_NAME_BYTES`] bytes (on a character boundary), with a
/// note of its full length when it was cut.
pub fn shorten(text: &str) -> String {
    if text.len() <= REASON_NAME_BYTES {
        return text.to_owned();
    }
    let mut end = REASON_NAME_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

/// Why an element cannot be relayed. Its `Display` is the reason stored in the
/// dead-letter entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadEvent {
    /// The element is not valid UTF-8 JSON.
    #[error("not valid JSON: {0}")]
    NotJson(String),
    /// A string value holds an escape that decodes to no Unicode text (a lone UTF-16
    /// surrogate such as `\ud800`), so it cannot be sent as a GET query.
    #[error("field `{0}` holds a lone UTF-16 surrogate escape, which GET cannot send (POST can)")]
    UndecodableString(String),
    /// The element is JSON, but not an object of name/value pairs.
    #[error("not a JSON object of name/value pairs (found {0})")]
    NotAnObject(&'static str),
    /// The element is `{}` (or holds only `null` values).
    #[error("empty event: the object has no fields")]
    Empty,
    /// A value is an array or an object; tracker-protocol values are strings or numbers.
    #[error("field `{0}` holds {1}; tracker-protocol values must be strings or numbers")]
    NestedValue(String, &'static str),
    /// A field name is not part of `payload_data` 1-0-4.
    #[error(
        "field `{0}` is not in payload_data 1-0-4; the collector would reject the whole batch \
         (set events.allow_unknown_fields = true to relay it anyway)"
    )]
    UnknownField(String),
    /// A field name uses JSON escape sequences, which no tracker field name needs.
    #[error("a field name contains escape sequences")]
    EscapedFieldName,
    /// A field the schema requires is missing.
    #[error("required field `{0}` is missing")]
    MissingField(&'static str),
    /// A field appears twice.
    #[error("field `{0}` appears twice")]
    DuplicateField(String),
    /// The element is larger than the configured limit.
    #[error("element is {size} bytes, larger than the {limit}-byte limit")]
    TooLarge {
        /// Size of the element in bytes.
        size: usize,
        /// The limit it exceeds.
        limit: usize,
    },
}

/// The JSON type of one value, as far as encoding cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueKind {
    /// A JSON string literal, quotes included.
    String,
    /// A JSON number or `true`/`false`: raw text without quotes.
    Bare,
    /// `null`: left out of both encodings, as trackers leave out empty fields, but kept
    /// for the duplicate check (`{"url":"a","url":null}` is ambiguous).
    Null,
}

/// One name/value pair, as byte ranges into [`Event::raw`].
#[derive(Debug, Clone)]
struct Field {
    /// The name without its quotes (never escaped; see [`BadEvent::EscapedFieldName`]).
    name: Range<u32>,
    /// The value's raw JSON text.
    value: Range<u32>,
    kind: ValueKind,
}

/// A parsed, validated event that still owns its original bytes.
#[derive(Debug, Clone)]
pub struct Event {
    raw: Bytes,
    fields: Vec<Field>,
}

impl Event {
    /// Parses and validates one list element.
    pub fn parse(raw: Bytes, options: ParseOptions) -> Result<Event, BadEvent> {
        let text =
            std::str::from_utf8(&raw).map_err(|e| BadEvent::NotJson(shorten(&e.to_string())))?;
        let fields = parse_fields(text)?;
        let event = Event { raw, fields };
        event.validate(options)?;
        Ok(event)
    }

    /// The element exactly as it was read from Redis.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// The value of a field as text (numbers as written, strings unescaped), if present
    /// and decodable (see [`ParseOptions::require_decodable_strings`]).
    pub fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        self.fields
            .iter()
            .find(|f| self.slice(&f.name) == name && f.kind != ValueKind::Null)
            .and_then(|f| self.value_text(f).ok())
    }

    /// The number of bytes [`Event::write_post_item`] appends, give or take the `stm`
    /// field, whose length is fixed ([`STM_ITEM_BYTES`]).
    pub fn post_item_len(&self) -> usize {
        // `{` + `}` + per field: `"name":` + value (+2 quotes when bare) + `,`
        let mut len = 2 + STM_ITEM_BYTES;
        for f in self.sent_fields() {
            len += (f.name.end - f.name.start) as usize + 3;
            len += (f.value.end - f.value.start) as usize + 1;
            if f.kind == ValueKind::Bare {
                len += 2;
            }
        }
        len
    }

    /// Appends this event as one `payload_data` item: every value a JSON string, plus
    /// `stm` (send time, epoch milliseconds).
    pub fn write_post_item(&self, out: &mut Vec<u8>, stm_millis: &str) {
        out.push(b'{');
        for f in self.sent_fields() {
            out.push(b'"');
            out.extend_from_slice(self.bytes(&f.name));
            out.extend_from_slice(b"\":");
            match f.kind {
                ValueKind::String | ValueKind::Null => out.extend_from_slice(self.bytes(&f.value)),
                ValueKind::Bare => {
                    out.push(b'"');
                    out.extend_from_slice(self.bytes(&f.value));
                    out.push(b'"');
                }
            }
            out.push(b',');
        }
        out.extend_from_slice(b"\"stm\":\"");
        out.extend_from_slice(stm_millis.as_bytes());
        out.extend_from_slice(b"\"}");
    }

    /// Appends this event's pairs, form-URL-encoded (`application/x-www-form-urlencoded`,
    /// as the trackers send GET requests), plus `stm`, to a query string. Fails (writing
    /// nothing useful) if a string value has no Unicode text; events parsed with
    /// [`ParseOptions::require_decodable_strings`] never do.
    pub fn write_query(&self, query: &mut Vec<u8>, stm_millis: &str) -> Result<(), BadEvent> {
        for f in self.sent_fields() {
            form_encode(query, self.bytes(&f.name));
            query.push(b'=');
            form_encode(query, self.value_text(f)?.as_bytes());
            query.push(b'&');
        }
        query.extend_from_slice(b"stm=");
        form_encode(query, stm_millis.as_bytes());
        Ok(())
    }

    /// The fields that are sent: all but `null` ones.
    fn sent_fields(&self) -> impl Iterator<Item = &Field> {
        self.fields.iter().filter(|f| f.kind != ValueKind::Null)
    }

    fn validate(&self, options: ParseOptions) -> Result<(), BadEvent> {
        if self.sent_fields().next().is_none() {
            return Err(BadEvent::Empty);
        }
        // One bit per payload_data field: duplicates and required fields in O(1) each;
        // other names (when allowed) in a set, built only if there are any.
        let mut seen: u128 = 0;
        let mut sent: u128 = 0;
        let mut unknown: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for f in &self.fields {
            let name = self.slice(&f.name);
            match payload_data_index(name) {
                Some(index) => {
                    if seen & (1 << index) != 0 {
                        return Err(BadEvent::DuplicateField(shorten(name)));
                    }
                    seen |= 1 << index;
                    if f.kind != ValueKind::Null {
                        sent |= 1 << index;
                    }
                }
                None if !options.allow_unknown_fields => {
                    return Err(BadEvent::UnknownField(shorten(name)));
                }
                None => {
                    if !unknown.insert(name) {
                        return Err(BadEvent::DuplicateField(shorten(name)));
                    }
                }
            }
            if options.require_decodable_strings && self.value_text(f).is_err() {
                return Err(BadEvent::UndecodableString(shorten(name)));
            }
        }
        for required in REQUIRED_FIELDS {
            let index =
                payload_data_index(required).expect("required fields are payload_data fields");
            if sent & (1 << index) == 0 {
                return Err(BadEvent::MissingField(required));
            }
        }
        Ok(())
    }

    fn bytes(&self, range: &Range<u32>) -> &[u8] {
        &self.raw[range.start as usize..range.end as usize]
    }

    fn slice(&self, range: &Range<u32>) -> &str {
        // The whole element was checked to be UTF-8 and ranges fall on token boundaries.
        std::str::from_utf8(self.bytes(range)).expect("field ranges are UTF-8")
    }

    fn value_text(&self, f: &Field) -> Result<Cow<'_, str>, BadEvent> {
        let raw = self.slice(&f.value);
        match f.kind {
            ValueKind::Bare | ValueKind::Null => Ok(Cow::Borrowed(raw)),
            // No escapes: the text between the quotes is the value, no allocation.
            ValueKind::String if !raw.as_bytes().contains(&b'\\') => {
                Ok(Cow::Borrowed(&raw[1..raw.len() - 1]))
            }
            // serde_json checked the escapes' syntax, but a lone surrogate escape has no
            // text to decode to.
            ValueKind::String => serde_json::from_str::<String>(raw)
                .map(Cow::Owned)
                .map_err(|_| BadEvent::UndecodableString(shorten(self.slice(&f.name)))),
        }
    }
}

/// Length of `,"stm":"1234567890123"` minus the leading comma accounted per field: the
/// send time is 13 digits of epoch milliseconds until the year 2286.
pub const STM_ITEM_BYTES: usize = r#""stm":"1234567890123""#.len();

/// Walks the top-level object once, recording byte ranges; values stay unparsed but are
/// checked against the JSON grammar (RFC 8259): string escapes and control characters,
/// number syntax, the three literals. Anything that is not a JSON object of scalar values
/// is refused. A hand-written scan: it is most of the relay's per-event CPU, and a
/// general JSON parser spent twice as long on it (README, Performance).
fn parse_fields(text: &str) -> Result<Vec<Field>, BadEvent> {
    let mut scan = Scanner {
        bytes: text.as_bytes(),
        at: 0,
    };
    scan.skip_whitespace();
    if scan.peek() != Some(b'{') {
        // Rare: say what it is if it is JSON at all (serde_json's full parse is fine here).
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
            return Err(BadEvent::NotJson(shorten(&e.to_string())));
        }
        return Err(BadEvent::NotAnObject(match scan.peek() {
            Some(b'[') => "an array",
            Some(b'"') => "a string",
            Some(b't' | b'f') => "a boolean",
            Some(b'n') => "null",
            _ => "a number",
        }));
    }
    scan.at += 1;
    let mut fields = Vec::with_capacity(24);
    scan.skip_whitespace();
    if scan.peek() == Some(b'}') {
        scan.at += 1;
    } else {
        loop {
            if scan.peek() != Some(b'"') {
                return Err(scan.error("expected a field name"));
            }
            let (name, escaped) = scan.string()?;
            if escaped {
                return Err(BadEvent::EscapedFieldName);
            }
            let name = name.start + 1..name.end - 1;
            scan.skip_whitespace();
            if scan.peek() != Some(b':') {
                return Err(scan.error("expected `:`"));
            }
            scan.at += 1;
            scan.skip_whitespace();
            let (value, kind) = match scan.peek() {
                Some(b'"') => (scan.string()?.0, ValueKind::String),
                Some(b'n') => (scan.literal(b"null")?, ValueKind::Null),
                Some(b't') => (scan.literal(b"true")?, ValueKind::Bare),
                Some(b'f') => (scan.literal(b"false")?, ValueKind::Bare),
                Some(b'-' | b'0'..=b'9') => (scan.number()?, ValueKind::Bare),
                Some(b'{') => {
                    return Err(BadEvent::NestedValue(shorten(&text[name]), "an object"));
                }
                Some(b'[') => {
                    return Err(BadEvent::NestedValue(shorten(&text[name]), "an array"));
                }
                _ => return Err(scan.error("expected a value")),
            };
            // The send time is written afresh on every attempt.
            if &scan.bytes[name.clone()] != b"stm" {
                fields.push(Field {
                    name: name.start as u32..name.end as u32,
                    value: value.start as u32..value.end as u32,
                    kind,
                });
            }
            scan.skip_whitespace();
            match scan.peek() {
                Some(b',') => {
                    scan.at += 1;
                    scan.skip_whitespace();
                }
                Some(b'}') => {
                    scan.at += 1;
                    break;
                }
                _ => return Err(scan.error("expected `,` or `}`")),
            }
        }
    }
    scan.skip_whitespace();
    if scan.at != scan.bytes.len() {
        return Err(scan.error("trailing characters"));
    }
    Ok(fields)
}

/// A cursor over one element's bytes (already checked to be UTF-8).
struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn error(&self, what: &str) -> BadEvent {
        match self.peek() {
            None => BadEvent::NotJson(format!("{what}, found the end at byte {}", self.at)),
            Some(_) => BadEvent::NotJson(format!("{what} at byte {}", self.at)),
        }
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// A string starting at the cursor: its range with the quotes, and whether it holds
    /// escapes.
    fn string(&mut self) -> Result<(Range<usize>, bool), BadEvent> {
        let start = self.at;
        self.at += 1;
        let mut escaped = false;
        loop {
            // The common case: a run of plain bytes, eight at a time.
            while let Some(chunk) = self.bytes.get(self.at..self.at + 8) {
                let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
                if has_special_byte(word) {
                    break;
                }
                self.at += 8;
            }
            match self.peek() {
                Some(b'"') => {
                    self.at += 1;
                    return Ok((start..self.at, escaped));
                }
                Some(b'\\') => {
                    escaped = true;
                    self.at += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                            self.at += 1;
                        }
                        Some(b'u') => {
                            let hex = self.bytes.get(self.at + 1..self.at + 5);
                            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                                return Err(self.error("invalid \\u escape"));
                            }
                            self.at += 5;
                        }
                        _ => return Err(self.error("invalid escape")),
                    }
                }
                Some(0..0x20) => return Err(self.error("control character in a string")),
                Some(_) => self.at += 1,
                None => return Err(self.error("unterminated string")),
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<Range<usize>, BadEvent> {
        let start = self.at;
        if self.bytes.get(start..start + word.len()) != Some(word) {
            return Err(self.error("invalid literal"));
        }
        self.at += word.len();
        Ok(start..self.at)
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Result<Range<usize>, BadEvent> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.error("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
                return Err(self.error("invalid number"));
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
                return Err(self.error("invalid number"));
            }
            self.digits();
        }
        Ok(start..self.at)
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
    }
}

/// Whether any of the eight bytes in `word` is `"`, `\` or a control character (below
/// 0x20): the bytes that end a plain run inside a JSON string.
fn has_special_byte(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // A zero byte in x ^ pattern marks a match; the classic "has zero byte" test.
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS != 0;
    let quote = has_zero(word ^ (ONES * b'"' as u64));
    let backslash = has_zero(word ^ (ONES * b'\\' as u64));
    // Bytes below 0x20: subtracting 0x20 borrows into the high bit of bytes < 0x20
    // (bytes >= 0x80 are excluded by `!word`).
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGHS != 0;
    quote || backslash || control
}

/// Writes a complete POST body for `events`: the `payload_data` envelope with one item
/// per event, each stamped with the same `stm`.
pub fn write_post_body<'a>(
    events: impl IntoIterator<Item = &'a Event>,
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
pub fn get_query(event: &Event, stm_millis: &str) -> Result<String, BadEvent> {
    let mut query = Vec::with_capacity(event.raw.len() * 3 / 2);
    event.write_query(&mut query, stm_millis)?;
    Ok(String::from_utf8(query).expect("a form-encoded query is ASCII"))
}

/// Appends `text` form-URL-encoded, byte for byte as `form_urlencoded` does: letters,
/// digits and `*-._` as they are, space as `+`, every other byte as `%XX`. A table
/// lookup per byte; the generic encoder's iterators cost 8 % of a GET request.
fn form_encode(out: &mut Vec<u8>, text: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &byte in text {
        match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => out.push(byte),
            b' ' => out.push(b'+'),
            _ => {
                out.extend_from_slice(&[b'%', HEX[(byte >> 4) as usize], HEX[(byte & 15) as usize]])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: ParseOptions = ParseOptions {
        allow_unknown_fields: false,
        require_decodable_strings: false,
    };

    fn parse(text: &str) -> Result<Event, BadEvent> {
        Event::parse(Bytes::copy_from_slice(text.as_bytes()), STRICT)
    }

    #[test]
    fn post_item_turns_every_value_into_a_string_and_adds_stm() {
        let event = parse(
            r#"{"e":"pv","tv":"py-0.4.0","p":"pc","dtm":1402358400000,"tr_tt":49.95,"url":"http://x/\u00e9?a=\"b\"","f_pdf":true,"page":null}"#,
        )
        .unwrap();
        let mut out = Vec::new();
        event.write_post_item(&mut out, "1700000000000");
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "e": "pv", "tv": "py-0.4.0", "p": "pc", "dtm": "1402358400000",
                "tr_tt": "49.95", "url": "http://x/\u{e9}?a=\"b\"", "f_pdf": "true",
                "stm": "1700000000000"
            })
        );
        assert_eq!(
            out.len(),
            event.post_item_len(),
            "the size estimate is exact"
        );
    }

    #[test]
    fn stm_from_the_producer_is_replaced() {
        let event = parse(r#"{"e":"pv","tv":"t","p":"pc","stm":"1"}"#).unwrap();
        let mut out = Vec::new();
        event.write_post_item(&mut out, "1700000000000");
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["stm"], "1700000000000");
        assert_eq!(String::from_utf8(out).unwrap().matches("stm").count(), 1);
    }

    #[test]
    fn query_decodes_json_strings_then_url_encodes() {
        let event = parse(r#"{"e":"pv","tv":"t","p":"pc","url":"http://a/b?c=d e\u00e9","cd":24}"#)
            .unwrap();
        let query = get_query(&event, "1700000000000").unwrap();
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        assert!(pairs.contains(&("url".into(), "http://a/b?c=d e\u{e9}".into())));
        assert!(pairs.contains(&("cd".into(), "24".into())));
        assert!(pairs.contains(&("stm".into(), "1700000000000".into())));
        assert!(!query.contains(' '), "{query}");
    }

    #[test]
    fn form_encoding_matches_form_urlencoded_byte_for_byte() {
        let mut text: String = (0u8..0x80).map(char::from).collect();
        text.push_str("é€😀 a+b&c=d%");
        let mut ours = Vec::new();
        form_encode(&mut ours, text.as_bytes());
        let reference: String = form_urlencoded::byte_serialize(text.as_bytes()).collect();
        assert_eq!(String::from_utf8(ours).unwrap(), reference);
    }

    #[test]
    fn bad_elements_are_named() {
        let cases: &[(&str, fn(&BadEvent) -> bool)] = &[
            ("not json", |e| matches!(e, BadEvent::NotJson(_))),
            (r#"{"e":"pv""#, |e| matches!(e, BadEvent::NotJson(_))),
            (r#"{"e":"pv","tv":"t","p":"pc"} trailing"#, |e| {
                matches!(e, BadEvent::NotJson(_))
            }),
            ("[1,2]", |e| *e == BadEvent::NotAnObject("an array")),
            (r#""text""#, |e| *e == BadEvent::NotAnObject("a string")),
            ("42", |e| *e == BadEvent::NotAnObject("a number")),
            ("null", |e| *e == BadEvent::NotAnObject("null")),
            ("{}", |e| *e == BadEvent::Empty),
            (r#"{"page":null}"#, |e| *e == BadEvent::Empty),
            (r#"{"e":"pv","tv":"t","p":"pc","co":{"a":1}}"#, |e| {
                *e == BadEvent::NestedValue("co".into(), "an object")
            }),
            (r#"{"e":"pv","tv":"t","p":"pc","co":[1]}"#, |e| {
                *e == BadEvent::NestedValue("co".into(), "an array")
            }),
            (r#"{"e":"pv","tv":"t","p":"pc","foo":"x"}"#, |e| {
                *e == BadEvent::UnknownField("foo".into())
            }),
            (r#"{"e":"pv","tv":"t","p":"pc","\u0065id":"x"}"#, |e| {
                *e == BadEvent::EscapedFieldName
            }),
            (r#"{"e":"pv","tv":"t"}"#, |e| {
                *e == BadEvent::MissingField("p")
            }),
            (r#"{"e":"pv","tv":"t","p":"pc","e":"se"}"#, |e| {
                *e == BadEvent::DuplicateField("e".into())
            }),
        ];
        for (input, check) in cases {
            let err = parse(input).expect_err(input);
            assert!(check(&err), "{input}: got {err:?}");
            assert!(!err.to_string().is_empty());
        }
        let invalid_utf8 = Event::parse(Bytes::from_static(b"{\"e\":\"\xff\"}"), STRICT);
        assert!(matches!(invalid_utf8, Err(BadEvent::NotJson(_))));
    }

    #[test]
    fn packed_lookup_finds_exactly_the_payload_data_fields() {
        for (index, name) in PAYLOAD_DATA_FIELDS.iter().enumerate() {
            assert_eq!(payload_data_index(name), Some(index), "{name}");
        }
        for other in [
            "",
            "E",
            "ee",
            "eid2",
            "url\0",
            "f_gearsx",
            "a_very_long_field",
            "stm ",
        ] {
            assert_eq!(payload_data_index(other), None, "{other:?}");
        }
    }

    #[test]
    fn unknown_fields_pass_when_allowed() {
        let lenient = ParseOptions {
            allow_unknown_fields: true,
            require_decodable_strings: false,
        };
        let event = Event::parse(
            Bytes::from_static(br#"{"e":"pv","tv":"t","p":"pc","foo":"x"}"#),
            lenient,
        )
        .unwrap();
        assert_eq!(event.get("foo").as_deref(), Some("x"));
    }

    #[test]
    fn every_fixture_event_parses_and_keeps_every_field() {
        for file in [
            include_str!("../tests/fixtures/python-tracker-0.15.0.jsonl"),
            include_str!("../tests/fixtures/python-tracker-0.4.0-shape.jsonl"),
        ] {
            for line in file.lines() {
                let event = parse(line).unwrap_or_else(|e| panic!("{e}: {line}"));
                let original: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(line).unwrap();
                let mut item = Vec::new();
                event.write_post_item(&mut item, "1700000000000");
                let encoded: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_slice(&item).unwrap();
                assert_eq!(encoded.len(), original.len() + 1);
                for (name, value) in &original {
                    let expected = match value {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    assert_eq!(encoded[name], serde_json::Value::String(expected));
                }
            }
        }
    }
}
