//! A connection's send queue: packets in order, from any number of senders to the one writer,
//! bounded by a byte budget.
//!
//! Not a tokio channel because of what an idle connection pays: an mpsc channel allocates its
//! first block of 32 slots (about 3 KiB of packets) when it is made and keeps it for life,
//! while a real-time server holds mostly idle connections. This queue keeps a few slots at
//! most while it is empty, and the writer takes what is queued in one step under one lock.
//!
//! The budget lives under the same lock rather than in a semaphore of its own: a broadcast
//! queues one packet on each of thousands of connections whose state is cold in the cache,
//! and every separate structure it touches per connection is another miss. Room is handed
//! out as a fair semaphore would: senders that wait get released room in the order they came,
//! before anyone who merely tries.
//!
//! A sender may also write its packet itself ("inline") when the writer waits with nothing
//! queued, saving the hop to the writer's task on a lone call. While it writes, the writer
//! task is neither woken nor allowed to take packets, so what is queued meanwhile goes out
//! after the inline packets: the queue's order is the wire's order.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use super::budget::queue_cost;
use crate::sync::lock;
use crate::transport::Scheme;
use crate::wire::Packet;

/// The slots beyond the first that an emptied queue keeps (under half a KiB).
pub(super) const KEEP: usize = 4;

/// The slots beyond the first that an emptied queue keeps while its connection is busy (it
/// has calls or handlers under way, or its last write carried several packets): a busy
/// connection's queue refills at once, and growing it again from [`KEEP`] on every write cost
/// four reallocations per write of 64 calls. A connection that goes quiet keeps the room
/// until its next write of a lone packet, or until its writer task retires.
const KEEP_BUSY: usize = 64;

/// While callers are coming back, the packets a write waits for at most: enough that a write
/// carries many calls, few enough that the peer gets the first of them before the last caller
/// is back (waiting for all 64 of a busy connection's callers made the two ends take turns).
/// A burst's callers come back one after another (see `pending::Pending::relay`), so a small
/// batch gets the peer working sooner while the rest of the relay runs. Against 16, medians of
/// alternated rounds, 32 B, stmp tcp at 64 in flight, five sets: 733k → 950k, 678k → 759k,
/// 712k → 747k, 858k → 834k, 691k → 742k req/s; stmp ws in three: 649k → 706k, 794k → 737k,
/// 656k → 669k; at 16 in flight 234k → 251k, at 128 946k → 889k. A small gain at the point it
/// was tuned on, within the host's noise in some sets.
const GATHER: usize = 8;

/// [`GATHER`] over QUIC, where every write is a datagram that the client's own QUIC stack
/// encrypts and sends: stmp quic at 64 in flight, 32 B, three alternated rounds, 772k, 954k
/// and 866k req/s against 766k, 765k and 576k with 8 (session 51).
const GATHER_QUIC: usize = 16;

/// [`GATHER`] or [`GATHER_QUIC`], for a connection on `scheme`.
fn gather(scheme: Scheme) -> usize {
    match scheme {
        Scheme::Quic => GATHER_QUIC,
        Scheme::Tcp | Scheme::Tls | Scheme::Ws | Scheme::Wss => GATHER,
    }
}

/// How often the engine makes sure no call waits on a caller that does not come back
/// ([`SendQueue::release_deferred`]): the longest a call can be held up by another's. Each
/// look is cheap, but not free: at 1 ms, the looks of a busy connection cost `stmp quic` a
/// tenth of its calls per second at 64 in flight (5 ms: a twentieth; 20 ms: within the noise).
/// Only a call future left aside after its answer came makes anyone wait this long.
pub(crate) const DEFERRAL_WATCH: std::time::Duration = std::time::Duration::from_millis(20);

/// The senders' end, held by the connection. `repr(C)`: the queue, which a broadcast reads,
/// first.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct SendQueue {
    state: Mutex<Queue>,
    /// Callers handed their answer that have not yet taken it ([`expect_callers`]). Each is
    /// likely to send its next call as soon as it runs: while some are on their way, a
    /// sender leaves the writer asleep, and the last one back wakes it, so that their calls
    /// leave in one write instead of one write each as the callers come back one by one
    /// (on another worker, often). Fewer writes matter most on QUIC, where each is a datagram
    /// sealed, sent and acknowledged.
    ///
    /// [`expect_callers`]: SendQueue::expect_callers
    coming: AtomicIsize,
}

/// The writer's end: dropping it closes the queue and drops what it still holds. `H` holds the
/// queue: the connection's shared state, whose allocation the queue is part of (a queue of its
/// own in tests). Generic rather than a trait object, the pointer is one word: the writer task
/// holds this for as long as the connection lives.
pub(crate) struct Outbox<H: HoldsSendQueue = SendQueue> {
    holder: Arc<H>,
    /// Room of written packets, given back when the writer next looks at the queue: one
    /// lock per write rather than two.
    written: usize,
    /// Room of the packets moved into the writer's batch since it last asked
    /// ([`room_taken`](Outbox::room_taken)).
    taken: usize,
    /// What the writer last said of the connection ([`Outbox::keep_slots`]), as the queue has
    /// it: the queue is locked only when it changes.
    busy: bool,
}

/// Why a packet was not queued.
#[derive(Debug, PartialEq)]
pub(crate) enum Refused<P = Packet> {
    /// The queue has no room for it; here it is back.
    Full(P),
    /// The writer is gone or the connection has ended.
    Closed,
}

/// `repr(C)`, in this order: first what offering a broadcast's event reads and writes (the
/// room, the writer, the flags, the first packet's slot), so that on each of the thousands of
/// connections a broadcast reaches it touches one cache line after the connection's first.
#[derive(Debug, Default)]
#[repr(C)]
struct Queue {
    /// Bytes of budget nobody holds.
    room: usize,
    budget: usize,
    /// The writer task, while it waits with nothing queued.
    writer: Option<Waker>,
    /// Nothing more is taken: the writer is gone, or the connection has ended.
    closed: bool,
    /// Senders may write inline: set when the connection's engine starts, as every transport
    /// can (a queue on its own, in tests, leaves it off).
    inline_allowed: bool,
    /// A sender is writing inline: the writer task waits until it is done.
    inline: bool,
    /// The writer is to write what is queued and stop: the connection is ending.
    stopping: bool,
    /// The writer task is to look at its writer even with nothing queued: an inline write
    /// left bytes unwritten, or failed.
    kick: bool,
    /// The writer task is to end unless something is queued: the connection has gone quiet
    /// ([`SendQueue::retire_writer`]).
    retire: bool,
    /// The connection is busy ([`Outbox::keep_slots`]): emptied, the queue keeps room for
    /// [`KEEP_BUSY`] packets rather than [`KEEP`], whoever empties it (the writer task, or a
    /// sender writing inline). With the other flags, on the line a broadcast reads anyway.
    busy: bool,
    /// While callers are coming back, the packets a write waits for at most: [`GATHER`] or
    /// [`GATHER_QUIC`].
    gather: u8,
    packets: Packets,
    /// Senders waiting for room, first come first served.
    waiting: VecDeque<Waiting>,
    next_ticket: u64,
}

/// Queued packets in order, the oldest held in the queue itself. A broadcast queues one event
/// on each of thousands of idle connections: kept inline, that event costs no allocation and
/// no cache line beyond the queue's own, on the broadcasting thread and on the writer's.
#[derive(Debug, Default)]
#[repr(C)]
struct Packets {
    /// The oldest packet; `None` only when `rest` is empty too.
    head: Option<Packet>,
    /// The budget the queued packets hold, each priced by [`queue_cost`] as it came: what a
    /// writer that takes them all gives back once they are written.
    room: usize,
    rest: VecDeque<Packet>,
}

