//! The server: listeners for every transport, handshakes, authentication, connection
//! bookkeeping and graceful shutdown.

mod admission;
mod negotiate;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::adapter::{Adapter, LocalAdapter, Node};
use crate::codec::{Codec, Codecs};
use crate::conn::io::{InflationLimit, PacketStream, PacketWriter, ReadLimits};
use crate::conn::{DEFAULT_SEND_QUEUE_BYTES, Drain, EngineConfig, Host, Outbox, Side};
use crate::router::BoxFuture;
use crate::stats::{Counters, ServerStats};
use crate::transport::Scheme;
use crate::wire::{BufferBudget, DEFAULT_MAX_PACKET_SIZE, Header, Limits, Version};
use crate::{Code, Conn, ConnSet, Rooms, Router, Service, SlowConsumer, Status, Users};
pub use admission::raise_fd_limit;
pub(crate) use admission::{AcceptBackoff, Admission, Refusal, Slot, Ticket};
pub(crate) use negotiate::{Agreement, Transport, negotiate};

/// Limit of a client handshake's header + message: far above any real one, far below what
/// an unauthenticated peer may make the server buffer.
pub(crate) const MAX_HANDSHAKE_SIZE: usize = 64 << 10;

type Authenticate = Arc<dyn Fn(Conn) -> BoxFuture<'static, Result<(), Status>> + Send + Sync>;
type ConnHook = Arc<dyn Fn(&Conn, &Status) + Send + Sync>;

/// Configures a [`Server`].
///
/// ```
/// use std::time::Duration;
/// use stmp::{Server, Status};
///
/// let server = Server::builder()
///     .max_connections(10_000)
///     .max_handshaking(256)
///     .authenticate_timeout(Duration::from_secs(5))
///     .read_timeout(Duration::from_secs(30))
///     .authenticate(|conn| async move {
///         match conn.peer_header().get("token") {
///             Some("secret") => Ok(()),
///             _ => Err(Status::unauthorized("bad token")),
///         }
///     })
///     .build();
/// ```
pub struct ServerBuilder {
    pub(crate) router: Router,
    pub(crate) codecs: Codecs,
    pub(crate) engine: EngineConfig,
    pub(crate) handshake_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) max_handshaking: usize,
    pub(crate) authenticate_timeout: Duration,
    pub(crate) raise_fd_limit: bool,
    pub(crate) max_packet_size: usize,
    pub(crate) max_header_size: usize,
    pub(crate) max_header_entries: usize,
    pub(crate) max_buffered_bytes: usize,
    pub(crate) call_timeout: Duration,
    pub(crate) gzip: bool,
    pub(crate) max_gzip_connections: usize,
    pub(crate) websocket_compression: bool,
    pub(crate) inflation: InflationLimit,
    pub(crate) send_queue_bytes: usize,
    pub(crate) slow_consumer: SlowConsumer,
    pub(crate) max_in_flight_bytes: usize,
    pub(crate) authenticate: Option<Authenticate>,
    pub(crate) on_close: Option<ConnHook>,
    pub(crate) node: Arc<Node>,
    pub(crate) adapter: Option<Box<dyn Adapter>>,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder {
            router: Router::new(),
            codecs: Codecs::default(),
            engine: EngineConfig::default(),
            handshake_timeout: Duration::from_secs(10),
            max_connections: 100_000,
            max_handshaking: 1024,
            authenticate_timeout: Duration::from_secs(10),
            raise_fd_limit: true,
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            max_header_size: Limits::DEFAULT.max_header_size,
            max_header_entries: Limits::DEFAULT.max_header_entries,
            max_buffered_bytes: 256 << 20,
            call_timeout: Duration::from_secs(30),
            gzip: false,
            max_gzip_connections: 1024,
            websocket_compression: false,
            inflation: InflationLimit::default(),
            send_queue_bytes: DEFAULT_SEND_QUEUE_BYTES,
            slow_consumer: SlowConsumer::default(),
            max_in_flight_bytes: 256 << 20,
            authenticate: None,
            on_close: None,
            node: Node::new(),
            adapter: None,
        }
    }
}

