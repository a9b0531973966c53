//! The client: connects by URL, negotiates, and reconnects with backoff.

mod backoff;
pub(crate) mod dial;
pub(crate) mod endpoint;
mod handle_conn;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::codec::{Codec, Message};
use crate::conn::io::InflationLimit;
use crate::conn::{CallOptions, Caller, EngineConfig, PacketFormat};
use crate::history::{Positions, Recovery, StreamPosition};
use crate::router::BoxFuture;
use crate::wire::{DEFAULT_MAX_PACKET_SIZE, Header};
use crate::{Code, Conn, Method, Router, Service, Status};
use backoff::{Backoff, ReconnectPolicy};
use dial::Dialed;
use endpoint::Endpoint;
use handle_conn::HandleConn;

/// A change of a client's connection, for [`ClientBuilder::on_connection`].
#[derive(Clone, Debug)]
pub enum ConnectionEvent {
    /// A connection is up (`attempt` 0 is the first connect, then the reconnect attempt).
    Connected {
        /// The new connection.
        conn: Conn,
        /// How many attempts it took since the last disconnect.
        attempt: u32,
    },
    /// The connection is gone.
    Disconnected {
        /// Why.
        status: Status,
        /// Whether the client will try again.
        will_retry: bool,
        /// The number of the next attempt.
        attempt: u32,
        /// How long the client waits before it.
        delay: Option<Duration>,
    },
}

type EventHook = Arc<dyn Fn(&ConnectionEvent) + Send + Sync>;
type RecoveryHook = Arc<dyn Fn(&Recovery) + Send + Sync>;
type ConnectHook = Arc<dyn Fn(Conn) -> BoxFuture<'static, Result<(), Status>> + Send + Sync>;

/// Configures a [`Client`].
///
/// ```no_run
/// # async fn run() -> Result<(), stmp::Status> {
/// use std::time::Duration;
/// use stmp::{Client, Codec};
///
/// let client = Client::builder()
///     .codec(Codec::JSON)
///     .header("token", "secret")
///     .call_timeout(Duration::from_secs(5))
///     .connect("ws://127.0.0.1:5002/stmp")
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClientBuilder {
    pub(crate) router: Router,
    pub(crate) codecs: Vec<Codec>,
    pub(crate) gzip: bool,
    pub(crate) format: PacketFormat,
    pub(crate) header: Header,
    pub(crate) connect_timeout: Duration,
    pub(crate) call_timeout: Duration,
    pub(crate) engine: EngineConfig,
    pub(crate) max_packet_size: usize,
    pub(crate) send_queue_bytes: usize,
    pub(crate) inflation: InflationLimit,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    pub(crate) server_name: Option<String>,
    reconnect: Option<ReconnectPolicy>,
    fail_fast: bool,
    on_connection: Option<EventHook>,
    on_connect: Option<ConnectHook>,
    history: bool,
    on_recovery: Option<RecoveryHook>,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            router: Router::new(),
            codecs: Vec::new(),
            gzip: false,
            format: PacketFormat::Binary,
            header: Header::new(),
            connect_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(30),
            engine: EngineConfig::default(),
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            send_queue_bytes: crate::conn::DEFAULT_SEND_QUEUE_BYTES,
            inflation: InflationLimit::default(),
            #[cfg(feature = "tls")]
            tls: None,
            server_name: None,
            reconnect: Some(ReconnectPolicy {
                base: Duration::from_millis(100),
                cap: Duration::from_secs(10),
                reset_after: Duration::from_secs(10),
            }),
            fail_fast: false,
            on_connection: None,
            on_connect: None,
            history: true,
            on_recovery: None,
        }
    }
}

impl ClientBuilder {
    /// Uses this router for methods the client serves and events it listens to.
    pub fn router(mut self, router: Router) -> Self {
        self.router = router;
        self
    }

    /// Serves a service to the server (server → client calls).
    pub fn add_service(self, service: impl Service) -> Self {
        self.router.add_service(service);
        self
    }

