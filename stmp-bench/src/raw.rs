//! The raw baselines' client side: u32 length-prefixed frames over plain tokio TCP, or over
//! one quinn stream (the QUIC baseline: what quinn costs with nothing of stmp on top).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::Result;
use crate::measure::{Call, Latencies, Measured};

/// One frame: the payload's length as a big-endian u32, then the payload.
pub fn frame(payload: usize) -> Vec<u8> {
    let mut frame = Vec::with_capacity(4 + payload);
    frame.extend_from_slice(&(payload as u32).to_be_bytes());
    frame.extend_from_slice(&crate::echo_payload(payload, 0));
    frame
}

/// The length of the complete frames at the start of `buf`.
pub fn complete_frames(buf: &[u8]) -> usize {
    let mut end = 0;
    while let Some(head) = buf.get(end..end + 4) {
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if buf.len() - end < 4 + len {
            break;
        }
        end += 4 + len;
    }
    end
}

/// Connects with `TCP_NODELAY`.
pub async fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A raw socket that has done the stmp handshake (protobuf, no header entries) with the server
/// at `addr` and reads nothing else yet: a receiver with none of the stmp client's work.
pub async fn connect_stmp(addr: SocketAddr) -> Result<TcpStream> {
    let mut stream = connect(addr).await?;
    let mut hello = BytesMut::new();
    stmp::wire::ClientHandshake::new(stmp::wire::Header::new()).encode(&mut hello);
    stream.write_all(&hello).await?;
    let mut buffer = BytesMut::new();
    while stmp::wire::ServerHandshake::decode(&mut buffer, 1 << 10)
        .map_err(|status| status.to_string())?
        .is_none()
    {
        if stream.read_buf(&mut buffer).await? == 0 {
            return Err("the server closed the connection during the handshake".into());
        }
    }
    if !buffer.is_empty() {
        return Err("the server sent more than its handshake".into());
    }
    Ok(stream)
}

/// One call in flight on one connection: write a frame, read its echo.
pub struct RawCall<S = TcpStream> {
    stream: S,
    frame: Vec<u8>,
    reply: Vec<u8>,
}

impl RawCall {
    /// A caller on a new TCP connection.
    pub async fn connect(addr: SocketAddr, payload: usize) -> Result<RawCall> {
        Ok(RawCall::over(connect(addr).await?, payload))
    }
}

impl<S> RawCall<S> {
    /// A caller on `stream`.
    pub fn over(stream: S, payload: usize) -> RawCall<S> {
        let frame = frame(payload);
        RawCall {
            stream,
            reply: vec![0; frame.len()],
            frame,
        }
    }

    /// Its stream.
    pub fn into_inner(self) -> S {
        self.stream
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Call for RawCall<S> {
    async fn call(&mut self) -> Result<()> {
        self.stream.write_all(&self.frame).await?;
        self.stream.read_exact(&mut self.reply).await?;
        Ok(())
    }
}

/// The ALPN of the raw QUIC echo.
pub const RAW_QUIC_ALPN: &[u8] = b"raw-echo";

/// One bidirectional quinn stream on a connection of its own, as a byte stream: the raw QUIC
/// baseline's transport. It holds its endpoint (one UDP socket, as an stmp QUIC client has)
/// and connection for as long as it lives.
pub struct QuicStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    _connection: quinn::Connection,
    _endpoint: quinn::Endpoint,
}

impl QuicStream {
    /// Connects to the raw QUIC echo at `addr` (TLS 1.3 with the run's self-signed
    /// certificate, quinn's default transport settings) and opens the stream.
    pub async fn connect(addr: SocketAddr) -> Result<QuicStream> {
        let mut tls = (*crate::systems::bench_cert().client).clone();
        tls.alpn_protocols = vec![RAW_QUIC_ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        let mut endpoint = quinn::Endpoint::client((std::net::Ipv4Addr::LOCALHOST, 0).into())?;
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let connection = endpoint.connect(addr, "localhost")?.await?;
        let (send, recv) = connection.open_bi().await?;
        Ok(QuicStream {
            send,
            recv,
            _connection: connection,
            _endpoint: endpoint,
        })
    }

    /// Closes the connection at once (as an stmp QUIC client does), without waiting for the
    /// peer to acknowledge it.
    pub fn close(self) {
        self._connection.close(0u32.into(), b"");
    }

    /// Its two halves; the reading one keeps the connection and the endpoint alive.
    pub fn into_split(self) -> (impl AsyncRead + Unpin + Send, quinn::SendStream) {
        let QuicStream {
            send,
            recv,
            _connection,
            _endpoint,
        } = self;
        (Holding(recv, (_connection, _endpoint)), send)
    }
}

/// A stream's reading half, and what must live as long as it does.
struct Holding<H>(quinn::RecvStream, H);

impl<H: Unpin> AsyncRead for Holding<H> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        AsyncRead::poll_read(Pin::new(&mut self.0), cx, buf)
    }
}

