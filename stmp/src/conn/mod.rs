//! Connections: the handle users hold ([`Conn`]) and the engine that runs each one.
//!
//! One engine serves every transport and both sides; a transport only supplies a stream of
//! decoded packets and a writer ([`io`]).

mod budget;
mod call;
mod close_request;
mod deferred;
mod drain;
mod engine;
mod extensions;
pub(crate) mod io;
mod outbox;
mod pending;
mod state;
mod writer;
mod writer_task;

use std::fmt;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

pub(crate) use budget::InFlight;
use budget::queue_cost;
use call::CallInFlight;
pub use call::{CallOptions, Caller};
use close_request::CloseRequest;
pub(crate) use deferred::{DeferredWrites, EventRef};
pub(crate) use drain::Drain;
pub(crate) use engine::{Engine, EngineConfig, Host};
use extensions::Extensions;
pub use io::PacketFormat;
pub(crate) use pending::Answers;
use pending::Calls;

use crate::broadcast::SlowConsumer;
use crate::codec::{Codec, Message};
use crate::stats::Counters;
use crate::sync::lock;
use crate::transport::Scheme;
use crate::wire::{Action, Header, Notify, Packet, Response};
use crate::{Code, Method, Status};

/// A connection's send queue, the writer task's end.
pub(crate) type Outbox = outbox::Outbox<Shared>;
pub(crate) use outbox::Refused;
use outbox::{HoldsSendQueue, Offered, SendQueue};
use writer::{Inline, WriterSlot};

/// The default byte budget of a connection's send queue.
pub(crate) const DEFAULT_SEND_QUEUE_BYTES: usize = 4 << 20;

/// At most this many held packets go out in one inline write ([`Conn::write_held`]), as many
/// as the writer task takes for one of its own.
const HELD_PER_WRITE: usize = 64;

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

/// `repr(C)`, in this order: first what a broadcast touches of each of its thousands of
/// connections (`id`, `send_budget`, `codec`, the send queue's state in `outbox`, `writer`),
/// then what the read loop polls per packet (`close_requested`), so that each touches few
/// cache lines: a broadcast touched five lines per connection when the budget sat at the far
/// end, and the send queue had an allocation of its own.
#[repr(C)]
pub(crate) struct Shared {
    id: u64,
    send_budget: u32,
    /// Set with `closed`: read on every call of a client, and the token's own check takes a
    /// lock that the callers of all threads would share.
    is_closed: AtomicBool,
    codec: Codec,
    /// Bounded in bytes ([`queue_cost`]); the writer gives back the room of what it wrote.
    outbox: SendQueue,
    /// The transport's writer, for senders that write inline.
    writer: WriterSlot,
    close_requested: CloseRequest,
    slow_consumer: SlowConsumer,
    events_dropped: AtomicU64,
    side: Side,
    remote_addr: Option<SocketAddr>,
    scheme: Scheme,
    peer_header: Header,
    counters: Arc<Counters>,
    pending: Calls,
    extensions: Extensions,
    default_timeout: Duration,
    /// Boxed, as `close_status` is: most connections never set it, and a status is 48 B.
    requested_status: OnceLock<Box<Status>>,
    closed: CancellationToken,
    /// Set once, when the connection ends; boxed so that it takes one word until then.
    close_status: OnceLock<Box<Status>>,
    on_close: Mutex<Vec<CloseCallback>>,
}

impl HoldsSendQueue for Shared {
    fn send_queue(&self) -> &SendQueue {
        &self.outbox
    }
}

type CloseCallback = Box<dyn FnOnce(&Status) + Send>;

/// What a new connection is made of.
pub(crate) struct ConnParts {
    pub(crate) side: Side,
    pub(crate) remote_addr: Option<SocketAddr>,
    pub(crate) scheme: Scheme,
    pub(crate) peer_header: Header,
    pub(crate) codec: Codec,
    pub(crate) default_timeout: Duration,
    /// Byte budget of the send queue.
    pub(crate) send_queue_bytes: usize,
    pub(crate) slow_consumer: SlowConsumer,
    pub(crate) counters: Arc<Counters>,
}

