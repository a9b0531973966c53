//! WebSocket: the client's handshake rides on the upgrade request's query (and headers); the
//! server answers with its handshake as the first message.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::{Farewell, Opened};
use crate::client::ClientBuilder;
use crate::client::dial::{Dialed, chosen_codec, client_header, ready};
use crate::client::endpoint::Endpoint;
use crate::conn::PacketFormat;
use crate::conn::io::{
    Framing, Outgoing, PacketReader, PacketStream, PacketWriter, Unframe, Unframed,
};
use crate::server::{Refusal, Slot, Transport};
use crate::telemetry::Counted;
use crate::transport::Scheme;
use crate::wire::{Header, Limits, Packet, ServerHandshake, Version};
use crate::{Server, Status};
use frame::{FrameReader, FrameWriter, Incoming, Owed, Role};
use head::HeadOnly;

mod deflate;
pub(crate) mod frame;
mod head;

const HTTP_KEYS: [&str; 4] = ["Accept", "Accept-Encoding", "Packet-Format", "Stmp-Version"];

/// The HTTP headers that only drive the upgrade itself. Once it is done they say nothing to the
/// application, and the connection would carry them for its whole life.
const UPGRADE_ONLY: [&str; 5] = [
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
];

/// tungstenite's settings for the HTTP upgrade, which is all it does here: it reads the head
/// only ([`HeadOnly`]) and writes no frame, so its buffers stay small.
fn upgrade_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 << 10)
        .write_buffer_size(0)
}

/// The longest message taken: a packet, with room for its framing.
fn max_message(max_packet_size: usize) -> usize {
    max_packet_size.saturating_add(64)
}

