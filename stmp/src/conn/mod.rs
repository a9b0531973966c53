//! Connections: the handle users hold ([`Conn`]) and the engine that runs each one.
//!
//! One engine serves every transport and both sides; a transport only supplies a stream of
//! decoded packets and a writer ([`io`]).

mod call;
mod engine;
mod extensions;
pub(crate) mod io;
mod pending;

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use call::{CallOptions, Caller};
pub(crate) use engine::{Engine, EngineConfig};
use extensions::Extensions;
pub use io::PacketFormat;
use pending::Pending;

use crate::codec::{Codec, Message};
use crate::wire::{Action, Header, Notify, Packet, Request, Response};
use crate::{Code, Method, Status};

/// Which end of a connection this side is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The side that accepted the connection.
    Server,
    /// The side that opened it.
    Client,
}

/// A handle to one live connection: call the peer, send it events, close it, read what the
/// handshake and authentication left on it. Cheap to clone; all clones are the same
/// connection.
#[derive(Clone)]
pub struct Conn {
    shared: Arc<Shared>,
}

struct Shared {
    id: u64,
    side: Side,
    remote_addr: Option<SocketAddr>,
    transport: &'static str,
    peer_header: Header,
    codec: Codec,
    outbox: mpsc::Sender<Packet>,
    pending: Mutex<Pending>,
    extensions: Extensions,
    default_timeout: Duration,
    close_requested: CancellationToken,
    requested_status: OnceLock<Status>,
    closed: CancellationToken,
    close_status: OnceLock<Status>,
    on_close: Mutex<Vec<CloseCallback>>,
}

type CloseCallback = Box<dyn FnOnce(&Status) + Send>;

/// What a new connection is made of.
pub(crate) struct ConnParts {
    pub(crate) side: Side,
    pub(crate) remote_addr: Option<SocketAddr>,
    pub(crate) transport: &'static str,
    pub(crate) peer_header: Header,
    pub(crate) codec: Codec,
    pub(crate) default_timeout: Duration,
    pub(crate) queue: usize,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while these locks are held; a poisoned one is still consistent.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Conn {
    pub(crate) fn new(parts: ConnParts) -> (Conn, mpsc::Receiver<Packet>) {
        let (outbox, rx) = mpsc::channel(parts.queue.max(1));
        let conn = Conn {
            shared: Arc::new(Shared {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                side: parts.side,
                remote_addr: parts.remote_addr,
                transport: parts.transport,
                peer_header: parts.peer_header,
                codec: parts.codec,
                outbox,
                pending: Mutex::new(Pending::default()),
                extensions: Extensions::default(),
                default_timeout: parts.default_timeout,
                close_requested: CancellationToken::new(),
                requested_status: OnceLock::new(),
                closed: CancellationToken::new(),
                close_status: OnceLock::new(),
                on_close: Mutex::new(Vec::new()),
            }),
        };
        (conn, rx)
    }

    /// A number that identifies the connection within this process.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// Whether this side accepted or opened the connection.
    pub fn side(&self) -> Side {
        self.shared.side
    }

    /// The peer's address, when the transport has one.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.shared.remote_addr
    }

    /// The header of the peer's handshake: the client's (`Accept`, auth tokens…) on a server,
    /// the server's (`Content-Type`…) on a client.
    pub fn peer_header(&self) -> &Header {
        &self.shared.peer_header
    }

    /// The negotiated content codec.
    pub fn codec(&self) -> &Codec {
        &self.shared.codec
    }