/// What became of an event offered with [`Conn::offer_event_to_write`].
pub(crate) enum EventOffer {
    /// Queued for the connection's writer task.
    Queued,
    /// Handed back: the broadcast's [`DeferredWrites`] write it.
    HandedBack,
    /// Not sent: the send queue was full (the slow-consumer policy applies) or the
    /// connection has ended.
    Dropped,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Conn {
    pub(crate) fn new(parts: ConnParts) -> (Conn, Outbox) {
        let send_budget = u32::try_from(parts.send_queue_bytes)
            .unwrap_or(u32::MAX)
            .max(1);
        let conn = Conn {
            shared: Arc::new(Shared {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                side: parts.side,
                remote_addr: parts.remote_addr,
                scheme: parts.scheme,
                peer_header: parts.peer_header,
                codec: parts.codec,
                outbox: SendQueue::new(send_budget as usize, parts.scheme),
                writer: WriterSlot::default(),
                send_budget,
                slow_consumer: parts.slow_consumer,
                events_dropped: AtomicU64::new(0),
                counters: parts.counters,
                pending: Calls::new(),
                extensions: Extensions::default(),
                default_timeout: parts.default_timeout,
                close_requested: CloseRequest::default(),
                requested_status: OnceLock::new(),
                closed: CancellationToken::new(),
                is_closed: AtomicBool::new(false),
                close_status: OnceLock::new(),
                on_close: Mutex::new(Vec::new()),
            }),
        };
        let outbox = Outbox::new(conn.shared.clone());
        (conn, outbox)
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
    /// the server's (`Content-Type`…) on a client. Over WebSocket the client's is the upgrade
    /// request's query and HTTP headers (`Host`, `Origin`, `Cookie`…), except those that only
    /// drive the upgrade (`Connection`, `Upgrade`, `Sec-WebSocket-Key`, `-Version`,
    /// `-Extensions`).
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
        self.codec().decode_payload(response.payload)
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
        let timeout = timeout.unwrap_or(self.shared.default_timeout);
        let response = CallInFlight::new(self, action, header, payload, timeout).await?;
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

    /// Queues a packet, waiting while the send queue has no room for its bytes.
    pub(crate) async fn send(&self, packet: Packet) -> Result<(), Status> {
        let cost = self.queue_cost(&packet);
        match self.shared.outbox.push(packet, cost, false).await {
            Ok(_) => Ok(()),
            Err(_) => Err(closed_error()),
        }
    }

    /// [`send_inline_then`](Self::send_inline_then) with nothing to do once the room is paid.
    #[cfg(test)]
    pub(crate) async fn send_inline(&self, packet: Packet) -> Result<(), Status> {
        self.send_inline_then(packet, || {}).await
    }

    /// Like [`send`](Self::send), but when the writer waits with nothing queued the packet is
    /// written at once, on this task, without waking the writer's. Calls `paid` once the
    /// packet's room is paid and before it can be written: a handler gives its slot back there,
    /// so that a peer that sends its next request as soon as it reads this answer finds the
    /// slot free.
    pub(crate) async fn send_inline_then(
        &self,
        packet: Packet,
        paid: impl FnOnce(),
    ) -> Result<(), Status> {
        let cost = self.queue_cost(&packet);
        let offered = self.shared.outbox.push(packet, cost, true).await;
        paid();
        match offered {
            Ok(offered) => {
                self.write_if_handed_back(offered, cost);
                Ok(())
            }
            Err(_) => Err(closed_error()),
        }
    }

    /// Queues this side's Close (written inline when the writer waits) and closes the send
    /// queue behind it: nothing follows a Close on the wire, so the answers of handlers still
    /// running, events and calls are refused from here on.
    pub(crate) fn send_close(&self, close: Packet) {
        let _ = self.try_queue_inline(close);
        self.shared.outbox.close();
    }

    /// Like [`try_queue`](Self::try_queue), writing inline as
    /// [`send_inline_then`](Self::send_inline_then) does.
    pub(crate) fn try_queue_inline(&self, packet: Packet) -> Result<(), Refused> {
        let cost = self.queue_cost(&packet);
        let (offered, queued) = self.shared.outbox.try_offer(packet, cost)?;
        crate::telemetry::send_queue_depth(queued);
        self.write_if_handed_back(offered, cost);
        Ok(())
    }

    /// Writes a packet (whose room is paid) the queue handed back for an inline write.
    fn write_if_handed_back(&self, offered: Offered, cost: usize) {
        let Offered::WriteInline(packet) = offered else {
            return;
        };
        self.write_handed_back([packet], cost);
    }

    /// Writes packets the queue handed back (with `room` their send-queue room), and ends
    /// the inline write: the writer task finishes what the transport did not take, or writes
    /// them all when this cannot write inline.
    fn write_handed_back<B>(&self, batch: B, room: usize)
    where
        B: AsRef<[Packet]> + Into<Vec<Packet>>,
    {
        let outbox = &self.shared.outbox;
        match self.shared.writer.write_now(batch.as_ref(), room) {
            Inline::Written => outbox.end_inline_written(room),
            Inline::Unfinished => outbox.end_inline_unfinished(),
            Inline::Declined => outbox.end_inline_unwritten(batch.into(), room),
        }
    }

    /// Like [`try_queue`](Self::try_queue), but the packet waits for
    /// [`write_held`](Self::write_held) (or for the writer to wake for something else).
    pub(crate) fn try_queue_held(&self, packet: Packet) -> Result<(), Refused> {
        let cost = self.queue_cost(&packet);
        let queued = self.shared.outbox.try_hold(packet, cost)?;
        crate::telemetry::send_queue_depth(queued);
        Ok(())
    }

    /// Writes the held packets from this task, in one write, when the writer task waits;
    /// otherwise wakes it for them.
    pub(crate) fn write_held(&self) {
        // Gathered in a vector of their own, not in one the connection keeps: a burst's room
        // (about 90 bytes a packet) would stay with every connection that ever got a burst.
        let mut batch = Vec::new();
        let room = self.shared.outbox.release_held(&mut batch, HELD_PER_WRITE);
        if !batch.is_empty() {
            self.write_handed_back(batch, room);
        }
    }

    /// Queues a packet unless the send queue has no room for it or the connection is gone.
    pub(crate) fn try_queue(&self, packet: Packet) -> Result<(), Refused> {
        let cost = self.queue_cost(&packet);
        let queued = self.shared.outbox.try_push(packet, cost)?;
        crate::telemetry::send_queue_depth(queued);
        Ok(())
    }

    /// Queues a packet unless the send queue is full (slow peer) or the connection is gone.
    #[cfg(test)]
    pub(crate) fn try_send(&self, packet: Packet) -> Result<(), Status> {
        self.try_queue(packet).map_err(|refused| match refused {
            Refused::Full(_) => Status::too_many_requests("the connection's send queue is full"),
            Refused::Closed => closed_error(),
        })
    }

    /// Hands a burst of responses to the calls waiting for them; returns how many calls took
    /// theirs (a response nobody waits for is dropped).
    pub(crate) fn complete_calls(&self, answers: &mut Answers) -> usize {
        let outbox = &self.shared.outbox;
        self.shared
            .pending
            .complete(answers, |callers| outbox.expect_callers(callers))
    }

    /// Ends the calls due at `now`; returns when the next one is due.
    pub(crate) fn expire_calls(&self, now: std::time::Instant) -> Option<std::time::Instant> {
        let outbox = &self.shared.outbox;
        self.shared
            .pending
            .expire(now, |callers| outbox.expect_callers(callers))
    }

    /// Fails the calls still waiting, and every later one, because the connection ended with
    /// `status`.
    pub(crate) fn fail_calls(&self, status: &Status) {
        let outbox = &self.shared.outbox;
        self.shared.pending.close(
            Status::network_error(format!("connection closed: {status}")),
            |callers| outbox.expect_callers(callers),
        );
    }

    /// Gives back `bytes` of send-queue room.
    pub(crate) fn release_send_bytes(&self, bytes: usize) {
        self.shared.outbox.release(bytes);
    }

    /// Gives back the send-queue room of packets the writer has written.
    #[cfg(test)]
    pub(crate) fn release_send_room(&self, packets: &[Packet]) {
        let room = packets.iter().map(|p| self.queue_cost(p)).sum();
        self.shared.outbox.release(room);
    }

    /// What `packet` costs in this connection's send queue.
    fn queue_cost(&self, packet: &Packet) -> usize {
        queue_cost(packet, self.shared.send_budget as usize)
    }

    /// Queues an event unless the send queue is full, and applies the slow-consumer policy
    /// when it is. Returns whether the event was queued.
    pub(crate) fn offer_event(&self, packet: Packet) -> bool {
        match self.try_queue(packet) {
            Ok(()) => true,
            Err(refused) => {
                self.event_refused(refused);
                false
            }
        }
    }

    /// Like [`offer_event`](Self::offer_event), for one of a broadcast's events (`event`
    /// of `writes`), but when the writer waits with nothing queued the event is handed back
    /// to `writes`, which write it without waking the writer's task.
    pub(crate) fn offer_event_to_write(
        &self,
        event: EventRef,
        writes: &mut DeferredWrites,
    ) -> EventOffer {
        let Some(packet) = writes.packet(event) else {
            debug_assert!(false, "the event is one of the broadcast's");
            return EventOffer::Dropped;
        };
        let cost = self.queue_cost(packet);
        let handed_back = match self.shared.outbox.try_offer_event(packet, cost) {
            Ok((offered, queued)) => {
                crate::telemetry::send_queue_depth(queued);
                matches!(offered, Offered::WriteInline(_))
            }
            Err(refused) => {
                self.event_refused(refused);
                return EventOffer::Dropped;
            }
        };
        if !handed_back {
            return EventOffer::Queued;
        }
        writes.push(self.clone(), event, cost);
        EventOffer::HandedBack
    }

    /// An event the send queue refused: one refused for lack of room counts against the
    /// slow-consumer policy.
    fn event_refused<P>(&self, refused: Refused<P>) {
        if let Refused::Full(_) = refused {
            self.event_dropped();
        }
    }

    fn event_dropped(&self) {
        let shared = &self.shared;
        let dropped = shared.events_dropped.fetch_add(1, Ordering::Relaxed) + 1;
        Counters::count(&shared.counters.events_dropped);
        if let SlowConsumer::Disconnect { max_dropped } = shared.slow_consumer
            && dropped == max_dropped.max(1)
        {
            Counters::count(&shared.counters.slow_consumers_closed);
            crate::telemetry::slow_consumer_disconnected();
            tracing::info!(conn = self.id(), dropped, "closing a slow consumer");
            self.close(
                Code::TooManyRequests,
                format!(
                    "slow consumer: {dropped} events dropped because the send queue ({} bytes) was full",
                    shared.send_budget
                ),
            );
        }
    }

    /// Events dropped because this connection's send queue was full.
    pub fn events_dropped(&self) -> u64 {
        self.shared.events_dropped.load(Ordering::Relaxed)
    }

    pub(crate) fn counters(&self) -> &Arc<Counters> {
        &self.shared.counters
    }

    /// Closes the connection: sends Close with `code` and `reason`, waits briefly for the
    /// peer's Close, then ends. Pending calls end with `NetworkError`.
    pub fn close(&self, code: Code, reason: impl Into<String>) {
        let _ = self
            .shared
            .requested_status
            .set(Box::new(Status::new(code, reason.into())));
        self.shared.close_requested.request();
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed.load(Ordering::Acquire)
    }

    /// Waits until the connection has ended; returns why (the Close status, or the network
    /// error).
    pub async fn closed(&self) -> Status {
        self.shared.closed.cancelled().await;
        self.close_status().unwrap_or_else(closed_error)
    }

    /// Why the connection ended, once it has.
    pub fn close_status(&self) -> Option<Status> {
        self.shared
            .close_status
            .get()
            .map(|status| Status::clone(status))
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
        self.shared.pending.len()
    }

    /// Records the end of the connection, fails its pending calls and runs its close
    /// callbacks (once). The engine calls it when a connection ends; the server calls it for a
    /// connection refused or broken before its engine ran, so what authentication attached
    /// to it is still cleaned up.
    pub(crate) fn mark_closed(&self, status: &Status) {
        let _ = self.shared.close_status.set(Box::new(status.clone()));
        self.fail_calls(status);
        // Senders waiting for room learn the connection is gone.
        self.shared.outbox.close();
        self.shared.is_closed.store(true, Ordering::Release);
        self.shared.closed.cancel();
        let callbacks = std::mem::take(&mut *lock(&self.shared.on_close));
        for callback in callbacks {
            // One faulty callback must not keep the others, or the server's bookkeeping,
            // from running.
            if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| callback(status))) {
                tracing::error!(
                    conn = self.id(),
                    panic = crate::router::panic_message(&panic),
                    "close callback panicked"
                );
            }
        }
    }

