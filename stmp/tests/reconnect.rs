//! The client's `on_connect` hook (re-join after a restart, before waiting calls go on) and
//! its engine settings.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use stmp::{Client, Code, Context, Method, Rooms, Server, Status};
use tokio::sync::mpsc;

const JOIN: Method = Method::new("test.Rooms.Join", "test.JoinRoomInput", "test.RoomModel");
const WHERE: Method = Method::new("test.Rooms.Where", "test.Echo", "test.Echo");

/// A server whose `Join` puts the caller in a room and whose `Where` names the caller's rooms.
fn room_server(rooms: &Rooms) -> Server {
    let server = Server::builder().build();
    register(server.router());
    let joined = rooms.clone();
    server
        .router()
        .route(&JOIN, move |ctx: Context, input: JoinRoomInput| {
            joined.join(&input.name, ctx.conn());
            async move {
                Ok::<_, Status>(RoomModel {
                    name: input.name,
                    users: Vec::new(),
                })
            }
        });
    let asked = rooms.clone();
    server.router().route(&WHERE, move |ctx: Context, _: Echo| {
        let text = asked.rooms_of(ctx.conn()).join(",");
        async move { Ok::<_, Status>(echo(&text)) }
    });
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_connect_rejoins_after_a_restart_before_waiting_calls_go_on() {
    let rooms = Rooms::new();
    let first = room_server(&rooms);
    let addr = first.listen_tcp("127.0.0.1:0").await.unwrap();
    let joins = Arc::new(AtomicUsize::new(0));
    let counted = joins.clone();
    let client = within(
        Client::builder()
            .reconnect(Duration::from_millis(20), Duration::from_millis(200))
            .on_connect(move |conn| {
                let counted = counted.clone();
                async move {
                    let lobby = JoinRoomInput {
                        name: "lobby".into(),
                    };
                    let _: RoomModel = conn.call(&JOIN, &lobby).await?;
                    counted.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            })
            .connect(&format!("tcp://{addr}")),
    )
    .await
    .unwrap();
    // The hook ran before `connect` returned.
    assert_eq!(joins.load(Ordering::SeqCst), 1);
    let (tx, mut heard) = mpsc::unbounded_channel();
    let _listener = client
        .router()
        .listen(&USER_JOIN, move |_ctx: Context, e: UserJoinEvent| {
            let tx = tx.clone();
            async move { tx.send(e.user).unwrap() }
        });
    let event = |user: &str| UserJoinEvent { user: user.into() };
    stmp::broadcast(rooms.to("lobby"), &USER_JOIN, &event("first")).unwrap();
    assert_eq!(within(heard.recv()).await.unwrap(), "first");

    within(first.shutdown(Duration::from_secs(1))).await;
    until(|| client.conn().is_none()).await;
    // Made while disconnected: it waits for the connection, and the hook runs first.
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.call::<_, Echo>(&WHERE, &echo("")).await }
    });
    let rooms = Rooms::new();
    let second = room_server(&rooms);
    second.listen_tcp(addr).await.unwrap();
    let answer = within(waiting).await.unwrap().unwrap();
    assert_eq!(
        answer.text, "lobby",
        "the waiting call went before the re-join"
    );
    assert_eq!(joins.load(Ordering::SeqCst), 2);
    stmp::broadcast(rooms.to("lobby"), &USER_JOIN, &event("after restart")).unwrap();
    assert_eq!(within(heard.recv()).await.unwrap(), "after restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_on_connect_hook_closes_its_connection() {
    let server = Server::builder().build();
    register(server.router());
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let url = format!("tcp://{addr}");

    // The first connect fails with the hook's status, and the server sees the connection go.
    let refused = within(
        Client::builder()
            .on_connect(|_conn| async { Err(Status::unauthorized("no account")) })
            .connect(&url),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthorized, "{refused}");
    until(|| server.conns().is_empty()).await;

    // On a reconnect a retryable failure is one more failed attempt: the next one succeeds.
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let client = within(
        Client::builder()
            .reconnect(Duration::from_millis(10), Duration::from_millis(50))
            .on_connect(move |_conn| {
                let run = counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    match run {
                        1 => Err(Status::too_many_requests("not yet")),
                        _ => Ok(()),
                    }
                }
            })
            .connect(&url),
    )
    .await
    .unwrap();
    until(|| server.conns().len() == 1).await;
    server.conns().to_vec()[0].close(Code::ServerShutdown, "go away");
    until(|| runs.load(Ordering::SeqCst) == 3 && client.conn().is_some()).await;
    let ok: Echo = within(client.call(&ECHO, &echo("third time")))
        .await
        .unwrap();
    assert_eq!(ok.text, "third time");
    until(|| server.conns().len() == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_limits_packet_size_and_concurrent_requests() {
    let server = Server::builder().build();
    register(server.router());
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let url = format!("tcp://{addr}");

    let small = within(
        Client::builder()
            .no_reconnect()
            .max_packet_size(1024)
            .connect(&url),
    )
    .await
    .unwrap();
    let fits: Echo = within(small.call(&ECHO, &echo("short"))).await.unwrap();
    let conn = small.conn().unwrap();
    assert_eq!(fits.text, "short");
    // The echo of 4 KiB comes back larger than the client accepts.
    let error = within(small.call::<_, Echo>(&ECHO, &echo(&"x".repeat(4096))))
        .await
        .unwrap_err();
    assert!(error.message().contains("RequestEntityTooLarge"), "{error}");
    let closed = within(conn.closed()).await;
    assert_eq!(closed.code(), Code::RequestEntityTooLarge, "{closed}");
    until(|| server.conns().is_empty()).await;

    let router = stmp::Router::new();
    let Gate {
        release,
        mut entered,
    } = route_block(&router);
    let _served = within(
        Client::builder()
            .router(router)
            .no_reconnect()
            .max_concurrent_requests(1)
            .connect(&url),
    )
    .await
    .unwrap();
    until(|| server.conns().len() == 1).await;
    let conn = server.conns().to_vec().remove(0);
    let blocked = tokio::spawn({
        let conn = conn.clone();
        async move { conn.call::<_, Echo>(&BLOCK, &echo("first")).await }
    });
    within(entered.recv()).await.unwrap();
    let refused = within(conn.call::<_, Echo>(&BLOCK, &echo("second")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::TooManyRequests, "{refused}");
    release.notify_one();
    assert_eq!(within(blocked).await.unwrap().unwrap().text, "first");
}

/// Names the connection a call came in on.
const WHO: Method = Method::new("test.Conns.Who", "test.Echo", "test.Echo");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_that_called_before_a_reconnect_calls_over_the_new_connection() {
    let server = Server::builder().build();
    let (tx, mut conns) = mpsc::unbounded_channel();
    server.router().route(&WHO, move |ctx: Context, _: Echo| {
        tx.send(ctx.conn().clone()).unwrap();
        async move { Ok::<_, Status>(echo(&ctx.conn().id().to_string())) }
    });
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let client = within(
        Client::builder()
            .reconnect(Duration::from_millis(20), Duration::from_millis(200))
            .connect(&format!("tcp://{addr}")),
    )
    .await
    .unwrap();
    // A handle of its own, which keeps the connection it called through.
    let handle = client.clone();
    let first: Echo = within(handle.call(&WHO, &echo(""))).await.unwrap();
    let first_conn = conns.recv().await.unwrap();
    assert_eq!(first.text, first_conn.id().to_string());
    let before = client.conn().unwrap();

    first_conn.close(Code::ServerShutdown, "go away");
    until(|| client.conn().is_some_and(|live| live != before)).await;
    let second: Echo = within(handle.call(&WHO, &echo(""))).await.unwrap();
    let second_conn = conns.recv().await.unwrap();
    assert_ne!(second_conn.id(), first_conn.id(), "a new connection");
    assert_eq!(second.text, second_conn.id().to_string());
    assert!(!second_conn.is_closed());
}
