//! One Snowplow event as it sits in a Redis list element: parsing, validation and its
//! two wire encodings (a GET query string and a POST `payload_data` item).
//!
//! An [`Element`] keeps the element's original bytes and, beside them, the byte ranges of
//! each name and value. Encoding copies those ranges straight into the request buffer, so
//! no value tree is built and no string is re-escaped: a JSON string literal from the
//! producer is already a valid JSON string literal in the POST body. Numbers and booleans
//! (0.4.0-era producers write `dtm`, `tid`, `tr_tt` … as JSON numbers) are wrapped in
//! quotes, because `payload_data` 1-0-4 requires every value to be a string.
//!
//! What is accepted (anything else is [`BadElement`] and goes to the dead-letter list):
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
use std::mem::MaybeUninit;
use std::ops::Range;

use bytes::Bytes;

use super::block::Classifier;
use super::wire::{STM_ITEM_BYTES, form_encode};
use super::{
    PAYLOAD_DATA_FIELDS, REQUIRED_FIELDS, REQUIRED_INDICES, STM_INDEX,
    payload_data_index_of_parsed_name, shorten,
};

/// How strictly [`Element::parse`] checks an element; it depends on how it will be sent.
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
    pub fn for_method(method: super::Method, allow_unknown_fields: bool) -> ParseOptions {
        match method {
            super::Method::Get => ParseOptions {
                allow_unknown_fields: true,
                require_decodable_strings: true,
            },
            super::Method::Post => ParseOptions {
                allow_unknown_fields,
                require_decodable_strings: false,
            },
        }
    }
}

/// Why an element cannot be relayed. Its `Display` is the reason stored in the
/// dead-letter entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadElement {
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
    /// A JSON string literal without escapes, quotes included.
    String,
    /// A JSON string literal with escapes, quotes included.
    EscapedString,
    /// A JSON number or `true`/`false`: raw text without quotes.
    Bare,
    /// `null`: left out of both encodings, as trackers leave out empty fields, but kept
    /// for the duplicate check (`{"url":"a","url":null}` is ambiguous).
    Null,
}

impl ValueKind {
    fn is_string(self) -> bool {
        matches!(self, ValueKind::String | ValueKind::EscapedString)
    }
}

/// One name/value pair, as byte ranges into [`Element::raw`].
#[derive(Debug, Clone)]
struct Field {
    /// The name without its quotes (never escaped; see [`BadElement::EscapedFieldName`]).
    name: Range<u32>,
    /// The value's raw JSON text.
    value: Range<u32>,
    kind: ValueKind,
    /// The field directly follows another sent field in the element (nothing but a comma
    /// and whitespace between them: no `null` or `stm` field left out), so one copy
    /// writes both into a POST item, the separator as the producer wrote it.
    joins_previous: bool,
}

/// A parsed, validated event that still owns its original bytes.
#[derive(Debug, Clone)]
pub struct Element {
    raw: Bytes,
    fields: Vec<Field>,
    /// What [`Element::post_item_len`] returns, counted while parsing.
    post_item_len: usize,
    /// The POST item's shape, found while parsing (see [`PostItemShape`]).
    shape: PostItemShape,
}

/// How [`Element::write_post_item`] walks an element: field by field in general, or, when
/// every field is sent and each follows the one before (no `null`, no `stm`: what the
/// trackers write), one copy of the element's fields broken only at its numbers and
/// booleans, found from a bit per field without visiting the strings.
#[derive(Debug, Clone, Copy)]
enum PostItemShape {
    FieldByField,
    /// One run; bit `i` is set where field `i` is a number or boolean (at most 64 fields).
    OneRun {
        bare_fields: u64,
    },
}

impl Element {
    /// Parses and validates one list element.
    pub fn parse(raw: Bytes, options: ParseOptions) -> Result<Element, BadElement> {
        Element::parse_or_give_back(raw, options).map_err(|(_, bad)| bad)
    }

    /// [`Element::parse`], giving a refused element's bytes back with the reason (for its
    /// dead-letter entry), so that the caller need not keep a clone of every element it
    /// parses (the first clone of a `Bytes` made from a `Vec` allocates).
    pub fn parse_or_give_back(
        raw: Bytes,
        options: ParseOptions,
    ) -> Result<Element, (Bytes, BadElement)> {
        let parsed = utf8(&raw).and_then(parse_fields);
        let parsed = match parsed {
            Ok(parsed) => parsed,
            Err(bad) => return Err((raw, bad)),
        };
        let mut event = Element {
            raw,
            fields: parsed.fields,
            post_item_len: parsed.one_run_len,
            shape: PostItemShape::OneRun {
                bare_fields: parsed.bare_fields,
            },
        };
        if !parsed.one_run {
            event.lay_out_field_by_field(false);
        }
        match event.validate(options) {
            Ok(Stm::Absent) => Ok(event),
            Ok(Stm::Present) => {
                event.leave_out_stm();
                Ok(event)
            }
            Err(bad) => Err((std::mem::take(&mut event.raw), bad)),
        }
    }

    /// The element's bytes, as it was read from Redis.
    pub fn into_raw(mut self) -> Bytes {
        std::mem::take(&mut self.raw)
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
            .and_then(|f| match self.value_bytes(f).ok()? {
                // Values are slices of checked UTF-8 at token boundaries, or decoded
                // strings.
                Cow::Borrowed(bytes) => std::str::from_utf8(bytes).ok().map(Cow::Borrowed),
                Cow::Owned(bytes) => String::from_utf8(bytes).ok().map(Cow::Owned),
            })
    }

    /// The number of bytes [`Element::write_post_item`] appends, give or take the `stm`
    /// field, whose length is fixed ([`STM_ITEM_BYTES`]). Counted once, after the parse
    /// (from the first and last field for one run, see [`PostItemShape`]; else by
    /// [`PostItemLen`]), so filling a batch does not walk the fields again.
    pub fn post_item_len(&self) -> usize {
        self.post_item_len
    }