impl Packets {
    fn is_empty(&self) -> bool {
        self.head.is_none()
    }

    fn len(&self) -> usize {
        usize::from(self.head.is_some()) + self.rest.len()
    }

    /// Queues `packet`, which holds `cost` of the budget.
    fn push_back(&mut self, packet: Packet, cost: usize) {
        self.room += cost;
        match self.head {
            None => self.head = Some(packet),
            Some(_) => self.rest.push_back(packet),
        }
    }

    /// Puts `packets`, which hold `room` of the budget together, back in front, in order.
    fn push_front(&mut self, packets: Vec<Packet>, room: usize) {
        self.room += room;
        for packet in packets.into_iter().rev() {
            if let Some(old) = self.head.replace(packet) {
                self.rest.push_front(old);
            }
        }
    }

    /// Moves up to `limit` packets, oldest first, into `batch`; returns how many, and the
    /// budget they hold. Emptied, the queue keeps room for `keep` packets beyond the first, or
    /// what it has if that is less. `budget` is the queue's, to price the packets of a take
    /// that leaves some behind.
    fn take(
        &mut self,
        batch: &mut Vec<Packet>,
        limit: usize,
        keep: usize,
        budget: usize,
    ) -> (usize, usize) {
        // Room for the whole take at once: grown a packet at a time, a batch of 64 moved its
        // packets through six allocations.
        let queued = self.len();
        let taking = queued.min(limit);
        batch.reserve(taking);
        let from = batch.len();
        for _ in 0..taking {
            let Some(packet) = self.head.take() else {
                break;
            };
            batch.push(packet);
            self.head = self.rest.pop_front();
        }
        let room = match taking == queued {
            // The usual take, of everything: no packet is priced again.
            true => std::mem::take(&mut self.room),
            false => {
                let taken: usize = batch[from..].iter().map(|p| queue_cost(p, budget)).sum();
                debug_assert!(taken <= self.room, "queued packets priced by `queue_cost`");
                self.room = self.room.saturating_sub(taken);
                taken
            }
        };
        self.shrink_to(keep);
        (taking, room)
    }

    /// Emptied, keeps room for `keep` packets beyond the first, or what it has if that is less.
    fn shrink_to(&mut self, keep: usize) {
        if self.rest.is_empty() && self.rest.capacity() > keep {
            // A burst's room is not kept. A few slots are: events that come faster than one
            // write would otherwise cost each of them an allocation by the sender and a free
            // by the writer.
            self.rest = VecDeque::with_capacity(keep);
        }
    }

    /// Moves everything out (what a closed queue drops).
    fn drain_all(&mut self) -> Vec<Packet> {
        let mut all = Vec::new();
        self.take(&mut all, usize::MAX, 0, usize::MAX);
        all
    }

    /// Slots held beyond the first, for tests.
    #[cfg(test)]
    fn spare_capacity(&self) -> usize {
        self.rest.capacity()
    }
}

#[cfg(test)]
impl SendQueue {
    /// Slots the queue holds beyond the first.
    pub(crate) fn spare_slots(&self) -> usize {
        lock(&self.state).packets.spare_capacity()
    }
}

/// What became of a packet offered for an inline write.
#[derive(Debug, PartialEq)]
pub(crate) enum Offered<P = Packet> {
    /// Queued for the writer task as usual.
    Queued,
    /// The caller writes it now: the writer task waits until it ends the inline write
    /// ([`SendQueue::end_inline_written`] and the like).
    WriteInline(P),
}

#[derive(Debug)]
struct Waiting {
    ticket: u64,
    /// Bytes still missing; room released goes here first.
    missing: usize,
    waker: Waker,
}

/// The queue's two ends, with `budget` bytes of room.
/// What holds a [`SendQueue`], for its [`Outbox`] to reach it: the connection's shared state,
/// which a broadcast reads just before the queue. Kept in the same allocation, the queue costs
/// no pointer to follow and no cache line of its own to each of the broadcast's connections.
pub(crate) trait HoldsSendQueue: Send + Sync + 'static {
    fn send_queue(&self) -> &SendQueue;
}

impl HoldsSendQueue for SendQueue {
    fn send_queue(&self) -> &SendQueue {
        self
    }
}

impl SendQueue {
    /// A queue with room for `budget` bytes, for a connection on `scheme`; its [`Outbox`]
    /// comes from [`Outbox::new`].
    pub(crate) fn new(budget: usize, scheme: Scheme) -> SendQueue {
        let gather = gather(scheme);
        SendQueue {
            state: Mutex::new(Queue {
                room: budget,
                budget,
                gather: gather as u8,
                ..Queue::default()
            }),
            coming: AtomicIsize::new(0),
        }
    }
}

/// A queue on its own with its writer's end, for tests.
#[cfg(test)]
pub(crate) fn send_queue(budget: usize) -> (Arc<SendQueue>, Outbox<SendQueue>) {
    let queue = Arc::new(SendQueue::new(budget, Scheme::Tcp));
    let outbox = Outbox::new(queue.clone());
    (queue, outbox)
}

impl Queue {
    /// Takes `cost` bytes of room for `packet` without waiting, or says why not.
    fn pay<P>(&mut self, packet: P, cost: usize) -> Result<P, Refused<P>> {
        if self.closed {
            return Err(Refused::Closed);
        }
        if self.room < cost {
            return Err(Refused::Full(packet));
        }
        self.room -= cost;
        Ok(packet)
    }

    /// Queues a packet whose room (`cost`) is paid for; returns the writer to wake: one that
    /// waits, and not while a sender writes inline (which wakes it when done).
    fn enqueue(&mut self, packet: Packet, cost: usize) -> Option<Waker> {
        self.packets.push_back(packet, cost);
        if self.inline {
            None
        } else {
            self.writer.take()
        }
    }

    /// Queues a packet whose room (`cost`) is paid for, or, when `inline` and the writer task
    /// waits with nothing queued, hands it back for the sender to write.
    fn place(&mut self, packet: Packet, cost: usize, inline: bool) -> (Offered, Option<Waker>) {
        self.place_as(packet, cost, inline, |packet| packet)
    }

    /// Whether a sender may write inline now: allowed, nobody else doing it, not stopping,
    /// and the writer task waiting (so the transport's writer is in its slot).
    fn writer_free_for_inline(&self) -> bool {
        self.inline_allowed && !self.inline && !self.stopping && self.writer.is_some()
    }

    /// [`place`](Self::place) for what becomes a packet (`to_packet`) only if it is queued.
    fn place_as<P>(
        &mut self,
        packet: P,
        cost: usize,
        inline: bool,
        to_packet: impl FnOnce(P) -> Packet,
    ) -> (Offered<P>, Option<Waker>) {
        if inline && self.writer_free_for_inline() && self.packets.is_empty() {
            self.inline = true;
            return (Offered::WriteInline(packet), None);
        }
        (Offered::Queued, self.enqueue(to_packet(packet), cost))
    }

