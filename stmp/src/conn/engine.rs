//! The per-connection engine: reads packets, dispatches them, keeps the heartbeat, and runs the
//! close handshake. The same engine runs every transport on both sides.
//!
//! Backpressure, and why it cannot deadlock: the read loop never drops what it owes the peer.
//! Requests beyond the handler slots are refused with `TooManyRequests` at once rather than
//! waited for, because the responses to this side's own calls arrive on the same stream and
//! handlers may be waiting for them. A reply (Pong, refusal) that finds the send queue full,
//! or a notify that finds the event queue full, is parked and reading pauses until it is
//! queued; close, grace and the writer's failures are still watched meanwhile. Reading
//! resumes as soon as the peer reads (or a listener finishes), and a peer that reads nothing
//! is ended by the write-stall timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::budget::{InFlight, Reservation};
use super::io::{PacketStream, PacketWriter, WriteError};
use super::{Conn, Outbox, Refused, lock};
use crate::router::Target;
use crate::stats::Counters;
use crate::wire::{Header, Packet, Response};
use crate::{Code, Context, Router, Status};

/// Packets the read loop handles before it lets other tasks run: packets already decoded
/// (a burst inflated by gzip, say) would otherwise be handled without ever yielding.
const YIELD_EVERY: u32 = 64;

/// Tunables of one connection.
#[derive(Clone, Debug)]
pub(crate) struct EngineConfig {
    /// Silence after which the connection is dead; a Ping goes out after half of it.
    pub(crate) read_timeout: Duration,
    /// Requests handled at once; more are answered `TooManyRequests`.
    pub(crate) max_concurrent_requests: usize,
    /// How long a closing side waits for the peer's Close, and for its last writes.
    pub(crate) close_grace: Duration,
    /// Notifies queued for listeners before reading pauses.
    pub(crate) event_queue: usize,
    /// A write that makes no progress for this long ends the connection.
    pub(crate) write_stall_timeout: Duration,
    /// Bytes of requests and notifies this connection's handlers and listeners may hold.
    pub(crate) conn_in_flight_bytes: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            read_timeout: Duration::from_secs(60),
            max_concurrent_requests: 1024,
            close_grace: Duration::from_secs(1),
            event_queue: 1024,
            write_stall_timeout: Duration::from_secs(30),
            conn_in_flight_bytes: 32 << 20,
        }
    }
}

/// Everything one connection's engine needs.
pub(crate) struct Engine {
    pub(crate) conn: Conn,
    pub(crate) outbox: Outbox,
    pub(crate) reader: PacketStream,
    pub(crate) writer: PacketWriter,
    pub(crate) router: Router,
    pub(crate) config: EngineConfig,
    /// Handler tasks, so a server can wait for them when it shuts down.
    pub(crate) tasks: TaskTracker,
    /// Once cancelled, new requests are answered `ServerShutdown`.
    pub(crate) draining: CancellationToken,
}

/// Why the read loop stopped.
struct Ending {
    status: Status,
    /// Whether a Close still has to go to the peer.
    send_close: bool,
}

/// What the read loop waits for before it reads again: room in the send queue for a reply,
/// or in the event queue for a notify. Made only when a queue is full.
type Parked = Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>;

/// Waits for the parked packet to be queued (never, when nothing is parked).
async fn unpark(parked: &mut Option<Parked>) -> Result<(), Status> {
    match parked {
        Some(waiting) => waiting.await,
        None => std::future::pending().await,
    }
}

/// Queues a packet the engine answers with (Pong, a refused request). When the send queue is
/// full the packet waits, and so does reading: a peer that does not read its answers stops
/// being read, and a reply is never dropped.
fn reply(conn: &Conn, packet: Packet) -> Option<Parked> {
    match conn.try_queue(packet) {
        Ok(()) | Err(Refused::Closed) => None,
        Err(Refused::Full(packet)) => {
            let conn = conn.clone();
            Some(Box::pin(async move { conn.send(packet).await }))
        }
    }
}

/// What the decoded form of a packet's header costs to hold, roughly: each entry is two
/// strings and their place in a list.
fn header_cost(header: &Header) -> usize {
    header.iter().map(|(k, v)| k.len() + v.len() + 48).sum()
}

