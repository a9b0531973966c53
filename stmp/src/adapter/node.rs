//! One server node's connections, rooms and users, and the adapter they go through.

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use super::groups::{Groups, lock, shard_of};
use super::{Adapter, Answer, Broadcast, ConnRef, Member, Membership, NodeId, Query, Target};
use crate::codec::{Codec, Codecs};
use crate::{Conn, ConnSet, Delivery, Status};

/// This node's connections (everyone), rooms and users, and the [`Adapter`] they go
/// through. A server has one ([`Server::node`](crate::Server::node)); its
/// [`Rooms`](crate::Rooms) and [`Users`](crate::Users) are handles to it. Adapters use it to
/// deliver what other nodes send ([`deliver`](Self::deliver)) and to answer their presence
/// questions ([`answer`](Self::answer)).
pub struct Node {
    id: NodeId,
    everyone: ConnSet,
    rooms: Groups,
    users: Groups,
    /// Held by a connection's whole bind (leave the old user, join the new), by connection
    /// id, so two binds of one connection cannot interleave.
    binding: Box<[Mutex<()>]>,
    adapter: OnceLock<Box<dyn Adapter>>,
    codecs: OnceLock<Vec<Codec>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("connections", &self.everyone.len())
            .finish_non_exhaustive()
    }
}

/// Which kind of group a membership is in.
#[derive(Clone, Copy)]
enum Kind {
    Room,
    User,
}

impl Node {
    /// A node of its own, with the local adapter until [`install`](Self::install).
    pub(crate) fn new() -> Arc<Node> {
        Arc::new(Node {
            id: NodeId::random(),
            everyone: ConnSet::new(),
            rooms: Groups::default(),
            users: Groups::default(),
            binding: (0..32).map(|_| Mutex::default()).collect(),
            adapter: OnceLock::new(),
            codecs: OnceLock::new(),
        })
    }

