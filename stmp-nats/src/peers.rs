//! Which other nodes are alive, from their heartbeats: what lets a presence question end as
//! soon as every live node has answered instead of always waiting out its deadline.
//!
//! Correctness never depends on it: a node that is gone simply does not answer, and the
//! question ends at its deadline without it. A node that just started has not heard
//! everyone yet, so until one heartbeat interval has passed its questions always wait for
//! the deadline.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use stmp::adapter::NodeId;

use crate::control::NodeEvent;

/// Heartbeats a node may miss before it counts as gone.
const MISSED_BEATS: u32 = 3;

/// The other nodes heard from, and when.
#[derive(Debug)]
pub(crate) struct Peers {
    me: NodeId,
    interval: Duration,
    started: Instant,
    last_heard: HashMap<NodeId, Instant>,
}

impl Peers {
    pub(crate) fn new(me: NodeId, interval: Duration, now: Instant) -> Peers {
        Peers {
            me,
            interval,
            started: now,
            last_heard: HashMap::new(),
        }
    }

    /// Takes in a node event; returns whether this node should beat now (another node said
    /// hello and wants to know who is there).
    pub(crate) fn heard(&mut self, event: NodeEvent, now: Instant) -> bool {
        if event.node() == self.me {
            return false;
        }
        match event {
            NodeEvent::Hello(node) => {
                self.last_heard.insert(node, now);
                true
            }
            NodeEvent::Heartbeat(node) => {
                self.last_heard.insert(node, now);
                false
            }
            NodeEvent::Goodbye(node) => {
                self.last_heard.remove(&node);
                false
            }
        }
    }

    /// The nodes whose answers a question waits for, or `None` when this node cannot know
    /// yet (it started less than a heartbeat interval ago) and must wait for the deadline.
    pub(crate) fn live(&mut self, now: Instant) -> Option<Vec<NodeId>> {
        let horizon = self.interval * MISSED_BEATS;
        self.last_heard
            .retain(|_, heard| now.saturating_duration_since(*heard) <= horizon);
        (now.saturating_duration_since(self.started) >= self.interval)
            .then(|| self.last_heard.keys().copied().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEAT: Duration = Duration::from_secs(1);

    fn sorted(mut nodes: Vec<NodeId>) -> Vec<NodeId> {
        nodes.sort();
        nodes
    }

    #[test]
    fn a_new_node_waits_one_interval_before_trusting_what_it_heard() {
        let start = Instant::now();
        let mut peers = Peers::new(NodeId::new(1), BEAT, start);
        peers.heard(NodeEvent::Heartbeat(NodeId::new(2)), start);
        assert_eq!(peers.live(start + BEAT / 2), None);
        assert_eq!(peers.live(start + BEAT), Some(vec![NodeId::new(2)]));
    }

    #[test]
    fn silent_nodes_drop_out_after_missed_beats_and_goodbyes_at_once() {
        let start = Instant::now();
        let mut peers = Peers::new(NodeId::new(1), BEAT, start);
        assert!(peers.heard(NodeEvent::Hello(NodeId::new(2)), start));
        assert!(!peers.heard(NodeEvent::Heartbeat(NodeId::new(3)), start));
        assert!(!peers.heard(NodeEvent::Heartbeat(NodeId::new(4)), start));
        assert!(
            !peers.heard(NodeEvent::Hello(NodeId::new(1)), start),
            "my own hello"
        );
        let later = start + BEAT * 2;
        peers.heard(NodeEvent::Heartbeat(NodeId::new(2)), later);
        peers.heard(NodeEvent::Goodbye(NodeId::new(4)), later);
        assert_eq!(
            sorted(peers.live(later).unwrap()),
            [NodeId::new(2), NodeId::new(3)]
        );
        assert_eq!(peers.live(start + BEAT * 4).unwrap(), [NodeId::new(2)]);
        assert_eq!(peers.live(start + BEAT * 6).unwrap(), []);
    }
}
