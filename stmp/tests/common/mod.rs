//! Shared pieces of the runtime tests: messages, methods, a server with every listener.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use stmp::{Context, Method, Status};

#[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
pub struct Echo {
    #[prost(string, tag = "1")]
    pub text: String,
    #[prost(uint64, tag = "2")]
    pub delay_ms: u64,
}

#[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
pub struct JoinRoomInput {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
pub struct RoomModel {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, repeated, tag = "2")]
    pub users: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
pub struct UserJoinEvent {
    #[prost(string, tag = "1")]
    pub user: String,
}

pub const ECHO: Method = Method::new("test.Echo.Echo", "test.Echo", "test.Echo");
pub const FAIL: Method = Method::new("test.Echo.Fail", "test.Echo", "test.Echo");
pub const PANIC: Method = Method::new("test.Echo.Panic", "test.Echo", "test.Echo");
pub const MISSING: Method = Method::new("test.Echo.Missing", "test.Echo", "test.Echo");
pub const BLOCK: Method = Method::new("test.Echo.Block", "test.Echo", "test.Echo");
pub const TICK: Method = Method::new("test.Events.Tick", "test.Echo", "test.Echo");
pub const JOIN_ROOM: Method = Method::new(
    "stmp.examples.quick_start.RoomService.JoinRoom",
    "stmp.examples.quick_start.JoinRoomInput",
    "stmp.examples.quick_start.RoomModel",
);
pub const USER_JOIN: Method = Method::new(
    "stmp.examples.quick_start.RoomEvents.UserJoin",
    "stmp.examples.quick_start.UserJoinEvent",
    "google.protobuf.Empty",
);

/// Bounds every await of a test.
pub const LIMIT: Duration = Duration::from_secs(10);

pub async fn within<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, future)
        .await
        .expect("test step timed out")
}

/// A TCP client of the server at `addr` that does not reconnect, connected within the test
/// limit.
pub async fn tcp_client(addr: SocketAddr) -> stmp::Client {
    within(
        stmp::Client::builder()
            .no_reconnect()
            .connect(&format!("tcp://{addr}")),
    )
    .await
    .unwrap()
}

/// Registers the test methods: echo (after `delay_ms`), fail, panic, and JoinRoom as in the
/// Go quick start (the users are the caller's address).
pub fn register(router: &stmp::Router) {
    router.route(&ECHO, |_ctx: Context, input: Echo| async move {
        if input.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(input.delay_ms)).await;
        }
        Ok::<_, Status>(input)
    });
    router.route(&FAIL, |_ctx: Context, input: Echo| async move {
        Err::<Echo, _>(Status::bad_request(format!("refused: {}", input.text)))
    });
    router.route(&PANIC, |_ctx: Context, _input: Echo| async move {
        if true {
            panic!("handler bug");
        }
        Ok::<Echo, Status>(Echo::default())
    });
    router.route(
        &JOIN_ROOM,
        |ctx: Context, input: JoinRoomInput| async move {
            let user = ctx
                .conn()
                .remote_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            Ok::<_, Status>(RoomModel {
                name: input.name,
                users: vec![user],
            })
        },
    );
}

/// Echoes of sizes on both sides of the size from which payloads are written by reference
/// (16 KiB), up to 1 MiB, all in flight at once: each answer must be its own call's, whole.
pub async fn echo_large_and_small(client: &stmp::Client, transport: &str) {
    let sizes = [10, (16 << 10) - 8, 16 << 10, 100_000, (1 << 20) + 7];
    let calls = (0..24).map(|i| {
        let client = client.clone();
        let input = Echo {
            text: char::from(b'a' + i as u8)
                .to_string()
                .repeat(sizes[i % sizes.len()]),
            delay_ms: 0,
        };
        async move {
            let output: Echo = client.call(&ECHO, &input).await.unwrap();
            assert!(output == input, "{transport}: call {i} got another answer");
        }
    });
    within(futures_util::future::join_all(calls)).await;
}

/// A self-signed certificate for `localhost`: (cert PEM, key PEM).
pub fn self_signed() -> (String, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    (cert.cert.pem(), cert.signing_key.serialize_pem())
}

