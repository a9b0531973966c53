//! Byte budgets: what a packet costs in a send queue, and the server-wide budget for the
//! bytes of requests and notifies that handlers and listeners still hold.
//!
//! Counting bytes rather than packets is what bounds memory: a queue of 256 packets holds
//! 4 KiB or 4 GiB depending on what the peer asked for.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::wire::Packet;

/// What a queued packet costs besides its bytes: the packet value and its channel slot, so a
/// flood of one-byte packets is bounded too.
const PACKET_OVERHEAD: usize = std::mem::size_of::<Packet>() + 16;

/// What `packet` costs in a send queue whose budget is `budget` bytes.
///
/// Ping and Close cost nothing: the engine sends at most one Ping per heartbeat and one
/// Close, and both must get through a full queue. A packet larger than the whole budget
/// costs the whole budget, so it waits for an empty queue rather than forever.
///
/// Priced once, as the packet is queued: the queue keeps the sum of what it holds, so the
/// writer learns what a batch held without pricing its packets again.
pub(crate) fn queue_cost(packet: &Packet, budget: usize) -> usize {
    match packet {
        Packet::Ping | Packet::Close(_) => 0,
        _ => (packet.encoded_stream_len() + PACKET_OVERHEAD).min(budget),
    }
}

/// Bytes held by running handlers and queued listeners, across every connection of a server.
/// Lock-free: a reservation is one atomic add, its release one atomic subtract.
#[derive(Debug)]
pub(crate) struct InFlight {
    used: AtomicUsize,
    limit: usize,
}

impl InFlight {
    pub(crate) fn new(limit: usize) -> Self {
        InFlight {
            used: AtomicUsize::new(0),
            limit,
        }
    }

    /// Reserves `bytes` until the returned guard drops; `None` when the budget has no room.
    /// One packet larger than the whole budget still gets through when nothing else is held,
    /// so the limit never refuses what the packet size limit allows.
    pub(crate) fn reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        self.try_take(bytes).then(|| Reservation {
            budget: self.clone(),
            bytes,
        })
    }

    fn try_take(&self, bytes: usize) -> bool {
        let before = self.used.fetch_add(bytes, Ordering::Relaxed);
        if before > 0 && before.saturating_add(bytes) > self.limit {
            self.give(bytes);
            return false;
        }
        true
    }

    fn give(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// Bytes reserved in an [`InFlight`] budget; given back when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<InFlight>,
    bytes: usize,
}

impl Reservation {
    /// Whether this reservation is all its budget has given out: the only handler running,
    /// for a connection's handler slots.
    pub(crate) fn is_alone(&self) -> bool {
        self.budget.used() == self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

/// A connection's budget for the bytes its handlers and listeners hold, drawn from the
/// server's at the same time.
///
/// One structure per connection so that what a packet holds points at it alone: were each
/// reservation to hold the server's budget itself, every packet would also count references on
/// the one counter all connections share, and those counts bounce between cores.
#[derive(Debug)]
pub(crate) struct ConnBytes {
    conn: InFlight,
    /// The server's budget; none on a client.
    server: Option<Arc<InFlight>>,
}

/// Which budget had no room.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NoRoom {
    /// The connection's, of this many bytes.
    Conn(usize),
    /// The server's, of this many bytes.
    Server(usize),
}

impl ConnBytes {
    pub(crate) fn new(limit: usize, server: Option<Arc<InFlight>>) -> Arc<Self> {
        Arc::new(ConnBytes {
            conn: InFlight::new(limit),
            server,
        })
    }

    /// Reserves `bytes` in both budgets until the returned guard drops.
    pub(crate) fn reserve(self: &Arc<Self>, bytes: usize) -> Result<HeldBytes, NoRoom> {
        if !self.conn.try_take(bytes) {
            return Err(NoRoom::Conn(self.conn.limit));
        }
        if let Some(server) = &self.server
            && !server.try_take(bytes)
        {
            self.conn.give(bytes);
            return Err(NoRoom::Server(server.limit));
        }
        Ok(HeldBytes {
            budgets: self.clone(),
            bytes,
        })
    }
}

/// Bytes reserved in a connection's and its server's budgets; given back when dropped.
#[derive(Debug)]
pub(crate) struct HeldBytes {
    budgets: Arc<ConnBytes>,
    bytes: usize,
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        self.budgets.conn.give(self.bytes);
        if let Some(server) = &self.budgets.server {
            server.give(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::wire::{Action, Header, Notify};

    fn notify(len: usize) -> Packet {
        Packet::Notify(Notify {
            action: Action::Id(1),
            header: Header::new(),
            payload: Bytes::from(vec![0; len]),
        })
    }

    #[test]
    fn control_packets_are_free_and_big_ones_cost_at_most_the_budget() {
        assert_eq!(queue_cost(&Packet::Ping, 1000), 0);
        assert_eq!(queue_cost(&Packet::close(crate::Code::Ok, "bye"), 1000), 0);
        let pong = queue_cost(&Packet::Pong, 1000);
        assert!(pong > PACKET_OVERHEAD, "{pong}");
        let small = queue_cost(&notify(100), 1 << 20);
        assert!(small >= 100 + PACKET_OVERHEAD, "{small}");
        assert_eq!(queue_cost(&notify(5000), 1000), 1000);
    }

    #[test]
    fn reservations_are_refused_over_the_limit_and_given_back_on_drop() {
        let budget = Arc::new(InFlight::new(100));
        let first = budget.reserve(60).unwrap();
        assert!(budget.reserve(60).is_none());
        let second = budget.reserve(40).unwrap();
        assert_eq!(budget.used(), 100);
        drop(first);
        drop(second);
        assert_eq!(budget.used(), 0);
        // Alone, a reservation larger than the limit passes.
        let big = budget.reserve(500).unwrap();
        assert!(budget.reserve(1).is_none());
        drop(big);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_connections_bytes_are_held_in_its_budget_and_the_servers_until_dropped() {
        let server = Arc::new(InFlight::new(1000));
        let a = ConnBytes::new(600, Some(server.clone()));
        let b = ConnBytes::new(600, Some(server.clone()));
        let held_a = a.reserve(500).unwrap();
        assert_eq!(a.reserve(200).unwrap_err(), NoRoom::Conn(600));
        let held_b = b.reserve(400).unwrap();
        assert_eq!(server.used(), 900);
        assert_eq!(b.reserve(150).unwrap_err(), NoRoom::Server(1000));
        assert_eq!(
            b.conn.used(),
            400,
            "a refusal by the server takes nothing from the connection"
        );
        drop(held_a);
        assert_eq!((a.conn.used(), server.used()), (0, 400));
        drop(held_b);
        assert_eq!(server.used(), 0);
    }

    #[test]
    fn without_a_servers_budget_a_connection_is_bounded_by_its_own() {
        let alone = ConnBytes::new(600, None);
        let held = alone.reserve(500).unwrap();
        assert_eq!(alone.reserve(200).unwrap_err(), NoRoom::Conn(600));
        drop(held);
        assert_eq!(alone.conn.used(), 0);
        let _held = alone.reserve(600).unwrap();
    }
}
