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

/// The runtime of the benches that hold many loopback connections at once: tokio's
/// multi-threaded one, after the open-file limit is raised as far as it goes.
pub fn many_connections_runtime() -> tokio::runtime::Runtime {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    tokio::runtime::Builder::new_multi_thread()
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

/// A server on loopback TCP and a client connected to it that serves the echo method: calls
/// from the server to the client, over the server's side of the connection (returned too).
pub async fn reverse_echo_pair() -> (stmp::Server, stmp::Client, stmp::Conn) {
    let server = stmp::Server::builder().build();
    let addr = server.listen_tcp("127.0.0.1:0").await.expect("listen");
    let client = stmp::Client::builder()
        .router(echo_router())
        .no_reconnect()
        .connect(&format!("tcp://{addr}"))
        .await
        .expect("connect");
    // The server admits the connection on its own task: give it the turns it needs.
    for _ in 0..10_000 {
        if let Some(conn) = server.conns().to_vec().pop() {
            return (server, client, conn);
        }
        tokio::task::yield_now().await;
    }
    panic!("the server never listed the client's connection");
}

fn echo_router() -> stmp::Router {
    let router = stmp::Router::new();
    router.route(&ECHO, |_ctx, input: Echo| async move { Ok(input) });
    router
}

fn echo_server() -> stmp::Server {
    stmp::Server::builder().router(echo_router()).build()
}

async fn echo_client(url: &str) -> stmp::Client {
    stmp::Client::builder()
        .no_reconnect()
        .connect(url)
        .await
        .expect("connect")
}

/// `callers` tasks sharing `caller` (a client, or the server's side of a connection calling
/// its client), each making `each` echo calls of 32 bytes; returns once all are done.
pub async fn echo_calls(caller: &impl stmp::Caller, callers: usize, each: u64) {
    let input = Echo {
        payload: vec![7; 32],
    };
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (caller, input) = (caller.clone(), input.clone());
            tokio::spawn(async move {
                for _ in 0..each {
                    let output: Echo = caller
                        .call(&ECHO, &input, stmp::CallOptions::default())
                        .await
                        .expect("echo");
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
    client: &impl stmp::Caller,
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

/// Allocations and bytes allocated per connection to the echo server `server` listens with
/// at `url`, both ends together: the client connects, makes one echo call and closes, and the
/// server lets the connection go, `n` times over. The first tenth, which grows the server's
/// tables to their size, is not counted.
pub async fn allocations_per_connection(
    server: &stmp::Server,
    url: &str,
    allocator: &CountingAllocator,
    n: u64,
) -> (f64, f64) {
    let one = || async {
        let client = echo_client(url).await;
        let input = Echo {
            payload: vec![7; 32],
        };
        let output: Echo = client.call(&ECHO, &input).await.expect("echo");
        assert_eq!(output, input);
        client.close().await;
        // The server's side ends on its own task: the connection counts once it is gone.
        while !server.conns().is_empty() {
            tokio::task::yield_now().await;
        }
    };
    for _ in 0..n.div_ceil(10) {
        one().await;
    }
    let (allocations, bytes) = allocator.allocated();
    for _ in 0..n {
        one().await;
    }
    let (allocations_after, bytes_after) = allocator.allocated();
    (
        (allocations_after - allocations) as f64 / n as f64,
        (bytes_after - bytes) as f64 / n as f64,
    )
}

/// A server with the echo method, listening on loopback TCP (port 0); its URL.
pub async fn echo_server_tcp() -> (stmp::Server, String) {
    let server = echo_server();
    let addr = server.listen_tcp("127.0.0.1:0").await.expect("listen");
    (server, format!("tcp://{addr}"))
}

/// Allocations per event published through a [`stmp::history::History`] to a room of
/// `clients` clients that track positions (the default), both ends together, as `allocator`
/// counts them: `n` events, the first tenth not counted.
pub async fn allocations_per_history_event(
    allocator: &CountingAllocator,
    clients: usize,
    n: u64,
) -> f64 {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    let server = stmp::Server::builder().build();
    let addr = server.listen_tcp("127.0.0.1:0").await.expect("listen");
    let history = stmp::history::History::new(server.rooms());
    let heard = Arc::new(AtomicU64::new(0));
    let router = stmp::Router::new();
    let counter = heard.clone();
    let _listening = router.listen(&crate::EVENT, move |_ctx, _event: crate::Event| {
        counter.fetch_add(1, Ordering::SeqCst);
        std::future::ready(())
    });
    let mut members = Vec::with_capacity(clients);
    for _ in 0..clients {
        let client = stmp::Client::builder()
            .no_reconnect()
            .router(router.clone())
            .connect(&format!("tcp://{addr}"))
            .await
            .expect("connect");
        members.push(client);
    }
    while server.conns().len() < clients {
        tokio::task::yield_now().await;
    }
    for conn in server.conns().to_vec() {
        history.join("room", &conn).await;
    }
    let heard_all = clients as u64;
    let mut published = 0;
    let mut publish = async |count: u64| {
        for _ in 0..count {
            published += 1;
            let event = crate::event(published);
            history
                .publish("room", &crate::EVENT, &event, None)
                .await
                .expect("publish");
            // One at a time, each heard before the next: no batch shares its buffers.
            while heard.load(Ordering::SeqCst) < published * heard_all {
                tokio::task::yield_now().await;
            }
        }
    };
    publish(n.div_ceil(10)).await;
    let (allocations, _) = allocator.allocated();
    publish(n).await;
    let (allocations_after, _) = allocator.allocated();
    futures_util::future::join_all(members.iter().map(stmp::Client::close)).await;
    server.shutdown(std::time::Duration::from_secs(1)).await;
    (allocations_after - allocations) as f64 / n as f64
}
