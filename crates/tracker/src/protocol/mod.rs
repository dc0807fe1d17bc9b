//! The tracker protocol as it travels: the `payload_data` 1-0-4 field names, one list
//! element parsed without building a value tree ([`Element`]), its two wire encodings (a
//! GET query string, a POST `payload_data` item) and the size model that fills requests
//! by count and bytes ([`BatchBuilder`]), Iglu URIs and self-describing JSON ([`iglu`]).
//! The relay and the tracker's emitters share all of it: one scanner, one encoder, one
//! size model.

mod batch;
mod block;
mod element;
mod encode;
pub mod iglu;
mod wire;

pub use batch::{Batch, BatchBuilder, TooLargeForRequest};
pub use element::{BadElement, Element, ParseOptions};
pub use encode::{POST_BODY_OVERHEAD, get_query, write_post_body};
pub use wire::STM_ITEM_BYTES;

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

/// A perfect hash of [`PACKED_FIELDS`]: the top [`SLOT_BITS`] bits of a packed name times
/// this multiplier (found by a search over random odd multipliers; [`SLOTS`] fails to
/// compile if two field names share a slot). One multiplication and two loads instead of
/// the seven steps of a binary search, whose branches the processor cannot predict.
const SLOT_MULTIPLIER: u64 = 0x61ff_d26c_3d10_29cd;
const SLOT_BITS: u32 = 8;

/// For each hash slot, the index of the field whose packed name lands there; empty slots
/// hold 0, which only `PAYLOAD_DATA_FIELDS[0]` matches, and that name has a slot of its
/// own, so a lookup that lands on an empty slot finds nothing.
static SLOTS: [u8; 1 << SLOT_BITS] = {
    if PACKED_FIELDS.len() > u8::MAX as usize + 1 {
        panic!("a slot holds a field's index in one byte");
    }
    let mut slots = [0u8; 1 << SLOT_BITS];
    let mut filled = [false; 1 << SLOT_BITS];
    let mut i = 0;
    while i < PACKED_FIELDS.len() {
        let slot = slot_of(PACKED_FIELDS[i]);
        if filled[slot] {
            panic!("two payload_data names share a hash slot: search for another SLOT_MULTIPLIER");
        }
        filled[slot] = true;
        slots[slot] = i as u8;
        i += 1;
    }
    slots
};

#[inline(always)]
const fn slot_of(packed: u64) -> usize {
    (packed.wrapping_mul(SLOT_MULTIPLIER) >> (64 - SLOT_BITS)) as usize
}

/// The index of `name` in [`PAYLOAD_DATA_FIELDS`], if it is one: the reference the tests
/// hold [`payload_data_index_of_parsed_name`] to.
#[cfg(test)]
pub(crate) fn payload_data_index(name: &[u8]) -> Option<usize> {
    PACKED_FIELDS.binary_search(&pack(name)?).ok()
}

/// [`payload_data_index`] of the name at `bytes[name]`, a parsed JSON string's text, which
/// holds no zero byte (a raw control character is not valid JSON, and escaped names are
/// refused): when eight bytes can be read from its start, one load and a mask pack it
/// (the byte loop of [`pack`] was ~5 % of a POST event's instructions).
#[inline]
pub(crate) fn payload_data_index_of_parsed_name(
    bytes: &[u8],
    name: std::ops::Range<usize>,
) -> Option<usize> {
    let len = name.len();
    debug_assert!(
        !bytes[name.clone()].contains(&0),
        "parsed names hold no zero byte"
    );
    let packed = match bytes.get(name.start..name.start + 8) {
        Some(word) if (1..=8).contains(&len) => {
            let word = u64::from_be_bytes(word.try_into().expect("eight bytes"));
            // Keep the name's bytes (the high ones, big-endian), zero the rest.
            word & (u64::MAX << (8 * (8 - len)))
        }
        _ => pack(&bytes[name])?,
    };
    let index = SLOTS[slot_of(packed)] as usize;
    (PACKED_FIELDS[index] == packed).then_some(index)
}

/// The fields `payload_data` 1-0-4 requires in every event.
pub const REQUIRED_FIELDS: &[&str] = &["e", "p", "tv"];

/// The index in [`PAYLOAD_DATA_FIELDS`] of each [`REQUIRED_FIELDS`] entry, in the same
/// order: computed once, at compile time.
pub(crate) const REQUIRED_INDICES: [usize; REQUIRED_FIELDS.len()] = {
    let mut indices = [0; REQUIRED_FIELDS.len()];
    let mut r = 0;
    while r < REQUIRED_FIELDS.len() {
        indices[r] = index_of_known_field(REQUIRED_FIELDS[r]);
        r += 1;
    }
    indices
};

/// The index in [`PAYLOAD_DATA_FIELDS`] of `stm`, the send time, which the relay writes
/// afresh on every attempt (a producer's is left out).
pub(crate) const STM_INDEX: usize = index_of_known_field("stm");

/// The index of a `payload_data` field of at most 8 bytes, at compile time.
const fn index_of_known_field(name: &str) -> usize {
    let Some(wanted) = pack(name.as_bytes()) else {
        panic!("the field name is longer than 8 bytes");
    };
    let mut i = 0;
    while i < PACKED_FIELDS.len() && PACKED_FIELDS[i] != wanted {
        i += 1;
    }
    if i == PACKED_FIELDS.len() {
        panic!("the field is not a payload_data field");
    }
    i
}

/// The self-describing schema of a POST body.
pub const PAYLOAD_DATA_SCHEMA: &str =
    "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4";

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

/// POST bodies above 1 MiB are turned into bad rows by the collector (while it still
/// answers 200), so a POST body may not exceed this.
pub const MAX_POST_BYTES: usize = 1024 * 1024;

/// How events are sent to a collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum Method {
    /// `GET /i?…`, one event per request.
    Get,
    /// `POST /com.snowplowanalytics.snowplow/tp2` with a `payload_data` body of several.
    Post,
}

impl TryFrom<String> for Method {
    type Error = String;
    fn try_from(word: String) -> Result<Method, String> {
        word.parse()
    }
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(word: &str) -> Result<Method, String> {
        match word.to_ascii_lowercase().as_str() {
            "get" => Ok(Method::Get),
            "post" => Ok(Method::Post),
            _ => Err(format!("expected one of `get`, `post`, found `{word}`")),
        }
    }
}

/// The current time in epoch milliseconds.
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The current time in epoch milliseconds, as the tracker protocol writes it (`stm`, `dtm`).
pub fn epoch_millis() -> String {
    now_millis().to_string()
}
