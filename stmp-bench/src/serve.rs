//! `stmp-bench serve <kind>`: the server processes.
//!
//! Each prints `LISTEN <name> <addr>` per listener (port 0: the OS picks), then `READY`, then
//! answers commands on its stdin, one line each:
//! - `count` → `COUNT <connections>`;
//! - `broadcast <seq>` (stmp and raw fan-out) → `SENT <start unix ns> <call ns> <queued>
//!   <dropped> <encodings>`: the fan-out event of round `seq` goes to every connection;
//! - `burst <count> <first seq>` (stmp and stmp-nats) → the same `SENT` line, for `count`
//!   broadcasts one after another (on a cluster node: to everyone on every node).
//!
//! It exits when its stdin closes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::pb::echo_service_server::{EchoService, EchoServiceServer};
use crate::systems::{CERT_ENV, KEY_ENV, READ_TIMEOUT_ENV, SERVER_WORKERS_ENV, ServerKind};
use crate::{ECHO, EVENT, Echo, Result, event, notify_frame, unix_nanos};

/// Runs the server of `kind` until stdin closes.
pub fn main(kind: ServerKind) -> Result<()> {
    crate::child::raise_nofile_limit();
    let workers = match std::env::var(SERVER_WORKERS_ENV) {
        Ok(workers) => Some(workers.parse()?),
        Err(_) => None,
    };
    let runtime = crate::child::runtime(workers)?;
    runtime.block_on(async move {
        match kind {
            ServerKind::Stmp => stmp_server().await,
            ServerKind::Tonic => tonic_server().await,
            ServerKind::SocketIo => socketio_server().await,
            ServerKind::RawEcho => raw_echo().await,
            ServerKind::RawFanout => raw_fanout().await,
            ServerKind::StmpNats => stmp_nats_server().await,
        }
    })?;
    // Thousands of connection tasks need no orderly teardown.
    std::process::exit(0);
}

/// Answers command lines until stdin closes; `handle` gets the words of each line.
async fn commands(mut handle: impl FnMut(&[&str]) -> Option<String>) -> Result<()> {
    println!("READY");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let words: Vec<&str> = line.split_whitespace().collect();
        let reply = handle(&words).unwrap_or_else(|| format!("ERROR unknown command: {line}"));
        println!("{reply}");
    }
    Ok(())
}

fn sent(start_ns: u64, began: Instant, queued: usize, dropped: usize, encodings: usize) -> String {
    let call_ns = began.elapsed().as_nanos();
    format!("SENT {start_ns} {call_ns} {queued} {dropped} {encodings}")
}

/// `burst <count> <first seq>`: `count` broadcasts, seqs from `first`, one after another,
/// answered like `broadcast` with the deliveries added up.
fn burst(
    count: &str,
    first: &str,
    broadcast: impl Fn(u64) -> Result<stmp::Delivery, stmp::Status>,
) -> Option<String> {
    let (count, first): (u64, u64) = (count.parse().ok()?, first.parse().ok()?);
    let start_ns = unix_nanos();
    let began = Instant::now();
    let (mut queued, mut dropped, mut encodings) = (0, 0, 0);
    for seq in first..first.checked_add(count)? {
        let delivery = broadcast(seq).ok()?;
        queued += delivery.queued;
        dropped += delivery.dropped;
        encodings = encodings.max(delivery.encodings);
    }
    Some(sent(start_ns, began, queued, dropped, encodings))
}