impl ServerBuilder {
    /// Uses this router (the default is an empty one; [`Server::router`] reaches it later).
    pub fn router(mut self, router: Router) -> Self {
        self.router = router;
        self
    }

    /// Serves a service (a generated `…Server`).
    pub fn add_service(self, service: impl Service) -> Self {
        self.router.add_service(service);
        self
    }

    /// Accepts a content codec of your own besides protobuf, JSON and msgpack; one with a
    /// built-in content type replaces the built-in (e.g. [`Codec::MSGPACK_GO`] for stmp-go
    /// clients).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codecs.add(codec);
        self
    }

    /// Silence after which a connection is dead (a Ping goes out after half). Default 60 s.
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.engine.read_timeout = timeout;
        self
    }

    /// Time a client has to send its handshake. Default 10 s.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Connections held at once, counted from accept (handshakes included) until the socket
    /// is closed; more are refused with `TooManyRequests`. Default 100,000.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// Connections still in their handshake (TLS, WebSocket upgrade, stmp handshake and
    /// authentication) at once; more are refused with `TooManyRequests`, so peers that never
    /// finish a handshake cannot take every place of [`max_connections`](Self::max_connections).
    /// Default 1024.
    pub fn max_handshaking(mut self, max: usize) -> Self {
        self.max_handshaking = max;
        self
    }

    /// Time the [`authenticate`](Self::authenticate) hook has for one connection; after it the
    /// client is refused with `RequestTimeout`. Default 10 s.
    pub fn authenticate_timeout(mut self, timeout: Duration) -> Self {
        self.authenticate_timeout = timeout;
        self
    }

    /// Whether [`build`](Self::build) raises the process's open-file limit to its hard limit
    /// (once per process, see [`raise_fd_limit`]). Default true.
    pub fn raise_fd_limit(mut self, raise: bool) -> Self {
        self.raise_fd_limit = raise;
        self
    }

    /// Limit of method + header + payload of one packet. Default 16 MiB.
    pub fn max_packet_size(mut self, max: usize) -> Self {
        self.max_packet_size = max;
        self
    }

    /// Limit of the header block of one packet or handshake, in wire bytes; a peer over it is
    /// closed with `RequestEntityTooLarge`. Default 16 KiB.
    pub fn max_header_size(mut self, max: usize) -> Self {
        self.max_header_size = max;
        self
    }

    /// Limit of the entries of one header block (each costs memory whatever its size); a peer
    /// over it is closed with `RequestEntityTooLarge`. Default 256.
    pub fn max_header_entries(mut self, max: usize) -> Self {
        self.max_header_entries = max;
        self
    }

    /// Bytes of partially received packets the server holds at once, over all connections.
    /// Packets over 64 KiB charge it as soon as their size is announced; a connection whose
    /// packet does not fit is closed with `TooManyRequests`. Default 256 MiB.
    pub fn max_buffered_bytes(mut self, max: usize) -> Self {
        self.max_buffered_bytes = max;
        self
    }

    /// Requests handled at once on one connection; more are answered `TooManyRequests` at
    /// once. Every request gets an answer: when the peer does not read its answers and the
    /// send queue is full, the connection stops reading until there is room (see
    /// [`send_queue_bytes`](Self::send_queue_bytes)). Default 1024.
    pub fn max_concurrent_requests(mut self, max: usize) -> Self {
        self.engine.max_concurrent_requests = max.max(1);
        self
    }

    /// Bytes of packets queued for one connection's peer (encoded size plus a small
    /// per-packet overhead). A handler's answer waits for room; an event that finds no room
    /// is dropped under the [`SlowConsumer`] policy; requests stop being read while their
    /// answers find no room. Default 4 MiB.
    pub fn send_queue_bytes(mut self, bytes: usize) -> Self {
        self.send_queue_bytes = bytes.max(1);
        self
    }

    /// A write to a peer that makes no progress for this long ends the connection (the peer
    /// reads nothing). Default 30 s.
    pub fn write_stall_timeout(mut self, timeout: Duration) -> Self {
        self.engine.write_stall_timeout = timeout;
        self
    }

    /// What happens to a connection whose send queue is full when an event comes. Default
    /// [`SlowConsumer::Disconnect`] after 1 dropped event.
    pub fn slow_consumer(mut self, policy: SlowConsumer) -> Self {
        self.slow_consumer = policy;
        self
    }

    /// Bytes of requests and notifies (payload and header) that handlers and listeners of
    /// every connection may hold at once; beyond it, requests are answered `TooManyRequests`
    /// and notifies are dropped, both counted in [`ServerStats::requests_shed`]. Default
    /// 256 MiB.
    pub fn max_in_flight_bytes(mut self, bytes: usize) -> Self {
        self.max_in_flight_bytes = bytes;
        self
    }

    /// Bytes of requests and notifies that the handlers and listeners of one connection may
    /// hold at once, so one connection cannot take the whole
    /// [`max_in_flight_bytes`](Self::max_in_flight_bytes); beyond it, its requests are
    /// answered `TooManyRequests` and its notifies dropped. Default 32 MiB.
    pub fn max_conn_in_flight_bytes(mut self, bytes: usize) -> Self {
        self.engine.conn_in_flight_bytes = bytes;
        self
    }

    /// Default deadline of server → client calls. Default 30 s.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Whether clients may ask for gzip on byte streams (TCP, TLS, QUIC; WebSocket has
    /// [`websocket_compression`](Self::websocket_compression)). Default false: inflating is work a
    /// peer can multiply (a few kilobytes of gzip become megabytes of packets to decode), so a
    /// server offers it only when told to. When on, each stream's inflation is bounded
    /// ([`gzip_inflation_limit`](Self::gzip_inflation_limit)). Both sides compress the fast way
    /// (greedy matches and fixed Huffman codes, as zlib's level 1 does): packets go out in
    /// small batches, each sync-flushed, where higher levels cost several times the CPU for
    /// little gain. Each gzip connection holds up to about 200 KiB of compression state;
    /// [`max_gzip_connections`](Self::max_gzip_connections) bounds how many there are.
    pub fn gzip(mut self, allowed: bool) -> Self {
        self.gzip = allowed;
        self
    }

    /// Connections that may use gzip at once; past it, a client that asks for gzip gets a
    /// plain stream, as when gzip is off. A gzip connection holds compressor and inflater state:
    /// about 24 KiB while its packets are small, up to about 200 KiB once its batches fill the
    /// windows and buffers, where a plain one holds about 4 KiB. Without a bound a peer that
    /// opens connections asking for gzip makes each cost the server up to some 50 times more
    /// memory. Default 1024 (about 200 MiB at most); only counts when [`gzip`](Self::gzip) is on.
    ///
    /// ```
    /// let server = stmp::Server::builder()
    ///     .gzip(true)
    ///     .max_gzip_connections(256)
    ///     .build();
    /// ```
    pub fn max_gzip_connections(mut self, max: usize) -> Self {
        self.max_gzip_connections = max;
        self
    }

    /// Whether WebSocket clients may have messages compressed (permessage-deflate, RFC 7692),
    /// which browsers ask for by themselves. Default false: as with [`gzip`](Self::gzip), the
    /// inflating is bounded ([`gzip_inflation_limit`](Self::gzip_inflation_limit)), and a
    /// message whose inflated bytes pass the packet size limit is refused.
    ///
    /// Each message is compressed on its own (no context takeover, either way), so a
    /// connection holds no compression state and idle ones cost what they do without it;
    /// repeated messages compress less than in a gzip stream. Messages under 128 bytes, and
    /// those deflate does not shorten, go out as they are. Needs the `gzip` feature; without
    /// it the offer is declined.
    ///
    /// ```
    /// let server = stmp::Server::builder().websocket_compression(true).build();
    /// ```
    pub fn websocket_compression(mut self, allowed: bool) -> Self {
        self.websocket_compression = allowed;
        self
    }

    /// How far what a client compressed may inflate: over any stretch of its gzip stream, or
    /// of its deflated WebSocket messages, at most `burst` bytes plus `max_ratio` times the
    /// compressed bytes of that stretch. A client over it is closed with
    /// `RequestEntityTooLarge`. Default 64× with a 1 MiB burst.
    pub fn gzip_inflation_limit(mut self, max_ratio: u32, burst: usize) -> Self {
        self.inflation = InflationLimit { max_ratio, burst };
        self
    }

    /// Checks each client at handshake. The hook sees the client's header and address through
    /// the connection and may attach identity to it ([`Conn::insert_extension`]); an `Err` is
    /// sent to the client in the server handshake and the connection ends.
    pub fn authenticate<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Conn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Status>> + Send + 'static,
    {
        self.authenticate = Some(Arc::new(move |conn| Box::pin(hook(conn))));
        self
    }

    /// Runs when a connection has ended, with why.
    pub fn on_close(mut self, hook: impl Fn(&Conn, &Status) + Send + Sync + 'static) -> Self {
        self.on_close = Some(Arc::new(hook));
        self
    }

    /// The packet and header limits.
    pub(crate) fn wire_limits(&self) -> Limits {
        Limits::DEFAULT
            .with_max_packet_size(self.max_packet_size)
            .with_max_header_size(self.max_header_size)
            .with_max_header_entries(self.max_header_entries)
    }

    /// Sends the server's broadcasts, membership changes and presence questions through
    /// `adapter` (see [`adapter`](crate::adapter)); the default, [`LocalAdapter`], keeps them
    /// on this server.
    pub fn adapter(mut self, adapter: impl Adapter) -> Self {
        self.adapter = Some(Box::new(adapter));
        self
    }

    /// The server's rooms, to hand to services before the server is built; the same as
    /// [`Server::rooms`].
    pub fn rooms(&self) -> Rooms {
        Rooms::of(self.node.clone())
    }

    /// The server's users; the same as [`Server::users`].
    pub fn users(&self) -> Users {
        Users::of(self.node.clone())
    }

    /// The permits of the gzip connections' semaphore: the limit, as far as a semaphore holds.
    fn gzip_places(&self) -> usize {
        self.max_gzip_connections.min(Semaphore::MAX_PERMITS)
    }

    /// The server; it serves nothing until a `listen_*` call.
    pub fn build(mut self) -> Server {
        let adapter = self
            .adapter
            .take()
            .unwrap_or_else(|| Box::new(LocalAdapter));
        self.node.install(adapter, &self.codecs);
        if self.raise_fd_limit {
            static RAISED: std::sync::Once = std::sync::Once::new();
            RAISED.call_once(|| match raise_fd_limit() {
                Ok(limit) => tracing::debug!(limit, "open-file limit raised"),
                Err(error) => tracing::warn!(%error, "cannot raise the open-file limit"),
            });
        }
        let read_limits = ReadLimits {
            wire: self.wire_limits(),
            buffered: Some(BufferBudget::new(self.max_buffered_bytes)),
            inflation: self.inflation,
        };
        let counters = Counters::new(self.max_in_flight_bytes);
        let host = Host {
            side: Side::Server,
            router: self.router.clone(),
            config: self.engine.clone(),
            call_timeout: self.call_timeout,
            send_queue_bytes: self.send_queue_bytes,
            slow_consumer: self.slow_consumer,
            counters: counters.clone(),
            tasks: TaskTracker::new(),
            draining: Drain::default(),
        };
        Server {
            inner: Arc::new(Inner {
                read_limits,
                admission: Admission::new(self.max_connections, self.max_handshaking),
                counters,
                host,
                conns: self.node.everyone().clone(),
                gzip_streams: Arc::new(Semaphore::new(self.gzip_places())),
                config: self,
                stop_accepting: CancellationToken::new(),
                connections: TaskTracker::new(),
                listeners: TaskTracker::new(),
            }),
        }
    }
}

