//! A byte budget that many connections share for the large packets they are still receiving.
//!
//! Each connection may hold one partial packet of up to the packet size limit; a server with
//! many connections would grow without bound if every one did at once. Packets above a small
//! allowance charge the shared budget as soon as their size is announced, before their bytes
//! are buffered, and give it back when they are complete or the connection ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The bytes of partially received packets a server holds at once.
#[derive(Debug)]
pub(crate) struct BufferBudget {
    limit: usize,
    used: AtomicUsize,
}

impl BufferBudget {
    pub(crate) fn new(limit: usize) -> Arc<BufferBudget> {
        Arc::new(BufferBudget {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// The bytes charged now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn try_take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// What one packet has charged to a [`BufferBudget`]; given back when dropped.
#[derive(Debug)]
pub(crate) struct Charge {
    budget: Arc<BufferBudget>,
    bytes: usize,
}

impl Charge {
    /// A charge of nothing yet.
    pub(crate) fn new(budget: Arc<BufferBudget>) -> Charge {
        Charge { budget, bytes: 0 }
    }

    /// Raises the charge to `bytes` in all; `false`, with the charge unchanged, when the
    /// budget cannot afford it.
    pub(crate) fn raise_to(&mut self, bytes: usize) -> bool {
        if bytes <= self.bytes {
            return true;
        }
        if !self.budget.try_take(bytes - self.bytes) {
            return false;
        }
        self.bytes = bytes;
        true
    }

    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Holds `needed` bytes of a partial packet against `budget`, if there is one, in `charge`:
/// a peer that announces a large packet waits for room rather than making the server hold it.
pub(crate) fn hold(
    charge: &mut Option<Charge>,
    budget: Option<&Arc<BufferBudget>>,
    needed: usize,
) -> Result<(), crate::Status> {
    let Some(budget) = budget else {
        return Ok(());
    };
    if charge
        .get_or_insert_with(|| Charge::new(budget.clone()))
        .raise_to(needed)
    {
        return Ok(());
    }
    Err(crate::Status::too_many_requests(format!(
        "the server is busy receiving large packets ({} of {} bytes in use); a packet of \
         {needed} bytes does not fit now",
        budget.used(),
        budget.limit()
    )))
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_up_to_the_limit_and_gives_back_on_drop() {
        let budget = BufferBudget::new(100);
        let mut first = Charge::new(budget.clone());
        assert!(first.raise_to(60));
        assert!(first.raise_to(40), "a lower size keeps the charge");
        assert_eq!((first.bytes(), budget.used()), (60, 60));

        let mut second = Charge::new(budget.clone());
        assert!(!second.raise_to(41), "41 more would make 101");
        assert_eq!((second.bytes(), budget.used()), (0, 60));
        assert!(second.raise_to(40));
        assert_eq!(budget.used(), 100);

        drop(first);
        assert_eq!(budget.used(), 40);
        assert!(second.raise_to(100));
        drop(second);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn raising_charges_only_the_difference() {
        let budget = BufferBudget::new(10);
        let mut charge = Charge::new(budget.clone());
        assert!(charge.raise_to(4));
        assert!(charge.raise_to(10));
        assert_eq!(budget.used(), 10);
        assert!(!charge.raise_to(11));
        assert_eq!(charge.bytes(), 10);
    }

    #[test]
    fn huge_requests_do_not_overflow() {
        let budget = BufferBudget::new(usize::MAX);
        let mut a = Charge::new(budget.clone());
        let mut b = Charge::new(budget.clone());
        assert!(a.raise_to(usize::MAX - 1));
        assert!(!b.raise_to(2));
        assert!(b.raise_to(1));
        assert_eq!(budget.used(), usize::MAX);
    }
}
