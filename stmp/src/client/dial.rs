//! Opening one connection: transport, TLS, WebSocket upgrade and the stmp handshake.

use bytes::BytesMut;
use futures_util::StreamExt;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ClientBuilder;
use super::endpoint::{Endpoint, Scheme};
use crate::codec::Codec;
use crate::conn::io::{PacketStream, PacketWriter, ReadLimits, byte_stream, websocket};
use crate::conn::{Engine, Host, PacketFormat, Side};
use crate::server::ws_config;
use crate::wire::{ClientHandshake, Header, Limits, ServerHandshake};
use crate::{Conn, Status};

/// A connection whose handshake succeeded and whose engine is ready to run.
pub(crate) struct Dialed {
    pub(crate) conn: Conn,
    pub(crate) engine: Engine,
    /// What must live as long as the connection (a QUIC endpoint and connection).
    pub(crate) transport: Option<Box<dyn std::any::Any + Send>>,
}

pub(crate) async fn dial(endpoint: &Endpoint, config: &ClientBuilder) -> Result<Dialed, Status> {
    tokio::time::timeout(config.connect_timeout, dial_now(endpoint, config))
        .await
        .map_err(|_| {
            Status::network_error(format!(
                "could not connect to {endpoint} within {:?}",
                config.connect_timeout
            ))
        })?
}

async fn dial_now(endpoint: &Endpoint, config: &ClientBuilder) -> Result<Dialed, Status> {
    match endpoint.scheme {
        Scheme::Tcp => {
            let (tcp, remote) = tcp_connect(endpoint).await?;
            let (reader, writer) = tcp.into_split();
            stream_handshake(reader, writer, remote, endpoint.scheme.name(), config).await
        }
        Scheme::Tls => {
            let (tcp, remote) = tcp_connect(endpoint).await?;
            let tls = tls_connect(tcp, endpoint, config).await?;
            let (reader, writer) = tokio::io::split(tls);
            stream_handshake(reader, writer, remote, endpoint.scheme.name(), config).await
        }
        Scheme::Ws => {
            let (tcp, remote) = tcp_connect(endpoint).await?;
            websocket_handshake(tcp, endpoint, remote, config).await
        }
        Scheme::Wss => {
            let (tcp, remote) = tcp_connect(endpoint).await?;
            let tls = tls_connect(tcp, endpoint, config).await?;
            websocket_handshake(tls, endpoint, remote, config).await
        }
        Scheme::Quic => quic_dial(endpoint, config).await,
    }
}

