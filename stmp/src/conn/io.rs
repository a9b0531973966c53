//! Thin glue between a transport and the engine: a stream of decoded packets in, batches of
//! packets out. Byte streams (TCP, TLS, QUIC) and WebSocket messages are the two shapes.

#[cfg(feature = "gzip")]
mod deflate;
mod inflate;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::FramedRead;

use crate::Status;
use crate::telemetry::Counted;
#[cfg(feature = "ws")]
use crate::transport::ws::WsWriter;
use crate::wire::{BufferBudget, Limits, Packet, PacketCodec};
#[cfg(feature = "gzip")]
use deflate::Deflater;
#[cfg(feature = "gzip")]
use inflate::BoundedGzip;
pub(crate) use inflate::InflationLimit;

/// Decoded packets from the peer; the stream ends when the transport does.
pub(crate) type PacketStream = Pin<Box<dyn Stream<Item = Result<Packet, Status>> + Send>>;

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

/// Where the engine writes packets.
pub(crate) enum PacketWriter {
    Stream {
        io: BoxWrite,
        buf: BytesMut,
        /// The gzip stream the batches go out in, when agreed on.
        #[cfg(feature = "gzip")]
        gzip: Option<Box<Deflater>>,
    },
    #[cfg(feature = "ws")]
    WebSocket(WsWriter),
}

/// The read buffer a byte stream reads into. Idle connections are the common case on a
/// real-time server, so it is small and given back while the connection waits with nothing
/// buffered ([`IdleReleasing`]); the decoder reserves what a large packet needs.
const READ_BUFFER: usize = 2 << 10;

/// The bytes of the write buffer kept between batches; a larger one is given back.
const KEEP_WRITE_BUFFER: usize = 64 << 10;

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
    /// and flushes once; fails when a write makes no progress for `stall`.
    pub(crate) async fn write_batch(
        &mut self,
        packets: &[Packet],
        stall: Duration,
    ) -> Result<(), WriteError> {
        match self {
            PacketWriter::Stream {
                io,
                buf,
                #[cfg(feature = "gzip")]
                gzip,
            } => {
                for packet in packets {
                    packet.encode_stream(buf);
                }
                #[cfg(feature = "gzip")]
                let wire = match gzip {
                    Some(gzip) => gzip.batch(buf).map_err(WriteError::Failed)?,
                    None => &buf[..],
                };
                #[cfg(not(feature = "gzip"))]
                let wire = &buf[..];
                let mut written = 0;
                while written < wire.len() {
                    match step(stall, io.write(&wire[written..])).await? {
                        0 => {
                            return Err(WriteError::Failed(Status::network_error(
                                "the connection accepts no more bytes",
                            )));
                        }
                        n => written += n,
                    }
                }
                step(stall, io.flush()).await?;
                buf.clear();
                if buf.capacity() > KEEP_WRITE_BUFFER {
                    *buf = BytesMut::new();
                }
            }
            #[cfg(feature = "ws")]
            PacketWriter::WebSocket(ws) => ws.write_batch(packets, stall).await?,
        }
        Ok(())
    }

    /// Ends the write side (the gzip trailer, then FIN on TCP; a Close frame on WebSocket).
    pub(crate) async fn shutdown(&mut self) {
        match self {
            PacketWriter::Stream {
                io,
                #[cfg(feature = "gzip")]
                gzip,
                ..
            } => {
                #[cfg(feature = "gzip")]
                if let Some(Ok(trailer)) = gzip.as_mut().map(|gzip| gzip.finish()) {
                    let _ = io.write_all(trailer).await;
                }
                let _ = io.shutdown().await;
            }
            #[cfg(feature = "ws")]
            PacketWriter::WebSocket(ws) => ws.shutdown().await,
        }
    }
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
        let packets = FramedRead::with_capacity(plain, codec, READ_BUFFER);
        return (
            Box::pin(IdleReleasing(packets)),
            PacketWriter::Stream {
                io: Box::pin(writer),
                buf: BytesMut::new(),
                gzip: Some(Box::new(Deflater::new())),
            },
        );
    }
    // Without the feature gzip is never agreed on: the client does not ask for it and refuses a
    // server that picks it anyway.
    #[cfg(not(feature = "gzip"))]
    let _ = gzip;
    let mut packets = FramedRead::with_capacity(reader, codec, READ_BUFFER);
    packets.read_buffer_mut().extend_from_slice(&leftover);
    let io: BoxWrite = Box::pin(writer);
    (
        Box::pin(IdleReleasing(packets)),
        PacketWriter::Stream {
            io,
            buf: BytesMut::new(),
            #[cfg(feature = "gzip")]
            gzip: None,
        },
    )
}

