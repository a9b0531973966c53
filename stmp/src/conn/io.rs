//! Thin glue between a transport and the engine: a stream of decoded packets in, batches of
//! packets out. Every transport is a byte stream (TCP, TLS, QUIC, and WebSocket under its
//! upgrade); what differs is how packets are framed on it ([`Framing`], [`Unframe`]).

#[cfg(feature = "gzip")]
mod gzip_header;
#[cfg(feature = "gzip")]
mod gzip_writer;
mod inflate;
mod outgoing;
mod packets;
mod read_ahead;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::Status;
use crate::telemetry::Counted;
#[cfg(feature = "ws")]
use crate::transport::ws::frame::FrameWriter;
use crate::wire::{BufferBudget, Limits, Packet, PacketCodec};
#[cfg(feature = "gzip")]
use gzip_writer::GzipWriter;
#[cfg(feature = "gzip")]
use inflate::BoundedGzip;
pub(crate) use inflate::InflationLimit;
#[cfg(all(feature = "gzip", feature = "ws"))]
pub(crate) use inflate::InflationMeter;
pub(crate) use outgoing::{BORROW_FROM, Outgoing};
pub(crate) use packets::PacketReader;
#[cfg(feature = "ws")]
pub(crate) use packets::{Unframe, Unframed};

/// Decoded packets from the peer; the stream ends when the transport does.
pub(crate) type PacketStream = Pin<Box<dyn PacketSource>>;

/// A transport's decoded packets.
pub(crate) trait PacketSource: Stream<Item = Result<Packet, Status>> + Send {
    /// Whether more input is at hand (bytes of further packets already read, or a packet
    /// ready to be taken), so that the packet just taken is not the last of its read.
    fn has_buffered(self: Pin<&mut Self>) -> bool;

    /// Whether a read from the transport has brought bytes since the last time this was
    /// asked: asked after each packet, it says whether the packet came with a read of its
    /// own rather than with the bytes an earlier read brought.
    fn took_a_read(self: Pin<&mut Self>) -> bool;

    /// The next packet if all of it is already buffered, without reading: what `next` would
    /// give at once. `None` when more bytes are needed or the stream has ended (`next` then
    /// says which).
    fn next_buffered(self: Pin<&mut Self>) -> Option<Result<Packet, Status>>;
}

type BoxWrite = Pin<Box<dyn AsyncWrite + Send>>;

/// How packets travel in WebSocket messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PacketFormat {
    /// Binary packets in binary messages (the default).
    #[default]
    Binary,
    /// Text packets in text messages (browsers, and the Go client's text mode).
    Text,
}

impl PacketFormat {
    /// The name used in handshake headers: `binary` or `text`.
    pub fn as_str(self) -> &'static str {
        match self {
            PacketFormat::Binary => "binary",
            PacketFormat::Text => "text",
        }
    }
}

/// What a connection accepts from its peer.
#[derive(Clone, Debug, Default)]
pub(crate) struct ReadLimits {
    pub(crate) wire: Limits,
    /// Shared by a server's connections, for large packets still being received.
    pub(crate) buffered: Option<Arc<BufferBudget>>,
    #[cfg_attr(not(feature = "gzip"), allow(dead_code))]
    pub(crate) inflation: InflationLimit,
}

/// Where the engine writes packets: a byte stream, with what lays them out on it.
pub(crate) struct PacketWriter {
    pub(crate) io: BoxWrite,
    /// What an inline write left unwritten, and each batch while it is written.
    pub(crate) out: Outgoing,
    pub(crate) framing: Framing,
    /// The gzip stream the batches go out in, when agreed on.
    #[cfg(feature = "gzip")]
    pub(crate) gzip: Option<Box<GzipWriter>>,
}

/// How packets are laid out on the byte stream.
pub(crate) enum Framing {
    /// Each packet's stream form, its payload's length first.
    Stream,
    /// Each packet one WebSocket message.
    #[cfg(feature = "ws")]
    WebSocket(FrameWriter),
}