    /// Hands `bytes` of room to the senders that wait, in order, and keeps the rest. Returns
    /// the senders that now have all they need.
    fn give_back(&mut self, mut bytes: usize) -> Vec<Waker> {
        let mut ready = Vec::new();
        for waiting in self.waiting.iter_mut() {
            if bytes == 0 {
                break;
            }
            if waiting.missing == 0 {
                continue;
            }
            let given = bytes.min(waiting.missing);
            waiting.missing -= given;
            bytes -= given;
            if waiting.missing == 0 {
                ready.push(waiting.waker.clone());
            }
        }
        self.room = (self.room + bytes).min(self.budget);
        ready
    }

    fn wake_all_waiting(&mut self) -> Vec<Waker> {
        self.waiting.iter().map(|w| w.waker.clone()).collect()
    }
}

impl SendQueue {
    /// `callers` are about to be handed their answers (counted before they can run).
    pub(crate) fn expect_callers(&self, callers: usize) {
        self.coming.fetch_add(callers as isize, Ordering::Relaxed);
    }

    /// Callers handed their answer that have not taken it yet (tests check the count).
    #[cfg(test)]
    pub(crate) fn callers_coming(&self) -> isize {
        self.coming.load(Ordering::Relaxed)
    }

    /// Wakes the writer for calls queued while callers were coming back, in case one of those
    /// callers does not come back soon: a call future polled once and then left aside while
    /// its task does something else takes its answer only when that task polls it again. The
    /// engine calls this every [`DEFERRAL_WATCH`] while callers are expected. Returns whether
    /// any still are.
    pub(crate) fn release_deferred(&self) -> bool {
        self.wake_writer_for_queued();
        self.coming.load(Ordering::Relaxed) > 0
    }

    /// Wakes the writer if it waits while packets are queued (held for callers coming back).
    fn wake_writer_for_queued(&self) {
        let writer = {
            let mut queue = lock(&self.state);
            match queue.packets.is_empty() || queue.inline {
                true => None,
                false => queue.writer.take(),
            }
        };
        if let Some(writer) = writer {
            writer.wake();
        }
    }

    /// A caller took its answer (or will never take it). The last one back wakes the writer
    /// for what the callers before it queued.
    pub(crate) fn caller_back(&self) {
        if self.coming.fetch_sub(1, Ordering::Relaxed) != 1 {
            return;
        }
        self.wake_writer_for_queued();
    }

    /// Queues `packet`, which costs `cost` bytes of the budget, unless the budget has no
    /// room for it (room given back goes to waiting senders first) or the queue is closed.
    /// Returns the bytes queued after it.
    pub(crate) fn try_push(&self, packet: Packet, cost: usize) -> Result<usize, Refused> {
        let (writer, queued) = {
            let mut queue = lock(&self.state);
            let packet = queue.pay(packet, cost)?;
            (queue.enqueue(packet, cost), queue.budget - queue.room)
        };
        if let Some(writer) = writer {
            writer.wake();
        }
        Ok(queued)
    }

    /// Like [`try_push`](Self::try_push), but leaves the writer asleep: the engine queues the
    /// answers to a burst of requests this way, and writes them together when the burst ends
    /// ([`release_held`](Self::release_held)).
    pub(crate) fn try_hold(&self, packet: Packet, cost: usize) -> Result<usize, Refused> {
        let mut queue = lock(&self.state);
        let packet = queue.pay(packet, cost)?;
        queue.packets.push_back(packet, cost);
        Ok(queue.budget - queue.room)
    }

    /// Ends a burst of held packets: when the writer task waits, moves up to `limit` of what is
    /// queued into `batch` for the caller to write inline, and returns the budget they hold;
    /// otherwise wakes the writer task for them (unless a sender writing inline will).
    pub(crate) fn release_held(&self, batch: &mut Vec<Packet>, limit: usize) -> usize {
        let writer = {
            let mut queue = lock(&self.state);
            if queue.packets.is_empty() || queue.inline {
                return 0;
            }
            if queue.writer_free_for_inline() {
                queue.inline = true;
                return take(&mut queue, batch, limit).1;
            }
            queue.writer.take()
        };
        if let Some(writer) = writer {
            writer.wake();
        }
        0
    }

    /// Like [`try_push`](Self::try_push), but hands the packet back for the caller to write
    /// itself when the writer task waits with nothing queued.
    /// Returns the bytes queued (or held for the inline write) after it too.
    pub(crate) fn try_offer(
        &self,
        packet: Packet,
        cost: usize,
    ) -> Result<(Offered, usize), Refused> {
        let (offered, writer, queued) = {
            let mut queue = lock(&self.state);
            let packet = queue.pay(packet, cost)?;
            let (offered, writer) = queue.place(packet, cost, true);
            (offered, writer, queue.budget - queue.room)
        };
        if let Some(writer) = writer {
            writer.wake();
        }
        Ok((offered, queued))
    }