/// A byte stream's packets, whose read buffer is given back whenever the connection waits
/// with nothing buffered and taken again when bytes come: an idle connection then holds no
/// read buffer (2 KiB of its memory), and a busy one pays an allocation per wake-up.
struct IdleReleasing<R>(FramedRead<R, PacketCodec>);

impl<R: AsyncRead + Unpin> Stream for IdleReleasing<R> {
    type Item = Result<Packet, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let packets = &mut self.0;
        if packets.read_buffer().capacity() == 0 {
            // Not left to the reader, which would reserve a single byte.
            packets.read_buffer_mut().reserve(READ_BUFFER);
        }
        let polled = Pin::new(&mut *packets).poll_next(cx);
        if polled.is_pending() && packets.read_buffer().is_empty() {
            *packets.read_buffer_mut() = BytesMut::new();
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use std::task::{Context, Waker};

    use bytes::Bytes;
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::wire::{Action, Header, Request};

    #[cfg(feature = "gzip")]
    #[tokio::test]
    async fn gzip_batches_inflate_as_they_come_and_the_shutdown_ends_the_stream() {
        use std::io::Read as _;
        use tokio::io::AsyncReadExt as _;

        let (ours, mut peer) = tokio::io::duplex(64 << 10);
        let (_, mut writer) = byte_stream(
            tokio::io::empty(),
            ours,
            BytesMut::new(),
            &ReadLimits::default(),
            true,
        );
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
    async fn the_read_buffer_is_given_back_while_waiting_with_nothing_buffered() {
        let (mut peer, ours) = tokio::io::duplex(64 << 10);
        let codec = PacketCodec::with_limits(Limits::default());
        let mut packets = IdleReleasing(FramedRead::with_capacity(ours, codec, READ_BUFFER));
        let waiting = |packets: &mut IdleReleasing<_>| {
            let mut cx = Context::from_waker(Waker::noop());
            assert!(packets.poll_next_unpin(&mut cx).is_pending());
            packets.0.read_buffer().capacity()
        };
        assert_eq!(waiting(&mut packets), 0, "nothing read yet, nothing held");

        let mut request = BytesMut::new();
        Packet::Request(Request {
            mid: 1,
            action: Action::Id(7),
            header: Header::new(),
            payload: Bytes::from_static(&[1; 100]),
        })
        .encode_stream(&mut request);
        let mut bytes = BytesMut::new();
        Packet::Ping.encode_stream(&mut bytes);
        bytes.extend_from_slice(&request[..50]);
        peer.write_all(&bytes).await.unwrap();
        assert_eq!(packets.next().await.unwrap().unwrap(), Packet::Ping);
        assert!(
            waiting(&mut packets) >= 50,
            "half a packet is buffered: kept"
        );
        peer.write_all(&request[50..]).await.unwrap();
        match packets.next().await.unwrap().unwrap() {
            Packet::Request(request) => assert_eq!(request.payload.len(), 100),
            other => panic!("not the request: {other:?}"),
        }
        assert_eq!(waiting(&mut packets), 0, "idle again: given back");
        peer.write_all(&[0x90]).await.unwrap();
        assert_eq!(packets.next().await.unwrap().unwrap(), Packet::Pong);
    }
}