    /// Asks for this content codec; call several times for a preference list. Default:
    /// protobuf (JSON with the text packet format).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codecs.push(codec);
        self
    }

    /// Asks for compression. Default off. On TCP, TLS and QUIC it is a gzip stream, which the
    /// server grants when its [`gzip`](crate::ServerBuilder::gzip) is on; on WebSocket it is
    /// permessage-deflate, granted by its
    /// [`websocket_compression`](crate::ServerBuilder::websocket_compression). A server that
    /// does not grant it is talked to plainly.
    ///
    /// ```
    /// let client = stmp::Client::builder().gzip(true);
    /// ```
    pub fn gzip(mut self, on: bool) -> Self {
        self.gzip = on;
        self
    }

    /// The WebSocket packet format. Default binary.
    pub fn packet_format(mut self, format: PacketFormat) -> Self {
        self.format = format;
        self
    }

    /// Adds an entry to the handshake header (auth tokens…). Over WebSocket it travels as an
    /// HTTP header of the upgrade request, not in the URL (so the server sees the key in lower
    /// case), and must be a valid HTTP header.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.header.append(key, value);
        self
    }

    /// Time for TCP, TLS, WebSocket and stmp handshakes together. Default 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Default deadline of calls. Default 30 s.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Silence after which the connection is dead (a Ping goes out after half). Default 60 s.
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.engine.read_timeout = timeout;
        self
    }

    /// Limit of method + header + payload of one packet from the server (and of the server's
    /// handshake): a larger one closes the connection with `RequestEntityTooLarge`.
    /// Default 16 MiB.
    pub fn max_packet_size(mut self, max: usize) -> Self {
        self.max_packet_size = max;
        self
    }

    /// Server → client requests handled at once; more get `TooManyRequests`. Default 1024.
    pub fn max_concurrent_requests(mut self, max: usize) -> Self {
        self.engine.max_concurrent_requests = max.max(1);
        self
    }

    /// Byte budget of the send queue (payloads, headers and a per-packet overhead): calls and
    /// answers wait for room, events that find none are dropped. Default 4 MiB.
    pub fn send_queue_bytes(mut self, bytes: usize) -> Self {
        self.send_queue_bytes = bytes.max(1);
        self
    }

    /// How far what the server compressed may inflate (its gzip stream, or its deflated
    /// WebSocket messages): over any stretch of it, at most `burst` bytes plus `max_ratio`
    /// times its compressed bytes; beyond it the connection is closed
    /// with `RequestEntityTooLarge`. Default 64× with a 1 MiB burst, as on the server.
    pub fn gzip_inflation_limit(mut self, max_ratio: u32, burst: usize) -> Self {
        self.inflation = InflationLimit { max_ratio, burst };
        self
    }

    /// Events (notifies) queued for listeners before reading pauses. Default 1024.
    pub fn event_queue(mut self, events: usize) -> Self {
        self.engine.event_queue = events.max(1);
        self
    }

    /// TLS settings for `tls://` and `wss://` (see [`tls::client_config`](crate::tls::client_config)).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// The name the server's certificate must have, when it is not the URL's host.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Reconnect backoff: each delay is drawn at random between zero and
    /// `min(max, initial · 2^failures)` ("full jitter"), so the clients of a restarted server
    /// do not all come back at once. Default 100 ms and 10 s.
    pub fn reconnect(mut self, initial: Duration, max: Duration) -> Self {
        let reset_after = self
            .reconnect
            .as_ref()
            .map_or(Duration::from_secs(10), |policy| policy.reset_after);
        self.reconnect = Some(ReconnectPolicy {
            base: initial,
            cap: max,
            reset_after,
        });
        self
    }

    /// How long a connection must stay up before the backoff starts over from its first delay;
    /// a connection that drops sooner counts as one more failed attempt. Default 10 s.
    pub fn reconnect_reset_after(mut self, uptime: Duration) -> Self {
        if let Some(policy) = &mut self.reconnect {
            policy.reset_after = uptime;
        }
        self
    }

    /// Never reconnect.
    pub fn no_reconnect(mut self) -> Self {
        self.reconnect = None;
        self
    }

    /// Fail calls at once while disconnected, instead of waiting up to their deadline.
    pub fn fail_fast(mut self, on: bool) -> Self {
        self.fail_fast = on;
        self
    }

    /// Runs on every connect and disconnect.
    pub fn on_connection(
        mut self,
        hook: impl Fn(&ConnectionEvent) + Send + Sync + 'static,
    ) -> Self {
        self.on_connection = Some(Arc::new(hook));
        self
    }

    /// Runs after each successful connect and reconnect, before calls waiting for the
    /// connection proceed: sign in again, re-join rooms. Call the server through the `Conn` it
    /// gets (the client itself is not connected until the hook has finished). An `Err` closes
    /// that connection with its status: the first connect fails with it, a reconnect counts as
    /// a failed attempt (retried unless the status says retrying is pointless, such as
    /// `Unauthorized`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use stmp::{Client, Context, Method, Server, Status};
    ///
    /// #[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
    /// struct Token {
    ///     #[prost(string, tag = "1")]
    ///     token: String,
    /// }
    /// const SIGN_IN: Method = Method::new("chat.Auth.SignIn", "chat.Token", "chat.Token");
    ///
    /// let server = Server::builder().build();
    /// server.router().route(&SIGN_IN, |_ctx: Context, token: Token| async move {
    ///     Ok::<_, Status>(token)
    /// });
    /// let addr = server.listen_tcp("127.0.0.1:0").await?;
    ///
    /// let client = Client::builder()
    ///     .on_connect(|conn| async move {
    ///         let token = Token { token: "secret".into() };
    ///         let _signed_in: Token = conn.call(&SIGN_IN, &token).await?;
    ///         Ok(())
    ///     })
    ///     .connect(&format!("tcp://{addr}"))
    ///     .await?;
    /// client.close().await;
    /// # Ok(()) }
    /// ```
    pub fn on_connect<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Conn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Status>> + Send + 'static,
    {
        self.on_connect = Some(Arc::new(move |conn| Box::pin(hook(conn))));
        self
    }

    /// Whether to track the position of each stream (room with history) heard and resume
    /// them on reconnect (see [`history`](crate::history)). Default on; off, the client
    /// sends no history entries and the server replays nothing.
    pub fn history(mut self, on: bool) -> Self {
        self.history = on;
        self
    }

    /// Runs when the server answers a resume after a reconnect: `recovered` tells whether
    /// every missed event of the stream was replayed (they reach the listeners before this
    /// runs). On `false` the application should reload what it shows of that stream.
    pub fn on_recovery(mut self, hook: impl Fn(&Recovery) + Send + Sync + 'static) -> Self {
        self.on_recovery = Some(Arc::new(hook));
        self
    }

    pub(crate) fn codecs(&self) -> Vec<Codec> {
        match (self.codecs.is_empty(), self.format) {
            (false, _) => self.codecs.clone(),
            (true, PacketFormat::Binary) => vec![Codec::PROTOBUF],
            (true, PacketFormat::Text) => vec![Codec::TEXT_DEFAULT],
        }
    }

    /// Connects to `url` (`tcp://host:port`, `tls://host:port`, `ws://host:port/path`,
    /// `wss://host:port/path`, `quic://host:port`). The first connection must succeed; after that the client
    /// reconnects by itself.
    pub fn connect(
        self,
        url: &str,
    ) -> impl Future<Output = Result<Client, Status>> + Send + 'static {
        // Parsed before the future, so the future does not borrow `url`.
        let endpoint = Endpoint::parse(url);
        async move {
            let endpoint = endpoint?;
            let positions = self
                .history
                .then(|| Positions::new(self.on_recovery.clone()));
            let mut first_config = self.clone();
            if let Some(positions) = &positions {
                positions.add_to_handshake(&mut first_config.header);
            }
            let first = establish(&endpoint, &first_config, positions.as_ref()).await?;
            let (state, _) = watch::channel(State::Connecting);
            let inner = Arc::new(Inner {
                router: self.router.clone(),
                header: std::sync::Mutex::new(self.header.clone()),
                state,
                stop: CancellationToken::new(),
                call_timeout: self.call_timeout,
                fail_fast: self.fail_fast,
                positions,
            });
            inner
                .state
                .send_replace(State::Connected(first.conn.clone()));
            tokio::spawn(supervise(inner.clone(), self, endpoint, first));
            Ok(Client::with(inner))
        }
    }
}

