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

use stmp_nats::nats_server::NatsServer;

use crate::child::ServerProcess;
use crate::fanout::{FanoutResult, Round, Throughput};
use crate::systems::{NATS_ENV, ServerKind, System};
use crate::{Result, Settings};

/// The stmp nodes of the cluster.
pub const NODES: usize = 3;
/// The system label of the cluster's fan-out rows.
pub const SYSTEM: &str = "stmp tcp, 3 nodes on NATS";

/// Starts and stops a `nats-server`, to learn before a run whether the cluster part can run.
pub fn nats_server_runs() -> Result<()> {
    start_nats().map(drop)
}

fn start_nats() -> Result<NatsServer> {
    NatsServer::start().map_err(|e| {
        format!("the cluster benchmark needs nats-server (apt-get install nats-server): {e}").into()
    })
}

/// The fan-out rows at each N of the settings, then the throughput at the largest N.
pub async fn run(settings: &Settings) -> Result<(Vec<FanoutResult>, Throughput)> {
    let nats = start_nats()?;
    let mut nodes = Vec::new();
    for _ in 0..NODES {
        nodes.push(
            ServerProcess::spawn_with_env(ServerKind::StmpNats, &[(NATS_ENV, nats.url())]).await?,
        );
    }
    let round = Arc::new(Round::default());
    let router = crate::fanout::counting_router(&round);

    let mut clients = Vec::new();
    let mut per_node = [0usize; NODES];
    let mut results = Vec::new();
    for (i, &n) in settings.fanout.iter().enumerate() {
        for (node, server) in nodes.iter_mut().enumerate() {
            // Round-robin: node k holds clients k, k + 3, k + 6, …
            let wanted = n / NODES + usize::from(node < n % NODES);
            clients.extend(
                crate::fanout::connect_up_to(
                    server,
                    System::StmpTcp,
                    per_node[node],
                    wanted,
                    &router,
                )
                .await?,
            );
            per_node[node] = per_node[node].max(wanted);
        }
        let result = crate::fanout::rounds(
            &mut nodes[0],
            &round,
            SYSTEM,
            n,
            settings,
            crate::fanout::first_seq(i),
        )
        .await?;
        eprintln!("  {}", crate::fanout::summary(&result));
        results.push(result);
    }

    // Throughput with every client connected: the same burst as the single node's.
    let broadcasts = crate::fanout::burst_size(settings, clients.len());
    let throughput =
        crate::fanout::bursts(&mut nodes, &round, SYSTEM, broadcasts, clients.len()).await?;
    for node in nodes {
        node.stop().await;
    }
    drop(clients);
    drop(nats);
    Ok((results, throughput))
}
