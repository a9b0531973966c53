//! Named groups of connections, both ways (name → connections, connection → names), with
//! the locks split by name and by connection so joins to different groups rarely wait for
//! each other.

use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, RwLock};

use crate::Conn;
use crate::broadcast::ConnsById;

/// Locks are split this many ways.
const SHARDS: usize = 32;

/// Group name → its connections, by id (in the order they were made, as a broadcast wants
/// them: see [`ConnsById`]).
type Members = HashMap<Arc<str>, ConnsById>;
/// Connection id → the names of its groups.
type Memberships = HashMap<u64, HashSet<Arc<str>>>;

pub(crate) struct Groups {
    by_name: Box<[RwLock<Members>]>,
    by_conn: Box<[Mutex<Memberships>]>,
}

pub(crate) fn shard_of(key: &(impl Hash + ?Sized)) -> usize {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() as usize) % SHARDS
}

impl Default for Groups {
    fn default() -> Self {
        Groups {
            by_name: (0..SHARDS).map(|_| RwLock::default()).collect(),
            by_conn: (0..SHARDS).map(|_| Mutex::default()).collect(),
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
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a join changed.
pub(crate) struct Joined {
    /// The connection was not in the group yet.
    pub(crate) added: bool,
    /// It is the connection's first group here (so its close is not hooked yet).
    pub(crate) first_of_conn: bool,
}

impl Groups {
    /// Adds `conn` to `name`. `changed(first)` runs under the name's lock when the connection
    /// was added, with whether it is the group's first member.
    pub(crate) fn join(&self, name: &str, conn: &Conn, changed: impl FnOnce(bool)) -> Joined {
        let name: Arc<str> = Arc::from(name);
        // Both sides change under the name's lock (always taken before a connection's), so
        // a join and a leave of the same pair cannot interleave.
        let mut by_name = write(&self.by_name[shard_of(&*name)]);
        let members = by_name.entry(name.clone()).or_default();
        let first = members.is_empty();
        if members.insert(conn.id(), conn.clone()).is_some() {
            return Joined {
                added: false,
                first_of_conn: false,
            };
        }
        let first_of_conn = match lock(&self.by_conn[shard_of(&conn.id())]).entry(conn.id()) {
            Entry::Occupied(mut names) => {
                names.get_mut().insert(name);
                false
            }
            Entry::Vacant(slot) => {
                slot.insert(HashSet::from([name]));
                true
            }
        };
        changed(first);
        Joined {
            added: true,
            first_of_conn,
        }
    }

    /// Takes connection `id` out of `name`; `changed(last)` runs under the name's lock when
    /// it was there, with whether the group is now empty.
    pub(crate) fn leave(&self, name: &str, id: u64, changed: impl FnOnce(bool)) -> bool {
        let mut by_name = write(&self.by_name[shard_of(name)]);
        let Some(members) = by_name.get_mut(name) else {
            return false;
        };
        if members.remove(&id).is_none() {
            return false;
        }
        let last = members.is_empty();
        if last {
            by_name.remove(name);
        }
        if let Some(names) = lock(&self.by_conn[shard_of(&id)]).get_mut(&id) {
            names.remove(name);
        }
        changed(last);
        true
    }

    /// The groups of connection `id`.
    pub(crate) fn names_of(&self, id: u64) -> Vec<Arc<str>> {
        lock(&self.by_conn[shard_of(&id)])
            .get(&id)
            .map(|names| names.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets connection `id` once it has left every group.
    pub(crate) fn forget(&self, id: u64) {
        lock(&self.by_conn[shard_of(&id)]).remove(&id);
    }

    /// Runs `each` on every member of `name`, in place: sending never waits, so the group
    /// is read under its lock rather than copied.
    pub(crate) fn for_each(&self, name: &str, mut each: impl FnMut(&Conn)) {
        if let Some(members) = read(&self.by_name[shard_of(name)]).get(name) {
            members.values().for_each(&mut each);
        }
    }

    pub(crate) fn members(&self, name: &str) -> Vec<Conn> {
        let mut members = Vec::new();
        self.for_each(name, |conn| members.push(conn.clone()));
        members
    }

    pub(crate) fn contains(&self, name: &str, id: u64) -> bool {
        read(&self.by_name[shard_of(name)])
            .get(name)
            .is_some_and(|members| members.contains_key(&id))
    }

    /// The names of the groups that have members, sorted.
    pub(crate) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .by_name
            .iter()
            .flat_map(|shard| {
                read(shard)
                    .keys()
                    .map(|k| k.to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::tests::made_in_order;

    #[test]
    fn a_group_goes_through_its_members_in_the_order_they_were_made() {
        let made = made_in_order(40);
        let groups = Groups::default();
        for i in (0..made.len()).rev() {
            groups.join("lobby", &made[i], |_| {});
        }
        let expected: Vec<u64> = made.iter().map(Conn::id).collect();
        let members: Vec<u64> = groups.members("lobby").iter().map(Conn::id).collect();
        assert_eq!(members, expected);
    }
}
