//! WebSocket: the client's handshake rides on the upgrade request's query (and headers); the
//! server answers with its handshake as the first message.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

use super::Farewell;
use crate::client::ClientBuilder;
use crate::client::dial::{Dialed, chosen_codec, client_header, ready};
use crate::client::endpoint::{Endpoint, Scheme};
use crate::conn::PacketFormat;
use crate::conn::io::{
    LookingAhead, MIN_READ_AHEAD, PacketStream, PacketWriter, ReadAheadStream, WriteError, step,
};
use crate::server::{Refusal, Slot, Transport};
use crate::wire::{Header, Limits, Packet, ServerHandshake, Version};
use crate::{Server, Status};

/// Header keys of the upgrade request that are part of the stmp handshake (HTTP headers are
/// case-insensitive, stmp headers are not: these are mapped to their stmp spelling).
const HTTP_KEYS: [&str; 4] = ["Accept", "Accept-Encoding", "Packet-Format", "Stmp-Version"];

/// The frames tungstenite gathers before it writes them to the socket. The engine flushes once
/// per batch, so this is what lets a batch of small packets leave in one write instead of one
/// syscall per message; the buffer only grows to what a batch holds.
const WS_WRITE_BUFFER: usize = 64 << 10;

pub(crate) fn ws_config(max_packet_size: usize) -> WebSocketConfig {
    // tungstenite's read buffer is allocated with the connection and kept for its life: at
    // 4 KiB, an idle WebSocket connection took 11.9 KiB, at this size 10.0. A busy connection
    // reads ahead below it (`ReadAheadStream`), and a read that asks for at least the
    // read-ahead's floor, as a lone message's does at this size, goes straight to the socket.
    // The limits keep a message within a packet.
    WebSocketConfig::default()
        .read_buffer_size(MIN_READ_AHEAD)
        .write_buffer_size(WS_WRITE_BUFFER)
        .max_message_size(Some(max_packet_size + 64))
        .max_frame_size(Some(max_packet_size + 64))
}

/// The stmp handshake of a WebSocket upgrade: query parameters, then the HTTP headers (the
/// known ones in their stmp spelling, the others by their lower-case name), each key the
/// query does not have. Applications send their entries (tokens…) as headers, out of URLs.
/// The result is held to the header limits, as a binary handshake's header is; the query is
/// checked before it is parsed.
pub(crate) fn handshake_from_request(request: &Request, limits: &Limits) -> Result<Header, Status> {
    let mut header = Header::new();
    if let Some(query) = request.uri().query() {
        if query.len() > limits.max_header_size {
            return Err(Status::request_entity_too_large(format!(
                "handshake query of {} bytes is over the header limit of {} bytes",
                query.len(),
                limits.max_header_size
            )));
        }
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            if header.len() == limits.max_header_entries {
                return Err(Status::request_entity_too_large(format!(
                    "handshake query has more than {} entries",
                    limits.max_header_entries
                )));
            }
            header.append(key, value);
        }
    }
    let from_query: Vec<String> = header.iter().map(|(k, _)| k.to_owned()).collect();
    for (name, value) in request.headers() {
        let key = HTTP_KEYS
            .into_iter()
            .find(|known| name.as_str().eq_ignore_ascii_case(known))
            .unwrap_or(name.as_str());
        if !from_query.iter().any(|k| k == key)
            && let Ok(value) = value.to_str()
        {
            header.append(key, value);
        }
    }
    if header.len() > limits.max_header_entries {
        return Err(Status::request_entity_too_large(format!(
            "handshake has {} entries, over the limit of {}",
            header.len(),
            limits.max_header_entries
        )));
    }
    let size = header.encoded_len();
    if size > limits.max_header_size {
        return Err(Status::request_entity_too_large(format!(
            "handshake header of {size} bytes is over the limit of {} bytes",
            limits.max_header_size
        )));
    }
    Ok(header)
}

/// An accepted socket of a WebSocket listener on `path`, from its admission to the end of its
/// connection.
pub(crate) async fn serve_ws(
    server: Server,
    path: Arc<str>,
    stream: TcpStream,
    remote: SocketAddr,
    admitted: Result<Slot, Refusal>,
) {
    match admitted {
        Ok(slot) => {
            server
                .serve_websocket(stream, remote, &path, "ws", slot)
                .await
        }
        Err(refusal) => {
            let open = std::future::ready(Ok(stream));
            server.turn_away(open, refusal, Farewell::Http).await;
        }
    }
}