impl Framing {
    /// Encodes `packets` with every byte copied into `dst`: what gets compressed, or goes
    /// through a thread's scratch buffer.
    fn encode(&self, packets: &[Packet], dst: &mut BytesMut) {
        match self {
            Framing::Stream => packets.iter().for_each(|packet| packet.append_stream(dst)),
            #[cfg(feature = "ws")]
            Framing::WebSocket(frames) => {
                packets.iter().for_each(|packet| frames.encode(packet, dst))
            }
        }
    }

    /// Encodes `packets` into `out`, with their large payloads sent by reference when the
    /// transport takes vectored writes (`vectored`). One that does not (quinn's streams, which
    /// copy what they are given) would take each payload in a write of its own.
    fn encode_into(&self, packets: &[Packet], out: &mut Outgoing, vectored: bool) {
        if !vectored {
            return self.encode(packets, &mut out.buf);
        }
        match self {
            Framing::Stream => {
                for packet in packets {
                    match stream_payload_to_borrow(packet) {
                        Some(payload) => {
                            packet.append_stream_head(&mut out.buf);
                            out.borrow(payload);
                        }
                        None => packet.append_stream(&mut out.buf),
                    }
                }
            }
            #[cfg(feature = "ws")]
            Framing::WebSocket(frames) => packets
                .iter()
                .for_each(|packet| frames.encode_into(packet, out)),
        }
    }

    /// Whether [`encode_into`](Self::encode_into) would send a payload of `packets` by
    /// reference.
    fn borrows_from(&self, packets: &[Packet]) -> bool {
        match self {
            Framing::Stream => packets
                .iter()
                .any(|packet| stream_payload_to_borrow(packet).is_some()),
            #[cfg(feature = "ws")]
            Framing::WebSocket(frames) => packets
                .iter()
                .any(|packet| frames.payload_to_borrow(packet).is_some()),
        }
    }
}

fn stream_payload_to_borrow(packet: &Packet) -> Option<&bytes::Bytes> {
    packet
        .payload_bytes()
        .filter(|payload| payload.len() >= BORROW_FROM)
}

/// The bytes of write buffer a connection keeps once it has written all it had; a larger one
/// is given back.
const KEEP_WRITE_BUFFER: usize = 64 << 10;

/// The bytes of write buffer kept for the next batch of a connection that is busy, and by a
/// thread's scratch buffer. 64 answers of 1 KiB are more than [`KEEP_WRITE_BUFFER`]: given back
/// after every batch, the buffer grew again through every power of two for the next one,
/// copying what it held at each step.
const KEEP_WHILE_BUSY: usize = 1 << 20;