/// A server of one router over any number of listeners (TCP, TLS, WebSocket, WebSocket over
/// TLS, QUIC). Cheap to clone.
///
/// ```no_run
/// # async fn run() -> Result<(), stmp::Status> {
/// let server = stmp::Server::builder().build();
/// // A failure to listen is a `Status` (a `NetworkError` whose source is the I/O error), as
/// // a failure to connect is.
/// let tcp = server.listen_tcp("127.0.0.1:5001").await?;
/// let ws = server.listen_ws("127.0.0.1:5002", "/stmp").await?;
/// println!("serving on tcp://{tcp} and ws://{ws}/stmp");
/// // Returns once `shutdown` has started (another task calls it); connections may still be
/// // draining then.
/// server.closed().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Server {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: ServerBuilder,
    pub(crate) read_limits: ReadLimits,
    pub(crate) admission: Arc<Admission>,
    pub(crate) conns: ConnSet,
    /// One permit per connection that uses gzip ([`ServerBuilder::max_gzip_connections`]).
    pub(crate) gzip_streams: Arc<Semaphore>,
    pub(crate) counters: Arc<Counters>,
    /// What every connection's engine gets: router, settings, the handlers' tracker (waited
    /// for at shutdown) and the drain signal.
    pub(crate) host: Host,
    pub(crate) stop_accepting: CancellationToken,
    pub(crate) connections: TaskTracker,
    /// Accept loops: once they end, their addresses are free again.
    pub(crate) listeners: TaskTracker,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("connections", &self.inner.conns.len())
            .field("admitted", &self.inner.admission.open())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A builder.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The router: add handlers and listeners at any time.
    pub fn router(&self) -> &Router {
        &self.inner.config.router
    }

    /// Every live connection.
    pub fn conns(&self) -> &ConnSet {
        &self.inner.conns
    }

    /// The server's node: its connections, rooms and users, and its adapter.
    pub fn node(&self) -> &Arc<Node> {
        &self.inner.config.node
    }

    /// Every connection of the server (and, through its adapter, of every node), to
    /// [`broadcast`](fn@crate::broadcast) to.
    pub fn everyone(&self) -> crate::Audience<'_> {
        crate::Audience::on(&self.inner.config.node, crate::adapter::Target::Everyone)
    }

    /// The server's rooms (through its adapter).
    pub fn rooms(&self) -> Rooms {
        Rooms::of(self.inner.config.node.clone())
    }

    /// The server's users (through its adapter).
    pub fn users(&self) -> Users {
        Users::of(self.inner.config.node.clone())
    }

    /// What the server has dropped, shed and refused so far, and what it holds now.
    pub fn stats(&self) -> ServerStats {
        let gzip_connections =
            self.inner.config.gzip_places() - self.inner.gzip_streams.available_permits();
        self.inner
            .counters
            .snapshot(self.inner.conns.len(), gzip_connections)
    }

    /// Version, codec and limits (the connection count is taken at accept).
    pub(crate) fn admit(
        &self,
        version: Version,
        header: &Header,
        transport: Transport,
    ) -> Result<Agreement, Status> {
        if self.inner.stop_accepting.is_cancelled() {
            return Err(Status::server_shutdown("the server is shutting down"));
        }
        negotiate(version, header, &self.inner.config.codecs, transport)
    }

    /// What every transport's handshake shares once the client's handshake is read: admission
    /// (version, codec, limits), the connection, and the authenticate hook. An `Err` is the
    /// refusal the transport sends in its own framing; whatever authentication attached to
    /// the connection is cleaned up first.
    pub(crate) async fn establish(
        &self,
        version: Version,
        header: Header,
        transport: Transport,
        remote: SocketAddr,
        scheme: Scheme,
    ) -> Result<(Conn, Outbox, Agreement), Status> {
        let agreement = self.admit(version, &header, transport)?;
        let (conn, outbox) = self.new_conn(Some(remote), scheme, header, agreement.codec.clone());
        if let Err(status) = self.authenticate(&conn).await {
            conn.mark_closed(&status);
            return Err(status);
        }
        Ok((conn, outbox, agreement))
    }

    pub(crate) fn new_conn(
        &self,
        remote: Option<SocketAddr>,
        scheme: Scheme,
        peer_header: Header,
        codec: Codec,
    ) -> (Conn, Outbox) {
        self.inner.host.conn(remote, scheme, peer_header, codec)
    }

    /// Runs the authenticate hook within its time limit.
    pub(crate) async fn authenticate(&self, conn: &Conn) -> Result<(), Status> {
        let Some(hook) = &self.inner.config.authenticate else {
            return Ok(());
        };
        let limit = self.inner.config.authenticate_timeout;
        match tokio::time::timeout(limit, hook(conn.clone())).await {
            Ok(verdict) => verdict,
            Err(_) => Err(Status::request_timeout(format!(
                "authentication did not finish within {limit:?}"
            ))),
        }
    }

    /// Runs an admitted connection until it ends.
    pub(crate) async fn run(
        &self,
        conn: Conn,
        outbox: Outbox,
        reader: PacketStream,
        writer: PacketWriter,
    ) {
        let config = &self.inner.config;
        self.inner.conns.insert(conn.clone());
        // Shutdown closes the connections in the set once it has stopped accepting; one whose
        // handshake was still under way then joins after that pass and is closed here, as it
        // would have been. Checked after joining, so that one of the two always sees the other.
        if self.inner.stop_accepting.is_cancelled() {
            conn.close(Code::ServerShutdown, "the server is shutting down");
        }
        crate::telemetry::connection_opened(&conn);
        // Out of the set however the engine ends, a panic included.
        let _member = Membership {
            conns: &self.inner.conns,
            conn: &conn,
        };
        tracing::debug!(conn = conn.id(), remote = ?conn.remote_addr(), codec = ?conn.codec(), "connection open");
        self.inner
            .host
            .engine(conn.clone(), outbox, reader, writer)
            .run()
            .instrument(crate::telemetry::conn_span(&conn))
            .await;
        self.inner.conns.remove(&conn);
        crate::telemetry::connection_closed(&conn);
        if let Some(hook) = &config.on_close {
            let status = conn
                .close_status()
                .unwrap_or_else(|| Status::network_error("closed"));
            let call = std::panic::AssertUnwindSafe(|| hook(&conn, &status));
            if let Err(panic) = std::panic::catch_unwind(call) {
                tracing::error!(
                    conn = conn.id(),
                    panic = crate::router::panic_message(&panic),
                    "on_close hook panicked"
                );
            }
        }
    }

    /// Shuts down gracefully: stops accepting, answers new requests with `ServerShutdown`,
    /// lets in-flight handlers finish for up to `deadline`, then closes every connection with
    /// `ServerShutdown` and waits for them to end. A connection whose handshake was still under
    /// way when shutdown began is closed the same way as soon as it is established.
    pub async fn shutdown(&self, deadline: Duration) {
        tracing::info!(connections = self.inner.conns.len(), "shutting down");
        // Draining first: once `closed()` wakes anyone, new requests are already refused.
        self.inner.host.draining.start();
        self.inner.stop_accepting.cancel();
        self.inner.host.tasks.close();
        if tokio::time::timeout(deadline, self.inner.host.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("handlers still running at the shutdown deadline");
        }
        for conn in self.inner.conns.to_vec() {
            conn.close(Code::ServerShutdown, "the server is shutting down");
        }
        self.inner.connections.close();
        let grace = self.inner.config.engine.close_grace * 2 + Duration::from_millis(100);
        let _ = tokio::time::timeout(grace, self.inner.connections.wait()).await;
        self.inner.listeners.close();
        let _ = tokio::time::timeout(grace, self.inner.listeners.wait()).await;
    }

    /// Waits until [`shutdown`](Server::shutdown) has *started*: it returns as soon as the
    /// server stops accepting, while connections may still be draining. Await `shutdown`
    /// itself to know when everything has finished.
    pub async fn closed(&self) {
        self.inner.stop_accepting.cancelled().await;
    }
}

/// Takes a connection out of the server's set when dropped.
struct Membership<'a> {
    conns: &'a ConnSet,
    conn: &'a Conn,
}

impl Drop for Membership<'_> {
    fn drop(&mut self) {
        self.conns.remove(self.conn);
    }
}