/// An accepted socket of a WebSocket-over-TLS listener on `path`, from its admission to the
/// end of its connection.
#[cfg(feature = "tls")]
pub(crate) async fn serve_wss(
    server: Server,
    acceptor: tokio_rustls::TlsAcceptor,
    path: Arc<str>,
    stream: TcpStream,
    remote: SocketAddr,
    admitted: Result<Slot, Refusal>,
) {
    let admitted = super::tls::admit(&server, &acceptor, stream, remote, admitted, Farewell::Http);
    let Some((tls, slot)) = admitted.await else {
        return;
    };
    server
        .serve_websocket(tls, remote, &path, "wss", slot)
        .await
}

fn version_of(header: &Header) -> Result<Version, Status> {
    match header.get("Stmp-Version") {
        None => Ok(Version::V1_0),
        Some(text) => {
            let (major, minor) = text.split_once('.').unwrap_or((text, "0"));
            match (major.parse::<u8>(), minor.parse::<u8>()) {
                (Ok(major), Ok(minor)) if major < 16 && minor < 16 => Ok(Version { major, minor }),
                _ => Err(Status::bad_request(format!("bad Stmp-Version: {text}"))),
            }
        }
    }
}

impl Server {
    /// Listens for WebSocket upgrades on `path` (other paths get 404).
    pub async fn listen_ws(
        &self,
        addr: impl ToSocketAddrs,
        path: &str,
    ) -> Result<SocketAddr, Status> {
        let path: Arc<str> = Arc::from(path);
        self.listen(addr, move |server, stream, remote, admitted| {
            serve_ws(server, path.clone(), stream, remote, admitted)
        })
        .await
    }

    /// Listens for WebSocket over TLS on `path`.
    #[cfg(feature = "tls")]
    pub async fn listen_wss(
        &self,
        addr: impl ToSocketAddrs,
        path: &str,
        tls: Arc<rustls::ServerConfig>,
    ) -> Result<SocketAddr, Status> {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let path: Arc<str> = Arc::from(path);
        self.listen(addr, move |server, stream, remote, admitted| {
            serve_wss(
                server,
                acceptor.clone(),
                path.clone(),
                stream,
                remote,
                admitted,
            )
        })
        .await
    }

    pub(crate) async fn serve_websocket<S>(
        &self,
        stream: S,
        remote: SocketAddr,
        path: &str,
        transport: &'static str,
        mut slot: Slot,
    ) where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let config = &self.inner.config;
        let limits = config.wire_limits();
        let mut header = None;
        // The callback's error type is tungstenite's; its size is not ours to choose.
        #[allow(clippy::result_large_err)]
        let callback = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
            if request.uri().path() != path {
                let mut refusal = ErrorResponse::new(Some(format!(
                    "no stmp endpoint at {}",
                    request.uri().path()
                )));
                *refusal.status_mut() = StatusCode::NOT_FOUND;
                return Err(refusal);
            }
            header = Some(handshake_from_request(request, &limits));
            Ok(response)
        };
        // Boxed for the handshake only: its nested states each hold the socket, and inline
        // they would size this task for the connection's whole life (0.2 KiB of an idle
        // WebSocket connection's 12).
        let upgrade = Box::pin(tokio_tungstenite::accept_hdr_async_with_config(
            ReadAheadStream::new(stream),
            callback,
            Some(ws_config(config.max_packet_size)),
        ));
        let mut socket = match tokio::time::timeout(config.handshake_timeout, upgrade).await {
            Ok(Ok(socket)) => socket,
            Ok(Err(error)) => return tracing::debug!(%remote, %error, "websocket upgrade failed"),
            Err(_) => return tracing::debug!(%remote, "websocket upgrade timed out"),
        };
        let header = header.unwrap_or_else(|| Ok(Header::new()));
        // A refusal can only be sent in the format the client asked for if we know it.
        let text = header.as_ref().is_ok_and(|header| {
            header
                .get("Packet-Format")
                .or_else(|| header.get("Accept-Packet-Format"))
                .is_some_and(|f| f.eq_ignore_ascii_case("text"))
        });
        let established = match header.and_then(|header| Ok((version_of(&header)?, header))) {
            Ok((version, header)) => {
                self.establish(version, header, Transport::WebSocket, remote, transport)
                    .await
            }
            Err(status) => Err(status),
        };
        let (conn, outbox, agreement) = match established {
            Ok(established) => established,
            Err(status) => {
                crate::telemetry::handshake_refused(&status);
                let _ = socket
                    .send(handshake_message(&ServerHandshake::refuse(&status), text))
                    .await;
                let _ = socket.close(None).await;
                return;
            }
        };
        let format = agreement.format;
        let hello = ServerHandshake::ok(agreement.header);
        if socket
            .send(handshake_message(&hello, format == PacketFormat::Text))
            .await
            .is_err()
        {
            conn.mark_closed(&Status::network_error(
                "connection lost during the handshake",
            ));
            return;
        }
        slot.handshaken();
        let (packets, writer) = websocket(socket, format, limits);
        self.run(conn, outbox, packets, writer).await;
        // The slot is held until the connection's socket is gone.
        drop(slot);
    }
}

