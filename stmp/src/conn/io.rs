//! Thin glue between a transport and the engine: a stream of decoded packets in, batches of
//! packets out. Byte streams (TCP, TLS, QUIC) and WebSocket messages are the two shapes.

mod inflate;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_compression::tokio::write::GzipEncoder;
use bytes::{Bytes, BytesMut};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_util::codec::FramedRead;

use crate::Status;
use crate::telemetry::Counted;
use crate::wire::{BufferBudget, Limits, Packet, PacketCodec};
use inflate::BoundedGzip;
pub(crate) use inflate::InflationLimit;

/// Decoded packets from the peer; the stream ends when the transport does.
pub(crate) type PacketStream = Pin<Box<dyn Stream<Item = Result<Packet, Status>> + Send>>;

type BoxWrite = Pin<Box<dyn AsyncWrite + Send>>;
type WsSink = Pin<Box<dyn Sink<WsMessage, Error = tungstenite::Error> + Send>>;

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
    pub(crate) inflation: InflationLimit,
}

/// Where the engine writes packets.
pub(crate) enum PacketWriter {
    Stream { io: BoxWrite, buf: BytesMut },
    WebSocket { sink: WsSink, format: PacketFormat },
}

/// The read buffer a byte stream starts with. Idle connections are the common case on a
/// real-time server, so it starts small; the decoder reserves what a large packet needs.
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
async fn step<T, E: Into<Status>>(
    stall: Duration,
    step: impl Future<Output = Result<T, E>>,
) -> Result<T, WriteError> {
    match tokio::time::timeout(stall, step).await {
        Ok(result) => result.map_err(|e| WriteError::Failed(e.into())),
        Err(_) => Err(WriteError::Stalled(stall)),
    }
}

impl PacketWriter {
    /// Writes the packets and flushes once (with gzip, one sync flush per batch); fails when
    /// a write makes no progress for `stall`.
    pub(crate) async fn write_batch(
        &mut self,
        packets: &[Packet],
        stall: Duration,
    ) -> Result<(), WriteError> {
        match self {
            PacketWriter::Stream { io, buf } => {
                for packet in packets {
                    packet.encode_stream(buf);
                }
                let mut written = 0;
                while written < buf.len() {
                    match step(stall, io.write(&buf[written..])).await? {
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
            PacketWriter::WebSocket { sink, format } => {
                for packet in packets {
                    let mut out = BytesMut::new();
                    let message = match format {
                        PacketFormat::Binary => {
                            packet.encode_message(&mut out);
                            WsMessage::Binary(out.freeze())
                        }
                        PacketFormat::Text => {
                            packet.encode_text(&mut out);
                            text_message(out.freeze()).map_err(WriteError::Failed)?
                        }
                    };
                    crate::telemetry::bytes_sent(message.len());
                    step(stall, async { sink.feed(message).await.map_err(ws_error) }).await?;
                }
                step(stall, async { sink.flush().await.map_err(ws_error) }).await?;
            }
        }
        Ok(())
    }

    /// Ends the write side (FIN on TCP, a Close frame on WebSocket).
    pub(crate) async fn shutdown(&mut self) {
        match self {
            PacketWriter::Stream { io, .. } => {
                let _ = io.shutdown().await;
            }
            PacketWriter::WebSocket { sink, .. } => {
                let _ = sink.close().await;
            }
        }
    }
}

fn text_message(bytes: Bytes) -> Result<WsMessage, Status> {
    tungstenite::Utf8Bytes::try_from(bytes)
        .map(WsMessage::Text)
        .map_err(|_| Status::bad_request("text packets need UTF-8 payloads (use the JSON codec)"))
}

pub(crate) fn ws_error(error: tungstenite::Error) -> Status {
    Status::network_error(format!("websocket: {error}"))
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
    if gzip {
        let compressed = BufReader::new(std::io::Cursor::new(leftover).chain(reader));
        let plain = BoundedGzip::new(compressed, limits.inflation);
        let packets = FramedRead::with_capacity(plain, codec, READ_BUFFER);
        let io: BoxWrite = Box::pin(GzipEncoder::new(writer));
        (
            Box::pin(packets),
            PacketWriter::Stream {
                io,
                buf: BytesMut::new(),
            },
        )
    } else {
        let mut packets = FramedRead::with_capacity(reader, codec, READ_BUFFER);
        packets.read_buffer_mut().extend_from_slice(&leftover);
        let io: BoxWrite = Box::pin(writer);
        (
            Box::pin(packets),
            PacketWriter::Stream {
                io,
                buf: BytesMut::new(),
            },
        )
    }
}

/// A WebSocket transport: one packet per message. Text packets are accepted in binary
/// messages too, as the Go server sends them that way.
pub(crate) fn websocket<S>(
    socket: S,
    format: PacketFormat,
    limits: Limits,
) -> (PacketStream, PacketWriter)
where
    S: Stream<Item = Result<WsMessage, tungstenite::Error>>
        + Sink<WsMessage, Error = tungstenite::Error>
        + Send
        + 'static,
{
    let (sink, stream) = socket.split();
    let packets = stream
        .inspect(|message| {
            crate::telemetry::bytes_received(message.as_ref().map_or(0, WsMessage::len))
        })
        .take_while(|message| std::future::ready(!matches!(message, Ok(WsMessage::Close(_)))))
        .filter_map(move |message| {
            std::future::ready(match message {
                Ok(WsMessage::Binary(bytes)) if format == PacketFormat::Binary => {
                    Some(Packet::decode_message(bytes, limits))
                }
                Ok(WsMessage::Binary(bytes)) => Some(Packet::decode_text(bytes, limits)),
                Ok(WsMessage::Text(text)) => Some(Packet::decode_text(Bytes::from(text), limits)),
                Ok(_) => None,
                Err(error) => Some(Err(ws_error(error))),
            })
        });
    (
        Box::pin(packets),
        PacketWriter::WebSocket {
            sink: Box::pin(sink),
            format,
        },
    )
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};

    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::*;
    use crate::wire::{Action, Header, Notify};

    /// A socket that reads nothing yet and counts the writes that reach it.
    #[derive(Clone, Default)]
    struct CountingSocket(Arc<Mutex<(usize, usize)>>);

    impl AsyncRead for CountingSocket {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for CountingSocket {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let mut counts = self.0.lock().unwrap();
            counts.0 += 1;
            counts.1 += buf.len();
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_websocket_batch_of_small_packets_leaves_in_one_write() {
        let socket = CountingSocket::default();
        let config = crate::server::ws::ws_config(1 << 20);
        let ws = WebSocketStream::from_raw_socket(socket.clone(), Role::Server, Some(config)).await;
        let (_packets, mut writer) = websocket(ws, PacketFormat::Binary, Limits::default());
        let batch: Vec<Packet> = (0..32)
            .map(|_| {
                Packet::Notify(Notify {
                    action: Action::Id(7),
                    header: Header::new(),
                    payload: Bytes::from_static(&[0x5A; 32]),
                })
            })
            .collect();
        writer
            .write_batch(&batch, Duration::from_secs(5))
            .await
            .unwrap();
        let (writes, bytes) = *socket.0.lock().unwrap();
        assert!(bytes > 32 * 32, "{bytes} bytes for 32 packets of 32 bytes");
        assert_eq!(writes, 1, "{writes} writes for one batch");
    }
}
