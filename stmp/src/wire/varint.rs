//! Unsigned LEB128 varints, as Go's `binary.PutUvarint` and protobuf write them.

use bytes::BufMut;

/// The longest varint of a `u64`.
pub(crate) const MAX_LEN: usize = 10;

/// Appends `value` in one `put_slice`: a `BytesMut` checks its room and copies once per call,
/// which byte by byte cost a 5-byte action id about as much as the rest of its packet header.
pub(crate) fn put(dst: &mut impl BufMut, value: u64) {
    let mut bytes = [0; MAX_LEN];
    let len = write(&mut bytes, value);
    dst.put_slice(&bytes[..len]);
}

/// Writes `value` at the start of `dst` (which has room for [`encoded_len`] bytes); returns
/// how many bytes it took.
pub(crate) fn write(dst: &mut [u8], mut value: u64) -> usize {
    let mut len = 0;
    while value >= 0x80 {
        dst[len] = (value as u8) | 0x80;
        value >>= 7;
        len += 1;
    }
    dst[len] = value as u8;
    len + 1
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
    fn every_length_round_trips_and_is_written_at_once() {
        for bits in 0..64 {
            for value in [(1u64 << bits) - 1, 1u64 << bits, (1u64 << bits) + 1] {
                let mut bytes = [0xAA; MAX_LEN];
                let len = write(&mut bytes, value);
                assert_eq!(len, encoded_len(value), "{value:#x}");
                assert_eq!(get(&bytes[..len]), Ok((value, len)), "{value:#x}");
                let mut out = bytes::BytesMut::new();
                put(&mut out, value);
                assert_eq!(&out[..], &bytes[..len], "{value:#x}");
            }
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
