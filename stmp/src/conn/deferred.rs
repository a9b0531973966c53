//! Events a broadcast writes itself, on tasks of its own, rather than through each
//! connection's writer task.
//!
//! A broadcast to thousands of idle connections would otherwise wake thousands of writer
//! tasks, each polled once to write one event and then parked again: a wake-up, a poll and a
//! waker stored per connection, on top of the write. Instead, the send queue of a connection
//! whose writer waits with nothing queued hands the event back (as it does to a lone sender
//! writing inline) and the broadcast writes such events in chunks, one task per chunk, on the
//! runtime's workers; each chunk leaves as soon as it is full, so writing starts while the
//! broadcast is still offering. While an event waits for its chunk, the connection's writer
//! takes nothing, so packets queued meanwhile still leave after it.
//!
//! The event is the same packet for every connection of a content type, so a chunk holds it
//! once and each of its writes names it: a write is 16 bytes, not a packet of its own. On
//! thousands of connections each byte of a write is written by the broadcast and read by the
//! chunk's task from memory that is out of the cache; with a packet in each (104 bytes) the
//! chunks cost a broadcast's server three cache lines per connection, and the refcounts of
//! the shared payload went back and forth between the broadcasting worker and the writing one.

use super::Conn;
use crate::codec::Codec;
use crate::wire::Packet;

/// Handed-back events a broadcast writes where it is, without spawning: a task costs more than
/// a few writes.
const WRITE_IN_PLACE_AT_MOST: usize = 8;

/// Handed-back events one task writes: enough that spawning costs little per event, few enough
/// that a task holds a worker for well under a millisecond and the chunks spread over workers.
const CHUNK: usize = 64;

/// Packets queued behind a handed-back event that join its write, as many as the writer task
/// takes at once.
const JOIN_AT_MOST: usize = 63;

/// Which of a broadcast's packets a write carries: one per content type its connections use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EventRef(u32);

/// An event the send queue handed back for the broadcast to write: its connection, which of
/// the broadcast's packets, and the room the packet holds in the connection's send queue.
struct DeferredWrite {
    conn: Conn,
    /// At most the connection's send budget, which is a `u32`.
    cost: u32,
    event: EventRef,
}

impl DeferredWrite {
    /// Writes the event, with what was queued behind it since: in a burst of broadcasts the
    /// later events wait behind the first, and leave in its write rather than in one more.
    fn write(self, packet: &Packet) {
        let conn = &self.conn;
        let cost = self.cost as usize;
        let mut behind = Vec::new();
        let behind_room = conn
            .shared
            .outbox
            .take_while_inline(&mut behind, JOIN_AT_MOST);
        if behind.is_empty() {
            // The common case: a lone event needs no `Vec`, nor a packet of its own.
            conn.write_handed_back(std::slice::from_ref(packet), cost);
            return;
        }
        behind.insert(0, packet.clone());
        conn.write_handed_back(behind, cost + behind_room);
    }

    /// Gives the event back to the head of the connection's queue, for its writer task: the
    /// write will not happen, and the connection must not wait for it. Its room stays paid:
    /// the writer task gives it back once it has written it.
    fn give_back(self, packet: &Packet) {
        let outbox = &self.conn.shared.outbox;
        outbox.end_inline_unwritten(vec![packet.clone()], self.cost as usize);
    }
}

/// Writes that one task makes, with the packets they name. Dropped with writes unmade (its
/// task never ran: the runtime shut down, say), it gives each event back to its connection's
/// writer task, so that no connection waits for it.
#[derive(Default)]
struct Chunk {
    events: Vec<Packet>,
    writes: Vec<DeferredWrite>,
}

impl Chunk {
    fn write_all(mut self) {
        // In order, each taken off the end only as it is made: were a write to panic, the
        // ones after it would still be here for `Drop` to give back.
        self.writes.reverse();
        while let Some(write) = self.writes.pop() {
            match self.events.get(write.event.0 as usize) {
                Some(packet) => write.write(packet),
                None => debug_assert!(false, "a write names a packet of its chunk"),
            }
        }
    }

    /// The writes from the `from`th on, with the packets, for a task of their own.
    fn take_writes(&mut self, from: usize) -> Chunk {
        let writes = match from {
            // Room for the next chunk is reserved when it starts (`DeferredWrites::push`).
            0 => std::mem::take(&mut self.writes),
            from => self.writes.split_off(from),
        };
        Chunk {
            events: self.events.clone(),
            writes,
        }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        let events = &self.events;
        for write in self.writes.drain(..) {
            if let Some(packet) = events.get(write.event.0 as usize) {
                write.give_back(packet);
            }
        }
    }
}

/// The handed-back events of one broadcast, written as they gather: each full chunk goes to a
/// task of its own at once, so the first connections are written while the broadcast still
/// offers the event to the rest, rather than after it has offered it to all of them. A few
/// left at the end are written right here; with no runtime, all of them are. Dropped without
/// [`finish`](Self::finish), it gives the events back to the connections' writer tasks.
#[derive(Default)]
pub(crate) struct DeferredWrites {
    /// The codec of each of `gathering.events`, in the same order.
    codecs: Vec<Codec>,
    gathering: Chunk,
}

impl DeferredWrites {
    /// The broadcast's packet for connections that use `codec`, if it has been added.
    pub(crate) fn event(&self, codec: &Codec) -> Option<EventRef> {
        let content_type = codec.content_type();
        let at = self
            .codecs
            .iter()
            .position(|known| known.content_type() == content_type)?;
        // One per content type the connections use: a handful.
        Some(EventRef(at as u32))
    }

    /// Adds the broadcast's packet for connections that use `codec`.
    pub(crate) fn add_event(&mut self, codec: &Codec, packet: Packet) -> EventRef {
        let event = EventRef(self.codecs.len() as u32);
        self.codecs.push(codec.clone());
        self.gathering.events.push(packet);
        event
    }

    /// The packet `event` names.
    pub(super) fn packet(&self, event: EventRef) -> Option<&Packet> {
        self.gathering.events.get(event.0 as usize)
    }

    /// Adds an event the queue of `conn` handed back, which holds `cost` of its room; a full
    /// chunk leaves for a task of its own.
    pub(super) fn push(&mut self, conn: Conn, event: EventRef, cost: usize) {
        let writes = &mut self.gathering.writes;
        if writes.capacity() == 0 {
            writes.reserve_exact(CHUNK);
        }
        writes.push(DeferredWrite {
            conn,
            // The queue's cost is at most its budget, a `u32` ([`super::Shared`]).
            cost: cost as u32,
            event,
        });
        // Without a runtime everything gathers for `finish`: looked for once per chunk.
        if !writes.len().is_multiple_of(CHUNK) {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let chunk = self.gathering.take_writes(0);
            write_on_a_task(&runtime, chunk);
        }
    }

    /// Writes what is left: a few right here, more on tasks of the runtime this runs on (all
    /// right here when there is none).
    pub(crate) fn finish(mut self) {
        let gathering = &mut self.gathering;
        let runtime = match tokio::runtime::Handle::try_current() {
            Ok(runtime) if gathering.writes.len() > WRITE_IN_PLACE_AT_MOST => runtime,
            _ => {
                gathering.take_writes(0).write_all();
                return;
            }
        };
        while !gathering.writes.is_empty() {
            let chunk = gathering.take_writes(gathering.writes.len().saturating_sub(CHUNK));
            write_on_a_task(&runtime, chunk);
        }
    }
}

fn write_on_a_task(runtime: &tokio::runtime::Handle, chunk: Chunk) {
    runtime.spawn(async move { chunk.write_all() });
}
