//! Broadcast fan-out: one event to N connected clients, all held by this (the load) process.
//!
//! Each round the server is told on its stdin to broadcast; it stamps the wall clock just
//! before it starts, every client stamps the wall clock when its event arrives, and the
//! round's figure is the last client's stamp minus the server's. Server CPU is read from
//! `/proc/<pid>/stat` before the first round and after the last, divided by the rounds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::Notify;

use crate::child::ServerProcess;
use crate::systems::{ServerKind, System};
use crate::{EVENT, Event, Result, Settings, event_frame_len};

/// One fan-out row.
#[derive(Clone, Debug, Serialize)]
pub struct FanoutResult {
    /// `stmp tcp`, `stmp ws`, `stmp tcp to raw readers` or `raw tcp`.
    pub system: String,
    /// Connected clients.
    pub clients: usize,
    /// Broadcast rounds measured.
    pub rounds: usize,
    /// Median time from the start of the broadcast to the last client having the event, ns.
    pub p50_ns: u64,
    /// The worst round's time, ns.
    pub max_ns: u64,
    /// Median time the server spent in the broadcast call itself (serialise + queue), ns.
    pub call_ns: u64,
    /// Server CPU (user + system) per broadcast, ns.
    pub server_cpu_ns: u64,
    /// The load generator's CPU per broadcast, ns: its clients receive the events on the same
    /// cores, so what a client spends per event is part of the time to the last delivery.
    pub client_cpu_ns: u64,
    /// Serialisations per broadcast (stmp: once per content type).
    pub encodings: usize,
    /// Connections that missed an event, over all rounds.
    pub dropped: usize,
    /// Bytes written per connection per event.
    pub frame_bytes: usize,
    /// The time to the last client of each pass, ns, in the order run (the row is the pass
    /// with the median one).
    pub pass_p50_ns: Vec<u64>,
}

/// What a burst of broadcasts to every client sustained, end to end.
#[derive(Clone, Debug, Serialize)]
pub struct Throughput {
    /// `stmp tcp` or the cluster's label.
    pub system: String,
    /// stmp server processes (nodes) the clients are spread over.
    pub nodes: usize,
    /// Clients.
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

/// The events awaited now — one round's, or a burst's range of seqs — shared by every
/// client's receive path: how many arrived and when the last one did.
#[derive(Default)]
pub(crate) struct Round {
    /// The seqs counted: `first..end`.
    first: AtomicU64,
    end: AtomicU64,
    target: AtomicUsize,
    received: AtomicUsize,
    last_ns: AtomicU64,
    done: Notify,
}

/// What arrived of a round by its deadline.
pub(crate) struct Arrived {
    pub received: usize,
    /// Wall-clock time of the last arrival, unix ns (0: none).
    pub last_ns: u64,
}

impl Round {
    /// Counts the event `seq` from now on, expecting `target` arrivals.
    pub(crate) fn start(&self, seq: u64, target: usize) {
        self.start_range(seq..seq + 1, target);
    }

    /// Counts every event in `seqs`, expecting `target` arrivals in all.
    pub(crate) fn start_range(&self, seqs: std::ops::Range<u64>, target: usize) {
        self.received.store(0, Ordering::SeqCst);
        self.last_ns.store(0, Ordering::SeqCst);
        self.target.store(target, Ordering::SeqCst);
        // Closed first, so no hit counts against a half-set range.
        self.end.store(0, Ordering::SeqCst);
        self.first.store(seqs.start, Ordering::SeqCst);
        self.end.store(seqs.end, Ordering::SeqCst);
    }

    /// An event arrived.
    pub(crate) fn hit(&self, seq: u64) {
        if seq < self.first.load(Ordering::SeqCst) || seq >= self.end.load(Ordering::SeqCst) {
            return;
        }
        self.count();
    }

    fn count(&self) {
        self.last_ns
            .fetch_max(crate::unix_nanos(), Ordering::SeqCst);
        if self.received.fetch_add(1, Ordering::SeqCst) + 1 == self.target.load(Ordering::SeqCst) {
            self.done.notify_one();
        }
    }

    /// Waits until every awaited event has arrived or `deadline` passes.
    pub(crate) async fn arrived_by(&self, deadline: tokio::time::Instant) -> Arrived {
        while self.received.load(Ordering::SeqCst) < self.target.load(Ordering::SeqCst) {
            if tokio::time::timeout_at(deadline, self.done.notified())
                .await
                .is_err()
            {
                break;
            }
        }
        Arrived {
            received: self.received.load(Ordering::SeqCst),
            last_ns: self.last_ns.load(Ordering::SeqCst),
        }
    }