/// The stmp handshake of a WebSocket upgrade: query parameters, then the HTTP headers (the
/// known ones in their stmp spelling, the others by their lower-case name) except those of the
/// upgrade itself ([`UPGRADE_ONLY`]), each key the query does not have. Applications send
/// their entries (tokens…) as headers, out of URLs. The result is held to the header limits,
/// as a binary handshake's header is; the query is checked before it is parsed.
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
        if UPGRADE_ONLY.contains(&name.as_str()) {
            continue;
        }
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
    header.shrink_to_fit();
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
                .serve_websocket(stream, remote, &path, Scheme::Ws, slot)
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
        .serve_websocket(tls, remote, &path, Scheme::Wss, slot)
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

    /// The HTTP upgrade, with the stmp handshake it carries; `None` when it failed (logged).
    async fn upgrade<S: Halves>(
        &self,
        stream: S,
        remote: SocketAddr,
        path: &str,
    ) -> Option<Upgraded<S>> {
        let config = &self.inner.config;
        let limits = config.wire_limits();
        let compression = config.websocket_compression && cfg!(feature = "gzip");
        let mut header = None;
        let mut deflate = false;
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
            let mut response = response;
            let offers = request.headers().get_all("sec-websocket-extensions");
            deflate = compression
                && deflate::accepts_offer(offers.iter().filter_map(|v| v.to_str().ok()));
            if deflate {
                response.headers_mut().insert(
                    "sec-websocket-extensions",
                    HeaderValue::from_static(deflate::AGREEMENT),
                );
            }
            Ok(response)
        };
        // Boxed for the handshake only: its nested states each hold the socket.
        let upgrade = Box::pin(tokio_tungstenite::accept_hdr_async_with_config(
            HeadOnly::new(stream),
            callback,
            Some(upgrade_config()),
        ));
        let socket = match tokio::time::timeout(config.handshake_timeout, upgrade).await {
            Ok(Ok(socket)) => socket,
            Ok(Err(error)) => {
                tracing::debug!(%remote, %error, "websocket upgrade failed");
                return None;
            }
            Err(_) => {
                tracing::debug!(%remote, "websocket upgrade timed out");
                return None;
            }
        };
        // From here on the engine reads and writes the frames itself.
        let (stream, leftover) = socket.into_inner().into_parts();
        Some(Upgraded {
            stream,
            leftover,
            header: header.unwrap_or_else(|| Ok(Header::new())),
            deflate,
        })
    }

    pub(crate) async fn serve_websocket<S: Halves>(
        &self,
        stream: S,
        remote: SocketAddr,
        path: &str,
        scheme: Scheme,
        mut slot: Slot,
    ) {
        // Taken apart at once: a local moved out of only in part would keep its place in this
        // future while the connection runs.
        let Some(Opened {
            conn,
            outbox,
            packets,
            writer,
        }) = self.open_websocket(stream, remote, path, scheme).await
        else {
            return;
        };
        slot.handshaken();
        self.run(conn, outbox, packets, writer).await;
        // The slot is held until the connection's socket is gone.
        drop(slot);
    }

    /// The upgrade and both handshakes: the connection, ready to run, once the server's hello
    /// is sent. Its own future, like [`Server::upgrade`].
    async fn open_websocket<S: Halves>(
        &self,
        stream: S,
        remote: SocketAddr,
        path: &str,
        scheme: Scheme,
    ) -> Option<Opened> {
        let limits = self.inner.config.wire_limits();
        let Upgraded {
            mut stream,
            leftover,
            header,
            deflate,
        } = self.upgrade(stream, remote, path).await?;
        // A refusal can only be sent in the format the client asked for if we know it.
        let text = header.as_ref().is_ok_and(|header| {
            header
                .get("Packet-Format")
                .or_else(|| header.get("Accept-Packet-Format"))
                .is_some_and(|f| f.eq_ignore_ascii_case("text"))
        });
        let established = match header.and_then(|header| Ok((version_of(&header)?, header))) {
            Ok((version, header)) => {
                self.establish(version, header, Transport::WebSocket, remote, scheme)
                    .await
            }
            Err(status) => Err(status),
        };
        let owed = Arc::new(Owed::default());
        let (conn, outbox, agreement) = match established {
            Ok(established) => established,
            Err(status) => {
                crate::telemetry::handshake_refused(&status);
                let frames = FrameWriter::new(Role::Server, PacketFormat::Binary, owed);
                let mut refusal = handshake_frame(&frames, &ServerHandshake::refuse(&status), text);
                frames.close(&mut refusal);
                let _ = stream.write_all(&refusal).await;
                let _ = stream.shutdown().await;
                return None;
            }
        };
        let format = agreement.format;
        let frames = FrameWriter::new(Role::Server, format, owed.clone()).with_deflate(deflate);
        let hello = ServerHandshake::ok(agreement.header);
        let hello = handshake_frame(&frames, &hello, format == PacketFormat::Text);
        if stream.write_all(&hello).await.is_err() {
            conn.mark_closed(&Status::network_error(
                "connection lost during the handshake",
            ));
            return None;
        }
        let reader = FrameReader::new(Role::Server, max_message(limits.max_packet_size), owed)
            .with_budget(self.inner.read_limits.buffered.clone())
            .with_inflater(deflate, self.inner.read_limits.inflation);
        let (packets, writer) = websocket(stream, leftover, reader, frames, format, limits);
        Some(Opened {
            conn,
            outbox,
            packets,
            writer,
        })
    }
}

/// A socket past its HTTP upgrade.
struct Upgraded<S> {
    stream: S,
    /// Frames read past the upgrade request.
    leftover: BytesMut,
    /// The stmp handshake the request carried.
    header: Result<Header, Status>,
    /// permessage-deflate was agreed.
    deflate: bool,
}

