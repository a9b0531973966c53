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

use super::Conn;
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

/// An event the send queue handed back for the broadcast to write. Dropped unwritten, it goes
/// back to the head of the queue for the writer task, so the connection never waits for it.
pub(crate) struct DeferredWrite {
    conn: Conn,
    packet: Option<Packet>,
    cost: usize,
}

impl DeferredWrite {
    pub(super) fn new(conn: Conn, packet: Packet, cost: usize) -> DeferredWrite {
        DeferredWrite {
            conn,
            packet: Some(packet),
            cost,
        }
    }

    /// Writes the event, with what was queued behind it since: in a burst of broadcasts the
    /// later events wait behind the first, and leave in its write rather than in one more.
    fn write(mut self) {
        let Some(packet) = self.packet.take() else {
            return;
        };
        let conn = &self.conn;
        let mut behind = Vec::new();
        let behind_room = conn
            .shared
            .outbox
            .take_while_inline(&mut behind, JOIN_AT_MOST);
        if behind.is_empty() {
            // The common case: a lone event needs no `Vec`.
            conn.write_handed_back([packet], self.cost);
            return;
        }
        let room = self.cost + behind_room;
        behind.insert(0, packet);
        conn.write_handed_back(behind, room);
    }
}

impl Drop for DeferredWrite {
    fn drop(&mut self) {
        if let Some(packet) = self.packet.take() {
            // Its room stays paid: the writer task gives it back once it has written it.
            let outbox = &self.conn.shared.outbox;
            outbox.end_inline_unwritten(vec![packet], self.cost);
        }
    }
}

/// The handed-back events of one broadcast, written as they gather: each full chunk goes to a
/// task of its own at once, so the first connections are written while the broadcast still
/// offers the event to the rest, rather than after it has offered it to all of them. A few
/// left at the end are written right here; with no runtime, all of them are.
#[derive(Default)]
pub(crate) struct DeferredWrites {
    gathering: Vec<DeferredWrite>,
}

impl DeferredWrites {
    /// Adds a handed-back event; a full chunk leaves for a task of its own.
    pub(crate) fn push(&mut self, write: DeferredWrite) {
        self.gathering.push(write);
        // Without a runtime everything gathers for `finish`: looked for once per chunk.
        if !self.gathering.len().is_multiple_of(CHUNK) {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let chunk = std::mem::replace(&mut self.gathering, Vec::with_capacity(CHUNK));
            write_on_a_task(&runtime, chunk);
        }
    }

    /// Writes what is left: a few right here, more on tasks of the runtime this runs on (all
    /// right here when there is none).
    pub(crate) fn finish(self) {
        let mut writes = self.gathering;
        let runtime = match tokio::runtime::Handle::try_current() {
            Ok(runtime) if writes.len() > WRITE_IN_PLACE_AT_MOST => runtime,
            _ => {
                writes.into_iter().for_each(DeferredWrite::write);
                return;
            }
        };
        while !writes.is_empty() {
            let chunk = writes.split_off(writes.len().saturating_sub(CHUNK));
            write_on_a_task(&runtime, chunk);
        }
    }
}

fn write_on_a_task(runtime: &tokio::runtime::Handle, chunk: Vec<DeferredWrite>) {
    runtime.spawn(async move { chunk.into_iter().for_each(DeferredWrite::write) });
}

/// Writes handed-back events as [`DeferredWrites`] does.
#[cfg(test)]
pub(crate) fn write_deferred(writes: Vec<DeferredWrite>) {
    let mut gathered = DeferredWrites::default();
    writes.into_iter().for_each(|write| gathered.push(write));
    gathered.finish();
}
