//! Sixteen bytes classified at once: the masks the element scan walks (the bytes that end
//! a plain run inside a JSON string) and form encoding walks (the bytes it escapes). Bit
//! `i` of a mask stands for byte `i` of the block. SSE2 compares on x86_64, where SSE2 is
//! always present (the element scan puts four together for a 64-byte block); elsewhere
//! both use a byte loop. The protocol code's only `unsafe` is here.

/// One bit per byte of `block` that ends a plain run inside a JSON string: `"`, `\` and
/// control characters (below 0x20).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn special_mask(block: &[u8; 16]) -> u32 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8, _mm_setzero_si128,
        _mm_subs_epu8,
    };
    let bytes = sse2::load(block);
    // SAFETY: these intrinsics need SSE2 and touch no memory; SSE2 is part of every
    // x86_64 target.
    unsafe {
        let quote = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'\\' as i8));
        // Below 0x20: nothing is left after subtracting 0x1F without going below zero.
        let control = _mm_cmpeq_epi8(
            _mm_subs_epu8(bytes, _mm_set1_epi8(0x1F)),
            _mm_setzero_si128(),
        );
        _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control)) as u32
    }
}

/// One bit per byte of `block` that form encoding escapes: all but letters, digits and
/// `*-._` (see `wire::KEPT_AS_IS`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn escape_mask(block: &[u8; 16]) -> u32 {
    use std::arch::x86_64::{
        __m128i, _mm_add_epi8, _mm_cmpeq_epi8, _mm_cmpgt_epi8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    let bytes = sse2::load(block);
    // SAFETY: these intrinsics need SSE2 and touch no memory; SSE2 is part of every
    // x86_64 target.
    unsafe {
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

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::{__m128i, _mm_set_epi64x};

    /// The block in one SSE2 register, byte `i` in lane `i`.
    #[inline(always)]
    pub(super) fn load(block: &[u8; 16]) -> __m128i {
        let low = i64::from_le_bytes(block[..8].try_into().expect("eight bytes"));
        let high = i64::from_le_bytes(block[8..].try_into().expect("eight bytes"));
        // SAFETY: needs SSE2 and touches no memory; SSE2 is part of every x86_64 target.
        unsafe { _mm_set_epi64x(high, low) }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
pub(super) fn escape_mask(block: &[u8; 16]) -> u32 {
    let mut mask = 0;
    for (i, &byte) in block.iter().enumerate() {
        mask |= u32::from(!super::wire::KEPT_AS_IS[byte as usize]) << i;
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte value at every offset of a block of each background: the mask has
    /// exactly the bits `marked` gives.
    fn check(mask: fn(&[u8; 16]) -> u32, marked: impl Fn(u8) -> bool, backgrounds: &[u8]) {
        for &background in backgrounds {
            for at in 0..16 {
                for byte in 0..=255u8 {
                    let mut block = [background; 16];
                    block[at] = byte;
                    let expected = (0..16)
                        .filter(|&i| marked(block[i]))
                        .fold(0, |mask, i| mask | 1 << i);
                    assert_eq!(
                        mask(&block),
                        expected,
                        "{byte:#04x} at {at} among {background:#04x}"
                    );
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_special_mask_marks_exactly_quotes_backslashes_and_control_characters() {
        let special = |byte: u8| byte == b'"' || byte == b'\\' || byte < 0x20;
        check(
            special_mask,
            special,
            &[b'a', b' ', 0x1f, 0x7f, 0x80, 0xc3, 0xff],
        );
    }

    #[test]
    fn the_escape_mask_marks_exactly_the_bytes_to_escape() {
        let escaped = |byte: u8| !super::super::wire::KEPT_AS_IS[byte as usize];
        check(
            escape_mask,
            escaped,
            &[b'a', b'Z', b'0', b'%', 0x7f, 0x80, 0xff],
        );
    }
}
