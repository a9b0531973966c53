//! A side's drain signal: once raised, every connection answers new requests with
//! `ServerShutdown`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Raised once, when the server starts shutting down; clones share it. Every request reads
/// it, on every connection at once, so it is one flag that stays in each core's cache rather
/// than a lock.
#[derive(Clone, Debug, Default)]
pub(crate) struct Drain(Arc<AtomicBool>);

impl Drain {
    /// Raises the signal, for good.
    pub(crate) fn start(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether the signal was raised.
    pub(crate) fn is_draining(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_clone_sees_the_signal_once_raised() {
        let drain = Drain::default();
        let seen_by_a_conn = drain.clone();
        assert!(!seen_by_a_conn.is_draining());
        drain.start();
        assert!(seen_by_a_conn.is_draining() && drain.is_draining());
    }
}