    /// The time of the last arrival, once every awaited event has arrived within `timeout`.
    async fn wait(&self, timeout: Duration) -> Result<u64> {
        let arrived = self.arrived_by(tokio::time::Instant::now() + timeout).await;
        let target = self.target.load(Ordering::SeqCst);
        if arrived.received < target {
            return Err(format!(
                "only {} of {target} clients got the event",
                arrived.received
            )
            .into());
        }
        Ok(arrived.last_ns)
    }
}

/// A router whose listener counts every fan-out event into `round`: the clients connected
/// with it report there.
pub(crate) fn counting_router(round: &Arc<Round>) -> stmp::Router {
    let router = stmp::Router::new();
    let hits = round.clone();
    // The listener stays as long as the router: the handle is not needed.
    let _ = router.listen(&EVENT, move |_ctx, event: Event| {
        hits.hit(event.seq);
        std::future::ready(())
    });
    router
}

/// Connects stmp clients of `system` to `server` until it holds `n` of them (it holds `held`
/// now).
pub(crate) async fn connect_up_to(
    server: &mut ServerProcess,
    system: System,
    held: usize,
    n: usize,
    router: &stmp::Router,
) -> Result<Vec<stmp::Client>> {
    let more = n.saturating_sub(held);
    let clients =
        crate::unary::stmp_clients(system, &server.listening, more, Some(router.clone())).await?;
    server.wait_for_connections(held + more).await?;
    Ok(clients)
}

/// stmp over TCP, stmp over WebSocket, stmp's server to raw readers, then the raw baseline, at
/// each N of the settings, as many passes as the settings ask; and the broadcasts per second
/// one stmp node sustains at the largest N over TCP (its median pass).
pub async fn run(settings: &Settings) -> Result<(Vec<FanoutResult>, Throughput)> {
    let passes = settings.fanout_passes.max(1);
    let mut rows = Vec::new();
    let mut bursts = Vec::new();
    for pass in 1..=passes {
        if passes > 1 {
            eprintln!("  pass {pass} of {passes}");
        }
        let (mut results, throughput) = stmp(settings).await?;
        results.extend(stmp_ws(settings).await?);
        results.extend(socketio(settings).await?);
        results.extend(stmp_to_raw_readers(settings).await?);
        results.extend(raw(settings).await?);
        rows.push(results);
        bursts.push(throughput);
    }
    bursts.sort_by(|a, b| a.broadcasts_per_s.total_cmp(&b.broadcasts_per_s));
    let burst = bursts.swap_remove(bursts.len() / 2);
    Ok((median_passes(rows), burst))
}

/// Each row from the pass with its median time to the last client, carrying every pass's
/// time. Every pass has the same rows in the same order.
fn median_passes(passes: Vec<Vec<FanoutResult>>) -> Vec<FanoutResult> {
    let rows = passes.first().map_or(0, Vec::len);
    (0..rows)
        .filter_map(|row| {
            let mut of_row: Vec<&FanoutResult> =
                passes.iter().filter_map(|pass| pass.get(row)).collect();
            let times = of_row.iter().map(|r| r.p50_ns).collect();
            of_row.sort_by_key(|r| r.p50_ns);
            let mut median = (*of_row.get(of_row.len() / 2)?).clone();
            median.pass_p50_ns = times;
            Some(median)
        })
        .collect()
}

/// Broadcasts in a throughput burst, all nodes together: sized to about 3 million deliveries
/// (60,000 with `--quick`) whatever the number of clients.
pub(crate) fn burst_size(settings: &Settings, clients: usize) -> usize {
    let budget = if settings.quick { 60_000 } else { 3_000_000 };
    (budget / clients.max(1)).max(30)
}

/// The first seq of the rounds at the `phase`-th N: never 0, so every event has the same
/// length (see [`Event::seq`](crate::Event::seq)).
pub(crate) fn first_seq(phase: usize) -> u64 {
    1 + phase as u64 * 1_000_000
}

/// Seqs of burst events start here, far above any round's.
const BURST_SEQ: u64 = 1 << 40;

/// Every server fires its share of `broadcasts` to everyone at once; the figure is the
/// broadcasts of all over the time from the first start to the last client having the last
/// event. `clients` is how many clients listen (every one gets every broadcast).
pub(crate) async fn bursts(
    servers: &mut [ServerProcess],
    round: &Round,
    system: &str,
    broadcasts: usize,
    clients: usize,
) -> Result<Throughput> {
    let per_server = broadcasts.div_ceil(servers.len().max(1));
    let broadcasts = per_server * servers.len();
    let target = broadcasts * clients;
    round.start_range(BURST_SEQ..BURST_SEQ + broadcasts as u64, target);
    // Every server gets its command before any answers: the bursts overlap.
    for (k, server) in servers.iter_mut().enumerate() {
        let first = BURST_SEQ + (k * per_server) as u64;
        server.send(&format!("burst {per_server} {first}")).await?;
    }
    let mut starts = Vec::new();
    for server in servers.iter_mut() {
        let words = server.answer().await?;
        starts.push(words.first().ok_or("short SENT line")?.parse::<u64>()?);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let arrived = round.arrived_by(deadline).await;
    let first = starts.iter().copied().min().unwrap_or(0);
    let elapsed_ns = arrived.last_ns.saturating_sub(first).max(1);
    let seconds = elapsed_ns as f64 / 1e9;
    let throughput = Throughput {
        system: system.to_owned(),
        nodes: servers.len(),
        clients,
        broadcasts,
        elapsed_ns,
        broadcasts_per_s: broadcasts as f64 / seconds,
        deliveries_per_s: arrived.received as f64 / seconds,
        missed: target.saturating_sub(arrived.received),
    };
    eprintln!(
        "  {} on {} node(s): {} broadcasts to {} clients in {}: {:.0} broadcasts/s, {:.0} deliveries/s, {} missed",
        throughput.system,
        throughput.nodes,
        throughput.broadcasts,
        throughput.clients,
        crate::units::duration(throughput.elapsed_ns),
        throughput.broadcasts_per_s,
        throughput.deliveries_per_s,
        throughput.missed,
    );
    Ok(throughput)
}

pub(crate) async fn rounds(
    server: &mut ServerProcess,
    round: &Round,
    system: &str,
    clients: usize,
    settings: &Settings,
    first_seq: u64,
) -> Result<FanoutResult> {
    eprintln!("  {system}: {clients} clients connected, broadcasting");
    // One unmeasured round warms every connection's path.
    let mut seq = first_seq;
    round.start(seq, clients);
    server.command(&format!("broadcast {seq}")).await?;
    round.wait(Duration::from_secs(30)).await?;

    let cpu_before = server.cpu_time()?;
    let client_cpu_before = crate::child::cpu_time(std::process::id())?;
    let (mut times, mut calls) = (Vec::new(), Vec::new());
    let (mut encodings, mut dropped) = (0, 0);
    for _ in 0..settings.fanout_rounds {
        seq += 1;
        round.start(seq, clients);
        let words = server.command(&format!("broadcast {seq}")).await?;
        let field = |i: usize| -> Result<u64> {
            Ok(words.get(i).ok_or("short SENT line")?.parse::<u64>()?)
        };
        let (start_ns, call_ns) = (field(0)?, field(1)?);
        dropped += field(3)? as usize;
        encodings = encodings.max(field(4)? as usize);
        let last_ns = round.wait(Duration::from_secs(30)).await?;
        times.push(last_ns.saturating_sub(start_ns));
        calls.push(call_ns);
    }
    let cpu = server.cpu_time()?.saturating_sub(cpu_before);
    let client_cpu = crate::child::cpu_time(std::process::id())?.saturating_sub(client_cpu_before);
    times.sort_unstable();
    calls.sort_unstable();
    Ok(FanoutResult {
        system: system.to_owned(),
        clients,
        rounds: settings.fanout_rounds,
        p50_ns: times[times.len() / 2],
        max_ns: *times.last().unwrap_or(&0),
        call_ns: calls[calls.len() / 2],
        server_cpu_ns: (cpu.as_nanos() / settings.fanout_rounds as u128) as u64,
        client_cpu_ns: (client_cpu.as_nanos() / settings.fanout_rounds as u128) as u64,
        encodings,
        dropped,
        frame_bytes: event_frame_len(),
        pass_p50_ns: vec![times[times.len() / 2]],
    })
}

async fn stmp(settings: &Settings) -> Result<(Vec<FanoutResult>, Throughput)> {
    let mut server = ServerProcess::spawn(ServerKind::Stmp).await?;
    let round = Arc::new(Round::default());
    let (results, clients) = stmp_rounds(&mut server, &round, System::StmpTcp, settings).await?;
    let broadcasts = burst_size(settings, clients.len());
    let servers = std::slice::from_mut(&mut server);
    let throughput = bursts(servers, &round, "stmp tcp", broadcasts, clients.len()).await?;
    server.stop().await;
    drop(clients);
    Ok((results, throughput))
}

/// The same rounds with stmp's WebSocket clients: the browsers' path, where each event is
/// one binary message.
async fn stmp_ws(settings: &Settings) -> Result<Vec<FanoutResult>> {
    let mut server = ServerProcess::spawn(ServerKind::Stmp).await?;
    let round = Arc::new(Round::default());
    let (results, clients) = stmp_rounds(&mut server, &round, System::StmpWs, settings).await?;
    server.stop().await;
    drop(clients);
    Ok(results)
}

/// The rounds at each N of the settings, to stmp clients of `system` that count the event in
/// their listener; returns the rows and the clients, still connected.
async fn stmp_rounds(
    server: &mut ServerProcess,
    round: &Arc<Round>,
    system: System,
    settings: &Settings,
) -> Result<(Vec<FanoutResult>, Vec<stmp::Client>)> {
    let router = counting_router(round);
    let mut clients = Vec::new();
    let mut results = Vec::new();
    for (i, &n) in settings.fanout.iter().enumerate() {
        clients.extend(connect_up_to(server, system, clients.len(), n, &router).await?);
        let mut result = rounds(server, round, system.label(), n, settings, first_seq(i)).await?;
        if system == System::StmpWs {
            result.frame_bytes = crate::event_message_len();
        }
        eprintln!("  {}", summary(&result));
        results.push(result);
    }
    Ok((results, clients))
}

/// socketioxide's `io.emit` to every connection, to socket.io clients over WebSocket that
/// parse each event's JSON for its seq: the peer of the `stmp ws` rows.
async fn socketio(settings: &Settings) -> Result<Vec<FanoutResult>> {
    let mut server = ServerProcess::spawn(ServerKind::SocketIo).await?;
    let addr = server.listening.addr("ws")?;
    let round = Arc::new(Round::default());
    let hits = round.clone();
    let on_event: crate::socketio::OnEvent = Arc::new(move |data: &str| {
        if let Some(seq) = crate::socketio::fanout_seq(data) {
            hits.hit(seq);
        }
    });
    let mut clients = Vec::new();
    let mut results = Vec::new();
    for (i, &n) in settings.fanout.iter().enumerate() {
        let more = n.saturating_sub(clients.len());
        let on_event = Some(on_event.clone());
        clients.extend(crate::socketio::clients(addr, more, on_event).await?);
        server.wait_for_connections(n).await?;
        let mut result = rounds(&mut server, &round, SOCKETIO, n, settings, first_seq(i)).await?;
        result.frame_bytes = crate::socketio::fanout_frame_len();
        eprintln!("  {}", summary(&result));
        results.push(result);
    }
    server.stop().await;
    drop(clients);
    Ok(results)
}

/// The row of socketioxide's fan-out.
pub const SOCKETIO: &str = "socketioxide";

/// The row of stmp's server broadcasting to raw readers.
pub const STMP_TO_RAW_READERS: &str = "stmp tcp to raw readers";

/// stmp's server, as in [`stmp`], broadcasting to sockets that did the stmp handshake and then
/// only read and count bytes, as the raw baseline's clients do: the server's fan-out alone,
/// without the work of 10,000 stmp clients on the same cores.
async fn stmp_to_raw_readers(settings: &Settings) -> Result<Vec<FanoutResult>> {
    let server = ServerProcess::spawn(ServerKind::Stmp).await?;
    let addr = server.listening.addr("tcp")?;
    read_rounds(server, settings, STMP_TO_RAW_READERS, move || {
        crate::raw::connect_stmp(addr)
    })
    .await
}

async fn raw(settings: &Settings) -> Result<Vec<FanoutResult>> {
    let server = ServerProcess::spawn(ServerKind::RawFanout).await?;
    let addr = server.listening.addr("tcp")?;
    read_rounds(server, settings, "raw tcp", move || {
        crate::raw::connect(addr)
    })
    .await
}

/// The rounds at each N of the settings, to readers that count the notify's bytes, each
/// connected by `connect`.
async fn read_rounds<C, F>(
    mut server: ServerProcess,
    settings: &Settings,
    system: &str,
    connect: C,
) -> Result<Vec<FanoutResult>>
where
    C: Fn() -> F,
    F: std::future::Future<Output = Result<tokio::net::TcpStream>>,
{
    let round = Arc::new(Round::default());
    let frame_len = event_frame_len();
    let mut readers = Vec::new();
    let mut results = Vec::new();
    for (i, &n) in settings.fanout.iter().enumerate() {
        let more = n.saturating_sub(readers.len());
        let streams: Vec<_> = futures_util::stream::iter(0..more)
            .map(|_| connect())
            .buffer_unordered(64)
            .collect()
            .await;
        for stream in streams {
            let hits = round.clone();
            readers.push(tokio::spawn(crate::raw::read_events(
                stream?,
                frame_len,
                move |seq| hits.hit(seq),
            )));
        }
        server.wait_for_connections(n).await?;
        let result = rounds(&mut server, &round, system, n, settings, first_seq(i)).await?;
        eprintln!("  {}", summary(&result));
        results.push(result);
    }
    server.stop().await;
    for reader in readers {
        reader.abort();
    }
    Ok(results)
}

pub(crate) fn summary(result: &FanoutResult) -> String {
    format!(
        "fan-out {:<9} to {:>6}: last client after {} (max {}), call {}, server CPU {}/event, client CPU {}/event, {} encoding(s), {} dropped",
        result.system,
        result.clients,
        crate::units::duration(result.p50_ns),
        crate::units::duration(result.max_ns),
        crate::units::duration(result.call_ns),
        crate::units::duration(result.server_cpu_ns),
        crate::units::duration(result.client_cpu_ns),
        result.encodings,
        result.dropped,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{event, notify_frame};

    /// The raw readers split frames by length: a seq whose encoding is longer or shorter than
    /// the others would make them misread every frame after it.
    #[test]
    fn every_seq_a_run_uses_gives_a_frame_of_the_same_length() {
        let len = event_frame_len();
        let phases = (0..8).map(first_seq);
        let rounds = phases.flat_map(|first| first..first + 64);
        let bursts = BURST_SEQ..BURST_SEQ + 100_000;
        for seq in rounds.chain(bursts.step_by(997)) {
            assert_eq!(notify_frame(&event(seq)).len(), len, "seq {seq}");
        }
        assert_ne!(
            notify_frame(&event(0)).len(),
            len,
            "seq 0 is left out by proto3"
        );
    }

    #[test]
    fn raw_readers_find_the_seq_in_the_frame() {
        for seq in [
            1,
            2,
            255,
            1 << 20,
            first_seq(1) + 7,
            BURST_SEQ + 12_345,
            u64::MAX,
        ] {
            assert_eq!(crate::event_seq_in(&notify_frame(&event(seq))), seq);
        }
        assert_eq!(
            crate::event_seq_in(&[0x5A; 12]),
            0,
            "too short to hold a seq"
        );
    }

    fn row(system: &str, p50_ns: u64) -> FanoutResult {
        FanoutResult {
            system: system.to_owned(),
            clients: 10,
            rounds: 1,
            p50_ns,
            max_ns: p50_ns,
            call_ns: 0,
            server_cpu_ns: p50_ns,
            client_cpu_ns: 0,
            encodings: 1,
            dropped: 0,
            frame_bytes: event_frame_len(),
            pass_p50_ns: vec![p50_ns],
        }
    }

    #[test]
    fn each_row_is_its_median_pass_with_every_pass_time() {
        let passes = vec![
            vec![row("stmp tcp", 30), row("raw tcp", 20)],
            vec![row("stmp tcp", 10), row("raw tcp", 25)],
            vec![row("stmp tcp", 20), row("raw tcp", 15)],
        ];
        let rows = median_passes(passes);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].system.as_str(), rows[0].p50_ns), ("stmp tcp", 20));
        assert_eq!(rows[0].server_cpu_ns, 20, "the whole row of that pass");
        assert_eq!(rows[0].pass_p50_ns, [30, 10, 20], "in the order run");
        assert_eq!((rows[1].system.as_str(), rows[1].p50_ns), ("raw tcp", 20));
        assert_eq!(rows[1].pass_p50_ns, [20, 25, 15]);
    }
}