    /// Appends this event as one `payload_data` item: every value a JSON string, plus
    /// `stm` (send time, epoch milliseconds). Sent fields that are neighbours in the
    /// element (see [`Field::joins_previous`]) are copied as they are, separators and all
    /// (JSON allows the producer's whitespace), except that each number or boolean gets
    /// quotes: a Python element of string values is one copy, and each number adds two.
    /// [`Element::post_item_len`] counts the same pieces; unit tests and the encoding
    /// properties check that the two agree.
    pub fn write_post_item(&self, out: &mut Vec<u8>, stm_millis: &str) {
        // Every piece is a slice of the element, in order and never overlapping, plus at
        // most a comma and two quotes per field, the braces and `stm`. Where the room
        // left holds that much, the pieces are written by offset into it (no capacity
        // check and no length update per piece); else (the last items of a body made
        // with room for exactly its items, or a `Vec` with no room) pushed one by one,
        // the `Vec` growing only if it must.
        if out.capacity() - out.len() >= self.post_item_room(stm_millis) {
            let mut item = ItemWriter::new(out);
            self.write_post_item_to(&mut item, stm_millis);
            item.finish();
        } else {
            self.write_post_item_to(out, stm_millis);
        }
    }

    /// The most bytes a POST item can take, without counting: the element's bytes, three
    /// per field, and `stm`.
    fn post_item_room(&self, stm_millis: &str) -> usize {
        self.raw.len() + 3 * self.fields.len() + STM_ITEM_BYTES + stm_millis.len() + 3
    }

    /// [`Element::write_post_item`]'s pieces, in order, to `item`.
    #[inline(always)]
    fn write_post_item_to(&self, item: &mut impl PostItemOut, stm_millis: &str) {
        item.byte(b'{');
        let fields = &self.fields[..];
        if let (PostItemShape::OneRun { bare_fields }, Some(last)) = (self.shape, fields.last()) {
            let mut from = fields[0].name.start as usize - 1;
            let mut bare = bare_fields;
            while bare != 0 {
                let field = &fields[bare.trailing_zeros() as usize];
                bare &= bare - 1;
                item.copy(&self.raw[from..field.value.start as usize]);
                item.byte(b'"');
                item.copy_short(self.bytes(&field.value));
                item.byte(b'"');
                from = field.value.end as usize;
            }
            item.copy(&self.raw[from..last.value.end as usize]);
            item.byte(b',');
            item.copy(b"\"stm\":\"");
            item.copy(stm_millis.as_bytes());
            item.copy(b"\"}");
            return;
        }
        let mut next = 0;
        while next < fields.len() {
            let first = &fields[next];
            next += 1;
            if first.kind == ValueKind::Null {
                continue;
            }
            // A run of neighbouring sent fields, copied from the first one's opening quote
            // to the last one's value, separators as they are; each number or boolean in it
            // gets its quotes.
            let mut from = first.name.start as usize - 1;
            let mut field = first;
            loop {
                if field.kind == ValueKind::Bare {
                    item.copy(&self.raw[from..field.value.start as usize]);
                    item.byte(b'"');
                    item.copy_short(self.bytes(&field.value));
                    item.byte(b'"');
                    from = field.value.end as usize;
                }
                // The strings that follow join the run whole (most fields): one test each.
                while next < fields.len()
                    && fields[next].joins_previous
                    && fields[next].kind.is_string()
                {
                    next += 1;
                }
                match fields.get(next) {
                    Some(bare) if bare.joins_previous && bare.kind == ValueKind::Bare => {
                        field = bare;
                        next += 1;
                    }
                    _ => break,
                }
            }
            item.copy(&self.raw[from..fields[next - 1].value.end as usize]);
            item.byte(b',');
        }
        item.copy(b"\"stm\":\"");
        item.copy(stm_millis.as_bytes());
        item.copy(b"\"}");
    }

