//! The action id of a method without options: MurmurHash3 x86 32-bit (seed 0) of its full
//! name, as the runtime's `stmp::wire::action_id` computes it.

pub(crate) fn murmur3_x86_32(data: &[u8]) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let mix = |k: u32| k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    let mut hash = 0u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        hash ^= mix(k);
        hash = hash
            .rotate_left(13)
            .wrapping_mul(5)
            .wrapping_add(0xe654_6b64);
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let mut k = 0u32;
        for (i, byte) in tail.iter().enumerate() {
            k ^= u32::from(*byte) << (8 * i);
        }
        hash ^= mix(k);
    }
    hash ^= data.len() as u32;
    hash ^= hash >> 16;
    hash = hash.wrapping_mul(0x85eb_ca6b);
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(0xc2b2_ae35);
    hash ^ (hash >> 16)
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_the_reference() {
        assert_eq!(
            super::murmur3_x86_32(b"stmp.examples.quick_start.RoomService.JoinRoom"),
            0x033648F7
        );
        assert_eq!(super::murmur3_x86_32(b""), 0);
        assert_eq!(
            super::murmur3_x86_32(b"stmp.examples.quick_start.RoomEvents.UserExit"),
            0x827247A2
        );
    }
}
