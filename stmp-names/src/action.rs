//! From a full method name to its numeric action id.

/// The numeric action of a method that sets neither `(stmp.service)` nor `(stmp.method)`:
/// MurmurHash3 x86 32-bit, seed 0, of its full name `package.Service.Method`.
///
/// It is a `const fn`, so generated code computes ids at compile time.
///
/// ```
/// use stmp_names::action_id;
///
/// assert_eq!(action_id("stmp.examples.quick_start.RoomService.JoinRoom"), 0x033648F7);
/// const EXIT: u64 = action_id("stmp.examples.quick_start.RoomService.ExitRoom");
/// assert_eq!(EXIT, 0xA7FFD932);
/// ```
pub const fn action_id(full_method_name: &str) -> u64 {
    murmur3_x86_32(full_method_name.as_bytes(), 0) as u64
}

/// The numeric action of a method whose proto sets both `(stmp.service)` and `(stmp.method)`:
/// `service << 8 | method`.
///
/// ```
/// assert_eq!(stmp_names::option_action_id(0x12, 0x03), 0x1203);
/// ```
pub const fn option_action_id(service_id: u64, method_id: u8) -> u64 {
    (service_id << 8) | method_id as u64
}

/// MurmurHash3, x86 32-bit variant.
///
/// ```
/// assert_eq!(stmp_names::murmur3_x86_32(b"Hello, world!", 0x9747_b28c), 0x2488_4CBA);
/// ```
pub const fn murmur3_x86_32(data: &[u8], seed: u32) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    const fn mix(k: u32) -> u32 {
        k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2)
    }
    let mut hash = seed;
    let blocks = data.len() / 4;
    let mut i = 0;
    while i < blocks {
        let k = u32::from_le_bytes([
            data[4 * i],
            data[4 * i + 1],
            data[4 * i + 2],
            data[4 * i + 3],
        ]);
        hash ^= mix(k);
        hash = hash
            .rotate_left(13)
            .wrapping_mul(5)
            .wrapping_add(0xe654_6b64);
        i += 1;
    }
    let tail = blocks * 4;
    let mut k = 0u32;
    let rest = data.len() - tail;
    if rest >= 3 {
        k ^= (data[tail + 2] as u32) << 16;
    }
    if rest >= 2 {
        k ^= (data[tail + 1] as u32) << 8;
    }
    if rest >= 1 {
        k ^= data[tail] as u32;
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
    use super::*;
    use alloc::format;

    #[test]
    fn quick_start_ids_match_stmp_go() {
        let prefix = "stmp.examples.quick_start.";
        for (method, id) in [
            ("RoomService.JoinRoom", 0x033648F7),
            ("RoomService.ExitRoom", 0xA7FFD932),
            ("RoomEvents.UserJoin", 0x999B2807),
            ("RoomEvents.UserExit", 0x827247A2),
        ] {
            assert_eq!(action_id(&format!("{prefix}{method}")), id, "{method}");
        }
    }

    #[test]
    fn murmur3_reference_values() {
        // Published test values of MurmurHash3_x86_32, covering every tail length.
        assert_eq!(murmur3_x86_32(b"", 0), 0);
        assert_eq!(murmur3_x86_32(b"", 1), 0x514E_28B7);
        assert_eq!(murmur3_x86_32(b"a", 0x9747_b28c), 0x7FA0_9EA6);
        assert_eq!(murmur3_x86_32(b"aa", 0x9747_b28c), 0x5D21_1726);
        assert_eq!(murmur3_x86_32(b"aaa", 0x9747_b28c), 0x283E_0130);
        assert_eq!(murmur3_x86_32(b"aaaa", 0x9747_b28c), 0x5A97_808A);
        assert_eq!(murmur3_x86_32(b"Hello, world!", 0x9747_b28c), 0x2488_4CBA);
    }
}