/// The server handshake as a WebSocket message: binary form in a binary message, text form
/// in a text message.
pub(crate) fn handshake_message(handshake: &ServerHandshake, text: bool) -> WsMessage {
    let mut out = BytesMut::new();
    if text {
        handshake.encode_text(&mut out);
        match String::from_utf8(out.to_vec()) {
            Ok(text) => WsMessage::text(text),
            Err(_) => WsMessage::Binary(out.freeze()),
        }
    } else {
        handshake.encode(&mut out);
        WsMessage::Binary(out.freeze())
    }
}

/// The status of a refused WebSocket upgrade: a server over its limits answers 503 (or a
/// proxy 429), which is worth retrying; anything else means there is no stmp endpoint there.
fn http_refusal(
    response: &tokio_tungstenite::tungstenite::http::Response<Option<Vec<u8>>>,
) -> Status {
    let code = response.status();
    let body = response
        .body()
        .as_deref()
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    let message = format!(
        "websocket upgrade refused with HTTP {code}: {}",
        body.trim()
    );
    match code.as_u16() {
        429 | 503 => Status::too_many_requests(message),
        _ => Status::not_found(message),
    }
}

/// The protocol's part of the client's handshake, as the upgrade request's query. The
/// application's entries (tokens…) go in the request's HTTP headers instead: URLs end up in
/// access logs and proxies.
fn websocket_query(config: &ClientBuilder) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("Stmp-Version", "1.0");
    for (key, value) in client_header(config)
        .iter()
        .filter(|(k, _)| *k != "Accept-Encoding" && !config.header.contains_key(k))
    {
        query.append_pair(key, value);
    }
    if config.format == PacketFormat::Text {
        query.append_pair("Packet-Format", "text");
    }
    query.finish()
}