    /// [`try_offer`](Self::try_offer) for an event the caller keeps, which many connections
    /// share (a broadcast's): copied only if it is queued, not when it is handed back.
    pub(crate) fn try_offer_event<'p>(
        &self,
        event: &'p Packet,
        cost: usize,
    ) -> Result<(Offered<&'p Packet>, usize), Refused<&'p Packet>> {
        let (offered, writer, queued) = {
            let mut queue = lock(&self.state);
            let event = queue.pay(event, cost)?;
            let (offered, writer) = queue.place_as(event, cost, true, Packet::clone);
            (offered, writer, queue.budget - queue.room)
        };
        if let Some(writer) = writer {
            writer.wake();
        }
        Ok((offered, queued))
    }

    /// Queues `packet`, which costs `cost` bytes of the budget, waiting for room in turn
    /// with other waiting senders; with `inline` it may hand the packet back for the caller
    /// to write, as [`try_offer`](Self::try_offer) does. Gives the packet back once the queue
    /// is closed.
    pub(crate) fn push(&self, packet: Packet, cost: usize, inline: bool) -> Push<'_> {
        Push {
            queue: self,
            packet: Some(packet),
            cost,
            inline,
            ticket: None,
        }
    }

    /// Gives back the room of written packets.
    pub(crate) fn release(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let ready = lock(&self.state).give_back(bytes);
        ready.into_iter().for_each(Waker::wake);
    }

    /// Bytes of budget nobody holds (tests look at what the writer gave back).
    #[cfg(test)]
    pub(crate) fn room(&self) -> usize {
        lock(&self.state).room
    }

    /// Takes nothing more: senders waiting for room are refused, and so is every packet
    /// after. Packets already queued still go out.
    pub(crate) fn close(&self) {
        let waiting = {
            let mut queue = lock(&self.state);
            queue.closed = true;
            queue.wake_all_waiting()
        };
        waiting.into_iter().for_each(Waker::wake);
    }

    /// Ends an inline write that left bytes for the writer task to finish.
    pub(crate) fn end_inline_unfinished(&self) {
        self.end_inline_giving_back(Vec::new(), 0, true, 0);
    }

    /// Ends an inline write that could not write: `unwritten`, which hold `room` of the budget
    /// together, go back to the head of the queue for the writer task.
    pub(crate) fn end_inline_unwritten(&self, unwritten: Vec<Packet>, room: usize) {
        self.end_inline_giving_back(unwritten, room, false, 0);
    }

    /// Ends an inline write that wrote everything, giving back the `room` its packets held:
    /// one lock for both, as the write ends.
    pub(crate) fn end_inline_written(&self, room: usize) {
        self.end_inline_giving_back(Vec::new(), 0, false, room);
    }

    fn end_inline_giving_back(
        &self,
        unwritten: Vec<Packet>,
        unwritten_room: usize,
        kick: bool,
        room: usize,
    ) {
        let (writer, ready) = {
            let mut queue = lock(&self.state);
            queue.inline = false;
            if !unwritten.is_empty() {
                queue.packets.push_front(unwritten, unwritten_room);
            }
            queue.kick |= kick;
            let ready = match room {
                0 => Vec::new(),
                room => queue.give_back(room),
            };
            let writer = if queue.kick || queue.stopping || !queue.packets.is_empty() {
                queue.writer.take()
            } else {
                None
            };
            (writer, ready)
        };
        ready.into_iter().for_each(Waker::wake);
        if let Some(writer) = writer {
            writer.wake();
        }
    }

    /// Moves up to `limit` queued packets into `batch` for the sender writing inline: the
    /// writer task takes nothing while it writes, so what was queued meanwhile can join its
    /// write. Only for the sender the queue handed a packet back to. Returns the budget they
    /// hold.
    pub(crate) fn take_while_inline(&self, batch: &mut Vec<Packet>, limit: usize) -> usize {
        let mut queue = lock(&self.state);
        debug_assert!(queue.inline, "only the inline writer takes packets");
        if queue.packets.is_empty() {
            // The usual case, a broadcast's event written alone: the queue's other lines
            // (the rest of the packets, their room) stay out of the cache.
            return 0;
        }
        take(&mut queue, batch, limit).1
    }

    /// Registers `writer` as the waiting writer's waker before any writer task has looked at
    /// the queue: the engine starts its writer task lazily, when this is first woken. Returns
    /// false, registering nothing, when there is work for the writer already (packets
    /// queued before the engine started, say): then the task is needed at once.
    pub(crate) fn writer_waits_with(&self, writer: Waker) -> bool {
        let mut queue = lock(&self.state);
        let idle = !queue.closed
            && !queue.stopping
            && !queue.kick
            && !queue.inline
            && queue.packets.is_empty();
        if idle {
            queue.writer = Some(writer);
        }
        idle
    }

    /// Asks the writer task to end if it waits with nothing queued, as the connection has
    /// gone quiet; `lazy`, the waker that starts a task again, is not asked (it is what
    /// waits once no task runs). Returns whether a task was asked. It ends unless a packet
    /// is queued before it looks ([`Next::Retire`]).
    pub(crate) fn retire_writer(&self, lazy: &Waker) -> bool {
        let writer = {
            let mut queue = lock(&self.state);
            let task_waits = queue
                .writer
                .as_ref()
                .is_some_and(|writer| !writer.will_wake(lazy));
            if !task_waits
                || queue.closed
                || queue.stopping
                || queue.kick
                || queue.inline
                || !queue.packets.is_empty()
            {
                return false;
            }
            queue.retire = true;
            queue.writer.take()
        };
        writer.into_iter().for_each(Waker::wake);
        true
    }

    /// Lets go of the slots an emptied queue keeps ([`KEEP`]): the connection has gone quiet,
    /// and a burst answered by the engine itself (no writer task retired to do it) left them.
    pub(crate) fn give_back_slots(&self) {
        let mut queue = lock(&self.state);
        if queue.packets.is_empty() {
            queue.packets.shrink_to(0);
        }
    }

    /// Whether the writer task waits with nothing queued.
    #[cfg(test)]
    pub(crate) fn writer_waits(&self) -> bool {
        lock(&self.state).writer.is_some()
    }

    /// Lets senders write inline (the writer can write without waiting).
    pub(crate) fn allow_inline(&self) {
        lock(&self.state).inline_allowed = true;
    }

    /// Tells the writer to write what is queued and stop. Packets queued later still go out
    /// if the writer has not taken its last batch yet.
    pub(crate) fn stop(&self) {
        let writer = {
            let mut queue = lock(&self.state);
            queue.stopping = true;
            // An inline writer wakes the writer task when it is done.
            if queue.inline {
                None
            } else {
                queue.writer.take()
            }
        };
        if let Some(writer) = writer {
            writer.wake();
        }
    }
}

/// A packet waiting for room in the queue ([`SendQueue::push`]). Dropped while it waits, it
/// gives what room it was handed to the senders behind it.
#[derive(Debug)]
pub(crate) struct Push<'a> {
    queue: &'a SendQueue,
    packet: Option<Packet>,
    cost: usize,
    inline: bool,
    /// Its place in line, once it waits.
    ticket: Option<u64>,
}

impl Future for Push<'_> {
    type Output = Result<Offered, Packet>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(packet) = this.packet.take() else {
            return Poll::Ready(Ok(Offered::Queued));
        };
        let mut queue = lock(&this.queue.state);
        if queue.closed {
            let ready = this.leave_line(&mut queue);
            drop(queue);
            ready.into_iter().for_each(Waker::wake);
            return Poll::Ready(Err(packet));
        }
        let paid = match this.ticket {
            None if queue.waiting.is_empty() && queue.room >= this.cost => {
                queue.room -= this.cost;
                true
            }
            None => {
                // In line, with what room there is now as a first share.
                let share = queue.room.min(this.cost);
                queue.room -= share;
                let ticket = queue.next_ticket;
                queue.next_ticket += 1;
                queue.waiting.push_back(Waiting {
                    ticket,
                    missing: this.cost - share,
                    waker: cx.waker().clone(),
                });
                this.ticket = Some(ticket);
                share == this.cost
            }
            Some(ticket) => match queue.waiting.iter_mut().find(|w| w.ticket == ticket) {
                Some(waiting) if waiting.missing == 0 => true,
                Some(waiting) => {
                    if !waiting.waker.will_wake(cx.waker()) {
                        waiting.waker = cx.waker().clone();
                    }
                    false
                }
                // Only this future takes its entry out of the line.
                None => true,
            },
        };
        if !paid {
            this.packet = Some(packet);
            return Poll::Pending;
        }
        if let Some(ticket) = this.ticket.take() {
            queue.waiting.retain(|w| w.ticket != ticket);
        }
        // Read under the lock, as the last caller back reads the queue under it: either that
        // caller sees this packet, or this sender sees that none is still coming.
        let gather = this.queue.coming.load(Ordering::Relaxed) > 0
            && queue.packets.len() + 1 < queue.gather.into();
        let (offered, writer) = match gather {
            true => {
                queue.packets.push_back(packet, this.cost);
                (Offered::Queued, None)
            }
            false => queue.place(packet, this.cost, this.inline),
        };
        drop(queue);
        if let Some(writer) = writer {
            writer.wake();
        }
        Poll::Ready(Ok(offered))
    }
}

impl Push<'_> {
    /// Leaves the line, handing the room it was given to those behind.
    fn leave_line(&mut self, queue: &mut Queue) -> Vec<Waker> {
        let Some(ticket) = self.ticket.take() else {
            return Vec::new();
        };
        let Some(at) = queue.waiting.iter().position(|w| w.ticket == ticket) else {
            return Vec::new();
        };
        let left = queue
            .waiting
            .remove(at)
            .map_or(0, |w| self.cost - w.missing);
        queue.give_back(left)
    }
}

impl Drop for Push<'_> {
    fn drop(&mut self) {
        if self.ticket.is_none() {
            return;
        }
        let ready = {
            let mut queue = lock(&self.queue.state);
            self.leave_line(&mut queue)
        };
        ready.into_iter().for_each(Waker::wake);
    }
}

impl<H: HoldsSendQueue> std::fmt::Debug for Outbox<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("queue", self.queue())
            .field("written", &self.written)
            .field("taken", &self.taken)
            .field("busy", &self.busy)
            .finish()
    }
}