impl Engine {
    /// Runs the connection until it ends; returns once its writer has stopped and the
    /// transport is dropped.
    pub(crate) async fn run(self) {
        let Engine {
            conn,
            outbox,
            mut reader,
            writer,
            router,
            config,
            tasks,
            draining,
        } = self;
        let stop_writer = CancellationToken::new();
        // Should this future be dropped half-way, the writer stops too.
        let _stop_writer_on_drop = stop_writer.clone().drop_guard();
        let (failed, mut write_failed) = oneshot::channel();
        let permits = Arc::new(Semaphore::new(config.max_concurrent_requests));
        let busy = Busy {
            conn: conn.clone(),
            handling: permits.clone(),
            slots: config.max_concurrent_requests,
        };
        let writer_task = tokio::spawn(write_loop(
            outbox,
            writer,
            busy,
            config.write_stall_timeout,
            stop_writer.clone(),
            failed,
        ));
        // Made on the first notify: many connections never receive one, and idle ones
        // should not pay for a queue and a task.
        let mut events: Option<mpsc::Sender<Event>> = None;
        let counters = conn.counters().clone();
        let in_flight = counters.in_flight.clone();
        let conn_in_flight = Arc::new(InFlight::new(config.conn_in_flight_bytes));
        let mut parked: Option<Parked> = None;
        let mut since_yield = 0;

        let half = config.read_timeout / 2;
        let mut last_read = Instant::now();
        let mut pinged = false;
        let heartbeat = sleep_until(last_read + half);
        tokio::pin!(heartbeat);
        let mut closing_since: Option<Instant> = None;
        let grace = sleep_until(Instant::now() + Duration::from_secs(86_400));
        tokio::pin!(grace);
        // Made once, not per packet: each one registers with its token when polled.
        let close_requested = conn.shared.close_requested.clone().cancelled_owned();
        tokio::pin!(close_requested);

        let ending = loop {
            tokio::select! {
                biased;
                _ = &mut close_requested, if closing_since.is_none() => {
                    let status = requested(&conn);
                    // A Close costs no room: it gets through a full queue.
                    let _ = conn.try_send(Packet::close(status.code(), status.message()));
                    closing_since = Some(Instant::now());
                    grace.as_mut().reset(Instant::now() + config.close_grace);
                }
                _ = &mut grace, if closing_since.is_some() => {
                    break Ending { status: requested(&conn), send_close: false };
                }
                failed = &mut write_failed => {
                    let status = failed
                        .unwrap_or_else(|_| Status::network_error("cannot write to the connection"));
                    break Ending { status, send_close: false };
                }
                queued = unpark(&mut parked), if parked.is_some() => {
                    parked = None;
                    if let Err(status) = queued {
                        break Ending { status, send_close: false };
                    }
                    // The time spent not reading was this side's doing, not the peer's.
                    last_read = Instant::now();
                    pinged = false;
                    heartbeat.as_mut().reset(last_read + half);
                }
                item = reader.next(), if parked.is_none() => {
                    let packet = match item {
                        Some(Ok(packet)) => packet,
                        Some(Err(status)) => {
                            // A network error cannot be answered; bad bytes get a Close.
                            let send_close = status.code() != Code::NetworkError;
                            if send_close {
                                tracing::debug!(conn = conn.id(), %status, "closing on bad input");
                            }
                            break Ending { status, send_close };
                        }
                        None if closing_since.is_some() => {
                            break Ending { status: requested(&conn), send_close: false };
                        }
                        None => {
                            break Ending {
                                status: Status::network_error("connection closed by the peer"),
                                send_close: true,
                            };
                        }
                    };
                    last_read = Instant::now();
                    pinged = false;
                    since_yield += 1;
                    if since_yield == YIELD_EVERY {
                        since_yield = 0;
                        tokio::task::yield_now().await;
                    }
                    match packet {
                        Packet::Ping => parked = reply(&conn, Packet::Pong),
                        Packet::Pong => {}
                        Packet::Request(request) => {
                            if draining.is_cancelled() {
                                parked = reply(&conn, error_response(
                                    request.mid,
                                    Status::server_shutdown("the server is shutting down"),
                                ));
                                continue;
                            }
                            let Ok(permit) = permits.clone().try_acquire_owned() else {
                                Counters::count(&counters.requests_rejected);
                                parked = reply(&conn, error_response(
                                    request.mid,
                                    Status::too_many_requests(format!(
                                        "more than {} requests in flight on this connection",
                                        config.max_concurrent_requests
                                    )),
                                ));
                                continue;
                            };
                            let cost = request.payload.len() + header_cost(&request.header);
                            let reservation = match reserve(&conn_in_flight, &in_flight, cost) {
                                Ok(reservation) => reservation,
                                Err(status) => {
                                    Counters::count(&counters.requests_shed);
                                    parked = reply(&conn, error_response(request.mid, status));
                                    continue;
                                }
                            };
                            let target = router.target(&request.action);
                            let ctx = Context::new(
                                conn.clone(),
                                request.action,
                                target.method,
                                request.header,
                            );
                            let router = router.clone();
                            // Tracked from the start, not from `spawn`: a shutdown that looks
                            // while the handler runs inline must wait for it.
                            let tracked = tasks.token();
                            let mut handling = Box::pin(async move {
                                let _tracked = tracked;
                                let outcome = crate::telemetry::observe_call(target.method, router.handle_request(target, &ctx, request.payload)).await;
                                let header = ctx.take_response_header();
                                let response = match outcome {
                                    Ok(payload) => Packet::Response(Response {
                                        mid: request.mid,
                                        status: Code::Ok,
                                        header,
                                        payload,
                                    }),
                                    Err(status) => with_header(error_response(request.mid, status), header),
                                };
                                let _ = ctx.conn().send(response).await;
                                // Held until the answer is queued: a handler waiting for room
                                // still holds what it was sent.
                                drop((reservation, permit));
                            });
                            // Most handlers answer without waiting: run them here until their
                            // first await, and give only the ones that wait a task of their own.
                            let mut inline = std::task::Context::from_waker(std::task::Waker::noop());
                            if handling.as_mut().poll(&mut inline).is_pending() {
                                tasks.spawn(handling);
                            }
                        }
                        Packet::Notify(notify) => {
                            let cost = notify.payload.len() + header_cost(&notify.header);
                            let reservation = match reserve(&conn_in_flight, &in_flight, cost) {
                                Ok(reservation) => reservation,
                                Err(status) => {
                                    Counters::count(&counters.requests_shed);
                                    tracing::debug!(conn = conn.id(), %status, "dropping a notify");
                                    continue;
                                }
                            };
                            let target = router.target(&notify.action);
                            let ctx = Context::new(conn.clone(), notify.action, target.method, notify.header);
                            let queue = events.get_or_insert_with(|| {
                                let (queue, rx) = mpsc::channel(config.event_queue.max(1));
                                // Not awaited when the connection ends: listeners still
                                // queued run on without holding the connection open.
                                tokio::spawn(event_loop(rx, router.clone()));
                                queue
                            });
                            match queue.try_send((target, ctx, notify.payload, reservation)) {
                                Ok(()) => {}
                                // Listeners fall behind: stop reading until they catch up,
                                // while heartbeat and close go on.
                                Err(mpsc::error::TrySendError::Full(event)) => {
                                    let queue = queue.clone();
                                    parked = Some(Box::pin(async move {
                                        queue.send(event).await.map_err(|_| listeners_gone())
                                    }));
                                }
                                Err(mpsc::error::TrySendError::Closed(_)) => {
                                    break Ending { status: listeners_gone(), send_close: true };
                                }
                            }
                        }
                        Packet::Response(response) => {
                            if !lock(&conn.shared.pending).complete(response) {
                                tracing::trace!(conn = conn.id(), "dropping a response nobody waits for");
                            }
                        }
                        Packet::Close(close) => {
                            let status = Status::new(close.status, close.reason);
                            break Ending { status, send_close: closing_since.is_none() };
                        }
                    }
                }
                _ = &mut heartbeat => {
                    if parked.is_some() {
                        // Not reading is this side's backpressure, so silence proves nothing;
                        // Pings still go out, and a peer that is gone fails the writer.
                        let _ = conn.try_send(Packet::Ping);
                        heartbeat.as_mut().reset(Instant::now() + half);
                        continue;
                    }
                    let silent = last_read.elapsed();
                    if silent >= config.read_timeout {
                        break Ending {
                            status: Status::network_error(format!(
                                "no packet received for {:?}",
                                config.read_timeout
                            )),
                            send_close: true,
                        };
                    }
                    if silent >= half && !pinged {
                        let _ = conn.try_send(Packet::Ping);
                        pinged = true;
                    }
                    let next = if pinged { last_read + config.read_timeout } else { last_read + half };
                    heartbeat.as_mut().reset(next);
                }
            }
        };

        drop(parked);
        drop(events);
        drop(reader);
        finish(conn, ending, stop_writer, writer_task, config.close_grace).await;
    }
}

