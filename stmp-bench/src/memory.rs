//! Server resident memory per idle connection.
//!
//! A fresh server process per system; its `VmRSS` is read before any connection, then after
//! each step of idle connections (each has made one echo call, so its buffers are as a real
//! connection's, and then sits idle). Per connection = (RSS − RSS before) / connections.

use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;

use crate::child::ServerProcess;
use crate::measure::Call;
use crate::systems::System;
use crate::unary::{StmpCall, TonicCall};
use crate::{Result, Settings};

/// The systems of the memory table. QUIC comes last: each of its clients has an endpoint (a
/// UDP socket) of its own, released only once its connection has drained after the close, and
/// 10,000 of them still open made the next system's connections fail for want of descriptors.
pub const SYSTEMS: [System; 7] = [
    System::StmpTcp,
    System::StmpTls,
    System::StmpWs,
    System::StmpWss,
    System::StmpGzip,
    System::Tonic,
    System::StmpQuic,
];

/// One memory row.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryResult {
    /// The system.
    pub system: System,
    /// Idle connections.
    pub connections: usize,
    /// Server RSS before any connection, KiB.
    pub baseline_kib: u64,
    /// Server RSS with the connections, KiB.
    pub rss_kib: u64,
    /// (rss − baseline) / connections, KiB.
    pub per_connection_kib: f64,
}

/// Waits for the RSS to stop moving (or 3 s), returns it.
async fn settled_rss(server: &ServerProcess) -> Result<u64> {
    let mut last = server.rss_kib()?;
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = server.rss_kib()?;
        if now.abs_diff(last) * 200 <= last {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

/// Every system of [`SYSTEMS`] at each idle count of the settings.
pub async fn run(settings: &Settings) -> Result<Vec<MemoryResult>> {
    let mut results = Vec::new();
    for system in SYSTEMS {
        let mut server = ServerProcess::spawn(system.server()).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let baseline = settled_rss(&server).await?;
        let mut stmp_clients = Vec::new();
        let mut tonic_clients = Vec::new();
        for &n in &settings.idle {
            let held = stmp_clients.len() + tonic_clients.len();
            let more = n.saturating_sub(held);
            if system == System::Tonic {
                let clients = crate::unary::tonic_clients(&server.listening, more).await?;
                call_each(clients.iter().map(|c| TonicCall::new(c.clone(), 32))).await?;
                tonic_clients.extend(clients);
            } else {
                let clients =
                    crate::unary::stmp_clients(system, &server.listening, more, None).await?;
                call_each(clients.iter().map(|c| StmpCall::new(c.clone(), 32))).await?;
                stmp_clients.extend(clients);
            }
            if system != System::Tonic {
                server.wait_for_connections(n).await?;
            }
            let rss = settled_rss(&server).await?;
            let result = MemoryResult {
                system,
                connections: n,
                baseline_kib: baseline,
                rss_kib: rss,
                per_connection_kib: rss.saturating_sub(baseline) as f64 / n as f64,
            };
            eprintln!(
                "  memory {:<10} {:>6} idle connections: RSS {} KiB → {} KiB, {:.1} KiB per connection",
                system.label(),
                n,
                baseline,
                rss,
                result.per_connection_kib
            );
            results.push(result);
        }
        futures_util::future::join_all(stmp_clients.iter().map(stmp::Client::close)).await;
        server.stop().await;
        drop(stmp_clients);
        drop(tonic_clients);
    }
    Ok(results)
}

/// One echo call on every connection, 64 at a time.
async fn call_each<C: Call>(callers: impl Iterator<Item = C>) -> Result<()> {
    let outcomes: Vec<Result<()>> = futures_util::stream::iter(callers)
        .map(|mut caller| async move { caller.call().await })
        .buffer_unordered(64)
        .collect()
        .await;
    outcomes.into_iter().collect()
}
