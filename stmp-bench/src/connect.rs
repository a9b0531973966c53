//! Connection setup: how many new connections a server takes per second, and what each costs
//! it, as when every client of a restarted server comes back at once.
//!
//! Each connection is opened, makes one echo call (so it is one a client could use: for stmp
//! the handshake and the server's connection task are done, for tonic the HTTP/2 preface and
//! settings), and is closed by the client. [`Settings::depth`] of them are under way at any
//! time. The systems take turns round by round, as the unary points do, and each row is its
//! median round. CPU is the server process's and the load generator's over the whole round,
//! including the server's teardown of the last connections.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;

use crate::child::ServerProcess;
use crate::measure::{Call, Latencies};
use crate::raw::{QuicStream, RawCall};
use crate::socketio::{SocketIoCall, SocketIoClient};
use crate::systems::{Listening, System, stmp_client};
use crate::unary::{StmpCall, TonicCall, tonic_client};
use crate::{Result, Settings};

/// The systems of the connection table: every transport's handshake once (gzip adds its
/// compressor's state to TCP's), tonic's, socketioxide's, and the raw echoes' bare TCP and QUIC
/// handshakes.
pub const SYSTEMS: [System; 10] = [
    System::StmpTcp,
    System::StmpTls,
    System::StmpWs,
    System::StmpWss,
    System::StmpGzip,
    System::StmpQuic,
    System::Tonic,
    System::SocketIo,
    System::RawTcp,
    System::RawQuic,
];

/// The payload of each connection's one call.
const PAYLOAD: usize = 32;

/// One row: one system's median round.
#[derive(Clone, Debug, Serialize)]
pub struct ConnectResult {
    /// The system.
    pub system: System,
    /// Connections opened, used and closed in each round.
    pub connections: usize,
    /// Connections under way at once.
    pub at_once: usize,
    /// Connections per second (the median round).
    pub per_second: f64,
    /// Median time from the start of a connection to its call's answer, ns.
    pub p50_ns: u64,
    /// 99th percentile of it, ns.
    pub p99_ns: u64,
    /// The server's CPU time per connection, ns.
    pub server_cpu_ns: u64,
    /// The load generator's CPU time per connection (the clients'), ns.
    pub client_cpu_ns: u64,
    /// Each round's connections per second, in the order measured.
    pub per_round: Vec<f64>,
}

/// What one round of one system measured.
struct Round {
    per_second: f64,
    p50_ns: u64,
    p99_ns: u64,
    server_cpu_ns: u64,
    client_cpu_ns: u64,
}

/// Every system of `systems` (those of [`SYSTEMS`] when empty), in rounds.
pub async fn run(settings: &Settings, systems: &[System]) -> Result<Vec<ConnectResult>> {
    let systems: Vec<System> = match systems.is_empty() {
        true => SYSTEMS.to_vec(),
        false => systems.to_vec(),
    };
    let mut servers: Vec<ServerProcess> = Vec::new();
    for &system in &systems {
        if !servers.iter().any(|s| s.kind() == system.server()) {
            servers.push(ServerProcess::spawn(system.server()).await?);
        }
    }
    let (n, at_once) = (settings.connects, settings.depth);
    let mut rounds: Vec<Vec<Round>> = systems.iter().map(|_| Vec::new()).collect();
    for round in 0..=settings.rounds {
        for (i, &system) in systems.iter().enumerate() {
            let server = servers
                .iter_mut()
                .find(|s| s.kind() == system.server())
                .expect("a server per kind");
            // Round 0 warms each server and its allocator up, and is not kept.
            let connections = if round == 0 { at_once } else { n };
            let measured = measure(system, server, connections, at_once)
                .await
                .map_err(|e| format!("{} connection setup: {e}", system.label()))?;
            if round > 0 {
                rounds[i].push(measured);
            }
        }
    }
    for server in servers {
        server.stop().await;
    }
    let results: Vec<ConnectResult> = systems
        .iter()
        .zip(rounds)
        .map(|(&system, rounds)| median(system, n, at_once, rounds))
        .collect();
    for row in &results {
        eprintln!(
            "  connect {:<15} {:>6.0} conn/s  p50 {:>9}  p99 {:>9}  server CPU/conn {:>9}  client CPU/conn {:>9}",
            row.system.label(),
            row.per_second,
            crate::units::duration(row.p50_ns),
            crate::units::duration(row.p99_ns),
            crate::units::duration(row.server_cpu_ns),
            crate::units::duration(row.client_cpu_ns),
        );
    }
    Ok(results)
}

