//! Maps keyed by integer ids: a method's action. (Calls waiting by message id have a table of
//! their own, `conn/pending/slots.rs`.)
//!
//! These maps are looked up on every packet, and the default hasher (SipHash, keyed against
//! flooding) costs more than the rest of the lookup. Their keys are never chosen by a peer:
//! actions are inserted only by the application's own routes; a peer's ids are only looked
//! up. A peer therefore cannot crowd one bucket, and a multiplicative mix that spreads
//! neighbouring ids is enough.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A map from an integer id to `V`.
pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Hashes one integer by a multiplication with an odd constant (Fibonacci hashing), which
/// moves the entropy of small and sequential ids into the high bits the table probes with.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only integer keys use this hasher; a byte slice is folded in all the same.
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u16(&mut self, id: u16) {
        self.write_u64(u64::from(id));
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = (self.0.rotate_left(5) ^ id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn neighbouring_ids_differ_in_the_top_bits_the_table_probes_with() {
        let build = BuildHasherDefault::<IdHasher>::default();
        let tops: std::collections::HashSet<u64> =
            (1u16..=128).map(|id| build.hash_one(id) >> 57).collect();
        // 128 ids over 128 possible 7-bit tags: most tags are taken, none by all of them.
        assert!(tops.len() > 64, "only {} distinct tags", tops.len());
    }

    #[test]
    fn it_is_a_map() {
        let mut map = IdMap::default();
        for id in 0u64..1000 {
            map.insert(id * 0x1_0000_0001, id);
        }
        assert!((0u64..1000).all(|id| map[&(id * 0x1_0000_0001)] == id));
        assert_eq!(map.get(&3), None);
    }
}
