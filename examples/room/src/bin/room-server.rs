//! The chat server: TCP, WebSocket and QUIC at once.
//!
//! ```text
//! cargo run -p room --bin room-server -- --tcp 127.0.0.1:7001 --ws 127.0.0.1:7002 \
//!     --quic 127.0.0.1:7003 --data accounts.json --web 127.0.0.1:7080
//! # the HTTP API as well: --http 127.0.0.1:7090 --http-token s3cret
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use room::accounts::Accounts;
use room::limits::{RateLimit, SignInLimits};
use room::server::{Chat, HistoryMode, RoomServer, ServerOptions, TlsPem};

/// The stmp chat-room server.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Listen for plain TCP (clients: tcp://ADDR).
    #[arg(long, value_name = "ADDR")]
    tcp: Option<SocketAddr>,
    /// Listen for WebSocket, binary and text packets (clients: ws://ADDR/room, or
    /// ws://ADDR/room?format=text).
    #[arg(long, value_name = "ADDR")]
    ws: Option<SocketAddr>,
    /// Listen for QUIC on this UDP address (clients: quic://ADDR with --ca).
    #[arg(long, value_name = "ADDR")]
    quic: Option<SocketAddr>,
    /// Keep the accounts in this JSON file (made if missing); in memory without it.
    #[arg(long, value_name = "PATH")]
    data: Option<PathBuf>,
    /// The certificate QUIC serves (PEM). When neither it nor --key exists, a self-signed
    /// one for localhost, 127.0.0.1 and ::1 is made and saved there, and later starts reuse
    /// it; clients trust it with `--ca room-cert.pem`.
    #[arg(long, value_name = "PATH", default_value = "room-cert.pem")]
    cert: PathBuf,
    /// The private key of --cert (PEM).
    #[arg(long, value_name = "PATH", default_value = "room-key.pem")]
    key: PathBuf,
    /// How long a session token is good for, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 24 * 60 * 60)]
    token_ttl: u64,
    /// Failed sign-ins a connection may make per minute.
    #[arg(long, value_name = "N", default_value_t = SignInLimits::default().per_conn.attempts)]
    sign_ins_per_conn: u32,
    /// Failed sign-ins one address (an IPv6 /64) may make per minute.
    #[arg(long, value_name = "N", default_value_t = SignInLimits::default().per_address.attempts)]
    sign_ins_per_address: u32,
    /// Serve the browser client over HTTP here (needs --ws; open http://ADDR/).
    #[arg(long, value_name = "ADDR", requires = "ws")]
    web: Option<SocketAddr>,
    /// The browser client's files (index.html and dist/app.js).
    #[arg(long, value_name = "PATH", default_value = room::web::DEFAULT_ROOT)]
    web_root: PathBuf,
    /// Serve the HTTP API (publish, rooms, presence, close, drain, /metrics, /health) here.
    #[arg(long, value_name = "ADDR", requires = "http_token")]
    http: Option<SocketAddr>,
    /// The bearer token the HTTP API asks for.
    #[arg(long, value_name = "TOKEN")]
    http_token: Option<String>,
    /// Run as one node of several: rooms, direct messages and presence are shared with every
    /// room-server on this NATS (e.g. nats://127.0.0.1:4222; several URLs comma-separated).
    #[arg(long, value_name = "URL")]
    nats: Option<String>,
    /// Where room messages are kept for clients that come back: `jetstream` (in NATS
    /// JetStream, shared by every node and kept across restarts; needs --nats and a
    /// nats-server started with -js), `memory` (this process), or `auto` (JetStream when
    /// --nats has it).
    #[arg(long, value_name = "WHERE", default_value = "auto")]
    history: HistoryArg,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum HistoryArg {
    Auto,
    Memory,
    Jetstream,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match serve().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("room-server: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,quinn=warn,rustls=warn".into()),
        )
        .init();
    let args = Args::parse();
    if args.tcp.is_none() && args.ws.is_none() && args.quic.is_none() {
        return Err("nothing to listen on: give --tcp, --ws and/or --quic".into());
    }

    let accounts = match &args.data {
        Some(path) => Accounts::open(path).await?,
        None => Accounts::in_memory(),
    }
    .with_token_ttl(Duration::from_secs(args.token_ttl));
    match accounts.path() {
        Some(path) => {
            tracing::info!(path = %path.display(), users = accounts.len(), "accounts loaded")
        }
        None => tracing::info!("accounts kept in memory: they go when the server stops"),
    }

    let tls = match args.quic {
        Some(_) => Some(load_or_make(&args.cert, &args.key).await?),
        None => None,
    };

    let chat = Chat::new(accounts).sign_in_limits(SignInLimits {
        per_conn: RateLimit::per_minute(args.sign_ins_per_conn),
        per_address: RateLimit::per_minute(args.sign_ins_per_address),
        ..SignInLimits::default()
    });
    let nats = match &args.nats {
        Some(url) => {
            let nats = stmp_nats::NatsAdapter::connect(url).await?;
            tracing::info!(%url, "sharing rooms and users over NATS");
            Some(nats)
        }
        None => None,
    };
    let mode = match args.history {
        HistoryArg::Auto => HistoryMode::Auto,
        HistoryArg::Memory => HistoryMode::Memory,
        HistoryArg::Jetstream => HistoryMode::JetStream,
    };
    let history = room::server::history_backend(nats.as_ref(), mode).await?;
    let server = RoomServer::start(
        chat,
        ServerOptions {
            tcp: args.tcp,
            ws: args.ws,
            quic: args.quic,
            tls,
            nats: nats.clone(),
            history,
            ..ServerOptions::default()
        },
    )
    .await?;
    let urls: Vec<String> = [server.tcp_url(), server.ws_url(false), server.quic_url()]
        .into_iter()
        .flatten()
        .collect();
    if let (Some(addr), Some(token)) = (args.http, &args.http_token) {
        let api = room::http::api(&server.chat, &server.server, token)?;
        let addr = api.listen(addr).await?;
        tracing::info!(url = %format!("http://{addr}"), "HTTP API ready");
    }
    tracing::info!(urls = %urls.join("  "), "chat server ready; Ctrl-C stops it");
    let _web = match (args.web, server.ws) {
        (Some(addr), Some(ws)) => {
            if !room::web::bundle_exists(&args.web_root) {
                tracing::warn!(root = %args.web_root.display(), "no dist/app.js: run `npm ci && npm run build:web` in clients/typescript");
            }
            let (bound, task) = room::web::Site::new(&args.web_root, ws)
                .listen(addr)
                .await?;
            tracing::info!(url = %format!("http://{bound}/"), "browser client");
            Some(task)
        }
        _ => None,
    };

    // Ctrl-C, or a drain over HTTP.
    tokio::select! {
        signal = tokio::signal::ctrl_c() => signal?,
        _ = server.server.closed() => {}
    }
    tracing::info!("stopping");
    server.server.shutdown(Duration::from_secs(2)).await;
    if let Some(nats) = nats {
        // The other nodes stop waiting for this one's presence answers at once.
        nats.close().await;
    }
    Ok(())
}

/// The certificate pair at `cert` and `key`, made (self-signed) when neither file exists.
async fn load_or_make(cert: &Path, key: &Path) -> Result<TlsPem, Box<dyn std::error::Error>> {
    match (cert.exists(), key.exists()) {
        (true, true) => {
            let pem = TlsPem {
                cert: tokio::fs::read_to_string(cert).await?,
                key: tokio::fs::read_to_string(key).await?,
            };
            tracing::info!(cert = %cert.display(), "certificate loaded");
            Ok(pem)
        }
        (false, false) => {
            let pem = TlsPem::self_signed()?;
            tokio::fs::write(cert, &pem.cert).await?;
            write_private(key, &pem.key)?;
            tracing::info!(
                cert = %cert.display(),
                key = %key.display(),
                "self-signed certificate for localhost, 127.0.0.1 and ::1 made and saved; later starts reuse it"
            );
            Ok(pem)
        }
        _ => Err(format!(
            "only one of {} and {} exists: give both, or neither to make a pair",
            cert.display(),
            key.display()
        )
        .into()),
    }
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents.as_bytes())
}
