//! `stmp::broadcast` to a `ConnSet` of real loopback connections, set up once: 100 and 1,000 stmp
//! clients in this process, connected to a server in this process.
//!
//! - `broadcast/call/N`: the broadcast call alone (one serialisation, N queue pushes), made
//!   from a task on the runtime as a handler would;
//! - `broadcast/delivered/N`: from the call until the last client's listener has the event.
//!
//! Each iteration waits until every client has the event before the next one, so the send
//! queues never fill and no event is dropped.
//!
//! `cargo bench -p stmp-bench --bench broadcast` (add `-- --warm-up-time 1 --measurement-time 3`
//! for a short run).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use stmp_bench::{EVENT, Event, event};
use tokio::sync::Notify;

struct Setup {
    server: stmp::Server,
    received: Arc<AtomicUsize>,
    all: Arc<Notify>,
    _clients: Vec<stmp::Client>,
}

fn setup(runtime: &tokio::runtime::Runtime, n: usize) -> Setup {
    runtime.block_on(async {
        let server = stmp::Server::builder().build();
        let addr = server.listen_tcp("127.0.0.1:0").await.expect("listen");
        let received = Arc::new(AtomicUsize::new(0));
        let all = Arc::new(Notify::new());
        let router = stmp::Router::new();
        let (count, done) = (received.clone(), all.clone());
        let _listening = router.listen(&EVENT, move |_ctx, _event: Event| {
            if count.fetch_add(1, Ordering::SeqCst) + 1 == n {
                done.notify_one();
            }
            std::future::ready(())
        });
        let mut clients = Vec::with_capacity(n);
        for _ in 0..n {
            clients.push(
                stmp::Client::builder()
                    .no_reconnect()
                    .router(router.clone())
                    .connect(&format!("tcp://{addr}"))
                    .await
                    .expect("connect"),
            );
        }
        while server.conns().len() < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Setup {
            server,
            received,
            all,
            _clients: clients,
        }
    })
}

fn bench(c: &mut Criterion) {
    let runtime = stmp_bench::in_process::many_connections_runtime();
    let mut group = c.benchmark_group("broadcast");
    for n in [100usize, 1_000] {
        let setup = setup(&runtime, n);
        let event = event(1);
        // Sends one event and waits until every client has it; returns (call, delivered).
        let round = || {
            setup.received.store(0, Ordering::SeqCst);
            // From a task, as a handler would broadcast: wake-ups go to the worker's own queue.
            let server = setup.server.clone();
            let event = event.clone();
            let (began, call, delivery) = runtime
                .block_on(runtime.spawn(async move {
                    let began = Instant::now();
                    let delivery = stmp::broadcast(server.conns(), &EVENT, &event);
                    (began, began.elapsed(), delivery)
                }))
                .expect("the broadcast task");
            let delivery = delivery.expect("broadcast");
            assert_eq!(
                (delivery.queued, delivery.dropped, delivery.encodings),
                (n, 0, 1)
            );
            runtime.block_on(async {
                while setup.received.load(Ordering::SeqCst) < n {
                    tokio::time::timeout(Duration::from_secs(10), setup.all.notified())
                        .await
                        .expect("every client gets the event");
                }
            });
            (call, began.elapsed())
        };
        group.bench_with_input(BenchmarkId::new("call", n), &n, |b, _| {
            b.iter_custom(|iters| (0..iters).map(|_| round().0).sum())
        });
        group.bench_with_input(BenchmarkId::new("delivered", n), &n, |b, _| {
            b.iter_custom(|iters| (0..iters).map(|_| round().1).sum())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