/// Reserves a packet's bytes in the connection's budget, then in the server's.
fn reserve(
    conn: &Arc<InFlight>,
    server: &Arc<InFlight>,
    bytes: usize,
) -> Result<(Reservation, Reservation), Status> {
    let mine = conn.reserve(bytes).ok_or_else(|| {
        Status::too_many_requests(format!(
            "this connection holds its limit of {} request bytes in flight",
            conn.limit()
        ))
    })?;
    let all = server.reserve(bytes).ok_or_else(|| {
        Status::too_many_requests(format!(
            "the server holds its limit of {} request bytes in flight",
            server.limit()
        ))
    })?;
    Ok((mine, all))
}

fn listeners_gone() -> Status {
    Status::internal("event listener task ended")
}

fn requested(conn: &Conn) -> Status {
    conn.shared
        .requested_status
        .get()
        .cloned()
        .unwrap_or_else(|| Status::new(Code::Ok, ""))
}

fn error_response(mid: u16, status: Status) -> Packet {
    // A handler that fails with `Ok` still failed.
    let code = match status.code() {
        Code::Ok => Code::Unknown,
        code => code,
    };
    Packet::Response(Response {
        mid,
        status: code,
        header: Header::new(),
        payload: Bytes::from(status.message().to_owned()),
    })
}