impl AsyncRead for QuicStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        AsyncRead::poll_read(Pin::new(&mut self.recv), cx, buf)
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.send), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.send), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.send), cx)
    }
}

/// `depth` requests in flight on one connection, pipelined: the writer sends as many frames
/// as there are free slots in one write, the reader takes the echoes in order.
pub async fn pipelined(
    addr: SocketAddr,
    payload: usize,
    depth: usize,
    warmup: Duration,
    measure: Duration,
) -> Result<Measured> {
    let (reader, writer) = connect(addr).await?.into_split();
    pipelined_over(reader, writer, payload, depth, warmup, measure).await
}

/// [`pipelined`] over the two halves of any byte stream.
pub async fn pipelined_over(
    mut reader: impl AsyncRead + Unpin,
    mut writer: impl AsyncWrite + Unpin + Send + 'static,
    payload: usize,
    depth: usize,
    warmup: Duration,
    measure: Duration,
) -> Result<Measured> {
    let frame = frame(payload);
    let frame_len = frame.len();
    let slots = Arc::new(Semaphore::new(depth));
    // Send times of the requests in flight, oldest first.
    let sent: Arc<Mutex<VecDeque<Instant>>> = Arc::new(Mutex::new(VecDeque::with_capacity(depth)));
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + measure;

    let writer_slots = slots.clone();
    let writer_sent = sent.clone();
    let writer_task = tokio::spawn(async move {
        let mut out = Vec::with_capacity(frame_len * depth);
        loop {
            let Ok(first) = writer_slots.acquire().await else {
                return Ok::<_, std::io::Error>(());
            };
            first.forget();
            let mut batch = 1;
            while let Ok(more) = writer_slots.try_acquire() {
                more.forget();
                batch += 1;
            }
            out.clear();
            for _ in 0..batch {
                out.extend_from_slice(&frame);
            }
            let now = Instant::now();
            writer_sent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(std::iter::repeat_n(now, batch));
            writer.write_all(&out).await?;
        }
    });

    let mut latencies = Latencies::default();
    let mut buf = BytesMut::with_capacity(64 << 10);
    let outcome: Result<()> = async {
        loop {
            buf.reserve(64 << 10);
            if reader.read_buf(&mut buf).await? == 0 {
                return Err("the raw echo server closed the connection".into());
            }
            let answered = buf.len() / frame_len;
            if answered == 0 {
                continue;
            }
            buf.advance(answered * frame_len);
            let now = Instant::now();
            {
                let mut sent = sent.lock().unwrap_or_else(|p| p.into_inner());
                for _ in 0..answered {
                    let at = sent.pop_front().ok_or("an echo nobody asked for")?;
                    if at >= measure_from && at < end {
                        latencies.record(now.duration_since(at));
                    }
                }
            }
            if now >= end {
                return Ok(());
            }
            slots.add_permits(answered);
        }
    }
    .await;
    slots.close();
    writer_task.abort();
    outcome?;
    let requests = latencies.count();
    Ok(Measured::new(
        Latencies::histogram([latencies])?,
        requests,
        measure,
    ))
}

/// Reads the fan-out baseline's frames from one socket, calling `received` with the seq of
/// each event (`frame_len` bytes each).
pub async fn read_events(
    mut stream: TcpStream,
    frame_len: usize,
    received: impl Fn(u64),
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096.max(frame_len)];
    let mut filled = 0;
    loop {
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        let whole = filled - filled % frame_len;
        for frame in buf[..whole].chunks_exact(frame_len) {
            received(crate::event_seq_in(frame));
        }
        // A frame split between two reads: its start waits for the rest.
        buf.copy_within(whole..filled, 0);
        filled -= whole;
    }
}
