//! What receiving one notify costs an stmp client in heap allocations, counted by this test
//! binary's own global allocator on the client's thread alone.
//!
//! A broadcast to many clients pays the receiving side's per-event work once per client, and
//! allocations are a steady, exact proxy for it (unlike time). The bound below is what the
//! receive path needs today: a change that adds an allocation per event fails here.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use stmp::{Client, Context, Method, Server};

struct Counting;

thread_local! {
    /// Set on the client's thread: only its allocations are counted.
    static CLIENT_THREAD: Cell<bool> = const { Cell::new(false) };
}

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

fn count() {
    if CLIENT_THREAD.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// An event whose decoding allocates nothing, so what is counted is stmp's own.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
struct Tick {
    #[prost(uint64, tag = "1")]
    seq: u64,
}

const TICK: Method = Method::new("test.Events.Tick", "test.Tick", "test.Tick");

const WARM_UP: usize = 100;
const MEASURED: usize = 200;

/// The client's allocation count when its listener ran for each seq, and how many ran.
struct Seen {
    marks: Vec<AtomicU64>,
    received: Mutex<usize>,
    changed: Condvar,
}

impl Seen {
    /// Waits until `n` events have reached the listener.
    fn wait_for(&self, n: usize) {
        let received = self.received.lock().unwrap();
        let (received, timeout) = self
            .changed
            .wait_timeout_while(received, Duration::from_secs(10), |received| *received < n)
            .unwrap();
        assert!(
            !timeout.timed_out(),
            "only {} of {n} events arrived",
            *received
        );
    }
}

/// Allocations per notify: the listener reads the count each time it runs, so two marks
/// `MEASURED` events apart enclose exactly that many whole trips through the receive path.
fn allocations_per_notify(listeners: usize) -> f64 {
    let seen = Arc::new(Seen {
        marks: (0..WARM_UP + MEASURED).map(|_| AtomicU64::new(0)).collect(),
        received: Mutex::new(0),
        changed: Condvar::new(),
    });
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = Server::builder().build();
    let addr = server_rt
        .block_on(server.listen_tcp("127.0.0.1:0"))
        .unwrap();

    let (connected_tx, connected_rx) = std::sync::mpsc::channel();
    let stop = Arc::new(tokio::sync::Notify::new());
    let client_thread = std::thread::spawn({
        let (seen, stop) = (seen.clone(), stop.clone());
        move || {
            CLIENT_THREAD.with(|c| c.set(true));
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let client = Client::connect(&format!("tcp://{addr}")).await.unwrap();
                for _ in 0..listeners {
                    let seen = seen.clone();
                    let _ = client
                        .router()
                        .listen(&TICK, move |_: Context, tick: Tick| {
                            let mark = ALLOCATIONS.load(Ordering::Relaxed);
                            let first = seen.marks[tick.seq as usize]
                                .compare_exchange(0, mark, Ordering::Relaxed, Ordering::Relaxed)
                                .is_ok();
                            if first {
                                *seen.received.lock().unwrap() += 1;
                                seen.changed.notify_all();
                            }
                            std::future::ready(())
                        });
                }
                connected_tx.send(()).unwrap();
                stop.notified().await;
                drop(client);
            });
        }
    });
    connected_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the client connects");
    server_rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), async {
            while server.conns().is_empty() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
    });
    // One event at a time, each sent once the last has been heard: every read carries one
    // packet, as for a client of a broadcast.
    for seq in 0..WARM_UP + MEASURED {
        let _runtime = server_rt.enter();
        stmp::broadcast(server.everyone(), &TICK, &Tick { seq: seq as u64 }).unwrap();
        seen.wait_for(seq + 1);
    }
    stop.notify_one();
    client_thread.join().unwrap();
    let first = seen.marks[WARM_UP].load(Ordering::Relaxed);
    let last = seen.marks[WARM_UP + MEASURED - 1].load(Ordering::Relaxed);
    (last - first) as f64 / (MEASURED - 1) as f64
}

#[test]
fn receiving_a_notify_allocates_a_bounded_number_of_times() {
    let per_notify = allocations_per_notify(1);
    println!("allocations per notify, one listener: {per_notify:.2}");
    // The read buffer, the payload's share of it, the Context and the listener's future.
    assert!(per_notify <= 4.0, "{per_notify:.2} allocations per notify");
}