    /// The transport the connection runs on: `tcp`, `tls`, `ws`, `wss` or `quic`.
    pub fn transport(&self) -> &'static str {
        self.shared.scheme.name()
    }

    /// The transport the connection runs on, as the engine knows it.
    pub(crate) fn scheme(&self) -> Scheme {
        self.shared.scheme
    }

    pub(crate) fn same(&self, other: &Conn) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

fn closed_error() -> Status {
    Status::network_error("connection closed")
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("id", &self.shared.id)
            .field("side", &self.shared.side)
            .field("remote_addr", &self.shared.remote_addr)
            .field("transport", &self.shared.scheme.name())
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The parts of a server-side connection with a send queue of `send_queue_bytes`.
    pub(crate) fn parts(send_queue_bytes: usize) -> ConnParts {
        ConnParts {
            side: Side::Server,
            remote_addr: None,
            scheme: Scheme::Tcp,
            peer_header: Header::new(),
            codec: Codec::PROTOBUF,
            default_timeout: Duration::from_secs(5),
            send_queue_bytes,
            slow_consumer: SlowConsumer::default(),
            counters: Counters::new(usize::MAX),
        }
    }

    /// `n` server-side connections, in the order they were made (their ids count up).
    pub(crate) fn made_in_order(n: usize) -> Vec<Conn> {
        (0..n).map(|_| Conn::new(parts(1024)).0).collect()
    }

    /// A plain stream writer over `io`.
    pub(crate) fn stream_writer(
        io: impl tokio::io::AsyncWrite + Send + 'static,
    ) -> super::io::PacketWriter {
        super::io::PacketWriter {
            io: Box::pin(io),
            out: super::io::Outgoing::default(),
            framing: super::io::Framing::Stream,
            #[cfg(feature = "gzip")]
            gzip: None,
        }
    }

    fn notify(len: usize) -> Packet {
        Packet::Notify(Notify {
            action: Action::Id(1),
            header: Header::new(),
            payload: Bytes::from(vec![0; len]),
        })
    }

    fn ok_response(mid: u16) -> Response {
        Response {
            mid,
            status: Code::Ok,
            header: Header::new(),
            payload: Bytes::new(),
        }
    }

    /// Hands an Ok response to call `mid`, as a burst of one.
    fn complete_call(conn: &Conn, mid: u16) -> usize {
        let mut answers = Answers::default();
        answers.push(ok_response(mid));
        conn.complete_calls(&mut answers)
    }

    /// Callers counted as coming back must come back, or the writer would wait on them: a call
    /// answered and taken, one answered and dropped before it looked, one timed out and one
    /// failed by the connection's end all leave the count where it started.
    #[tokio::test(start_paused = true)]
    async fn every_answered_caller_is_counted_back_taken_dropped_or_timed_out() {
        let (conn, mut outbox) = Conn::new(parts(1 << 20));
        let queued_mid = |outbox: &mut Outbox| {
            let mut batch = Vec::new();
            outbox.try_recv_many(&mut batch, 1);
            match batch.pop() {
                Some(Packet::Request(request)) => request.mid,
                other => panic!("a request was expected, not {other:?}"),
            }
        };
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());

        // Taken.
        let mut taken =
            Box::pin(conn.request_raw(Action::Id(1), Header::new(), Bytes::new(), None));
        assert!(taken.as_mut().poll(&mut cx).is_pending());
        assert_eq!(complete_call(&conn, queued_mid(&mut outbox)), 1);
        assert_eq!(conn.shared.outbox.callers_coming(), 1);
        assert!(taken.as_mut().poll(&mut cx).is_ready());
        assert_eq!(conn.shared.outbox.callers_coming(), 0);

        // Dropped with its answer untaken.
        let mut dropped =
            Box::pin(conn.request_raw(Action::Id(1), Header::new(), Bytes::new(), None));
        assert!(dropped.as_mut().poll(&mut cx).is_pending());
        assert_eq!(complete_call(&conn, queued_mid(&mut outbox)), 1);
        assert_eq!(conn.shared.outbox.callers_coming(), 1);
        drop(dropped);
        assert_eq!(conn.shared.outbox.callers_coming(), 0);

        // Timed out, then taken.
        let timeout = Duration::from_secs(1);
        let mut late =
            Box::pin(conn.request_raw(Action::Id(1), Header::new(), Bytes::new(), Some(timeout)));
        assert!(late.as_mut().poll(&mut cx).is_pending());
        queued_mid(&mut outbox);
        tokio::time::advance(timeout * 2).await;
        conn.expire_calls(tokio::time::Instant::now().into_std());
        assert_eq!(conn.shared.outbox.callers_coming(), 1);
        match late.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(Err(status)) => assert_eq!(status.code(), Code::RequestTimeout),
            other => panic!("a timeout was expected, not {other:?}"),
        }
        assert_eq!(conn.shared.outbox.callers_coming(), 0);

        // Dropped before any answer: never counted.
        let mut unanswered =
            Box::pin(conn.request_raw(Action::Id(1), Header::new(), Bytes::new(), None));
        assert!(unanswered.as_mut().poll(&mut cx).is_pending());
        drop(unanswered);
        assert_eq!(conn.shared.outbox.callers_coming(), 0);
        assert_eq!(conn.pending_calls(), 0);

        // Failed by the connection's end, then taken.
        let mut failed =
            Box::pin(conn.request_raw(Action::Id(1), Header::new(), Bytes::new(), None));
        assert!(failed.as_mut().poll(&mut cx).is_pending());
        conn.fail_calls(&Status::network_error("gone"));
        assert_eq!(conn.shared.outbox.callers_coming(), 1);
        assert!(matches!(
            failed.as_mut().poll(&mut cx),
            std::task::Poll::Ready(Err(_))
        ));
        assert_eq!(conn.shared.outbox.callers_coming(), 0);
    }

    /// A call whose request waits for room in the send queue and is dropped there leaves
    /// both the line and the calls' table: the room that comes back goes to the next sender,
    /// and its id is free.
    #[tokio::test]
    async fn a_call_dropped_while_its_request_waits_for_room_gives_back_its_place_and_its_id() {
        let (conn, mut outbox) = Conn::new(parts(4096));
        let fill = |conn: &Conn| {
            (0..)
                .take_while(|_| conn.try_send(notify(1024)).is_ok())
                .count()
        };
        let fitted = fill(&conn);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut call = Box::pin(conn.request_raw(
            Action::Id(1),
            Header::new(),
            Bytes::from(vec![0; 1024]),
            None,
        ));
        assert!(call.as_mut().poll(&mut cx).is_pending());
        assert_eq!(conn.pending_calls(), 1);
        drop(call);
        assert_eq!(conn.pending_calls(), 0);
        let mut written = Vec::new();
        outbox.try_recv_many(&mut written, 64);
        assert!(
            written
                .iter()
                .all(|packet| matches!(packet, Packet::Notify(_))),
            "the dropped call's request never reached the queue"
        );
        conn.release_send_room(&written);
        // Had the call kept its place in line, it would hold on to the room it was handed.
        assert_eq!(fill(&conn), fitted, "all the room came back");
        assert_eq!(conn.shared.outbox.callers_coming(), 0);
    }

    #[tokio::test]
    async fn the_send_queue_is_bounded_by_bytes_and_room_comes_back_when_written() {
        let (conn, mut outbox) = Conn::new(parts(4096));
        let mut queued = 0;
        while conn.try_send(notify(1024)).is_ok() {
            queued += 1;
        }
        assert_eq!(
            queued, 3,
            "three 1 KiB packets and their overhead fit in 4 KiB"
        );
        let full = conn.try_send(notify(1024)).unwrap_err();
        assert_eq!(full.code(), Code::TooManyRequests);
        // Control packets always get through.
        conn.try_send(Packet::Ping).unwrap();
        conn.try_send(Packet::close(Code::Ok, "bye")).unwrap();
        // A sender waits for room, and gets it once the writer has written.
        let waiting = tokio::spawn({
            let conn = conn.clone();
            async move { conn.send(notify(1024)).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let mut written = Vec::new();
        outbox.recv_many(&mut written, 64).await;
        assert_eq!(written.len(), 5);
        conn.release_send_room(&written);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        // A packet larger than the whole budget waits for an empty queue, then goes.
        let huge = tokio::spawn({
            let conn = conn.clone();
            async move { conn.send(notify(10_000)).await }
        });
        let mut written = Vec::new();
        outbox.recv_many(&mut written, 64).await;
        conn.release_send_room(&written);
        tokio::time::timeout(Duration::from_secs(5), huge)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        // Once the connection is closed, waiting senders fail.
        let stuck = tokio::spawn({
            let conn = conn.clone();
            async move { conn.send(notify(1024)).await }
        });
        tokio::task::yield_now().await;
        conn.mark_closed(&Status::network_error("gone"));
        let error = tokio::time::timeout(Duration::from_secs(5), stuck)
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        assert_eq!(error.code(), Code::NetworkError);
    }
}
