//! History and recovery end to end: clients cut off from the network by a proxy come back and
//! get exactly what they missed, or are told they cannot.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use stmp::history::{History, Recovery, Retention};
use stmp::{Client, ClientBuilder, Context, Method, Rooms, Server, Status};
use stmp_testkit::CutProxy;
use tokio::sync::mpsc;

const JOIN: Method = Method::new("test.History.Join", "test.Room", "test.Room");
const SAID: Method = Method::new("test.History.Said", "test.Said", "google.protobuf.Empty");

#[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
struct Room {
    #[prost(string, tag = "1")]
    name: String,
}

#[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
struct Said {
    #[prost(uint64, tag = "1")]
    seq: u64,
}

/// Publishes `Said { seq }` to `room` through `history`, from nobody in particular.
async fn say(history: &History, room: &str, seq: u64) {
    history
        .publish(room, &SAID, &Said { seq }, None)
        .await
        .unwrap();
}

/// A server whose `Join` joins a room through `history`; returns its TCP and WS addresses.
async fn serve(history: &History) -> (Server, SocketAddr, SocketAddr) {
    let server = Server::builder().build();
    let rooms = history.clone();
    server
        .router()
        .route(&JOIN, move |ctx: Context, room: Room| {
            let rooms = rooms.clone();
            async move {
                rooms.join(&room.name, ctx.conn()).await;
                Ok::<_, Status>(room)
            }
        });
    let tcp = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let ws = server.listen_ws("127.0.0.1:0", "/stmp").await.unwrap();
    (server, tcp, ws)
}

/// What a client heard: (offset, seq) of each event, and each recovery outcome.
struct Heard {
    events: mpsc::UnboundedReceiver<(u64, u64)>,
    recoveries: mpsc::UnboundedReceiver<Recovery>,
}

/// A client through `url` that joins `room` on every (re)connect and records what it hears.
async fn member(builder: ClientBuilder, url: &str, room: &'static str) -> (Client, Heard) {
    let (event_tx, events) = mpsc::unbounded_channel();
    let (recovery_tx, recoveries) = mpsc::unbounded_channel();
    let client = builder
        .reconnect(Duration::from_millis(5), Duration::from_millis(50))
        .on_recovery(move |recovery| {
            let _ = recovery_tx.send(recovery.clone());
        })
        .on_connect(move |conn| async move {
            let _: Room = conn.call(&JOIN, &Room { name: room.into() }).await?;
            Ok(())
        })
        .connect(url)
        .await
        .unwrap();
    let _listener = client
        .router()
        .listen(&SAID, move |ctx: Context, said: Said| {
            let offset = ctx.position().map_or(0, |position| position.offset);
            let _ = event_tx.send((offset, said.seq));
            async {}
        });
    (client, Heard { events, recoveries })
}

async fn next_events(heard: &mut Heard, count: usize) -> Vec<(u64, u64)> {
    let mut got = Vec::with_capacity(count);
    while got.len() < count {
        got.push(within(heard.events.recv()).await.expect("client gone"));
    }
    got
}

async fn published_to_members(history: &History, room: &str, members: usize) {
    until(|| history.rooms().members(room).len() == members).await;
}

