//! The adapter seam: how rooms, users and "everyone" reach connections on other server
//! nodes.
//!
//! A server's connections, rooms and users live in its [`Node`]. Every broadcast to a room, a
//! user or everyone is a [`Broadcast`] value handed to the server's [`Adapter`], and every
//! membership change and presence question goes through it too. The default,
//! [`LocalAdapter`], delivers on this node only, straight from the node's sharded maps: no
//! copy of the members, no allocation per recipient, one serialisation per content type. A
//! cluster adapter (NATS, say) also ships each broadcast to the other nodes as bytes, with
//! the payload already encoded for every codec the server accepts, and delivers what other
//! nodes ship through [`Node::deliver`], the same path as local broadcasts.
//!
//! Install one with [`ServerBuilder::adapter`](crate::ServerBuilder::adapter):
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use stmp::adapter::{Adapter, Broadcast, Membership, Node};
//! use stmp::{Delivery, Server, Status};
//!
//! /// Delivers locally and remembers which rooms this node has members in, as a cluster
//! /// adapter would to (un)subscribe.
//! #[derive(Default)]
//! struct Interest(Mutex<Vec<String>>);
//!
//! impl Adapter for Interest {
//!     fn membership(&self, _node: &Node, change: Membership<'_>) {
//!         match change {
//!             Membership::Joined { room, first: true, .. } => self.0.lock().unwrap().push(room.into()),
//!             Membership::Left { room, last: true, .. } => self.0.lock().unwrap().retain(|r| r != room),
//!             _ => {}
//!         }
//!     }
//! }
//!
//! let interest = Arc::new(Interest::default());
//! let builder = Server::builder().adapter(interest.clone());
//! let rooms = builder.rooms();
//! let server = builder.build();
//! # let _ = (rooms, server);
//! ```

mod envelope;
mod frame;
mod groups;
mod node;
mod presence;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Weak;
use std::time::Duration;

pub use envelope::{Broadcast, Encode, Target};
pub(crate) use envelope::{Payloads, Sender};
pub use node::Node;
pub use presence::{Answer, Member, Query};

use crate::{Delivery, Status};

/// A future an adapter returns from a presence query.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which server node: random for each [`Node`], the same for all its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(u64);

impl NodeId {
    /// The id with this number (as shipped between nodes).
    pub const fn new(id: u64) -> NodeId {
        NodeId(id)
    }

    /// A random id.
    pub fn random() -> NodeId {
        NodeId(fastrand::u64(..))
    }

    /// Its number.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A connection anywhere in the cluster: its node and its [`Conn::id`](crate::Conn::id) there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnRef {
    /// The node that holds it.
    pub node: NodeId,
    /// Its id on that node.
    pub id: u64,
}

/// A change of membership on this node, as the adapter hears it. `first` and `last` say
/// whether the room (or user) just got its first connection on this node or lost its last
/// one: where a cluster adapter subscribes and unsubscribes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Membership<'a> {
    /// A connection joined a room.
    Joined {
        /// The room.
        room: &'a str,
        /// The connection's id on this node.
        conn: u64,
        /// Whether it is the room's first member on this node.
        first: bool,
    },
    /// A connection left a room (or closed).
    Left {
        /// The room.
        room: &'a str,
        /// The connection's id on this node.
        conn: u64,
        /// Whether the room has no member left on this node.
        last: bool,
    },
    /// A connection was bound to a user.
    Bound {
        /// The user.
        user: &'a str,
        /// The connection's id on this node.
        conn: u64,
        /// Whether it is the user's first connection on this node.
        first: bool,
    },
    /// A connection was unbound from a user (or closed).
    Unbound {
        /// The user.
        user: &'a str,
        /// The connection's id on this node.
        conn: u64,
        /// Whether the user has no connection left on this node.
        last: bool,
    },
}

/// Where broadcasts, membership changes and presence questions of a server go. Every method
/// has a default that serves this node alone, so [`LocalAdapter`] is `impl Adapter for
/// LocalAdapter {}`; a cluster adapter overrides them to reach the other nodes too.
pub trait Adapter: Send + Sync + 'static {
    /// Called once, when the server is built, with the node the adapter serves. Keep the
    /// `Weak` (the node owns the adapter) to deliver what other nodes send.
    fn attach(&self, node: Weak<Node>) {
        let _ = node;
    }

    /// A broadcast from this node. The default delivers it here; a cluster adapter also
    /// ships it ([`Broadcast::to_bytes`] with [`Node::codecs`]). It must not wait.
    fn broadcast(&self, node: &Node, broadcast: &mut Broadcast<'_>) -> Result<Delivery, Status> {
        node.deliver(broadcast)
    }

    /// A membership change on this node. It runs while the room's (or user's) lock is
    /// held, so changes of one room arrive in order; it must not wait, and must not call
    /// back into the node's rooms or users (queue the work instead).
    fn membership(&self, node: &Node, change: Membership<'_>) {
        let _ = (node, change);
    }

    /// Answers a presence question for the whole cluster within `timeout`: nodes that do
    /// not answer in time are left out, not waited for. The default answers for this node.
    fn query(
        &self,
        node: &Node,
        query: Query,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Answer, Status>> {
        let _ = timeout;
        let answer = node.answer(&query);
        Box::pin(std::future::ready(Ok(answer)))
    }
}

/// The default adapter: everything stays on this node.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalAdapter;

impl Adapter for LocalAdapter {}

impl<A: Adapter> Adapter for std::sync::Arc<A> {
    fn attach(&self, node: Weak<Node>) {
        (**self).attach(node)
    }
    fn broadcast(&self, node: &Node, broadcast: &mut Broadcast<'_>) -> Result<Delivery, Status> {
        (**self).broadcast(node, broadcast)
    }
    fn membership(&self, node: &Node, change: Membership<'_>) {
        (**self).membership(node, change)
    }
    fn query(
        &self,
        node: &Node,
        query: Query,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Answer, Status>> {
        (**self).query(node, query, timeout)
    }
}