/// Upgrades `stream` to a WebSocket and runs the stmp handshake on it.
pub(crate) async fn connect<S>(
    stream: S,
    endpoint: &Endpoint,
    remote: Option<std::net::SocketAddr>,
    config: &ClientBuilder,
) -> Result<Dialed, Status>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let query = websocket_query(config);
    let separator = if endpoint.path.contains('?') {
        '&'
    } else {
        '?'
    };
    let scheme = if endpoint.scheme == Scheme::Wss {
        "wss"
    } else {
        "ws"
    };
    let url = format!(
        "{scheme}://{}{}{separator}{}",
        endpoint.authority(),
        endpoint.path,
        query
    );
    let mut request = url
        .into_client_request()
        .map_err(|e| Status::bad_request(format!("bad websocket url: {e}")))?;
    for (key, value) in config.header.iter() {
        let bad = |e: &dyn std::fmt::Display| {
            Status::bad_request(format!(
                "handshake header {key:?} cannot be sent over HTTP: {e}"
            ))
        };
        let name = HeaderName::from_bytes(key.as_bytes()).map_err(|e| bad(&e))?;
        let value = HeaderValue::from_str(value).map_err(|e| bad(&e))?;
        request.headers_mut().append(name, value);
    }
    let (mut socket, _) = tokio_tungstenite::client_async_with_config(
        request,
        ReadAheadStream::new(stream),
        Some(ws_config(config.max_packet_size)),
    )
    .await
    .map_err(|e| match e {
        tokio_tungstenite::tungstenite::Error::Http(response) => http_refusal(&response),
        other => ws_error(other),
    })?;
    let hello = loop {
        match socket.next().await {
            Some(Ok(WsMessage::Binary(bytes))) => {
                break if bytes.starts_with(crate::wire::MAGIC)
                    && bytes.get(4).is_some_and(|b| !b.is_ascii_hexdigit())
                {
                    ServerHandshake::decode_message(&bytes, config.max_packet_size)?
                } else {
                    ServerHandshake::decode_text(&bytes, config.max_packet_size)?
                };
            }
            Some(Ok(WsMessage::Text(text))) => {
                break ServerHandshake::decode_text(text.as_bytes(), config.max_packet_size)?;
            }
            Some(Ok(WsMessage::Close(_))) | None => {
                return Err(Status::network_error(
                    "the server closed the websocket during the handshake",
                ));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(ws_error(e)),
        }
    };
    if let Some(refusal) = hello.error() {
        return Err(refusal);
    }
    let codec = chosen_codec(&hello, config)?;
    let format = match hello.header.get("Packet-Format") {
        Some(f) if f.eq_ignore_ascii_case("text") => PacketFormat::Text,
        _ => PacketFormat::Binary,
    };
    let (packets, writer) = websocket(socket, format, Limits::from(config.max_packet_size));
    Ok(ready(
        config,
        remote,
        endpoint.scheme.name(),
        hello,
        codec,
        packets,
        writer,
    ))
}