impl<H: HoldsSendQueue> Outbox<H> {
    /// The writer's end of the queue that `holder` holds; one per queue.
    pub(crate) fn new(holder: Arc<H>) -> Outbox<H> {
        Outbox {
            holder,
            written: 0,
            taken: 0,
            busy: false,
        }
    }

    fn queue(&self) -> &Mutex<Queue> {
        &self.holder.send_queue().state
    }

    /// Says whether the connection is busy, its queue bound to refill as soon as it is
    /// emptied: then the emptied queue keeps room for a full write's packets, otherwise only
    /// for a few.
    pub(crate) fn keep_slots(&mut self, busy: bool) {
        if busy == self.busy {
            return;
        }
        self.busy = busy;
        let mut queue = lock(self.queue());
        queue.busy = busy;
        if !busy {
            // Gone quiet: the room kept for the next write goes back now, not at that write.
            queue.packets.shrink_to(KEEP);
        }
    }

    /// Gives back `bytes` of room (of packets written) the next time the writer looks at the
    /// queue, which it does next. What is owed when the outbox drops is moot: the queue
    /// is closed then.
    pub(crate) fn release_later(&mut self, bytes: usize) {
        self.written += bytes;
    }

    /// The budget held by the packets moved into the writer's batch since the last ask: what
    /// to give back once they are written.
    pub(crate) fn room_taken(&mut self) -> usize {
        std::mem::take(&mut self.taken)
    }

    /// Waits until something is queued, then moves up to `limit` packets into `batch`.
    /// Once [stopped](SendQueue::stop) it moves everything queued: that is the last batch.
    /// It also returns, with nothing, when an inline write left work, or when the writer is
    /// asked to retire with nothing queued. Room owed by
    /// [`release_later`](Self::release_later) is given back first.
    pub(crate) async fn recv_many(&mut self, batch: &mut Vec<Packet>, limit: usize) -> Next {
        let mut written = std::mem::take(&mut self.written);
        let taken = &mut self.taken;
        let holder = &self.holder;
        poll_fn(|cx| {
            let mut queue = lock(&holder.send_queue().state);
            let ready = match std::mem::take(&mut written) {
                0 => Vec::new(),
                bytes => queue.give_back(bytes),
            };
            let polled = poll_take(&mut queue, cx, batch, limit, taken);
            drop(queue);
            ready.into_iter().for_each(Waker::wake);
            polled
        })
        .await
    }

    /// The next packet queued, if any (tests look at what a connection was sent).
    #[cfg(test)]
    pub(crate) fn try_recv(&mut self) -> Option<Packet> {
        let mut one = Vec::with_capacity(1);
        self.try_recv_many(&mut one, 1);
        one.pop()
    }

    /// Moves up to `limit` packets that are queued now into `batch`, without waiting.
    pub(crate) fn try_recv_many(&mut self, batch: &mut Vec<Packet>, limit: usize) -> usize {
        let (count, room) = take(&mut lock(self.queue()), batch, limit);
        self.taken += room;
        count
    }
}

/// What the writer task does after [`Outbox::recv_many`].
#[derive(Debug, PartialEq)]
pub(crate) enum Next {
    /// Write the batch (empty when an inline write left work for it).
    Write,
    /// Write the batch, which is the last one, and stop.
    Stop,
    /// End with nothing to write, as the connection has gone quiet
    /// ([`SendQueue::retire_writer`]).
    Retire,
}

/// One look of the writer at the queue (see [`Outbox::recv_many`]).
fn poll_take(
    queue: &mut Queue,
    cx: &mut Context<'_>,
    batch: &mut Vec<Packet>,
    limit: usize,
    taken: &mut usize,
) -> Poll<Next> {
    if !queue.inline {
        let kicked = std::mem::take(&mut queue.kick);
        let retire = std::mem::take(&mut queue.retire);
        if queue.stopping {
            queue.writer = None;
            *taken += take(queue, batch, usize::MAX).1;
            return Poll::Ready(Next::Stop);
        }
        let (count, room) = take(queue, batch, limit);
        *taken += room;
        if count > 0 || kicked {
            // Not waiting any more: no sender may write inline now.
            queue.writer = None;
            return Poll::Ready(Next::Write);
        }
        if retire {
            // Quiet for a heartbeat: not even the few slots kept for events go on being held.
            queue.packets.shrink_to(0);
            queue.writer = None;
            return Poll::Ready(Next::Retire);
        }
    }
    if !queue
        .writer
        .as_ref()
        .is_some_and(|w| w.will_wake(cx.waker()))
    {
        queue.writer = Some(cx.waker().clone());
    }
    Poll::Pending
}

/// Moves packets into `batch` until it holds `limit`; returns how many, and the budget they
/// hold.
fn take(queue: &mut Queue, batch: &mut Vec<Packet>, limit: usize) -> (usize, usize) {
    let space = limit.saturating_sub(batch.len());
    let keep = match queue.busy {
        true => KEEP_BUSY,
        false => KEEP,
    };
    queue.packets.take(batch, space, keep, queue.budget)
}