#[derive(Clone, Debug)]
enum State {
    Connecting,
    Connected(Conn),
    Closed(Status),
}

struct Inner {
    router: Router,
    /// The application entries of the handshake header, for the next (re)connect.
    header: std::sync::Mutex<Header>,
    state: watch::Sender<State>,
    stop: CancellationToken,
    call_timeout: Duration,
    fail_fast: bool,
    /// Stream positions heard, when the client tracks them.
    positions: Option<Positions>,
}

/// A connection to a server that comes back by itself: calls, notifies, served methods and
/// event listeners all survive reconnects. Cheap to clone; tasks that call at a high rate do
/// best with a clone each, as a clone keeps its own reference to the live connection.
///
/// A process that does little but call over one connection (a load generator, a gateway)
/// spends about a third less CPU per call on a runtime with one worker thread: on several, the
/// callers woken by one read of answers are spread over the workers, and each call's state
/// moves between cores (measured in `stmp-bench/README.md`, *The load generator's two
/// workers*).
///
/// ```no_run
/// # async fn run() -> Result<(), stmp::Status> {
/// let client = stmp::Client::connect("tcp://127.0.0.1:5001").await?;
/// println!("connected: {:?}", client.conn());
/// client.close().await;
/// # Ok(()) }
/// ```
pub struct Client {
    inner: Arc<Inner>,
    conn: HandleConn,
}