async fn stmp_server() -> Result<()> {
    // The fan-out's raw readers never answer a Ping: no heartbeat within a run, unless the
    // memory part asks for one.
    let read_timeout = std::env::var(READ_TIMEOUT_ENV)
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(
            std::time::Duration::from_secs(600),
            std::time::Duration::from_millis,
        );
    // gzip and WebSocket compression are opt-in on servers; the `stmp tcp+gzip` and
    // `stmp ws+deflate` rows need them.
    let server = stmp::Server::builder()
        .handshake_timeout(crate::systems::HANDSHAKE_TIMEOUT)
        .read_timeout(read_timeout)
        .gzip(true)
        // Every gzip connection of the idle-memory row must get gzip: the row measures what
        // one costs, not the limit.
        .max_gzip_connections(usize::MAX)
        .gzip_inflation_limit(crate::systems::BENCH_INFLATION_RATIO, 1 << 20)
        // Only the `stmp ws+deflate` row's clients ask for it.
        .websocket_compression(true)
        .build();
    server
        .router()
        .route(&ECHO, |_ctx, input: Echo| async move {
            Ok::<_, stmp::Status>(input)
        });
    let tcp = server.listen_tcp("127.0.0.1:0").await?;
    println!("LISTEN tcp {tcp}");
    let ws = server.listen_ws("127.0.0.1:0", "/stmp").await?;
    println!("LISTEN ws {ws}");
    if let (Ok(cert), Ok(key)) = (std::env::var(CERT_ENV), std::env::var(KEY_ENV)) {
        let tls = stmp::tls::server_config(cert.as_bytes(), key.as_bytes())?;
        let over_tcp = server.listen_tls("127.0.0.1:0", tls.clone()).await?;
        println!("LISTEN tls {over_tcp}");
        let wss = server
            .listen_wss("127.0.0.1:0", "/stmp", tls.clone())
            .await?;
        println!("LISTEN wss {wss}");
        let quic = server.listen_quic("127.0.0.1:0", tls).await?;
        println!("LISTEN quic {quic}");
    }
    commands(|words| match words {
        ["count"] => Some(format!("COUNT {}", server.conns().len())),
        ["tasks"] => Some(format!(
            "TASKS {}",
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        )),
        ["heap"] => heap_in_use().map(|bytes| format!("HEAP {bytes}")),

        ["broadcast", seq] => {
            let seq: u64 = seq.parse().ok()?;
            let start_ns = unix_nanos();
            let began = Instant::now();
            let delivery = stmp::broadcast(server.conns(), &EVENT, &event(seq)).ok()?;
            Some(sent(
                start_ns,
                began,
                delivery.queued,
                delivery.dropped,
                delivery.encodings,
            ))
        }
        ["burst", count, first] => burst(count, first, |seq| {
            stmp::broadcast(server.conns(), &EVENT, &event(seq))
        }),
        _ => None,
    })
    .await
}

/// Bytes the allocator has handed out and not been given back (glibc's count, over every
/// arena). Unlike the resident size, it falls when memory is freed: freed memory mostly stays
/// mapped, for the process to reuse.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn heap_in_use() -> Option<u64> {
    // SAFETY: `mallinfo2` only reads the allocator's own statistics.
    let info = unsafe { libc::mallinfo2() };
    Some((info.uordblks + info.hblkhd) as u64)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn heap_in_use() -> Option<u64> {
    None
}

/// A cluster node: plain TCP, the NATS adapter, and broadcasts to everyone on every node.
async fn stmp_nats_server() -> Result<()> {
    let url = std::env::var(crate::systems::NATS_ENV)?;
    let nats = stmp_nats::NatsAdapter::connect(&url).await?;
    let server = stmp::Server::builder()
        .handshake_timeout(crate::systems::HANDSHAKE_TIMEOUT)
        .adapter(nats.clone())
        .build();
    // NATS has the node's subscriptions before the load generator hears READY.
    nats.flush().await?;
    let tcp = server.listen_tcp("127.0.0.1:0").await?;
    println!("LISTEN tcp {tcp}");
    // Everyone on every node: this node's clients at once, the others' through NATS.
    let to_everyone = |seq: u64| stmp::broadcast(server.everyone(), &EVENT, &event(seq));
    commands(|words| match words {
        ["count"] => Some(format!("COUNT {}", server.conns().len())),
        ["broadcast", seq] => {
            let seq: u64 = seq.parse().ok()?;
            let start_ns = unix_nanos();
            let began = Instant::now();
            let delivery = to_everyone(seq).ok()?;
            Some(sent(
                start_ns,
                began,
                delivery.queued,
                delivery.dropped,
                delivery.encodings,
            ))
        }
        ["burst", count, first] => burst(count, first, to_everyone),
        _ => None,
    })
    .await
}

struct Echoer;

#[tonic::async_trait]
impl EchoService for Echoer {
    async fn echo(
        &self,
        request: tonic::Request<crate::pb::Echo>,
    ) -> Result<tonic::Response<crate::pb::Echo>, tonic::Status> {
        Ok(tonic::Response::new(request.into_inner()))
    }
}

async fn tonic_server() -> Result<()> {
    let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse()?)?
        .with_nodelay(Some(true));
    println!("LISTEN tcp {}", incoming.local_addr()?);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EchoServiceServer::new(Echoer))
            .serve_with_incoming(incoming),
    );
    commands(|_| None).await
}

