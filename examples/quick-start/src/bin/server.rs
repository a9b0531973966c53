//! The quick-start server: chat rooms over TCP, WebSocket and (with `--quic`) QUIC.
//!
//! ```sh
//! cargo run -p quick-start --bin server -- --tcp 127.0.0.1:5001 --ws 127.0.0.1:5002
//! cargo run -p quick-start --bin server -- --quic 127.0.0.1:5003 --cert-out quick-start.pem
//! ```

use std::time::Duration;

use clap::Parser;
use quick_start::{Rooms, WS_PATH};
use tracing_subscriber::EnvFilter;

/// Serves RoomService (JoinRoom, ExitRoom) and sends RoomEvents (UserJoin, UserExit).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The TCP address to listen on.
    #[arg(long, default_value = "127.0.0.1:5001")]
    tcp: String,
    /// The WebSocket address to listen on (path /quick_start).
    #[arg(long, default_value = "127.0.0.1:5002")]
    ws: String,
    /// Also listen for QUIC on this UDP address, with a self-signed certificate for localhost.
    #[arg(long)]
    quic: Option<String>,
    /// Where to write that certificate, for clients to trust (`client --ca`).
    #[arg(long, default_value = "quick-start.pem")]
    cert_out: std::path::PathBuf,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let server = quick_start::server(Rooms::new());
    let tcp = server.listen_tcp(&args.tcp).await?;
    tracing::info!("serving on tcp://{tcp}");
    let ws = server.listen_ws(&args.ws, WS_PATH).await?;
    tracing::info!("serving on ws://{ws}{WS_PATH}");
    if let Some(quic) = &args.quic {
        let (cert, tls) = quick_start::self_signed_tls()?;
        std::fs::write(&args.cert_out, cert)?;
        let quic = server.listen_quic(quic, tls).await?;
        tracing::info!(
            "serving on quic://localhost:{} (certificate in {})",
            quic.port(),
            args.cert_out.display()
        );
    }
    tokio::signal::ctrl_c().await?;
    tracing::info!("shutting down");
    server.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
