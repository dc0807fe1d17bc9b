//! Byte-level pieces of the wire format that one element and a whole request share:
//! form-URL encoding of one value, and the length of the `stm` item every event gets.

use super::block;

/// Length of `,"stm":"1234567890123"` minus the leading comma accounted per field: the
/// send time is 13 digits of epoch milliseconds until the year 2286.
pub const STM_ITEM_BYTES: usize = r#""stm":"1234567890123""#.len();

/// Appends `text` form-URL-encoded, byte for byte as `form_urlencoded` does: letters,
/// digits and `*-._` as they are, space as `+`, every other byte as `%XX`. Sixteen bytes
/// are classified at once ([`block::escape_mask`]); the runs between the bytes to escape are
/// copied whole. (The generic encoder's iterators cost 8 % of a GET request, a push per
/// byte half of that.)
pub(super) fn form_encode(out: &mut Vec<u8>, text: &[u8]) {
    out.reserve(text.len() + text.len() / 2);
    let mut kept_from = 0;
    let mut at = 0;
    while let Some(chunk) = text.get(at..at + 16) {
        let mut escapes = block::escape_mask(chunk.try_into().expect("sixteen bytes"));
        while escapes != 0 {
            let escaped = at + escapes.trailing_zeros() as usize;
            out.extend_from_slice(&text[kept_from..escaped]);
            push_escaped(out, text[escaped]);
            kept_from = escaped + 1;
            escapes &= escapes - 1;
        }
        at += 16;
    }
    for (escaped, &byte) in text.iter().enumerate().skip(at) {
        if !KEPT_AS_IS[byte as usize] {
            out.extend_from_slice(&text[kept_from..escaped]);
            push_escaped(out, byte);
            kept_from = escaped + 1;
        }
    }
    out.extend_from_slice(&text[kept_from..]);
}

/// A byte that is not kept as it is: space as `+`, any other as `%XX`.
#[inline(always)]
fn push_escaped(out: &mut Vec<u8>, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    if byte == b' ' {
        out.push(b'+');
    } else {
        out.extend_from_slice(&[b'%', HEX[(byte >> 4) as usize], HEX[(byte & 15) as usize]]);
    }
}

/// The bytes [`form_encode`] writes as they are.
pub(super) static KEPT_AS_IS: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = matches!(byte as u8, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_');
        byte += 1;
    }
    table
};