/// socketioxide's `emit` is async (its adapters may be remote), so this server reads its
/// commands itself rather than through [`commands`].
async fn socketio_server() -> Result<()> {
    use crate::socketio::{FANOUT_EVENT, fanout_event};
    let (addr, io) = crate::socketio::serve().await?;
    println!("LISTEN ws {addr}");
    println!("READY");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let words: Vec<&str> = line.split_whitespace().collect();
        let reply = match words.as_slice() {
            ["count"] => format!("COUNT {}", io.sockets().len()),
            ["broadcast", seq] => {
                let seq: u64 = seq.parse()?;
                // Counted before the clock starts: `sockets` copies out every socket.
                let sockets = io.sockets().len();
                let start_ns = unix_nanos();
                let began = Instant::now();
                // Sockets whose buffer was full missed the event; anything else is a failure.
                let dropped = match io.emit(FANOUT_EVENT, &fanout_event(seq)).await {
                    Ok(()) => 0,
                    Err(socketioxide::BroadcastError::Socket(missed)) => missed.len(),
                    Err(error) => return Err(error.to_string().into()),
                };
                sent(start_ns, began, sockets.saturating_sub(dropped), dropped, 1)
            }
            _ => format!("ERROR unknown command: {line}"),
        };
        println!("{reply}");
    }
    Ok(())
}

/// The practical limit: u32 length-prefixed frames echoed as they come, every complete frame
/// of a read in one write (so pipelined requests are answered in batches). Given the QUIC
/// certificate, it echoes the same way on one quinn stream per QUIC connection.
async fn raw_echo() -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("LISTEN tcp {}", listener.local_addr()?);
    let conns = Arc::new(AtomicUsize::new(0));
    let count = conns.clone();
    let accepted = conns.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let conns = accepted.clone();
            tokio::spawn(async move {
                conns.fetch_add(1, Ordering::Relaxed);
                let _ = echo_frames(stream).await;
                conns.fetch_sub(1, Ordering::Relaxed);
            });
        }
    });
    if let (Ok(cert), Ok(key)) = (std::env::var(CERT_ENV), std::env::var(KEY_ENV)) {
        let endpoint = raw_quic_endpoint(&cert, &key)?;
        println!("LISTEN quic {}", endpoint.local_addr()?);
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let conns = conns.clone();
                tokio::spawn(async move {
                    let Ok(connection) = incoming.await else {
                        return;
                    };
                    let Ok((send, recv)) = connection.accept_bi().await else {
                        return;
                    };
                    conns.fetch_add(1, Ordering::Relaxed);
                    let _ = echo_frames(tokio::io::join(recv, send)).await;
                    conns.fetch_sub(1, Ordering::Relaxed);
                });
            }
        });
    }
    commands(|words| match words {
        ["count"] => Some(format!("COUNT {}", count.load(Ordering::Relaxed))),
        _ => None,
    })
    .await
}

/// The raw QUIC echo's endpoint: TLS 1.3 with the certificate of the run, quinn's default
/// transport settings.
fn raw_quic_endpoint(cert: &str, key: &str) -> Result<quinn::Endpoint> {
    let mut tls = (*stmp::tls::server_config(cert.as_bytes(), key.as_bytes())?).clone();
    tls.alpn_protocols = vec![crate::raw::RAW_QUIC_ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    Ok(quinn::Endpoint::server(
        config,
        (std::net::Ipv4Addr::LOCALHOST, 0).into(),
    )?)
}

async fn echo_frames(mut stream: impl AsyncRead + AsyncWrite + Unpin) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        buf.reserve(4096);
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        let complete = crate::raw::complete_frames(&buf);
        if complete > 0 {
            let out = buf.split_to(complete);
            stream.write_all(&out).await?;
        }
    }
}

/// The fan-out baseline: a plain tokio server that writes the same bytes stmp would to every
/// socket, through one queue and one writer task per socket (stmp's shape, without stmp).
async fn raw_fanout() -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("LISTEN tcp {}", listener.local_addr()?);
    let queues: Arc<Mutex<Vec<mpsc::Sender<Bytes>>>> = Arc::default();
    let accepted = queues.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let (tx, mut rx) = mpsc::channel::<Bytes>(256);
            accepted.lock().unwrap_or_else(|p| p.into_inner()).push(tx);
            tokio::spawn(async move {
                while let Some(bytes) = rx.recv().await {
                    if stream.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    commands(|words| {
        let queues = queues.lock().unwrap_or_else(|p| p.into_inner());
        match words {
            ["count"] => Some(format!("COUNT {}", queues.len())),
            ["broadcast", seq] => {
                let seq: u64 = seq.parse().ok()?;
                let start_ns = unix_nanos();
                let began = Instant::now();
                let frame = notify_frame(&event(seq));
                let (mut queued, mut dropped) = (0, 0);
                for queue in queues.iter() {
                    match queue.try_send(frame.clone()) {
                        Ok(()) => queued += 1,
                        Err(_) => dropped += 1,
                    }
                }
                Some(sent(start_ns, began, queued, dropped, 1))
            }
            _ => None,
        }
    })
    .await
}