impl Clone for Client {
    fn clone(&self) -> Self {
        Client::with(self.inner.clone())
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("state", &*self.inner.state.borrow())
            .finish_non_exhaustive()
    }
}

/// Whether a lost connection is worth another try: not when the server refused us.
fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::NetworkError
            | Code::ServerShutdown
            | Code::RequestTimeout
            | Code::TooManyRequests
            | Code::Unknown
            | Code::InternalServerError
            | Code::Ok
    )
}

/// A connection whose engine runs and whose `on_connect` hook has succeeded.
struct Live {
    conn: Conn,
    engine: tokio::task::JoinHandle<()>,
    /// What must live as long as the connection (a QUIC connection).
    transport: Option<Box<dyn std::any::Any + Send>>,
}

impl Live {
    /// Waits until the engine has let go of the connection.
    async fn end(self) {
        let _ = self.engine.await;
        drop(self.transport);
    }
}

/// Closes a connection whose setup was abandoned (the client was closed while the hook ran),
/// so its engine does not outlive it.
struct CloseUnlessKept(Option<Conn>);

impl Drop for CloseUnlessKept {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            conn.close(Code::Ok, "client closed during connection setup");
        }
    }
}

/// Dials, starts the engine and runs the `on_connect` hook.
async fn establish(
    endpoint: &Endpoint,
    config: &ClientBuilder,
    positions: Option<&Positions>,
) -> Result<Live, Status> {
    let Dialed {
        conn,
        engine,
        transport,
        mut driver,
    } = dial::dial(endpoint, config).await?;
    // Before the engine reads: the first events may carry positions.
    if let Some(positions) = positions {
        conn.insert_extension(positions.clone());
    }
    let live = Live {
        conn: conn.clone(),
        // A driver the engine outlives goes on in a task of its own while the connection
        // drains.
        engine: tokio::spawn(async move {
            crate::transport::beside(&mut driver, engine.run()).await;
        }),
        transport,
    };
    let Some(hook) = &config.on_connect else {
        return Ok(live);
    };
    let mut guard = CloseUnlessKept(Some(conn.clone()));
    let outcome = tokio::select! {
        outcome = hook(conn.clone()) => outcome,
        status = conn.closed() => Err(status),
    };
    guard.0 = None;
    match outcome {
        Ok(()) => Ok(live),
        Err(status) => {
            tracing::warn!(%endpoint, %status, "the on_connect hook failed; closing the connection");
            conn.close(status.code(), status.message());
            live.end().await;
            Err(status)
        }
    }
}