    /// Attaches a value of type `T` (the authenticated user, say), replacing the one it had.
    pub fn insert_extension<T: Clone + Send + Sync + 'static>(&self, value: T) {
        self.shared.extensions.insert(value);
    }

    /// A copy of the value of type `T` attached to the connection.
    pub fn extension<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.shared.extensions.get()
    }

    /// Removes the value of type `T`; returns it.
    pub fn remove_extension<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.shared.extensions.remove()
    }

    /// Calls `method` on the peer and waits for its answer, up to the default deadline.
    pub async fn call<I: Message, O: Message>(
        &self,
        method: &Method,
        input: &I,
    ) -> Result<O, Status> {
        self.call_with(method, input, CallOptions::default()).await
    }

    /// Calls `method` with options: a deadline, a header.
    pub async fn call_with<I: Message, O: Message>(
        &self,
        method: &Method,
        input: &I,
        options: CallOptions,
    ) -> Result<O, Status> {
        let payload = self.codec().encode(input)?;
        let response = self
            .request_raw(
                method.wire_action(),
                options.header,
                payload,
                options.timeout,
            )
            .await?;
        self.codec().decode(&response.payload)
    }

    /// Sends a notify (an event, or a call that wants no answer).
    pub async fn notify<I: Message>(&self, method: &Method, input: &I) -> Result<(), Status> {
        let payload = self.codec().encode(input)?;
        self.notify_raw(method.wire_action(), Header::new(), payload)
            .await
    }

    /// Sends a request of encoded bytes and waits for its response; a non-Ok response is
    /// returned as the error. Dropping the future forgets the call.
    pub async fn request_raw(
        &self,
        action: Action,
        header: Header,
        payload: Bytes,
        timeout: Option<Duration>,
    ) -> Result<Response, Status> {
        let (mid, rx) = lock(&self.shared.pending).register()?;
        let _forget = ForgetOnDrop {
            shared: &self.shared,
            mid,
        };
        let deadline = timeout.unwrap_or(self.shared.default_timeout);
        let exchange = async {
            self.send(Packet::Request(Request {
                mid,
                action,
                header,
                payload,
            }))
            .await?;
            rx.await.map_err(|_| closed_error())?
        };
        let response = tokio::time::timeout(deadline, exchange)
            .await
            .map_err(|_| Status::request_timeout(format!("no response within {deadline:?}")))??;
        match response.status {
            Code::Ok => Ok(response),
            code => Err(Status::new(
                code,
                String::from_utf8_lossy(&response.payload).into_owned(),
            )),
        }
    }

    /// Sends a notify of encoded bytes.
    pub async fn notify_raw(
        &self,
        action: Action,
        header: Header,
        payload: Bytes,
    ) -> Result<(), Status> {
        self.send(Packet::Notify(Notify {
            action,
            header,
            payload,
        }))
        .await
    }

    /// Packets waiting in the send queue.
    fn queued(&self) -> usize {
        self.shared.outbox.max_capacity() - self.shared.outbox.capacity()
    }

    /// Queues a packet, waiting while the queue is full.
    pub(crate) async fn send(&self, packet: Packet) -> Result<(), Status> {
        self.shared
            .outbox
            .send(packet)
            .await
            .map(|()| crate::telemetry::send_queue_depth(self.queued()))
            .map_err(|_| closed_error())
    }

    /// Queues a packet unless the queue is full (slow peer) or the connection is gone.
    pub(crate) fn try_send(&self, packet: Packet) -> Result<(), Status> {
        self.shared
            .outbox
            .try_send(packet)
            .map(|()| crate::telemetry::send_queue_depth(self.queued()))
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => {
                    Status::too_many_requests("the connection's send queue is full")
                }
                mpsc::error::TrySendError::Closed(_) => closed_error(),
            })
    }

    /// Closes the connection: sends Close with `code` and `reason`, waits briefly for the
    /// peer's Close, then ends. Pending calls end with `NetworkError`.
    pub fn close(&self, code: Code, reason: impl Into<String>) {
        let _ = self
            .shared
            .requested_status
            .set(Status::new(code, reason.into()));
        self.shared.close_requested.cancel();
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.is_cancelled()
    }

    /// Waits until the connection has ended; returns why (the Close status, or the network
    /// error).
    pub async fn closed(&self) -> Status {
        self.shared.closed.cancelled().await;
        self.close_status().unwrap_or_else(closed_error)
    }

    /// Why the connection ended, once it has.
    pub fn close_status(&self) -> Option<Status> {
        self.shared.close_status.get().cloned()
    }

    /// Runs `callback` with the close status when the connection ends (at once if it has).
    pub fn on_close(&self, callback: impl FnOnce(&Status) + Send + 'static) {
        let mut callbacks = lock(&self.shared.on_close);
        match self.shared.close_status.get() {
            Some(status) if self.is_closed() => {
                drop(callbacks);
                callback(status);
            }
            _ => callbacks.push(Box::new(callback)),
        }
    }

    /// The number of calls waiting for a response.
    pub fn pending_calls(&self) -> usize {
        lock(&self.shared.pending).len()
    }

    /// Records the end of the connection, fails its pending calls and runs its close
    /// callbacks (once). The engine calls it when a connection ends; the server calls it for a
    /// connection refused or broken before its engine ran, so what authentication attached
    /// to it is still cleaned up.
    pub(crate) fn mark_closed(&self, status: &Status) {
        let _ = self.shared.close_status.set(status.clone());
        lock(&self.shared.pending).close(Status::network_error(format!(
            "connection closed: {status}"
        )));
        self.shared.closed.cancel();
        let callbacks = std::mem::take(&mut *lock(&self.shared.on_close));
        for callback in callbacks {
            callback(status);
        }
    }

    /// The transport the connection runs on: `tcp`, `tls`, `ws`, `wss` or `quic`.
    pub fn transport(&self) -> &'static str {
        self.shared.transport
    }

    pub(crate) fn same(&self, other: &Conn) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

fn closed_error() -> Status {
    Status::network_error("connection closed")
}

struct ForgetOnDrop<'a> {
    shared: &'a Shared,
    mid: u16,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        lock(&self.shared.pending).forget(self.mid);
    }
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("id", &self.shared.id)
            .field("side", &self.shared.side)
            .field("remote_addr", &self.shared.remote_addr)
            .field("transport", &self.shared.transport)
            .field("codec", &self.shared.codec)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Conn {
    fn eq(&self, other: &Conn) -> bool {
        self.same(other)
    }
}

impl Eq for Conn {}

impl std::hash::Hash for Conn {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.shared.id.hash(state);
    }
}
