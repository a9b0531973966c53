//! An stmp echo server and client in the calling process, for the benches and tests that look
//! at one process alone (time per call on one thread, heap allocations per call).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{ECHO, Echo};

/// The runtime these benches and tests run both ends on: one thread, so nothing runs in
/// parallel and nothing waits for another CPU.
pub fn one_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A server with the echo method on loopback TCP (port 0) and a client connected to it, on
/// the current runtime.
pub async fn echo_pair() -> (stmp::Server, stmp::Client) {
    let server = echo_server();
    let addr = server.listen_tcp("127.0.0.1:0").await.expect("listen");
    (server, echo_client(&format!("tcp://{addr}")).await)
}

/// The same over a binary WebSocket on loopback.
pub async fn echo_pair_ws() -> (stmp::Server, stmp::Client) {
    let server = echo_server();
    let addr = server.listen_ws("127.0.0.1:0", "/").await.expect("listen");
    (server, echo_client(&format!("ws://{addr}/")).await)
}

fn echo_server() -> stmp::Server {
    let router = stmp::Router::new();
    router.route(&ECHO, |_ctx, input: Echo| async move { Ok(input) });
    stmp::Server::builder().router(router).build()
}

async fn echo_client(url: &str) -> stmp::Client {
    stmp::Client::builder()
        .no_reconnect()
        .connect(url)
        .await
        .expect("connect")
}

/// `callers` tasks sharing `client`, each making `each` echo calls of 32 bytes; returns once
/// all are done.
pub async fn echo_calls(client: &stmp::Client, callers: usize, each: u64) {
    let input = Echo {
        payload: vec![7; 32],
    };
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (client, input) = (client.clone(), input.clone());
            tokio::spawn(async move {
                for _ in 0..each {
                    let output: Echo = client.call(&ECHO, &input).await.expect("echo");
                    assert_eq!(output.payload.len(), 32);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("caller");
    }
}

/// The system allocator, counting what it hands out (a `realloc` counts as one allocation of
/// its new size). A bench or test makes it its `#[global_allocator]`.
pub struct CountingAllocator {
    allocations: AtomicU64,
    bytes: AtomicU64,
}

impl CountingAllocator {
    /// A counter at zero.
    pub const fn new() -> CountingAllocator {
        CountingAllocator {
            allocations: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    /// Allocations and bytes allocated so far.
    pub fn allocated(&self) -> (u64, u64) {
        (
            self.allocations.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    fn count(&self, bytes: usize) {
        self.allocations.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

impl Default for CountingAllocator {
    fn default() -> Self {
        CountingAllocator::new()
    }
}

// SAFETY: every call is forwarded to `System` unchanged; the counters only observe.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.count(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.count(new_size);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Allocations and bytes allocated per echo call, both ends together, with `callers` in
/// flight on `client`, as `allocator` (the global allocator) counts them. The first quarter
/// of the calls, which grow buffers and maps to their working size, is not counted.
pub async fn allocations_per_call(
    client: &stmp::Client,
    allocator: &CountingAllocator,
    callers: usize,
    calls: u64,
) -> (f64, f64) {
    let each = calls / callers as u64;
    echo_calls(client, callers, each.div_ceil(4)).await;
    let (allocations, bytes) = allocator.allocated();
    echo_calls(client, callers, each).await;
    let (allocations_after, bytes_after) = allocator.allocated();
    let counted = (each * callers as u64) as f64;
    (
        (allocations_after - allocations) as f64 / counted,
        (bytes_after - bytes) as f64 / counted,
    )
}
