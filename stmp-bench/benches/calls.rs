//! What a unary call costs in CPU, both ends together: an stmp server and client in this process
//! on one single-threaded runtime, over loopback TCP, echoing 32 bytes.
//!
//! - `calls/in_flight/1`: one call at a time;
//! - `calls/in_flight/64`: 64 callers sharing the connection, as the suite's "1 conn × 64 in
//!   flight" point;
//! - `calls/server_to_client/1` and `/64`: the same calls made by the server, on its side of
//!   the connection, to a client that serves the echo method.
//!
//! On one thread nothing runs in parallel and nothing waits for another CPU, so the time per
//! call is the CPU both ends spend on it (user and kernel), without the cross-CPU wake-ups of
//! the suite's two processes of two workers each. The host's noise still reaches it: on the
//! 2-vCPU VMs here one build measured from 2.7 to 4.1 µs per call at 64 in flight from one run
//! to the next, so compare builds in alternated runs. `cargo bench -p stmp-bench --bench calls`
//! (add `-- --warm-up-time 1 --measurement-time 3` for a short run).

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use stmp_bench::in_process::{echo_calls, echo_pair, one_thread_runtime, reverse_echo_pair};

/// Makes `calls` calls with `callers` callers sharing `client`; returns how long they took.
async fn call(client: &impl stmp::Caller, callers: usize, calls: u64) -> Duration {
    let began = Instant::now();
    let each = calls.div_ceil(callers as u64);
    echo_calls(client, callers, each).await;
    // Per call as asked for: the callers made `each * callers` calls.
    began
        .elapsed()
        .mul_f64(calls as f64 / (each * callers as u64) as f64)
}

fn calls(c: &mut Criterion) {
    let runtime = one_thread_runtime();
    let (server, client) = runtime.block_on(echo_pair());
    let (reverse_server, reverse_client, to_client) = runtime.block_on(reverse_echo_pair());
    let mut group = c.benchmark_group("calls");
    group.throughput(Throughput::Elements(1));
    for callers in [1, 64] {
        group.bench_function(BenchmarkId::new("in_flight", callers), |b| {
            b.iter_custom(|calls| runtime.block_on(call(&client, callers, calls)));
        });
        group.bench_function(BenchmarkId::new("server_to_client", callers), |b| {
            b.iter_custom(|calls| runtime.block_on(call(&to_client, callers, calls)));
        });
    }
    group.finish();
    runtime.block_on(async {
        for (client, server) in [(client, server), (reverse_client, reverse_server)] {
            client.close().await;
            server.shutdown(Duration::from_secs(1)).await;
        }
    });
}

criterion_group!(benches, calls);
criterion_main!(benches);
