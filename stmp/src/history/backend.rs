//! The storage seam of [`History`](super::History): where a room's events are stamped, kept
//! and read back. The in-process ring ([`InProcess`](super::InProcess)) is the default; a
//! cluster keeps them where every node reads the same offsets (NATS JetStream in
//! `stmp-nats`).
//!
//! A backend owns three promises, whatever it stores in:
//! - offsets grow within an epoch, and an epoch names one unbroken history: when events may
//!   have been lost (a restart without persistence, a stream recreated) the epoch changes;
//! - a join replays the events after the client's position before the connection hears any
//!   live event, each exactly once (the room's publishes and joins are serialised against
//!   each other on this node);
//! - `recovered: true` only when every missed event was replayed.
//!
//! The helpers below put a backend's events and positions on the wire.

use bytes::Bytes;

use super::protocol::{self, POSITION, POSITION_METHOD, StreamPosition};
use super::{Event, Joined, Published, Retention};
use crate::adapter::{BoxFuture, Broadcast};
use crate::wire::{Action, Header, Notify, Packet};
use crate::{Conn, Rooms, Status};

/// The room a backend call is about, and what the [`History`](super::History) knows of it.
#[derive(Clone, Copy, Debug)]
pub struct RoomHistory<'a> {
    /// The room's name (the stream's).
    pub name: &'a str,
    /// Its retention (by room-name prefix).
    pub retention: Retention,
    /// The rooms its members are kept in on this node.
    pub rooms: &'a Rooms,
}

/// Where a [`History`](super::History) stamps, keeps and reads back its rooms' events.
pub trait Backend: Send + Sync + 'static {
    /// Stamps `event` with the room's next position, keeps it, and has it delivered to the
    /// room's members (on every node the backend reaches) but `exclude`, who instead learns
    /// its position moved past it.
    fn publish<'a>(
        &'a self,
        room: RoomHistory<'a>,
        event: Event,
        exclude: Option<&'a Conn>,
    ) -> BoxFuture<'a, Result<Published, Status>>;

    /// Puts `conn` in the room. With `resume`, first replays what the client missed after it
    /// (or nothing, answering `recovered: false`); a client that tracks positions then gets
    /// the position notify ([`send_position`]). Already a member: nothing happens.
    fn join<'a>(
        &'a self,
        room: RoomHistory<'a>,
        conn: &'a Conn,
        resume: Option<StreamPosition>,
    ) -> BoxFuture<'a, Joined>;

    /// The newest position of `room`, if it has a stream yet.
    fn position<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Option<StreamPosition>>;
}

impl<B: Backend> Backend for std::sync::Arc<B> {
    fn publish<'a>(
        &'a self,
        room: RoomHistory<'a>,
        event: Event,
        exclude: Option<&'a Conn>,
    ) -> BoxFuture<'a, Result<Published, Status>> {
        (**self).publish(room, event, exclude)
    }
    fn join<'a>(
        &'a self,
        room: RoomHistory<'a>,
        conn: &'a Conn,
        resume: Option<StreamPosition>,
    ) -> BoxFuture<'a, Joined> {
        (**self).join(room, conn, resume)
    }
    fn position<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Option<StreamPosition>> {
        (**self).position(room)
    }
}

/// Whether `conn`'s client tracks positions (said `stmp-history: 1` in its handshake).
pub fn tracks_positions(conn: &Conn) -> bool {
    protocol::supports(conn.peer_header())
}

/// Sends `conn` the position notify: where its stream is now and, answering a resume, whether
/// everything missed was replayed. Clients that do not track positions get nothing. Returns
/// whether it was queued.
pub fn send_position(conn: &Conn, position: &StreamPosition, recovered: Option<bool>) -> bool {
    tracks_positions(conn)
        && conn.offer_event(Packet::Notify(Notify {
            action: Action::Method(POSITION_METHOD.to_owned()),
            header: protocol::position_header(position, recovered),
            payload: Bytes::new(),
        }))
}

/// Queues a kept broadcast on `conn` alone, stamped with `position`: one replayed event.
/// Returns `false` when it could not be (no payload for the connection's codec, or its send
/// queue is full): the replay is then incomplete.
pub fn replay(conn: &Conn, broadcast: &mut Broadcast<'_>, position: &StreamPosition) -> bool {
    let Ok(Some(payload)) = broadcast.payload(conn.codec()) else {
        return false;
    };
    let mut header = Header::new();
    for (key, value) in broadcast.header().iter() {
        if key != POSITION {
            header.append(key, value);
        }
    }
    header.append(POSITION, position.to_value());
    conn.offer_event(Packet::Notify(Notify {
        action: broadcast.action().clone(),
        header,
        payload,
    }))
}

/// Marks `broadcast` as an event of `position` for its live recipients.
pub fn stamp(broadcast: &mut Broadcast<'_>, position: &StreamPosition) {
    broadcast.header_mut().insert(POSITION, position.to_value());
}
