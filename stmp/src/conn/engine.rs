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
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep, sleep_until};
use tokio_util::task::TaskTracker;

use super::Drain;
use super::budget::InFlight;
use super::close_request::Heard;
use super::io::{PacketStream, PacketWriter};
use super::outbox::DEFERRAL_WATCH;
use super::state::{Action, ConnState, Ending, Held, error_response};
use super::writer_task::{Busy, Finishing, StopWriterOnDrop, WriterParts, WriterTask};
use super::{Answers, Conn, ConnParts, Outbox, Refused, Side};
use crate::broadcast::SlowConsumer;
use crate::codec::Codec;
use crate::context::SpareContext;
use crate::router::{ActionTarget, ActionTargets, Started};
use crate::stats::Counters;
use crate::transport::Scheme;
use crate::wire::{Header, Packet, Request, Response};
use crate::{Code, Context, Router, Status};

/// Packets the read loop handles before it lets other tasks run: packets already decoded
/// (a burst inflated by gzip, say) would otherwise be handled without ever yielding.
const YIELD_EVERY: u8 = 64;

/// How many times the engine looks for more input before it waits, after a burst of two
/// packets or more; between looks it yields, so the worker runs what is ready (the callers
/// a burst of answers woke, quinn's connection task) and polls its I/O. A busy peer's next
/// packets often come within those turns, and a waiting engine costs a park of its worker
/// and a wake-up when they come, which on the 2-vCPU hosts here cost more than the looks. A
/// lone packet (an event, one call at a time) is not followed by more, and its engine waits
/// at once.
///
/// Where the peer takes longer than the looks (16 calls in flight on one connection, there),
/// looking every time cost 15 % to 20 % of the calls a second, for the CPU the looks took
/// from the peer: once looking finds nothing, the engine waits at once for the next
/// [`LOOKS_REST`] bursts. Alternated rounds, 32 B, session 43 (`stmp-bench/README.md`): at 64
/// calls in flight stmp quic 609.5k → 787.6k req/s and stmp tcp 812.6k → 836.8k; at 128 stmp
/// quic 735.8k → 857.0k and stmp tcp 1,032k → 1,004k; at 16 unchanged.
const LOOKS_BEFORE_WAITING: u8 = 4;

/// Bursts after which the engine waits at once, since its last looks found nothing.
const LOOKS_REST: u8 = 16;

