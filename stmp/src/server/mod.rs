//! The server: listeners for every transport, handshakes, authentication, connection
//! bookkeeping and graceful shutdown.

mod admission;
mod negotiate;
pub(crate) mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::adapter::{Adapter, LocalAdapter, Node};
use crate::codec::{Codec, Codecs};
use crate::conn::io::{InflationLimit, PacketStream, PacketWriter, ReadLimits, byte_stream};
use crate::conn::{ConnParts, DEFAULT_SEND_QUEUE_BYTES, Engine, EngineConfig, Outbox, Side};
use crate::router::BoxFuture;
use crate::stats::{Counters, ServerStats};
use crate::wire::{
    BufferBudget, ClientHandshake, DEFAULT_MAX_PACKET_SIZE, Header, Limits, ServerHandshake,
    Version,
};
use crate::{Code, Conn, ConnSet, Rooms, Router, Service, SlowConsumer, Status, Users};
pub use admission::raise_fd_limit;
use admission::{AcceptBackoff, Admission, Refusal, Slot, Ticket};
pub(crate) use negotiate::{Agreement, Transport, negotiate};
pub(crate) use ws::ws_config;

/// Limit of a client handshake's header + message: far above any real one, far below what
/// an unauthenticated peer may make the server buffer.
const MAX_HANDSHAKE_SIZE: usize = 64 << 10;

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
    router: Router,
    codecs: Codecs,
    engine: EngineConfig,
    handshake_timeout: Duration,
    max_connections: usize,
    max_handshaking: usize,
    authenticate_timeout: Duration,
    raise_fd_limit: bool,
    max_packet_size: usize,
    max_header_size: usize,
    max_header_entries: usize,
    max_buffered_bytes: usize,
    call_timeout: Duration,
    gzip: bool,
    inflation: InflationLimit,
    send_queue_bytes: usize,
    slow_consumer: SlowConsumer,
    max_in_flight_bytes: usize,
    authenticate: Option<Authenticate>,
    on_close: Option<ConnHook>,
    node: Arc<Node>,
    adapter: Option<Box<dyn Adapter>>,
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
    /// (once per process, see [`raise_fd_limit`](crate::raise_fd_limit)). Default true.
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

    /// Whether clients may ask for gzip on byte streams. Default false: inflating is work a
    /// peer can multiply (a few kilobytes of gzip become megabytes of packets to decode), so a
    /// server offers it only when told to. When on, each stream's inflation is bounded
    /// ([`gzip_inflation_limit`](Self::gzip_inflation_limit)).
    pub fn gzip(mut self, allowed: bool) -> Self {
        self.gzip = allowed;
        self
    }

    /// How far a client's gzip stream may inflate: over any stretch of it, at most `burst`
    /// bytes plus `max_ratio` times the compressed bytes of that stretch. A client over it is
    /// closed with `RequestEntityTooLarge`. Default 64× with a 1 MiB burst.
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
        Server {
            inner: Arc::new(Inner {
                read_limits,
                admission: Admission::new(self.max_connections, self.max_handshaking),
                counters: Counters::new(self.max_in_flight_bytes),
                conns: self.node.everyone().clone(),
                config: self,
                stop_accepting: CancellationToken::new(),
                draining: CancellationToken::new(),
                handlers: TaskTracker::new(),
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
/// # async fn run() -> std::io::Result<()> {
/// let server = stmp::Server::builder().build();
/// let tcp = server.listen_tcp("127.0.0.1:5001").await?;
/// let ws = server.listen_ws("127.0.0.1:5002", "/stmp").await?;
/// println!("serving on tcp://{tcp} and ws://{ws}/stmp");
/// server.closed().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

struct Inner {
    config: ServerBuilder,
    read_limits: ReadLimits,
    admission: Arc<Admission>,
    conns: ConnSet,
    counters: Arc<Counters>,
    stop_accepting: CancellationToken,
    draining: CancellationToken,
    handlers: TaskTracker,
    connections: TaskTracker,
    /// Accept loops: once they end, their addresses are free again.
    listeners: TaskTracker,
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
    /// [`broadcast`](crate::broadcast) to.
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
        self.inner.counters.snapshot(self.inner.conns.len())
    }

    /// Listens for plain TCP; returns the bound address (use port 0 to let the OS pick).
    pub async fn listen_tcp(&self, addr: impl ToSocketAddrs) -> std::io::Result<SocketAddr> {
        self.listen(addr, |server, stream, remote, admitted| async move {
            match admitted {
                Ok(slot) => {
                    let (reader, writer) = stream.into_split();
                    server
                        .serve_stream(reader, writer, remote, "tcp", slot)
                        .await;
                }
                Err(refusal) => {
                    let open = std::future::ready(Ok(stream));
                    server.turn_away(open, refusal, Farewell::Handshake).await;
                }
            }
        })
        .await
    }

    /// Listens for TLS over TCP.
    pub async fn listen_tls(
        &self,
        addr: impl ToSocketAddrs,
        tls: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<SocketAddr> {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        self.listen(addr, move |server, stream, remote, admitted| {
            let acceptor = acceptor.clone();
            async move {
                let slot = match admitted {
                    Ok(slot) => slot,
                    Err(refusal) => {
                        let open = acceptor.accept(stream);
                        return server.turn_away(open, refusal, Farewell::Handshake).await;
                    }
                };
                let timeout = server.inner.config.handshake_timeout;
                match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let (reader, writer) = tokio::io::split(tls);
                        server
                            .serve_stream(reader, writer, remote, "tls", slot)
                            .await;
                    }
                    Ok(Err(error)) => tracing::debug!(%remote, %error, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                }
            }
        })
        .await
    }

    /// Listens for WebSocket upgrades on `path` (other paths get 404).
    pub async fn listen_ws(
        &self,
        addr: impl ToSocketAddrs,
        path: &str,
    ) -> std::io::Result<SocketAddr> {
        let path: Arc<str> = Arc::from(path);
        self.listen(addr, move |server, stream, remote, admitted| {
            let path = path.clone();
            async move {
                match admitted {
                    Ok(slot) => {
                        server
                            .serve_websocket(stream, remote, &path, "ws", slot)
                            .await
                    }
                    Err(refusal) => {
                        let open = std::future::ready(Ok(stream));
                        server.turn_away(open, refusal, Farewell::Http).await;
                    }
                }
            }
        })
        .await
    }

    /// Listens for WebSocket over TLS on `path`.
    pub async fn listen_wss(
        &self,
        addr: impl ToSocketAddrs,
        path: &str,
        tls: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<SocketAddr> {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let path: Arc<str> = Arc::from(path);
        self.listen(addr, move |server, stream, remote, admitted| {
            let acceptor = acceptor.clone();
            let path = path.clone();
            async move {
                let slot = match admitted {
                    Ok(slot) => slot,
                    Err(refusal) => {
                        let open = acceptor.accept(stream);
                        return server.turn_away(open, refusal, Farewell::Http).await;
                    }
                };
                let timeout = server.inner.config.handshake_timeout;
                match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        server
                            .serve_websocket(tls, remote, &path, "wss", slot)
                            .await
                    }
                    Ok(Err(error)) => tracing::debug!(%remote, %error, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                }
            }
        })
        .await
    }

    /// Listens for QUIC (ALPN `stmp/1`) on a UDP address: one endpoint, one UDP port, serves
    /// every client; each connection carries stmp on one bidirectional stream. The TLS
    /// config must allow TLS 1.3 (the configs of [`tls::server_config`](crate::tls::server_config) do).
    pub async fn listen_quic(
        &self,
        addr: impl ToSocketAddrs,
        tls: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<SocketAddr> {
        let config = crate::quic::server_config(&tls, self.inner.config.engine.read_timeout)
            .map_err(|status| std::io::Error::new(std::io::ErrorKind::InvalidInput, status))?;
        let addr = tokio::net::lookup_host(addr)
            .await?
            .next()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address"))?;
        let endpoint = quinn::Endpoint::server(config, addr)?;
        let local = endpoint.local_addr()?;
        let server = self.clone();
        self.inner.listeners.spawn(async move {
            loop {
                let incoming = tokio::select! {
                    _ = server.inner.stop_accepting.cancelled() => break,
                    incoming = endpoint.accept() => incoming,
                };
                let Some(incoming) = incoming else { break };
                match server.inner.admission.ticket() {
                    Ticket::Serve(slot) => {
                        server
                            .inner
                            .connections
                            .spawn(server.clone().serve_quic(incoming, slot));
                    }
                    // QUIC refuses with one stateless packet: no task, no TLS handshake.
                    Ticket::Refuse(refusal) => {
                        let remote = incoming.remote_address();
                        tracing::debug!(%remote, status = %refusal.status, "refusing a QUIC connection");
                        incoming.refuse();
                    }
                    Ticket::Drop => incoming.ignore(),
                }
            }
            tracing::debug!(%local, "QUIC listener stopped");
            // Connections still open keep the endpoint's socket until they end.
            endpoint.wait_idle().await;
        });
        tracing::info!(%local, "listening (QUIC)");
        Ok(local)
    }

    async fn serve_quic(self, incoming: quinn::Incoming, slot: Slot) {
        let remote = incoming.remote_address();
        let timeout = self.inner.config.handshake_timeout;
        let opened = tokio::time::timeout(timeout, async {
            let connection = incoming.accept()?.await?;
            let (send, recv) = connection.accept_bi().await?;
            Ok::<_, quinn::ConnectionError>((connection, send, recv))
        })
        .await;
        let (connection, send, recv) = match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(error)) => return tracing::debug!(%remote, %error, "QUIC handshake failed"),
            Err(_) => return tracing::debug!(%remote, "QUIC handshake timed out"),
        };
        self.serve_stream(recv, send, remote, "quic", slot).await;
        // Let the peer read the last packets (its Close) before the connection goes.
        let grace = self.inner.config.engine.close_grace;
        let _ = tokio::time::timeout(grace, connection.closed()).await;
        connection.close(0u32.into(), b"");
    }

    /// Binds `addr` and accepts until shutdown, handing each socket to `serve` with its
    /// admission: a slot that counts it, or the refusal it is owed.
    async fn listen<F, Fut>(
        &self,
        addr: impl ToSocketAddrs,
        serve: F,
    ) -> std::io::Result<SocketAddr>
    where
        F: Fn(Server, TcpStream, SocketAddr, Result<Slot, Refusal>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let server = self.clone();
        self.inner.listeners.spawn(async move {
            let mut backoff = AcceptBackoff::default();
            loop {
                let accepted = tokio::select! {
                    _ = server.inner.stop_accepting.cancelled() => break,
                    accepted = listener.accept() => accepted,
                };
                match accepted {
                    Ok((stream, remote)) => {
                        backoff.accepted();
                        let admitted = match server.inner.admission.ticket() {
                            Ticket::Serve(slot) => Ok(slot),
                            Ticket::Refuse(refusal) => Err(refusal),
                            Ticket::Drop => {
                                tracing::debug!(%remote, "over the limit, too many refusals in flight: closed");
                                continue;
                            }
                        };
                        let _ = stream.set_nodelay(true);
                        server
                            .inner
                            .connections
                            .spawn(serve(server.clone(), stream, remote, admitted));
                    }
                    Err(error) => {
                        let failure = backoff.failed(&error, Instant::now());
                        match failure.warn {
                            Some(unwarned) => {
                                tracing::warn!(%local, %error, unwarned, pause = ?failure.pause, "accept failed")
                            }
                            None => tracing::debug!(%local, %error, "accept failed"),
                        }
                        let Some(pause) = failure.pause else { continue };
                        tokio::select! {
                            _ = server.inner.stop_accepting.cancelled() => break,
                            _ = tokio::time::sleep(pause) => {}
                        }
                    }
                }
            }
            tracing::debug!(%local, "listener stopped");
        });
        tracing::info!(%local, "listening");
        Ok(local)
    }

    /// Runs the handshake on a byte stream, then the connection.
    pub(crate) async fn serve_stream<R, W>(
        &self,
        mut reader: R,
        mut writer: W,
        remote: SocketAddr,
        transport_name: &'static str,
        mut slot: Slot,
    ) where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        let config = &self.inner.config;
        let mut buffer = BytesMut::with_capacity(512);
        let hello = tokio::time::timeout(
            config.handshake_timeout,
            read_client_handshake(
                &mut reader,
                &mut buffer,
                config
                    .wire_limits()
                    .with_max_packet_size(MAX_HANDSHAKE_SIZE),
            ),
        )
        .await;
        let hello = match hello {
            Ok(Ok(hello)) => hello,
            Ok(Err(status)) => {
                tracing::debug!(%remote, %status, "bad client handshake");
                if status.code() != Code::NetworkError {
                    refuse(&mut writer, &status).await;
                }
                return;
            }
            Err(_) => {
                tracing::debug!(%remote, "client handshake timed out");
                return;
            }
        };
        let transport = Transport::Stream {
            gzip_allowed: config.gzip,
        };
        let agreement = match self.admit(hello.version, &hello.header, transport) {
            Ok(agreement) => agreement,
            Err(status) => return refuse(&mut writer, &status).await,
        };
        let (conn, outbox) = self.new_conn(
            Some(remote),
            transport_name,
            hello.header,
            agreement.codec.clone(),
        );
        if let Err(status) = self.authenticate(&conn).await {
            conn.mark_closed(&status);
            return refuse(&mut writer, &status).await;
        }
        let mut out = BytesMut::new();
        ServerHandshake::ok(agreement.header).encode(&mut out);
        if writer.write_all(&out).await.is_err() || writer.flush().await.is_err() {
            conn.mark_closed(&Status::network_error(
                "connection lost during the handshake",
            ));
            return;
        }
        slot.handshaken();
        let (packets, packet_writer) = byte_stream(
            reader,
            writer,
            buffer,
            &self.inner.read_limits,
            agreement.gzip,
        );
        self.run(conn, outbox, packets, packet_writer).await;
        // The slot is held until the connection's socket is gone.
        drop(slot);
    }

    /// Turns away a socket over the limits: opens it (a TLS handshake, or nothing), sends the
    /// refusal and waits for the client to close, all within a short time; the refusal's
    /// place among the bounded refusals in flight is held until then.
    async fn turn_away<S, F>(&self, open: F, refusal: Refusal, farewell: Farewell)
    where
        F: Future<Output = std::io::Result<S>>,
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let status = &refusal.status;
        tracing::debug!(%status, "refusing a connection over the limits");
        let mut message = BytesMut::new();
        match farewell {
            Farewell::Handshake => ServerHandshake::refuse(status).encode(&mut message),
            Farewell::Http => message.extend_from_slice(http_refusal(status).as_bytes()),
        }
        let limit = self.inner.config.handshake_timeout.min(REFUSAL_TIME);
        let _ = tokio::time::timeout(limit, async {
            let mut stream = open.await?;
            stream.write_all(&message).await?;
            stream.shutdown().await?;
            // Closing with the client's bytes unread would reset the connection, and the
            // client could lose the refusal with it: read until the client closes.
            let mut sink = [0u8; 512];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        })
        .await;
        drop(refusal);
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

    pub(crate) fn new_conn(
        &self,
        remote: Option<SocketAddr>,
        transport: &'static str,
        peer_header: Header,
        codec: Codec,
    ) -> (Conn, Outbox) {
        let config = &self.inner.config;
        Conn::new(ConnParts {
            side: Side::Server,
            remote_addr: remote,
            transport,
            peer_header,
            codec,
            default_timeout: config.call_timeout,
            send_queue_bytes: config.send_queue_bytes,
            slow_consumer: config.slow_consumer,
            counters: self.inner.counters.clone(),
        })
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
        crate::telemetry::connection_opened(&conn);
        // Out of the set however the engine ends, a panic included.
        let _member = Membership {
            conns: &self.inner.conns,
            conn: &conn,
        };
        tracing::debug!(conn = conn.id(), remote = ?conn.remote_addr(), codec = ?conn.codec(), "connection open");
        Engine {
            conn: conn.clone(),
            outbox,
            reader,
            writer,
            router: config.router.clone(),
            config: config.engine.clone(),
            tasks: self.inner.handlers.clone(),
            draining: self.inner.draining.clone(),
        }
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
    /// `ServerShutdown` and waits for them to end.
    pub async fn shutdown(&self, deadline: Duration) {
        tracing::info!(connections = self.inner.conns.len(), "shutting down");
        // Draining first: once `closed()` wakes anyone, new requests are already refused.
        self.inner.draining.cancel();
        self.inner.stop_accepting.cancel();
        self.inner.handlers.close();
        if tokio::time::timeout(deadline, self.inner.handlers.wait())
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

/// Time to spend on telling an over-limit client no, at most.
const REFUSAL_TIME: Duration = Duration::from_secs(3);

/// The form of a refusal at accept: an stmp handshake, or an HTTP answer to a WebSocket
/// upgrade (cheaper than the upgrade, and what proxies and browsers understand).
enum Farewell {
    Handshake,
    Http,
}

/// `503 Service Unavailable` with the status's message as its body.
fn http_refusal(status: &Status) -> String {
    let body = status.message();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
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

/// Reads the client's handshake, keeping any bytes after it in `buffer`.
async fn read_client_handshake<R: AsyncRead + Unpin>(
    reader: &mut R,
    buffer: &mut BytesMut,
    limits: Limits,
) -> Result<ClientHandshake, Status> {
    loop {
        if let Some(hello) = ClientHandshake::decode(buffer, limits)? {
            return Ok(hello);
        }
        if reader.read_buf(buffer).await? == 0 {
            return Err(Status::network_error(
                "connection closed during the handshake",
            ));
        }
    }
}

/// Sends a refusal handshake and ends the connection.
async fn refuse<W: AsyncWrite + Unpin>(writer: &mut W, status: &Status) {
    tracing::debug!(%status, "refusing a connection");
    crate::telemetry::handshake_refused(status);
    let mut out = BytesMut::new();
    ServerHandshake::refuse(status).encode(&mut out);
    let _ = writer.write_all(&out).await;
    let _ = writer.shutdown().await;
}
