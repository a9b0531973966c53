//! Counters of what a server shed, dropped and refused, for dashboards and alerts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::conn::InFlight;

/// A snapshot of a server's counters ([`Server::stats`](crate::Server::stats)); every count
/// runs from the server's start.
///
/// ```
/// let server = stmp::Server::builder().build();
/// let stats = server.stats();
/// assert_eq!((stats.connections, stats.events_dropped), (0, 0));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Live connections.
    pub connections: usize,
    /// Events sent with [`broadcast`](crate::broadcast()) (to any audience) dropped because a
    /// connection's send queue was full.
    pub events_dropped: u64,
    /// Connections closed by the slow-consumer policy.
    pub slow_consumers_closed: u64,
    /// Requests answered `TooManyRequests` because every handler slot of their connection
    /// was taken.
    pub requests_rejected: u64,
    /// Requests answered `TooManyRequests`, and notifies dropped, because the budget for bytes
    /// in flight (the server's or their connection's) was spent.
    pub requests_shed: u64,
    /// Connections ended because a write made no progress within the write-stall timeout.
    pub write_stalls: u64,
    /// Bytes of requests and notifies held by handlers and listeners right now.
    pub in_flight_bytes: usize,
    /// Connections using gzip right now (at most
    /// [`max_gzip_connections`](crate::ServerBuilder::max_gzip_connections)).
    pub gzip_connections: usize,
}

/// The live counters behind [`ServerStats`], shared by every connection of a server (a
/// client's connections each have their own). Only slow paths touch them.
#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) events_dropped: AtomicU64,
    pub(crate) slow_consumers_closed: AtomicU64,
    pub(crate) requests_rejected: AtomicU64,
    pub(crate) requests_shed: AtomicU64,
    pub(crate) write_stalls: AtomicU64,
    /// The budget every connection's handlers and listeners draw from besides their own: a
    /// server's. A client's connections have none; each has its own budget alone.
    pub(crate) in_flight: Option<Arc<InFlight>>,
}

impl Counters {
    pub(crate) fn new(in_flight_limit: usize) -> Arc<Self> {
        Self::with_budget(Some(Arc::new(InFlight::new(in_flight_limit))))
    }

    /// The counters of one client connection: it shares no budget with others, and keeping
    /// one anyway would be a second counter, in memory of its own, touched by every packet.
    pub(crate) fn unshared() -> Arc<Self> {
        Self::with_budget(None)
    }

    fn with_budget(in_flight: Option<Arc<InFlight>>) -> Arc<Self> {
        Arc::new(Counters {
            events_dropped: AtomicU64::new(0),
            slow_consumers_closed: AtomicU64::new(0),
            requests_rejected: AtomicU64::new(0),
            requests_shed: AtomicU64::new(0),
            write_stalls: AtomicU64::new(0),
            in_flight,
        })
    }

    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, connections: usize, gzip_connections: usize) -> ServerStats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ServerStats {
            connections,
            events_dropped: get(&self.events_dropped),
            slow_consumers_closed: get(&self.slow_consumers_closed),
            requests_rejected: get(&self.requests_rejected),
            requests_shed: get(&self.requests_shed),
            write_stalls: get(&self.write_stalls),
            in_flight_bytes: self.in_flight.as_ref().map_or(0, |budget| budget.used()),
            gzip_connections,
        }
    }
}