/// Answers held in a burst before they are written without waiting for its end. Held to the
/// end of a long burst, the first answers wait for the last requests' handling while the peer
/// idles; each group written early costs a write. 16 is what the peer does with the
/// responses it reads (`Answers::MAX`). With 64 calls in flight on one connection this made
/// 12 % more calls a second, and with 32 or 128 as many as before; 8 was faster at 64 but 14 %
/// slower at 128 (`stmp-bench/README.md`).
const WRITE_HELD_AT: u8 = 16;

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
        scheme: Scheme,
        peer_header: Header,
        codec: Codec,
    ) -> (Conn, Outbox) {
        Conn::new(ConnParts {
            side: self.side,
            remote_addr,
            scheme,
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
        let writer_task = WriterTask::waiting(
            &conn,
            WriterParts {
                outbox,
                busy,
                stall: self.config.write_stall_timeout,
            },
        );
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

/// Queues a packet the engine answers with (Pong, a refused request) as `placement` says: a
/// lone one is written at once when the writer waits with nothing queued, so an idle
/// connection's heartbeat never starts its writer task. When the send queue is full the
/// packet waits, and so does reading: a peer that does not read its answers stops being
/// read, and a reply is never dropped.
fn reply(conn: &Conn, packet: Packet, placement: Placement) -> Option<Parked> {
    match placement.queue(conn, packet) {
        Ok(()) | Err(Refused::Closed) => None,
        Err(Refused::Full(packet)) => {
            let conn = conn.clone();
            Some(Box::pin(async move { conn.send(packet).await }))
        }
    }
}

/// How the engine queues an answer of its own (a handler's ready at once, a Pong, a refusal).
#[derive(Clone, Copy)]
enum Placement {
    /// No more input at hand and nothing held: written at once when the writer waits.
    Alone,
    /// More of a burst to come, or answers held before it: queued for the write that ends the
    /// burst ([`Conn::write_held`]).
    Held,
}

impl Placement {
    fn queue(self, conn: &Conn, packet: Packet) -> Result<(), Refused> {
        match self {
            Placement::Alone => conn.try_queue_inline(packet),
            Placement::Held => conn.try_queue_held(packet),
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
            state,
            reader,
            writer_task,
            router,
            config,
            tasks,
        } = self;
        // Built before the future: moved in, the parts would stay in its state beside it.
        let mut turn = Turn {
            book: Bookkeeping::new(),
            conn,
            reader,
            listeners: Listeners::default(),
            handling: state.handler_slots(),
            tasks,
            calls_due: Alarm::default(),
            state,
            grace: Alarm::default(),
            deferral_watch: Alarm::default(),
            targets: ActionTargets::new(router),
            answers: Answers::default(),
        };
        async move {
            // Two timers for the state's two deadlines: the close grace is watched before
            // reading (a peer that floods cannot hold a closing connection open), the heartbeat
            // after it. Each is re-armed only when its deadline moves, which packets never do.
            let heartbeat = sleep_until(Instant::from_std(turn.state.heartbeat_at()));
            tokio::pin!(heartbeat);

            let ending = loop {
                // Before the next packet is taken rather than with one in hand: whatever is
                // held across an await is kept in the future's state, written out to memory
                // of its own on every packet.
                if turn.book.since_yield >= YIELD_EVERY {
                    turn.book.since_yield = 0;
                    turn.end_burst();
                    tokio::task::yield_now().await;
                    turn.wake_relayed();
                }
                // A packet whose bytes are already buffered is taken without the wait below
                // unless reading is parked, the connection closes, or something the wait
                // watches before reading is due. Per packet, the wait polled the close request
                // and two timers (registering a waker each time) to find nothing due. (The
                // heartbeat is not among them: the wait looks at it after reading.)
                let watched_first = turn.is_anything_due();
                let step = 'step: {
                    if !watched_first && let Some(item) = turn.reader.as_mut().next_buffered() {
                        break 'step Step::Read(Some(item));
                    }
                    // Nothing more at hand: the callers answered so far get their answers now,
                    // and the answers queued so far leave.
                    turn.end_burst();
                    let looks = turn.book.looks_before_waiting();
                    let (woke, found) = turn.wait(heartbeat.as_mut(), looks).await;
                    turn.book.looked(looks, found);
                    turn.woke(woke)
                };
                let Turn {
                    book,
                    reader,
                    targets,
                    listeners,
                    handling,
                    tasks,
                    conn,
                    state,
                    deferral_watch,
                    answers,
                    ..
                } = &mut turn;
                let action = match step {
                    Step::Act(action) => action,
                    Step::Read(Some(Ok(packet))) => {
                        book.since_yield += 1;
                        book.burst = book.burst.saturating_add(1);
                        // A packet decoded from bytes an earlier read brought arrived with
                        // that read: the clock is read once per read, not once per packet.
                        if reader.as_mut().took_a_read() {
                            book.arrived = now();
                        }
                        state.handle_packet(book.arrived, packet)
                    }
                    Step::Read(Some(Err(status))) => {
                        if status.code() != Code::NetworkError {
                            tracing::debug!(conn = conn.id(), %status, "closing on bad input");
                        }
                        Action::End(state.handle_read_end(Some(status)))
                    }
                    Step::Read(None) => Action::End(state.handle_read_end(None)),
                };
                // Responses wait only for the responses right behind them: whatever else
                // the peer sent after them finds their calls answered.
                if book.answering && !matches!(action, Action::Complete(_)) {
                    hand_over(conn, answers, book, deferral_watch);
                }
                match action {
                    Action::Idle => {}
                    Action::Reply(packet) => {
                        // Answers held before it: this one joins them in the burst's write.
                        let alone = book.held == 0 && !reader.as_mut().has_buffered();
                        book.parked = reply(conn, packet, book.placement(alone));
                        book.write_held_if_many(conn);
                    }
                    // A Ping or a Close costs no room: it gets through a full queue.
                    Action::Signal(close @ Packet::Close(_)) => conn.send_close(close),
                    Action::Signal(packet) => {
                        let _ = conn.try_queue_inline(packet);
                    }
                    Action::Handle(request, held) => {
                        // The only work under way, and no more input at hand: its answer may
                        // leave at once from this task rather than through the writer's.
                        let alone = handling.used() == 1
                            && conn.pending_calls() == 0
                            && book.held == 0
                            && !reader.as_mut().has_buffered();
                        let placement = book.placement(alone);
                        handle(conn, targets, tasks, book, request, held, placement);
                        book.write_held_if_many(conn);
                    }
                    Action::Deliver(notify, held) => {
                        let target = targets.get(&notify.action);
                        let ctx =
                            book.spare
                                .fill(conn, notify.action, target.method(), notify.header);
                        // Most notifies finish without waiting, and those run right here; one
                        // that arrives while an earlier one waits queues behind it, in order.
                        let left = match listeners.idle() {
                            true => target.start_notify(&ctx, notify.payload),
                            false => Some(target.clone().run_notify(ctx.clone(), notify.payload)),
                        };
                        book.spare.keep(ctx);
                        if let Some(left) = left {
                            let listening: Listening = Box::pin(async move {
                                left.await;
                                drop(held);
                            });
                            match listeners.queue(listening, config.event_queue) {
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
                        book.answering = true;
                        if answers.push(response) {
                            hand_over(conn, answers, book, deferral_watch);
                        }
                    }
                    Action::End(ending) => break ending,
                }
                if book.parked.is_some() && !state.is_reading_paused() {
                    state.pause_reading();
                }
                if let Some(at) = state.take_heartbeat_move() {
                    heartbeat.as_mut().reset(Instant::from_std(at));
                    // Polled again on the next wait, for the new deadline.
                    book.heartbeat_waker = None;
                }
                if book.watching_deferral && deferral_watch.is_elapsed() {
                    deferral_watch.set(Instant::now() + DEFERRAL_WATCH);
                }
                // Once per heartbeat, after its Ping went out: a connection with nothing under
                // way lets its writer task go (a burst started it), to start another when a
                // packet next waits for one. A busy one keeps it.
                if std::mem::take(&mut book.heartbeat_rang)
                    && handling.used() == 0
                    && conn.pending_calls() == 0
                {
                    writer_task.task.retire_if_waiting(conn);
                    // What a burst the engine answered itself left (no task ran to give it
                    // back as it retired): the write buffer, the send queue's slots.
                    conn.shared.writer.give_back_buffers();
                    conn.shared.outbox.give_back_slots();
                    conn.shared.pending.shrink();
                    book.spare.clear();
                    answers.shrink();
                }
            };

            let conn = turn.conn.clone();
            drop(turn);
            // Boxed: room for the closing's state would otherwise sit in every connection's
            // future for its whole life.
            Box::pin(finish(conn, ending, &writer_task.task, config.close_grace)).await;
        }
    }
}

/// The engine's state between packets, in one block laid out by hand: what every packet reads
/// or writes is packed into its first 192 bytes (and the first 32 of the targets). With
/// thousands of connections each one's wake-up finds its engine out of the cache, and every
/// cache line a packet touches is a miss of its own. Left to the compiler, these fields and
/// what the loop held across its awaits were spread over the whole of the engine's future:
/// nine lines missed per event, against five now (cachegrind, a client receiving a broadcast;
/// see `stmp-bench/README.md`).
#[repr(C)]
struct Turn {
    // Bytes 0 to 64.
    book: Bookkeeping,
    // 64 to 128.
    reader: PacketStream,
    conn: Conn,
    listeners: Listeners,
    handling: Arc<InFlight>,
    tasks: TaskTracker,
    /// The alarm for the deadlines of this side's calls (see `pending`), set by the calls'
    /// table, which says when it should ring next each time it rings. Like the other two
    /// alarms it is made when first set (see `Alarm`).
    calls_due: Alarm,
    // From 128: the state, its fields that every packet touches first (see `ConnState`).
    state: ConnState,
    /// The close grace.
    grace: Alarm,
    /// Set while answered callers are expected back (see `SendQueue::release_deferred`).
    deferral_watch: Alarm,
    /// What this connection's requests and notifies run through, resolved once per action
    /// while the router does not change; what a lookup reads comes first.
    targets: ActionTargets,
    /// Responses read since the engine last handed some over: they go to their calls
    /// together (see `Answers`), before the engine waits or handles anything else.
    answers: Answers,
}

impl Turn {
    /// Wakes the answered callers still left in the relay: called after a yield, once the
    /// worker has run what it had, which includes the relay when it is not held up.
    fn wake_relayed(&self) {
        let woken = self.conn.shared.pending.wake_relayed();
        if woken > 0 {
            tracing::trace!(
                conn = self.conn.id(),
                woken,
                "woke the callers left in the relay"
            );
        }
    }

    /// Ends a burst of packets read: hands over the responses, writes the answers held.
    fn end_burst(&mut self) {
        if std::mem::take(&mut self.book.held) > 0 {
            self.conn.write_held();
        }
        if self.book.answering {
            hand_over(
                &self.conn,
                &mut self.answers,
                &mut self.book,
                &mut self.deferral_watch,
            );
        }
    }

    /// Waits for what wakes the engine next. With `looks`, it first yields up to that many
    /// times while nothing is there (see [`LOOKS_BEFORE_WAITING`]); returns what woke it and
    /// whether that came while it looked.
    ///
    /// With answered callers left in the relay, it yields at least once, and then wakes
    /// whoever is still there (see [`Calls::wake_relayed`](super::pending::Calls::wake_relayed)).
    async fn wait(&mut self, mut heartbeat: Pin<&mut Sleep>, mut looks: u8) -> (Woke, bool) {
        let mut relaying = self.conn.shared.pending.is_relaying();
        while looks > 0 || relaying {
            let polled =
                std::future::poll_fn(|cx| Poll::Ready(self.poll_wait(cx, heartbeat.as_mut())))
                    .await;
            if let Poll::Ready(woke) = polled {
                return (woke, true);
            }
            looks = looks.saturating_sub(1);
            tokio::task::yield_now().await;
            if std::mem::take(&mut relaying) {
                self.wake_relayed();
            }
        }
        let woke = std::future::poll_fn(|cx| self.poll_wait(cx, heartbeat.as_mut())).await;
        (woke, false)
    }

    /// Whether something the wait watches needs a look before a buffered packet is taken.
    fn is_anything_due(&self) -> bool {
        let book = &self.book;
        book.parked.is_some()
            || self.state.is_closing()
            || self.conn.shared.close_requested.is_raised()
            || (book.calls_waiting && self.calls_due.is_elapsed())
            || (book.watching_deferral && self.deferral_watch.is_elapsed())
    }

    /// The engine's wait, polled by hand in a fixed order rather than through `select!`, which
    /// makes every branch's future anew on every turn: memory written on every packet, out of
    /// the cache on a connection that wakes once per event.
    fn poll_wait(
        &mut self,
        cx: &mut std::task::Context<'_>,
        heartbeat: Pin<&mut Sleep>,
    ) -> Poll<Woke> {
        let closing = self.state.is_closing();
        // The writer's failure always; a close request until closing.
        if let Poll::Ready(heard) = self.conn.shared.close_requested.poll_heard(cx, !closing) {
            return Poll::Ready(Woke::Heard(heard));
        }
        if self.book.calls_waiting && self.calls_due.poll_rung(cx).is_ready() {
            return Poll::Ready(Woke::CallsDue);
        }
        if self.book.watching_deferral && self.deferral_watch.poll_rung(cx).is_ready() {
            return Poll::Ready(Woke::DeferralDue);
        }
        if closing && self.grace.poll_rung(cx).is_ready() {
            return Poll::Ready(Woke::GraceDue);
        }
        match &mut self.book.parked {
            Some(parked) => {
                if let Poll::Ready(queued) = parked.as_mut().poll(cx) {
                    return Poll::Ready(Woke::Unparked(queued));
                }
            }
            None => {
                if let Poll::Ready(item) = self.reader.as_mut().poll_next(cx) {
                    return Poll::Ready(Woke::Read(item));
                }
            }
        }
        self.poll_heartbeat(cx, heartbeat)
    }

    /// Polls the heartbeat's timer when it may have rung (its deadline has passed) or when it
    /// does not hold this task's waker yet; otherwise it is known to be pending.
    fn poll_heartbeat(
        &mut self,
        cx: &mut std::task::Context<'_>,
        heartbeat: Pin<&mut Sleep>,
    ) -> Poll<Woke> {
        let book = &mut self.book;
        let holds_ours =
            (book.heartbeat_waker.as_ref()).is_some_and(|held| held.will_wake(cx.waker()));
        if holds_ours && now() < self.state.heartbeat_at() {
            return Poll::Pending;
        }
        match heartbeat.poll(cx) {
            Poll::Ready(()) => {
                book.heartbeat_waker = None;
                Poll::Ready(Woke::Heartbeat)
            }
            Poll::Pending => {
                if !holds_ours {
                    book.heartbeat_waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }

    /// What the engine does about what ended its wait.
    fn woke(&mut self, woke: Woke) -> Step {
        let (state, book, conn) = (&mut self.state, &mut self.book, &self.conn);
        match woke {
            Woke::Read(item) => Step::Read(item),
            Woke::Heard(Heard::WriteFailed(status)) => {
                Step::Act(Action::End(state.handle_write_failed(status)))
            }
            Woke::Heard(Heard::CloseRequested) => {
                let action = state.close(now(), requested(conn));
                if let Some(deadline) = state.close_deadline() {
                    self.grace.set(Instant::from_std(deadline));
                }
                Step::Act(action)
            }
            Woke::Heard(Heard::SoonerDeadline) | Woke::CallsDue => {
                book.calls_waiting = set_alarm(&mut self.calls_due, conn.expire_calls(now()));
                Step::Act(Action::Idle)
            }
            Woke::DeferralDue => {
                conn.shared.pending.wake_relayed();
                book.watching_deferral = conn.shared.outbox.release_deferred();
                Step::Act(Action::Idle)
            }
            Woke::GraceDue => Step::Act(state.handle_timeout(now())),
            Woke::Unparked(queued) => {
                book.parked = None;
                Step::Act(match queued {
                    Ok(()) => {
                        state.resume_reading(now());
                        Action::Idle
                    }
                    Err(status) => Action::End(state.handle_write_failed(status)),
                })
            }
            Woke::Heartbeat => {
                book.heartbeat_rang = true;
                Step::Act(state.handle_timeout(now()))
            }
        }
    }
}

/// What the engine's loop reads or changes on every packet besides the state: one cache line's
/// worth, the first of the [`Turn`].
#[repr(C)]
struct Bookkeeping {
    /// When the packet being handled was read: a request's duration counts from there.
    arrived: std::time::Instant,
    /// The waker the heartbeat's timer holds, from the wait that last polled it, until it
    /// rings or moves. While it holds this task's, a wait before the deadline leaves the
    /// timer alone: polled, it read and wrote two cache lines of its own per event on a
    /// connection that wakes once per event.
    heartbeat_waker: Option<Waker>,
    /// Reading waits for room to queue a reply, or for listeners to catch up.
    parked: Option<Parked>,
    /// The last packet's context, for the next one; let go of once the connection is quiet.
    spare: SpareContext,
    /// Packets handled since the engine last gave other tasks a turn.
    since_yield: u8,
    /// Answers queued held since the engine last wrote those: [`Conn::write_held`] is due at
    /// the burst's end, or once there are [`WRITE_HELD_AT`].
    held: u8,
    /// A call of this side waits for its answer: the calls' alarm is set.
    calls_waiting: bool,
    /// Whether answered callers are expected back: see `SendQueue::release_deferred`.
    watching_deferral: bool,
    /// The heartbeat timer rang on this turn of the loop.
    heartbeat_rang: bool,
    /// Responses wait in the `Turn`'s `answers` to be handed over: known from here, so that a
    /// packet that is not a response (an event, on most connections) does not read that line.
    answering: bool,
    /// Packets read since the engine last waited (up to 255).
    burst: u8,
    /// Bursts left after which the engine waits without looking for more first: its last
    /// looks found nothing.
    looks_rest: u8,
}

impl Bookkeeping {
    fn new() -> Bookkeeping {
        Bookkeeping {
            // When the packet being handled was read: a request's duration counts from there.
            arrived: now(),
            heartbeat_waker: None,
            parked: None,
            spare: SpareContext::default(),
            since_yield: 0,
            held: 0,
            calls_waiting: false,
            watching_deferral: false,
            heartbeat_rang: false,
            answering: false,
            burst: 0,
            looks_rest: 0,
        }
    }

    /// How many times to look for more before waiting, as the burst that just ended was
    /// read (see [`LOOKS_BEFORE_WAITING`]).
    fn looks_before_waiting(&mut self) -> u8 {
        if std::mem::take(&mut self.burst) < 2 {
            return 0;
        }
        if self.looks_rest > 0 {
            self.looks_rest -= 1;
            return 0;
        }
        LOOKS_BEFORE_WAITING
    }

    /// Notes what `looks` found: nothing, and the next bursts are not looked after.
    fn looked(&mut self, looks: u8, found: bool) {
        if looks > 0 && !found {
            self.looks_rest = LOOKS_REST;
        }
    }

    /// Where the engine's next answer goes, `alone` or not; notes an answer held.
    ///
    /// Every transport holds a burst's answers for the engine's own write, QUIC too: there
    /// the write only hands the bytes to quinn's connection task, but queued for the writer
    /// task they cost that task's wake-up and a hop before quinn's (session 42: stmp quic at
    /// 64 calls in flight 293k req/s queued, 338k held; `stmp-bench/README.md`).
    fn placement(&mut self, alone: bool) -> Placement {
        if alone {
            return Placement::Alone;
        }
        self.held = self.held.saturating_add(1);
        Placement::Held
    }

    /// Writes the answers held so far once there are [`WRITE_HELD_AT`] of them, without
    /// waiting for the burst's end.
    fn write_held_if_many(&mut self, conn: &Conn) {
        if self.held >= WRITE_HELD_AT {
            self.held = 0;
            conn.write_held();
        }
    }
}

/// What ended the engine's wait, in the order it looks: what the close request heard, the
/// calls' alarm, the deferral watch, the close grace, the parked packet queued (or, when none
/// is parked, a packet read), the heartbeat.
enum Woke {
    Heard(Heard),
    CallsDue,
    DeferralDue,
    GraceDue,
    Unparked(Result<(), Status>),
    Read(Option<Result<Packet, Status>>),
    Heartbeat,
}

/// What one turn of the engine's loop got: an action from what it watches, or what the reader
/// gave.
enum Step {
    Act(Action),
    Read(Option<Result<Packet, Status>>),
}

/// A timer that rarely rings, made the first time it is set: most connections never close
/// with a grace, wait for no call of their own and expect no callers back, and an idle one
/// should not hold a timer on the heap (128 B each) for each of those. Boxed when made, out of
/// the way of what every packet reads.
#[derive(Default)]
struct Alarm(Option<Pin<Box<tokio::time::Sleep>>>);

impl Alarm {
    fn set(&mut self, at: Instant) {
        match &mut self.0 {
            Some(timer) if timer.deadline() == at => {}
            Some(timer) => timer.as_mut().reset(at),
            None => self.0 = Some(Box::pin(sleep_until(at))),
        }
    }

    fn is_elapsed(&self) -> bool {
        self.0.as_ref().is_some_and(|timer| timer.is_elapsed())
    }

    /// Ready at the deadline last set; never, before one is.
    fn poll_rung(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        match &mut self.0 {
            Some(timer) => timer.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

/// Sets the calls' alarm to ring at `at` (left as it is when no call waits); returns whether
/// a call waits.
fn set_alarm(alarm: &mut Alarm, at: Option<std::time::Instant>) -> bool {
    if let Some(ring) = at {
        alarm.set(Instant::from_std(ring));
    }
    at.is_some()
}

/// Hands the responses read so far to their calls; once callers are woken, the deferral watch
/// looks after the calls they may hold back.
fn hand_over(conn: &Conn, answers: &mut Answers, book: &mut Bookkeeping, watch: &mut Alarm) {
    book.answering = false;
    let handed = conn.complete_calls(answers);
    if handed == 0 {
        tracing::trace!(conn = conn.id(), "dropping responses nobody waits for");
    } else if !book.watching_deferral {
        book.watching_deferral = true;
        watch.set(Instant::now() + DEFERRAL_WATCH);
    }
}

/// Runs a request's handler; `held` (its slot and bytes) is given back once it has answered.
/// An answer ready at once is queued by this task as `placement` says (and written by it when
/// alone, or at the end of the burst when held). The
/// request's context is `book`'s spare one, filled in, and goes back there when the handler
/// is done with it.
fn handle(
    conn: &Conn,
    targets: &mut ActionTargets,
    tasks: &TaskTracker,
    book: &mut Bookkeeping,
    request: Request,
    held: Held,
    placement: Placement,
) {
    let (spare, arrived) = (&mut book.spare, book.arrived);
    let target = targets.get(&request.action);
    let ctx = spare.fill(conn, request.action, target.method(), request.header);
    // Tracked from the start, not from `spawn`, and until the answer is queued: a shutdown
    // that looks while the handler runs inline must wait for it.
    let tracked = tasks.token();
    let mid = request.mid;
    let span = crate::telemetry::call_span(target.series(), target.method());
    // Most handlers answer without waiting: they run here until their first await, and only
    // the ones that wait (or whose answer waits for room) get a task of their own.
    let started = span.in_scope(|| target.start_request(&ctx, request.payload));
    let response = match started {
        Started::Done(outcome) => {
            let response = span.in_scope(|| answer(target, &ctx, mid, outcome, arrived));
            spare.keep(ctx);
            response
        }
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
    if let Err(Refused::Full(response)) = placement.queue(conn, response) {
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
        .map(|status| Status::clone(status))
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
async fn finish(conn: Conn, ending: Ending, writer_task: &Arc<WriterTask>, grace: Duration) {
    let Ending { status, send_close } = ending;
    if send_close {
        // Written here when the writer waits with nothing queued, as a quiet connection's
        // does: it then needs no writer task to close either.
        conn.send_close(Packet::close(status.code(), status.message()));
    }
    tracing::debug!(conn = conn.id(), %status, "connection closed");
    let _ = conn.shared.close_status.set(Box::new(status.clone()));
    conn.fail_calls(&status);
    // The writer's last turn writes what is queued, the Close among it: in its task if one
    // runs, here otherwise. Given up on (dropped, or the task aborted) after the grace.
    let flushed = match writer_task.finish(&conn) {
        Finishing::Done => true,
        Finishing::Here(writing) => tokio::time::timeout(grace, writing).await.is_ok(),
        Finishing::Task(mut task) => {
            let flushed = tokio::time::timeout(grace, &mut task).await.is_ok();
            if !flushed {
                task.abort();
                let _ = task.await;
            }
            flushed
        }
    };
    if !flushed {
        tracing::debug!(
            conn = conn.id(),
            "the peer does not read; dropping the connection"
        );
    }
    conn.mark_closed(&status);
}

/// A notify's listeners at work; it holds the notify's bytes in the budgets until done.
type Listening = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs a connection's notifies through their listeners one at a time, in the order they
/// arrived. Most listeners finish without waiting, and those run right here on the read
/// task: a task hop per event is what a broadcast to many connections pays for on every
/// receiving side. A listener that waits moves to a task of its own, and the notifies after
/// it queue behind it there until it and they are done.
#[derive(Default)]
struct Listeners {
    /// Made when a listener first waits: many connections never receive a notify, and
    /// idle ones should not pay for a queue and a task (nor look at a counter elsewhere in
    /// memory for every event they get).
    queue: Option<ListenerQueue>,
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
    /// Whether no listener waits: a notify may then run right away, on the reading task.
    fn idle(&self) -> bool {
        self.queue
            .as_ref()
            .is_none_or(|queue| queue.behind.load(Ordering::Acquire) == 0)
    }

    /// Hands a notify that waits (or must wait its turn) to the listeners' task.
    fn queue(&mut self, listening: Listening, capacity: usize) -> Delivered {
        let capacity = capacity.max(1);
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
    use std::mem::{offset_of, size_of};

    use super::*;

    /// Reads a burst of `packets`; returns the looks the engine takes before it waits, and
    /// notes whether they `found` more.
    fn burst(book: &mut Bookkeeping, packets: u8, found: bool) -> u8 {
        book.burst = packets;
        let looks = book.looks_before_waiting();
        book.looked(looks, found);
        looks
    }

    #[test]
    fn the_engine_looks_for_more_after_bursts_until_looking_finds_nothing() {
        let mut book = Bookkeeping::new();
        // A lone packet is not followed by more.
        assert_eq!(burst(&mut book, 1, false), 0);
        assert_eq!(burst(&mut book, 2, true), LOOKS_BEFORE_WAITING);
        assert_eq!(burst(&mut book, 200, true), LOOKS_BEFORE_WAITING);
        // Looking found nothing: the next bursts are not looked after, then it tries again.
        assert_eq!(burst(&mut book, 30, false), LOOKS_BEFORE_WAITING);
        for rest in 0..LOOKS_REST {
            assert_eq!(burst(&mut book, 30, false), 0, "burst {rest} of the rest");
        }
        assert_eq!(burst(&mut book, 30, true), LOOKS_BEFORE_WAITING);
        assert_eq!(burst(&mut book, 30, true), LOOKS_BEFORE_WAITING);
    }

    #[test]
    fn what_every_packet_touches_is_packed_at_the_start_of_the_turn() {
        assert!(size_of::<Bookkeeping>() <= 64);
        assert_eq!(offset_of!(Turn, reader), 64);
        assert!(offset_of!(Turn, calls_due) + size_of::<Alarm>() <= 128);
        assert_eq!(offset_of!(Turn, state), 128);
    }
}
