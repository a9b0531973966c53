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
