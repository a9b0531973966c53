//! The client's side: the last position heard on each stream, presented again on reconnect.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::protocol::{self, POSITION_METHOD, StreamPosition};
use crate::wire::{Action, Header};

/// The outcome of resuming a stream after a reconnect, for
/// [`ClientBuilder::on_recovery`](crate::ClientBuilder::on_recovery).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// The stream's position now (after the replay; a new epoch when it was lost).
    pub position: StreamPosition,
    /// Whether every missed event was replayed. `false`: some are lost for good (too old, or
    /// the server lost its history), and the application should reload what it shows.
    pub recovered: bool,
}

pub(crate) type RecoveryHook = Arc<dyn Fn(&Recovery) + Send + Sync>;

/// Positions by stream, with the order they were last updated in.
#[derive(Clone, Default)]
pub(crate) struct Positions {
    tracked: Arc<Mutex<Tracked>>,
    on_recovery: Option<RecoveryHook>,
}

#[derive(Default)]
struct Tracked {
    by_stream: HashMap<String, (StreamPosition, u64)>,
    updates: u64,
}

impl Positions {
    pub(crate) fn new(on_recovery: Option<RecoveryHook>) -> Positions {
        Positions {
            tracked: Arc::default(),
            on_recovery,
        }
    }

    fn tracked(&self) -> std::sync::MutexGuard<'_, Tracked> {
        // Updates are single inserts: a poisoned lock is still consistent.
        self.tracked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the position of an incoming notify; returns whether it was the position notify
    /// (which is the tracker's and nobody else's).
    ///
    /// Every event of a room with history comes through here, so the usual one, the next
    /// offset of a stream and epoch already tracked, moves the offset in place: it allocates
    /// nothing.
    pub(crate) fn observe(&self, action: &Action, header: &Header) -> bool {
        let Some((stream, epoch, offset)) = header
            .get(protocol::POSITION)
            .and_then(StreamPosition::parse_parts)
        else {
            return false;
        };
        let is_position_notify = matches!(action, Action::Method(name) if name == POSITION_METHOD);
        self.record(&stream, &epoch, offset);
        let recovered = is_position_notify
            .then(|| protocol::recovered(header))
            .flatten();
        if let (Some(recovered), Some(hook)) = (recovered, &self.on_recovery) {
            hook(&Recovery {
                position: StreamPosition::new(stream, epoch, offset),
                recovered,
            });
        }
        is_position_notify
    }

    fn record(&self, stream: &str, epoch: &str, offset: u64) {
        let mut tracked = self.tracked();
        tracked.updates += 1;
        let order = tracked.updates;
        match tracked.by_stream.get_mut(stream) {
            Some((position, updated)) => {
                if position.epoch != epoch {
                    epoch.clone_into(&mut position.epoch);
                }
                position.offset = offset;
                *updated = order;
            }
            None => {
                let position = StreamPosition::new(stream, epoch, offset);
                tracked
                    .by_stream
                    .insert(stream.to_owned(), (position, order));
            }
        }
    }

    pub(crate) fn get(&self, stream: &str) -> Option<StreamPosition> {
        self.tracked()
            .by_stream
            .get(stream)
            .map(|(position, _)| position.clone())
    }

    pub(crate) fn forget(&self, stream: &str) -> bool {
        self.tracked().by_stream.remove(stream).is_some()
    }

    /// Every position, the most recently updated first.
    pub(crate) fn newest_first(&self) -> Vec<StreamPosition> {
        let tracked = self.tracked();
        let mut positions: Vec<_> = tracked.by_stream.values().cloned().collect();
        positions.sort_by_key(|(_, order)| std::cmp::Reverse(*order));
        positions
            .into_iter()
            .map(|(position, _)| position)
            .collect()
    }

    /// Puts support and the positions to resume into a handshake header.
    pub(crate) fn add_to_handshake(&self, header: &mut Header) {
        protocol::add_handshake_entries(header, &self.newest_first());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(stream: &str, offset: u64) -> Header {
        let mut header = Header::new();
        header.append(
            protocol::POSITION,
            StreamPosition::new(stream, "e", offset).to_value(),
        );
        header
    }

    #[test]
    fn events_advance_positions_and_reach_their_listeners() {
        let positions = Positions::default();
        assert!(!positions.observe(&Action::Id(7), &event("a", 1)));
        assert!(!positions.observe(&Action::Id(7), &event("b", 1)));
        assert!(!positions.observe(&Action::Id(7), &event("a", 2)));
        assert_eq!(positions.get("a"), Some(StreamPosition::new("a", "e", 2)));
        let order: Vec<_> = positions
            .newest_first()
            .into_iter()
            .map(|p| p.stream)
            .collect();
        assert_eq!(order, ["a", "b"]);
        // A new epoch replaces the old one's position.
        assert!(!positions.observe(&Action::Id(7), &{
            let mut header = Header::new();
            header.append(
                protocol::POSITION,
                StreamPosition::new("b", "e2", 9).to_value(),
            );
            header
        }));
        assert_eq!(positions.get("b"), Some(StreamPosition::new("b", "e2", 9)));
        // A notify without a position is not the tracker's business.
        assert!(!positions.observe(&Action::Id(7), &Header::new()));
        assert!(positions.forget("a"));
        assert_eq!(positions.get("a"), None);
    }

    #[test]
    fn the_position_notify_is_consumed_and_reports_the_outcome() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let hook_seen = seen.clone();
        let positions = Positions::new(Some(Arc::new(move |r: &Recovery| {
            hook_seen.lock().unwrap().push(r.clone())
        })));
        let action = Action::Method(POSITION_METHOD.to_owned());
        let lost = StreamPosition::new("a", "new", 0);
        assert!(positions.observe(&action, &protocol::position_header(&lost, Some(false))));
        let fresh = StreamPosition::new("b", "e", 4);
        assert!(positions.observe(&action, &protocol::position_header(&fresh, None)));
        assert_eq!(positions.get("a"), Some(lost.clone()));
        assert_eq!(positions.get("b"), Some(fresh));
        assert_eq!(
            *seen.lock().unwrap(),
            [Recovery {
                position: lost,
                recovered: false
            }]
        );
    }
}
