//! The client: connects by URL, negotiates, and reconnects with backoff.

mod dial;
mod endpoint;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::codec::{Codec, Message};
use crate::conn::{CallOptions, Caller, EngineConfig, PacketFormat};
use crate::wire::{DEFAULT_MAX_PACKET_SIZE, Header};
use crate::{Code, Conn, Method, Router, Service, Status};
use dial::Dialed;
use endpoint::Endpoint;

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

/// Exponential backoff with jitter between reconnect attempts.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Backoff {
    /// The delay before attempt `attempt` (1-based): `initial · 2^(attempt-1)`, capped, with
    /// ±25 % jitter so clients of a restarted server do not all come back at once.
    fn delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(16);
        let base = self.initial.saturating_mul(1 << exponent).min(self.max);
        base.mul_f64(0.75 + fastrand::f64() * 0.5)
    }
}

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
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    pub(crate) server_name: Option<String>,
    reconnect: Option<Backoff>,
    fail_fast: bool,
    on_connection: Option<EventHook>,
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
            tls: None,
            server_name: None,
            reconnect: Some(Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(10),
            }),
            fail_fast: false,
            on_connection: None,
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

    /// Asks for gzip stream compression (byte streams only). Default off.
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

    /// TLS settings for `tls://` and `wss://` (see [`tls::client_config`](crate::tls::client_config)).
    pub fn tls(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// The name the server's certificate must have, when it is not the URL's host.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Reconnect backoff: first delay and cap. Default 100 ms to 10 s.
    pub fn reconnect(mut self, initial: Duration, max: Duration) -> Self {
        self.reconnect = Some(Backoff { initial, max });
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

    pub(crate) fn codecs(&self) -> Vec<Codec> {
        match (self.codecs.is_empty(), self.format) {
            (false, _) => self.codecs.clone(),
            (true, PacketFormat::Binary) => vec![Codec::PROTOBUF],
            (true, PacketFormat::Text) => vec![Codec::JSON],
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
            let first = dial::dial(&endpoint, &self).await?;
            let (state, _) = watch::channel(State::Connecting);
            let inner = Arc::new(Inner {
                router: self.router.clone(),
                header: std::sync::Mutex::new(self.header.clone()),
                state,
                stop: CancellationToken::new(),
                call_timeout: self.call_timeout,
                fail_fast: self.fail_fast,
            });
            inner
                .state
                .send_replace(State::Connected(first.conn.clone()));
            tokio::spawn(supervise(inner.clone(), self, endpoint, first));
            Ok(Client { inner })
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
}

/// A connection to a server that comes back by itself: calls, notifies, served methods and
/// event listeners all survive reconnects. Cheap to clone.
///
/// ```no_run
/// # async fn run() -> Result<(), stmp::Status> {
/// let client = stmp::Client::connect("tcp://127.0.0.1:5001").await?;
/// println!("connected: {:?}", client.conn());
/// client.close().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
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

async fn supervise(
    inner: Arc<Inner>,
    mut config: ClientBuilder,
    endpoint: Endpoint,
    first: Dialed,
) {
    let emit = |event: ConnectionEvent| {
        if let Some(hook) = &config.on_connection {
            hook(&event);
        }
    };
    let mut dialed = first;
    let mut attempt = 0u32;
    loop {
        let conn = dialed.conn.clone();
        tracing::info!(%endpoint, conn = conn.id(), "connected");
        inner.state.send_replace(State::Connected(conn.clone()));
        emit(ConnectionEvent::Connected {
            conn: conn.clone(),
            attempt,
        });
        let transport = dialed.transport;
        let engine = tokio::spawn(dialed.engine.run());
        let mut status = tokio::select! {
            status = conn.closed() => status,
            _ = inner.stop.cancelled() => {
                conn.close(Code::Ok, "client closed");
                let _ = engine.await;
                drop(transport);
                inner.state.send_replace(State::Closed(Status::network_error("client closed")));
                return;
            }
        };
        let _ = engine.await;
        drop(transport);
        attempt = 0;
        dialed = loop {
            attempt += 1;
            let Some(backoff) = config.reconnect.as_ref().filter(|_| retryable(&status)) else {
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
            let delay = backoff.delay(attempt);
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
                _ = inner.stop.cancelled() => {
                    inner.state.send_replace(State::Closed(Status::network_error("client closed")));
                    return;
                }
            }
            config.header = inner
                .header
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let outcome = tokio::select! {
                outcome = dial::dial(&endpoint, &config) => outcome,
                _ = inner.stop.cancelled() => {
                    inner.state.send_replace(State::Closed(Status::network_error("client closed")));
                    return;
                }
            };
            match outcome {
                Ok(dialed) => break dialed,
                Err(error) => status = error,
            }
        };
    }
}

impl Client {
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
        self.inner
            .header
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, value);
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
        if let Some(conn) = self.conn() {
            return Caller::call(&conn, method, input, options).await;
        }
        let call = async {
            let conn = self.connected().await?;
            Caller::call(&conn, method, input, options).await
        };
        tokio::time::timeout(deadline, call)
            .await
            .map_err(|_| Status::request_timeout(format!("not answered within {deadline:?}")))?
    }
}
