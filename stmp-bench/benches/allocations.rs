//! Heap allocations per unary call, both ends together: an stmp server and client in this
//! process on one single-threaded runtime, over loopback TCP, echoing 32 bytes.
//!
//! Unlike time, the count does not move with the host's noise, so two builds can be compared
//! from one run each. `cargo bench -p stmp-bench --bench allocations` prints, for 1 and 64
//! calls in flight, the allocations and the bytes allocated per call. `tests/allocations.rs`
//! holds the library to its count.

use std::time::Duration;

use stmp_bench::in_process::{
    CountingAllocator, allocations_per_call, echo_pair, echo_pair_ws, one_thread_runtime,
};

#[global_allocator]
static COUNTING: CountingAllocator = CountingAllocator::new();

fn main() {
    let runtime = one_thread_runtime();
    runtime.block_on(async {
        println!("| transport | in flight | allocations / call | bytes allocated / call |");
        println!("|---|---|---|---|");
        for transport in ["tcp", "ws"] {
            let (server, client) = match transport {
                "tcp" => echo_pair().await,
                _ => echo_pair_ws().await,
            };
            for callers in [1, 64] {
                let (allocations, bytes) =
                    allocations_per_call(&client, &COUNTING, callers, 64_000).await;
                println!("| {transport} | {callers} | {allocations:.2} | {bytes:.0} |");
            }
            client.close().await;
            server.shutdown(Duration::from_secs(1)).await;
        }
    });
}
