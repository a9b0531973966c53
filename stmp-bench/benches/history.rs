//! What history costs: a room's events stamped and kept against the plain room broadcast, and
//! the replay of what a reconnecting client missed. stmp clients in this process, connected
//! over loopback TCP to a server in this process, set up once.
//!
//! - `publish/room/N`: `stmp::broadcast` to a room of N clients, until the last client's
//!   listener has the event;
//! - `publish/history/N`: `History::publish` to a room of the same N clients (the event
//!   stamped with its position and kept in the in-process ring), until the last has it;
//! - `replay/M`: a client that missed the room's last M events joins it again through
//!   `History::join`: from the join until its listener has all M. The client connects (with
//!   its resume position in its handshake, as a reconnecting client sends it) before the clock
//!   starts, and closes after it stops.
//!
//! `cargo bench -p stmp-bench --bench history` (add `-- --warm-up-time 1 --measurement-time 3`
//! for a short run).

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use stmp::history::{History, RESUME, Retention, SUPPORTS, StreamPosition};
use stmp_bench::{EVENT, Event, event};
use stmp_testkit::Countdown;

/// The room of the publish benchmarks, joined through the rooms alone.
const PLAIN: &str = "plain";
/// The room of the publish benchmarks, joined through the history.
const KEPT: &str = "kept";
/// The room whose events the replay benchmark's clients missed.
const MISSED: &str = "missed";
/// Events kept in [`MISSED`], more than any replay asks for.
const KEPT_EVENTS: usize = 1_000;

/// A router whose listener counts each event it gets into `arrivals`.
fn counting_router(arrivals: &Countdown) -> stmp::Router {
    let router = stmp::Router::new();
    let arrivals = arrivals.clone();
    let _listening = router.listen(&EVENT, move |_ctx, _: Event| {
        arrivals.arrived();
        std::future::ready(())
    });
    router
}

struct Setup {
    server: stmp::Server,
    history: History,
    url: String,
}

async fn setup() -> Setup {
    let server = stmp::Server::builder().build();
    let addr = server.listen_tcp("127.0.0.1:0").await.expect("listen");
    let history = History::builder(server.rooms())
        .retention(
            MISSED,
            Retention::new(KEPT_EVENTS, 64 << 20, Duration::from_secs(3600)),
        )
        .build();
    Setup {
        server,
        history,
        url: format!("tcp://{addr}"),
    }
}

/// The server's side of the connection it admitted last.
async fn newest_conn(server: &stmp::Server, known: usize) -> stmp::Conn {
    while server.conns().len() <= known {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    server
        .conns()
        .to_vec()
        .into_iter()
        .max_by_key(stmp::Conn::id)
        .expect("a connection")
}

fn publish(c: &mut Criterion, runtime: &tokio::runtime::Runtime) {
    let mut group = c.benchmark_group("publish");
    for n in [100usize, 1_000] {
        let setup = runtime.block_on(setup());
        let counter = Countdown::default();
        let clients: Vec<stmp::Client> = runtime.block_on(async {
            let mut clients = Vec::with_capacity(n);
            for known in 0..n {
                let client = stmp::Client::builder()
                    .no_reconnect()
                    .router(counting_router(&counter))
                    .connect(&setup.url)
                    .await
                    .expect("connect");
                let conn = newest_conn(&setup.server, known).await;
                setup.server.rooms().join(PLAIN, &conn);
                setup.history.join(KEPT, &conn).await;
                clients.push(client);
            }
            clients
        });
        let mut seq = 0;
        let mut round = |kept: bool| {
            seq += 1;
            counter.expect(n);
            let (history, server) = (setup.history.clone(), setup.server.clone());
            let event = event(seq);
            runtime.block_on(async {
                // From a task, as a handler would publish.
                let began = Instant::now();
                let queued = tokio::spawn(async move {
                    match kept {
                        true => {
                            let published = history.publish(KEPT, &EVENT, &event, None).await;
                            published.expect("publish").delivery.queued
                        }
                        false => {
                            stmp::broadcast(server.rooms().to(PLAIN), &EVENT, &event)
                                .expect("broadcast")
                                .queued
                        }
                    }
                })
                .await
                .expect("the publishing task");
                assert_eq!(queued, n);
                counter.wait().await;
                began.elapsed()
            })
        };
        group.bench_with_input(BenchmarkId::new("room", n), &n, |b, _| {
            b.iter_custom(|iters| (0..iters).map(|_| round(false)).sum())
        });
        group.bench_with_input(BenchmarkId::new("history", n), &n, |b, _| {
            b.iter_custom(|iters| (0..iters).map(|_| round(true)).sum())
        });
        runtime.block_on(futures_util::future::join_all(
            clients.iter().map(stmp::Client::close),
        ));
    }
    group.finish();
}

fn replay(c: &mut Criterion, runtime: &tokio::runtime::Runtime) {
    let setup = runtime.block_on(setup());
    let top = runtime.block_on(async {
        for seq in 1..=KEPT_EVENTS as u64 {
            let event = event(seq);
            let published = setup.history.publish(MISSED, &EVENT, &event, None).await;
            published.expect("publish");
        }
        setup.history.position(MISSED).await.expect("a stream")
    });
    let mut group = c.benchmark_group("replay");
    for missed in [10usize, 100, 1_000] {
        let from = StreamPosition::new(MISSED, top.epoch.clone(), top.offset - missed as u64);
        let round = || {
            runtime.block_on(async {
                let counter = Countdown::default();
                counter.expect(missed);
                let known = setup.server.conns().len();
                let client = stmp::Client::builder()
                    .no_reconnect()
                    .history(false)
                    .header(SUPPORTS, "1")
                    .header(RESUME, from.to_value())
                    .event_queue(KEPT_EVENTS * 2)
                    .router(counting_router(&counter))
                    .connect(&setup.url)
                    .await
                    .expect("connect");
                let conn = newest_conn(&setup.server, known).await;
                let began = Instant::now();
                let joined = setup.history.join(MISSED, &conn).await;
                counter.wait().await;
                let elapsed = began.elapsed();
                assert_eq!((joined.replayed, joined.recovered), (missed, Some(true)));
                client.close().await;
                while setup.server.conns().len() > known {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                elapsed
            })
        };
        group.bench_with_input(BenchmarkId::from_parameter(missed), &missed, |b, _| {
            b.iter_custom(|iters| (0..iters).map(|_| round()).sum())
        });
    }
    group.finish();
}

fn bench(c: &mut Criterion) {
    let runtime = stmp_bench::in_process::many_connections_runtime();
    publish(c, &runtime);
    replay(c, &runtime);
}

criterion_group!(benches, bench);
criterion_main!(benches);
