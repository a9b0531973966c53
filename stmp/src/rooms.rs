//! Named groups of connections: rooms (a connection joins many) and users (a user has many
//! connections, one per device). Members leave by themselves when their connection closes.
//! Both are handles to a server's [`Node`], so they go through its adapter.

use std::sync::Arc;
use std::time::Duration;

use crate::adapter::{ConnRef, Member, Node, Query, Target};
use crate::{Audience, Conn, Status};

/// Rooms: named sets of connections. A connection joins any number of rooms and leaves all
/// of them when it closes; a room exists while it has members. Cheap to clone and safe to
/// share; the locks are sharded by room.
///
/// A server's rooms ([`ServerBuilder::rooms`](crate::ServerBuilder::rooms),
/// [`Server::rooms`](crate::Server::rooms)) go through its [adapter](crate::adapter), so with
/// a cluster adapter they span every node; [`Rooms::new`] makes rooms of their own, on no
/// server, local only.
///
/// ```no_run
/// # async fn run(conn: stmp::Conn) {
/// let rooms = stmp::Rooms::new();
/// rooms.join("lobby", &conn);
/// assert_eq!(rooms.members("lobby").len(), 1);
/// assert_eq!(rooms.rooms_of(&conn), ["lobby"]);
/// # }
/// ```
#[derive(Clone)]
pub struct Rooms {
    node: Arc<Node>,
}

impl Default for Rooms {
    fn default() -> Self {
        Rooms::new()
    }
}

impl std::fmt::Debug for Rooms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rooms")
            .field("rooms", &self.list())
            .finish()
    }
}

impl Rooms {
    /// Rooms of their own, on no server: local to this process.
    pub fn new() -> Self {
        Rooms { node: Node::new() }
    }

    pub(crate) fn of(node: Arc<Node>) -> Self {
        Rooms { node }
    }

    /// The node the rooms live on.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// The members of `room`, to [`broadcast`](fn@crate::broadcast) to (add
    /// [`except`](Audience::except) to leave the sender out).
    pub fn to(&self, room: &str) -> Audience<'_> {
        Audience::on(&self.node, Target::Room(room.to_owned()))
    }

    /// Puts `conn` in `room` (creating it); returns whether it was not there yet.
    pub fn join(&self, room: &str, conn: &Conn) -> bool {
        self.node.join_room(room, conn)
    }

    /// Takes `conn` out of `room` (dropping the room when it empties); returns whether it was
    /// there.
    pub fn leave(&self, room: &str, conn: &Conn) -> bool {
        self.node.leave_room(room, conn.id())
    }

    /// Takes `conn` out of every room; returns the rooms it left.
    pub fn leave_all(&self, conn: &Conn) -> Vec<String> {
        self.node.leave_rooms(conn.id())
    }

    /// The connections in `room` on this node, oldest first.
    pub fn members(&self, room: &str) -> Vec<Conn> {
        self.node.rooms().members(room)
    }

    /// Whether `conn` is in `room`.
    pub fn contains(&self, room: &str, conn: &Conn) -> bool {
        self.node.rooms().contains(room, conn.id())
    }

    /// The rooms that have members on this node, sorted.
    pub fn list(&self) -> Vec<String> {
        self.node.rooms().names()
    }

    /// The rooms `conn` is in, sorted.
    pub fn rooms_of(&self, conn: &Conn) -> Vec<String> {
        let mut names: Vec<String> = self
            .node
            .rooms()
            .names_of(conn.id())
            .into_iter()
            .map(|name| name.to_string())
            .collect();
        names.sort();
        names
    }

    /// The members of `room` on every node the adapter reaches, within `timeout`.
    pub async fn cluster_members(
        &self,
        room: &str,
        timeout: Duration,
    ) -> Result<Vec<Member>, Status> {
        self.node
            .query(Query::Members(room.to_owned()), timeout)
            .await?
            .into_members()
    }

    /// The rooms that have members on any node, within `timeout`.
    pub async fn cluster_list(&self, timeout: Duration) -> Result<Vec<String>, Status> {
        self.node.query(Query::Rooms, timeout).await?.into_names()
    }

    /// The rooms a connection on any node is in, within `timeout`.
    pub async fn cluster_rooms_of(
        &self,
        conn: ConnRef,
        timeout: Duration,
    ) -> Result<Vec<String>, Status> {
        self.node
            .query(Query::RoomsOf(conn), timeout)
            .await?
            .into_names()
    }
}

