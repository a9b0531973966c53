//! Authentication, reconnects, graceful shutdown, server → client calls and broadcasts.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use stmp::{Client, Code, ConnectionEvent, Context, Method, Server, Status};
use tokio::sync::mpsc;

const WHO: Method = Method::new("test.Client.Who", "test.Echo", "test.Echo");

#[derive(Clone, Debug, PartialEq)]
struct User(String);

fn authenticated_server() -> Server {
    Server::builder()
        .authenticate(|conn| async move {
            match conn.peer_header().get("token") {
                Some(token) if token.starts_with("user:") => {
                    conn.insert_extension(User(token["user:".len()..].to_owned()));
                    Ok(())
                }
                _ => Err(Status::unauthorized("a valid token is required")),
            }
        })
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_attaches_identity_or_refuses_without_retry() {
    let server = authenticated_server();
    let addrs = serve_all(&server).await;
    const WHOAMI: Method = Method::new("test.Auth.WhoAmI", "test.Echo", "test.Echo");
    server
        .router()
        .route(&WHOAMI, |ctx: Context, _: Echo| async move {
            let user = ctx
                .conn()
                .extension::<User>()
                .ok_or_else(|| Status::unauthorized("?"))?;
            Ok::<_, Status>(echo(&user.0))
        });
    for scheme in ["tcp", "ws"] {
        let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = attempts.clone();
        let refused = addrs
            .client()
            .header("token", "forged")
            .on_connection(move |_| {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })
            .connect(&addrs.url(scheme));
        let error = within(refused).await.unwrap_err();
        assert_eq!(error.code(), Code::Unauthorized, "{scheme}: {error}");
        assert_eq!(error.message(), "a valid token is required");
        assert_eq!(
            attempts.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "no retry"
        );

        let client = within(
            addrs
                .client()
                .header("token", "user:alice")
                .connect(&addrs.url(scheme)),
        )
        .await
        .unwrap();
        let me: Echo = within(client.call(&WHOAMI, &Echo::default()))
            .await
            .unwrap();
        assert_eq!(me.text, "alice");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_refusing_hook_attached_is_cleaned_up() {
    let users = stmp::Users::new();
    let server = Server::builder()
        .authenticate({
            let users = users.clone();
            move |conn| {
                let users = users.clone();
                async move {
                    users.bind("mallory", &conn);
                    Err(Status::unauthorized("banned"))
                }
            }
        })
        .build();
    let addrs = serve_all(&server).await;
    for scheme in ["tcp", "ws"] {
        let refused = within(addrs.client().connect(&addrs.url(scheme)))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthorized);
        assert!(users.online().is_empty(), "{scheme}: {:?}", users.online());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_calls_a_method_the_client_serves() {
    let server = Server::builder().build();
    let addrs = serve_all(&server).await;
    for scheme in ["tcp", "ws"] {
        let client = within(addrs.client().connect(&addrs.url(scheme)))
            .await
            .unwrap();
        client
            .router()
            .route(&WHO, |_ctx: Context, input: Echo| async move {
                Ok::<_, Status>(echo(&format!("client got {}", input.text)))
            });
        let id = client.conn().unwrap().id();
        // The server's hello reaches the client before the server lists the connection.
        until(|| !server.conns().is_empty()).await;
        let conns = server.conns().to_vec();
        let on_server = conns
            .iter()
            .find(|c| c.remote_addr().is_some())
            .expect("a connection");
        assert_eq!(server.conns().len(), 1);
        let answer: Echo = within(on_server.call(&WHO, &echo("ping"))).await.unwrap();
        assert_eq!(answer.text, "client got ping");
        assert_ne!(id, on_server.id());
        within(client.close()).await;
        // The server sees the connection go.
        until(|| server.conns().is_empty()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_serialises_once_per_content_type() {
    let server = Server::builder().build();
    let addrs = serve_all(&server).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut clients = Vec::new();
    for (scheme, codec) in [
        ("tcp", stmp::Codec::PROTOBUF),
        ("ws", stmp::Codec::JSON),
        ("tls", stmp::Codec::PROTOBUF),
        ("wss", stmp::Codec::MSGPACK),
    ] {
        let client = within(addrs.client().codec(codec).connect(&addrs.url(scheme)))
            .await
            .unwrap();
        let tx = tx.clone();
        let _handle =
            client
                .router()
                .listen(&USER_JOIN, move |_ctx: Context, event: UserJoinEvent| {
                    let tx = tx.clone();
                    async move {
                        tx.send((scheme, event.user)).unwrap();
                    }
                });
        clients.push(client);
    }
    until(|| server.conns().len() >= 4).await;
    let event = UserJoinEvent { user: "bob".into() };
    let delivery = stmp::broadcast(server.conns(), &USER_JOIN, &event).unwrap();
    assert_eq!(delivery.queued, 4);
    assert_eq!(delivery.encodings, 3);
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(within(rx.recv()).await.unwrap());
    }
    got.sort();
    assert_eq!(
        got,
        [
            ("tcp", "bob".into()),
            ("tls", "bob".into()),
            ("ws", "bob".into()),
            ("wss", "bob".into())
        ]
    );

    // Excluding one connection; detached listeners hear nothing.
    let excluded = server.conns().to_vec().into_iter().next().unwrap();
    let delivery =
        stmp::broadcast(server.everyone().except(&excluded), &USER_JOIN, &event).unwrap();
    assert_eq!(delivery.queued, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_detach_at_runtime() {
    let server = Server::builder().build();
    let addrs = serve_all(&server).await;
    let client = within(addrs.client().connect(&addrs.url("tcp")))
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let first = client.router().listen(&USER_JOIN, {
        let tx = tx.clone();
        move |_ctx: Context, e: UserJoinEvent| {
            let tx = tx.clone();
            async move { tx.send(format!("first {}", e.user)).unwrap() }
        }
    });
    let _second = client
        .router()
        .listen(&USER_JOIN, move |_ctx: Context, e: UserJoinEvent| {
            let tx = tx.clone();
            async move { tx.send(format!("second {}", e.user)).unwrap() }
        });
    until(|| !server.conns().is_empty()).await;
    stmp::broadcast(
        server.everyone(),
        &USER_JOIN,
        &UserJoinEvent { user: "a".into() },
    )
    .unwrap();
    assert_eq!(within(rx.recv()).await.unwrap(), "first a");
    assert_eq!(within(rx.recv()).await.unwrap(), "second a");
    first.detach();
    stmp::broadcast(
        server.everyone(),
        &USER_JOIN,
        &UserJoinEvent { user: "b".into() },
    )
    .unwrap();
    assert_eq!(within(rx.recv()).await.unwrap(), "second b");
    // Events keep their order: a ping proves nothing else was queued.
    let ok: Echo = within(client.call(&ECHO, &Echo::default())).await.unwrap();
    assert_eq!(ok, Echo::default());
    assert!(rx.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reconnects_after_a_server_restart() {
    let first = Server::builder().build();
    register(first.router());
    let addr = first.listen_tcp("127.0.0.1:0").await.unwrap();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let client = within(
        Client::builder()
            .reconnect(Duration::from_millis(20), Duration::from_millis(200))
            .on_connection(move |event| {
                let _ = events_tx.send(event.clone());
            })
            .connect(&format!("tcp://{addr}")),
    )
    .await
    .unwrap();
    let (tx, mut heard) = mpsc::unbounded_channel();
    let _listener = client
        .router()
        .listen(&USER_JOIN, move |_ctx: Context, e: UserJoinEvent| {
            let tx = tx.clone();
            async move { tx.send(e.user).unwrap() }
        });
    assert!(matches!(
        within(events.recv()).await,
        Some(ConnectionEvent::Connected { attempt: 0, .. })
    ));

    within(first.shutdown(Duration::from_secs(1))).await;
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

    // The new server wants a token the client did not have at first: set it for reconnects.
    client.set_handshake_header("token", "fresh");
    let second = Server::builder()
        .authenticate(|conn| async move {
            match conn.peer_header().get("token") {
                Some("fresh") => Ok(()),
                _ => Err(Status::unauthorized("no fresh token")),
            }
        })
        .build();
    register(second.router());
    second.listen_tcp(addr).await.unwrap();
    let conn = within(async {
        loop {
            match events.recv().await {
                Some(ConnectionEvent::Connected { conn, attempt }) => {
                    assert!(attempt >= 1);
                    break conn;
                }
                Some(ConnectionEvent::Disconnected {
                    will_retry: true, ..
                }) => continue,
                other => panic!("{other:?}"),
            }
        }
    })
    .await;
    assert_eq!(client.conn().unwrap(), conn);
    let ok: Echo = within(client.call(&ECHO, &echo("again"))).await.unwrap();
    assert_eq!(ok.text, "again");
    until(|| !second.conns().is_empty()).await;
    stmp::broadcast(
        second.everyone(),
        &USER_JOIN,
        &UserJoinEvent {
            user: "after restart".into(),
        },
    )
    .unwrap();
    assert_eq!(within(heard.recv()).await.unwrap(), "after restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_calls_then_closes_with_server_shutdown() {
    let server = Server::builder().build();
    register(server.router());
    let Gate {
        release,
        mut entered,
    } = route_block(server.router());
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let url = format!("tcp://{addr}");
    let client = within(Client::builder().no_reconnect().connect(&url))
        .await
        .unwrap();
    let conn = client.conn().unwrap();
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { client.call::<_, Echo>(&BLOCK, &echo("in flight")).await }
    });
    within(entered.recv()).await.unwrap();

    let shutdown = tokio::spawn({
        let server = server.clone();
        async move { server.shutdown(Duration::from_secs(5)).await }
    });
    within(server.closed()).await;
    // While draining: new calls are refused with ServerShutdown, new connections too.
    let refused = within(client.call::<_, Echo>(&ECHO, &Echo::default()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ServerShutdown);
    let late = within(Client::builder().no_reconnect().connect(&url))
        .await
        .unwrap_err();
    assert!(
        matches!(late.code(), Code::NetworkError | Code::ServerShutdown),
        "{late}"
    );

    release.notify_one();
    let finished = within(in_flight).await.unwrap().unwrap();
    assert_eq!(finished.text, "in flight");
    within(shutdown).await.unwrap();
    let closed = within(conn.closed()).await;
    assert_eq!(closed.code(), Code::ServerShutdown, "{closed}");
    assert_eq!(within(client.closed()).await.code(), Code::ServerShutdown);
}

/// A connection whose handshake ends after shutdown has closed the others (its authenticate
/// hook was still running) is closed too, instead of living on past the shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_admitted_during_shutdown_is_closed_with_it() {
    let hooked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Notify::new());
    let (in_hook_tx, mut in_hook) = mpsc::unbounded_channel();
    let server = Server::builder()
        .authenticate({
            let (hooked, gate) = (hooked.clone(), gate.clone());
            move |_conn| {
                let (hooked, gate, in_hook) = (hooked.clone(), gate.clone(), in_hook_tx.clone());
                async move {
                    // The first connection passes; the second waits for the gate.
                    if hooked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0 {
                        let released = gate.notified();
                        let _ = in_hook.send(());
                        released.await;
                    }
                    Ok(())
                }
            }
        })
        .build();
    register(server.router());
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let url = format!("tcp://{addr}");
    let first = within(Client::builder().no_reconnect().connect(&url))
        .await
        .unwrap();
    let first_conn = first.conn().unwrap();
    let second = tokio::spawn({
        let url = url.clone();
        async move { Client::builder().no_reconnect().connect(&url).await }
    });
    within(in_hook.recv()).await.unwrap();

    let shutdown = tokio::spawn({
        let server = server.clone();
        async move { server.shutdown(Duration::from_secs(1)).await }
    });
    // The first connection closed: shutdown has gone through the connections it knows of.
    assert_eq!(
        within(first_conn.closed()).await.code(),
        Code::ServerShutdown
    );
    gate.notify_one();
    match within(second).await.unwrap() {
        // Admitted after all: it must not outlive the shutdown.
        Ok(second) => {
            within(shutdown).await.unwrap();
            until(|| second.conn().is_none()).await;
            assert!(server.conns().is_empty(), "{:?}", server.conns().to_vec());
        }
        Err(refused) => assert_eq!(refused.code(), Code::ServerShutdown, "{refused}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_wait_for_a_reconnect_or_fail_fast() {
    let server = Server::builder().build();
    register(server.router());
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let url = format!("tcp://{addr}");
    let waiting = within(
        Client::builder()
            .reconnect(Duration::from_millis(10), Duration::from_millis(50))
            .connect(&url),
    )
    .await
    .unwrap();
    let fast = within(
        Client::builder()
            .fail_fast(true)
            .reconnect(Duration::from_secs(5), Duration::from_secs(5))
            .connect(&url),
    )
    .await
    .unwrap();
    within(server.shutdown(Duration::from_secs(1))).await;
    until(|| fast.conn().is_none() && waiting.conn().is_none()).await;
    let error = within(fast.call::<_, Echo>(&ECHO, &Echo::default()))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NetworkError);
    let options = stmp::CallOptions::new().timeout(Duration::from_millis(100));
    let error = within(stmp::Caller::call::<_, Echo>(
        &waiting,
        &ECHO,
        &Echo::default(),
        options,
    ))
    .await
    .unwrap_err();
    assert_eq!(error.code(), Code::RequestTimeout);
    // A server comes back on the same address: the waiting call goes through.
    let back = Server::builder().build();
    register(back.router());
    let call = tokio::spawn({
        let waiting = waiting.clone();
        async move { waiting.call::<_, Echo>(&ECHO, &echo("waited")).await }
    });
    back.listen_tcp(addr).await.unwrap();
    assert_eq!(within(call).await.unwrap().unwrap().text, "waited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_callbacks_get_the_status_and_reason() {
    let server = Server::builder().build();
    register(server.router());
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let client = tcp_client(addr).await;
    let conn = client.conn().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    conn.on_close(move |status| tx.send(status.clone()).unwrap());
    until(|| !server.conns().is_empty()).await;
    // The server closes this one connection with a reason; the client hears both.
    let on_server = server.conns().to_vec().remove(0);
    on_server.close(Code::Unauthorized, "signed out elsewhere");
    let status = within(rx.recv()).await.unwrap();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthorized, "signed out elsewhere")
    );
    assert_eq!(within(on_server.closed()).await.code(), Code::Unauthorized);
    // A callback added after the close runs at once.
    let (tx, mut rx) = mpsc::unbounded_channel();
    conn.on_close(move |status| tx.send(status.code()).unwrap());
    assert_eq!(rx.try_recv().unwrap(), Code::Unauthorized);
    // Unauthorized is not retried.
    assert_eq!(within(client.closed()).await.code(), Code::Unauthorized);
}
