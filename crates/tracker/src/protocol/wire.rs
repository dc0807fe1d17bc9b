//! Byte-level pieces of the wire format that one element and a whole request share:
//! form-URL encoding of one value, and the length of the `stm` item every event gets.

/// Length of `,"stm":"1234567890123"` minus the leading comma accounted per field: the
/// send time is 13 digits of epoch milliseconds until the year 2286.
pub const STM_ITEM_BYTES: usize = r#""stm":"1234567890123""#.len();

/// Appends `text` form-URL-encoded, byte for byte as `form_urlencoded` does: letters,
/// digits and `*-._` as they are, space as `+`, every other byte as `%XX`. Runs of bytes
/// that stay as they are are copied at once; the generic encoder's iterators cost 8 % of
/// a GET request, a push per byte half of that.
pub(super) fn form_encode(out: &mut Vec<u8>, text: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.reserve(text.len() + text.len() / 2);
    let mut kept_from = 0;
    let mut at = 0;
    while at < text.len() {
        // Sixteen kept bytes at once (base64 values are long runs of them) ...
        if let Some(chunk) = text.get(at..at + 16)
            && all_kept(chunk.try_into().expect("sixteen bytes"))
        {
            at += 16;
            continue;
        }
        // ... else the next sixteen one by one, escaping where needed.
        let end = text.len().min(at + 16);
        while at < end {
            let byte = text[at];
            if !KEPT_AS_IS[byte as usize] {
                out.extend_from_slice(&text[kept_from..at]);
                if byte == b' ' {
                    out.push(b'+');
                } else {
                    out.extend_from_slice(&[
                        b'%',
                        HEX[(byte >> 4) as usize],
                        HEX[(byte & 15) as usize],
                    ]);
                }
                kept_from = at + 1;
            }
            at += 1;
        }
    }
    out.extend_from_slice(&text[kept_from..]);
}

/// Whether every byte of `chunk` is kept as it is: comparisons without branches, which the
/// compiler turns into a few vector instructions for sixteen bytes.
#[inline(always)]
fn all_kept(chunk: &[u8; 16]) -> bool {
    chunk.iter().fold(true, |all, &byte| {
        all & (byte.is_ascii_alphanumeric()
            | (byte == b'*')
            | (byte == b'-')
            | (byte == b'.')
            | (byte == b'_'))
    })
}

/// The bytes [`form_encode`] writes as they are.
static KEPT_AS_IS: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = matches!(byte as u8, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_');
        byte += 1;
    }
    table
};
