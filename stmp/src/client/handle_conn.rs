//! A client handle's own reference to the live connection.
//!
//! Every call through a [`Client`](super::Client) needs the live connection for as long as it
//! waits. Cloned out of the client's shared state on each call, it cost a read lock of the
//! state and a turn of the connection's reference count: two cache lines that every task
//! calling through any clone of the client wrote on every call, from both workers. With 64
//! callers on one connection, `Client::conn` alone was 3 % of the load generator's samples.
//!
//! So each handle keeps the connection behind an `Arc` of its own, taken from the shared state
//! at its first call and again once that connection has closed. Only the tasks calling through
//! that handle write its lines.

use std::sync::{Arc, RwLock};

use crate::Conn;
use crate::sync::{read, write};

/// The connection a client handle last called through. A clone of the handle starts empty.
///
/// Behind a read-write lock: tasks that share one handle (by reference, or in an `Arc`) read
/// it side by side, as they read the client's shared state before.
#[derive(Debug, Default)]
pub(super) struct HandleConn {
    seen: RwLock<Option<Arc<Conn>>>,
}

impl HandleConn {
    /// The connection this handle last saw, while it is open; otherwise `live()`'s, kept for
    /// the next call. `None` when there is no live connection.
    ///
    /// A closed connection is let go of here, at the handle's next call, or with the handle.
    pub(super) fn get(&self, live: impl FnOnce() -> Option<Conn>) -> Option<Arc<Conn>> {
        let open =
            |seen: &Option<Arc<Conn>>| seen.as_ref().filter(|conn| !conn.is_closed()).cloned();
        if let Some(conn) = open(&read(&self.seen)) {
            return Some(conn);
        }
        let mut seen = write(&self.seen);
        // Another task through this handle may have taken the live connection meanwhile.
        if let Some(conn) = open(&seen) {
            return Some(conn);
        }
        *seen = live().map(Arc::new);
        seen.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Status;
    use crate::conn::tests::parts;

    fn conn() -> Conn {
        Conn::new(parts(1024)).0
    }

    /// A handle that called through a connection which has closed since; returns it.
    fn called_through_a_closed_one(handle: &HandleConn) -> Conn {
        let first = conn();
        handle.get(|| Some(first.clone())).unwrap();
        first.mark_closed(&Status::network_error("gone"));
        first
    }

    #[test]
    fn an_open_connection_is_kept_without_asking_again() {
        let handle = HandleConn::default();
        let first = conn();
        let got = handle.get(|| Some(first.clone())).unwrap();
        assert!(got.same(&first));
        let again = handle
            .get(|| panic!("asked for the live connection while the kept one is open"))
            .unwrap();
        assert!(Arc::ptr_eq(&got, &again), "the handle's own Arc is shared");
    }

    #[test]
    fn a_closed_connection_is_replaced_by_the_live_one() {
        let handle = HandleConn::default();
        let first = called_through_a_closed_one(&handle);
        let second = conn();
        let got = handle.get(|| Some(second.clone())).unwrap();
        assert!(got.same(&second));
        assert!(!got.same(&first));
    }

    #[test]
    fn without_a_live_connection_the_closed_one_is_let_go_of() {
        let handle = HandleConn::default();
        called_through_a_closed_one(&handle);
        assert!(handle.get(|| None).is_none());
        assert!(read(&handle.seen).is_none());
    }
}
