//! The systems under test, and how a client of each stmp transport connects.
//!
//! A new stmp transport is one [`System`] variant, its row in [`System::ALL`], and one arm in
//! [`stmp_client`] (plus its listener in [`crate::serve`]): every table picks it up.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use serde::Serialize;

use crate::Result;

/// One system of the unary table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum System {
    /// stmp over plain TCP.
    StmpTcp,
    /// stmp over TLS 1.3 over TCP (rustls with ring, self-signed certificate).
    StmpTls,
    /// stmp over WebSocket (binary packets).
    StmpWs,
    /// stmp over WebSocket over TLS 1.3: what a browser in production uses.
    StmpWss,
    /// stmp over TCP with gzip stream compression.
    StmpGzip,
    /// stmp over WebSocket with permessage-deflate: what a browser gets from a server with
    /// `websocket_compression(true)`. Messages under 128 B go plain.
    StmpWsDeflate,
    /// stmp over QUIC (one bidirectional stream, TLS 1.3, self-signed certificate).
    StmpQuic,
    /// tonic 0.14 gRPC unary echo over HTTP/2 (h2c).
    Tonic,
    /// socketioxide 0.18, the socket.io server for Rust: an event answered with its
    /// acknowledgement, over socket.io's WebSocket transport.
    SocketIo,
    /// A minimal tokio TCP echo of u32 length-prefixed frames: the practical limit.
    RawTcp,
    /// The same echo over one quinn stream per connection (TLS 1.3, quinn's default
    /// settings): the limit of QUIC through quinn, and so of `stmp quic`.
    RawQuic,
}

impl System {
    /// Every system, in table order.
    pub const ALL: [System; 11] = [
        System::StmpTcp,
        System::StmpTls,
        System::StmpWs,
        System::StmpWss,
        System::StmpGzip,
        System::StmpWsDeflate,
        System::StmpQuic,
        System::Tonic,
        System::SocketIo,
        System::RawTcp,
        System::RawQuic,
    ];

    /// The name in the table.
    pub fn label(self) -> &'static str {
        match self {
            System::StmpTcp => "stmp tcp",
            System::StmpTls => "stmp tls",
            System::StmpWs => "stmp ws",
            System::StmpWss => "stmp wss",
            System::StmpGzip => "stmp tcp+gzip",
            System::StmpWsDeflate => "stmp ws+deflate",
            System::StmpQuic => "stmp quic",
            System::Tonic => "tonic grpc",
            System::SocketIo => "socketioxide",
            System::RawTcp => "raw tcp echo",
            System::RawQuic => "raw quic echo",
        }
    }

    /// Whether it is stmp (and so gets ratios against tonic and raw).
    pub fn is_stmp(self) -> bool {
        matches!(
            self,
            System::StmpTcp
                | System::StmpTls
                | System::StmpWs
                | System::StmpWss
                | System::StmpGzip
                | System::StmpWsDeflate
                | System::StmpQuic
        )
    }

    /// The server process it talks to.
    pub fn server(self) -> ServerKind {
        match self {
            System::Tonic => ServerKind::Tonic,
            System::SocketIo => ServerKind::SocketIo,
            System::RawTcp | System::RawQuic => ServerKind::RawEcho,
            _ => ServerKind::Stmp,
        }
    }

    /// The systems of the unary table in this build: all of them (QUIC since
    /// `Server::listen_quic` landed).
    pub fn unary() -> Vec<System> {
        System::ALL.to_vec()
    }
}

/// What `stmp-bench serve <kind>` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ServerKind {
    /// An stmp server listening on TCP, WebSocket (`/stmp`) and, given the certificate, TLS,
    /// WebSocket over TLS and QUIC at once, with the echo method; `broadcast <seq>` on its stdin sends the fan-out event to every connection, `tasks` and `heap` tell its live tasks and heap in use.
    Stmp,
    /// A tonic server with the echo service.
    Tonic,
    /// A socketioxide server answering the `echo` event (see [`crate::socketio`]).
    SocketIo,
    /// The raw u32-length-prefixed echo, on TCP and (given the certificate) on QUIC.
    RawEcho,
    /// The raw fan-out baseline: `broadcast <seq>` writes stmp's notify bytes to every socket.
    RawFanout,
    /// An stmp node on the NATS named by [`NATS_ENV`]: `broadcast <seq>` sends the fan-out
    /// event to everyone on every node; `burst <count> <first seq>` sends `count` of them.
    StmpNats,
}

/// The NATS URL of a [`ServerKind::StmpNats`] server.
pub const NATS_ENV: &str = "STMP_BENCH_NATS";

impl ServerKind {
    /// The word after `serve`.
    pub fn arg(self) -> &'static str {
        match self {
            ServerKind::Stmp => "stmp",
            ServerKind::Tonic => "tonic",
            ServerKind::SocketIo => "socketio",
            ServerKind::RawEcho => "raw-echo",
            ServerKind::RawFanout => "raw-fanout",
            ServerKind::StmpNats => "stmp-nats",
        }
    }

    /// The kind named by `arg`.
    pub fn parse(arg: &str) -> Option<ServerKind> {
        [
            ServerKind::Stmp,
            ServerKind::Tonic,
            ServerKind::SocketIo,
            ServerKind::RawEcho,
            ServerKind::RawFanout,
            ServerKind::StmpNats,
        ]
        .into_iter()
        .find(|kind| kind.arg() == arg)
    }
}