async fn cut_publish_and_recover(scheme: &str) {
    let history = History::builder(Rooms::new())
        .default_retention(Retention::new(5000, 16 << 20, Duration::from_secs(600)))
        .build();
    let (_server, tcp, ws) = serve(&history).await;
    let proxy = CutProxy::start(if scheme == "ws" { ws } else { tcp }).await;
    let url = match scheme {
        "ws" => format!("ws://{}/stmp", proxy.addr()),
        _ => format!("tcp://{}", proxy.addr()),
    };
    let (client, mut heard) = member(Client::builder(), &url, "lobby").await;
    published_to_members(&history, "lobby", 1).await;
    for seq in 1..=5 {
        say(&history, "lobby", seq).await;
    }
    assert_eq!(
        next_events(&mut heard, 5).await,
        (1..=5).map(|n| (n, n)).collect::<Vec<_>>()
    );
    // Positions are tracked only once the event reached the client: wait for the fifth.
    until(|| client.position("lobby").is_some_and(|p| p.offset == 5)).await;

    proxy.cut();
    published_to_members(&history, "lobby", 0).await;
    for seq in 6..=1005 {
        say(&history, "lobby", seq).await;
    }
    // Live events race the re-join from another thread, as fast as they can, until the
    // client has recovered: every one must arrive once, after the replay.
    proxy.restore();
    let recovered = Arc::new(AtomicBool::new(false));
    let racing = {
        let (history, recovered) = (history.clone(), recovered.clone());
        // On a thread of its own, as fast as it can: the in-process backend never waits.
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let mut seq = 1005;
            while seq < 4005 && !recovered.load(Ordering::SeqCst) {
                seq += 1;
                runtime
                    .block_on(history.publish("lobby", &SAID, &Said { seq }, None))
                    .unwrap();
            }
            seq
        })
    };
    let recovery = within(heard.recoveries.recv()).await.unwrap();
    recovered.store(true, Ordering::SeqCst);
    assert!(recovery.recovered, "{recovery:?}");
    let last = within(racing).await.unwrap();
    let heard_after = next_events(&mut heard, (last - 5) as usize).await;
    let want: Vec<(u64, u64)> = (6..=last).map(|n| (n, n)).collect();
    assert_eq!(heard_after, want, "{scheme}: every event once, in order");
    assert!(heard.events.try_recv().is_err(), "{scheme}: a duplicate");
    assert_eq!(client.position("lobby").unwrap().offset, last);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cut_off_gets_the_thousand_events_it_missed_over_tcp() {
    cut_publish_and_recover("tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cut_off_gets_the_thousand_events_it_missed_over_websocket() {
    cut_publish_and_recover("ws").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_overflow_is_reported_as_not_recovered_and_live_events_go_on() {
    let history = History::builder(Rooms::new())
        .retention(
            "small/",
            Retention::new(10, 1 << 20, Duration::from_secs(600)),
        )
        .build();
    let (_server, tcp, _) = serve(&history).await;
    let proxy = CutProxy::start(tcp).await;
    let (client, mut heard) = member(
        Client::builder(),
        &format!("tcp://{}", proxy.addr()),
        "small/room",
    )
    .await;
    published_to_members(&history, "small/room", 1).await;
    say(&history, "small/room", 1).await;
    assert_eq!(next_events(&mut heard, 1).await, [(1, 1)]);
    until(|| client.position("small/room").is_some()).await;

    proxy.cut();
    published_to_members(&history, "small/room", 0).await;
    for seq in 2..=50 {
        say(&history, "small/room", seq).await;
    }
    proxy.restore();
    let recovery = within(heard.recoveries.recv()).await.unwrap();
    assert!(!recovery.recovered);
    assert_eq!(recovery.position.offset, 50);
    // Nothing was replayed: a partial replay would be a gap the application cannot see.
    assert!(heard.events.try_recv().is_err());
    say(&history, "small/room", 51).await;
    assert_eq!(next_events(&mut heard, 1).await, [(51, 51)]);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_changes_the_epoch_and_is_not_recovered() {
    let before = History::new(Rooms::new());
    let (first, tcp, _) = serve(&before).await;
    let proxy = CutProxy::start(tcp).await;
    let (client, mut heard) = member(
        Client::builder(),
        &format!("tcp://{}", proxy.addr()),
        "lobby",
    )
    .await;
    published_to_members(&before, "lobby", 1).await;
    say(&before, "lobby", 1).await;
    assert_eq!(next_events(&mut heard, 1).await, [(1, 1)]);
    until(|| client.position("lobby").is_some_and(|p| p.offset == 1)).await;
    let old_epoch = client.position("lobby").unwrap().epoch;

    // The restart: the old server goes away with its history; a new one takes its place.
    proxy.cut();
    first.shutdown(Duration::from_secs(1)).await;
    let after = History::new(Rooms::new());
    let (_second, tcp, _) = serve(&after).await;
    proxy.retarget(tcp);
    say(&after, "lobby", 2).await;
    proxy.restore();

    let recovery = within(heard.recoveries.recv()).await.unwrap();
    assert!(!recovery.recovered);
    assert_ne!(recovery.position.epoch, old_epoch);
    assert_eq!(recovery.position.offset, 1);
    assert!(heard.events.try_recv().is_err());
    say(&after, "lobby", 3).await;
    assert_eq!(next_events(&mut heard, 1).await, [(2, 3)]);
    assert_eq!(
        client.position("lobby").unwrap().epoch,
        after.position("lobby").await.unwrap().epoch
    );
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejoin_on_the_same_connection_does_not_replay_twice() {
    let history = History::new(Rooms::new());
    let (_server, tcp, _) = serve(&history).await;
    let proxy = CutProxy::start(tcp).await;
    let (client, mut heard) = member(
        Client::builder(),
        &format!("tcp://{}", proxy.addr()),
        "lobby",
    )
    .await;
    published_to_members(&history, "lobby", 1).await;
    say(&history, "lobby", 1).await;
    next_events(&mut heard, 1).await;
    until(|| client.position("lobby").is_some_and(|p| p.offset == 1)).await;
    proxy.cut();
    published_to_members(&history, "lobby", 0).await;
    say(&history, "lobby", 2).await;
    proxy.restore();
    assert!(within(heard.recoveries.recv()).await.unwrap().recovered);
    assert_eq!(next_events(&mut heard, 1).await, [(2, 2)]);

    // Leave and join again on the same connection: the handshake's resume is used up.
    let conn = history.rooms().members("lobby").pop().unwrap();
    assert!(history.leave("lobby", &conn));
    let joined = history.join("lobby", &conn).await;
    assert!(joined.joined);
    assert_eq!((joined.replayed, joined.recovered), (0, None));
    say(&history, "lobby", 3).await;
    assert_eq!(next_events(&mut heard, 1).await, [(3, 3)]);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_history_gets_live_events_and_no_extension_packets() {
    let history = History::new(Rooms::new());
    let (_server, tcp, _) = serve(&history).await;
    let proxy = CutProxy::start(tcp).await;
    let (client, mut heard) = member(
        Client::builder().history(false),
        &format!("tcp://{}", proxy.addr()),
        "lobby",
    )
    .await;
    published_to_members(&history, "lobby", 1).await;
    let conn = history.rooms().members("lobby").pop().unwrap();
    assert!(!conn.peer_header().contains_key(stmp::history::SUPPORTS));
    say(&history, "lobby", 1).await;
    assert_eq!(next_events(&mut heard, 1).await, [(1, 1)]);
    assert_eq!(client.position("lobby"), None);

    proxy.cut();
    published_to_members(&history, "lobby", 0).await;
    say(&history, "lobby", 2).await;
    proxy.restore();
    published_to_members(&history, "lobby", 1).await;
    say(&history, "lobby", 3).await;
    // Missed, and not replayed: the client did not ask.
    assert_eq!(next_events(&mut heard, 1).await, [(3, 3)]);
    assert!(heard.recoveries.try_recv().is_err());
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_excluded_sender_is_not_replayed_its_own_event() {
    let history = History::new(Rooms::new());
    let (_server, tcp, _) = serve(&history).await;
    let proxy = CutProxy::start(tcp).await;
    let (client, mut heard) = member(
        Client::builder(),
        &format!("tcp://{}", proxy.addr()),
        "lobby",
    )
    .await;
    published_to_members(&history, "lobby", 1).await;
    let sender = history.rooms().members("lobby").pop().unwrap();
    let published = history
        .publish("lobby", &SAID, &Said { seq: 1 }, Some(&sender))
        .await
        .unwrap();
    assert_eq!(published.delivery.queued, 0);
    until(|| client.position("lobby").is_some_and(|p| p.offset == 1)).await;
    proxy.cut();
    published_to_members(&history, "lobby", 0).await;
    say(&history, "lobby", 2).await;
    proxy.restore();
    assert!(within(heard.recoveries.recv()).await.unwrap().recovered);
    assert_eq!(next_events(&mut heard, 1).await, [(2, 2)]);
    assert!(heard.events.try_recv().is_err());
    client.close().await;
}
