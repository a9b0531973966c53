//! Opening one connection: transport, TLS, WebSocket upgrade and the stmp handshake.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::task::TaskTracker;

use super::ClientBuilder;
use super::endpoint::Endpoint;
use crate::codec::Codec;
use crate::conn::io::{PacketStream, PacketWriter, ReadLimits, byte_stream};
use crate::conn::{Drain, Engine, Host, Side};
use crate::transport::Scheme;
#[cfg(feature = "quic")]
use crate::transport::quic;
use crate::transport::tcp;
#[cfg(feature = "tls")]
use crate::transport::tls;
#[cfg(feature = "ws")]
use crate::transport::ws;
use crate::wire::{ClientHandshake, Header, Limits, ServerHandshake};
use crate::{Conn, Status};

/// A connection whose handshake succeeded and whose engine is ready to run.
pub(crate) struct Dialed {
    pub(crate) conn: Conn,
    pub(crate) engine: Engine,
    /// What must live as long as the connection (a QUIC connection).
    pub(crate) transport: Option<Box<dyn std::any::Any + Send>>,
    /// What the engine's task must poll beside the engine (a QUIC client's driver).
    pub(crate) driver: Option<crate::transport::Driver>,
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

/// Each transport's handshake is boxed but TCP's: a future keeps room for the largest of its
/// branches, and a TLS, WebSocket or QUIC handshake in line made every client's connect future,
/// and the task that reconnects it (which lives as long as the client), 13 KB, copied on every
/// spawn. A TCP connection now pays for none of it, and the others with one allocation.
async fn dial_now(endpoint: &Endpoint, config: &ClientBuilder) -> Result<Dialed, Status> {
    match endpoint.scheme {
        Scheme::Tcp => {
            let (tcp, remote) = tcp::connect(endpoint).await?;
            let (reader, writer) = tcp.into_split();
            stream_handshake(reader, writer, remote, endpoint.scheme, config).await
        }
        #[cfg(feature = "tls")]
        Scheme::Tls => {
            Box::pin(async {
                let (tcp, remote) = tcp::connect(endpoint).await?;
                let tls = tls::connect(tcp, endpoint, config).await?;
                let (reader, writer) = tokio::io::split(tls);
                stream_handshake(reader, writer, remote, endpoint.scheme, config).await
            })
            .await
        }
        #[cfg(feature = "ws")]
        Scheme::Ws => {
            Box::pin(async {
                let (tcp, remote) = tcp::connect(endpoint).await?;
                ws::connect(tcp, endpoint, remote, config).await
            })
            .await
        }
        #[cfg(all(feature = "ws", feature = "tls"))]
        Scheme::Wss => {
            Box::pin(async {
                let (tcp, remote) = tcp::connect(endpoint).await?;
                let tls = tls::connect(tcp, endpoint, config).await?;
                ws::connect(tls, endpoint, remote, config).await
            })
            .await
        }
        #[cfg(feature = "quic")]
        Scheme::Quic => Box::pin(quic::connect(endpoint, config)).await,
        #[allow(unreachable_patterns)]
        scheme => Err(Status::bad_request(format!(
            "{scheme}:// needs stmp's `{}` feature, which this build leaves out",
            scheme.feature()
        ))),
    }
}

/// The client's handshake header: its codecs, gzip, and the application entries.
pub(crate) fn client_header(config: &ClientBuilder) -> Header {
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
    if config.gzip && cfg!(feature = "gzip") {
        header.append("Accept-Encoding", "gzip");
    }
    header.extend(config.header.iter());
    header
}

/// The codec the server chose, which must be one we asked for.
pub(crate) fn chosen_codec(
    hello: &ServerHandshake,
    config: &ClientBuilder,
) -> Result<Codec, Status> {
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

pub(crate) fn ready(
    config: &ClientBuilder,
    remote: Option<std::net::SocketAddr>,
    scheme: Scheme,
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
        counters: crate::stats::Counters::unshared(),
        tasks: TaskTracker::new(),
        draining: Drain::default(),
    };
    let (conn, outbox) = host.conn(remote, scheme, hello.header, codec);
    let engine = host.engine(conn.clone(), outbox, reader, writer);
    Dialed {
        conn,
        engine,
        transport: None,
        driver: None,
    }
}

pub(crate) async fn stream_handshake<R, W>(
    mut reader: R,
    mut writer: W,
    remote: Option<std::net::SocketAddr>,
    scheme: Scheme,
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
    if gzip && !cfg!(feature = "gzip") {
        return Err(Status::protocol_error(
            "the server chose gzip, which this client (built without the gzip feature) did not ask for",
        ));
    }
    let limits = ReadLimits {
        wire: Limits::from(config.max_packet_size),
        inflation: config.inflation,
        ..ReadLimits::default()
    };
    let (packets, packet_writer) = byte_stream(reader, writer, buffer, &limits, gzip);
    Ok(ready(
        config,
        remote,
        scheme,
        hello,
        codec,
        packets,
        packet_writer,
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
            Scheme::Tcp,
            ServerHandshake::ok(Header::new()),
            Codec::PROTOBUF,
            packets,
            packet_writer,
        );
        assert_eq!(dialed.engine.config.event_queue, 5);
        assert_eq!(dialed.engine.config.max_concurrent_requests, 7);
        assert_eq!(dialed.engine.config.read_timeout, Duration::from_secs(9));
    }

    #[cfg(not(all(feature = "tls", feature = "ws", feature = "quic")))]
    #[tokio::test]
    async fn a_scheme_left_out_of_the_build_is_a_bad_request_naming_its_feature() {
        let missing = [
            (!cfg!(feature = "tls"), "tls://127.0.0.1:1", "`tls`"),
            (!cfg!(feature = "ws"), "ws://127.0.0.1:1/", "`ws`"),
            (!cfg!(feature = "quic"), "quic://127.0.0.1:1", "`quic`"),
        ];
        for (_, url, feature) in missing.into_iter().filter(|(left_out, ..)| *left_out) {
            let endpoint = Endpoint::parse(url).unwrap();
            let Err(error) = dial(&endpoint, &ClientBuilder::default()).await else {
                panic!("{url} dialled without its feature");
            };
            assert_eq!(error.code(), crate::Code::BadRequest, "{error}");
            assert!(error.message().contains(feature), "{error}");
        }
    }
}