thread_local! {
    /// Where an inline write encodes its packets when its connection has nothing buffered:
    /// bytes that all go out at once then never touch the connection's own buffer. A broadcast
    /// to thousands of connections writes from one warm buffer that way, and a connection that
    /// only receives events keeps no write buffer.
    static SCRATCH: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

/// Encodes `packets` into this thread's scratch buffer and writes what `io` takes without
/// waiting; what it does not take goes to `leftover`. `Ok(false)`, with nothing done, when the
/// scratch buffer cannot be had: taken already (a transport that itself writes inline on this
/// thread) or gone (the thread is ending).
fn write_through_scratch(
    mut io: Pin<&mut (dyn AsyncWrite + Send)>,
    cx: &mut std::task::Context<'_>,
    packets: &[Packet],
    framing: &Framing,
    leftover: &mut BytesMut,
) -> Result<bool, Status> {
    SCRATCH
        .try_with(|scratch| {
            let Ok(mut scratch) = scratch.try_borrow_mut() else {
                return Ok(false);
            };
            scratch.clear();
            framing.encode(packets, &mut scratch);
            let written = write_without_waiting(io.as_mut(), cx, &scratch)?;
            if written < scratch.len() {
                leftover.extend_from_slice(&scratch[written..]);
            }
            if scratch.capacity() > KEEP_WHILE_BUSY {
                *scratch = BytesMut::new();
            }
            Ok(true)
        })
        .unwrap_or(Ok(false))
}

/// Writes as much of `bytes` as `io` takes without waiting; how much that was.
fn write_without_waiting(
    mut io: Pin<&mut (dyn AsyncWrite + Send)>,
    cx: &mut std::task::Context<'_>,
    bytes: &[u8],
) -> Result<usize, Status> {
    let mut written = 0;
    while written < bytes.len() {
        match io.as_mut().poll_write(cx, &bytes[written..]) {
            std::task::Poll::Ready(Ok(0)) => {
                return Err(Status::network_error(
                    "the connection accepts no more bytes",
                ));
            }
            std::task::Poll::Ready(Ok(n)) => written += n,
            std::task::Poll::Ready(Err(e)) => return Err(e.into()),
            std::task::Poll::Pending => break,
        }
    }
    Ok(written)
}

/// Writes as much of `out` as `io` takes without waiting.
fn write_out_without_waiting(
    mut io: Pin<&mut (dyn AsyncWrite + Send)>,
    cx: &mut std::task::Context<'_>,
    out: &mut Outgoing,
) -> Result<(), Status> {
    while !out.is_empty() {
        match out.poll_write(io.as_mut(), cx) {
            std::task::Poll::Ready(Ok(0)) => {
                return Err(Status::network_error(
                    "the connection accepts no more bytes",
                ));
            }
            std::task::Poll::Ready(Ok(n)) => out.advance(n),
            std::task::Poll::Ready(Err(e)) => return Err(e.into()),
            std::task::Poll::Pending => break,
        }
    }
    Ok(())
}

/// Compresses `packets` as the next batch of the gzip stream and writes what `io` takes
/// without waiting, after anything already `pending`; the rest of the compressed bytes joins
/// `pending`. Once compressed the batch is part of the stream, so it is never given back.
#[cfg(feature = "gzip")]
fn compress_now(
    mut io: Pin<&mut (dyn AsyncWrite + Send)>,
    cx: &mut std::task::Context<'_>,
    packets: &[Packet],
    framing: &Framing,
    gzip: &mut GzipWriter,
    pending: &mut BytesMut,
) -> Result<(), Status> {
    let plain_from = pending.len();
    framing.encode(packets, pending);
    let wire = gzip.batch(&pending[plain_from..]);
    pending.truncate(plain_from);
    let written = match pending.is_empty() {
        true => write_without_waiting(io.as_mut(), cx, wire)?,
        false => 0,
    };
    pending.extend_from_slice(&wire[written..]);
    Ok(())
}

/// Writes all of `bytes`, failing when a write makes no progress for `stall`.
#[cfg(feature = "gzip")]
async fn write_stepped(
    mut io: Pin<&mut (dyn AsyncWrite + Send)>,
    bytes: &[u8],
    stall: Duration,
) -> Result<(), WriteError> {
    let mut written = 0;
    while written < bytes.len() {
        match step(stall, io.write(&bytes[written..])).await? {
            0 => {
                return Err(WriteError::Failed(Status::network_error(
                    "the connection accepts no more bytes",
                )));
            }
            n => written += n,
        }
    }
    Ok(())
}

/// Writes all of `out`, failing when a write makes no progress for `stall`.
async fn write_out_stepped(
    mut io: Pin<&mut (dyn AsyncWrite + Send)>,
    out: &mut Outgoing,
    stall: Duration,
) -> Result<(), WriteError> {
    while !out.is_empty() {
        let write = std::future::poll_fn(|cx| out.poll_write(io.as_mut(), cx));
        match step(stall, write).await? {
            0 => {
                return Err(WriteError::Failed(Status::network_error(
                    "the connection accepts no more bytes",
                )));
            }
            n => out.advance(n),
        }
    }
    Ok(())
}

/// Why a batch was not written.
#[derive(Debug)]
pub(crate) enum WriteError {
    /// No byte went out for this long: the peer reads nothing.
    Stalled(Duration),
    Failed(Status),
}

impl From<WriteError> for Status {
    fn from(error: WriteError) -> Status {
        match error {
            WriteError::Stalled(stall) => {
                Status::network_error(format!("the peer read nothing for {stall:?}"))
            }
            WriteError::Failed(status) => status,
        }
    }
}

/// One step of a write, which fails when it makes no progress for `stall`. Timing each step
/// rather than the whole batch lets a slow but steady peer receive a large packet.
pub(crate) async fn step<T, E: Into<Status>>(
    stall: Duration,
    step: impl Future<Output = Result<T, E>>,
) -> Result<T, WriteError> {
    let mut step = std::pin::pin!(step);
    // Most steps finish at once (the socket has room): they read no clock and arm no timer.
    let at_once = std::future::poll_fn(|cx| std::task::Poll::Ready(step.as_mut().poll(cx))).await;
    let result = match at_once {
        std::task::Poll::Ready(result) => result,
        std::task::Poll::Pending => match tokio::time::timeout(stall, step).await {
            Ok(result) => result,
            Err(_) => return Err(WriteError::Stalled(stall)),
        },
    };
    result.map_err(|e| WriteError::Failed(e.into()))
}

impl PacketWriter {
    /// Writes the packets in one buffer (with gzip, compressed and ended by one sync flush)
    /// and flushes once; fails when a write makes no progress for `stall`. What an inline
    /// write left in the buffer goes first.
    pub(crate) async fn write_batch(
        &mut self,
        packets: &[Packet],
        stall: Duration,
    ) -> Result<(), WriteError> {
        let PacketWriter {
            io,
            out,
            framing,
            #[cfg(feature = "gzip")]
            gzip,
        } = self;
        #[cfg(feature = "gzip")]
        let plain = match gzip {
            Some(gzip) => {
                // An inline write's leftover is compressed already: it goes as it is.
                write_out_stepped(io.as_mut(), out, stall).await?;
                if !packets.is_empty() {
                    framing.encode(packets, &mut out.buf);
                    let wire = gzip.batch(&out.buf);
                    write_stepped(io.as_mut(), wire, stall).await?;
                }
                false
            }
            None => true,
        };
        #[cfg(not(feature = "gzip"))]
        let plain = true;
        if plain {
            framing.encode_into(packets, out, io.is_write_vectored());
            write_out_stepped(io.as_mut(), out, stall).await?;
        }
        step(stall, io.flush()).await?;
        out.buf.clear();
        if out.buf.capacity() > KEEP_WHILE_BUSY {
            out.buf = BytesMut::new();
        }
        Ok(())
    }

    /// Gives back a write buffer larger than a connection keeps once nothing more is coming
    /// ([`KEEP_WRITE_BUFFER`]): after a batch, the writer task calls this unless the
    /// connection is busy, whose next batch then finds its buffer grown already.
    pub(crate) fn trim_buffer(&mut self) {
        if self.out.is_empty() && self.out.buf.capacity() > KEEP_WRITE_BUFFER {
            self.out.buf = BytesMut::new();
        }
    }

    /// Gives back the write buffer when it holds nothing: the connection has gone quiet, and
    /// its lone packets are encoded in the thread's scratch buffer. A burst's buffer is not
    /// kept for the connection's life.
    pub(crate) fn give_back_buffer(&mut self) {
        if self.out.is_empty() {
            self.out.buf = BytesMut::new();
        }
    }

    /// Writes the packets as far as the transport takes them without waiting, and flushes.
    /// Returns whether all of it went out; what did not stays buffered (with gzip, compressed)
    /// for the next [`write_batch`](Self::write_batch), which writes it first and flushes.
    pub(crate) fn write_now(&mut self, packets: &[Packet]) -> Result<bool, Status> {
        // A waker that does nothing: whatever is left, the writer task finishes with its own.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let PacketWriter {
            io,
            out,
            framing,
            #[cfg(feature = "gzip")]
            gzip,
        } = self;
        #[cfg(feature = "gzip")]
        let compressed = match gzip.as_deref_mut() {
            Some(gzip) => {
                // Compressed bytes are always copied: `out` holds them all in its buffer.
                compress_now(io.as_mut(), &mut cx, packets, framing, gzip, &mut out.buf)?;
                true
            }
            None => false,
        };
        #[cfg(not(feature = "gzip"))]
        let compressed = false;
        if !compressed {
            // A packet whose payload goes by reference skips the scratch buffer, which would
            // copy it.
            let vectored = io.is_write_vectored();
            let encoded_in_scratch = out.is_empty()
                && !(vectored && framing.borrows_from(packets))
                && write_through_scratch(io.as_mut(), &mut cx, packets, framing, &mut out.buf)?;
            if !encoded_in_scratch {
                framing.encode_into(packets, out, vectored);
            }
        }
        write_out_without_waiting(io.as_mut(), &mut cx, out)?;
        if !out.is_empty() {
            return Ok(false);
        }
        match io.as_mut().poll_flush(&mut cx) {
            std::task::Poll::Ready(Ok(())) => {}
            std::task::Poll::Ready(Err(e)) => return Err(e.into()),
            std::task::Poll::Pending => return Ok(false),
        }
        if out.buf.capacity() > KEEP_WRITE_BUFFER {
            out.buf = BytesMut::new();
        }
        Ok(true)
    }

    /// Ends the write side (the gzip trailer, then FIN on TCP; a Close frame on WebSocket).
    pub(crate) async fn shutdown(&mut self) {
        #[cfg(feature = "gzip")]
        if let Some(trailer) = self.gzip.as_mut().map(|gzip| gzip.finish()) {
            let _ = self.io.write_all(trailer).await;
        }
        #[cfg(feature = "ws")]
        if let Framing::WebSocket(frames) = &self.framing {
            // After what an inline write left, so that the Close comes last.
            frames.close(&mut self.out.buf);
            let _ = write_out_all(self.io.as_mut(), &mut self.out).await;
        }
        let _ = self.io.shutdown().await;
    }
}

