//! Cluster fan-out: three stmp server processes on one `nats-server` (started here, loopback,
//! OS-picked port), the clients spread over them round-robin.
//!
//! - The fan-out point is [`fanout`](crate::fanout)'s, through the cluster: node 0 broadcasts
//!   one event to everyone (its own clients at once, the other nodes' through NATS), and the
//!   round's figure is the last client's stamp minus node 0's. Its row sits next to the
//!   single-node `stmp tcp` row of the same N. Server CPU is node 0's alone.
//! - Throughput: every node fires a burst of broadcasts to everyone at once; the figure is
//!   the broadcasts of all three over the time from the first start to the last client
//!   having the last event: broadcasts per second the cluster sustains, end to end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde::Serialize;
use stmp_nats::nats_server::NatsServer;
use tokio::sync::Notify;

use crate::child::ServerProcess;
use crate::fanout::{FanoutResult, Round};
use crate::systems::{NATS_ENV, ServerKind, System};
use crate::{EVENT, Event, Result, Settings};

/// The stmp nodes of the cluster.
pub const NODES: usize = 3;
/// The system label of the cluster's fan-out rows.
pub const SYSTEM: &str = "stmp tcp, 3 nodes on NATS";

/// What a cluster sustained.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterThroughput {
    /// stmp nodes.
    pub nodes: usize,
    /// Clients, spread over the nodes.
    pub clients: usize,
    /// Broadcasts fired, all nodes together.
    pub broadcasts: usize,
    /// From the first burst's start to the last client having the last event, ns.
    pub elapsed_ns: u64,
    /// Broadcasts per second, end to end.
    pub broadcasts_per_s: f64,
    /// Events delivered per second (broadcasts × clients).
    pub deliveries_per_s: f64,
    /// Events that did not arrive, over all clients.
    pub missed: usize,
}

/// Counts every event of a burst.
#[derive(Default)]
struct Burst {
    received: AtomicUsize,
    target: AtomicUsize,
    last_ns: AtomicU64,
    done: Notify,
}

impl Burst {
    fn hit(&self) {
        self.last_ns
            .fetch_max(crate::unix_nanos(), Ordering::SeqCst);
        let target = self.target.load(Ordering::SeqCst);
        if self.received.fetch_add(1, Ordering::SeqCst) + 1 == target {
            self.done.notify_one();
        }
    }
}

/// The fan-out rows at each N of the settings, then the throughput at the smallest N.
pub async fn run(settings: &Settings) -> Result<(Vec<FanoutResult>, ClusterThroughput)> {
    let nats = NatsServer::start().map_err(|e| {
        format!("the cluster benchmark needs nats-server (apt-get install nats-server): {e}")
    })?;
    let mut nodes = Vec::new();
    for _ in 0..NODES {
        nodes.push(
            ServerProcess::spawn_with_env(ServerKind::StmpNats, &[(NATS_ENV, nats.url())]).await?,
        );
    }
    let round = Arc::new(Round::default());
    let burst = Arc::new(Burst::default());
    let router = stmp::Router::new();
    let (hits, bursts) = (round.clone(), burst.clone());
    let _listening = router.listen(&EVENT, move |_ctx, event: Event| {
        // Rounds use seqs below 1 << 40, bursts above.
        if event.seq >= BURST_SEQ {
            bursts.hit();
        } else {
            hits.hit(event.seq);
        }
        std::future::ready(())
    });

    let mut clients = Vec::new();
    let mut per_node = [0usize; NODES];
    let mut results = Vec::new();
    for (i, &n) in settings.fanout.iter().enumerate() {
        for (node, server) in nodes.iter_mut().enumerate() {
            // Round-robin: node k holds clients k, k + 3, k + 6, …
            let wanted = n / NODES + usize::from(node < n % NODES);
            let more = wanted.saturating_sub(per_node[node]);
            clients.extend(
                crate::unary::stmp_clients(
                    System::StmpTcp,
                    &server.listening,
                    more,
                    Some(router.clone()),
                )
                .await?,
            );
            per_node[node] += more;
            server.wait_for_connections(per_node[node]).await?;
        }
        let result = crate::fanout::rounds(
            &mut nodes[0],
            &round,
            SYSTEM,
            n,
            settings,
            i as u64 * 1_000_000,
        )
        .await?;
        eprintln!("  {}", crate::fanout::summary(&result));
        results.push(result);
    }

    // Throughput with every client connected, sized to a fixed number of deliveries.
    let budget = if settings.quick { 60_000 } else { 3_000_000 };
    let per_node = (budget / (clients.len().max(1) * NODES)).max(10);
    let throughput = throughput(&mut nodes, &burst, per_node, clients.len()).await?;
    eprintln!(
        "  cluster of {NODES}: {} broadcasts to {} clients in {}: {:.0} broadcasts/s, {:.0} deliveries/s, {} missed",
        throughput.broadcasts,
        throughput.clients,
        crate::units::duration(throughput.elapsed_ns),
        throughput.broadcasts_per_s,
        throughput.deliveries_per_s,
        throughput.missed,
    );
    for node in nodes {
        node.stop().await;
    }
    drop(clients);
    drop(nats);
    Ok((results, throughput))
}

/// Seqs of burst events start here, far above any round's.
const BURST_SEQ: u64 = 1 << 40;

async fn throughput(
    nodes: &mut [ServerProcess],
    burst: &Burst,
    per_node: usize,
    clients: usize,
) -> Result<ClusterThroughput> {
    let broadcasts = per_node * nodes.len();
    let target = broadcasts * clients;
    burst.received.store(0, Ordering::SeqCst);
    burst.last_ns.store(0, Ordering::SeqCst);
    burst.target.store(target, Ordering::SeqCst);
    // Every node gets its command before any answers: the bursts overlap.
    let mut starts = Vec::new();
    for (k, node) in nodes.iter_mut().enumerate() {
        node.send(&format!(
            "burst {per_node} {}",
            BURST_SEQ + (k * per_node) as u64
        ))
        .await?;
    }
    for node in nodes.iter_mut() {
        let words = node.answer().await?;
        starts.push(words.first().ok_or("short SENT line")?.parse::<u64>()?);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while burst.received.load(Ordering::SeqCst) < target {
        if tokio::time::timeout_at(deadline, burst.done.notified())
            .await
            .is_err()
        {
            break;
        }
    }
    let received = burst.received.load(Ordering::SeqCst);
    let first = starts.iter().copied().min().unwrap_or(0);
    let elapsed_ns = burst
        .last_ns
        .load(Ordering::SeqCst)
        .saturating_sub(first)
        .max(1);
    let seconds = elapsed_ns as f64 / 1e9;
    Ok(ClusterThroughput {
        nodes: nodes.len(),
        clients,
        broadcasts,
        elapsed_ns,
        broadcasts_per_s: broadcasts as f64 / seconds,
        deliveries_per_s: received as f64 / seconds,
        missed: target.saturating_sub(received),
    })
}