    /// Appends this event's pairs, form-URL-encoded (`application/x-www-form-urlencoded`,
    /// as the trackers send GET requests), plus `stm`, to a query string. Fails (writing
    /// nothing useful) if a string value has no Unicode text; events parsed with
    /// [`ParseOptions::require_decodable_strings`] never do.
    pub fn write_query(&self, query: &mut Vec<u8>, stm_millis: &str) -> Result<(), BadElement> {
        for f in self.sent_fields() {
            form_encode(query, self.bytes(&f.name));
            query.push(b'=');
            form_encode(query, &self.value_bytes(f)?);
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

    /// Checks the fields against `payload_data` and `options`. A producer's `stm` is
    /// ignored here as everywhere (it is written afresh on every attempt, so it may even
    /// appear twice); whether there is one is returned, for [`Element::leave_out_stm`].
    fn validate(&self, options: ParseOptions) -> Result<Stm, BadElement> {
        if !self.sent_fields().any(|f| self.bytes(&f.name) != b"stm") {
            return Err(BadElement::Empty);
        }
        // One state per payload_data field: duplicates and required fields in O(1) each
        // (an array, not bits in a u128: a shift by a variable amount costs more).
        let mut seen = [Seen::Not; PAYLOAD_DATA_FIELDS.len()];
        // Names outside payload_data (when allowed): a set made only if there are any.
        let mut unknown: Option<std::collections::HashSet<&[u8]>> = None;
        let mut stm = Stm::Absent;
        for f in &self.fields {
            let range = f.name.start as usize..f.name.end as usize;
            match payload_data_index_of_parsed_name(&self.raw, range) {
                Some(STM_INDEX) => {
                    stm = Stm::Present;
                    continue;
                }
                Some(index) => {
                    if seen[index] != Seen::Not {
                        return Err(BadElement::DuplicateField(shorten(self.slice(&f.name))));
                    }
                    seen[index] = match f.kind {
                        ValueKind::Null => Seen::Null,
                        _ => Seen::Sent,
                    };
                }
                None if !options.allow_unknown_fields => {
                    return Err(BadElement::UnknownField(shorten(self.slice(&f.name))));
                }
                None => {
                    if !unknown.get_or_insert_default().insert(self.bytes(&f.name)) {
                        return Err(BadElement::DuplicateField(shorten(self.slice(&f.name))));
                    }
                }
            }
            if options.require_decodable_strings
                && f.kind == ValueKind::EscapedString
                && self.value_bytes(f).is_err()
            {
                return Err(BadElement::UndecodableString(shorten(self.slice(&f.name))));
            }
        }
        if let Some(r) = REQUIRED_INDICES
            .iter()
            .position(|&index| seen[index] != Seen::Sent)
        {
            return Err(BadElement::MissingField(REQUIRED_FIELDS[r]));
        }
        Ok(stm)
    }

    /// Removes a producer's `stm` fields and lays the POST item out again without them
    /// (rare: the trackers add `stm` when they send, not when they push to Redis). The
    /// parse counts every field as sent but `null` ones; checking each name for `stm`
    /// there cost every event about 7 % of its parse.
    #[cold]
    fn leave_out_stm(&mut self) {
        self.lay_out_field_by_field(true);
        let raw = &self.raw;
        self.fields
            .retain(|f| raw[f.name.start as usize..f.name.end as usize] != *b"stm");
    }

    /// Marks which fields join the run before them and counts the POST item for
    /// [`PostItemShape::FieldByField`], leaving out `null` fields and, if `without_stm`,
    /// `stm` ones. Rare: only elements with such a field, or more than 64 fields, are
    /// written field by field.
    #[cold]
    #[inline(never)]
    fn lay_out_field_by_field(&mut self, without_stm: bool) {
        let raw = &self.raw;
        let mut post_item = PostItemLen::new();
        for f in &mut self.fields {
            if f.kind == ValueKind::Null
                || without_stm && raw[f.name.start as usize..f.name.end as usize] == *b"stm"
            {
                post_item.left_out();
                f.joins_previous = false;
            } else {
                f.joins_previous = post_item.field(
                    f.name.start as usize - 1,
                    f.value.end as usize,
                    post_item_added_bytes(f.kind),
                );
            }
        }
        self.post_item_len = post_item.len;
        self.shape = PostItemShape::FieldByField;
    }

    fn bytes(&self, range: &Range<u32>) -> &[u8] {
        &self.raw[range.start as usize..range.end as usize]
    }

    fn slice(&self, range: &Range<u32>) -> &str {
        // The whole element was checked to be UTF-8 and ranges fall on token boundaries.
        std::str::from_utf8(self.bytes(range)).expect("field ranges are UTF-8")
    }

    /// A value's UTF-8 text: numbers as written, strings unescaped.
    #[inline]
    fn value_bytes(&self, f: &Field) -> Result<Cow<'_, [u8]>, BadElement> {
        let raw = self.bytes(&f.value);
        match f.kind {
            ValueKind::Bare | ValueKind::Null => Ok(Cow::Borrowed(raw)),
            // No escapes: the text between the quotes is the value, no allocation.
            ValueKind::String => Ok(Cow::Borrowed(&raw[1..raw.len() - 1])),
            ValueKind::EscapedString => self.unescaped(f),
        }
    }

    /// The text of a string value with escapes. The scan checked the escapes' syntax, but
    /// a lone surrogate escape has no text to decode to.
    #[cold]
    fn unescaped(&self, f: &Field) -> Result<Cow<'_, [u8]>, BadElement> {
        serde_json::from_slice::<String>(self.bytes(&f.value))
            .map(|text| Cow::Owned(text.into_bytes()))
            .map_err(|_| BadElement::UndecodableString(shorten(self.slice(&f.name))))
    }
}

/// The element as text, or why it is not UTF-8. simdutf8 checks a block of 32 or 64
/// bytes per step, cheaper than `std::str::from_utf8` for events of a few hundred bytes;
/// a refusal asks `std` again, which has the last word and the detailed message.
fn utf8(raw: &[u8]) -> Result<&str, BadElement> {
    simdutf8::basic::from_utf8(raw).or_else(|_| {
        std::str::from_utf8(raw).map_err(|e| BadElement::NotJson(shorten(&e.to_string())))
    })
}

/// Walks the top-level object once, recording byte ranges; values stay unparsed but are
/// checked against the JSON grammar (RFC 8259): string escapes and control characters,
/// number syntax, the three literals. Anything that is not a JSON object of scalar values
/// is refused. A hand-written scan: it is most of the relay's per-event CPU, and a
/// general JSON parser spent twice as long on it. Returns the fields and what the POST
/// item's writer needs to know (see [`PostItemShape`]).
fn parse_fields(text: &str) -> Result<Parsed, BadElement> {
    let mut scan = Scanner::new(text.as_bytes());
    scan.skip_whitespace();
    if scan.peek() != Some(b'{') {
        // Rare: say what it is if it is JSON at all (serde_json's full parse is fine here).
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
            return Err(BadElement::NotJson(shorten(&e.to_string())));
        }
        return Err(BadElement::NotAnObject(match scan.peek() {
            Some(b'[') => "an array",
            Some(b'"') => "a string",
            Some(b't' | b'f') => "a boolean",
            Some(b'n') => "null",
            _ => "a number",
        }));
    }
    scan.at += 1;
    let mut fields = spare_fields::take();
    let mut bare_fields = 0u64;
    let mut any_null = false;
    scan.skip_whitespace();
    if scan.peek() == Some(b'}') {
        scan.at += 1;
    } else {
        loop {
            let (name, value, kind) = match scan.plain_field() {
                Some(field) => field,
                None => scan.field()?,
            };
            // A producer's `stm` is counted as sent, and left out by the check pass if
            // there is one (rare; see `Element::leave_out_stm`).
            match kind {
                ValueKind::Null => any_null = true,
                ValueKind::Bare => bare_fields |= 1u64.wrapping_shl(fields.len() as u32),
                _ => {}
            }
            fields.push(Field {
                name: name.start as u32..name.end as u32,
                value: value.start as u32..value.end as u32,
                kind,
                // Fields follow each other: only a left-out one breaks a run, and then
                // `Element::lay_out_field_by_field` sets this again.
                joins_previous: true,
            });
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
    // One run: `{`, the fields from the first name's quote to the last value, two
    // quotes per number or boolean, `,`, `stm` and `}`.
    let one_run_len = match (fields.first(), fields.last()) {
        (Some(first), Some(last)) => {
            (last.value.end - first.name.start) as usize
                + 2 * bare_fields.count_ones() as usize
                + 4
                + STM_ITEM_BYTES
        }
        _ => 2 + STM_ITEM_BYTES,
    };
    Ok(Parsed {
        one_run: !any_null && fields.len() <= 64,
        fields,
        one_run_len,
        bare_fields,
    })
}

/// What [`parse_fields`] found in an element that is an object of scalar values.
struct Parsed {
    fields: Vec<Field>,
    /// Every field is sent (none is `null`), at most 64 of them.
    one_run: bool,
    /// The POST item's length if `one_run`.
    one_run_len: usize,
    /// Bit `i`: field `i` is a number or boolean.
    bare_fields: u64,
}

impl Drop for Element {
    fn drop(&mut self) {
        spare_fields::give_back(std::mem::take(&mut self.fields));
    }
}

/// The field lists of dropped elements, kept for the next parses: an element's list is
/// its one allocation, and the relay parses and drops elements by the thousand a second,
/// in batches (glibc's per-thread cache holds seven blocks of a size, so most of them
/// went through its slower bins: about 350 instructions per element, malloc and free).
/// Taken and given back without waiting: when another thread holds the list, the
/// allocator is used as before. At most [`spare_fields::MOST`] lists are kept (640 KiB).
mod spare_fields {
    use std::sync::Mutex;

    use super::Field;

    /// Room for the fields of any event the trackers write (10 to 27 in the fixtures): a
    /// Vec that grows costs a realloc and a copy of those already found.
    const ROOM: usize = 32;
    /// Lists kept at most (each `ROOM` fields, 640 bytes).
    pub(super) const MOST: usize = 1024;

    static SPARE: Mutex<Vec<Vec<Field>>> = Mutex::new(Vec::new());

    /// An empty list with room for `ROOM` fields.
    pub(super) fn take() -> Vec<Field> {
        if let Ok(mut spare) = SPARE.try_lock()
            && let Some(fields) = spare.pop()
        {
            return fields;
        }
        Vec::with_capacity(ROOM)
    }

    /// Keeps `fields` for a later parse if it is one of `take`'s and there is room.
    pub(super) fn give_back(mut fields: Vec<Field>) {
        if fields.capacity() != ROOM {
            return;
        }
        fields.clear();
        if let Ok(mut spare) = SPARE.try_lock()
            && spare.len() < MOST
        {
            if spare.capacity() == 0 {
                spare.reserve_exact(MOST);
            }
            spare.push(fields);
        }
    }
}

/// Whether [`Element::validate`] has met a `payload_data` field, and whether it was sent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Seen {
    Not,
    Null,
    Sent,
}

