//! The connection's writer, shared by its writer task and the senders that write inline.
//!
//! Who writes is decided by the send queue ([`super::outbox`]): the writer task, or one sender
//! at a time while the task waits with nothing queued. So the lock here is never waited for;
//! it only makes the handover safe.

use std::sync::Mutex;

use super::io::PacketWriter;
use crate::Status;
use crate::sync::lock;

/// Where the writer is kept while its task waits.
#[derive(Default)]
pub(crate) struct WriterSlot {
    state: Mutex<Slot>,
}

#[derive(Default)]
struct Slot {
    /// There while the writer task waits; the task takes it out to write.
    writer: Option<PacketWriter>,
    /// Send-queue room of packets written inline whose bytes are not all out yet: given back
    /// once the writer task has written them.
    owed_room: usize,
    /// An inline write left bytes unwritten or unflushed.
    unfinished: bool,
    /// An inline write failed: the writer task reports it and ends. Boxed: every connection
    /// holds a slot, few a failure.
    failed: Option<Box<Status>>,
}

/// What the writer task finds in the slot when it takes the writer.
pub(crate) struct Taken {
    pub(crate) writer: Option<PacketWriter>,
    pub(crate) owed_room: usize,
    pub(crate) unfinished: bool,
    pub(crate) failed: Option<Box<Status>>,
}

/// What became of an inline write.
pub(crate) enum Inline {
    /// Everything went out.
    Written,
    /// Some bytes are left for the writer task, with the packets' room.
    Unfinished,
    /// The writer is not there (its task is writing) or an earlier inline write is not done:
    /// the packets are given back.
    Declined,
}

impl WriterSlot {
    /// Puts the writer back for inline writes while the task waits.
    pub(crate) fn put(&self, writer: PacketWriter) {
        lock(&self.state).writer = Some(writer);
    }

    /// Takes the writer, and what inline writes left, for the task to write.
    pub(crate) fn take(&self) -> Taken {
        let mut slot = lock(&self.state);
        Taken {
            writer: slot.writer.take(),
            owed_room: std::mem::take(&mut slot.owed_room),
            unfinished: std::mem::take(&mut slot.unfinished),
            failed: slot.failed.take(),
        }
    }

    /// Lets the writer give back its buffers: the connection has gone quiet
    /// ([`PacketWriter::give_back_buffer`]).
    pub(crate) fn give_back_buffers(&self) {
        if let Some(writer) = lock(&self.state).writer.as_mut() {
            writer.give_back_buffer();
        }
    }

    /// Drops the writer (and with it the transport): the writer task has ended.
    pub(crate) fn clear(&self) {
        lock(&self.state).writer = None;
    }

    /// Writes `packets` without waiting; `room` is their send-queue room, given back by the
    /// caller on [`Inline::Written`] and by the writer task otherwise.
    pub(crate) fn write_now(&self, packets: &[crate::wire::Packet], room: usize) -> Inline {
        let mut slot = lock(&self.state);
        let slot = &mut *slot;
        let Some(writer) = slot.writer.as_mut() else {
            return Inline::Declined;
        };
        if slot.failed.is_some() || slot.unfinished {
            return Inline::Declined;
        }
        match writer.write_now(packets) {
            Ok(true) => Inline::Written,
            Ok(false) => {
                slot.unfinished = true;
                slot.owed_room += room;
                Inline::Unfinished
            }
            Err(status) => {
                slot.failed = Some(Box::new(status));
                slot.owed_room += room;
                Inline::Unfinished
            }
        }
    }
}
