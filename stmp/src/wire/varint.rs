//! Unsigned LEB128 varints, as Go's `binary.PutUvarint` and protobuf write them.

use bytes::BufMut;

/// The longest varint of a `u64`.
pub(crate) const MAX_LEN: usize = 10;

pub(crate) fn put(dst: &mut impl BufMut, mut value: u64) {
    while value >= 0x80 {
        dst.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    dst.put_u8(value as u8);
}

pub(crate) const fn encoded_len(value: u64) -> usize {
    // Each 7 significant bits take one byte; zero still takes one.
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Why a varint could not be read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum VarintError {
    /// The input ended inside the varint.
    Incomplete,
    /// More than 64 bits.
    Overflow,
}

/// Reads a varint from the start of `src`: its value and how many bytes it took.
pub(crate) fn get(src: &[u8]) -> Result<(u64, usize), VarintError> {
    let mut value = 0u64;
    for (index, &byte) in src.iter().take(MAX_LEN).enumerate() {
        if index == MAX_LEN - 1 && byte > 1 {
            return Err(VarintError::Overflow);
        }
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte < 0x80 {
            return Ok((value, index + 1));
        }
    }
    if src.len() >= MAX_LEN {
        Err(VarintError::Overflow)
    } else {
        Err(VarintError::Incomplete)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_go_vectors() {
        for (value, wire) in [
            (0u64, &[0x00][..]),
            (0x1b, &[0x1b]),
            (0x033648F7, &[0xf7, 0x91, 0xd9, 0x19]),
            (0xA7FFD932, &[0xb2, 0xb2, 0xff, 0xbf, 0x0a]),
            (300021, &[0xf5, 0xa7, 0x12]),
        ] {
            let mut out = Vec::new();
            put(&mut out, value);
            assert_eq!(out, wire, "{value:#x}");
            assert_eq!(encoded_len(value), wire.len());
            assert_eq!(get(wire), Ok((value, wire.len())));
        }
    }

    #[test]
    fn extremes_and_errors() {
        let mut out = Vec::new();
        put(&mut out, u64::MAX);
        assert_eq!(out.len(), MAX_LEN);
        assert_eq!(encoded_len(u64::MAX), MAX_LEN);
        assert_eq!(get(&out), Ok((u64::MAX, MAX_LEN)));
        assert_eq!(get(&[0x80, 0x80]), Err(VarintError::Incomplete));
        assert_eq!(get(&[]), Err(VarintError::Incomplete));
        assert_eq!(get(&[0xff; 9]), Err(VarintError::Incomplete));
        assert_eq!(get(&[0xff; 10]), Err(VarintError::Overflow));
        let mut too_big = vec![0xff; 9];
        too_big.push(0x02);
        assert_eq!(get(&too_big), Err(VarintError::Overflow));
    }
}
