//! Heap allocations per unary call, both ends together: an stmp server and client in this
//! process on one single-threaded runtime, over loopback TCP, echoing 32 bytes.
//!
//! Unlike time, the count does not move with the host's noise, so two builds can be compared
//! from one run each. `cargo bench -p stmp-bench --bench allocations` prints, for 1 and 64
//! calls in flight, the allocations and the bytes allocated per call.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use stmp_bench::in_process::{echo_calls, echo_pair};

/// The system allocator, counting.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded to `System` unchanged; the counters only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn snapshot() -> (u64, u64) {
    (
        ALLOCATIONS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    )
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (server, client) = echo_pair().await;
        println!("| in flight | allocations / call | bytes allocated / call |");
        println!("|---|---|---|");
        for callers in [1, 64] {
            const CALLS: u64 = 64_000;
            // The first calls grow buffers and maps to their working size.
            echo_calls(&client, callers, CALLS / 4 / callers as u64).await;
            let (allocations, bytes) = snapshot();
            echo_calls(&client, callers, CALLS / callers as u64).await;
            let (allocations_after, bytes_after) = snapshot();
            println!(
                "| {callers} | {:.2} | {:.0} |",
                (allocations_after - allocations) as f64 / CALLS as f64,
                (bytes_after - bytes) as f64 / CALLS as f64,
            );
        }
        client.close().await;
        server.shutdown(Duration::from_secs(1)).await;
    });
}