/// Writes all of `out`, however long the peer takes.
#[cfg(feature = "ws")]
async fn write_out_all(
    mut io: Pin<&mut (dyn AsyncWrite + Send)>,
    out: &mut Outgoing,
) -> std::io::Result<()> {
    while !out.is_empty() {
        match std::future::poll_fn(|cx| out.poll_write(io.as_mut(), cx)).await? {
            0 => return Err(std::io::ErrorKind::WriteZero.into()),
            n => out.advance(n),
        }
    }
    Ok(())
}

/// A byte-stream transport: packets framed by [`PacketCodec`], optionally inside one gzip
/// stream per direction, whose inflation is bounded. `leftover` holds bytes read past the
/// handshake.
pub(crate) fn byte_stream<R, W>(
    reader: R,
    writer: W,
    leftover: BytesMut,
    limits: &ReadLimits,
    gzip: bool,
) -> (PacketStream, PacketWriter)
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + 'static,
{
    let (reader, writer) = (Counted::new(reader), Counted::new(writer));
    let codec = PacketCodec::with_limits(limits.wire).with_budget(limits.buffered.clone());
    #[cfg(feature = "gzip")]
    if gzip {
        let plain = BoundedGzip::new(reader, leftover, limits.inflation);
        let packets = PacketReader::new(plain, codec, BytesMut::new());
        return (
            Box::pin(packets),
            PacketWriter {
                io: Box::pin(writer),
                out: Outgoing::default(),
                framing: Framing::Stream,
                gzip: Some(Box::new(GzipWriter::new())),
            },
        );
    }
    // Without the feature gzip is never agreed on: the client does not ask for it and refuses a
    // server that picks it anyway.
    #[cfg(not(feature = "gzip"))]
    let _ = gzip;
    let packets = PacketReader::new(reader, codec, leftover);
    let io: BoxWrite = Box::pin(writer);
    (
        Box::pin(packets),
        PacketWriter {
            io,
            out: Outgoing::default(),
            framing: Framing::Stream,
            #[cfg(feature = "gzip")]
            gzip: None,
        },
    )
}

