//! The small messages nodes exchange besides broadcasts: heartbeats on the nodes subject, and
//! the node id in front of each presence answer. Broadcasts, presence questions and answers
//! themselves are the runtime's own byte forms (`stmp::adapter::Broadcast::to_bytes`,
//! `Query::to_bytes`, `Answer::to_bytes`).
//!
//! Everything here is read from the bus, so decoding checks every byte and never panics.

use bytes::{BufMut, Bytes, BytesMut};
use stmp::adapter::NodeId;

/// The version byte that starts every control message; others are refused.
const VERSION: u8 = 1;

/// A message on the nodes subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeEvent {
    /// A node just connected: everyone answers with a heartbeat so it learns the cluster at
    /// once rather than after a heartbeat interval.
    Hello(NodeId),
    /// A node is alive.
    Heartbeat(NodeId),
    /// A node is leaving (a clean shutdown); a crashed node just stops beating.
    Goodbye(NodeId),
}

/// A control message that is not what this version writes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter or longer than its layout.
    #[error("a {what} of {len} bytes, expected {expected}")]
    Length {
        /// What was being read.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The length its layout has.
        expected: usize,
    },
    /// A version this node does not speak.
    #[error("a {what} of version {version}, expected {VERSION}")]
    Version {
        /// What was being read.
        what: &'static str,
        /// The version it carries.
        version: u8,
    },
    /// An unknown kind of node event.
    #[error("a node event of unknown kind {0}")]
    Kind(u8),
}

const NODE_EVENT_LEN: usize = 1 + 1 + 8;

impl NodeEvent {
    /// The node it is about.
    pub fn node(self) -> NodeId {
        match self {
            NodeEvent::Hello(node) | NodeEvent::Heartbeat(node) | NodeEvent::Goodbye(node) => node,
        }
    }

    /// `version, kind, node id (8 bytes, big-endian)`.
    pub fn to_bytes(self) -> Bytes {
        let kind = match self {
            NodeEvent::Hello(_) => 0,
            NodeEvent::Heartbeat(_) => 1,
            NodeEvent::Goodbye(_) => 2,
        };
        let mut out = BytesMut::with_capacity(NODE_EVENT_LEN);
        out.put_u8(VERSION);
        out.put_u8(kind);
        out.put_u64(self.node().get());
        out.freeze()
    }

    /// Reads [`to_bytes`](Self::to_bytes)' layout.
    pub fn from_bytes(src: &[u8]) -> Result<NodeEvent, Malformed> {
        let what = "node event";
        let wrong_length = Malformed::Length {
            what,
            len: src.len(),
            expected: NODE_EVENT_LEN,
        };
        let Some((&version, rest)) = src.split_first() else {
            return Err(wrong_length);
        };
        if version != VERSION {
            return Err(Malformed::Version { what, version });
        }
        let Some((kind, id)) = rest.split_first() else {
            return Err(wrong_length);
        };
        let id: [u8; 8] = id.try_into().map_err(|_| wrong_length)?;
        let node = NodeId::new(u64::from_be_bytes(id));
        match kind {
            0 => Ok(NodeEvent::Hello(node)),
            1 => Ok(NodeEvent::Heartbeat(node)),
            2 => Ok(NodeEvent::Goodbye(node)),
            other => Err(Malformed::Kind(*other)),
        }
    }
}

/// A presence answer with the answering node in front: `version, node id (8 bytes), answer`.
pub fn reply_to_bytes(node: NodeId, answer: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(1 + 8 + answer.len());
    out.put_u8(VERSION);
    out.put_u64(node.get());
    out.put_slice(answer);
    out.freeze()
}

/// The answering node and the answer's bytes (sharing `src`'s buffer).
pub fn reply_from_bytes(src: Bytes) -> Result<(NodeId, Bytes), Malformed> {
    let what = "presence answer";
    if src.len() < 9 {
        return Err(Malformed::Length {
            what,
            len: src.len(),
            expected: 9,
        });
    }
    if src[0] != VERSION {
        return Err(Malformed::Version {
            what,
            version: src[0],
        });
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&src[1..9]);
    Ok((NodeId::new(u64::from_be_bytes(id)), src.slice(9..)))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn node_events_round_trip() {
        for event in [
            NodeEvent::Hello(NodeId::new(1)),
            NodeEvent::Heartbeat(NodeId::new(u64::MAX)),
            NodeEvent::Goodbye(NodeId::new(0x0102_0304_0506_0708)),
        ] {
            assert_eq!(NodeEvent::from_bytes(&event.to_bytes()), Ok(event));
        }
    }

    #[test]
    fn malformed_node_events_are_errors() {
        let good = NodeEvent::Heartbeat(NodeId::new(7)).to_bytes();
        assert!(matches!(
            NodeEvent::from_bytes(&[]),
            Err(Malformed::Length { len: 0, .. })
        ));
        assert!(matches!(
            NodeEvent::from_bytes(&good[..1]),
            Err(Malformed::Length { len: 1, .. })
        ));
        assert!(matches!(
            NodeEvent::from_bytes(&good[..5]),
            Err(Malformed::Length { len: 5, .. })
        ));
        let mut long = good.to_vec();
        long.push(0);
        assert!(matches!(
            NodeEvent::from_bytes(&long),
            Err(Malformed::Length { len: 11, .. })
        ));
        let mut version = good.to_vec();
        version[0] = 2;
        assert!(matches!(
            NodeEvent::from_bytes(&version),
            Err(Malformed::Version { version: 2, .. })
        ));
        let mut kind = good.to_vec();
        kind[1] = 9;
        assert_eq!(NodeEvent::from_bytes(&kind), Err(Malformed::Kind(9)));
    }

    #[test]
    fn replies_carry_their_node() {
        let bytes = reply_to_bytes(NodeId::new(42), b"answer");
        let (node, answer) = reply_from_bytes(bytes).unwrap();
        assert_eq!((node, &answer[..]), (NodeId::new(42), &b"answer"[..]));
        assert!(reply_from_bytes(Bytes::from_static(b"\x01short")).is_err());
        assert!(reply_from_bytes(Bytes::from_static(b"\x09123456789")).is_err());
    }

    proptest! {
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
            let _ = NodeEvent::from_bytes(&bytes);
            let _ = reply_from_bytes(Bytes::from(bytes));
        }
    }
}