/// The server handshake as one frame: the text form in a text message, the binary form in a
/// binary one.
fn handshake_frame(frames: &FrameWriter, handshake: &ServerHandshake, text: bool) -> BytesMut {
    let mut message = BytesMut::new();
    match text {
        true => handshake.encode_text(&mut message),
        false => handshake.encode(&mut message),
    }
    // A handshake is text throughout; should it not be, a binary message still carries it.
    let text = text && std::str::from_utf8(&message).is_ok();
    let mut frame = BytesMut::new();
    frames.message(text, &message, &mut frame);
    frame
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
pub(crate) async fn connect<S: Halves>(
    stream: S,
    endpoint: &Endpoint,
    remote: Option<std::net::SocketAddr>,
    config: &ClientBuilder,
) -> Result<Dialed, Status> {
    let query = websocket_query(config);
    let separator = if endpoint.path.contains('?') {
        '&'
    } else {
        '?'
    };
    let scheme = endpoint.scheme.name();
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
    // Over WebSocket, gzip is asked for as permessage-deflate.
    let offered = config.gzip && cfg!(feature = "gzip");
    if offered {
        request.headers_mut().insert(
            "sec-websocket-extensions",
            HeaderValue::from_static(deflate::AGREEMENT),
        );
    }
    let (socket, response) = tokio_tungstenite::client_async_with_config(
        request,
        HeadOnly::new(stream),
        Some(upgrade_config()),
    )
    .await
    .map_err(|e| match e {
        tokio_tungstenite::tungstenite::Error::Http(response) => http_refusal(&response),
        other => Status::network_error(format!("websocket: {other}")),
    })?;
    let extensions = response.headers().get("sec-websocket-extensions");
    let deflate = deflate::agreed_by_server(offered, extensions.and_then(|v| v.to_str().ok()))?;
    let (mut stream, mut buf) = socket.into_inner().into_parts();
    let owed = Arc::new(Owed::default());
    let mut frames = FrameReader::new(
        Role::Client,
        max_message(config.max_packet_size),
        owed.clone(),
    )
    .with_inflater(deflate, config.inflation);
    let hello = loop {
        match frames.next(&mut buf)? {
            Some(Incoming::Message { bytes, .. }) => {
                break if bytes.starts_with(crate::wire::MAGIC)
                    && bytes.get(4).is_some_and(|b| !b.is_ascii_hexdigit())
                {
                    ServerHandshake::decode_message(&bytes, config.max_packet_size)?
                } else {
                    ServerHandshake::decode_text(&bytes, config.max_packet_size)?
                };
            }
            Some(Incoming::Ping) => {
                let mut pong = BytesMut::new();
                FrameWriter::new(Role::Client, PacketFormat::Binary, owed.clone())
                    .encode(&Packet::Pong, &mut pong);
                stream.write_all(&pong).await?;
            }
            Some(Incoming::Closed) => {
                return Err(Status::network_error(
                    "the server closed the websocket during the handshake",
                ));
            }
            None => {
                if stream.read_buf(&mut buf).await? == 0 {
                    return Err(Status::network_error(
                        "the server closed the websocket during the handshake",
                    ));
                }
            }
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
    let writer = FrameWriter::new(Role::Client, format, owed).with_deflate(deflate);
    let limits = Limits::from(config.max_packet_size);
    let (packets, writer) = websocket(stream, buf, frames, writer, format, limits);
    Ok(ready(
        config,
        remote,
        endpoint.scheme,
        hello,
        codec,
        packets,
        writer,
    ))
}

/// A socket the engine reads on one task while others write to it: a TCP socket splits into
/// halves that share nothing, a TLS stream into halves that share it behind a lock.
pub(crate) trait Halves: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    type Read: AsyncRead + Send + Unpin + 'static;
    type Write: AsyncWrite + Send + 'static;

    fn halves(self) -> (Self::Read, Self::Write);
}

impl Halves for TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;

    fn halves(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

/// The halves of a stream that cannot be split otherwise.
#[cfg_attr(not(any(feature = "tls", test)), allow(unused_macros))]
macro_rules! halves_by_lock {
    ($($stream:ty),* $(,)?) => {$(
        impl Halves for $stream {
            type Read = tokio::io::ReadHalf<Self>;
            type Write = tokio::io::WriteHalf<Self>;

            fn halves(self) -> (Self::Read, Self::Write) {
                tokio::io::split(self)
            }
        }
    )*};
}

#[cfg(feature = "tls")]
halves_by_lock!(
    Box<tokio_rustls::server::TlsStream<TcpStream>>,
    tokio_rustls::client::TlsStream<TcpStream>,
);
#[cfg(test)]
halves_by_lock!(tokio::io::DuplexStream);

/// The packets of a WebSocket connection's frames. The peer's Ping comes out as a Ping
/// packet, which the engine answers with the Pong the frame writer turns into the Pong frame.
struct WsPackets {
    frames: FrameReader,
    format: PacketFormat,
    limits: Limits,
}

impl Unframe for WsPackets {
    fn next_packet(&mut self, buf: &mut BytesMut) -> Result<Unframed, Status> {
        Ok(match self.frames.next(buf)? {
            None => Unframed::More,
            Some(Incoming::Message { text, bytes }) => {
                Unframed::Packet(frame::packet_of(text, bytes, self.format, self.limits)?)
            }
            Some(Incoming::Ping) => Unframed::Packet(Packet::Ping),
            Some(Incoming::Closed) => Unframed::End,
        })
    }

    fn at_end(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, Status> {
        match self.frames.inside_a_message(buf) {
            true => Err(Status::network_error(
                "the websocket connection ended inside a message",
            )),
            false => Ok(None),
        }
    }
}

/// A WebSocket connection after its upgrade, as the engine's packets in and writer out: the
/// same read buffer and write batches as a TCP connection, framed as WebSocket messages.
/// `leftover` holds frames read past the handshake.
fn websocket<S: Halves>(
    stream: S,
    leftover: BytesMut,
    frames: FrameReader,
    writer: FrameWriter,
    format: PacketFormat,
    limits: Limits,
) -> (PacketStream, PacketWriter) {
    let (reader, io) = stream.halves();
    let unframe = WsPackets {
        frames,
        format,
        limits,
    };
    let packets = PacketReader::new(Counted::new(reader), unframe, leftover);
    let writer = PacketWriter {
        io: Box::pin(Counted::new(io)),
        out: Outgoing::default(),
        framing: Framing::WebSocket(writer),
        #[cfg(feature = "gzip")]
        gzip: None,
    };
    (Box::pin(packets), writer)
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::Mutex;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use bytes::Bytes;
    use tokio::io::ReadBuf;

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
    fn the_headers_of_the_upgrade_itself_are_not_kept() {
        let request = Request::builder()
            .uri("/room?Stmp-Version=1.0")
            .header("host", "example.com")
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("sec-websocket-extensions", "permessage-deflate")
            .header("sec-websocket-protocol", "chat")
            .header("origin", "https://example.com")
            .body(())
            .unwrap();
        let header = handshake_from_request(&request, &Limits::DEFAULT).unwrap();
        let keys: Vec<&str> = header.iter().map(|(key, _)| key).collect();
        assert_eq!(
            keys,
            ["Stmp-Version", "host", "sec-websocket-protocol", "origin"]
        );
        assert_eq!(header.entries_capacity(), header.len());
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

    halves_by_lock!(CountingSocket);

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

    fn notify(n: u8, len: usize) -> Packet {
        Packet::Notify(Notify {
            action: Action::Id(7),
            header: Header::new(),
            payload: Bytes::from(vec![n; len]),
        })
    }

    fn server_side<S: Halves>(
        socket: S,
        leftover: BytesMut,
        format: PacketFormat,
    ) -> (PacketStream, PacketWriter) {
        let owed = Arc::new(Owed::default());
        let reader = FrameReader::new(Role::Server, 1 << 20, owed.clone());
        let writer = FrameWriter::new(Role::Server, format, owed);
        websocket(socket, leftover, reader, writer, format, Limits::default())
    }

    #[tokio::test]
    async fn a_batch_of_small_packets_leaves_in_one_write() {
        let socket = CountingSocket::default();
        let (_packets, mut writer) =
            server_side(socket.clone(), BytesMut::new(), PacketFormat::Binary);
        let batch: Vec<Packet> = (0..32).map(|_| notify(0x5A, 32)).collect();
        writer
            .write_batch(&batch, Duration::from_secs(5))
            .await
            .unwrap();
        let (writes, bytes) = *socket.0.lock().unwrap();
        assert!(bytes > 32 * 32, "{bytes} bytes for 32 packets of 32 bytes");
        assert_eq!(writes, 1, "{writes} writes for one batch");
    }

    /// tungstenite, as the peer, checks our framing against its own: messages of each length
    /// class, Ping and Pong, and the closing handshake, both ways.
    #[tokio::test]
    async fn a_tungstenite_client_and_our_server_side_understand_each_other() {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::WebSocketStream;
        use tokio_tungstenite::tungstenite::Message;
        use tokio_tungstenite::tungstenite::protocol::Role as PeerRole;

        let (ours, theirs) = tokio::io::duplex(1 << 16);
        // A frame that came with the upgrade's head, read before the engine took over.
        let mut leftover = BytesMut::new();
        FrameWriter::new(Role::Client, PacketFormat::Binary, Arc::default())
            .encode(&notify(1, 10), &mut leftover);
        let (mut packets, mut writer) = server_side(ours, leftover, PacketFormat::Binary);
        let mut peer = WebSocketStream::from_raw_socket(theirs, PeerRole::Client, None).await;

        let message = |packet: &Packet| {
            let mut bytes = BytesMut::new();
            packet.encode_message(&mut bytes);
            Message::Binary(bytes.freeze())
        };
        peer.send(message(&notify(2, 100))).await.unwrap();
        peer.send(message(&notify(3, 5000))).await.unwrap();
        peer.send(Message::Ping(Bytes::from_static(b"are you there")))
            .await
            .unwrap();
        for expected in [notify(1, 10), notify(2, 100), notify(3, 5000), Packet::Ping] {
            let got = packets.next().await.unwrap().unwrap();
            assert!(
                got == expected,
                "{:?} for {:?}",
                got.kind(),
                expected.kind()
            );
        }

        let reading = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(message) = peer.next().await {
                match message.unwrap() {
                    Message::Pong(payload) => seen.push(format!("pong {payload:?}")),
                    Message::Binary(bytes) => {
                        let packet = Packet::decode_message(bytes, Limits::default()).unwrap();
                        let Packet::Notify(notify) = packet else {
                            panic!("{packet:?}")
                        };
                        seen.push(format!(
                            "notify {} x{}",
                            notify.payload[0],
                            notify.payload.len()
                        ));
                    }
                    Message::Close(close) => {
                        seen.push(format!("close {:?}", close.map(|c| u16::from(c.code))))
                    }
                    other => panic!("{other:?}"),
                }
            }
            seen
        });
        // The engine's answers: a Pong for the Ping, and packets in one batch.
        writer
            .write_batch(
                &[Packet::Pong, notify(4, 70_000), notify(5, 3)],
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        writer.shutdown().await;
        let seen = tokio::time::timeout(Duration::from_secs(10), reading)
            .await
            .expect("read within 10 s")
            .unwrap();
        assert_eq!(
            seen,
            [
                "pong b\"are you there\"",
                "notify 4 x70000",
                "notify 5 x3",
                "close Some(1000)"
            ]
        );
        // The peer answered our Close: the packets end.
        assert!(packets.next().await.is_none());
    }

    #[tokio::test]
    async fn text_packets_go_in_text_messages() {
        use futures_util::StreamExt;
        use tokio_tungstenite::WebSocketStream;
        use tokio_tungstenite::tungstenite::Message;
        use tokio_tungstenite::tungstenite::protocol::Role as PeerRole;

        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let (_packets, mut writer) = server_side(ours, BytesMut::new(), PacketFormat::Text);
        let mut peer = WebSocketStream::from_raw_socket(theirs, PeerRole::Client, None).await;
        let packet = Packet::Notify(Notify {
            action: Action::Id(7),
            header: Header::new(),
            payload: Bytes::from_static(b"{\"a\":1}"),
        });
        writer
            .write_batch(std::slice::from_ref(&packet), Duration::from_secs(5))
            .await
            .unwrap();
        let Some(Ok(Message::Text(text))) = peer.next().await else {
            panic!("a text message");
        };
        let decoded = Packet::decode_text(Bytes::from(text), Limits::default()).unwrap();
        assert_eq!(decoded, packet);
    }
}
