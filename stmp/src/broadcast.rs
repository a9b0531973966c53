//! Sets of connections and sending one event to many of them.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use crate::adapter::{Broadcast, ConnRef, Encode, Node, NodeId, Payloads, Sender, Target};
use crate::codec::{Codec, Message};
use crate::wire::Header;
use crate::{Conn, Method, Status};

/// Connections by id, so that going through them follows the order they were made in.
///
/// That order is what a broadcast to thousands of connections wants: their state on the server
/// (the connection's `Arc`, the socket, the kernel's file and socket structures) was allocated
/// in that order too, so the sends walk memory mostly forward and the prefetchers keep up; in
/// a hash map's order every connection's state is a cold miss. See the fan-out notes in
/// `stmp-bench/README.md` for the measurement.
pub(crate) type ConnsById = BTreeMap<u64, Conn>;

/// A set of connections (every connection of a server, a room…). Cheap to clone; clones
/// share the set.
///
/// It goes through its connections in the order they were made (by [`Conn::id`]), for
/// [`to_vec`](Self::to_vec) and for a [`broadcast`](fn@crate::broadcast).
///
/// ```
/// let set = stmp::ConnSet::new();
/// assert!(set.is_empty());
/// ```
#[derive(Clone, Default, Debug)]
pub struct ConnSet {
    conns: Arc<RwLock<ConnsById>>,
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

    /// The connections, as they are now, oldest first.
    pub fn to_vec(&self) -> Vec<Conn> {
        self.read().values().cloned().collect()
    }