#[cfg(all(test, feature = "gzip"))]
mod tests {
    use bytes::Bytes;

    use super::super::tests::stream_writer;
    use super::*;
    use crate::wire::{Action, Header, Request};

    #[tokio::test]
    async fn gzip_batches_inflate_as_they_come_and_the_shutdown_ends_the_stream() {
        use std::io::Read as _;
        use tokio::io::AsyncReadExt as _;

        let (ours, mut peer) = tokio::io::duplex(64 << 10);
        let mut writer = gzip_writer(ours);
        let request = |mid| {
            Packet::Request(Request {
                mid,
                action: Action::Id(7),
                header: Header::new(),
                payload: Bytes::from_static(b"{\"room\":\"lobby\",\"text\":\"hello\"}"),
            })
        };
        let batches = [vec![request(1), Packet::Ping], vec![request(2)]];
        let mut plain = BytesMut::new();
        let mut wire = Vec::new();
        for batch in &batches {
            writer
                .write_batch(batch, Duration::from_secs(5))
                .await
                .unwrap();
            batch
                .iter()
                .for_each(|packet| packet.encode_stream(&mut plain));
            // A sync flush ends every batch: its bytes are on the wire before the next one.
            let mut chunk = vec![0; 4096];
            let n = peer.read(&mut chunk).await.unwrap();
            wire.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(&wire[..3], &[0x1f, 0x8b, 8], "a gzip member");

        let mut inflated = vec![0; plain.len()];
        flate2::read::GzDecoder::new(&wire[..])
            .read_exact(&mut inflated)
            .unwrap();
        assert_eq!(inflated, plain);

        // Shutting down ends the gzip stream: its trailer checks out.
        writer.shutdown().await;
        peer.read_to_end(&mut wire).await.unwrap();
        let mut whole = Vec::new();
        flate2::read::GzDecoder::new(&wire[..])
            .read_to_end(&mut whole)
            .unwrap();
        assert_eq!(whole, plain);
    }

    #[tokio::test]
    async fn a_gzip_stream_writes_inline_and_its_compressed_leftover_goes_first() {
        use std::io::Read as _;
        use tokio::io::AsyncReadExt as _;

        let packet = |mid| {
            Packet::Request(Request {
                mid,
                action: Action::Id(7),
                header: Header::new(),
                payload: Bytes::from(format!("{{\"n\":{mid},\"text\":\"hello\"}}")),
            })
        };
        // A transport that takes 20 bytes at once: the first inline write cannot go out whole.
        let (ours, mut peer) = tokio::io::duplex(20);
        let mut writer = gzip_writer(ours);
        let first = [packet(1), packet(2)];
        assert!(
            !writer.write_now(&first).unwrap(),
            "20 bytes went, the rest waits"
        );
        let left = write_buffer(&writer).len();
        assert!(left > 0);

        // The peer reads while the writer task's batch writes the leftover, then the next batch.
        let reading = tokio::spawn(async move {
            let mut wire = Vec::new();
            peer.read_to_end(&mut wire).await.unwrap();
            wire
        });
        let second = [packet(3)];
        writer
            .write_batch(&second, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(write_buffer(&writer).is_empty());
        // Inline again, now that nothing waits: it goes out whole.
        let third = [packet(4), Packet::Ping];
        assert!(writer.write_now(&third).unwrap());
        writer.shutdown().await;
        let wire = reading.await.unwrap();

        let mut plain = Vec::new();
        for packet in first.iter().chain(&second).chain(&third) {
            let mut encoded = BytesMut::new();
            packet.encode_stream(&mut encoded);
            plain.extend_from_slice(&encoded);
        }
        let mut inflated = Vec::new();
        flate2::read::GzDecoder::new(&wire[..])
            .read_to_end(&mut inflated)
            .unwrap();
        assert_eq!(
            inflated, plain,
            "every packet once, in order, in one gzip stream"
        );
    }

    fn gzip_writer(io: impl AsyncWrite + Send + 'static) -> PacketWriter {
        let limits = ReadLimits::default();
        byte_stream(tokio::io::empty(), io, BytesMut::new(), &limits, true).1
    }

    fn write_buffer(writer: &PacketWriter) -> &BytesMut {
        &writer.out.buf
    }

    #[tokio::test]
    async fn a_busy_connection_keeps_its_grown_write_buffer_until_it_is_trimmed() {
        let answer = |mid, len| {
            Packet::Response(crate::wire::Response {
                mid,
                status: crate::Code::Ok,
                header: Header::new(),
                payload: Bytes::from(vec![7; len]),
            })
        };
        let stall = Duration::from_secs(5);
        let mut writer = stream_writer(tokio::io::sink());
        let batch: Vec<Packet> = (1..=64).map(|mid| answer(mid, 1024)).collect();
        writer.write_batch(&batch, stall).await.unwrap();
        let grown = write_buffer(&writer).capacity();
        assert!(grown > KEEP_WRITE_BUFFER, "64 answers of 1 KiB: {grown} B");
        writer.write_batch(&batch, stall).await.unwrap();
        assert_eq!(
            write_buffer(&writer).capacity(),
            grown,
            "the next batch finds the buffer as it was"
        );

        writer.trim_buffer();
        assert_eq!(write_buffer(&writer).capacity(), 0, "quiet: given back");

        // Answers just small enough to be copied, more of them than a busy connection keeps.
        let copied = BORROW_FROM - 1;
        let huge: Vec<Packet> = (1..=(KEEP_WHILE_BUSY / copied + 1) as u16)
            .map(|mid| answer(mid, copied))
            .collect();
        writer.write_batch(&huge, stall).await.unwrap();
        assert_eq!(
            write_buffer(&writer).capacity(),
            0,
            "a batch over what a busy connection keeps is given back at once"
        );
    }

    #[tokio::test]
    async fn an_inline_write_that_goes_out_whole_leaves_no_write_buffer_and_one_that_does_not_keeps_the_rest()
     {
        use tokio::io::AsyncReadExt as _;

        let event = Packet::Request(Request {
            mid: 1,
            action: Action::Id(7),
            header: Header::new(),
            payload: Bytes::from(vec![5; 100]),
        });
        let mut encoded = BytesMut::new();
        event.encode_stream(&mut encoded);

        let (ours, mut peer) = tokio::io::duplex(64 << 10);
        let mut writer = stream_writer(ours);
        assert!(writer.write_now(std::slice::from_ref(&event)).unwrap());
        assert_eq!(write_buffer(&writer).capacity(), 0, "nothing kept");
        let mut got = vec![0; encoded.len()];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, encoded);

        // A transport that takes 40 bytes: the rest waits in the connection's buffer.
        let (ours, mut peer) = tokio::io::duplex(40);
        let mut writer = stream_writer(ours);
        assert!(!writer.write_now(std::slice::from_ref(&event)).unwrap());
        assert_eq!(&write_buffer(&writer)[..], &encoded[40..]);
        let mut got = vec![0; 40];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, encoded[..40]);
    }