/// Whether an element carries a producer's `stm` field (see [`Element::validate`]).
enum Stm {
    Absent,
    Present,
}

/// The bytes a sent value gains in the POST item: quotes around a number or boolean.
#[inline(always)]
fn post_item_added_bytes(kind: ValueKind) -> usize {
    match kind {
        ValueKind::Bare => 2,
        _ => 0,
    }
}

/// The length of an element's POST item written field by field
/// ([`PostItemShape::FieldByField`]), by the rules of [`Element::write_post_item`]: `{`,
/// `}` and the `stm` field, then each piece's bytes and its comma.
struct PostItemLen {
    len: usize,
    /// Where the value of the field just parsed ends if it was sent (the next field
    /// extends its run), else 0 (no value ends at the element's first byte).
    open_span_end: usize,
}

impl PostItemLen {
    fn new() -> PostItemLen {
        PostItemLen {
            len: 2 + STM_ITEM_BYTES,
            open_span_end: 0,
        }
    }

    /// A sent field from its name's opening quote to its value's end, plus `added` bytes
    /// (the quotes around a number or boolean); returns whether it joins the run of the
    /// field before it.
    #[inline]
    fn field(&mut self, field_start: usize, value_end: usize, added: usize) -> bool {
        let joins = self.open_span_end != 0;
        self.len += added
            + if joins {
                value_end - self.open_span_end
            } else {
                1 + value_end - field_start
            };
        self.open_span_end = value_end;
        joins
    }

    /// A field that is not sent (`null`, `stm`): the next string starts a new span.
    #[inline]
    fn left_out(&mut self) {
        self.open_span_end = 0;
    }
}

/// A cursor over one element's bytes (already checked to be UTF-8), with the special
/// bytes (see [`Classifier::special_mask_at`]) of the 64-byte block the string scan last
/// needed: a block is classified once, and every string that starts or ends in it (most
/// names and values are shorter than a block) is found with a shift and a count of zeros.
struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Where the classified block starts.
    block_start: usize,
    /// Bit `i`: byte `block_start + i` is special, or lies past the element's end.
    block_mask: u64,
    classifier: Classifier,
}