    /// Installs the adapter and the server's codecs (once; later calls are ignored).
    pub(crate) fn install(self: &Arc<Self>, adapter: Box<dyn Adapter>, codecs: &Codecs) {
        let _ = self.codecs.set(codecs.list().to_vec());
        if self.adapter.set(adapter).is_ok()
            && let Some(adapter) = self.adapter.get()
        {
            adapter.attach(Arc::downgrade(self));
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The codecs the server accepts: a broadcast shipped to other nodes carries its
    /// payload in each.
    pub fn codecs(&self) -> &[Codec] {
        self.codecs
            .get()
            .map_or(DEFAULT_CODECS.as_slice(), Vec::as_slice)
    }

    /// How the cluster names `conn` (a connection of this node).
    pub fn conn_ref(&self, conn: &Conn) -> ConnRef {
        ConnRef {
            node: self.id,
            id: conn.id(),
        }
    }

    /// Every connection of this node.
    pub(crate) fn everyone(&self) -> &ConnSet {
        &self.everyone
    }

    /// Sends `broadcast` through the adapter: to this node's recipients, and to the other
    /// nodes' if the adapter reaches them.
    pub fn broadcast(&self, broadcast: &mut Broadcast<'_>) -> Result<Delivery, Status> {
        match self.adapter.get() {
            Some(adapter) => adapter.broadcast(self, broadcast),
            None => self.deliver(broadcast),
        }
    }

    /// Delivers `broadcast` to its recipients on this node only, without the adapter: what
    /// an adapter calls for broadcasts from here and from other nodes alike.
    pub fn deliver(&self, broadcast: &mut Broadcast<'_>) -> Result<Delivery, Status> {
        let id = self.id;
        let (target, mut sender) = broadcast.split();
        match target {
            Target::Room(room) => self.rooms.for_each(room, |conn| sender.offer(id, conn)),
            Target::User(user) => self.users.for_each(user, |conn| sender.offer(id, conn)),
            Target::Everyone => self.everyone.for_each(|conn| sender.offer(id, conn)),
        }
        sender.finish()
    }

    /// Answers a presence question for this node's connections.
    pub fn answer(&self, query: &Query) -> Answer {
        match query {
            Query::Members(room) => {
                let ids: Vec<u64> = {
                    let mut ids = Vec::new();
                    self.rooms.for_each(room, |conn| ids.push(conn.id()));
                    ids
                };
                let mut members: Vec<Member> = ids
                    .into_iter()
                    .map(|id| Member {
                        conn: ConnRef { node: self.id, id },
                        user: self.user_of(id),
                    })
                    .collect();
                members.sort();
                Answer::Members(members)
            }
            Query::Rooms => Answer::Names(self.rooms.names()),
            Query::RoomsOf(conn) if conn.node == self.id => {
                Answer::Names(sorted(self.rooms.names_of(conn.id)))
            }
            Query::RoomsOf(_) => Answer::Names(Vec::new()),
            Query::Online => Answer::Names(self.users.names()),
            Query::Conns(user) => {
                let mut members = Vec::new();
                self.users.for_each(user, |conn| {
                    members.push(Member {
                        conn: self.conn_ref(conn),
                        user: Some(user.clone()),
                    })
                });
                members.sort();
                Answer::Members(members)
            }
        }
    }

    /// Asks the question of the whole cluster through the adapter, within `timeout`.
    pub async fn query(&self, query: Query, timeout: Duration) -> Result<Answer, Status> {
        match self.adapter.get() {
            Some(adapter) => adapter.query(self, query, timeout).await,
            None => Ok(self.answer(&query)),
        }
    }

    fn user_of(&self, id: u64) -> Option<String> {
        self.users.names_of(id).first().map(|name| name.to_string())
    }

    fn changed(&self, change: Membership<'_>) {
        if let Some(adapter) = self.adapter.get() {
            adapter.membership(self, change);
        }
    }

    fn groups(&self, kind: Kind) -> &Groups {
        match kind {
            Kind::Room => &self.rooms,
            Kind::User => &self.users,
        }
    }

    /// Adds `conn` to group `name`; its first group of this kind hooks its close, so it
    /// leaves them all when it ends.
    fn join(self: &Arc<Self>, kind: Kind, name: &str, conn: &Conn) -> bool {
        let id = conn.id();
        let joined = self.groups(kind).join(name, conn, |first| {
            self.changed(match kind {
                Kind::Room => Membership::Joined {
                    room: name,
                    conn: id,
                    first,
                },
                Kind::User => Membership::Bound {
                    user: name,
                    conn: id,
                    first,
                },
            })
        });
        if joined.first_of_conn {
            let node: Weak<Node> = Arc::downgrade(self);
            conn.on_close(move |_| {
                if let Some(node) = node.upgrade() {
                    node.leave_all(kind, id);
                }
            });
        }
        // A connection that closed while joining: its close hook may have run before the
        // membership above was recorded.
        if joined.added && conn.is_closed() {
            self.leave_all(kind, id);
        }
        joined.added
    }

    fn leave(&self, kind: Kind, name: &str, id: u64) -> bool {
        self.groups(kind).leave(name, id, |last| {
            self.changed(match kind {
                Kind::Room => Membership::Left {
                    room: name,
                    conn: id,
                    last,
                },
                Kind::User => Membership::Unbound {
                    user: name,
                    conn: id,
                    last,
                },
            })
        })
    }

    fn leave_all(&self, kind: Kind, id: u64) -> Vec<Arc<str>> {
        let names = self.groups(kind).names_of(id);
        for name in &names {
            self.leave(kind, name, id);
        }
        self.groups(kind).forget(id);
        names
    }

    pub(crate) fn join_room(self: &Arc<Self>, room: &str, conn: &Conn) -> bool {
        self.join(Kind::Room, room, conn)
    }

    pub(crate) fn leave_room(&self, room: &str, id: u64) -> bool {
        self.leave(Kind::Room, room, id)
    }

    pub(crate) fn leave_rooms(&self, id: u64) -> Vec<String> {
        sorted(self.leave_all(Kind::Room, id))
    }

    pub(crate) fn rooms(&self) -> &Groups {
        &self.rooms
    }

    pub(crate) fn users(&self) -> &Groups {
        &self.users
    }

    /// Binds `conn` to `user`, unbinding it from any other user first.
    pub(crate) fn bind(self: &Arc<Self>, user: &str, conn: &Conn) {
        let _binding = lock(&self.binding[shard_of(&conn.id()) % self.binding.len()]);
        for previous in self.users.names_of(conn.id()) {
            if &*previous != user {
                self.leave(Kind::User, &previous, conn.id());
            }
        }
        self.join(Kind::User, user, conn);
    }

    /// Unbinds connection `id`; returns the user it was bound to.
    pub(crate) fn unbind(&self, id: u64) -> Option<String> {
        let _binding = lock(&self.binding[shard_of(&id) % self.binding.len()]);
        self.leave_all(Kind::User, id)
            .into_iter()
            .next()
            .map(|name| name.to_string())
    }

    pub(crate) fn user_of_conn(&self, id: u64) -> Option<String> {
        self.user_of(id)
    }
}

static DEFAULT_CODECS: std::sync::LazyLock<Vec<Codec>> =
    std::sync::LazyLock::new(|| Codecs::default().list().to_vec());

fn sorted(names: Vec<Arc<str>>) -> Vec<String> {
    let mut names: Vec<String> = names.into_iter().map(|name| name.to_string()).collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::conn::tests::parts;
    use crate::{Code, Method};

    const TICK: Method = Method::new("test.Events.Tick", "test.Tick", "google.protobuf.Empty");

    /// Records what the node tells its adapter.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl Adapter for Arc<Recorder> {
        fn membership(&self, _node: &Node, change: Membership<'_>) {
            lock(&self.0).push(format!("{change:?}"));
        }
    }

    fn send(node: &Node, target: Target, except: Option<&Conn>) -> Delivery {
        let mut encode = |_: &Codec| Ok(Bytes::from_static(b"tick"));
        let mut broadcast = Broadcast::new(&TICK, target, node.id(), &mut encode);
        if let Some(conn) = except {
            broadcast.except(node.conn_ref(conn));
        }
        node.broadcast(&mut broadcast).unwrap()
    }

    #[test]
    fn the_local_adapter_delivers_from_the_maps_and_leaves_out_the_except_list() {
        let node = Node::new();
        node.install(Box::new(crate::adapter::LocalAdapter), &Codecs::default());
        let (a, mut a_out) = Conn::new(parts(1 << 20));
        let (b, mut b_out) = Conn::new(parts(1 << 20));
        node.join_room("lobby", &a);
        node.join_room("lobby", &b);
        node.bind("alice", &b);
        node.everyone().insert(a.clone());
        node.everyone().insert(b.clone());

        let delivery = send(&node, Target::Room("lobby".into()), Some(&a));
        assert_eq!((delivery.queued, delivery.encodings), (1, 1));
        assert!(a_out.try_recv().is_none());
        assert!(b_out.try_recv().is_some());
        assert_eq!(send(&node, Target::User("alice".into()), None).queued, 1);
        assert!(b_out.try_recv().is_some());
        let everyone = send(&node, Target::Everyone, None);
        assert_eq!((everyone.queued, everyone.encodings), (2, 1));
        // The same id on another node is not this connection.
        let mut encode = |_: &Codec| Ok(Bytes::new());
        let mut elsewhere =
            Broadcast::new(&TICK, Target::Room("lobby".into()), node.id(), &mut encode);
        elsewhere.except(ConnRef {
            node: NodeId::new(node.id().get() ^ 1),
            id: a.id(),
        });
        assert_eq!(node.broadcast(&mut elsewhere).unwrap().queued, 2);

        assert_eq!(
            node.answer(&Query::Members("lobby".into())),
            Answer::Members({
                let mut members = vec![
                    Member {
                        conn: node.conn_ref(&a),
                        user: None,
                    },
                    Member {
                        conn: node.conn_ref(&b),
                        user: Some("alice".into()),
                    },
                ];
                members.sort();
                members
            })
        );
        assert_eq!(
            node.answer(&Query::RoomsOf(node.conn_ref(&a))),
            Answer::Names(vec!["lobby".into()])
        );
        assert_eq!(
            node.answer(&Query::Online),
            Answer::Names(vec!["alice".into()])
        );
    }

    #[test]
    fn membership_changes_say_when_a_group_gets_its_first_and_loses_its_last_member() {
        let recorder = Arc::new(Recorder::default());
        let node = Node::new();
        node.install(Box::new(recorder.clone()), &Codecs::default());
        let (a, _a_out) = Conn::new(parts(1024));
        let (b, _b_out) = Conn::new(parts(1024));
        node.join_room("lobby", &a);
        node.join_room("lobby", &a);
        node.join_room("lobby", &b);
        node.bind("alice", &a);
        node.bind("bob", &a);
        node.leave_room("lobby", a.id());
        b.mark_closed(&Status::new(Code::Ok, "bye"));
        let (x, y) = (a.id(), b.id());
        assert_eq!(
            *lock(&recorder.0),
            [
                format!("Joined {{ room: \"lobby\", conn: {x}, first: true }}"),
                format!("Joined {{ room: \"lobby\", conn: {y}, first: false }}"),
                format!("Bound {{ user: \"alice\", conn: {x}, first: true }}"),
                format!("Unbound {{ user: \"alice\", conn: {x}, last: true }}"),
                format!("Bound {{ user: \"bob\", conn: {x}, first: true }}"),
                format!("Left {{ room: \"lobby\", conn: {x}, last: false }}"),
                format!("Left {{ room: \"lobby\", conn: {y}, last: true }}"),
            ]
        );
        assert!(node.answer(&Query::Rooms) == Answer::Names(Vec::new()));
    }
}
