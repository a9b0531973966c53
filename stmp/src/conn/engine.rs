//! The per-connection engine: the async driver of a [`ConnState`]. It reads packets, writes
//! them, runs handlers and listeners and keeps the timers; what a packet means, when to ping
//! or give up, how the close handshake goes and which requests run are the state's decisions.
//! The same engine runs every transport on both sides.
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
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_util::task::TaskTracker;

use super::Drain;
use super::budget::InFlight;
use super::close_request::Heard;
use super::io::{PacketStream, PacketWriter, WriteError};
use super::outbox::DEFERRAL_WATCH;
use super::state::{Action, ConnState, Ending, Held, error_response};
use super::writer::Taken;
use super::{Conn, ConnParts, Outbox, Refused, Side};
use crate::broadcast::SlowConsumer;
use crate::codec::Codec;
use crate::router::{ActionTarget, ActionTargets, Started};
use crate::stats::Counters;
use crate::wire::{Header, Packet, Request, Response};
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

/// What one side gives each connection it runs: the router, the settings, the tracker its
/// handlers run in and its drain signal. A server has one; a client makes one per connection.
#[derive(Clone)]
pub(crate) struct Host {
    pub(crate) side: Side,
    pub(crate) router: Router,
    pub(crate) config: EngineConfig,
    /// Default deadline of calls this side makes.
    pub(crate) call_timeout: Duration,
    pub(crate) send_queue_bytes: usize,
    pub(crate) slow_consumer: SlowConsumer,
    pub(crate) counters: Arc<Counters>,
    /// Handler tasks, so a server can wait for them when it shuts down.
    pub(crate) tasks: TaskTracker,
    /// Once cancelled, new requests are answered `ServerShutdown`.
    pub(crate) draining: Drain,
}

impl Host {
    /// A connection to a peer whose handshake said `peer_header` and agreed on `codec`; it
    /// runs once [`engine`](Self::engine) has its transport.
    pub(crate) fn conn(
        &self,
        remote_addr: Option<SocketAddr>,
        transport: &'static str,
        peer_header: Header,
        codec: Codec,
    ) -> (Conn, Outbox) {
        Conn::new(ConnParts {
            side: self.side,
            remote_addr,
            transport,
            peer_header,
            codec,
            default_timeout: self.call_timeout,
            send_queue_bytes: self.send_queue_bytes,
            slow_consumer: self.slow_consumer,
            counters: self.counters.clone(),
        })
    }

    /// The engine that runs `conn` over a transport's packets. From here on `conn` can send:
    /// its senders write inline, and its writer task starts once a packet waits for it.
    pub(crate) fn engine(
        &self,
        conn: Conn,
        outbox: Outbox,
        reader: PacketStream,
        writer: PacketWriter,
    ) -> Engine {
        let state = ConnState::new(
            &self.config,
            conn.counters().clone(),
            self.draining.clone(),
            now(),
        );
        let busy = Busy {
            conn: conn.clone(),
            handling: state.handler_slots(),
        };
        conn.shared.writer.put(writer);
        conn.shared.outbox.allow_inline();
        let writer_task = WriterTask::waiting(&conn, outbox, busy, self.config.write_stall_timeout);
        Engine {
            writer_task: StopWriterOnDrop {
                conn: conn.clone(),
                task: writer_task,
            },
            conn,
            state,
            reader,
            router: self.router.clone(),
            config: self.config.clone(),
            tasks: self.tasks.clone(),
        }
    }
}