thread_local! {
    /// Where a message is encoded when the sink takes it at once. The sink copies it into
    /// tungstenite's frame buffer by the next `poll_ready` or flush, which frees these bytes
    /// for the next message: a batch, or a broadcast over thousands of connections, allocates
    /// no message of its own. A message that has to wait ([`WsWriter::unsent`]) gets its own
    /// bytes instead, so that it does not hold on to the buffer.
    static MESSAGE_SCRATCH: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// After a message longer than this the scratch buffer starts afresh: the buffer that message
/// grew would otherwise be kept for the thread's life, and held whole by a message that waits.
const KEEP_MESSAGE_SCRATCH: usize = 4 << 10;

/// Where the engine writes a WebSocket connection's packets: one message each.
pub(crate) struct WsWriter {
    sink: WsSink,
    format: PacketFormat,
    /// Messages an inline write could not hand to the sink at once (the reader held the
    /// socket, or the socket was full): the writer task sends them before anything else.
    unsent: VecDeque<WsMessage>,
}

type WsSink = Pin<Box<dyn Sink<WsMessage, Error = tungstenite::Error> + Send>>;

impl WsWriter {
    fn new(sink: WsSink, format: PacketFormat) -> Self {
        WsWriter {
            sink,
            format,
            unsent: VecDeque::new(),
        }
    }

    /// `packet`'s message in bytes of its own, for a message that may have to wait.
    fn message(&self, packet: &Packet) -> Result<WsMessage, Status> {
        self.encode(packet, &mut BytesMut::new())
    }

    /// `packet`'s message for a sink that is ready: encoded in this thread's scratch buffer
    /// when that can be had ([`MESSAGE_SCRATCH`]), in bytes of its own otherwise.
    fn message_now(&self, packet: &Packet) -> Result<WsMessage, Status> {
        MESSAGE_SCRATCH
            .try_with(|scratch| {
                let mut scratch = scratch.try_borrow_mut().ok()?;
                let message = self.encode(packet, &mut scratch);
                if message
                    .as_ref()
                    .is_ok_and(|m| m.len() > KEEP_MESSAGE_SCRATCH)
                {
                    *scratch = BytesMut::new();
                }
                Some(message)
            })
            .ok()
            .flatten()
            .unwrap_or_else(|| self.message(packet))
    }

    /// Encodes `packet` into `out` and splits it off as a message; `out` keeps its spare room.
    fn encode(&self, packet: &Packet, out: &mut BytesMut) -> Result<WsMessage, Status> {
        out.clear();
        let message = match self.format {
            PacketFormat::Binary => {
                packet.encode_message(out);
                WsMessage::Binary(out.split().freeze())
            }
            PacketFormat::Text => {
                packet.encode_text(out);
                text_message(out.split().freeze())?
            }
        };
        crate::telemetry::bytes_sent(message.len());
        Ok(message)
    }

    /// Writes the packets, one message each, and flushes once; what an inline write left goes
    /// first.
    pub(crate) async fn write_batch(
        &mut self,
        packets: &[Packet],
        stall: Duration,
    ) -> Result<(), WriteError> {
        while let Some(message) = self.unsent.pop_front() {
            step(stall, async {
                self.sink.feed(message).await.map_err(ws_error)
            })
            .await?;
        }
        for packet in packets {
            // Ready first, so that the message is handed over as soon as it is made.
            step(stall, async {
                std::future::poll_fn(|cx| self.sink.as_mut().poll_ready(cx))
                    .await
                    .map_err(ws_error)
            })
            .await?;
            let message = self.message_now(packet).map_err(WriteError::Failed)?;
            self.sink
                .as_mut()
                .start_send(message)
                .map_err(|error| WriteError::Failed(ws_error(error)))?;
        }
        step(stall, async { self.sink.flush().await.map_err(ws_error) }).await?;
        Ok(())
    }

    /// Hands the packets to the sink and flushes, as far as that goes without waiting.
    /// Returns whether all of it went out; what did not is left for
    /// [`write_batch`](Self::write_batch).
    pub(crate) fn write_now(&mut self, packets: &[Packet]) -> Result<bool, Status> {
        // A waker that does nothing: whatever is left, the writer task finishes with its own.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        for packet in packets {
            if self.unsent.is_empty() {
                match self.sink.as_mut().poll_ready(&mut cx) {
                    Poll::Ready(Ok(())) => {
                        let message = self.message_now(packet)?;
                        self.sink.as_mut().start_send(message).map_err(ws_error)?;
                        continue;
                    }
                    Poll::Ready(Err(error)) => return Err(ws_error(error)),
                    Poll::Pending => {}
                }
            }
            self.unsent.push_back(self.message(packet)?);
        }
        if !self.unsent.is_empty() {
            return Ok(false);
        }
        match self.sink.as_mut().poll_flush(&mut cx) {
            Poll::Ready(Ok(())) => Ok(true),
            Poll::Ready(Err(error)) => Err(ws_error(error)),
            Poll::Pending => Ok(false),
        }
    }

    /// Sends a Close frame.
    pub(crate) async fn shutdown(&mut self) {
        let _ = self.sink.close().await;
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
        Box::pin(LookingAhead::new(packets)),
        PacketWriter::WebSocket(WsWriter::new(Box::pin(sink), format)),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::task::{Context, Poll};

    use tokio::io::ReadBuf;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::*;
    use crate::wire::{Action, Notify};

    #[test]
    fn the_handshake_comes_from_the_query_and_the_http_headers() {
        let request = Request::builder()
            .uri("/room?Stmp-Version=1.0&Accept=application%2Fjson&token=from-query")
            .header("accept", "application/protobuf")
            .header("packet-format", "text")
            .header("token", "from-header")
            .header("device", "phone")
            .body(())
            .unwrap();
        let header = handshake_from_request(&request, &Limits::DEFAULT).unwrap();
        assert_eq!(header.get("Accept"), Some("application/json"));
        assert_eq!(header.get("Packet-Format"), Some("text"));
        assert_eq!(header.get_all("token").collect::<Vec<_>>(), ["from-query"]);
        assert_eq!(header.get("device"), Some("phone"));
    }

    #[test]
    fn the_http_headers_count_towards_the_header_limits() {
        let request = Request::builder()
            .uri("/room?a=1&b=2")
            .header("c", "3")
            .header("d", "x".repeat(40))
            .body(())
            .unwrap();
        let three = Limits::DEFAULT.with_max_header_entries(3);
        let error = handshake_from_request(&request, &three).unwrap_err();
        assert_eq!(error.code(), crate::Code::RequestEntityTooLarge);
        assert!(error.message().contains("4 entries"), "{error}");
        let small = Limits::DEFAULT.with_max_header_size(40);
        let error = handshake_from_request(&request, &small).unwrap_err();
        assert!(error.message().contains("header of 54 bytes"), "{error}");
        let query_over = Limits::DEFAULT.with_max_header_entries(1);
        let error = handshake_from_request(&request, &query_over).unwrap_err();
        assert!(error.message().contains("query has more than 1"), "{error}");
    }

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
    async fn websocket_packets_written_inline_arrive_in_order_when_the_socket_is_full() {
        let notify = |n: u8| {
            Packet::Notify(Notify {
                action: Action::Id(7),
                header: Header::new(),
                payload: Bytes::from(vec![n; 20 << 10]),
            })
        };
        // A socket that takes 100 bytes until the peer reads, under messages that outgrow
        // tungstenite's write buffer (64 KiB): the sink stops taking them once it is full.
        let (ours, theirs) = tokio::io::duplex(100);
        let config = ws_config(1 << 20);
        let ws = WebSocketStream::from_raw_socket(ours, Role::Server, Some(config)).await;
        let (_packets, mut writer) = websocket(ws, PacketFormat::Binary, Limits::default());
        let first: Vec<Packet> = (1..=6).map(notify).collect();
        assert!(
            !writer.write_now(&first).unwrap(),
            "the socket cannot take 120 KiB"
        );
        let PacketWriter::WebSocket(ws_writer) = &writer else {
            unreachable!()
        };
        assert!(
            !ws_writer.unsent.is_empty(),
            "the sink took no more once the socket was full"
        );

        let peer = WebSocketStream::from_raw_socket(theirs, Role::Client, Some(config)).await;
        let reading = tokio::spawn(async move {
            peer.take(8)
                .map(|message| match message.unwrap() {
                    WsMessage::Binary(bytes) => {
                        Packet::decode_message(bytes, Limits::default()).unwrap()
                    }
                    other => panic!("{other:?}"),
                })
                .collect::<Vec<_>>()
                .await
        });
        writer
            .write_batch(&[notify(7)], Duration::from_secs(5))
            .await
            .unwrap();
        let PacketWriter::WebSocket(ws_writer) = &writer else {
            unreachable!()
        };
        assert!(
            ws_writer.unsent.is_empty(),
            "the batch sent what was left first"
        );
        // Inline again: the sink takes it; what the socket does not, the writer task flushes.
        if !writer.write_now(&[notify(8)]).unwrap() {
            writer
                .write_batch(&[], Duration::from_secs(5))
                .await
                .unwrap();
        }
        let received = tokio::time::timeout(Duration::from_secs(10), reading)
            .await
            .expect("all eight messages within 10 s")
            .unwrap();
        let firsts: Vec<u8> = received
            .iter()
            .map(|packet| match packet {
                Packet::Notify(notify) => notify.payload[0],
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            firsts,
            [1, 2, 3, 4, 5, 6, 7, 8],
            "every message once, in order"
        );
    }

    #[test]
    fn messages_made_in_the_scratch_buffer_keep_their_bytes_while_held() {
        let sink = futures_util::sink::drain().sink_map_err(|never| match never {});
        let writer = WsWriter::new(Box::pin(sink), PacketFormat::Binary);
        let notify = |byte: u8, len: usize| {
            Packet::Notify(Notify {
                action: Action::Id(7),
                header: Header::new(),
                payload: Bytes::from(vec![byte; len]),
            })
        };
        // As a sink that keeps them waiting would: the next messages are made meanwhile.
        let held: Vec<WsMessage> = (0..64)
            .map(|byte| writer.message_now(&notify(byte, 100)).unwrap())
            .collect();
        for (byte, message) in (0..64).zip(held) {
            let WsMessage::Binary(bytes) = message else {
                panic!("a binary message");
            };
            let Packet::Notify(notify) = Packet::decode_message(bytes, Limits::default()).unwrap()
            else {
                panic!("a notify");
            };
            assert_eq!(notify.payload, vec![byte; 100]);
        }
        // A long message does not leave its buffer for the thread to keep.
        let long = writer
            .message_now(&notify(1, 2 * KEEP_MESSAGE_SCRATCH))
            .unwrap();
        assert!(long.len() > 2 * KEEP_MESSAGE_SCRATCH);
        MESSAGE_SCRATCH.with(|scratch| assert_eq!(scratch.borrow().capacity(), 0));
    }

    #[tokio::test]
    async fn a_websocket_batch_of_small_packets_leaves_in_one_write() {
        let socket = CountingSocket::default();
        let config = ws_config(1 << 20);
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