fn with_header(mut packet: Packet, header: Header) -> Packet {
    if let Packet::Response(response) = &mut packet {
        response.header = header;
    }
    packet
}

/// Sends the last Close, lets the writer flush for up to `grace`, and ends it if it cannot:
/// once this returns, the writer and with it the transport are gone.
async fn finish(
    conn: Conn,
    ending: Ending,
    stop_writer: CancellationToken,
    mut writer_task: tokio::task::JoinHandle<()>,
    grace: Duration,
) {
    let Ending { status, send_close } = ending;
    if send_close {
        let _ = conn.try_send(Packet::close(status.code(), status.message()));
    }
    tracing::debug!(conn = conn.id(), %status, "connection closed");
    let _ = conn.shared.close_status.set(status.clone());
    lock(&conn.shared.pending).close(Status::network_error(format!(
        "connection closed: {status}"
    )));
    stop_writer.cancel();
    if tokio::time::timeout(grace, &mut writer_task).await.is_err() {
        tracing::debug!(
            conn = conn.id(),
            "the peer does not read; dropping the connection"
        );
        writer_task.abort();
        let _ = writer_task.await;
    }
    conn.mark_closed(&status);
}

/// Writes queued packets; whatever is queued together goes out in one write and one flush.
/// A write that makes no progress for `stall` ends the connection through `failed`.
async fn write_loop(
    mut outbox: Outbox,
    mut writer: PacketWriter,
    busy: Busy,
    stall: Duration,
    stop: CancellationToken,
    failed: oneshot::Sender<Status>,
) {
    const BATCH: usize = 64;
    let conn = busy.conn.clone();
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        // Made per wake-up, so an idle connection holds no batch.
        let mut batch = Vec::new();
        let stopping = tokio::select! {
            biased;
            received = outbox.recv_many(&mut batch, BATCH) => received == 0,
            _ = &mut stopped => true,
        };
        if stopping {
            while let Ok(packet) = outbox.try_recv() {
                batch.push(packet);
            }
        } else if batch.len() < BATCH && busy.more_coming(batch.len()) {
            // Let the tasks that are ready to run (callers woken by the same read, handlers
            // answering) queue what they have first: one write then carries many packets
            // instead of one each, which is what the syscalls per call come down to. With
            // one call at a time nothing more is coming, and the packet leaves at once.
            run_ready_tasks_first().await;
            while batch.len() < BATCH {
                match outbox.try_recv() {
                    Ok(packet) => batch.push(packet),
                    Err(_) => break,
                }
            }
        }
        if !batch.is_empty() {
            let written = writer.write_batch(&batch, stall).await;
            conn.release_send_room(&batch);
            if let Err(error) = written {
                if let WriteError::Stalled(_) = error {
                    Counters::count(&conn.counters().write_stalls);
                }
                let status = Status::from(error);
                tracing::debug!(conn = conn.id(), %status, "write failed");
                let _ = failed.send(status);
                return;
            }
        }
        if stopping {
            let _ = tokio::time::timeout(stall, writer.shutdown()).await;
            return;
        }
    }
}

/// How much of a connection's work is under way: its calls waiting for an answer and the
/// requests its handlers are serving. Each of them is a packet about to be queued.
struct Busy {
    conn: Conn,
    handling: Arc<Semaphore>,
    slots: usize,
}