impl<H: HoldsSendQueue> Drop for Outbox<H> {
    fn drop(&mut self) {
        let (packets, waiting) = {
            let mut queue = lock(self.queue());
            queue.closed = true;
            queue.writer = None;
            (queue.packets.drain_all(), queue.wake_all_waiting())
        };
        drop(packets);
        waiting.into_iter().for_each(Waker::wake);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn packets_come_out_in_order_in_batches_of_at_most_the_limit() {
        let (queue, mut outbox) = send_queue(1 << 20);
        for _ in 0..5 {
            queue.try_push(Packet::Ping, 0).unwrap();
        }
        queue.try_push(Packet::Pong, 0).unwrap();
        let mut batch = Vec::new();
        assert_eq!(outbox.recv_many(&mut batch, 4).await, Next::Write);
        assert_eq!(batch.len(), 4);
        assert_eq!(outbox.try_recv_many(&mut batch, 4), 0, "the batch is full");
        assert_eq!(outbox.try_recv_many(&mut batch, 6), 2);
        assert!(batch[..5].iter().all(|p| *p == Packet::Ping));
        assert_eq!(batch[5], Packet::Pong);
        assert_eq!(outbox.try_recv_many(&mut batch, 64), 0);
        // Drained, the queue keeps only a few slots.
        assert!(lock(outbox.queue()).packets.spare_capacity() <= KEEP);
    }

    #[tokio::test]
    async fn a_busy_connections_queue_keeps_its_room_and_an_idle_ones_gives_it_back() {
        let (queue, mut outbox) = send_queue(1 << 20);
        let mut batch = Vec::new();
        let fill_and_drain = |outbox: &mut Outbox, batch: &mut Vec<Packet>| {
            for _ in 0..40 {
                queue.try_push(Packet::Ping, 0).unwrap();
            }
            batch.clear();
            assert_eq!(outbox.try_recv_many(batch, 64), 40);
            lock(outbox.queue()).packets.spare_capacity()
        };
        outbox.keep_slots(true);
        let kept = fill_and_drain(&mut outbox, &mut batch);
        assert!(
            kept >= 39,
            "busy: the room for the next write stays ({kept})"
        );
        // Refilled, the kept room is used again rather than grown anew.
        assert_eq!(fill_and_drain(&mut outbox, &mut batch), kept);
        // Going quiet gives the room back at once, before the queue is used again.
        outbox.keep_slots(false);
        assert!(lock(outbox.queue()).packets.spare_capacity() <= KEEP);
        let idle = fill_and_drain(&mut outbox, &mut batch);
        assert!(idle <= KEEP, "idle: only a few slots stay ({idle})");
    }

    #[test]
    fn a_sender_writing_inline_leaves_a_busy_connections_room_as_the_writer_would() {
        let (queue, mut outbox) = send_queue(1 << 20);
        queue.allow_inline();
        let mut batch = Vec::new();
        let mut inline_write = |outbox: &mut Outbox| {
            // The writer waits with nothing queued: the next sender writes inline, and takes
            // what was queued behind it meanwhile.
            let mut waiting = Box::pin(outbox.recv_many(&mut batch, 64));
            assert!(poll_once(&mut waiting).is_pending());
            drop(waiting);
            let offered = queue.try_offer(Packet::Ping, 0).map(|(offered, _)| offered);
            assert_eq!(offered, Ok(Offered::WriteInline(Packet::Ping)));
            for _ in 0..40 {
                queue.try_push(Packet::Pong, 0).unwrap();
            }
            let mut behind = Vec::new();
            queue.take_while_inline(&mut behind, 64);
            assert_eq!(behind.len(), 40);
            queue.end_inline_written(0);
            lock(outbox.queue()).packets.spare_capacity()
        };
        outbox.keep_slots(true);
        let kept = inline_write(&mut outbox);
        assert!(kept >= 39, "busy: the room stays ({kept})");
        outbox.keep_slots(false);
        let idle = inline_write(&mut outbox);
        assert!(idle <= KEEP, "idle: only a few slots stay ({idle})");
    }

    #[tokio::test]
    async fn a_waiting_writer_is_woken_by_a_push() {
        let (queue, mut outbox) = send_queue(1 << 20);
        let writer = tokio::spawn(async move {
            let mut batch = Vec::new();
            outbox.recv_many(&mut batch, 64).await;
            batch
        });
        // The writer is parked on the empty queue before the push comes.
        tokio::task::yield_now().await;
        queue.try_push(Packet::Pong, 0).unwrap();
        let batch = tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(batch, [Packet::Pong]);
    }

    #[tokio::test]
    async fn a_waiting_writer_asked_to_retire_gets_retire_and_the_queue_keeps_no_slots() {
        let (queue, mut outbox) = send_queue(1 << 20);
        let lazy_wakes = Arc::new(WakeCount::default());
        let lazy = Waker::from(lazy_wakes.clone());
        // With packets queued, or with nothing but the lazy waker waiting, nobody is asked.
        queue.try_push(Packet::Ping, 0).unwrap();
        queue.try_push(Packet::Ping, 0).unwrap();
        assert!(!queue.retire_writer(&lazy));
        let mut batch = Vec::new();
        assert_eq!(outbox.recv_many(&mut batch, 64).await, Next::Write);
        assert!(queue.writer_waits_with(lazy.clone()));
        assert!(!queue.retire_writer(&lazy));
        assert_eq!(lazy_wakes.count(), 0);

        // A running writer that waits with nothing queued is woken, and told to retire.
        let task_wakes = park_writer(&mut outbox);
        assert!(lock(outbox.queue()).packets.spare_capacity() > 0);
        assert!(queue.retire_writer(&lazy));
        assert_eq!(task_wakes.count(), 1);
        assert!(
            !queue.writer_waits(),
            "no sender writes inline to a retiring writer"
        );
        batch.clear();
        assert_eq!(outbox.recv_many(&mut batch, 64).await, Next::Retire);
        assert!(batch.is_empty());
        assert_eq!(lock(outbox.queue()).packets.spare_capacity(), 0);

        // Asked, but a packet came before it looked: it writes that instead, and is no longer
        // asked to retire.
        let _task_wakes = park_writer(&mut outbox);
        assert!(queue.retire_writer(&lazy));
        queue.try_push(Packet::Pong, 0).unwrap();
        assert_eq!(outbox.recv_many(&mut batch, 64).await, Next::Write);
        assert_eq!(batch, [Packet::Pong]);
        let waits_again = park_writer(&mut outbox);
        queue.try_push(Packet::Pong, 0).unwrap();
        assert_eq!(waits_again.count(), 1, "a push wakes it as usual");
    }

    /// Polls the writer's end once with a waker that counts its wakes: the writer now waits.
    fn park_writer(outbox: &mut Outbox) -> Arc<WakeCount> {
        let wakes = Arc::new(WakeCount::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut batch = Vec::new();
        let waiting = std::pin::pin!(outbox.recv_many(&mut batch, 64));
        assert!(waiting.poll(&mut cx).is_pending(), "nothing is queued yet");
        wakes
    }

    #[derive(Default)]
    struct WakeCount(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for WakeCount {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl WakeCount {
        fn count(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn push_now(queue: &SendQueue, packet: Packet) {
        let mut cx = Context::from_waker(Waker::noop());
        let pushed = std::pin::pin!(queue.push(packet, 0, false)).poll(&mut cx);
        assert!(matches!(pushed, Poll::Ready(Ok(Offered::Queued))));
    }

    #[test]
    fn the_calls_of_callers_coming_back_wait_for_the_last_of_them() {
        let (queue, mut outbox) = send_queue(1 << 20);
        let writer = park_writer(&mut outbox);
        queue.expect_callers(3);
        // Two callers back, each with its next call: the writer sleeps on.
        for _ in 0..2 {
            queue.caller_back();
            push_now(&queue, Packet::Ping);
        }
        assert_eq!(writer.count(), 0);
        // The last one back wakes it for all of them, before its own call is queued.
        queue.caller_back();
        assert_eq!(writer.count(), 1);
        push_now(&queue, Packet::Pong);
        let mut batch = Vec::new();
        assert_eq!(
            outbox.try_recv_many(&mut batch, 64),
            3,
            "one write for the three"
        );

        // With none coming, a push wakes the writer at once, as before.
        let writer = park_writer(&mut outbox);
        push_now(&queue, Packet::Ping);
        assert_eq!(writer.count(), 1);
    }

    #[test]
    fn callers_coming_back_hold_the_writer_for_a_few_calls_only() {
        for (scheme, gather) in [(Scheme::Tcp, GATHER), (Scheme::Quic, GATHER_QUIC)] {
            let queue = Arc::new(SendQueue::new(1 << 20, scheme));
            let mut outbox = Outbox::new(queue.clone());
            let writer = park_writer(&mut outbox);
            queue.expect_callers(64);
            for _ in 0..gather - 1 {
                queue.caller_back();
                push_now(&queue, Packet::Ping);
            }
            assert_eq!(writer.count(), 0, "{scheme}");
            queue.caller_back();
            push_now(&queue, Packet::Ping);
            assert_eq!(
                writer.count(),
                1,
                "the first {gather} calls leave without the rest ({scheme})"
            );
        }
    }

    #[test]
    fn the_last_caller_back_with_nothing_queued_wakes_nobody() {
        let (queue, mut outbox) = send_queue(1 << 20);
        let writer = park_writer(&mut outbox);
        queue.expect_callers(1);
        queue.caller_back();
        assert_eq!(writer.count(), 0);
        push_now(&queue, Packet::Ping);
        assert_eq!(writer.count(), 1);
    }

    #[tokio::test]
    async fn a_stopped_writer_takes_everything_queued_as_its_last_batch() {
        let (queue, mut outbox) = send_queue(1 << 20);
        for _ in 0..3 {
            queue.try_push(Packet::Ping, 0).unwrap();
        }
        queue.stop();
        let mut batch = Vec::new();
        assert_eq!(
            outbox.recv_many(&mut batch, 2).await,
            Next::Stop,
            "the last batch"
        );
        assert_eq!(batch.len(), 3, "past the limit: nothing is left behind");
        // A writer waiting on an empty queue is woken by the stop.
        let (queue, mut outbox) = send_queue(1 << 20);
        let writer = tokio::spawn(async move { outbox.recv_many(&mut Vec::new(), 64).await });
        tokio::task::yield_now().await;
        queue.stop();
        let last = tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(last, Next::Stop);
    }

    #[test]
    fn a_lone_packet_is_queued_and_taken_without_a_slot_beyond_the_queue() {
        let (queue, mut outbox) = send_queue(1 << 20);
        for _ in 0..3 {
            queue.try_push(Packet::Ping, 0).unwrap();
            assert_eq!(outbox.try_recv(), Some(Packet::Ping));
        }
        assert_eq!(lock(outbox.queue()).packets.spare_capacity(), 0);
    }

    #[test]
    fn packets_keep_their_order_across_the_inline_slot_and_the_rest() {
        let mut packets = Packets::default();
        let request = |mid| {
            Packet::Response(crate::wire::Response {
                mid,
                status: crate::Code::Ok,
                header: crate::wire::Header::new(),
                payload: bytes::Bytes::new(),
            })
        };
        let budget = 1 << 20;
        let cost = queue_cost(&request(1), budget);
        (1..=4).for_each(|mid| packets.push_back(request(mid), cost));
        let mut batch = Vec::new();
        assert_eq!(packets.take(&mut batch, 2, KEEP, budget), (2, 2 * cost));
        // Given back to the head (an inline write that could not finish), behind nothing.
        packets.push_front(vec![request(1), request(2)], 2 * cost);
        packets.push_back(request(5), cost);
        assert_eq!(packets.take(&mut batch, 1, KEEP, budget), (1, cost));
        assert_eq!(packets.take(&mut batch, 64, KEEP, budget), (4, 4 * cost));
        assert!(packets.is_empty());
        assert_eq!(packets.take(&mut batch, 64, KEEP, budget), (0, 0));
        let mids: Vec<u16> = batch
            .iter()
            .map(|p| match p {
                Packet::Response(r) => r.mid,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(mids, [1, 2, 1, 2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn room_released_later_comes_back_when_the_writer_next_looks_and_wakes_the_line() {
        let (queue, mut outbox) = send_queue(100);
        let queue = Arc::new(queue);
        queue.try_push(Packet::Pong, 100).unwrap();
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move { queue.push(Packet::Ping, 50, false).await }
        });
        let mut batch = Vec::new();
        assert_eq!(outbox.recv_many(&mut batch, 64).await, Next::Write);
        assert_eq!(batch, [Packet::Pong]);
        outbox.release_later(100);
        assert_eq!(
            queue.room(),
            0,
            "not given back before the writer looks again"
        );
        batch.clear();
        // The writer looks again: the room goes to the waiting sender, whose packet comes out.
        tokio::time::timeout(Duration::from_secs(5), outbox.recv_many(&mut batch, 64))
            .await
            .unwrap();
        assert_eq!(batch, [Packet::Ping]);
        assert_eq!(waiting.await.unwrap(), Ok(Offered::Queued));
        assert_eq!(queue.room(), 50);
    }

    #[test]
    fn once_the_writer_is_gone_pushes_are_refused_and_the_queue_is_emptied() {
        let (queue, outbox) = send_queue(1 << 20);
        queue.try_push(Packet::Ping, 0).unwrap();
        drop(outbox);
        assert_eq!(queue.try_push(Packet::Pong, 0), Err(Refused::Closed));
        assert!(lock(&queue.state).packets.is_empty());
    }

    #[test]
    fn held_packets_leave_the_writer_asleep_until_released_and_then_wake_it() {
        use std::future::Future;

        // No inline writes (a queue on its own): the release wakes the writer task instead.
        let (queue, mut outbox) = send_queue(1 << 20);
        let wakes = Arc::new(WakeCount::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut batch = Vec::new();
        assert!(
            std::pin::pin!(outbox.recv_many(&mut batch, 64))
                .poll(&mut cx)
                .is_pending()
        );
        queue.try_hold(Packet::Ping, 10).unwrap();
        queue.try_hold(Packet::Pong, 10).unwrap();
        assert_eq!(wakes.count(), 0, "a held packet woke the writer");
        assert_eq!(queue.room(), (1 << 20) - 20, "held packets pay their room");

        let mut inline = Vec::new();
        assert_eq!(queue.release_held(&mut inline, 64), 0);
        assert!(inline.is_empty(), "handed back with inline writes off");
        assert_eq!(wakes.count(), 1);
        let mut batch = Vec::new();
        outbox.try_recv_many(&mut batch, 64);
        assert_eq!(batch, [Packet::Ping, Packet::Pong]);

        // With inline writes on and the writer waiting, the held packets are handed back, up
        // to the limit, and the writer is not woken.
        queue.allow_inline();
        assert!(
            std::pin::pin!(outbox.recv_many(&mut batch, 64))
                .poll(&mut cx)
                .is_pending()
        );
        let pong = super::super::budget::queue_cost(&Packet::Pong, 1 << 20);
        for _ in 0..3 {
            queue.try_hold(Packet::Pong, pong).unwrap();
        }
        assert_eq!(queue.release_held(&mut inline, 2), 2 * pong);
        assert_eq!(inline, [Packet::Pong, Packet::Pong]);
        assert_eq!(wakes.count(), 1);
        // Nothing else writes inline meanwhile; the end of the write wakes the writer task
        // for the packet left.
        assert!(matches!(
            queue.try_offer(Packet::Pong, pong),
            Ok((Offered::Queued, _))
        ));
        queue.end_inline_written(2 * pong);
        assert_eq!(wakes.count(), 2);
        batch.clear();
        outbox.try_recv_many(&mut batch, 64);
        assert_eq!(batch, [Packet::Pong, Packet::Pong]);
    }

    #[test]
    fn a_quiet_queue_gives_back_the_slots_a_burst_left() {
        let (queue, mut outbox) = send_queue(1 << 20);
        for _ in 0..16 {
            queue.try_hold(Packet::Pong, 0).unwrap();
        }
        queue.give_back_slots();
        assert!(
            lock(&queue.state).packets.spare_capacity() >= 15,
            "slots given back while packets wait"
        );
        let mut batch = Vec::new();
        outbox.try_recv_many(&mut batch, 64);
        assert_eq!(batch.len(), 16);
        assert_eq!(lock(&queue.state).packets.spare_capacity(), KEEP);
        queue.give_back_slots();
        assert_eq!(lock(&queue.state).packets.spare_capacity(), 0);
    }

    /// Counts its wake-ups.
    struct CountWakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn only_a_lone_packet_with_the_writer_waiting_is_written_inline_and_nothing_overtakes_it() {
        use std::future::Future;
        use std::sync::atomic::Ordering::SeqCst;

        let (queue, mut outbox) = send_queue(1 << 20);
        queue.allow_inline();
        let wakes = Arc::new(CountWakes(0.into()));
        let waker = Waker::from(wakes.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let mut recv = |outbox: &mut Outbox| {
            let mut batch = Vec::new();
            let polled = std::pin::pin!(outbox.recv_many(&mut batch, 64)).poll(&mut cx);
            polled.map(|_| batch)
        };
        // The writer has not waited yet: queued.
        assert_eq!(
            queue.try_offer(Packet::Ping, 0).map(|(offered, _)| offered),
            Ok(Offered::Queued)
        );
        assert_eq!(recv(&mut outbox), Poll::Ready(vec![Packet::Ping]));
        // Busy writing (not waiting): queued again.
        assert_eq!(
            queue.try_offer(Packet::Ping, 0).map(|(offered, _)| offered),
            Ok(Offered::Queued)
        );
        assert_eq!(recv(&mut outbox), Poll::Ready(vec![Packet::Ping]));
        assert!(recv(&mut outbox).is_pending(), "now it waits");
        // Something queued already: queued behind it, not written ahead of it.
        queue.try_push(Packet::Pong, 0).unwrap();
        assert_eq!(
            queue.try_offer(Packet::Ping, 0).map(|(offered, _)| offered),
            Ok(Offered::Queued)
        );
        assert_eq!(
            recv(&mut outbox),
            Poll::Ready(vec![Packet::Pong, Packet::Ping])
        );
        assert!(recv(&mut outbox).is_pending());
        let woken = wakes.0.load(SeqCst);
        // Waiting with nothing queued: the sender writes it.
        assert_eq!(
            queue.try_offer(Packet::Pong, 0).map(|(offered, _)| offered),
            Ok(Offered::WriteInline(Packet::Pong))
        );
        // Meanwhile others queue, and the writer neither wakes nor takes them.
        assert_eq!(
            queue.try_offer(Packet::Ping, 0).map(|(offered, _)| offered),
            Ok(Offered::Queued)
        );
        queue.try_push(Packet::Ping, 0).unwrap();
        queue.stop();
        assert_eq!(wakes.0.load(SeqCst), woken);
        assert!(recv(&mut outbox).is_pending());
        // Done: what it could not write goes first, then the rest, then the writer stops.
        queue.end_inline_unwritten(vec![Packet::Pong], 0);
        assert_eq!(wakes.0.load(SeqCst), woken + 1);
        assert_eq!(
            recv(&mut outbox),
            Poll::Ready(vec![Packet::Pong, Packet::Ping, Packet::Ping])
        );
    }

    fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(future).poll(&mut cx)
    }

    #[tokio::test]
    async fn the_writer_learns_the_room_of_what_it_took_as_the_packets_were_priced() {
        let budget = 1 << 20;
        let (queue, mut outbox) = send_queue(budget);
        let notify = |len: usize| {
            Packet::Notify(crate::wire::Notify {
                action: crate::wire::Action::Id(7),
                header: crate::wire::Header::new(),
                payload: bytes::Bytes::from(vec![1; len]),
            })
        };
        let packets: Vec<Packet> = [10, 300, 5000, 1, 70].map(notify).into();
        let costs: Vec<usize> = packets.iter().map(|p| queue_cost(p, budget)).collect();
        for (packet, cost) in packets.iter().zip(&costs) {
            queue.try_push(packet.clone(), *cost).unwrap();
        }
        let mut batch = Vec::new();
        // A take that leaves packets behind prices what it took; the last take gets the rest.
        assert_eq!(outbox.recv_many(&mut batch, 2).await, Next::Write);
        assert_eq!(outbox.room_taken(), costs[0] + costs[1]);
        assert_eq!(outbox.room_taken(), 0, "asked once");
        assert_eq!(outbox.try_recv_many(&mut batch, 64), 3);
        assert_eq!(outbox.room_taken(), costs[2..].iter().sum::<usize>());
        assert_eq!(batch, packets);
        queue.release(costs.iter().sum());
        assert_eq!(queue.room(), budget, "all of it back, nothing more");
    }

    #[test]
    fn the_budget_bounds_the_bytes_queued_and_written_packets_give_their_room_back() {
        let (queue, mut outbox) = send_queue(100);
        assert_eq!(queue.try_push(Packet::Ping, 60), Ok(60));
        assert_eq!(
            queue.try_push(Packet::Pong, 50),
            Err(Refused::Full(Packet::Pong))
        );
        assert_eq!(queue.try_push(Packet::Pong, 40), Ok(100));
        // Free packets (Ping, Close) get through a full queue.
        assert_eq!(queue.try_push(Packet::Ping, 0), Ok(100));
        let mut batch = Vec::new();
        assert_eq!(outbox.try_recv_many(&mut batch, 64), 3);
        assert_eq!(
            queue.try_push(Packet::Pong, 50),
            Err(Refused::Full(Packet::Pong)),
            "taken is not written: the room comes back on release"
        );
        queue.release(100);
        assert_eq!(queue.try_push(Packet::Pong, 100), Ok(100));
    }

    #[test]
    fn waiting_senders_get_released_room_in_order_before_anyone_who_only_tries() {
        let (queue, mut outbox) = send_queue(100);
        queue.try_push(Packet::Ping, 90).unwrap();
        let mut first = queue.push(Packet::Pong, 50, false);
        let mut second = queue.push(Packet::Ping, 30, false);
        assert!(
            poll_once(&mut first).is_pending(),
            "10 bytes of room, 50 needed"
        );
        assert!(
            poll_once(&mut second).is_pending(),
            "in line behind the first"
        );
        queue.release(40);
        assert!(
            poll_once(&mut second).is_pending(),
            "the first is served first"
        );
        assert_eq!(
            queue.try_push(Packet::Pong, 10),
            Err(Refused::Full(Packet::Pong)),
            "released room went to the line"
        );
        assert_eq!(poll_once(&mut first), Poll::Ready(Ok(Offered::Queued)));
        queue.release(50);
        assert_eq!(poll_once(&mut second), Poll::Ready(Ok(Offered::Queued)));
        let mut batch = Vec::new();
        outbox.try_recv_many(&mut batch, 64);
        assert_eq!(batch, [Packet::Ping, Packet::Pong, Packet::Ping]);
        // 90 + 50 + 30 taken, 40 + 50 given back: 20 left.
        assert_eq!(
            queue.try_push(Packet::Pong, 21),
            Err(Refused::Full(Packet::Pong))
        );
        assert_eq!(queue.try_push(Packet::Pong, 20), Ok(100));
    }

    #[test]
    fn a_sender_that_gives_up_hands_its_share_of_room_to_the_one_behind() {
        let (queue, _outbox) = send_queue(100);
        queue.try_push(Packet::Ping, 70).unwrap();
        let mut first = queue.push(Packet::Pong, 60, false);
        let mut second = queue.push(Packet::Ping, 30, false);
        assert!(poll_once(&mut first).is_pending(), "holds 30 of its 60");
        assert!(poll_once(&mut second).is_pending());
        drop(first);
        assert_eq!(poll_once(&mut second), Poll::Ready(Ok(Offered::Queued)));
        assert_eq!(
            queue.try_push(Packet::Pong, 1),
            Err(Refused::Full(Packet::Pong))
        );
    }

    #[tokio::test]
    async fn closing_refuses_the_waiting_senders_and_every_packet_after() {
        let (queue, _outbox) = send_queue(100);
        let queue = Arc::new(queue);
        queue.try_push(Packet::Ping, 100).unwrap();
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move { queue.push(Packet::Pong, 10, false).await }
        });
        tokio::task::yield_now().await;
        queue.close();
        let refused = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(refused, Err(Packet::Pong));
        assert_eq!(queue.try_push(Packet::Ping, 0), Err(Refused::Closed));
    }
}
