//! Bytes classified at once: the masks the element scan walks (the bytes that end a plain
//! run inside a JSON string, 64 bytes at a time) and form encoding walks (the bytes it
//! escapes, sixteen at a time). Bit `i` of a mask stands for byte `i` of the block. On
//! x86_64, SSE2 compares (always present there), and AVX2 for the scan's 64-byte blocks
//! where the CPU has it (checked once per element, see [`Classifier`]); elsewhere a byte
//! loop. The protocol code's `unsafe` is here, but for the POST item writer of element.rs
//! (`ItemWriter`: the length of a `Vec` set once, after writing into its spare room).

/// One bit per byte of `block` that ends a plain run inside a JSON string: `"`, `\` and
/// control characters (below 0x20). The same rule in 32-byte steps is
/// `avx2::special_mask_32`; the tests below hold both to one byte-by-byte rule.
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

/// Classifies 64-byte blocks the way this CPU does best: two AVX2 steps where the CPU has
/// AVX2 (almost every x86_64 server since 2013), else four SSE2 steps. Made once per
/// element, so that each block costs a test of a flag, not std's feature check.
#[derive(Clone, Copy)]
pub(super) struct Classifier {
    #[cfg(target_arch = "x86_64")]
    avx2: bool,
}

impl Classifier {
    #[inline(always)]
    pub(super) fn new() -> Classifier {
        Classifier {
            #[cfg(target_arch = "x86_64")]
            avx2: std::arch::is_x86_feature_detected!("avx2"),
        }
    }

    /// The special bytes (see [`special_mask`]) of the 64 bytes of `bytes` from `from`
    /// (at most `bytes.len()`); bytes past the end count as special, so a scan stops
    /// there.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(super) fn special_mask_at(self, bytes: &[u8], from: usize) -> u64 {
        if self.avx2 {
            // SAFETY: `avx2` is set only where the CPU has AVX2.
            unsafe { avx2::special_mask_at(bytes, from) }
        } else {
            special_mask_at_sse2(bytes, from)
        }
    }

    /// The special bytes of the 64 bytes of `bytes` from `from`, by a byte loop.
    #[cfg(not(target_arch = "x86_64"))]
    pub(super) fn special_mask_at(self, bytes: &[u8], from: usize) -> u64 {
        special_mask_at_with(bytes, from, special_mask_64)
    }
}

/// [`Classifier::special_mask_at`] by SSE2 (out of line: the AVX2 way is the one to keep
/// short).
#[cfg(target_arch = "x86_64")]
#[inline(never)]
fn special_mask_at_sse2(bytes: &[u8], from: usize) -> u64 {
    special_mask_at_with(bytes, from, special_mask_64_sse2)
}

/// [`Classifier::special_mask_at`] with `mask` for 64 bytes. A block that would run past
/// the end is the element's last 64 bytes, shifted (no copy); only an element shorter
/// than a block is copied into one, padded with quotes.
#[inline(always)]
fn special_mask_at_with(bytes: &[u8], from: usize, mask: impl Fn(&[u8; 64]) -> u64) -> u64 {
    if let Some(block) = bytes.get(from..from + 64) {
        return mask(block.try_into().expect("64 bytes"));
    }
    let len = bytes.len();
    let from = from.min(len);
    if let Some(last_start) = len.checked_sub(64) {
        // 1 to 64: `from` lies past `last_start`, or the first branch was taken.
        let shift = (from - last_start) as u32;
        let last = mask(bytes[last_start..].try_into().expect("64 bytes"));
        return last.checked_shr(shift).unwrap_or(0)
            | u64::MAX.checked_shl(64 - shift).unwrap_or(0);
    }
    padded_mask(&bytes[from..], mask)
}

/// `mask` of `rest` (under 64 bytes) padded with quotes: out of line, so that the common
/// ways have no block of their own on the stack.
#[cold]
#[inline(never)]
fn padded_mask(rest: &[u8], mask: impl Fn(&[u8; 64]) -> u64) -> u64 {
    let mut padded = [b'"'; 64];
    padded[..rest.len()].copy_from_slice(rest);
    mask(&padded)
}

/// [`special_mask`] of 64 bytes, sixteen at a time.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn special_mask_64_sse2(block: &[u8; 64]) -> u64 {
    let quarter = |i: usize| -> u64 {
        let sixteen = block[16 * i..16 * i + 16]
            .try_into()
            .expect("sixteen bytes");
        u64::from(special_mask(sixteen)) << (16 * i)
    };
    quarter(0) | quarter(1) | quarter(2) | quarter(3)
}