async fn supervise(inner: Arc<Inner>, mut config: ClientBuilder, endpoint: Endpoint, first: Live) {
    let emit = |event: ConnectionEvent| {
        if let Some(hook) = &config.on_connection {
            hook(&event);
        }
    };
    let closed = |inner: &Inner| {
        inner
            .state
            .send_replace(State::Closed(Status::network_error("client closed")));
    };
    let mut backoff = config.reconnect.clone().map(Backoff::new);
    let mut live = first;
    let mut attempt = 0u32;
    loop {
        let conn = live.conn.clone();
        tracing::info!(%endpoint, conn = conn.id(), "connected");
        inner.state.send_replace(State::Connected(conn.clone()));
        emit(ConnectionEvent::Connected {
            conn: conn.clone(),
            attempt,
        });
        let up_since = Instant::now();
        let mut status = tokio::select! {
            status = conn.closed() => status,
            _ = inner.stop.cancelled() => {
                conn.close(Code::Ok, "client closed");
                live.end().await;
                closed(&inner);
                return;
            }
        };
        live.end().await;
        if let Some(backoff) = &mut backoff {
            backoff.connection_lasted(up_since.elapsed());
        }
        attempt = 0;
        live = loop {
            attempt += 1;
            let Some(backoff) = backoff.as_mut().filter(|_| retryable(&status)) else {
                tracing::info!(%endpoint, %status, "disconnected for good");
                emit(ConnectionEvent::Disconnected {
                    status: status.clone(),
                    will_retry: false,
                    attempt,
                    delay: None,
                });
                inner.state.send_replace(State::Closed(status));
                return;
            };
            let delay = backoff.next_delay();
            tracing::info!(%endpoint, %status, attempt, ?delay, "disconnected; reconnecting");
            emit(ConnectionEvent::Disconnected {
                status: status.clone(),
                will_retry: true,
                attempt,
                delay: Some(delay),
            });
            inner.state.send_replace(State::Connecting);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = inner.stop.cancelled() => return closed(&inner),
            }
            config.header = crate::sync::lock(&inner.header).clone();
            if let Some(positions) = &inner.positions {
                positions.add_to_handshake(&mut config.header);
            }
            let outcome = tokio::select! {
                outcome = establish(&endpoint, &config, inner.positions.as_ref()) => outcome,
                _ = inner.stop.cancelled() => return closed(&inner),
            };
            match outcome {
                Ok(live) => break live,
                Err(error) => status = error,
            }
        };
    }
}

impl Client {
    fn with(inner: Arc<Inner>) -> Client {
        Client {
            inner,
            conn: HandleConn::default(),
        }
    }

    /// A client with default options.
    pub fn connect(url: &str) -> impl Future<Output = Result<Client, Status>> + Send + 'static {
        Client::builder().connect(url)
    }

    /// A builder.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// The router of methods the client serves and events it listens to.
    pub fn router(&self) -> &Router {
        &self.inner.router
    }

    /// Sets a handshake header entry (replacing its values) for the next reconnects — a fresh
    /// auth token, say. The live connection keeps the handshake it made.
    pub fn set_handshake_header(&self, key: impl Into<String>, value: impl Into<String>) {
        crate::sync::lock(&self.inner.header).insert(key, value);
    }

    /// The last position heard on `stream` (a room with history), if the client tracks
    /// positions and has heard one.
    pub fn position(&self, stream: &str) -> Option<StreamPosition> {
        self.inner.positions.as_ref()?.get(stream)
    }

    /// Stops resuming `stream` on reconnect (after leaving the room, say); returns whether
    /// a position was tracked.
    pub fn forget_position(&self, stream: &str) -> bool {
        self.inner
            .positions
            .as_ref()
            .is_some_and(|positions| positions.forget(stream))
    }

    /// The current connection, if connected.
    pub fn conn(&self) -> Option<Conn> {
        match &*self.inner.state.borrow() {
            State::Connected(conn) if !conn.is_closed() => Some(conn.clone()),
            _ => None,
        }
    }

    /// Waits for a live connection; fails when the client has given up (or is closed), or at
    /// once while disconnected with [`fail_fast`](ClientBuilder::fail_fast).
    pub async fn connected(&self) -> Result<Conn, Status> {
        let mut state = self.inner.state.subscribe();
        loop {
            match &*state.borrow_and_update() {
                State::Connected(conn) if !conn.is_closed() => return Ok(conn.clone()),
                State::Closed(status) => return Err(status.clone()),
                _ if self.inner.fail_fast => {
                    return Err(Status::network_error("not connected"));
                }
                _ => {}
            }
            if state.changed().await.is_err() {
                return Err(Status::network_error("client closed"));
            }
        }
    }

    /// Calls `method` with default options.
    pub async fn call<I: Message, O: Message>(
        &self,
        method: &'static Method,
        input: &I,
    ) -> Result<O, Status> {
        Caller::call(self, method, input, CallOptions::default()).await
    }

    /// Sends a notify.
    pub async fn notify<I: Message>(
        &self,
        method: &'static Method,
        input: &I,
    ) -> Result<(), Status> {
        let deadline = self.inner.call_timeout;
        let conn = tokio::time::timeout(deadline, self.connected())
            .await
            .map_err(|_| Status::request_timeout(format!("not connected within {deadline:?}")))??;
        conn.notify(method, input).await
    }

    /// Closes the connection (Close with `Ok`) and stops reconnecting.
    pub async fn close(&self) {
        self.inner.stop.cancel();
        let mut state = self.inner.state.subscribe();
        let _ = state.wait_for(|s| matches!(s, State::Closed(_))).await;
    }

    /// Waits until the client has given up or was closed; returns why.
    pub async fn closed(&self) -> Status {
        let mut state = self.inner.state.subscribe();
        match state.wait_for(|s| matches!(s, State::Closed(_))).await {
            Ok(state) => match &*state {
                State::Closed(status) => status.clone(),
                _ => Status::network_error("client closed"),
            },
            Err(_) => Status::network_error("client closed"),
        }
    }
}