/// The listeners a server process reported.
#[derive(Clone, Debug, Default)]
pub struct Listening {
    addrs: Vec<(String, SocketAddr)>,
}

impl Listening {
    /// Records the listener called `name`.
    pub fn insert(&mut self, name: String, addr: SocketAddr) {
        self.addrs.push((name, addr));
    }

    /// The address of the listener called `name` (`tcp`, `tls`, `ws`, `wss`, `quic`).
    pub fn addr(&self, name: &str) -> Result<SocketAddr> {
        self.addrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, addr)| *addr)
            .ok_or_else(|| format!("the server has no {name} listener").into())
    }
}

/// How long a connection may take to be established, on both sides. Many QUIC or TLS
/// handshakes at once on a busy machine (a debug build under `cargo test`) take longer than
/// the 10 s defaults; a benchmark reports a failure, but not that one.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// THE transport hook: connects an stmp client of `system` to the server, with `router` for
/// the events it listens to. Clients never reconnect (a benchmark wants to see failures).
pub async fn stmp_client(
    system: System,
    server: &Listening,
    router: Option<stmp::Router>,
) -> Result<stmp::Client> {
    let mut builder = stmp::Client::builder()
        .no_reconnect()
        .connect_timeout(HANDSHAKE_TIMEOUT);
    if let Some(router) = router {
        builder = builder.router(router);
    }
    let client = match system {
        System::StmpTcp => {
            builder
                .connect(&format!("tcp://{}", server.addr("tcp")?))
                .await?
        }
        System::StmpGzip => {
            builder
                .gzip(true)
                .gzip_inflation_limit(BENCH_INFLATION_RATIO, 1 << 20)
                .connect(&format!("tcp://{}", server.addr("tcp")?))
                .await?
        }
        System::StmpTls => {
            trusting_cert(builder)
                .connect(&format!("tls://{}", server.addr("tls")?))
                .await?
        }
        System::StmpWs => {
            builder
                .connect(&format!("ws://{}/stmp", server.addr("ws")?))
                .await?
        }
        System::StmpWsDeflate => {
            builder
                .gzip(true)
                .gzip_inflation_limit(BENCH_INFLATION_RATIO, 1 << 20)
                .connect(&format!("ws://{}/stmp", server.addr("ws")?))
                .await?
        }
        System::StmpWss => {
            trusting_cert(builder)
                .connect(&format!("wss://{}/stmp", server.addr("wss")?))
                .await?
        }
        System::StmpQuic => {
            trusting_cert(builder)
                .connect(&format!("quic://{}", server.addr("quic")?))
                .await?
        }
        System::Tonic | System::SocketIo | System::RawTcp | System::RawQuic => {
            return Err(format!("{} is not stmp", system.label()).into());
        }
    };
    Ok(client)
}

/// A client builder that trusts the run's certificate, issued to `localhost`.
fn trusting_cert(builder: stmp::ClientBuilder) -> stmp::ClientBuilder {
    builder
        .tls(bench_cert().client.clone())
        .server_name("localhost")
}

/// The self-signed certificate of the TLS, WebSocket-over-TLS and QUIC listeners: made once by
/// the load process, handed to the server process in the environment.
pub struct BenchCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
    /// A client config that trusts it.
    pub client: Arc<rustls::ClientConfig>,
}

/// Environment variables that carry the certificate to the server process.
pub const CERT_ENV: &str = "STMP_BENCH_CERT";
/// The stmp server's read timeout in milliseconds, when set (600 s otherwise): the memory
/// part sets a short one, so that its connections' heartbeat rings within the run.
pub const READ_TIMEOUT_ENV: &str = "STMP_BENCH_READ_TIMEOUT_MS";
/// See [`CERT_ENV`].
pub const KEY_ENV: &str = "STMP_BENCH_KEY";
/// The server process's runtime worker threads, when set (`--server-workers`; one per CPU
/// otherwise).
pub const SERVER_WORKERS_ENV: &str = "STMP_BENCH_SERVER_WORKERS";

/// The process's certificate.
pub fn bench_cert() -> &'static BenchCert {
    static CERT: OnceLock<BenchCert> = OnceLock::new();
    CERT.get_or_init(|| {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("a self-signed certificate");
        let cert_pem = certified.cert.pem();
        let key_pem = certified.signing_key.serialize_pem();
        let client = stmp::tls::client_config(cert_pem.as_bytes()).expect("a client TLS config");
        BenchCert {
            cert_pem,
            key_pem,
            client,
        }
    })
}

/// The inflation both sides of the `stmp tcp+gzip` and `stmp ws+deflate` rows allow: the payloads are one byte
/// repeated, which deflate shrinks by far more than the default 64× bound that protects a
/// public server from gzip bombs.
pub const BENCH_INFLATION_RATIO: u32 = 4096;