/// Everything one connection's engine needs.
pub(crate) struct Engine {
    pub(crate) conn: Conn,
    state: ConnState,
    reader: PacketStream,
    /// Stops the writer however the engine ends, run or not.
    writer_task: StopWriterOnDrop,
    router: Router,
    pub(crate) config: EngineConfig,
    tasks: TaskTracker,
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

/// Queues a packet the engine answers with (Pong, a refused request), or writes it at once
/// when `alone` (no more input at hand) and the writer waits with nothing queued: an idle
/// connection's heartbeat then never starts its writer task. When the send queue is full the
/// packet waits, and so does reading: a peer that does not read its answers stops being
/// read, and a reply is never dropped.
fn reply(conn: &Conn, packet: Packet, alone: bool) -> Option<Parked> {
    let queued = match alone {
        true => conn.try_queue_inline(packet),
        false => conn.try_queue(packet),
    };
    match queued {
        Ok(()) | Err(Refused::Closed) => None,
        Err(Refused::Full(packet)) => {
            let conn = conn.clone();
            Some(Box::pin(async move { conn.send(packet).await }))
        }
    }
}

/// The engine's clock: tokio's, so tests that pause time pause the connection too.
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

impl Engine {
    /// Runs the connection until it ends; returns once its writer has stopped and the
    /// transport is dropped.
    pub(crate) fn run(self) -> impl Future<Output = ()> + Send {
        // Taken apart before the future is made: kept whole, the engine would stay in the
        // future's state beside the parts moved out of it.
        let Engine {
            conn,
            mut state,
            mut reader,
            writer_task,
            router,
            config,
            tasks,
        } = self;
        async move {
            let handling = state.handler_slots();
            // What this connection's requests and notifies run through, resolved once per action
            // while the router does not change.
            let mut targets = ActionTargets::new(router);
            let mut listeners = Listeners::new(config.event_queue);
            // Two timers for the state's two deadlines: the close grace is watched before
            // reading (a peer that floods cannot hold a closing connection open), the heartbeat
            // after it. Each is re-armed only when its deadline moves, which packets never do.
            let heartbeat_at = state.heartbeat_at();
            let heartbeat = sleep_until(Instant::from_std(heartbeat_at));
            tokio::pin!(heartbeat);
            // The timers that rarely ring are boxed, out of the way of what every packet reads.
            let mut grace = Box::pin(sleep_until(far_off()));
            // One alarm for the deadlines of this side's calls (see `pending`); set by the calls'
            // table, which says when it should ring next each time it rings.
            let mut calls_due = Box::pin(sleep_until(far_off()));
            // Set while answered callers are expected back: see `SendQueue::release_deferred`.
            let mut deferral_watch = Box::pin(sleep_until(far_off()));
            let mut book = Bookkeeping {
                parked: None,
                // When the packet being handled was read: a request's duration counts from there.
                arrived: now(),
                heartbeat_at,
                calls_due_at: None,
                since_yield: 0,
                watching_deferral: false,
            };
            let shared = conn.shared.clone();

            let ending = loop {
                let action = tokio::select! {
                    biased;
                    // The writer's failure always; a close request until closing.
                    heard = shared.close_requested.heard_of(!state.is_closing()) => match heard {
                        Heard::WriteFailed(status) => Action::End(state.handle_write_failed(status)),
                        Heard::CloseRequested => {
                            let action = state.close(now(), requested(&conn));
                            if let Some(deadline) = state.close_deadline() {
                                grace.as_mut().reset(Instant::from_std(deadline));
                            }
                            action
                        }
                        Heard::SoonerDeadline => {
                            book.calls_due_at = set_alarm(calls_due.as_mut(), conn.expire_calls(now()));
                            Action::Idle
                        }
                    },
                    _ = &mut calls_due, if book.calls_due_at.is_some() => {
                        book.calls_due_at = set_alarm(calls_due.as_mut(), conn.expire_calls(now()));
                        Action::Idle
                    }
                    _ = &mut deferral_watch, if book.watching_deferral => {
                        book.watching_deferral = conn.shared.outbox.release_deferred();
                        Action::Idle
                    }
                    _ = &mut grace, if state.is_closing() => state.handle_timeout(now()),
                    queued = unpark(&mut book.parked), if book.parked.is_some() => {
                        book.parked = None;
                        match queued {
                            Ok(()) => {
                                state.resume_reading(now());
                                Action::Idle
                            }
                            Err(status) => Action::End(state.handle_write_failed(status)),
                        }
                    }
                    item = reader.next(), if book.parked.is_none() => match item {
                        Some(Ok(packet)) => {
                            book.since_yield += 1;
                            if book.since_yield == YIELD_EVERY {
                                book.since_yield = 0;
                                tokio::task::yield_now().await;
                            }
                            // A packet decoded from bytes an earlier read brought arrived with
                            // that read: the clock is read once per read, not once per packet.
                            if reader.as_mut().took_a_read() {
                                book.arrived = now();
                            }
                            state.handle_packet(book.arrived, packet)
                        }
                        Some(Err(status)) => {
                            if status.code() != Code::NetworkError {
                                tracing::debug!(conn = conn.id(), %status, "closing on bad input");
                            }
                            Action::End(state.handle_read_end(Some(status)))
                        }
                        None => Action::End(state.handle_read_end(None)),
                    },
                    _ = &mut heartbeat => state.handle_timeout(now()),
                };
                match action {
                    Action::Idle => {}
                    Action::Reply(packet) => {
                        let alone = !reader.as_mut().has_buffered();
                        book.parked = reply(&conn, packet, alone);
                    }
                    Action::Signal(packet) => {
                        // A Ping or a Close costs no room: it gets through a full queue.
                        let _ = conn.try_queue_inline(packet);
                    }
                    Action::Handle(request, held) => {
                        // The only work under way, and no more input at hand: its answer may
                        // leave at once from this task rather than through the writer's. Input
                        // is looked at last: over WebSocket that means looking ahead.
                        let alone = handling.used() == 1
                            && conn.pending_calls() == 0
                            && !reader.as_mut().has_buffered();
                        handle(
                            &conn,
                            &mut targets,
                            &tasks,
                            request,
                            held,
                            alone,
                            book.arrived,
                        )
                    }
                    Action::Deliver(notify, held) => {
                        let target = targets.get(&notify.action);
                        let ctx = Context::new(
                            conn.clone(),
                            notify.action,
                            target.method(),
                            notify.header,
                        );
                        // Most notifies finish without waiting, and those run right here; one
                        // that arrives while an earlier one waits queues behind it, in order.
                        let left = match listeners.idle() {
                            true => target.start_notify(ctx, notify.payload),
                            false => Some(target.clone().run_notify(ctx, notify.payload)),
                        };
                        if let Some(left) = left {
                            let listening: Listening = Box::pin(async move {
                                left.await;
                                drop(held);
                            });
                            match listeners.queue(listening) {
                                Delivered::Done => {}
                                // Listeners fall behind: stop reading until they catch up,
                                // while heartbeat and close go on.
                                Delivered::Full(waiting) => book.parked = Some(waiting),
                                Delivered::Gone => {
                                    break Ending {
                                        status: listeners_gone(),
                                        send_close: true,
                                    };
                                }
                            }
                        }
                    }
                    Action::Complete(response) => {
                        if !conn.complete_call(response) {
                            tracing::trace!(
                                conn = conn.id(),
                                "dropping a response nobody waits for"
                            );
                        } else if !book.watching_deferral {
                            book.watching_deferral = true;
                            deferral_watch
                                .as_mut()
                                .reset(Instant::now() + DEFERRAL_WATCH);
                        }
                    }
                    Action::End(ending) => break ending,
                }
                if book.parked.is_some() && !state.is_reading_paused() {
                    state.pause_reading();
                }
                if state.heartbeat_at() != book.heartbeat_at {
                    book.heartbeat_at = state.heartbeat_at();
                    heartbeat
                        .as_mut()
                        .reset(Instant::from_std(book.heartbeat_at));
                }
                if book.watching_deferral && deferral_watch.is_elapsed() {
                    deferral_watch
                        .as_mut()
                        .reset(Instant::now() + DEFERRAL_WATCH);
                }
            };

            drop(book);
            drop(listeners);
            drop(reader);
            finish(conn, ending, &writer_task.task, config.close_grace).await;
        }
    }
}

/// What the engine's loop reads or changes on every packet, kept in one place: with thousands
/// of connections, each one's wake-up finds its engine out of the cache, and every cache line
/// of the engine's state that a packet touches is a miss of its own.
struct Bookkeeping {
    /// Reading waits for room to queue a reply, or for listeners to catch up.
    parked: Option<Parked>,
    /// When the packet being handled was read: a request's duration counts from there.
    arrived: std::time::Instant,
    /// The heartbeat timer's deadline.
    heartbeat_at: std::time::Instant,
    /// When the calls' alarm rings; `None` while no call waits.
    calls_due_at: Option<std::time::Instant>,
    /// Packets handled since the engine last gave other tasks a turn.
    since_yield: u32,
    /// Whether answered callers are expected back: see `SendQueue::release_deferred`.
    watching_deferral: bool,
}

/// A deadline for a timer that is not set: a day is as good as never, and re-armed long before.
fn far_off() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

/// Sets the calls' alarm to ring at `at` (left as it is when no call waits); returns `at`.
fn set_alarm(
    alarm: Pin<&mut tokio::time::Sleep>,
    at: Option<std::time::Instant>,
) -> Option<std::time::Instant> {
    if let Some(ring) = at.map(Instant::from_std)
        && alarm.deadline() != ring
    {
        alarm.reset(ring);
    }
    at
}

/// Runs a request's handler; `held` (its slot and bytes) is given back once it has answered.
/// An answer ready at once is queued by this task, and written by it when `alone`.
fn handle(
    conn: &Conn,
    targets: &mut ActionTargets,
    tasks: &TaskTracker,
    request: Request,
    held: Held,
    alone: bool,
    arrived: std::time::Instant,
) {
    let target = targets.get(&request.action);
    let ctx = Context::new(
        conn.clone(),
        request.action,
        target.method(),
        request.header,
    );
    // Tracked from the start, not from `spawn`, and until the answer is queued: a shutdown
    // that looks while the handler runs inline must wait for it.
    let tracked = tasks.token();
    let mid = request.mid;
    let span = crate::telemetry::call_span(target.series(), target.method());
    // Most handlers answer without waiting: they run here until their first await, and only
    // the ones that wait (or whose answer waits for room) get a task of their own.
    let started = span.in_scope(|| target.start_request(&ctx, request.payload));
    let response = match started {
        Started::Done(outcome) => span.in_scope(|| answer(target, &ctx, mid, outcome, arrived)),
        Started::Waiting(answering) => {
            let (conn, target) = (conn.clone(), target.clone());
            let answering = async move {
                let outcome = answering.await;
                answer(&target, &ctx, mid, outcome, arrived)
            };
            tasks.spawn(async move {
                let _tracked = tracked;
                let response = tracing::Instrument::instrument(answering, span).await;
                // Alone, as the answers ready at once are: written from here when the writer
                // waits, rather than by its task (which then need not even start).
                if held.handler_alone() && conn.pending_calls() == 0 {
                    let _ = conn.send_inline_then(response, || drop(held)).await;
                } else {
                    let _ = conn.send(response).await;
                    drop(held);
                }
            });
            return;
        }
    };
    let queued = match alone {
        true => conn.try_queue_inline(response),
        false => conn.try_queue(response),
    };
    if let Err(Refused::Full(response)) = queued {
        let conn = conn.clone();
        tasks.spawn(async move {
            let _tracked = tracked;
            // Held until the answer is queued: a handler waiting for room still holds what
            // it was sent.
            let _ = conn.send(response).await;
            drop(held);
        });
    }
}

/// The response to request `mid`, once its handling is done; records the call.
fn answer(
    target: &ActionTarget,
    ctx: &Context,
    mid: u16,
    outcome: Result<Bytes, Status>,
    arrived: std::time::Instant,
) -> Packet {
    let code = match &outcome {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    };
    crate::telemetry::call_observed(target.series(), target.method(), arrived, code);
    let header = ctx.take_response_header();
    match outcome {
        Ok(payload) => Packet::Response(Response {
            mid,
            status: Code::Ok,
            header,
            payload,
        }),
        Err(status) => with_header(error_response(mid, status), header),
    }
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

fn with_header(mut packet: Packet, header: Header) -> Packet {
    if let Packet::Response(response) = &mut packet {
        response.header = header;
    }
    packet
}

/// Sends the last Close, lets the writer flush for up to `grace`, and ends it if it cannot:
/// once this returns, the writer and with it the transport are gone.
async fn finish(conn: Conn, ending: Ending, writer_task: &WriterTask, grace: Duration) {
    let Ending { status, send_close } = ending;
    if send_close {
        let _ = conn.try_send(Packet::close(status.code(), status.message()));
    }
    tracing::debug!(conn = conn.id(), %status, "connection closed");
    let _ = conn.shared.close_status.set(status.clone());
    conn.fail_calls(&status);
    conn.shared.outbox.stop();
    // Started now if nothing needed it before: it writes what is queued, the Close among it.
    let Some(mut writer_task) = writer_task.start() else {
        conn.mark_closed(&status);
        return;
    };
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
/// A write that makes no progress for `stall` ends the connection: the engine hears of it, as
/// it does of the task ending any other way.
/// The writer is in the connection's writer slot when the task starts: while the task waits,
/// senders may write inline with it.
async fn write_loop(mut outbox: Outbox, busy: Busy, stall: Duration) {
    const BATCH: usize = 64;
    let conn = busy.conn.clone();
    let slot = &conn.shared.writer;
    // However the task ends, the transport goes with it, not with the last `Conn`.
    let _clear = ClearWriterOnDrop(conn.clone());
    // One slot kept across wake-ups: a lone packet (an event, an answer) costs no allocation.
    let mut batch = Vec::new();
    loop {
        let stopping = outbox.recv_many(&mut batch, BATCH).await;
        if !stopping && batch.len() < BATCH && busy.more_coming(batch.len()) {
            // Let the tasks that are ready to run (callers woken by the same read, handlers
            // answering) queue what they have first: one write then carries many packets
            // instead of one each, which is what the syscalls per call come down to. With
            // one call at a time nothing more is coming, and the packet leaves at once.
            run_ready_tasks_first().await;
            outbox.try_recv_many(&mut batch, BATCH);
        }
        let Taken {
            writer,
            owed_room,
            unfinished,
            failed: inline_failed,
        } = slot.take();
        let Some(mut writer) = writer else {
            return;
        };
        let inline_failed = inline_failed.map(|status| WriteError::Failed(*status));
        let mut room = owed_room;
        if inline_failed.is_some() || !batch.is_empty() || unfinished {
            let written = match inline_failed {
                Some(failed) => Err(failed),
                None => writer.write_batch(&batch, stall).await,
            };
            room += conn.send_room(&batch);
            if let Err(error) = written {
                conn.release_send_bytes(room);
                if let WriteError::Stalled(_) = error {
                    Counters::count(&conn.counters().write_stalls);
                }
                let status = Status::from(error);
                tracing::debug!(conn = conn.id(), %status, "write failed");
                conn.shared.close_requested.write_failed(status);
                return;
            }
        }
        if stopping {
            conn.release_send_bytes(room);
            let _ = tokio::time::timeout(stall, writer.shutdown()).await;
            return;
        }
        // Given back under the queue's lock when the loop next looks at it, right below.
        outbox.release_later(room);
        // A busy connection's next write follows at once: its queue and batch keep their
        // room for it. A burst's room is not kept.
        let busy_now = busy.more_coming(0);
        outbox.keep_slots(busy_now);
        batch.clear();
        if !busy_now && batch.capacity() > 1 {
            batch = Vec::new();
        }
        slot.put(writer);
    }
}

/// The connection's writer task, started the first time it is needed: when a packet is queued
/// for it rather than written inline by its sender, when an inline write leaves bytes for it,
/// or when the connection ends. Until then the send queue holds this as the waiting writer's
/// waker, so senders write inline as they would with the task waiting. Connections that sit
/// idle, or only ever write one packet at a time, never start one: a task is about 1.3 KB a
/// connection, a fifth of what an idle TCP connection costs.
pub(super) struct WriterTask {
    state: std::sync::Mutex<WriterTaskState>,
}

enum WriterTaskState {
    Waiting {
        outbox: Outbox,
        busy: Busy,
        stall: Duration,
        /// Where to start it: the waker may be woken on any thread (a broadcast from a thread
        /// of its own, say).
        runtime: tokio::runtime::Handle,
    },
    /// Started; its handle is there until the engine takes it to wait for the task's end.
    Started(Option<tokio::task::JoinHandle<()>>),
}

impl WriterTask {
    /// A writer task not started yet, registered as the send queue's waiting writer.
    fn waiting(conn: &Conn, outbox: Outbox, busy: Busy, stall: Duration) -> Arc<WriterTask> {
        let task = Arc::new(WriterTask {
            state: std::sync::Mutex::new(WriterTaskState::Waiting {
                outbox,
                busy,
                stall,
                runtime: tokio::runtime::Handle::current(),
            }),
        });
        let waker = std::task::Waker::from(task.clone());
        if !conn.shared.outbox.writer_waits_with(waker) {
            crate::sync::lock(&task.state).start();
        }
        task
    }

    /// Starts the task if it has not started, and hands out its handle the first time only.
    /// The parts it holds until then (the connection among them) leave with it: nothing
    /// stays behind to keep the connection's shared state alive.
    fn start(&self) -> Option<tokio::task::JoinHandle<()>> {
        let mut state = crate::sync::lock(&self.state);
        state.start();
        match &mut *state {
            WriterTaskState::Started(handle) => handle.take(),
            WriterTaskState::Waiting { .. } => None,
        }
    }
}

impl WriterTaskState {
    fn start(&mut self) {
        let state = std::mem::replace(self, WriterTaskState::Started(None));
        *self = match state {
            WriterTaskState::Waiting {
                outbox,
                busy,
                stall,
                runtime,
            } => WriterTaskState::Started(Some(runtime.spawn(write_loop(outbox, busy, stall)))),
            started => started,
        };
    }
}

/// Woken as the waiting writer: starts the task, which looks at the queue when it first runs
/// and from then on waits with a waker of its own. Woken again before that, it does nothing.
impl std::task::Wake for WriterTask {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        crate::sync::lock(&self.state).start();
    }
}

/// Drops the writer left in the slot when the writer task ends, and tells the engine, which
/// cannot go on without it (a failure reported before keeps its status).
struct ClearWriterOnDrop(Conn);

impl Drop for ClearWriterOnDrop {
    fn drop(&mut self) {
        self.0.shared.writer.clear();
        self.0
            .shared
            .close_requested
            .write_failed(Status::network_error("cannot write to the connection"));
    }
}

/// Stops the connection's writer when the engine ends, however it ends (dropped half-way, or
/// before it ran).
struct StopWriterOnDrop {
    conn: Conn,
    task: Arc<WriterTask>,
}

impl Drop for StopWriterOnDrop {
    fn drop(&mut self) {
        self.conn.shared.outbox.stop();
        // The task writes what is queued and ends on its own.
        drop(self.task.start());
    }
}

/// How much of a connection's work is under way: its calls waiting for an answer and the
/// requests its handlers are serving. Each of them is a packet about to be queued.
struct Busy {
    conn: Conn,
    /// The connection's handler slots, one unit per handler running.
    handling: Arc<InFlight>,
}

impl Busy {
    /// Whether more packets are under way than the `batch` already holds.
    fn more_coming(&self, batch: usize) -> bool {
        self.conn.pending_calls() + self.handling.used() > batch
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

/// A notify's listeners at work; it holds the notify's bytes in the budgets until done.
type Listening = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs a connection's notifies through their listeners one at a time, in the order they
/// arrived. Most listeners finish without waiting, and those run right here on the read
/// task: a task hop per event is what a broadcast to many connections pays for on every
/// receiving side. A listener that waits moves to a task of its own, and the notifies after
/// it queue behind it there until it and they are done.
struct Listeners {
    /// Made when a listener first waits: many connections never receive a notify, and
    /// idle ones should not pay for a queue and a task (nor look at a counter elsewhere in
    /// memory for every event they get).
    queue: Option<ListenerQueue>,
    capacity: usize,
}

/// The listeners' task: its queue, and how many listeners are in it or running there.
struct ListenerQueue {
    sender: mpsc::Sender<Listening>,
    behind: Arc<AtomicUsize>,
}

/// What became of a notify handed to [`Listeners::queue`].
enum Delivered {
    /// Done, or queued behind the listeners at work.
    Done,
    /// The queue is full: reading waits for this.
    Full(Parked),
    /// The listeners' task has ended.
    Gone,
}

impl Listeners {
    fn new(capacity: usize) -> Listeners {
        Listeners {
            queue: None,
            capacity: capacity.max(1),
        }
    }

    /// Whether no listener waits: a notify may then run right away, on the reading task.
    fn idle(&self) -> bool {
        self.queue
            .as_ref()
            .is_none_or(|queue| queue.behind.load(Ordering::Acquire) == 0)
    }

    /// Hands a notify that waits (or must wait its turn) to the listeners' task.
    fn queue(&mut self, listening: Listening) -> Delivered {
        let capacity = self.capacity;
        let queue = self.queue.get_or_insert_with(|| {
            let (sender, rx) = mpsc::channel(capacity);
            let behind = Arc::new(AtomicUsize::new(0));
            // Not awaited when the connection ends: listeners still queued run on without
            // holding the connection open.
            tokio::spawn(event_loop(rx, behind.clone()));
            ListenerQueue { sender, behind }
        });
        queue.behind.fetch_add(1, Ordering::AcqRel);
        match queue.sender.try_send(listening) {
            Ok(()) => Delivered::Done,
            Err(mpsc::error::TrySendError::Full(listening)) => {
                let sender = queue.sender.clone();
                Delivered::Full(Box::pin(async move {
                    sender.send(listening).await.map_err(|_| listeners_gone())
                }))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Delivered::Gone,
        }
    }
}

/// Runs the listeners that waited, one at a time, in order.
async fn event_loop(mut queue: mpsc::Receiver<Listening>, behind: Arc<AtomicUsize>) {
    while let Some(listening) = queue.recv().await {
        listening.await;
        behind.fetch_sub(1, Ordering::AcqRel);
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
            #[cfg(feature = "gzip")]
            gzip: None,
        };
        let (conn, outbox) = Conn::new(super::super::tests::parts(1 << 20));
        for _ in 0..10 {
            conn.try_send(Packet::Pong).unwrap();
        }
        conn.shared.outbox.stop();
        let stall = Duration::from_secs(5);
        conn.shared.writer.put(writer);
        write_loop(outbox, idle(&conn), stall).await;
        let (bytes, writes, flushes) = recorder.0.lock().unwrap().clone();
        assert_eq!(bytes, [0x90; 10]);
        assert_eq!((writes, flushes), (1, 1));
        // What was written gave its room back.
        assert_eq!(conn.shared.outbox.room(), 1 << 20);
    }

    /// A connection as the engine leaves it before anything is sent: the writer in its slot,
    /// inline writes allowed, and its writer task not started.
    fn lazily_written(recorder: &Recorder, queued: &[Packet]) -> (Conn, Arc<WriterTask>) {
        let writer = PacketWriter::Stream {
            io: Box::pin(recorder.clone()),
            buf: BytesMut::new(),
            #[cfg(feature = "gzip")]
            gzip: None,
        };
        let (conn, outbox) = Conn::new(super::super::tests::parts(1 << 20));
        for packet in queued {
            conn.try_send(packet.clone()).unwrap();
        }
        conn.shared.writer.put(writer);
        conn.shared.outbox.allow_inline();
        let busy = idle(&conn);
        let task = WriterTask::waiting(&conn, outbox, busy, Duration::from_secs(5));
        (conn, task)
    }

    fn started(task: &WriterTask) -> bool {
        matches!(*crate::sync::lock(&task.state), WriterTaskState::Started(_))
    }

    #[tokio::test]
    async fn the_writer_task_starts_only_when_a_packet_waits_for_it() {
        let recorder = Recorder::default();
        let (conn, task) = lazily_written(&recorder, &[]);
        assert!(!started(&task));
        // A lone packet is written by its sender, with no task to wake.
        conn.send_inline(notify(1, 10)).await.unwrap();
        assert_eq!(recorder.0.lock().unwrap().0, encoded(&[notify(1, 10)]));
        assert!(
            !started(&task),
            "a lone inline write started the writer task"
        );

        // A packet that only queues starts it, and it writes the packet.
        conn.try_send(notify(2, 10)).unwrap();
        assert!(started(&task));
        let sent = encoded(&[notify(1, 10), notify(2, 10)]);
        let written = || recorder.0.lock().unwrap().0 == sent;
        tokio::time::timeout(Duration::from_secs(10), async {
            while !written() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the queued packet written");

        // The engine takes its handle once, to wait for it as the connection ends.
        conn.shared.outbox.stop();
        let handle = task.start().expect("the task's handle");
        assert!(task.start().is_none());
        tokio::time::timeout(Duration::from_secs(10), handle)
            .await
            .expect("the writer task ends once stopped")
            .unwrap();
    }

    #[tokio::test]
    async fn packets_queued_before_the_engine_started_start_the_writer_task_at_once() {
        let recorder = Recorder::default();
        let (conn, task) = lazily_written(&recorder, &[notify(1, 10), notify(2, 10)]);
        // Nothing would wake a writer for them: they were queued with nobody waiting.
        assert!(started(&task));
        conn.shared.outbox.stop();
        let handle = task.start().expect("the task's handle");
        tokio::time::timeout(Duration::from_secs(10), handle)
            .await
            .expect("the writer task ends once stopped")
            .unwrap();
        let sent = encoded(&[notify(1, 10), notify(2, 10)]);
        assert_eq!(recorder.0.lock().unwrap().0, sent);
    }

    #[tokio::test]
    async fn a_connection_that_never_needed_its_writer_task_starts_it_to_close() {
        let recorder = Recorder::default();
        let (conn, task) = lazily_written(&recorder, &[]);
        conn.try_queue_inline(notify(1, 10)).unwrap();
        assert!(!started(&task));
        // The engine's ending: the Close queued, the writer stopped, the task awaited.
        conn.try_send(Packet::close(Code::Ok, "bye")).unwrap();
        conn.shared.outbox.stop();
        let handle = task.start().expect("the task's handle");
        tokio::time::timeout(Duration::from_secs(10), handle)
            .await
            .expect("the writer task ends once stopped")
            .unwrap();
        let sent = encoded(&[notify(1, 10), Packet::close(Code::Ok, "bye")]);
        assert_eq!(recorder.0.lock().unwrap().0, sent);
        // The task took the transport with it, and with the parts it held, nothing is left
        // that keeps the connection's shared state alive but `conn`.
        assert!(conn.shared.writer.take().writer.is_none());
        drop(task);
        assert_eq!(Arc::strong_count(&conn.shared), 1);
    }

    fn idle(conn: &Conn) -> Busy {
        Busy {
            conn: conn.clone(),
            handling: Arc::new(InFlight::new(16)),
        }
    }

    /// Ten answers: the first wakes the writer, the other nine are ready to run right behind
    /// it (on this single-threaded runtime, in that order). Returns the writes they took.
    async fn writes_for_ten_answers(handlers_running: usize) -> usize {
        let recorder = Recorder::default();
        let writer = PacketWriter::Stream {
            io: Box::pin(recorder.clone()),
            buf: BytesMut::new(),
            #[cfg(feature = "gzip")]
            gzip: None,
        };
        let (conn, outbox) = Conn::new(super::super::tests::parts(1 << 20));
        let busy = idle(&conn);
        let running = busy.handling.reserve(handlers_running).unwrap();
        let stall = Duration::from_secs(5);
        conn.shared.writer.put(writer);
        let writer_task = tokio::spawn(write_loop(outbox, busy, stall));
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
        conn.shared.outbox.stop();
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

    /// Takes `room` bytes, then waits until the test gives it more.
    #[derive(Clone, Default)]
    struct Throttled(Arc<Mutex<ThrottledState>>);

    #[derive(Default)]
    struct ThrottledState {
        bytes: Vec<u8>,
        room: usize,
        waiting: Option<std::task::Waker>,
    }

    impl Throttled {
        fn give(&self, room: usize) {
            let mut state = self.0.lock().unwrap();
            state.room += room;
            if let Some(waker) = state.waiting.take() {
                waker.wake();
            }
        }

        fn bytes(&self) -> Vec<u8> {
            self.0.lock().unwrap().bytes.clone()
        }
    }

    impl AsyncWrite for Throttled {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut TaskContext<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let mut state = self.0.lock().unwrap();
            if state.room == 0 {
                state.waiting = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let n = buf.len().min(state.room);
            state.room -= n;
            state.bytes.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: Pin<&mut Self>,
            _: &mut TaskContext<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn notify(seq: u8, len: usize) -> Packet {
        Packet::Notify(crate::wire::Notify {
            action: crate::wire::Action::Id(1),
            header: Header::new(),
            payload: bytes::Bytes::from(vec![seq; len]),
        })
    }

    fn encoded(packets: &[Packet]) -> Vec<u8> {
        let mut bytes = BytesMut::new();
        for packet in packets {
            packet.encode_stream(&mut bytes);
        }
        bytes.to_vec()
    }

    /// A connection whose writer task runs on `io` and waits for its first packet.
    async fn waiting_writer(
        io: impl AsyncWrite + Send + 'static,
        budget: usize,
    ) -> (Conn, tokio::task::JoinHandle<()>) {
        let (conn, task, _) = counted_waiting_writer(io, budget).await;
        (conn, task)
    }

    /// [`waiting_writer`], with the number of times its task has been polled.
    async fn counted_waiting_writer(
        io: impl AsyncWrite + Send + 'static,
        budget: usize,
    ) -> (
        Conn,
        tokio::task::JoinHandle<()>,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let writer = PacketWriter::Stream {
            io: Box::pin(io),
            buf: BytesMut::new(),
            #[cfg(feature = "gzip")]
            gzip: None,
        };
        let (conn, outbox) = Conn::new(super::super::tests::parts(budget));
        conn.shared.outbox.allow_inline();
        let stall = Duration::from_secs(5);
        let busy = idle(&conn);
        let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = polls.clone();
        conn.shared.writer.put(writer);
        let mut writing = Box::pin(write_loop(outbox, busy, stall));
        let task = tokio::spawn(std::future::poll_fn(move |cx| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            writing.as_mut().poll(cx)
        }));
        while !conn.shared.outbox.writer_waits() {
            tokio::task::yield_now().await;
        }
        (conn, task, polls)
    }

    #[tokio::test]
    async fn a_lone_packet_is_written_by_its_sender_without_waking_the_writer() {
        let recorder = Recorder::default();
        let (conn, writer_task) = waiting_writer(recorder.clone(), 1 << 20).await;
        conn.send_inline(notify(1, 10)).await.unwrap();
        // On the wire before this task has let any other run.
        assert_eq!(recorder.0.lock().unwrap().0, encoded(&[notify(1, 10)]));
        assert_eq!(conn.shared.outbox.room(), 1 << 20);
        assert!(
            conn.shared.outbox.writer_waits(),
            "the writer was not woken"
        );
        // With a packet queued, the next one queues behind it instead.
        conn.try_send(notify(2, 10)).unwrap();
        conn.shared.outbox.stop();
        writer_task.await.unwrap();
        let written = recorder.0.lock().unwrap().0.clone();
        assert_eq!(written, encoded(&[notify(1, 10), notify(2, 10)]));
    }

    #[tokio::test]
    async fn what_an_inline_write_leaves_goes_out_before_what_was_queued_after_it() {
        let io = Throttled::default();
        let (first, second, third) = (notify(1, 1000), notify(2, 1000), notify(3, 1000));
        let cost = |p: &Packet| super::super::budget::queue_cost(p, u32::MAX) as usize;
        // Room for the first two packets only.
        let budget = cost(&first) + cost(&second);
        let (conn, writer_task) = waiting_writer(io.clone(), budget).await;
        io.give(10);
        conn.send_inline(first.clone()).await.unwrap();
        assert_eq!(
            io.bytes().len(),
            10,
            "the sender wrote what the socket took"
        );
        conn.try_send(second.clone()).unwrap();
        // The first packet's bytes are not all out: its room is still taken.
        let full = conn.try_send(third.clone()).unwrap_err();
        assert_eq!(full.code(), Code::TooManyRequests);
        io.give(usize::MAX / 2);
        tokio::time::timeout(Duration::from_secs(5), async {
            while io.bytes().len() < encoded(&[first.clone(), second.clone()]).len() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        assert_eq!(io.bytes(), encoded(&[first.clone(), second.clone()]));
        // Written: the room came back, also that of the packet written inline.
        tokio::time::timeout(Duration::from_secs(5), async {
            while conn.shared.outbox.room() < budget {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        conn.try_send(third.clone()).unwrap();
        conn.shared.outbox.stop();
        writer_task.await.unwrap();
        assert_eq!(io.bytes(), encoded(&[first, second, third]));
    }

    fn handed_back(conn: &Conn, packet: Packet) -> super::super::DeferredWrite {
        match conn.offer_event_to_write(packet) {
            super::super::EventOffer::ToWrite(write) => write,
            _ => panic!("the idle writer's queue did not hand the event back"),
        }
    }

    #[tokio::test]
    async fn an_event_handed_back_to_a_broadcast_leaves_before_what_was_queued_after_it() {
        let recorder = Recorder::default();
        let (conn, writer_task) = waiting_writer(recorder.clone(), 1 << 20).await;
        let write = handed_back(&conn, notify(1, 10));
        // While the event waits for the broadcast to write it, the next one queues behind
        // it, and a direct send too: the writer takes nothing meanwhile.
        assert!(matches!(
            conn.offer_event_to_write(notify(2, 10)),
            super::super::EventOffer::Queued
        ));
        conn.try_send(notify(3, 10)).unwrap();
        tokio::task::yield_now().await;
        assert!(recorder.0.lock().unwrap().0.is_empty());
        super::super::write_deferred(vec![write]);
        // What queued behind the event joined its write: one write, one flush.
        assert_eq!(
            recorder.0.lock().unwrap().clone(),
            (
                encoded(&[notify(1, 10), notify(2, 10), notify(3, 10)]),
                1,
                1
            )
        );
        assert_eq!(conn.shared.outbox.room(), 1 << 20, "all room came back");
        conn.shared.outbox.stop();
        writer_task.await.unwrap();
    }

    #[tokio::test]
    async fn an_event_handed_back_and_never_written_goes_out_through_the_writer() {
        let recorder = Recorder::default();
        let (conn, writer_task) = waiting_writer(recorder.clone(), 1 << 20).await;
        let write = handed_back(&conn, notify(1, 10));
        conn.try_send(notify(2, 10)).unwrap();
        // A broadcast's chunk task dropped before it ran (its runtime shutting down, say).
        drop(write);
        conn.shared.outbox.stop();
        tokio::time::timeout(Duration::from_secs(5), writer_task)
            .await
            .expect("the writer was not left waiting for the dropped write")
            .unwrap();
        let written = recorder.0.lock().unwrap().0.clone();
        assert_eq!(written, encoded(&[notify(1, 10), notify(2, 10)]));
        assert_eq!(conn.shared.outbox.room(), 1 << 20, "all room came back");
    }

    /// `n` connections whose writers wait, each writing into its own recorder.
    async fn waiting_writers(n: usize) -> Vec<(Conn, tokio::task::JoinHandle<()>, Recorder)> {
        let mut conns = Vec::new();
        for _ in 0..n {
            let recorder = Recorder::default();
            let (conn, writer_task) = waiting_writer(recorder.clone(), 1 << 20).await;
            conns.push((conn, writer_task, recorder));
        }
        conns
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_chunk_of_handed_back_events_is_written_before_the_broadcast_ends() {
        let conns = waiting_writers(64).await;
        let mut gathering = super::super::DeferredWrites::default();
        for (conn, _, _) in &conns {
            gathering.push(handed_back(conn, notify(9, 20)));
        }
        // The broadcast has not finished: the chunk left when it was full.
        let want = encoded(&[notify(9, 20)]);
        tokio::time::timeout(Duration::from_secs(10), async {
            for (_, _, recorder) in &conns {
                while recorder.0.lock().unwrap().0 != want {
                    tokio::task::yield_now().await;
                }
            }
        })
        .await
        .expect("the full chunk was written while the broadcast went on");
        gathering.finish();
        for (conn, writer_task, _) in conns {
            conn.shared.outbox.stop();
            writer_task.await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broadcast_without_a_runtime_writes_every_event_where_it_finishes() {
        let conns = waiting_writers(130).await;
        let writes: Vec<_> = conns
            .iter()
            .map(|(conn, _, _)| handed_back(conn, notify(3, 20)))
            .collect();
        let recorders: Vec<_> = conns.iter().map(|(_, _, r)| r.clone()).collect();
        let want = encoded(&[notify(3, 20)]);
        // A thread of its own has no runtime to spawn chunks on.
        std::thread::spawn(move || {
            let mut gathering = super::super::DeferredWrites::default();
            writes.into_iter().for_each(|write| gathering.push(write));
            let written = |r: &Recorder| r.0.lock().unwrap().0.clone();
            assert!(recorders.iter().all(|r| written(r).is_empty()));
            gathering.finish();
            assert!(recorders.iter().all(|r| written(r) == want));
        })
        .join()
        .unwrap();
        for (conn, writer_task, _) in conns {
            assert_eq!(conn.shared.outbox.room(), 1 << 20, "all room came back");
            conn.shared.outbox.stop();
            writer_task.await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broadcast_writes_handed_back_events_in_chunks_without_waking_writers() {
        let mut conns = Vec::new();
        for _ in 0..300 {
            let recorder = Recorder::default();
            let (conn, writer_task, polls) =
                counted_waiting_writer(recorder.clone(), 1 << 20).await;
            conns.push((conn, writer_task, recorder, polls));
        }
        let polled_before: Vec<usize> = conns
            .iter()
            .map(|(_, _, _, polls)| polls.load(std::sync::atomic::Ordering::SeqCst))
            .collect();
        let writes = conns
            .iter()
            .map(|(conn, _, _, _)| handed_back(conn, notify(7, 20)))
            .collect();
        super::super::write_deferred(writes);
        let want = encoded(&[notify(7, 20)]);
        tokio::time::timeout(Duration::from_secs(10), async {
            for (conn, _, recorder, _) in &conns {
                while recorder.0.lock().unwrap().0 != want || conn.shared.outbox.room() < 1 << 20 {
                    tokio::task::yield_now().await;
                }
            }
        })
        .await
        .expect("every event written and its room given back");
        for ((conn, writer_task, recorder, polls), before) in conns.into_iter().zip(polled_before) {
            assert_eq!(
                polls.load(std::sync::atomic::Ordering::SeqCst),
                before,
                "the writer task was not woken for a handed-back event"
            );
            assert_eq!(recorder.0.lock().unwrap().1, 1, "one write");
            conn.shared.outbox.stop();
            writer_task.await.unwrap();
        }
    }
}