impl Caller for Client {
    async fn call<I: Message, O: Message>(
        &self,
        method: &'static Method,
        input: &I,
        mut options: CallOptions,
    ) -> Result<O, Status> {
        let deadline = options.timeout.unwrap_or(self.inner.call_timeout);
        options.timeout = Some(deadline);
        // Connected: the connection's own deadline is the only timer the call needs.
        if let Some(conn) = self.conn.get(|| self.conn()) {
            return Caller::call(&*conn, method, input, options).await;
        }
        let call = async {
            let conn = self.connected().await?;
            Caller::call(&conn, method, input, options).await
        };
        tokio::time::timeout(deadline, call)
            .await
            .map_err(|_| Status::request_timeout(format!("not answered within {deadline:?}")))?
    }

    async fn notify<I: Message>(
        &self,
        method: &'static Method,
        input: &I,
        mut options: CallOptions,
    ) -> Result<(), Status> {
        let deadline = options.timeout.unwrap_or(self.inner.call_timeout);
        options.timeout = Some(deadline);
        let send = async {
            let conn = match self.conn.get(|| self.conn()) {
                Some(conn) => conn,
                None => Arc::new(self.connected().await?),
            };
            Caller::notify(&*conn, method, input, options).await
        };
        tokio::time::timeout(deadline, send)
            .await
            .map_err(|_| Status::request_timeout(format!("not sent within {deadline:?}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output_size<A, B, R>(_: impl FnOnce(A, B) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    fn supervise_size<A, B, C, D, R>(_: impl FnOnce(A, B, C, D) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// A future keeps room for the largest state it can be in: with the TLS, WebSocket and
    /// QUIC handshakes in line, a connect future and the task that reconnects a client (which
    /// lives as long as the client) were 13 KB each, copied whole on every spawn, for a TCP
    /// client too.
    #[test]
    fn a_clients_connect_future_and_reconnecting_task_do_not_hold_every_transports_handshake() {
        let connect = std::mem::size_of_val(&Client::builder().connect("tcp://127.0.0.1:1"));
        let supervising = supervise_size(supervise);
        let dialing = output_size(dial::dial);
        eprintln!("connect {connect} B, reconnecting task {supervising} B, dial {dialing} B");
        assert!(dialing <= 1024, "dial: {dialing} B");
        assert!(connect <= 4096, "connect: {connect} B");
        assert!(
            supervising <= 4096,
            "the reconnecting task: {supervising} B"
        );
    }
}