async fn tcp_connect(
    endpoint: &Endpoint,
) -> Result<(TcpStream, Option<std::net::SocketAddr>), Status> {
    let tcp = TcpStream::connect(endpoint.authority())
        .await
        .map_err(|e| Status::network_error(format!("cannot connect to {endpoint}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let remote = tcp.peer_addr().ok();
    Ok((tcp, remote))
}

async fn quic_dial(endpoint: &Endpoint, config: &ClientBuilder) -> Result<Dialed, Status> {
    let tls = config.tls.clone().ok_or_else(|| {
        Status::bad_request(format!(
            "{endpoint} needs TLS settings (ClientBuilder::tls)"
        ))
    })?;
    let remote = tokio::net::lookup_host(endpoint.authority())
        .await
        .map_err(|e| Status::network_error(format!("cannot resolve {endpoint}: {e}")))?
        .next()
        .ok_or_else(|| Status::network_error(format!("{endpoint} resolves to no address")))?;
    let local: std::net::SocketAddr = if remote.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let mut quic = quinn::Endpoint::client(local)?;
    quic.set_default_client_config(crate::quic::client_config(
        &tls,
        config.engine.read_timeout,
    )?);
    let name = config
        .server_name
        .clone()
        .unwrap_or_else(|| endpoint.host.clone());
    let connection = quic
        .connect(remote, &name)
        .map_err(|e| Status::bad_request(format!("QUIC: {e}")))?
        .await
        .map_err(crate::quic::connection_error)?;
    let (send, recv) = connection
        .open_bi()
        .await
        .map_err(crate::quic::connection_error)?;
    let mut dialed = stream_handshake(recv, send, Some(remote), "quic", config).await?;
    dialed.transport = Some(Box::new((quic, connection)));
    Ok(dialed)
}

async fn tls_connect(
    tcp: TcpStream,
    endpoint: &Endpoint,
    config: &ClientBuilder,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Status> {
    let tls = config.tls.clone().ok_or_else(|| {
        Status::bad_request(format!(
            "{endpoint} needs TLS settings (ClientBuilder::tls)"
        ))
    })?;
    let name = config
        .server_name
        .clone()
        .unwrap_or_else(|| endpoint.host.clone());
    let name = ServerName::try_from(name)
        .map_err(|e| Status::bad_request(format!("bad TLS server name: {e}")))?;
    tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(tls_error)
}

/// A certificate problem is the client's configuration, not the network: it is reported as
/// `BadRequest` so the client does not retry it.
pub(crate) fn tls_error(error: std::io::Error) -> Status {
    match error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(why)) => Status::bad_request(format!(
            "TLS: the server's certificate is not trusted: {why:?}"
        )),
        Some(tls) => Status::bad_request(format!("TLS: {tls}")),
        None => Status::network_error(format!("TLS: {error}")),
    }
}

/// The client's handshake header: its codecs, gzip, and the application entries.
fn client_header(config: &ClientBuilder) -> Header {
    let mut header = Header::new();
    let accept: Vec<&str> = config.codecs.iter().map(Codec::content_type).collect();
    let codecs = config.codecs();
    let accept = if accept.is_empty() {
        codecs
            .iter()
            .map(Codec::content_type)
            .collect::<Vec<_>>()
            .join(",")
    } else {
        accept.join(",")
    };
    header.append("Accept", accept);
    if config.gzip {
        header.append("Accept-Encoding", "gzip");
    }
    header.extend(config.header.iter());
    header
}

/// The codec the server chose, which must be one we asked for.
fn chosen_codec(hello: &ServerHandshake, config: &ClientBuilder) -> Result<Codec, Status> {
    let codecs = config.codecs();
    match hello.header.get("Content-Type") {
        None => Ok(codecs[0].clone()),
        Some(chosen) => codecs
            .into_iter()
            .find(|c| c.content_type().eq_ignore_ascii_case(chosen))
            .ok_or_else(|| {
                Status::protocol_error(format!(
                    "server chose content type {chosen}, which we did not offer"
                ))
            }),
    }
}

fn ready(
    config: &ClientBuilder,
    remote: Option<std::net::SocketAddr>,
    transport: &'static str,
    hello: ServerHandshake,
    codec: Codec,
    reader: PacketStream,
    writer: PacketWriter,
) -> Dialed {
    let host = Host {
        side: Side::Client,
        router: config.router.clone(),
        config: config.engine.clone(),
        call_timeout: config.call_timeout,
        send_queue_bytes: config.send_queue_bytes,
        slow_consumer: crate::SlowConsumer::default(),
        counters: crate::stats::Counters::new(usize::MAX),
        tasks: TaskTracker::new(),
        draining: CancellationToken::new(),
    };
    let (conn, outbox) = host.conn(remote, transport, hello.header, codec);
    let engine = host.engine(conn.clone(), outbox, reader, writer);
    Dialed {
        conn,
        engine,
        transport: None,
    }
}

async fn stream_handshake<R, W>(
    mut reader: R,
    mut writer: W,
    remote: Option<std::net::SocketAddr>,
    transport: &'static str,
    config: &ClientBuilder,
) -> Result<Dialed, Status>
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    let mut out = BytesMut::new();
    ClientHandshake::new(client_header(config)).encode(&mut out);
    writer.write_all(&out).await?;
    writer.flush().await?;
    let mut buffer = BytesMut::with_capacity(512);
    let hello = loop {
        if let Some(hello) = ServerHandshake::decode(&mut buffer, config.max_packet_size)? {
            break hello;
        }
        if reader.read_buf(&mut buffer).await? == 0 {
            return Err(Status::network_error(
                "the server closed the connection during the handshake",
            ));
        }
    };
    if let Some(refusal) = hello.error() {
        return Err(refusal);
    }
    let codec = chosen_codec(&hello, config)?;
    let gzip = hello
        .header
        .get("Content-Encoding")
        .is_some_and(|e| e.eq_ignore_ascii_case("gzip"));
    let limits = ReadLimits {
        wire: Limits::from(config.max_packet_size),
        inflation: config.inflation,
        ..ReadLimits::default()
    };
    let (packets, packet_writer) = byte_stream(reader, writer, buffer, &limits, gzip);
    Ok(ready(
        config,
        remote,
        transport,
        hello,
        codec,
        packets,
        packet_writer,
    ))
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

async fn websocket_handshake<S>(
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
    let scheme = if endpoint.scheme == super::endpoint::Scheme::Wss {
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
        stream,
        Some(ws_config(config.max_packet_size)),
    )
    .await
    .map_err(|e| match e {
        tokio_tungstenite::tungstenite::Error::Http(response) => http_refusal(&response),
        other => crate::conn::io::ws_error(other),
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
            Some(Err(e)) => return Err(crate::conn::io::ws_error(e)),
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_engine_gets_the_client_settings() {
        let config = ClientBuilder::default()
            .event_queue(5)
            .max_concurrent_requests(7)
            .read_timeout(Duration::from_secs(9));
        let (near, _far) = tokio::io::duplex(64);
        let (reader, writer) = tokio::io::split(near);
        let (packets, packet_writer) = byte_stream(
            reader,
            writer,
            BytesMut::new(),
            &ReadLimits::default(),
            false,
        );
        let dialed = ready(
            &config,
            None,
            "tcp",
            ServerHandshake::ok(Header::new()),
            Codec::PROTOBUF,
            packets,
            packet_writer,
        );
        assert_eq!(dialed.engine.config.event_queue, 5);
        assert_eq!(dialed.engine.config.max_concurrent_requests, 7);
        assert_eq!(dialed.engine.config.read_timeout, Duration::from_secs(9));
    }
}