    /// Takes every write whole and counts the writes; no vectored writes, as quinn's streams.
    #[derive(Clone, Default)]
    struct OneBufferAtATime(std::sync::Arc<std::sync::Mutex<Vec<usize>>>);

    impl AsyncWrite for OneBufferAtATime {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.0.lock().unwrap().push(buf.len());
            std::task::Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_transport_without_vectored_writes_gets_each_large_packet_in_one_write() {
        let packet = |mid| {
            Packet::Request(Request {
                mid,
                action: Action::Id(7),
                header: Header::new(),
                payload: Bytes::from(vec![3; 4 * BORROW_FROM]),
            })
        };
        let whole = packet(1).encoded_stream_len();
        let io = OneBufferAtATime::default();
        let mut writer = stream_writer(io.clone());
        assert!(writer.write_now(&[packet(1)]).unwrap());
        writer
            .write_batch(&[packet(2), packet(3)], Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(*io.0.lock().unwrap(), [whole, 2 * whole]);
    }

    #[tokio::test]
    async fn a_large_event_that_slow_peers_cannot_take_yet_waits_as_one_shared_buffer() {
        use tokio::io::AsyncReadExt as _;

        let payload = Bytes::from(vec![9; 1 << 20]);
        let event = Packet::Notify(crate::wire::Notify {
            action: Action::Id(7),
            header: Header::new(),
            payload: payload.clone(),
        });
        let mut encoded = BytesMut::new();
        event.encode_stream(&mut encoded);

        let mut peers = Vec::new();
        for _ in 0..8 {
            let (ours, peer) = tokio::io::duplex(4 << 10);
            let mut writer = stream_writer(ours);
            assert!(!writer.write_now(std::slice::from_ref(&event)).unwrap());
            assert!(
                writer.out.holds_by_reference(&payload),
                "the rest of the event is the event's own buffer"
            );
            let kept = write_buffer(&writer).capacity();
            assert!(kept < BORROW_FROM, "{kept} B copied for one connection");
            peers.push((writer, peer));
        }
        for (mut writer, mut peer) in peers {
            let finish = writer.write_batch(&[], Duration::from_secs(5));
            let mut got = vec![0; encoded.len()];
            let (written, read) = tokio::join!(finish, peer.read_exact(&mut got));
            written.unwrap();
            read.unwrap();
            assert!(got == encoded[..], "every peer gets the whole event");
        }
    }
}