/// Users: every connection of each signed-in user (one per device), so "send to a user"
/// reaches all of them. A connection belongs to one user at a time and is forgotten when it
/// closes. Like [`Rooms`], a server's users go through its adapter.
#[derive(Clone)]
pub struct Users {
    node: Arc<Node>,
}

impl Default for Users {
    fn default() -> Self {
        Users::new()
    }
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users")
            .field("online", &self.online())
            .finish()
    }
}

impl Users {
    /// Users of their own, on no server: local to this process.
    pub fn new() -> Self {
        Users { node: Node::new() }
    }

    pub(crate) fn of(node: Arc<Node>) -> Self {
        Users { node }
    }

    /// The node the users live on.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Every connection (device) of `user`, to [`broadcast`](fn@crate::broadcast) to.
    pub fn to(&self, user: &str) -> Audience<'_> {
        Audience::on(&self.node, Target::User(user.to_owned()))
    }

    /// Binds `conn` to `user`, unbinding it from any other user first.
    pub fn bind(&self, user: &str, conn: &Conn) {
        self.node.bind(user, conn);
    }

    /// Forgets `conn`; returns the user it belonged to.
    pub fn unbind(&self, conn: &Conn) -> Option<String> {
        self.node.unbind(conn.id())
    }

    /// The user `conn` is bound to.
    pub fn user_of(&self, conn: &Conn) -> Option<String> {
        self.node.user_of_conn(conn.id())
    }

    /// Every connection of `user` on this node, oldest first.
    pub fn conns(&self, user: &str) -> Vec<Conn> {
        self.node.users().members(user)
    }

    /// Whether `user` has a connection on this node.
    pub fn is_online(&self, user: &str) -> bool {
        let mut online = false;
        self.node.users().for_each(user, |_| online = true);
        online
    }

    /// The users with at least one connection on this node, sorted.
    pub fn online(&self) -> Vec<String> {
        self.node.users().names()
    }

    /// The connections of `user` on every node the adapter reaches, within `timeout`.
    pub async fn cluster_conns(
        &self,
        user: &str,
        timeout: Duration,
    ) -> Result<Vec<Member>, Status> {
        self.node
            .query(Query::Conns(user.to_owned()), timeout)
            .await?
            .into_members()
    }

    /// Whether `user` has a connection on any node, within `timeout`.
    pub async fn cluster_is_online(&self, user: &str, timeout: Duration) -> Result<bool, Status> {
        Ok(!self.cluster_conns(user, timeout).await?.is_empty())
    }

    /// The users with a connection on any node, within `timeout`.
    pub async fn cluster_online(&self, timeout: Duration) -> Result<Vec<String>, Status> {
        self.node.query(Query::Online, timeout).await?.into_names()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;

    use super::*;
    use crate::conn::tests::parts;

    #[test]
    fn concurrent_binds_leave_a_connection_with_one_user() {
        const THREADS: usize = 4;
        let users = Users::new();
        let names: Vec<String> = (0..THREADS).map(|t| format!("user{t}")).collect();
        for round in 0..300 {
            let (conn, _outbox) = Conn::new(parts(1024));
            let barrier = Barrier::new(THREADS);
            std::thread::scope(|scope| {
                for name in &names {
                    let (users, conn, barrier) = (&users, &conn, &barrier);
                    scope.spawn(move || {
                        barrier.wait();
                        users.bind(name, conn);
                    });
                }
            });
            let holders = names
                .iter()
                .filter(|name| users.conns(name).contains(&conn))
                .count();
            assert_eq!(holders, 1, "round {round}: bound to {holders} users");
            let user = users.user_of(&conn).unwrap();
            assert!(users.conns(&user).contains(&conn));
            assert_eq!(users.unbind(&conn), Some(user));
            assert!(users.online().is_empty());
        }
    }
}