/// The median of each figure over the rounds.
fn median(system: System, connections: usize, at_once: usize, rounds: Vec<Round>) -> ConnectResult {
    fn middle<T: Copy + PartialOrd>(mut values: Vec<T>) -> T {
        values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        values[values.len() / 2]
    }
    ConnectResult {
        system,
        connections,
        at_once,
        per_second: middle(rounds.iter().map(|r| r.per_second).collect()),
        p50_ns: middle(rounds.iter().map(|r| r.p50_ns).collect()),
        p99_ns: middle(rounds.iter().map(|r| r.p99_ns).collect()),
        server_cpu_ns: middle(rounds.iter().map(|r| r.server_cpu_ns).collect()),
        client_cpu_ns: middle(rounds.iter().map(|r| r.client_cpu_ns).collect()),
        per_round: rounds.iter().map(|r| r.per_second).collect(),
    }
}

/// One round: `n` connections of `system`, `at_once` at a time; then waits for the server to
/// have let go of them all, so that their teardown is in the round's CPU time.
async fn measure(
    system: System,
    server: &mut ServerProcess,
    n: usize,
    at_once: usize,
) -> Result<Round> {
    let listening = server.listening.clone();
    let cpu = |pid: u32| crate::child::cpu_ns(pid);
    let (server_before, client_before) = (cpu(server.pid())?, cpu(std::process::id())?);
    let began = Instant::now();
    // Each connection is a task of its own, so that the runtime's workers run the clients as
    // they run the unary callers, not the thread that waits for them all.
    let latencies: Vec<_> = futures_util::stream::iter(0..n)
        .map(|_| tokio::spawn(one_connection(system, listening.clone())))
        .buffer_unordered(at_once)
        .collect()
        .await;
    let elapsed = began.elapsed();
    let mut all = Latencies::default();
    for latency in latencies {
        all.record(latency??);
    }
    let histogram = Latencies::histogram([all])?;
    let client_cpu = cpu(std::process::id())? - client_before;
    settle(system, server).await?;
    let server_cpu = cpu(server.pid())? - server_before;
    Ok(Round {
        per_second: n as f64 / elapsed.as_secs_f64(),
        p50_ns: histogram.value_at_quantile(0.5),
        p99_ns: histogram.value_at_quantile(0.99),
        server_cpu_ns: server_cpu / n as u64,
        client_cpu_ns: client_cpu / n as u64,
    })
}

/// Waits for the server to hold no connection (stmp's and the raw echo's servers count them;
/// tonic's does not, and gets a moment instead).
async fn settle(system: System, server: &mut ServerProcess) -> Result<()> {
    match system {
        System::Tonic => tokio::time::sleep(Duration::from_millis(200)).await,
        _ => server.wait_for_connections(0).await?,
    }
    Ok(())
}

/// Opens a connection of `system`, makes one call on it and closes it; the time from the
/// start to the call's answer.
async fn one_connection(system: System, server: Listening) -> Result<Duration> {
    let server = &server;
    let began = Instant::now();
    match system {
        System::RawTcp => {
            let mut call = RawCall::connect(server.addr("tcp")?, PAYLOAD).await?;
            call.call().await?;
            Ok(began.elapsed())
        }
        System::RawQuic => {
            let stream = QuicStream::connect(server.addr("quic")?).await?;
            let mut call = RawCall::over(stream, PAYLOAD);
            call.call().await?;
            let answered = began.elapsed();
            call.into_inner().close();
            Ok(answered)
        }
        System::Tonic => {
            let mut call = TonicCall::new(tonic_client(server).await?, PAYLOAD);
            call.call().await?;
            Ok(began.elapsed())
        }
        System::SocketIo => {
            let client = SocketIoClient::connect(server.addr("ws")?).await?;
            SocketIoCall::caller(client.clone(), PAYLOAD, 0)
                .call()
                .await?;
            let answered = began.elapsed();
            drop(client);
            Ok(answered)
        }
        stmp => {
            let client = stmp_client(stmp, server, None).await?;
            StmpCall::new(client.clone(), PAYLOAD).call().await?;
            let answered = began.elapsed();
            client.close().await;
            Ok(answered)
        }
    }
}