impl Busy {
    /// Whether more packets are under way than the `batch` already holds.
    fn more_coming(&self, batch: usize) -> bool {
        let handling = self.slots.saturating_sub(self.handling.available_permits());
        self.conn.pending_calls() + handling > batch
    }
}

/// Steps aside once: the task goes to the back of its worker's run queue, behind the tasks that
/// are ready now, and runs again as soon as they have had their turn. Unlike
/// [`tokio::task::yield_now`] it does not wait for the runtime to poll the I/O driver, so when
/// nothing else is ready it costs next to nothing.
async fn run_ready_tasks_first() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await
}

/// A notify on its way to its listeners, with the bytes it holds in the server's budget.
type Event = (Target, Context, Bytes, (Reservation, Reservation));

/// Runs notifies through listeners one at a time, in the order they arrived.
async fn event_loop(mut events: mpsc::Receiver<Event>, router: Router) {
    while let Some((target, ctx, payload, reservation)) = events.recv().await {
        router.handle_notify(target, &ctx, payload).await;
        drop(reservation);
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context as TaskContext, Poll};

    use bytes::BytesMut;
    use tokio::io::AsyncWrite;

    use super::*;

    /// Records what reaches the socket: bytes, and how many writes and flushes it took.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<(Vec<u8>, usize, usize)>>);

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut TaskContext<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let mut state = self.0.lock().unwrap();
            state.0.extend_from_slice(buf);
            state.1 += 1;
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
            self.0.lock().unwrap().2 += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: Pin<&mut Self>,
            _: &mut TaskContext<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn queued_packets_go_out_in_one_write_and_one_flush() {
        let recorder = Recorder::default();
        let writer = PacketWriter::Stream {
            io: Box::pin(recorder.clone()),
            buf: BytesMut::new(),
        };
        let (conn, outbox) = Conn::new(super::super::tests::parts(1 << 20));
        for _ in 0..10 {
            conn.try_send(Packet::Pong).unwrap();
        }
        let stop = CancellationToken::new();
        stop.cancel();
        let (failed, _) = oneshot::channel();
        let stall = Duration::from_secs(5);
        write_loop(outbox, writer, idle(&conn), stall, stop, failed).await;
        let (bytes, writes, flushes) = recorder.0.lock().unwrap().clone();
        assert_eq!(bytes, [0x90; 10]);
        assert_eq!((writes, flushes), (1, 1));
        // What was written gave its room back.
        assert_eq!(conn.shared.send_room.available_permits(), 1 << 20);
    }

    fn idle(conn: &Conn) -> Busy {
        Busy {
            conn: conn.clone(),
            handling: Arc::new(Semaphore::new(16)),
            slots: 16,
        }
    }

    /// Ten answers: the first wakes the writer, the other nine are ready to run right behind
    /// it (on this single-threaded runtime, in that order). Returns the writes they took.
    async fn writes_for_ten_answers(handlers_running: u32) -> usize {
        let recorder = Recorder::default();
        let writer = PacketWriter::Stream {
            io: Box::pin(recorder.clone()),
            buf: BytesMut::new(),
        };
        let (conn, outbox) = Conn::new(super::super::tests::parts(1 << 20));
        let busy = idle(&conn);
        let running = busy
            .handling
            .clone()
            .try_acquire_many_owned(handlers_running)
            .unwrap();
        let stop = CancellationToken::new();
        let (failed, _) = oneshot::channel();
        let stall = Duration::from_secs(5);
        let writer_task = tokio::spawn(write_loop(
            outbox,
            writer,
            busy,
            stall,
            stop.clone(),
            failed,
        ));
        // The writer waits for its first packet.
        tokio::task::yield_now().await;
        conn.try_send(Packet::Pong).unwrap();
        let answers: Vec<_> = (0..9)
            .map(|_| {
                let conn = conn.clone();
                tokio::spawn(async move { conn.try_send(Packet::Pong).unwrap() })
            })
            .collect();
        for answer in answers {
            answer.await.unwrap();
        }
        drop(running);
        stop.cancel();
        writer_task.await.unwrap();
        let (bytes, writes, _) = recorder.0.lock().unwrap().clone();
        assert_eq!(bytes, [0x90; 10]);
        writes
    }

    #[tokio::test]
    async fn with_requests_being_handled_the_writer_lets_their_answers_join_the_write() {
        assert_eq!(writes_for_ten_answers(10).await, 1);
    }

    #[tokio::test]
    async fn with_one_request_being_handled_its_answer_leaves_at_once() {
        assert_eq!(writes_for_ten_answers(1).await, 2);
    }
}
