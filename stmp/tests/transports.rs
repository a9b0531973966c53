//! Round trips over every transport, with every codec, gzip on byte streams and
//! permessage-deflate on WebSocket.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::*;
use stmp::{Code, Codec, PacketFormat, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn round_trip(client: stmp::Client, expected_codec: &Codec) {
    let conn = client.conn().expect("connected");
    assert_eq!(conn.codec(), expected_codec);
    let input = echo("héllo; with: special\ncharacters%");
    let output: Echo = within(client.call(&ECHO, &input)).await.unwrap();
    assert_eq!(output, input);
    let error = within(client.call::<_, Echo>(&FAIL, &input))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::BadRequest);
    assert_eq!(error.message(), format!("refused: {}", input.text));
    let room: RoomModel = within(client.call(
        &JOIN_ROOM,
        &JoinRoomInput {
            name: "lobby".into(),
        },
    ))
    .await
    .unwrap();
    assert_eq!(room.name, "lobby");
    assert_eq!(room.users.len(), 1);
    within(client.close()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transport_with_every_codec() {
    init_tracing();
    let server = Server::builder().build();
    let addrs = serve_all(&server).await;
    for scheme in ["tcp", "tls", "ws", "wss"] {
        for codec in [Codec::PROTOBUF, Codec::JSON, Codec::MSGPACK] {
            let client = within(
                addrs
                    .client()
                    .codec(codec.clone())
                    .connect(&addrs.url(scheme)),
            )
            .await
            .unwrap_or_else(|e| panic!("{scheme} {codec:?}: {e}"));
            round_trip(client, &codec).await;
        }
    }
    within(server.shutdown(std::time::Duration::from_secs(1))).await;
}

/// Large payloads go out by reference rather than copied behind their packet's head: mixed
/// with small ones, they arrive whole on every transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_small_payloads_in_flight_together_arrive_whole() {
    init_tracing();
    let server = Server::builder().build();
    let addrs = serve_all(&server).await;
    for scheme in ["tcp", "tls", "ws", "wss"] {
        let client = within(addrs.client().connect(&addrs.url(scheme)))
            .await
            .unwrap_or_else(|e| panic!("{scheme}: {e}"));
        echo_large_and_small(&client, scheme).await;
        within(client.close()).await;
    }
    within(server.shutdown(std::time::Duration::from_secs(1))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_text_format() {
    let server = Server::builder().build();
    let addrs = serve_all(&server).await;
    for scheme in ["ws", "wss"] {
        let client = within(
            addrs
                .client()
                .packet_format(PacketFormat::Text)
                .connect(&addrs.url(scheme)),
        )
        .await
        .unwrap();
        let conn = client.conn().unwrap();
        assert_eq!(conn.peer_header().get("Packet-Format"), Some("text"));
        round_trip(client, &Codec::JSON).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_on_byte_streams() {
    let server = Server::builder().gzip(true).build();
    let addrs = serve_all(&server).await;
    for scheme in ["tcp", "tls"] {
        let client = within(addrs.client().gzip(true).connect(&addrs.url(scheme)))
            .await
            .unwrap();
        let conn = client.conn().unwrap();
        assert_eq!(conn.peer_header().get("Content-Encoding"), Some("gzip"));
        // A large, compressible payload and many small ones: each must arrive at once,
        // which needs a sync flush per write.
        let big = echo(&"stmp ".repeat(50_000));
        let back: Echo = within(client.call(&ECHO, &big)).await.unwrap();
        assert_eq!(back, big);
        round_trip(client, &Codec::PROTOBUF).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_connections_past_the_limit_get_plain_streams() {
    let server = Server::builder().gzip(true).max_gzip_connections(1).build();
    let addrs = serve_all(&server).await;
    let url = addrs.url("tcp");
    let connect = |gzip: bool| within(addrs.client().gzip(gzip).connect(&url));
    let encoding = |client: &stmp::Client| {
        let conn = client.conn().unwrap();
        conn.peer_header()
            .get("Content-Encoding")
            .map(str::to_owned)
    };

    let first = connect(true).await.unwrap();
    assert_eq!(encoding(&first).as_deref(), Some("gzip"));
    assert_eq!(server.stats().gzip_connections, 1);
    // A client that does not ask for gzip takes no place and is served as ever.
    let plain = connect(false).await.unwrap();
    assert_eq!(encoding(&plain), None);
    // Past the limit, a client asking for gzip gets a plain stream that works.
    let second = connect(true).await.unwrap();
    assert_eq!(encoding(&second), None);
    assert_eq!(server.stats().gzip_connections, 1);
    round_trip(second, &Codec::PROTOBUF).await;
    let output: Echo = within(first.call(&ECHO, &echo("still gzip")))
        .await
        .unwrap();
    assert_eq!(output, echo("still gzip"));

    // The place comes back when the gzip connection has ended.
    first.close().await;
    until(|| server.stats().gzip_connections == 0).await;
    let third = connect(true).await.unwrap();
    assert_eq!(encoding(&third).as_deref(), Some("gzip"));
    assert_eq!(server.stats().gzip_connections, 1);
    // Closes the client at its end.
    round_trip(third, &Codec::PROTOBUF).await;
    until(|| server.stats().gzip_connections == 0).await;
}

/// The bytes a [`relay`] carried each way.
#[derive(Clone, Default)]
struct Carried {
    to_server: Arc<AtomicU64>,
    to_client: Arc<AtomicU64>,
}

/// A TCP relay to `target` for one connection, counting what goes through it.
async fn relay(target: SocketAddr) -> (SocketAddr, Carried) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let carried = Carried::default();
    let counts = carried.clone();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = TcpStream::connect(target).await.unwrap();
        let (client_in, client_out) = client.into_split();
        let (server_in, server_out) = server.into_split();
        tokio::spawn(pump(client_in, server_out, counts.to_server));
        pump(server_in, client_out, counts.to_client).await;
    });
    (addr, carried)
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    count: Arc<AtomicU64>,
) {
    let mut buf = vec![0; 64 << 10];
    while let Ok(read @ 1..) = from.read(&mut buf).await {
        // Counted before it is passed on: what the other end has seen is counted.
        count.fetch_add(read as u64, Ordering::Relaxed);
        if to.write_all(&buf[..read]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Echoes a large compressible payload over `ws://` through a [`relay`]; the bytes it carried
/// to the server and back.
async fn echo_through_relay(server: &Server, gzip: bool, format: PacketFormat) -> (u64, u64) {
    let addrs = serve_all(server).await;
    let (relay, carried) = relay(addrs.ws).await;
    let client = within(
        addrs
            .client()
            .gzip(gzip)
            .packet_format(format)
            .connect(&format!("ws://{relay}/stmp")),
    )
    .await
    .unwrap();
    let big = echo(&"stmp ".repeat(50_000));
    let back: Echo = within(client.call(&ECHO, &big)).await.unwrap();
    assert!(back == big, "the echo differs");
    let codec = match format {
        PacketFormat::Binary => Codec::PROTOBUF,
        PacketFormat::Text => Codec::JSON,
    };
    round_trip(client, &codec).await;
    (
        carried.to_server.load(Ordering::Relaxed),
        carried.to_client.load(Ordering::Relaxed),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permessage_deflate_on_websocket() {
    let server = Server::builder().websocket_compression(true).build();
    for format in [PacketFormat::Binary, PacketFormat::Text] {
        let (up, down) = echo_through_relay(&server, true, format).await;
        // 250 kB each way, deflated to a few kilobytes.
        assert!(
            up < 25_000 && down < 25_000,
            "{format:?}: {up} up, {down} down"
        );
    }
    // Both sides must want it.
    let (up, down) = echo_through_relay(&server, false, PacketFormat::Binary).await;
    assert!(up > 250_000 && down > 250_000, "{up} up, {down} down");
    let server = Server::builder().build();
    let (up, down) = echo_through_relay(&server, true, PacketFormat::Binary).await;
    assert!(up > 250_000 && down > 250_000, "{up} up, {down} down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_refused_by_server_falls_back_to_plain() {
    // Servers do not offer gzip unless configured to.
    let server = Server::builder().build();
    let addrs = serve_all(&server).await;
    let client = within(addrs.client().gzip(true).connect(&addrs.url("tcp")))
        .await
        .unwrap();
    assert_eq!(
        client.conn().unwrap().peer_header().get("Content-Encoding"),
        None
    );
    round_trip(client, &Codec::PROTOBUF).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_is_a_clear_error() {
    let server = Server::builder().build();
    let addrs = serve_all(&server).await;
    let (other_cert, _) = self_signed();
    let tls_url = addrs.url("tls");
    let wrong_ca = stmp::Client::builder()
        .tls(stmp::tls::client_config(other_cert.as_bytes()).unwrap())
        .connect(&tls_url);
    let error = within(wrong_ca).await.unwrap_err();
    assert_eq!(error.code(), Code::BadRequest, "{error}");
    assert!(error.message().contains("certificate"), "{error}");
    let wrong_name = addrs.client().server_name("example.com").connect(&tls_url);
    let error = within(wrong_name).await.unwrap_err();
    assert_eq!(error.code(), Code::BadRequest, "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_wrong_path_is_not_found() {
    let server = Server::builder().build();
    let addrs = serve_all(&server).await;
    let error = within(stmp::Client::connect(&format!(
        "ws://{}/elsewhere",
        addrs.ws
    )))
    .await
    .unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "{error}");
}

/// Failures on this side keep their cause as `source()`; statuses from the peer have none.
#[tokio::test]
async fn local_failures_carry_their_cause_and_listen_agrees_with_connect() {
    use std::error::Error as _;
    use std::io::ErrorKind;

    let io_kind = |error: &stmp::Status| {
        error
            .source()
            .and_then(|source| source.downcast_ref::<std::io::Error>())
            .map(std::io::Error::kind)
    };
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let server = Server::builder().build();
    let error = server.listen_tcp(addr).await.unwrap_err();
    assert_eq!(error.code(), Code::NetworkError, "{error}");
    assert_eq!(io_kind(&error), Some(ErrorKind::AddrInUse), "{error}");

    drop(taken);
    let error = within(stmp::Client::connect(&format!("tcp://{addr}")))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NetworkError, "{error}");
    assert_eq!(
        io_kind(&error),
        Some(ErrorKind::ConnectionRefused),
        "{error}"
    );

    let bad_pem = b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n";
    let error = stmp::tls::client_config(bad_pem).unwrap_err();
    assert_eq!(error.code(), Code::BadRequest, "{error}");
    assert!(error.source().is_some(), "the PEM error is kept: {error}");

    let error = stmp::Client::connect("tcp://nowhere").await.unwrap_err();
    assert_eq!(error.code(), Code::BadRequest, "{error}");
    assert!(error.source().is_none(), "a bad URL has nothing under it");
}
