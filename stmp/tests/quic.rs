//! The QUIC transport: same round trips and events as TCP, reconnects, and TLS failures.

mod common;

use std::time::Duration;

use common::*;
use stmp::{Client, Code, ConnectionEvent, Context, Server};
use tokio::sync::mpsc;

struct Quic {
    server: Server,
    addr: std::net::SocketAddr,
    cert_pem: String,
    key_pem: String,
}

async fn quic_server(addr: &str, cert: Option<(String, String)>) -> Quic {
    let server = Server::builder().gzip(true).build();
    register(server.router());
    let (cert_pem, key_pem) = cert.unwrap_or_else(self_signed);
    let tls = stmp::tls::server_config(cert_pem.as_bytes(), key_pem.as_bytes()).unwrap();
    let addr = server.listen_quic(addr, tls).await.unwrap();
    Quic {
        server,
        addr,
        cert_pem,
        key_pem,
    }
}

fn client(cert_pem: &str) -> stmp::ClientBuilder {
    Client::builder().tls(stmp::tls::client_config(cert_pem.as_bytes()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_and_events_over_quic() {
    let quic = quic_server("127.0.0.1:0", None).await;
    let url = format!("quic://localhost:{}", quic.addr.port());
    let (tx, mut heard) = mpsc::unbounded_channel();
    for codec in [stmp::Codec::PROTOBUF, stmp::Codec::JSON] {
        let client = within(client(&quic.cert_pem).codec(codec.clone()).connect(&url))
            .await
            .unwrap();
        assert_eq!(client.conn().unwrap().codec(), &codec);
        let tx = tx.clone();
        let _listener =
            client
                .router()
                .listen(&USER_JOIN, move |_ctx: Context, e: UserJoinEvent| {
                    let tx = tx.clone();
                    async move { tx.send(e.user).unwrap() }
                });
        let echo: Echo = within(client.call(&ECHO, &echo("over quic")))
            .await
            .unwrap();
        assert_eq!(echo.text, "over quic");
        echo_large_and_small(&client, "quic").await;
        let room: RoomModel = within(client.call(
            &JOIN_ROOM,
            &JoinRoomInput {
                name: "lobby".into(),
            },
        ))
        .await
        .unwrap();
        assert_eq!(room.users.len(), 1);
        let failed = within(client.call::<_, Echo>(&FAIL, &Echo::default()))
            .await
            .unwrap_err();
        assert_eq!(failed.code(), Code::BadRequest);
        until(|| !quic.server.conns().is_empty()).await;
        stmp::broadcast(
            quic.server.everyone(),
            &USER_JOIN,
            &UserJoinEvent {
                user: "carol".into(),
            },
        )
        .unwrap();
        assert_eq!(within(heard.recv()).await.unwrap(), "carol");
        within(client.close()).await;
        until(|| quic.server.conns().is_empty()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_over_ipv6_loopback_with_gzip() {
    let quic = quic_server("[::1]:0", None).await;
    let url = format!("quic://[::1]:{}", quic.addr.port());
    let client = within(
        client(&quic.cert_pem)
            .server_name("localhost")
            .gzip(true)
            .connect(&url),
    )
    .await
    .unwrap();
    assert_eq!(
        client.conn().unwrap().peer_header().get("Content-Encoding"),
        Some("gzip")
    );
    let big = echo(&"quic ".repeat(40_000));
    let echo: Echo = within(client.call(&ECHO, &big)).await.unwrap();
    assert_eq!(echo, big);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_over_quic_is_a_clear_error_and_not_retried() {
    let quic = quic_server("127.0.0.1:0", None).await;
    let (other, _) = self_signed();
    let url = format!("quic://localhost:{}", quic.addr.port());
    let error = within(client(&other).connect(&url)).await.unwrap_err();
    assert_eq!(error.code(), Code::BadRequest, "{error}");
    assert!(error.message().contains("TLS"), "{error}");
    let error = within(
        client(&quic.cert_pem)
            .server_name("example.com")
            .connect(&url),
    )
    .await
    .unwrap_err();
    assert_eq!(error.code(), Code::BadRequest, "{error}");
    let no_tls = within(Client::connect(&url)).await.unwrap_err();
    assert_eq!(no_tls.code(), Code::BadRequest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_client_reconnects_after_a_server_restart() {
    let first = quic_server("127.0.0.1:0", None).await;
    let url = format!("quic://localhost:{}", first.addr.port());
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let client = within(
        client(&first.cert_pem)
            .reconnect(Duration::from_millis(20), Duration::from_millis(200))
            .on_connection(move |event| {
                let _ = events_tx.send(event.clone());
            })
            .connect(&url),
    )
    .await
    .unwrap();
    assert!(matches!(
        within(events.recv()).await,
        Some(ConnectionEvent::Connected { .. })
    ));
    within(first.server.shutdown(Duration::from_secs(1))).await;
    match within(events.recv()).await {
        Some(ConnectionEvent::Disconnected {
            status,
            will_retry: true,
            ..
        }) => {
            assert_eq!(status.code(), Code::ServerShutdown, "{status}");
        }
        other => panic!("{other:?}"),
    }
    // The same UDP port and certificate, a new server.
    let addr = first.addr.to_string();
    let second = within(async {
        loop {
            // The old endpoint releases its socket once its connections are gone.
            let server = Server::builder().build();
            register(server.router());
            let tls = stmp::tls::server_config(first.cert_pem.as_bytes(), first.key_pem.as_bytes())
                .unwrap();
            match server.listen_quic(addr.as_str(), tls).await {
                Ok(_) => break server,
                Err(_) => tokio::task::yield_now().await,
            }
        }
    })
    .await;
    within(async {
        loop {
            match events.recv().await {
                Some(ConnectionEvent::Connected { .. }) => break,
                Some(_) => continue,
                None => panic!("client gave up"),
            }
        }
    })
    .await;
    let echo: Echo = within(client.call(&ECHO, &echo("back"))).await.unwrap();
    assert_eq!(echo.text, "back");
    assert_eq!(second.conns().len(), 1);
}

/// A burst of requests read at once over QUIC is answered as over TCP: the engine holds the
/// answers and writes them itself, starting no writer task for them. (Queued for a writer
/// task, they cost that task's wake-up and a hop on the way to quinn's connection task.)
#[tokio::test]
async fn a_burst_over_quic_is_answered_by_the_engine_without_a_writer_task() {
    use bytes::BytesMut;
    use stmp::wire::{Header, Packet, PacketCodec, Request};
    use tokio::io::AsyncReadExt;
    use tokio_util::codec::Decoder;

    const BURST: u16 = 32;
    let quic = quic_server("127.0.0.1:0", None).await;
    let mut tls = (*stmp::tls::client_config(quic.cert_pem.as_bytes()).unwrap()).clone();
    tls.alpn_protocols = vec![stmp::quic::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client((std::net::Ipv4Addr::LOCALHOST, 0).into()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
    let connection = within(endpoint.connect(quic.addr, "localhost").unwrap())
        .await
        .unwrap();
    let (mut send, mut recv) = within(connection.open_bi()).await.unwrap();
    let mut read = say_hello(&mut send, &mut recv).await;

    let before = alive_tasks();
    let mut codec = PacketCodec::new();
    for round in 0..3 {
        let mut burst = BytesMut::new();
        for mid in 1..=BURST {
            Packet::Request(Request {
                mid,
                action: ECHO.wire_action(),
                header: Header::new(),
                payload: stmp::Codec::PROTOBUF.encode(&echo("a burst")).unwrap(),
            })
            .encode_stream(&mut burst);
        }
        // One write: the server reads the burst at once.
        send.write_all(&burst).await.unwrap();
        let mut answered = 0;
        while answered < BURST {
            match codec.decode(&mut read).unwrap() {
                Some(Packet::Response(response)) => {
                    assert_eq!(response.status, Code::Ok, "round {round}");
                    answered += 1;
                }
                Some(other) => panic!("a response, not {other:?}"),
                None => assert_ne!(within(recv.read_buf(&mut read)).await.unwrap(), 0),
            }
        }
    }
    assert_eq!(alive_tasks(), before, "a writer task answered the burst");
    connection.close(0u32.into(), b"");
    drop(quic.server);
}
