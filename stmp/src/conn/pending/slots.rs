//! Waiting calls by message id, each in the slot that the low bits of its id name.
//!
//! Why not a hash map: a connection numbers its calls in order, and a map that spreads
//! neighbouring ids (as `IdMap` does) put every call's entry on cache lines of its own. The
//! callers registering and the reader taking responses, on both workers, then passed a line
//! or two back and forth per call (the table's probe was a fifth of `Calls::register`'s
//! samples at 64 calls in flight). Here calls made one after another sit side by side.
//!
//! A response's id is chosen by the peer. It is looked up in one slot, so no choice of ids
//! makes a lookup long; a table with ids in order, probing, would scan the run of waiting
//! calls for an id that nobody waits for.

/// At least twice as many slots as entries (up to one slot per id), a power of two.
#[derive(Debug)]
pub(super) struct Slots<T> {
    slots: Vec<Option<(u16, T)>>,
    len: usize,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots {
            slots: Vec::new(),
            len: 0,
        }
    }
}

/// The fewest slots a table grows to.
const MIN_SLOTS: usize = 4;

/// One slot per id: the table grows no further.
const MAX_SLOTS: usize = 1 << 16;

/// An emptied table of more slots than this lets go of them; a smaller one keeps them for
/// the next calls, as a connection that calls at all calls again.
const KEEP_SLOTS: usize = 1024;

impl<T> Slots<T> {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    fn index(&self, id: u16) -> Option<usize> {
        (!self.slots.is_empty()).then(|| usize::from(id) & (self.slots.len() - 1))
    }

    /// Makes room for one more entry: after this, an id whose slot is free can be inserted.
    pub(super) fn reserve_one(&mut self) {
        let slots = self.slots.len();
        if (self.len + 1) * 2 <= slots || slots == MAX_SLOTS {
            return;
        }
        let grown = (slots * 2).clamp(MIN_SLOTS, MAX_SLOTS);
        let old = std::mem::replace(&mut self.slots, (0..grown).map(|_| None).collect());
        // Two entries in different slots differ in the low bits they were placed by, and so
        // in the more bits of the larger table: none lands on another.
        for (id, value) in old.into_iter().flatten() {
            let index = usize::from(id) & (grown - 1);
            self.slots[index] = Some((id, value));
        }
    }

    /// Whether `id`'s slot is free: not whether `id` is waiting, as another id may hold it.
    pub(super) fn is_free(&self, id: u16) -> bool {
        self.index(id)
            .is_none_or(|index| self.slots[index].is_none())
    }

    /// Puts `value` in `id`'s slot, which [`reserve_one`](Self::reserve_one) made sure
    /// exists and the caller checked is free.
    pub(super) fn insert(&mut self, id: u16, value: T) {
        let index = self
            .index(id)
            .expect("reserve_one comes before insert: the table has slots");
        debug_assert!(self.slots[index].is_none(), "the slot is free");
        self.slots[index] = Some((id, value));
        self.len += 1;
    }

    /// Takes the entry of `id`, if it is there.
    pub(super) fn remove(&mut self, id: u16) -> Option<T> {
        let index = self.index(id)?;
        let slot = &mut self.slots[index];
        if !matches!(slot, Some((held, _)) if *held == id) {
            return None;
        }
        let (_, value) = slot.take()?;
        self.len -= 1;
        self.let_go_if_empty();
        Some(value)
    }

    fn let_go_if_empty(&mut self) {
        if self.len == 0 && self.slots.len() > KEEP_SLOTS {
            self.slots = Vec::new();
        }
    }

    /// The entry of `id`, if it is there.
    pub(super) fn get_mut(&mut self, id: u16) -> Option<&mut T> {
        let index = self.index(id)?;
        match &mut self.slots[index] {
            Some((held, value)) if *held == id => Some(value),
            _ => None,
        }
    }

    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.slots.iter_mut().flatten().map(|(_, value)| value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert(slots: &mut Slots<u32>, id: u16) {
        slots.reserve_one();
        assert!(slots.is_free(id), "{id}'s slot is free");
        slots.insert(id, u32::from(id) * 10);
    }

    #[test]
    fn entries_are_found_by_their_id_only() {
        let mut slots = Slots::default();
        assert_eq!(slots.remove(7), None, "an empty table has nothing");
        for id in 1..=3 {
            insert(&mut slots, id);
        }
        assert_eq!(slots.len(), 3);
        // 3 + 8 shares 3's slot in a table of 8: it is not 3.
        assert_eq!(slots.slots.len(), 8);
        assert!(!slots.is_free(11));
        assert_eq!(slots.remove(11), None);
        assert_eq!(slots.remove(3), Some(30));
        assert_eq!(slots.remove(3), None, "taken once");
        assert!(slots.is_free(11));
        assert_eq!(slots.len(), 2);
    }

    #[test]
    fn growing_keeps_every_entry_findable() {
        let mut slots = Slots::default();
        // Ids far apart, through several growths; an id whose slot another holds is skipped,
        // as `Pending::register` skips it.
        let ids: Vec<u16> = (1..=300u16).map(|i| i.wrapping_mul(977)).collect();
        let mut placed = Vec::new();
        for &id in &ids {
            slots.reserve_one();
            if slots.is_free(id) {
                slots.insert(id, u32::from(id) * 10);
                placed.push(id);
            }
        }
        assert_eq!(slots.len(), placed.len());
        assert!(slots.slots.len() >= 2 * slots.len());
        for &id in &ids {
            let expected = placed.contains(&id).then_some(u32::from(id) * 10);
            assert_eq!(slots.remove(id), expected, "id {id}");
        }
        assert_eq!(slots.len(), 0);
    }

    #[test]
    fn a_full_range_of_ids_fits_with_one_slot_each() {
        let mut slots = Slots::default();
        for id in 1..=u16::MAX {
            insert(&mut slots, id);
        }
        assert_eq!(slots.slots.len(), MAX_SLOTS);
        assert_eq!(slots.len(), 65_535);
        assert_eq!(slots.remove(40_000), Some(400_000));
        // Emptied, a table that large lets go of its slots.
        for id in 1..=u16::MAX {
            slots.remove(id);
        }
        assert_eq!(slots.len(), 0);
        assert!(slots.slots.is_empty());
        for id in 1..=2000 {
            insert(&mut slots, id);
        }
        for id in 1..=2000 {
            slots.remove(id);
        }
        assert!(slots.slots.is_empty());
    }

    #[test]
    fn get_mut_finds_by_id_and_values_mut_sees_every_entry() {
        let mut slots = Slots::default();
        for id in 1..=10 {
            insert(&mut slots, id);
        }
        *slots.get_mut(4).unwrap() += 1;
        // 4 + 32 shares 4's slot in a table of 32: it is not 4.
        assert_eq!(slots.slots.len(), 32);
        assert_eq!(slots.get_mut(36), None);
        for value in slots.values_mut() {
            *value += 1000;
        }
        assert_eq!(slots.remove(4), Some(1041));
        let mut left: Vec<u32> = slots.values_mut().map(|value| *value).collect();
        left.sort_unstable();
        assert_eq!(left, [1010, 1020, 1030, 1050, 1060, 1070, 1080, 1090, 1100]);
        assert_eq!(slots.get_mut(4), None, "removed");
    }
}
