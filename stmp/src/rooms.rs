//! Named groups of connections: rooms (a connection joins many) and users (a user has many
//! connections, one per device). Members leave by themselves when their connection closes.

use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, RwLock, Weak};

use crate::codec::Message;
use crate::{Conn, Delivery, Method, Status, broadcast};

/// Locks are split this many ways, so joins to different rooms rarely wait for each other.
const SHARDS: usize = 32;

/// Group name → its connections, by id.
type Members = HashMap<Arc<str>, HashMap<u64, Conn>>;
/// Connection id → the names of its groups.
type Memberships = HashMap<u64, HashSet<Arc<str>>>;

/// Name → connections and connection → names, sharded.
struct Groups {
    by_name: Box<[RwLock<Members>]>,
    by_conn: Box<[Mutex<Memberships>]>,
    /// Held by a connection's whole bind (leave the old user, join the new), by connection
    /// id, so two binds of one connection cannot interleave.
    binding: Box<[Mutex<()>]>,
}

fn shard_of(key: &impl Hash) -> usize {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() as usize) % SHARDS
}

impl Default for Groups {
    fn default() -> Self {
        Groups {
            by_name: (0..SHARDS).map(|_| RwLock::default()).collect(),
            by_conn: (0..SHARDS).map(|_| Mutex::default()).collect(),
            binding: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

// The maps are never left half-updated, so a poisoned lock is still consistent.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}
fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Groups {
    /// Adds `conn` to `name`; returns whether it was new. The connection's first group here
    /// hooks its close, so it leaves everything when it ends.
    fn join(self: &Arc<Self>, name: &str, conn: &Conn) -> bool {
        let name: Arc<str> = Arc::from(name);
        // Both sides change under the name's lock (always taken before a connection's), so
        // a join and a leave of the same pair cannot interleave.
        let first = {
            let mut by_name = write(&self.by_name[shard_of(&name)]);
            let added = by_name
                .entry(name.clone())
                .or_default()
                .insert(conn.id(), conn.clone())
                .is_none();
            if !added {
                return false;
            }
            let mut by_conn = lock(&self.by_conn[shard_of(&conn.id())]);
            match by_conn.entry(conn.id()) {
                Entry::Occupied(mut names) => {
                    names.get_mut().insert(name);
                    false
                }
                Entry::Vacant(slot) => {
                    slot.insert(HashSet::from([name]));
                    true
                }
            }
        };
        if first {
            let groups: Weak<Groups> = Arc::downgrade(self);
            let id = conn.id();
            conn.on_close(move |_| {
                if let Some(groups) = groups.upgrade() {
                    groups.leave_all(id);
                }
            });
        }
        // A connection that closed while joining: its close hook may have run before the
        // membership above was recorded.
        if conn.is_closed() {
            self.leave_all(conn.id());
        }
        true
    }

    fn leave(&self, name: &str, id: u64) -> bool {
        let mut by_name = write(&self.by_name[shard_of(&name)]);
        let removed = by_name
            .get_mut(name)
            .is_some_and(|members| members.remove(&id).is_some());
        if by_name.get(name).is_some_and(HashMap::is_empty) {
            by_name.remove(name);
        }
        if removed && let Some(names) = lock(&self.by_conn[shard_of(&id)]).get_mut(&id) {
            names.remove(name);
        }
        removed
    }

    fn leave_all(&self, id: u64) -> Vec<Arc<str>> {
        let names: Vec<Arc<str>> = lock(&self.by_conn[shard_of(&id)])
            .get(&id)
            .map(|names| names.iter().cloned().collect())
            .unwrap_or_default();
        for name in &names {
            self.leave(name, id);
        }
        lock(&self.by_conn[shard_of(&id)]).remove(&id);
        names
    }

    fn members(&self, name: &str) -> Vec<Conn> {
        read(&self.by_name[shard_of(&name)])
            .get(name)
            .map(|members| members.values().cloned().collect())
            .unwrap_or_default()
    }

    fn names(&self) -> Vec<String> {
        self.by_name
            .iter()
            .flat_map(|shard| {
                read(shard)
                    .keys()
                    .map(|k| k.to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn names_of(&self, id: u64) -> Vec<String> {
        lock(&self.by_conn[shard_of(&id)])
            .get(&id)
            .map(|names| names.iter().map(|n| n.to_string()).collect())
            .unwrap_or_default()
    }
}

/// Rooms: named sets of connections. A connection joins any number of rooms and leaves all
/// of them when it closes; a room exists while it has members. Cheap to clone and safe to
/// share; the locks are sharded by room.
///
/// ```no_run
/// # async fn run(conn: stmp::Conn) {
/// let rooms = stmp::Rooms::new();
/// rooms.join("lobby", &conn);
/// assert_eq!(rooms.members("lobby").len(), 1);
/// assert_eq!(rooms.rooms_of(&conn), ["lobby"]);
/// # }
/// ```
#[derive(Clone, Default)]
pub struct Rooms {
    groups: Arc<Groups>,
}

impl std::fmt::Debug for Rooms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rooms")
            .field("rooms", &self.list())
            .finish()
    }
}

impl Rooms {
    /// No rooms.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `conn` in `room` (creating it); returns whether it was not there yet.
    pub fn join(&self, room: &str, conn: &Conn) -> bool {
        self.groups.join(room, conn)
    }

    /// Takes `conn` out of `room` (dropping the room when it empties); returns whether it was
    /// there.
    pub fn leave(&self, room: &str, conn: &Conn) -> bool {
        self.groups.leave(room, conn.id())
    }

    /// Takes `conn` out of every room; returns the rooms it left.
    pub fn leave_all(&self, conn: &Conn) -> Vec<String> {
        self.groups
            .leave_all(conn.id())
            .into_iter()
            .map(|n| n.to_string())
            .collect()
    }

    /// The connections in `room`.
    pub fn members(&self, room: &str) -> Vec<Conn> {
        self.groups.members(room)
    }

    /// Whether `conn` is in `room`.
    pub fn contains(&self, room: &str, conn: &Conn) -> bool {
        read(&self.groups.by_name[shard_of(&room)])
            .get(room)
            .is_some_and(|members| members.contains_key(&conn.id()))
    }

    /// The rooms that have members.
    pub fn list(&self) -> Vec<String> {
        let mut names = self.groups.names();
        names.sort();
        names
    }

    /// The rooms `conn` is in.
    pub fn rooms_of(&self, conn: &Conn) -> Vec<String> {
        let mut names = self.groups.names_of(conn.id());
        names.sort();
        names
    }

    /// Sends an event to every member of `room` but `exclude`, serialising it once per
    /// content type (see [`broadcast`]).
    pub fn broadcast<E: Message>(
        &self,
        room: &str,
        method: &Method,
        event: &E,
        exclude: Option<&Conn>,
    ) -> Result<Delivery, Status> {
        // Sending never waits, so the room is read in place rather than copied.
        let shard = read(&self.groups.by_name[shard_of(&room)]);
        let members = shard.get(room).into_iter().flat_map(HashMap::values);
        broadcast(
            method,
            event,
            members.filter(|conn| exclude.is_none_or(|ex| ex != *conn)),
        )
    }
}

/// Users: every connection of each signed-in user (one per device), so "send to a user"
/// reaches all of them. A connection belongs to one user at a time and is forgotten when it
/// closes.
#[derive(Clone, Default)]
pub struct Users {
    groups: Arc<Groups>,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users")
            .field("online", &self.online())
            .finish()
    }
}

impl Users {
    /// No users.
    pub fn new() -> Self {
        Self::default()
    }

    /// Binds `conn` to `user`, unbinding it from any other user first.
    pub fn bind(&self, user: &str, conn: &Conn) {
        let _binding = lock(&self.groups.binding[shard_of(&conn.id())]);
        for previous in self.groups.names_of(conn.id()) {
            if previous != user {
                self.groups.leave(&previous, conn.id());
            }
        }
        self.groups.join(user, conn);
    }

    /// Forgets `conn`; returns the user it belonged to.
    pub fn unbind(&self, conn: &Conn) -> Option<String> {
        let _binding = lock(&self.groups.binding[shard_of(&conn.id())]);
        self.groups
            .leave_all(conn.id())
            .into_iter()
            .next()
            .map(|n| n.to_string())
    }

    /// The user `conn` is bound to.
    pub fn user_of(&self, conn: &Conn) -> Option<String> {
        self.groups.names_of(conn.id()).into_iter().next()
    }

    /// Every connection of `user`.
    pub fn conns(&self, user: &str) -> Vec<Conn> {
        self.groups.members(user)
    }

    /// Whether `user` has a connection.
    pub fn is_online(&self, user: &str) -> bool {
        !self.conns(user).is_empty()
    }

    /// The users with at least one connection.
    pub fn online(&self) -> Vec<String> {
        let mut names = self.groups.names();
        names.sort();
        names
    }

    /// Sends an event to every connection of `user`.
    pub fn send<E: Message>(
        &self,
        user: &str,
        method: &Method,
        event: &E,
    ) -> Result<Delivery, Status> {
        broadcast(method, event, self.conns(user).iter())
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
