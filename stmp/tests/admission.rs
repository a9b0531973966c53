//! Connection admission: connections count from accept, over-limit clients are told why on
//! every transport, handshakes have a limit of their own, and authentication a deadline.

mod common;

use std::time::Duration;

use common::*;
use stmp::{Client, Code, Server, Status};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Connects until the server has room again (a slot is freed a moment after the connection
/// it counted is closed).
async fn connect_when_room(builder: stmp::ClientBuilder, url: &str) -> Client {
    within(async {
        loop {
            match builder.clone().no_reconnect().connect(url).await {
                Ok(client) => return client,
                Err(status) if status.code() == Code::TooManyRequests => {
                    tokio::task::yield_now().await
                }
                Err(status) => panic!("{status}"),
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_limit_every_transport_refuses_with_too_many_requests() {
    init_tracing();
    let server = Server::builder().max_connections(1).build();
    let addrs = serve_all(&server).await;
    let (cert, key) = self_signed();
    let quic_tls = stmp::tls::server_config(cert.as_bytes(), key.as_bytes()).unwrap();
    let quic = server.listen_quic("127.0.0.1:0", quic_tls).await.unwrap();
    let first = within(addrs.client().no_reconnect().connect(&addrs.url("tcp")))
        .await
        .unwrap();
    for scheme in ["tcp", "tls", "ws", "wss"] {
        let refused = within(addrs.client().no_reconnect().connect(&addrs.url(scheme)))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::TooManyRequests, "{scheme}: {refused}");
        assert!(refused.message().contains("full"), "{scheme}: {refused}");
    }
    let quic_client = Client::builder()
        .tls(stmp::tls::client_config(cert.as_bytes()).unwrap())
        .no_reconnect();
    let url = format!("quic://localhost:{}", quic.port());
    let refused = within(quic_client.clone().connect(&url)).await.unwrap_err();
    assert_eq!(refused.code(), Code::TooManyRequests, "quic: {refused}");

    // The one admitted connection still works, and its place is free once it is gone.
    let ok: Echo = within(first.call(&ECHO, &echo("still served")))
        .await
        .unwrap();
    assert_eq!(ok.text, "still served");
    within(first.close()).await;
    let again = connect_when_room(addrs.client(), &addrs.url("wss")).await;
    let ok: Echo = within(again.call(&ECHO, &echo("wss"))).await.unwrap();
    assert_eq!(ok.text, "wss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_in_their_handshake_count_against_max_connections() {
    let server = Server::builder().max_connections(2).build();
    register(server.router());
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let url = format!("tcp://{addr}");
    let served = within(Client::builder().no_reconnect().connect(&url))
        .await
        .unwrap();
    // A peer that connects and never says a word holds a descriptor all the same.
    let silent = within(TcpStream::connect(addr)).await.unwrap();
    let refused = within(Client::builder().no_reconnect().connect(&url))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::TooManyRequests, "{refused}");
    assert_eq!(server.conns().len(), 1, "the silent peer is not served");
    drop(silent);
    let later = connect_when_room(Client::builder(), &url).await;
    let ok: Echo = within(later.call(&ECHO, &echo("in"))).await.unwrap();
    assert_eq!(ok.text, "in");
    drop(served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_handshakes_cannot_take_every_place() {
    let server = Server::builder()
        .max_connections(100)
        .max_handshaking(2)
        .build();
    register(server.router());
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let url = format!("tcp://{addr}");
    let served = within(Client::builder().no_reconnect().connect(&url))
        .await
        .unwrap();
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(within(TcpStream::connect(addr)).await.unwrap());
    }
    let refused = within(Client::builder().no_reconnect().connect(&url))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::TooManyRequests, "{refused}");
    assert!(refused.message().contains("handshake"), "{refused}");
    // A third silent peer is refused too: it reads the refusal and the end of the stream.
    let mut third = within(TcpStream::connect(addr)).await.unwrap();
    let mut refusal = Vec::new();
    within(third.read_to_end(&mut refusal)).await.unwrap();
    assert!(refusal.starts_with(b"STMP"), "{refusal:?}");
    // Connections past their handshake were never in the way.
    let ok: Echo = within(served.call(&ECHO, &echo("served"))).await.unwrap();
    assert_eq!(ok.text, "served");
    drop(silent);
    let later = connect_when_room(Client::builder(), &url).await;
    let ok: Echo = within(later.call(&ECHO, &echo("later"))).await.unwrap();
    assert_eq!(ok.text, "later");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_that_never_finishes_is_refused_after_its_timeout() {
    let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel();
    let server = Server::builder()
        .authenticate_timeout(Duration::from_millis(300))
        .authenticate(move |conn| {
            let stuck = conn.peer_header().get("token") == Some("stuck");
            let entered_tx = entered_tx.clone();
            async move {
                if stuck {
                    let _ = entered_tx.send(());
                    std::future::pending::<()>().await;
                }
                Ok::<(), Status>(())
            }
        })
        .build();
    let addrs = serve_all(&server).await;
    for scheme in ["tcp", "ws"] {
        let url = addrs.url(scheme);
        let stuck = tokio::spawn(
            Client::builder()
                .header("token", "stuck")
                .no_reconnect()
                .connect(&url),
        );
        within(entered.recv()).await.unwrap();
        // While one client hangs in the hook, another is served.
        let other = within(Client::builder().no_reconnect().connect(&url))
            .await
            .unwrap();
        let ok: Echo = within(other.call(&ECHO, &echo(scheme))).await.unwrap();
        assert_eq!(ok.text, scheme);
        let refused = within(stuck).await.unwrap().unwrap_err();
        assert_eq!(refused.code(), Code::RequestTimeout, "{scheme}: {refused}");
        assert!(
            refused.message().contains("authentication"),
            "{scheme}: {refused}"
        );
    }
}
