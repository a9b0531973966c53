//! Helpers the workspace's integration tests and benchmarks share. Not published.
//!
//! [`CutProxy`] stands between a client and a server so a test can take the network away
//! (both sockets dropped under the peers, no stmp Close) the way a lost Wi-Fi or a dead NAT
//! entry does, which a clean `close()` cannot imitate. [`Countdown`] waits until listeners
//! (on any task) have counted as many arrivals as expected.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::AbortHandle;

/// A loopback TCP proxy that can cut every connection through it and refuse new ones until
/// it is restored, and can be pointed at another server.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use stmp_testkit::CutProxy;
///
/// let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
/// let proxy = CutProxy::start(server.local_addr().unwrap()).await;
/// let _client = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
/// let (_accepted, _) = server.accept().await.unwrap();
/// proxy.cut();
/// proxy.restore();
/// # }
/// ```
pub struct CutProxy {
    addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    up: Arc<AtomicBool>,
    pipes: Arc<Mutex<Vec<AbortHandle>>>,
    accepting: AbortHandle,
}

impl CutProxy {
    /// Listens on an OS-picked loopback port and forwards each connection to `target`.
    pub async fn start(target: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let target = Arc::new(Mutex::new(target));
        let up = Arc::new(AtomicBool::new(true));
        let pipes: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let accepting = tokio::spawn({
            let (target, up, pipes) = (target.clone(), up.clone(), pipes.clone());
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        continue;
                    }
                    let to = *lock(&target);
                    let pipe = tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(to).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    lock(&pipes).push(pipe.abort_handle());
                }
            }
        })
        .abort_handle();
        CutProxy {
            addr,
            target,
            up,
            pipes,
            accepting,
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops both sockets of every connection through the proxy and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for pipe in lock(&self.pipes).drain(..) {
            pipe.abort();
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// Sends new connections to `target` (those already through keep their server).
    pub fn retarget(&self, target: SocketAddr) {
        *lock(&self.target) = target;
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.accepting.abort();
        for pipe in lock(&self.pipes).drain(..) {
            pipe.abort();
        }
    }
}

/// Arrivals counted from any task towards a target, and a wait until they reach it: what a
/// benchmark's event listeners report to the code that timed the events.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use stmp_testkit::Countdown;
///
/// let arrivals = Countdown::default();
/// arrivals.expect(2);
/// let counting = arrivals.clone();
/// tokio::spawn(async move {
///     counting.arrived();
///     counting.arrived();
/// });
/// arrivals.wait().await;
/// # }
/// ```
#[derive(Clone, Default)]
pub struct Countdown {
    received: Arc<AtomicUsize>,
    target: Arc<AtomicUsize>,
    reached: Arc<Notify>,
}

impl Countdown {
    /// Starts counting afresh towards `target`.
    pub fn expect(&self, target: usize) {
        self.received.store(0, Ordering::SeqCst);
        self.target.store(target, Ordering::SeqCst);
    }

    /// One arrival.
    pub fn arrived(&self) {
        let received = self.received.fetch_add(1, Ordering::SeqCst) + 1;
        if received == self.target.load(Ordering::SeqCst) {
            self.reached.notify_one();
        }
    }

    /// Waits until the target is reached; panics if an arrival takes more than 10 s.
    pub async fn wait(&self) {
        while self.received.load(Ordering::SeqCst) < self.target.load(Ordering::SeqCst) {
            tokio::time::timeout(Duration::from_secs(10), self.reached.notified())
                .await
                .expect("every arrival within 10 s");
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
