//! Sets of connections and sending one event to many of them.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use crate::adapter::{NodeId, Payloads, Sender};
use crate::codec::{Codec, Message};
use crate::wire::Header;
use crate::{Conn, Method, Status};

/// A set of connections (every connection of a server, a room…). Cheap to clone; clones
/// share the set.
///
/// ```
/// let set = stmp::ConnSet::new();
/// assert!(set.is_empty());
/// ```
#[derive(Clone, Default, Debug)]
pub struct ConnSet {
    conns: Arc<RwLock<HashMap<u64, Conn>>>,
}

impl ConnSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a connection; returns whether it was new.
    pub fn insert(&self, conn: Conn) -> bool {
        self.write().insert(conn.id(), conn).is_none()
    }

    /// Removes a connection; returns whether it was there.
    pub fn remove(&self, conn: &Conn) -> bool {
        self.write().remove(&conn.id()).is_some()
    }

    /// Whether the connection is in the set.
    pub fn contains(&self, conn: &Conn) -> bool {
        self.read().contains_key(&conn.id())
    }

    /// The number of connections.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// The connection with this [`id`](Conn::id), if it is in the set.
    pub fn get(&self, id: u64) -> Option<Conn> {
        self.read().get(&id).cloned()
    }

    /// The connections, as they are now.
    pub fn to_vec(&self) -> Vec<Conn> {
        self.read().values().cloned().collect()
    }

    /// Sends an event to every connection but `exclude` (see [`broadcast`]).
    pub fn broadcast<E: Message>(
        &self,
        method: &Method,
        event: &E,
        exclude: Option<&Conn>,
    ) -> Result<Delivery, Status> {
        // Sending never waits, so the set is read in place rather than copied.
        let conns = self.read();
        broadcast(
            method,
            event,
            conns
                .values()
                .filter(|conn| exclude.is_none_or(|ex| !ex.same(conn))),
        )
    }

    /// Runs `each` on every connection, in place (sending never waits, so the set is read
    /// under its lock rather than copied).
    pub(crate) fn for_each(&self, each: impl FnMut(&Conn)) {
        self.read().values().for_each(each);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u64, Conn>> {
        self.conns.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<u64, Conn>> {
        self.conns.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// What happens to a connection that does not read its events fast enough: its send queue
/// (a byte budget, [`ServerBuilder::send_queue_bytes`](crate::ServerBuilder::send_queue_bytes))
/// is full when an event for it comes.
///
/// Broadcasts never wait for a slow member: the event is dropped for that member and counted
/// ([`Conn::events_dropped`], [`ServerStats::events_dropped`](crate::ServerStats)); the policy
/// decides whether the member stays. A member that reads nothing at all is also ended by the
/// write-stall timeout ([`ServerBuilder::write_stall_timeout`](crate::ServerBuilder::write_stall_timeout)).
///
/// ```
/// use stmp::{Server, SlowConsumer};
///
/// // socket.io's volatile events: whoever is behind misses them, and stays.
/// let server = Server::builder().slow_consumer(SlowConsumer::DropEvents).build();
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlowConsumer {
    /// Drop the event for that connection, count it, keep the connection.
    DropEvents,
    /// Drop and count, and close the connection with `TooManyRequests` once `max_dropped`
    /// events have been dropped for it (Centrifugo's `client.queue_max_size` with 1). Its
    /// client reconnects and can fetch what it missed.
    Disconnect {
        /// Dropped events after which the connection is closed (at least 1).
        max_dropped: u64,
    },
}

impl Default for SlowConsumer {
    /// `Disconnect { max_dropped: 1 }`: a member 4 MiB behind is better told than silently
    /// kept in a room it no longer hears.
    fn default() -> Self {
        SlowConsumer::Disconnect { max_dropped: 1 }
    }
}

/// What a broadcast did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Connections the event was queued on.
    pub queued: usize,
    /// Connections whose send queue was full or that had closed; they miss the event (see
    /// [`SlowConsumer`]).
    pub dropped: usize,
    /// How many times the event was serialised (once per content type).
    pub encodings: usize,
}

/// Sends `event` as a notify of `method` to each connection, serialising it once per content
/// type and sharing the bytes. It never waits: a connection whose send queue is full misses
/// the event (counted in [`Delivery::dropped`]) and its [`SlowConsumer`] policy applies.
pub fn broadcast<'a, E: Message>(
    method: &Method,
    event: &E,
    conns: impl IntoIterator<Item = &'a Conn>,
) -> Result<Delivery, Status> {
    broadcast_with(method, |codec| codec.encode(event), conns)
}

/// [`broadcast`] of an event that encodes itself: `encode` runs once per content type among
/// the connections. This is how an event whose type is only known at run time (a message
/// built from descriptors, say) reaches connections of every codec.
///
/// ```
/// use bytes::Bytes;
/// use stmp::{Method, broadcast_with};
///
/// const PING: Method = Method::new("demo.Events.Ping", "demo.PingEvent", "google.protobuf.Empty");
/// let delivery = broadcast_with(&PING, |_codec| Ok(Bytes::new()), []).unwrap();
/// assert_eq!(delivery.queued, 0);
/// ```
pub fn broadcast_with<'a>(
    method: &Method,
    mut encode: impl FnMut(&Codec) -> Result<Bytes, Status>,
    conns: impl IntoIterator<Item = &'a Conn>,
) -> Result<Delivery, Status> {
    let action = method.wire_action();
    let header = Header::new();
    let mut payloads = Payloads::lazy(&mut encode);
    let mut sender = Sender::to_conns(&action, method.name, &header, &mut payloads);
    for conn in conns {
        // Connections in a list belong to this process; there is no node to tell apart.
        sender.offer(NodeId::new(0), conn);
    }
    sender.finish()
}