/// The addresses of a server listening on every transport.
#[cfg(all(feature = "tls", feature = "ws"))]
pub struct Addrs {
    pub tcp: SocketAddr,
    pub tls: SocketAddr,
    pub ws: SocketAddr,
    pub wss: SocketAddr,
    pub cert_pem: String,
}

#[cfg(all(feature = "tls", feature = "ws"))]
impl Addrs {
    pub fn url(&self, scheme: &str) -> String {
        match scheme {
            "tcp" => format!("tcp://{}", self.tcp),
            "tls" => format!("tls://localhost:{}", self.tls.port()),
            "ws" => format!("ws://{}/stmp", self.ws),
            "wss" => format!("wss://localhost:{}/stmp", self.wss.port()),
            other => panic!("no scheme {other}"),
        }
    }

    pub fn client(&self) -> stmp::ClientBuilder {
        stmp::Client::builder().tls(stmp::tls::client_config(self.cert_pem.as_bytes()).unwrap())
    }
}

/// Starts `server` on every transport, with the test methods registered.
#[cfg(all(feature = "tls", feature = "ws"))]
pub async fn serve_all(server: &stmp::Server) -> Addrs {
    register(server.router());
    let (cert_pem, key_pem) = self_signed();
    let tls = stmp::tls::server_config(cert_pem.as_bytes(), key_pem.as_bytes()).unwrap();
    Addrs {
        tcp: server.listen_tcp("127.0.0.1:0").await.unwrap(),
        tls: server.listen_tls("127.0.0.1:0", tls.clone()).await.unwrap(),
        ws: server.listen_ws("127.0.0.1:0", "/stmp").await.unwrap(),
        wss: server
            .listen_wss("127.0.0.1:0", "/stmp", tls)
            .await
            .unwrap(),
        cert_pem,
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub type Shared<T> = Arc<std::sync::Mutex<T>>;

/// Waits, within the test limit, until `condition` holds (state another task changes).
pub async fn until(mut condition: impl FnMut() -> bool) {
    within(async {
        while !condition() {
            tokio::task::yield_now().await;
        }
    })
    .await
}

/// The far side of [`route_block`]: hears of each call that reached the handler, and lets the
/// waiting ones answer.
pub struct Gate {
    pub release: Arc<tokio::sync::Notify>,
    pub entered: tokio::sync::mpsc::UnboundedReceiver<()>,
}

/// Serves [`BLOCK`] with a handler that echoes only once released.
pub fn route_block(router: &stmp::Router) -> Gate {
    let release = Arc::new(tokio::sync::Notify::new());
    let (entered_tx, entered) = tokio::sync::mpsc::unbounded_channel();
    let gate = release.clone();
    router.route(&BLOCK, move |_ctx: Context, input: Echo| {
        let gate = gate.clone();
        let entered_tx = entered_tx.clone();
        async move {
            // Waiting before telling, so a release right after `entered` is not missed.
            let released = gate.notified();
            let _ = entered_tx.send(());
            released.await;
            Ok::<_, Status>(input)
        }
    });
    Gate { release, entered }
}

/// An [`Echo`] answered at once.
pub fn echo(text: &str) -> Echo {
    Echo {
        text: text.to_owned(),
        delay_ms: 0,
    }
}

/// Says hello as a client over a raw byte stream, then reads until the server's handshake has
/// come; returns what was read past it.
pub async fn say_hello(
    write: &mut (impl tokio::io::AsyncWrite + Unpin),
    read: &mut (impl tokio::io::AsyncRead + Unpin),
) -> bytes::BytesMut {
    use stmp::wire::{ClientHandshake, Header, ServerHandshake};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut hello = bytes::BytesMut::new();
    ClientHandshake::new(Header::new()).encode(&mut hello);
    within(write.write_all(&hello)).await.unwrap();
    let mut past = bytes::BytesMut::new();
    while ServerHandshake::decode(&mut past, 1 << 10)
        .unwrap()
        .is_none()
    {
        assert_ne!(within(read.read_buf(&mut past)).await.unwrap(), 0);
    }
    past
}

/// The tasks alive on the current runtime: a connection's writer task shows up here.
pub fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// A `Write` into a buffer the test reads back.
#[derive(Clone, Default)]
pub struct Captured(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
