//! Server resident memory per idle connection.
//!
//! A fresh server process per system; its `VmRSS` is read before any connection, then after
//! each step of idle connections (each has made one echo call, so its buffers are as a real
//! connection's, and then sits idle). Per connection = (RSS − RSS before) / connections.
//!
//! Then, for stmp, what a burst leaves behind ([`AfterBurst`]): at the largest step every
//! connection makes [`BURST`] calls at once, and goes quiet again. Freed memory mostly stays
//! resident, so this is read from the allocator's count of the heap in use, before the burst
//! and once the heartbeat after it has passed and the server has as many tasks as before it
//! (bounded by three heartbeats).

use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;

use crate::child::ServerProcess;
use crate::measure::Call;
use crate::socketio::SocketIoCall;
use crate::systems::{READ_TIMEOUT_ENV, System};
use crate::unary::{StmpCall, TonicCall};
use crate::{Result, Settings};

/// The systems of the memory table. QUIC comes last: each of its clients has an endpoint (a
/// UDP socket) of its own, released only once its connection has drained after the close, and
/// 10,000 of them still open made the next system's connections fail for want of descriptors.
pub const SYSTEMS: [System; 9] = [
    System::StmpTcp,
    System::StmpTls,
    System::StmpWs,
    System::StmpWss,
    System::StmpGzip,
    System::StmpWsDeflate,
    System::Tonic,
    System::SocketIo,
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
    /// What a burst on every connection left behind (stmp, at the largest step).
    pub after_burst: Option<AfterBurst>,
}

/// The server's heap and tasks once connections that each had a burst of calls are quiet
/// again, against the same connections idle before it.
#[derive(Clone, Debug, Serialize)]
pub struct AfterBurst {
    /// Heap in use before the burst, KiB.
    pub heap_before_kib: u64,
    /// Heap in use once quiet again, KiB.
    pub heap_after_kib: u64,
    /// (heap after − heap before) / connections, KiB.
    pub per_connection_kib: f64,
    /// Tasks alive on the server beyond those before the burst (a writer task each
    /// connection kept, say).
    pub tasks_left: i64,
}

/// Calls each connection makes at once in the burst.
pub const BURST: usize = 16;

/// The memory part's stmp server read timeout: its heartbeat rings every four seconds or so.
/// At 4 s, a full run once lost a QUIC connection while the load process was busy with the
/// handshakes of 9,000 more: the server must hear from each client within that time (QUIC's
/// idle timeout follows the read timeout too).
const READ_TIMEOUT: Duration = Duration::from_secs(8);

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
        let read_timeout_ms = READ_TIMEOUT.as_millis().to_string();
        let mut server =
            ServerProcess::spawn_with_env(system.server(), &[(READ_TIMEOUT_ENV, read_timeout_ms)])
                .await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let baseline = settled_rss(&server).await?;
        let mut stmp_clients = Vec::new();
        let mut tonic_clients = Vec::new();
        let mut socketio_clients = Vec::new();
        for &n in &settings.idle {
            let held = stmp_clients.len() + tonic_clients.len() + socketio_clients.len();
            let more = n.saturating_sub(held);
            if system == System::Tonic {
                let clients = crate::unary::tonic_clients(&server.listening, more).await?;
                call_each(clients.iter().map(|c| TonicCall::new(c.clone(), 32))).await?;
                tonic_clients.extend(clients);
            } else if system == System::SocketIo {
                let addr = server.listening.addr("ws")?;
                let clients = crate::socketio::clients(addr, more, None).await?;
                let callers = clients
                    .iter()
                    .map(|c| SocketIoCall::caller(c.clone(), 32, 0));
                call_each(callers).await?;
                socketio_clients.extend(clients);
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
            let last_step = settings.idle.last() == Some(&n);
            let after_burst = match system.is_stmp() && last_step {
                true => Some(after_burst(&mut server, &stmp_clients).await?),
                false => None,
            };
            let result = MemoryResult {
                system,
                connections: n,
                baseline_kib: baseline,
                rss_kib: rss,
                per_connection_kib: rss.saturating_sub(baseline) as f64 / n as f64,
                after_burst,
            };
            eprintln!(
                "  memory {:<15} {:>6} idle connections: RSS {} KiB → {} KiB, {:.1} KiB per connection",
                system.label(),
                n,
                baseline,
                rss,
                result.per_connection_kib
            );
            if let Some(burst) = &result.after_burst {
                eprintln!(
                    "  memory {:<15} {:>6} after a burst of {BURST} calls each: heap {} KiB → {} KiB, {:+.2} KiB per connection, {} tasks left",
                    system.label(),
                    n,
                    burst.heap_before_kib,
                    burst.heap_after_kib,
                    burst.per_connection_kib,
                    burst.tasks_left
                );
            }
            results.push(result);
        }
        futures_util::future::join_all(stmp_clients.iter().map(stmp::Client::close)).await;
        server.stop().await;
        drop(stmp_clients);
        drop(tonic_clients);
        drop(socketio_clients);
    }
    Ok(results)
}

/// [`BURST`] calls at once on each of `clients` (64 connections at a time), then waits for the
/// heartbeat after the burst and for the server to be back to the tasks it had before, for
/// three heartbeats at most.
async fn after_burst(server: &mut ServerProcess, clients: &[stmp::Client]) -> Result<AfterBurst> {
    let tasks_before = server.tasks().await?;
    let heap_before = server.heap_bytes().await?;
    let bursts: Vec<Result<()>> = futures_util::stream::iter(clients)
        .map(|client| async move {
            let calls = (0..BURST).map(|_| async {
                let mut call = StmpCall::new(client.clone(), 32);
                call.call().await
            });
            futures_util::future::try_join_all(calls).await.map(drop)
        })
        .buffer_unordered(64)
        .collect()
        .await;
    bursts.into_iter().collect::<Result<()>>()?;
    // A connection lets go of what its burst left at its first heartbeat after it, half a
    // read timeout on, whether or not a writer task ran (the server answers a burst read at
    // once with no writer task): waiting only for the tasks measured the heap before that.
    let burst_ended = tokio::time::Instant::now();
    tokio::time::sleep_until(burst_ended + READ_TIMEOUT / 2 + Duration::from_secs(1)).await;
    let quiet_by = burst_ended + 3 * READ_TIMEOUT / 2;
    let mut tasks = server.tasks().await?;
    while tasks > tasks_before && tokio::time::Instant::now() < quiet_by {
        tokio::time::sleep(Duration::from_millis(50)).await;
        tasks = server.tasks().await?;
    }
    let heap_after = server.heap_bytes().await?;
    // A connection lost meanwhile would take its memory and tasks out of the figures.
    let open = server.connections().await?;
    if open != clients.len() {
        return Err(format!(
            "{} of {} connections were lost during the burst",
            clients.len().saturating_sub(open),
            clients.len()
        )
        .into());
    }
    Ok(AfterBurst {
        heap_before_kib: heap_before / 1024,
        heap_after_kib: heap_after / 1024,
        per_connection_kib: (heap_after as f64 - heap_before as f64)
            / 1024.0
            / clients.len() as f64,
        tasks_left: tasks as i64 - tasks_before as i64,
    })
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
