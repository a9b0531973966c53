//! What a handler or listener gets besides its message.

use std::sync::{Arc, Mutex};

use crate::Conn;
use crate::wire::{Action, Header};

/// The context of one incoming request or notify.
///
/// It is cheap to clone. Through [`conn`](Context::conn) a handler can send events back, call
/// the peer, or read what authentication attached to the connection.
#[derive(Clone, Debug)]
pub struct Context {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    conn: Conn,
    action: Action,
    method: Option<&'static str>,
    header: Header,
    response_header: Mutex<Header>,
}

impl Context {
    pub(crate) fn new(
        conn: Conn,
        action: Action,
        method: Option<&'static str>,
        header: Header,
    ) -> Self {
        Context {
            inner: Arc::new(Inner {
                conn,
                action,
                method,
                header,
                response_header: Mutex::new(Header::new()),
            }),
        }
    }

    /// The connection the packet came in on.
    pub fn conn(&self) -> &Conn {
        &self.inner.conn
    }

    /// The action as it was on the wire.
    pub fn action(&self) -> &Action {
        &self.inner.action
    }

    /// The full method name, when a handler or listener is registered for it.
    pub fn method(&self) -> Option<&'static str> {
        self.inner.method
    }

    /// The header the caller sent with this packet.
    pub fn header(&self) -> &Header {
        &self.inner.header
    }

    /// Adds an entry to the response's header (requests only).
    pub fn append_response_header(&self, key: impl Into<String>, value: impl Into<String>) {
        self.lock_response_header().append(key, value);
    }

    /// Sets an entry of the response's header, replacing its values.
    pub fn insert_response_header(&self, key: impl Into<String>, value: impl Into<String>) {
        self.lock_response_header().insert(key, value);
    }

    /// A copy of the response header as it is now.
    pub fn response_header(&self) -> Header {
        self.lock_response_header().clone()
    }

    pub(crate) fn take_response_header(&self) -> Header {
        std::mem::take(&mut *self.lock_response_header())
    }

    fn lock_response_header(&self) -> std::sync::MutexGuard<'_, Header> {
        crate::sync::lock(&self.inner.response_header)
    }
}

/// A connection's context from its last request or notify, kept for the next one. Most
/// handlers and listeners are done with theirs by the time the next packet is read, and
/// filling the same context in again saves what a new one costs every packet: an allocation,
/// its free (often on another thread), and a clone of the connection.
#[derive(Debug, Default)]
pub(crate) struct SpareContext(Option<Context>);

impl SpareContext {
    /// The context of a packet that came in on `conn`: the spare one if nothing else holds it
    /// any more, a new one otherwise.
    pub(crate) fn fill(
        &mut self,
        conn: &Conn,
        action: Action,
        method: Option<&'static str>,
        header: Header,
    ) -> Context {
        if let Some(mut ctx) = self.0.take()
            && let Some(inner) = Arc::get_mut(&mut ctx.inner)
        {
            inner.action = action;
            inner.method = method;
            inner.header = header;
            inner.response_header = Mutex::new(Header::new());
            return ctx;
        }
        Context::new(conn.clone(), action, method, header)
    }

    /// Keeps `ctx` for the next packet, unless a handler or listener still holds it.
    pub(crate) fn keep(&mut self, ctx: Context) {
        if Arc::strong_count(&ctx.inner) == 1 {
            self.0 = Some(ctx);
        }
    }

    /// Lets go of the spare context: the connection has gone quiet.
    pub(crate) fn clear(&mut self) {
        self.0 = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spare_context_is_filled_again_once_nothing_else_holds_it() {
        let (conn, _outbox) = Conn::new(crate::conn::tests::parts(1 << 20));
        let mut spare = SpareContext::default();
        let first = spare.fill(&conn, Action::Id(1), Some("a.B.C"), Header::new());
        first.append_response_header("k", "v");
        let address = Arc::as_ptr(&first.inner);
        spare.keep(first);

        let mut header = Header::new();
        header.append("x", "y");
        let second = spare.fill(&conn, Action::Id(2), None, header.clone());
        assert_eq!(Arc::as_ptr(&second.inner), address, "the same allocation");
        assert_eq!(second.action(), &Action::Id(2));
        assert_eq!(second.method(), None);
        assert_eq!(second.header(), &header);
        assert_eq!(second.response_header(), Header::new(), "nothing left over");

        // A handler that keeps its context gets it to itself: the next packet gets a new one.
        let held = second.clone();
        spare.keep(second);
        let third = spare.fill(&conn, Action::Id(3), None, Header::new());
        assert_ne!(Arc::as_ptr(&third.inner), address);
        assert_eq!(
            held.action(),
            &Action::Id(2),
            "the held context is untouched"
        );
        spare.keep(third);
        drop(held);

        spare.clear();
        let fourth = spare.fill(&conn, Action::Id(4), None, Header::new());
        assert_eq!(fourth.action(), &Action::Id(4));
    }
}