/// One bit per byte of `block` that ends a plain run inside a JSON string, by a byte loop.
#[cfg(not(target_arch = "x86_64"))]
fn special_mask_64(block: &[u8; 64]) -> u64 {
    block.iter().enumerate().fold(0, |mask, (i, &byte)| {
        mask | u64::from(byte == b'"' || byte == b'\\' || byte < 0x20) << i
    })
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m256i, _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_movemask_epi8, _mm256_or_si256,
        _mm256_set1_epi8, _mm256_setzero_si256, _mm256_subs_epu8,
    };

    /// [`super::Classifier::special_mask_at`], with the classification inlined.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn special_mask_at(bytes: &[u8], from: usize) -> u64 {
        // SAFETY: this function runs only where the CPU has AVX2.
        super::special_mask_at_with(bytes, from, |block| unsafe { special_mask_64(block) })
    }

    /// [`super::special_mask`] of 64 bytes, 32 at a time.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    #[inline]
    pub(super) unsafe fn special_mask_64(block: &[u8; 64]) -> u64 {
        let pointer = block.as_ptr().cast::<__m256i>();
        // SAFETY: both loads read 32 bytes inside `block` (unaligned loads).
        let (low, high) = unsafe {
            (
                _mm256_loadu_si256(pointer),
                _mm256_loadu_si256(pointer.add(1)),
            )
        };
        u64::from(special_mask_32(low)) | u64::from(special_mask_32(high)) << 32
    }

    /// [`super::special_mask`]'s rule (quote, backslash, below 0x20) for 32 bytes.
    #[target_feature(enable = "avx2")]
    fn special_mask_32(bytes: __m256i) -> u32 {
        let quote = _mm256_cmpeq_epi8(bytes, _mm256_set1_epi8(b'"' as i8));
        let backslash = _mm256_cmpeq_epi8(bytes, _mm256_set1_epi8(b'\\' as i8));
        // Below 0x20: nothing is left after subtracting 0x1F without going below zero.
        let control = _mm256_cmpeq_epi8(
            _mm256_subs_epu8(bytes, _mm256_set1_epi8(0x1F)),
            _mm256_setzero_si256(),
        );
        _mm256_movemask_epi8(_mm256_or_si256(_mm256_or_si256(quote, backslash), control)) as u32
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
    fn check<const N: usize, M: Into<u64>>(
        mask: impl Fn(&[u8; N]) -> M,
        marked: impl Fn(u8) -> bool,
        backgrounds: &[u8],
    ) {
        for &background in backgrounds {
            for at in 0..N {
                for byte in 0..=255u8 {
                    let mut block = [background; N];
                    block[at] = byte;
                    let expected = (0..N)
                        .filter(|&i| marked(block[i]))
                        .fold(0u64, |mask, i| mask | 1 << i);
                    assert_eq!(
                        mask(&block).into(),
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

    /// The 64-byte mask the element scan uses, by whichever way this CPU takes, and by
    /// each way this CPU can take.
    #[test]
    fn the_64_byte_special_mask_marks_exactly_quotes_backslashes_and_control_characters() {
        let special = |byte: u8| byte == b'"' || byte == b'\\' || byte < 0x20;
        let backgrounds = [b'a', b' ', 0x1f, 0x7f, 0x80, 0xc3, 0xff];
        #[cfg(not(target_arch = "x86_64"))]
        check(special_mask_64, special, &backgrounds);
        #[cfg(target_arch = "x86_64")]
        {
            check(special_mask_64_sse2, special, &backgrounds);
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2, checked just above.
                check(
                    |block| unsafe { avx2::special_mask_64(block) },
                    special,
                    &backgrounds,
                );
            } else {
                eprintln!("no AVX2 on this CPU: its 64-byte mask is not checked here");
            }
        }
    }

    /// From every offset of elements of every length up to three blocks and a bit: the
    /// bits of the special bytes from there, and every bit past the end (a whole block,
    /// the last block of a longer element shifted, a short element padded).
    #[test]
    fn the_mask_at_an_offset_marks_the_special_bytes_from_there_and_every_byte_past_the_end() {
        let special = |byte: u8| byte == b'"' || byte == b'\\' || byte < 0x20;
        for len in 0..=200usize {
            let bytes: Vec<u8> = (0..len)
                .map(|i| match (i * 7919) % 23 {
                    0 => b'"',
                    1 => b'\\',
                    2 => 0x01,
                    3 => 0xc3,
                    n => b'a' + n as u8,
                })
                .collect();
            for from in 0..=len {
                let expected = (0..64)
                    .filter(|&i| bytes.get(from + i).is_none_or(|&byte| special(byte)))
                    .fold(0u64, |mask, i| mask | 1 << i);
                assert_eq!(
                    Classifier::new().special_mask_at(&bytes, from),
                    expected,
                    "from {from} of {len}"
                );
                #[cfg(target_arch = "x86_64")]
                assert_eq!(
                    special_mask_at_with(&bytes, from, special_mask_64_sse2),
                    expected,
                    "SSE2, from {from} of {len}"
                );
            }
        }
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