    /// Runs `each` on every connection, in place (sending never waits, so the set is read
    /// under its lock rather than copied).
    pub(crate) fn for_each(&self, each: impl FnMut(&Conn)) {
        self.read().values().for_each(each);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, ConnsById> {
        self.conns.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, ConnsById> {
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

/// Who a broadcast goes to: one connection (`&Conn`), a list (`&[Conn]`, `&Vec<Conn>`), a
/// [`ConnSet`], a room ([`Rooms::to`](crate::Rooms::to)), a user's devices
/// ([`Users::to`](crate::Users::to)) or everyone
/// ([`Server::everyone`](crate::Server::everyone)), minus the connections given to
/// [`except`](Self::except). Rooms, users and everyone go through the server's
/// [adapter](crate::adapter), so with a cluster adapter they reach every node.
///
/// ```no_run
/// # fn run(rooms: stmp::Rooms, users: stmp::Users, conn: stmp::Conn) -> Result<(), stmp::Status> {
/// # #[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
/// # struct Joined { #[prost(string, tag = "1")] user: String }
/// use stmp::{Method, broadcast};
///
/// const JOINED: Method = Method::new("chat.Events.Joined", "chat.Joined", "google.protobuf.Empty");
/// let event = Joined { user: "alice".into() };
/// broadcast(rooms.to("lobby").except(&conn), &JOINED, &event)?;
/// broadcast(users.to("bob"), &JOINED, &event)?;
/// broadcast(&conn, &JOINED, &event)?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Audience<'a> {
    to: To<'a>,
    except: Vec<u64>,
    except_elsewhere: Vec<ConnRef>,
}

#[derive(Clone, Debug)]
enum To<'a> {
    Conns(&'a [Conn]),
    Set(&'a ConnSet),
    Node(&'a Node, Target),
}

impl<'a> Audience<'a> {
    /// The members of `target` on `node` (and, through its adapter, on the other nodes).
    pub fn on(node: &'a Node, target: Target) -> Audience<'a> {
        Audience::new(To::Node(node, target))
    }

    fn new(to: To<'a>) -> Audience<'a> {
        Audience {
            to,
            except: Vec::new(),
            except_elsewhere: Vec::new(),
        }
    }

    /// Leaves `conn` out (the sender, usually).
    pub fn except(mut self, conn: &Conn) -> Self {
        self.except.push(conn.id());
        self
    }

    /// Leaves out a connection of any node (from presence,
    /// [`Rooms::cluster_members`](crate::Rooms::cluster_members)); it applies to rooms, users and everyone.
    pub fn except_ref(mut self, conn: ConnRef) -> Self {
        self.except_elsewhere.push(conn);
        self
    }
}

impl<'a> From<&'a Conn> for Audience<'a> {
    fn from(conn: &'a Conn) -> Self {
        Audience::new(To::Conns(std::slice::from_ref(conn)))
    }
}

impl<'a> From<&'a [Conn]> for Audience<'a> {
    fn from(conns: &'a [Conn]) -> Self {
        Audience::new(To::Conns(conns))
    }
}

impl<'a> From<&'a Vec<Conn>> for Audience<'a> {
    fn from(conns: &'a Vec<Conn>) -> Self {
        Audience::new(To::Conns(conns))
    }
}

impl<'a, const N: usize> From<&'a [Conn; N]> for Audience<'a> {
    fn from(conns: &'a [Conn; N]) -> Self {
        Audience::new(To::Conns(conns))
    }
}

impl<'a> From<&'a ConnSet> for Audience<'a> {
    fn from(set: &'a ConnSet) -> Self {
        Audience::new(To::Set(set))
    }
}

/// Sends `event` as a notify of `method` to an [`Audience`], serialising it once per
/// content type and sharing the bytes. It never waits: a connection whose send queue is full
/// misses the event (counted in [`Delivery::dropped`]) and its [`SlowConsumer`] policy
/// applies. To connections whose writers wait with nothing queued, the event is written by
/// the broadcast itself rather than by each connection's writer task: by the caller for a few,
/// and for more by tasks it spawns on the current runtime, 64 connections each (outside a
/// runtime, all by the caller). Generated code has one typed function per event that calls
/// it.
pub fn broadcast<'a, E: Message>(
    to: impl Into<Audience<'a>>,
    method: &Method,
    event: &E,
) -> Result<Delivery, Status> {
    broadcast_with(to, method, Header::new(), |codec| codec.encode(event))
}

/// [`broadcast`] of an event that encodes itself, with a header on every notify: `encode`
/// runs once per content type among the recipients (for every codec of the server when a
/// cluster adapter ships it). This is how an event whose type is only known at run time (a
/// message built from descriptors, say) reaches connections of every codec.
///
/// ```
/// use bytes::Bytes;
/// use stmp::wire::Header;
/// use stmp::{Method, broadcast_with};
///
/// const PING: Method = Method::new("demo.Events.Ping", "demo.PingEvent", "google.protobuf.Empty");
/// let nobody: &[stmp::Conn] = &[];
/// let delivery = broadcast_with(nobody, &PING, Header::new(), |_codec| Ok(Bytes::new())).unwrap();
/// assert_eq!(delivery.queued, 0);
/// ```
pub fn broadcast_with<'a>(
    to: impl Into<Audience<'a>>,
    method: &Method,
    header: Header,
    mut encode: impl FnMut(&Codec) -> Result<Bytes, Status>,
) -> Result<Delivery, Status> {
    let audience = to.into();
    match audience.to {
        To::Node(node, target) => {
            let mut broadcast = Broadcast::new(method, target, node.id(), &mut encode);
            *broadcast.header_mut() = header;
            for id in audience.except {
                broadcast.except(ConnRef {
                    node: node.id(),
                    id,
                });
            }
            for conn in audience.except_elsewhere {
                broadcast.except(conn);
            }
            node.broadcast(&mut broadcast)
        }
        To::Conns(conns) => send_local(method, header, &mut encode, &audience.except, |each| {
            conns.iter().for_each(each)
        }),
        To::Set(set) => send_local(method, header, &mut encode, &audience.except, |each| {
            set.for_each(each)
        }),
    }
}

/// Sends to connections held by the caller: they are this process's, so ids alone tell
/// them apart.
fn send_local(
    method: &Method,
    header: Header,
    encode: &mut Encode<'_>,
    except: &[u64],
    conns: impl FnOnce(&mut dyn FnMut(&Conn)),
) -> Result<Delivery, Status> {
    let action = method.wire_action();
    let mut payloads = Payloads::lazy(encode);
    let mut sender = Sender::to_conns(&action, method.name, &header, &mut payloads);
    conns(&mut |conn: &Conn| {
        if !except.contains(&conn.id()) {
            sender.offer(NodeId::new(0), conn);
        }
    });
    sender.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::tests::made_in_order;

    #[test]
    fn a_set_goes_through_its_connections_in_the_order_they_were_made() {
        let made = made_in_order(40);
        let set = ConnSet::new();
        // Added out of order (every seventh, wrapping), as joins and reconnects come.
        for i in 0..made.len() {
            assert!(set.insert(made[i * 7 % made.len()].clone()));
        }
        set.remove(&made[3]);
        let expected: Vec<u64> = made
            .iter()
            .map(Conn::id)
            .filter(|&id| id != made[3].id())
            .collect();
        let listed: Vec<u64> = set.to_vec().iter().map(Conn::id).collect();
        assert_eq!(listed, expected);
        let mut visited = Vec::new();
        set.for_each(|conn| visited.push(conn.id()));
        assert_eq!(visited, expected);
    }
}