impl<'a> Scanner<'a> {
    fn new(bytes: &'a [u8]) -> Scanner<'a> {
        let mut scan = Scanner {
            bytes,
            at: 0,
            block_start: 0,
            block_mask: 0,
            classifier: Classifier::new(),
        };
        scan.classify_block(0);
        scan
    }

    /// The position of the first special byte at or after `from`, or the element's
    /// length if there is none.
    #[inline(always)]
    fn next_special(&mut self, mut from: usize) -> usize {
        loop {
            let offset = from.wrapping_sub(self.block_start);
            if offset < 64 {
                let rest = self.block_mask >> offset;
                if rest != 0 {
                    return from + rest.trailing_zeros() as usize;
                }
                from = self.block_start + 64;
            }
            self.classify_block(from);
        }
    }

    /// Classifies the 64 bytes from `from` (at most the element's length); bytes past the
    /// end count as special, so a scan stops there. Out of line: inlined into the parse
    /// loop, it cost the loop registers (about 130 instructions per event more).
    #[inline(never)]
    fn classify_block(&mut self, from: usize) {
        self.block_start = from;
        self.block_mask = self.classifier.special_mask_at(self.bytes, from);
    }
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    /// A field that [`Scanner::plain_field`] did not take, by the general grammar:
    /// the name's range (without quotes), the value's and its kind.
    #[inline(never)]
    fn field(&mut self) -> Result<(Range<usize>, Range<usize>, ValueKind), BadElement> {
        if self.peek() != Some(b'"') {
            return Err(self.error("expected a field name"));
        }
        let (name, escaped) = self.string()?;
        if escaped {
            return Err(BadElement::EscapedFieldName);
        }
        let name = name.start + 1..name.end - 1;
        self.skip_whitespace();
        if self.peek() != Some(b':') {
            return Err(self.error("expected `:`"));
        }
        self.at += 1;
        self.skip_whitespace();
        let (value, kind) = match self.peek() {
            Some(b'"') => match self.string()? {
                (range, false) => (range, ValueKind::String),
                (range, true) => (range, ValueKind::EscapedString),
            },
            Some(b'n') => (self.literal(b"null")?, ValueKind::Null),
            Some(b't') => (self.literal(b"true")?, ValueKind::Bare),
            Some(b'f') => (self.literal(b"false")?, ValueKind::Bare),
            Some(b'-' | b'0'..=b'9') => (self.number()?, ValueKind::Bare),
            Some(b'{') => {
                return Err(BadElement::NestedValue(
                    shorten(self.text(&name)),
                    "an object",
                ));
            }
            Some(b'[') => {
                return Err(BadElement::NestedValue(
                    shorten(self.text(&name)),
                    "an array",
                ));
            }
            _ => return Err(self.error("expected a value")),
        };
        Ok((name, value, kind))
    }

    /// A field whose name is a string without escapes, with `:` or `: ` before a value
    /// that is a string without escapes or a number: almost every field a tracker writes,
    /// found without the general grammar's steps. `None`, the cursor where it was, for
    /// anything else: [`Scanner::field`] then reads it, and says what is wrong if anything
    /// is.
    #[inline(always)]
    fn plain_field(&mut self) -> Option<(Range<usize>, Range<usize>, ValueKind)> {
        let bytes = self.bytes;
        let start = self.at;
        if bytes.get(start) != Some(&b'"') {
            return None;
        }
        let name = start + 1..self.next_special(start + 1);
        if bytes.get(name.end..name.end + 2) != Some(b"\":") {
            return None;
        }
        let mut value_start = name.end + 2;
        if bytes.get(value_start) == Some(&b' ') {
            value_start += 1;
        }
        match bytes.get(value_start) {
            Some(b'"') => {
                let value_end = self.next_special(value_start + 1);
                if bytes.get(value_end) != Some(&b'"') {
                    return None;
                }
                self.at = value_end + 1;
                Some((name, value_start..self.at, ValueKind::String))
            }
            Some(b'-' | b'0'..=b'9') => {
                self.at = value_start;
                match self.number() {
                    Ok(value) => Some((name, value, ValueKind::Bare)),
                    Err(_) => {
                        self.at = start;
                        None
                    }
                }
            }
            _ => None,
        }
    }

    /// The text of a range of the element (checked UTF-8, cut at token boundaries).
    fn text(&self, range: &Range<usize>) -> &str {
        std::str::from_utf8(&self.bytes[range.clone()]).expect("ranges fall on token boundaries")
    }

    fn error(&self, what: &str) -> BadElement {
        self.error_at(self.at, what)
    }

    /// What is wrong at byte `at`.
    #[cold]
    fn error_at(&self, at: usize, what: &str) -> BadElement {
        match self.bytes.get(at) {
            None => BadElement::NotJson(format!("{what}, found the end at byte {at}")),
            Some(_) => BadElement::NotJson(format!("{what} at byte {at}")),
        }
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// A string starting at the cursor: its range with the quotes, and whether it holds
    /// escapes. The common case, a string without escapes, is inlined into the caller
    /// (it runs for every name and most values); escapes and errors go on in
    /// [`Scanner::string_with_escapes`].
    #[inline(always)]
    fn string(&mut self) -> Result<(Range<usize>, bool), BadElement> {
        let start = self.at;
        let at = self.next_special(start + 1);
        if self.bytes.get(at) == Some(&b'"') {
            self.at = at + 1;
            return Ok((start..self.at, false));
        }
        self.at = at;
        self.string_with_escapes(start)
    }

    /// The rest of the string that began at `start`, from the cursor on: escapes are
    /// checked (and the string marked as holding them), a control character or the end of
    /// the element is an error.
    #[cold]
    #[inline(never)]
    fn string_with_escapes(&mut self, start: usize) -> Result<(Range<usize>, bool), BadElement> {
        let mut escaped = false;
        loop {
            self.at = self.next_special(self.at);
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

    fn literal(&mut self, word: &[u8]) -> Result<Range<usize>, BadElement> {
        let start = self.at;
        if self.bytes.get(start..start + word.len()) != Some(word) {
            return Err(self.error("invalid literal"));
        }
        self.at += word.len();
        Ok(start..self.at)
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    #[inline(always)]
    fn number(&mut self) -> Result<Range<usize>, BadElement> {
        let bytes = self.bytes;
        let start = self.at;
        let byte = |at: usize| bytes.get(at).copied();
        let digits = |mut at: usize| {
            while byte(at).is_some_and(|b| b.is_ascii_digit()) {
                at += 1;
            }
            at
        };
        let mut at = start;
        if byte(at) == Some(b'-') {
            at += 1;
        }
        at = match byte(at) {
            Some(b'0') => at + 1,
            Some(b'1'..=b'9') => digits(at + 1),
            _ => return Err(self.error_at(at, "invalid number")),
        };
        if byte(at) == Some(b'.') {
            if !byte(at + 1).is_some_and(|b| b.is_ascii_digit()) {
                return Err(self.error_at(at + 1, "invalid number"));
            }
            at = digits(at + 1);
        }
        if let Some(b'e' | b'E') = byte(at) {
            at += 1;
            if let Some(b'+' | b'-') = byte(at) {
                at += 1;
            }
            if !byte(at).is_some_and(|b| b.is_ascii_digit()) {
                return Err(self.error_at(at, "invalid number"));
            }
            at = digits(at);
        }
        self.at = at;
        Ok(start..at)
    }
}

/// `bytes` as bytes that may be uninitialised, to copy into spare capacity
/// (`<[MaybeUninit<u8>]>::write_copy_of_slice` is newer than this crate's Rust version).
fn as_uninit(bytes: &[u8]) -> &[MaybeUninit<u8>] {
    // SAFETY: `MaybeUninit<u8>` has the layout of `u8`, and every `u8` is a valid one.
    unsafe { &*(bytes as *const [u8] as *const [MaybeUninit<u8>]) }
}

/// Where [`Element::write_post_item`] writes a POST item's pieces.
trait PostItemOut {
    fn byte(&mut self, byte: u8);
    fn copy(&mut self, bytes: &[u8]);
    /// [`PostItemOut::copy`] of a piece that is mostly a few bytes (a number).
    fn copy_short(&mut self, bytes: &[u8]) {
        self.copy(bytes);
    }
}

impl PostItemOut for Vec<u8> {
    fn byte(&mut self, byte: u8) {
        self.push(byte);
    }

    fn copy(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Writes a POST item into the room left at the end of a `Vec` (the caller has checked
/// that it holds the item): each piece is a bounds-checked copy into the spare capacity,
/// and the `Vec`'s length is set once, by [`ItemWriter::finish`], to what was written.
struct ItemWriter<'a> {
    out: &'a mut Vec<u8>,
    /// Where the item starts in `out`.
    start: usize,
    /// Bytes written after `start`.
    at: usize,
}

impl<'a> ItemWriter<'a> {
    fn new(out: &'a mut Vec<u8>) -> ItemWriter<'a> {
        ItemWriter {
            start: out.len(),
            out,
            at: 0,
        }
    }

    fn room(&mut self) -> &mut [MaybeUninit<u8>] {
        &mut self.out.spare_capacity_mut()[self.at..]
    }

    fn finish(self) {
        // SAFETY: the `at` bytes after `start` are initialised: `at` only grows by what
        // `byte`, `copy` and `copy_short` have just written there (each write is bounds
        // checked against the spare capacity).
        unsafe { self.out.set_len(self.start + self.at) }
    }
}

impl PostItemOut for ItemWriter<'_> {
    fn byte(&mut self, byte: u8) {
        self.room()[0].write(byte);
        self.at += 1;
    }

    fn copy(&mut self, bytes: &[u8]) {
        self.room()[..bytes.len()].copy_from_slice(as_uninit(bytes));
        self.at += bytes.len();
    }

    /// Copied in place by at most two overlapping words, not by a call to `memcpy`.
    #[inline(always)]
    fn copy_short(&mut self, bytes: &[u8]) {
        let n = bytes.len();
        let room = self.room();
        match n {
            0 => {}
            1..=3 => {
                room[0].write(bytes[0]);
                room[n / 2].write(bytes[n / 2]);
                room[n - 1].write(bytes[n - 1]);
            }
            4..=7 => {
                room[..4].copy_from_slice(as_uninit(&bytes[..4]));
                room[n - 4..n].copy_from_slice(as_uninit(&bytes[n - 4..]));
            }
            8..=16 => {
                room[..8].copy_from_slice(as_uninit(&bytes[..8]));
                room[n - 8..n].copy_from_slice(as_uninit(&bytes[n - 8..]));
            }
            _ => {
                room[..n].copy_from_slice(as_uninit(bytes));
            }
        }
        self.at += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{PAYLOAD_DATA_FIELDS, get_query, payload_data_index};

    const STRICT: ParseOptions = ParseOptions {
        allow_unknown_fields: false,
        require_decodable_strings: false,
    };

    fn parse(text: &str) -> Result<Element, BadElement> {
        Element::parse(Bytes::copy_from_slice(text.as_bytes()), STRICT)
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
    fn neighbouring_fields_are_copied_as_one_span_with_the_producers_spacing() {
        let write = |text: &str| {
            let event = parse(text).unwrap();
            let mut out = Vec::new();
            event.write_post_item(&mut out, "1700000000000");
            assert_eq!(out.len(), event.post_item_len(), "{text}");
            String::from_utf8(out).unwrap()
        };
        // Python's json.dumps spacing, all strings: the fields as they are, one span.
        assert_eq!(
            write(r#"{"e": "pv", "p": "pc", "tv": "py-0.15.0"}"#),
            r#"{"e": "pv", "p": "pc", "tv": "py-0.15.0","stm":"1700000000000"}"#
        );
        // A null and a producer's stm each end a span; a number or boolean gets quotes
        // and stays in it, with the producer's spacing.
        assert_eq!(
            write(r#"{"e":"pv", "page":null, "p":"pc","stm":"1","tv":"t", "dtm":1, "aid":"a\"b"}"#),
            r#"{"e":"pv","p":"pc","tv":"t", "dtm":"1", "aid":"a\"b","stm":"1700000000000"}"#
        );
        assert_eq!(
            write(r#"{"dtm": -1.5e3, "e": "pv", "f_pdf": true, "p": "pc", "tv": "t", "cd": 0}"#),
            r#"{"dtm": "-1.5e3", "e": "pv", "f_pdf": "true", "p": "pc", "tv": "t", "cd": "0","stm":"1700000000000"}"#
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
    fn a_producers_stm_is_ignored_wherever_it_stands_and_whatever_it_holds() {
        let strict_decodable = ParseOptions {
            allow_unknown_fields: false,
            require_decodable_strings: true,
        };
        // Twice, null, a number, a lone surrogate: never a duplicate, unknown or
        // undecodable field, never sent, never counted.
        let text = r#"{"stm":"1","e":"pv", "stm":null,"p":"pc","stm":2,"tv":"t","stm":"\ud800"}"#;
        let event =
            Element::parse(Bytes::copy_from_slice(text.as_bytes()), strict_decodable).unwrap();
        assert_eq!(event.get("stm"), None);
        let mut out = Vec::new();
        event.write_post_item(&mut out, "1700000000000");
        assert_eq!(out.len(), event.post_item_len());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"e":"pv","p":"pc","tv":"t","stm":"1700000000000"}"#
        );
        let query = get_query(&event, "1700000000000").unwrap();
        assert_eq!(query.matches("stm=").count(), 1, "{query}");
        // Only stm (or null) is an empty event, as `{}` is; errors elsewhere still count.
        assert_eq!(parse(r#"{"stm":"1"}"#).err(), Some(BadElement::Empty));
        assert_eq!(
            parse(r#"{"stm":"1","x":null}"#).err(),
            Some(BadElement::Empty)
        );
        assert_eq!(
            parse(r#"{"stm":"1","e":"pv","p":"pc"}"#).err(),
            Some(BadElement::MissingField("tv"))
        );
        assert_eq!(
            parse(r#"{"stm":"1","e":"pv","p":"pc","tv":"t","e":"se"}"#).err(),
            Some(BadElement::DuplicateField("e".into()))
        );
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
    fn form_encoding_finds_an_escape_at_every_offset_of_a_long_run() {
        // Runs of kept bytes are tested sixteen at a time: put the byte to escape at each
        // offset of such a chunk, and after it.
        for special in [" ", "/", "%", "~", "é", "+"] {
            for before in 0..40 {
                let text = format!("{}{special}{}", "a".repeat(before), "Z9-_.*".repeat(5));
                let mut ours = Vec::new();
                form_encode(&mut ours, text.as_bytes());
                let reference: String = form_urlencoded::byte_serialize(text.as_bytes()).collect();
                assert_eq!(String::from_utf8(ours).unwrap(), reference, "{text:?}");
            }
        }
    }

    #[test]
    fn the_scan_finds_a_special_byte_at_every_offset_of_a_block() {
        // Strings are scanned by 64-byte blocks classified sixteen bytes a step, the last
        // block padded: put a quote, an escape or a control character at each offset of
        // three blocks, and check the scan against serde_json.
        for special in [
            "\"", "\\n", "\\u00e9", "\\\\", "\u{1}", "\u{1f}", "\u{7f}", "é", "\\x",
        ] {
            for before in 0..200 {
                let value = format!("{}{special}{}", "a".repeat(before), "b".repeat(before % 17));
                let text = format!(r#"{{"e":"{value}","p":"pc","tv":"t"}}"#);
                let reference = serde_json::from_str::<serde_json::Value>(&text);
                match (parse(&text), reference) {
                    (Ok(element), Ok(reference)) => {
                        assert_eq!(
                            element.get("e").as_deref(),
                            reference["e"].as_str(),
                            "{text:?}"
                        )
                    }
                    (Err(_), Err(_)) => {}
                    (ours, reference) => panic!("{text:?}: {ours:?} but serde_json {reference:?}"),
                }
            }
        }
    }

    #[test]
    fn bad_elements_are_named() {
        /// Whether an error is the one expected.
        type Expected = fn(&BadElement) -> bool;
        let cases: &[(&str, Expected)] = &[
            ("not json", |e| matches!(e, BadElement::NotJson(_))),
            (r#"{"e":"pv""#, |e| matches!(e, BadElement::NotJson(_))),
            (r#"{"e":"pv","tv":"t","p":"pc"} trailing"#, |e| {
                matches!(e, BadElement::NotJson(_))
            }),
            ("[1,2]", |e| *e == BadElement::NotAnObject("an array")),
            (r#""text""#, |e| *e == BadElement::NotAnObject("a string")),
            ("42", |e| *e == BadElement::NotAnObject("a number")),
            ("null", |e| *e == BadElement::NotAnObject("null")),
            ("{}", |e| *e == BadElement::Empty),
            (r#"{"page":null}"#, |e| *e == BadElement::Empty),
            (r#"{"e":"pv","tv":"t","p":"pc","co":{"a":1}}"#, |e| {
                *e == BadElement::NestedValue("co".into(), "an object")
            }),
            (r#"{"e":"pv","tv":"t","p":"pc","co":[1]}"#, |e| {
                *e == BadElement::NestedValue("co".into(), "an array")
            }),
            (r#"{"e":"pv","tv":"t","p":"pc","foo":"x"}"#, |e| {
                *e == BadElement::UnknownField("foo".into())
            }),
            (r#"{"e":"pv","tv":"t","p":"pc","\u0065id":"x"}"#, |e| {
                *e == BadElement::EscapedFieldName
            }),
            (r#"{"e":"pv","tv":"t"}"#, |e| {
                *e == BadElement::MissingField("p")
            }),
            (r#"{"e":"pv","tv":"t","p":"pc","e":"se"}"#, |e| {
                *e == BadElement::DuplicateField("e".into())
            }),
        ];
        for (input, check) in cases {
            let err = parse(input).expect_err(input);
            assert!(check(&err), "{input}: got {err:?}");
            // The message names the field, or what was found instead of an object.
            let names = match &err {
                BadElement::NotJson(_) => "not valid JSON".to_owned(),
                BadElement::NotAnObject(found) => format!("found {found}"),
                BadElement::Empty => "no fields".to_owned(),
                BadElement::EscapedFieldName => "escape sequences".to_owned(),
                BadElement::NestedValue(field, _)
                | BadElement::UnknownField(field)
                | BadElement::DuplicateField(field) => format!("`{field}`"),
                BadElement::MissingField(field) => format!("`{field}`"),
                other => panic!("{input}: unexpected {other:?}"),
            };
            assert!(err.to_string().contains(&names), "{input}: {err}");
        }
        let invalid_utf8 = Element::parse(Bytes::from_static(b"{\"e\":\"\xff\"}"), STRICT);
        assert!(matches!(invalid_utf8, Err(BadElement::NotJson(_))));
    }

    /// A bad UTF-8 sequence at any offset of a string (where the scan reads sixteen-byte
    /// blocks, eight-byte words or the byte tail; with and without an escape before it) is
    /// refused as such, and good ones are accepted.
    #[test]
    fn invalid_utf8_anywhere_in_a_string_is_refused_and_valid_utf8_accepted() {
        for escape in ["", "\\n"] {
            for before in 0..40 {
                for after in 0..40 {
                    let (before, after) = ("a".repeat(before), "b".repeat(after));
                    let element = |middle: &[u8]| {
                        let mut bytes =
                            format!(r#"{{"e":"pv","p":"pc","tv":"t","url":"{escape}{before}"#)
                                .into_bytes();
                        bytes.extend_from_slice(middle);
                        bytes.extend_from_slice(format!(r#"{after}"}}"#).as_bytes());
                        Element::parse(Bytes::from(bytes), STRICT)
                    };
                    for bad in [&b"\xff"[..], b"\xc3", b"\xe2\x82", b"\xed\xa0\x80"] {
                        let refused = element(bad);
                        assert!(
                            matches!(&refused, Err(BadElement::NotJson(why)) if why.contains("utf-8")),
                            "{bad:x?} after {} bytes: {refused:?}",
                            before.len()
                        );
                    }
                    for good in ["é", "€", "😀"] {
                        assert!(element(good.as_bytes()).is_ok(), "{good} after {before}");
                    }
                }
            }
        }
    }

    #[test]
    fn packed_lookup_finds_exactly_the_payload_data_fields() {
        for (index, name) in PAYLOAD_DATA_FIELDS.iter().enumerate() {
            assert_eq!(payload_data_index(name.as_bytes()), Some(index), "{name}");
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
            assert_eq!(payload_data_index(other.as_bytes()), None, "{other:?}");
        }
        for (name, index) in REQUIRED_FIELDS.iter().zip(REQUIRED_INDICES) {
            assert_eq!(payload_data_index(name.as_bytes()), Some(index), "{name}");
        }
        // The one-load lookup of parsed names agrees, with eight bytes to read after the
        // name's start or fewer (a name at the end of the buffer).
        let others = [
            "",
            "E",
            "ee",
            "eid2",
            "f_gearsx",
            "a_very_long_field",
            "stm ",
            "tv_",
        ];
        for name in PAYLOAD_DATA_FIELDS.iter().chain(&others) {
            for tail in ["", "\"", "\":\"a long value\"}"] {
                let buffer = format!("{{\"{name}{tail}");
                let range = 2..2 + name.len();
                assert_eq!(
                    payload_data_index_of_parsed_name(buffer.as_bytes(), range),
                    payload_data_index(name.as_bytes()),
                    "{buffer:?}"
                );
            }
        }
        for missing in REQUIRED_FIELDS {
            let others: Vec<String> = REQUIRED_FIELDS
                .iter()
                .filter(|name| *name != missing)
                .map(|name| format!("\"{name}\":\"x\""))
                .collect();
            let element = format!("{{{}}}", others.join(","));
            let parsed = Element::parse(Bytes::from(element), STRICT);
            assert!(
                matches!(parsed, Err(BadElement::MissingField(name)) if name == *missing),
                "{missing}: {parsed:?}"
            );
        }
    }

    #[test]
    fn unknown_fields_pass_when_allowed() {
        let lenient = ParseOptions {
            allow_unknown_fields: true,
            require_decodable_strings: false,
        };
        let event = Element::parse(
            Bytes::from_static(br#"{"e":"pv","tv":"t","p":"pc","foo":"x"}"#),
            lenient,
        )
        .unwrap();
        assert_eq!(event.get("foo").as_deref(), Some("x"));
    }

    /// Written by offset into the room a `Vec` has left (when it holds the most an item
    /// can take) or piece by piece (when it may not): the same bytes, at the edge too.
    #[test]
    fn a_post_item_is_the_same_written_by_offset_or_piece_by_piece() {
        let crafted = [
            r#"{"e":"pv","p":"pc","tv":"t"}"#,
            r#"{"dtm": 1402358400000, "e": "pv", "url": null, "tid": 7, "p": "pc", "tv": "t", "cd": 24}"#,
            r#"{"e":"pv","se_va":-1.5e300,"p":"pc","stm":"1","tv":"t","vid":12345678901234567890}"#,
            r#"{ "url" : null , "e":"pv" ,"p":"pc","tv":true,"cx":"a\"b"}"#,
        ];
        let fixtures = [
            include_str!("../../tests/fixtures/python-tracker-0.15.0.jsonl"),
            include_str!("../../tests/fixtures/python-tracker-0.4.0-shape.jsonl"),
        ];
        let elements = crafted
            .into_iter()
            .chain(fixtures.iter().flat_map(|f| f.lines()));
        let stm = "1700000000000";
        for element in elements {
            let event = parse(element).unwrap_or_else(|e| panic!("{e}: {element}"));
            let mut piece_by_piece = Vec::new();
            event.write_post_item(&mut piece_by_piece, stm);
            assert_eq!(piece_by_piece.len(), event.post_item_len(), "{element}");
            let most = event.post_item_room(stm);
            for room in [most - 1, most, most + 1, most + 4096] {
                let mut out = Vec::with_capacity(2 + room);
                out.extend_from_slice(b"[,");
                event.write_post_item(&mut out, stm);
                assert_eq!(&out[..2], b"[,");
                assert_eq!(
                    String::from_utf8_lossy(&out[2..]),
                    String::from_utf8_lossy(&piece_by_piece),
                    "room {room} of {most}: {element}"
                );
            }
        }
    }

    #[test]
    fn one_run_and_field_by_field_write_the_same_item() {
        const STM: &str = "1700000000000";
        let many_fields = |n: usize| {
            let mut text = String::from(r#"{"e":"pv","p":"pc","tv":"t""#);
            for i in 0..n {
                text.push_str(&format!(r#","x{i}":{i}"#));
            }
            text + "}"
        };
        let crafted = [
            r#"{"e":"pv","p":"pc","tv":"t"}"#.to_owned(),
            r#"{"dtm":1402358400000,"e":"pv","tid":7,"p":"pc","tv":"t","cd":24}"#.to_owned(),
            r#"{ "e" : 1 , "p":"pc" ,"tv":true}"#.to_owned(),
            r#"{"e":"pv","p":"pc","tv":"t","cx":"a\"b","vid":-0.5e3}"#.to_owned(),
            many_fields(61),
            many_fields(62),
        ];
        let fixtures = [
            include_str!("../../tests/fixtures/python-tracker-0.15.0.jsonl"),
            include_str!("../../tests/fixtures/python-tracker-0.4.0-shape.jsonl"),
        ];
        let elements = crafted
            .iter()
            .map(String::as_str)
            .chain(fixtures.iter().flat_map(|f| f.lines()));
        let allowed = ParseOptions {
            allow_unknown_fields: true,
            ..STRICT
        };
        let mut one_runs = 0;
        for element in elements {
            let event = Element::parse(Bytes::copy_from_slice(element.as_bytes()), allowed)
                .unwrap_or_else(|e| panic!("{e}: {element}"));
            let mut general = event.clone();
            general.lay_out_field_by_field(false);
            assert_eq!(event.post_item_len(), general.post_item_len(), "{element}");
            let (mut fast, mut slow) = (Vec::new(), Vec::new());
            event.write_post_item(&mut fast, STM);
            general.write_post_item(&mut slow, STM);
            assert_eq!(
                String::from_utf8_lossy(&fast),
                String::from_utf8_lossy(&slow)
            );
            assert_eq!(fast.len(), event.post_item_len(), "{element}");
            if let PostItemShape::OneRun { .. } = event.shape {
                one_runs += 1;
            }
        }
        // Every crafted element but the one of 65 fields is one run, and so is every
        // fixture (none has a `null` or an `stm`).
        let fixture_count: usize = fixtures.iter().map(|f| f.lines().count()).sum();
        assert_eq!(one_runs, crafted.len() - 1 + fixture_count);
    }

    #[test]
    fn every_fixture_event_parses_and_keeps_every_field() {
        for file in [
            include_str!("../../tests/fixtures/python-tracker-0.15.0.jsonl"),
            include_str!("../../tests/fixtures/python-tracker-0.4.0-shape.jsonl"),
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
