//! Byte-level pieces of the wire format that one element and a whole request share:
//! form-URL encoding of one value, and the length of the `stm` item every event gets.

/// Length of `,"stm":"1234567890123"` minus the leading comma accounted per field: the
/// send time is 13 digits of epoch milliseconds until the year 2286.
pub const STM_ITEM_BYTES: usize = r#""stm":"1234567890123""#.len();

/// Appends `text` form-URL-encoded, byte for byte as `form_urlencoded` does: letters,
/// digits and `*-._` as they are, space as `+`, every other byte as `%XX`. A table
/// lookup per byte; the generic encoder's iterators cost 8 % of a GET request.
pub(super) fn form_encode(out: &mut Vec<u8>, text: &[u8]) {
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
