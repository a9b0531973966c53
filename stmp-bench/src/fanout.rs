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
use crate::{EVENT, Event, Result, Settings, event, notify_frame};

/// One fan-out row.
#[derive(Clone, Debug, Serialize)]
pub struct FanoutResult {
    /// `stmp tcp` or `raw tcp`.
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
    /// Serialisations per broadcast (stmp: once per content type).
    pub encodings: usize,
    /// Connections that missed an event, over all rounds.
    pub dropped: usize,
    /// Bytes written per connection per event.
    pub frame_bytes: usize,
}

/// The round in progress, shared by every client's receive path.
#[derive(Default)]
pub(crate) struct Round {
    seq: AtomicU64,
    target: AtomicUsize,
    received: AtomicUsize,
    last_ns: AtomicU64,
    done: Notify,
}

impl Round {
    fn start(&self, seq: u64, target: usize) {
        self.received.store(0, Ordering::SeqCst);
        self.last_ns.store(0, Ordering::SeqCst);
        self.target.store(target, Ordering::SeqCst);
        self.seq.store(seq, Ordering::SeqCst);
    }

    pub(crate) fn hit(&self, seq: u64) {
        if seq != self.seq.load(Ordering::SeqCst) {
            return;
        }
        self.last_ns
            .fetch_max(crate::unix_nanos(), Ordering::SeqCst);
        if self.received.fetch_add(1, Ordering::SeqCst) + 1 == self.target.load(Ordering::SeqCst) {
            self.done.notify_one();
        }
    }

    async fn wait(&self, timeout: Duration) -> Result<u64> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.received.load(Ordering::SeqCst) < self.target.load(Ordering::SeqCst) {
            if tokio::time::timeout_at(deadline, self.done.notified())
                .await
                .is_err()
            {
                return Err(format!(
                    "only {} of {} clients got the event",
                    self.received.load(Ordering::SeqCst),
                    self.target.load(Ordering::SeqCst)
                )
                .into());
            }
        }
        Ok(self.last_ns.load(Ordering::SeqCst))
    }
}

/// stmp over TCP, then the raw baseline, at each N of the settings.
pub async fn run(settings: &Settings) -> Result<Vec<FanoutResult>> {
    let mut results = stmp(settings).await?;
    results.extend(raw(settings).await?);
    Ok(results)
}

pub(crate) async fn rounds(
    server: &mut ServerProcess,
    round: &Round,
    system: &str,
    clients: usize,
    settings: &Settings,
    first_seq: u64,
) -> Result<FanoutResult> {
    // One unmeasured round warms every connection's path.
    let mut seq = first_seq;
    round.start(seq, clients);
    server.command(&format!("broadcast {seq}")).await?;
    round.wait(Duration::from_secs(30)).await?;

    let cpu_before = server.cpu_time()?;
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
        encodings,
        dropped,
        frame_bytes: notify_frame(&event(0)).len(),
    })
}

async fn stmp(settings: &Settings) -> Result<Vec<FanoutResult>> {
    let mut server = ServerProcess::spawn(ServerKind::Stmp).await?;
    let round = Arc::new(Round::default());
    let router = stmp::Router::new();
    let hits = round.clone();
    let _listening = router.listen(&EVENT, move |_ctx, event: Event| {
        hits.hit(event.seq);
        std::future::ready(())
    });
    let mut clients = Vec::new();
    let mut results = Vec::new();
    for (i, &n) in settings.fanout.iter().enumerate() {
        let more = n.saturating_sub(clients.len());
        clients.extend(
            crate::unary::stmp_clients(
                System::StmpTcp,
                &server.listening,
                more,
                Some(router.clone()),
            )
            .await?,
        );
        server.wait_for_connections(n).await?;
        let result = rounds(
            &mut server,
            &round,
            "stmp tcp",
            n,
            settings,
            i as u64 * 1_000_000,
        )
        .await?;
        eprintln!("  {}", summary(&result));
        results.push(result);
    }
    server.stop().await;
    drop(clients);
    Ok(results)
}

async fn raw(settings: &Settings) -> Result<Vec<FanoutResult>> {
    let mut server = ServerProcess::spawn(ServerKind::RawFanout).await?;
    let addr = server.listening.addr("tcp")?;
    let round = Arc::new(Round::default());
    let frame_len = notify_frame(&event(0)).len();
    let mut readers = Vec::new();
    let mut results = Vec::new();
    for (i, &n) in settings.fanout.iter().enumerate() {
        let more = n.saturating_sub(readers.len());
        let streams: Vec<_> = futures_util::stream::iter(0..more)
            .map(|_| crate::raw::connect(addr))
            .buffer_unordered(64)
            .collect()
            .await;
        for stream in streams {
            let hits = round.clone();
            readers.push(tokio::spawn(crate::raw::read_events(
                stream?,
                frame_len,
                move || hits.hit(hits.seq.load(Ordering::SeqCst)),
            )));
        }
        server.wait_for_connections(n).await?;
        let result = rounds(
            &mut server,
            &round,
            "raw tcp",
            n,
            settings,
            i as u64 * 1_000_000,
        )
        .await?;
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
        "fan-out {:<9} to {:>6}: last client after {} (max {}), call {}, server CPU {}/event, {} encoding(s), {} dropped",
        result.system,
        result.clients,
        crate::units::duration(result.p50_ns),
        crate::units::duration(result.max_ns),
        crate::units::duration(result.call_ns),
        crate::units::duration(result.server_cpu_ns),
        result.encodings,
        result.dropped,
    )
}
