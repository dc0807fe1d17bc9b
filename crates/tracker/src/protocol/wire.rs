//! Byte-level pieces of the wire format that one element and a whole request share:
//! form-URL encoding of one value, and the length of the `stm` item every event gets.

/// Length of `,"stm":"1234567890123"` minus the leading comma accounted per field: the
/// send time is 13 digits of epoch milliseconds until the year 2286.
pub const STM_ITEM_BYTES: usize = r#""stm":"1234567890123""#.len();

/// Appends `text` form-URL-encoded, byte for byte as `form_urlencoded` does: letters,
/// digits and `*-._` as they are, space as `+`, every other byte as `%XX`. Sixteen bytes
/// are classified at once ([`escape_mask`]); the runs between the bytes to escape are
/// copied whole. (The generic encoder's iterators cost 8 % of a GET request, a push per
/// byte half of that.)
pub(super) fn form_encode(out: &mut Vec<u8>, text: &[u8]) {
    out.reserve(text.len() + text.len() / 2);
    let mut kept_from = 0;
    let mut at = 0;
    while let Some(chunk) = text.get(at..at + 16) {
        let mut escapes = escape_mask(chunk.try_into().expect("sixteen bytes"));
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

/// One bit per byte of `chunk` that [`form_encode`] escapes: range checks of sixteen
/// bytes at once and their mask.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn escape_mask(chunk: &[u8; 16]) -> u32 {
    use std::arch::x86_64::{
        __m128i, _mm_add_epi8, _mm_cmpeq_epi8, _mm_cmpgt_epi8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set_epi64x, _mm_set1_epi8,
    };
    let low = i64::from_le_bytes(chunk[..8].try_into().expect("eight bytes"));
    let high = i64::from_le_bytes(chunk[8..].try_into().expect("eight bytes"));
    // SAFETY: these intrinsics need SSE2 and touch no memory; SSE2 is part of every
    // x86_64 target.
    unsafe {
        let bytes = _mm_set_epi64x(high, low);
        // `lo..=hi` as one signed comparison: shifted so that `lo` becomes -128, a byte
        // is in the range when the shifted value is at most -128 + (hi - lo).
        let within = |bytes: __m128i, lo: u8, hi: u8| -> __m128i {
            let shifted = _mm_add_epi8(bytes, _mm_set1_epi8(0x80u8.wrapping_sub(lo) as i8));
            let limit = _mm_set1_epi8(0x80u8.wrapping_add(hi - lo) as i8);
            _mm_or_si128(
                _mm_cmpgt_epi8(limit, shifted),
                _mm_cmpeq_epi8(limit, shifted),
            )
        };
        // Letters: upper case folded into lower case by setting bit 5 (only letters land
        // in a..=z that way).
        let letter = within(_mm_or_si128(bytes, _mm_set1_epi8(0x20)), b'a', b'z');
        let is = |byte: u8| _mm_cmpeq_epi8(bytes, _mm_set1_epi8(byte as i8));
        let kept = _mm_or_si128(
            _mm_or_si128(letter, within(bytes, b'0', b'9')),
            _mm_or_si128(
                _mm_or_si128(is(b'*'), is(b'-')),
                _mm_or_si128(is(b'.'), is(b'_')),
            ),
        );
        !(_mm_movemask_epi8(kept) as u32) & 0xFFFF
    }
}

/// One bit per byte of `chunk` that [`form_encode`] escapes.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn escape_mask(chunk: &[u8; 16]) -> u32 {
    let mut mask = 0;
    for (i, &byte) in chunk.iter().enumerate() {
        mask |= u32::from(!KEPT_AS_IS[byte as usize]) << i;
    }
    mask
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_escape_mask_marks_exactly_the_bytes_to_escape() {
        for background in [b'a', b'Z', b'0', b'%', 0x7f, 0x80, 0xff] {
            for at in 0..16 {
                for byte in 0..=255u8 {
                    let mut chunk = [background; 16];
                    chunk[at] = byte;
                    let expected = (0..16)
                        .filter(|&i| !KEPT_AS_IS[chunk[i] as usize])
                        .fold(0, |mask, i| mask | 1 << i);
                    assert_eq!(
                        escape_mask(&chunk),
                        expected,
                        "{byte:#04x} at {at} among {background:#04x}"
                    );
                }
            }
        }
    }
}
