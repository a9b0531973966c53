//! Two room-server nodes on one NATS: users on different nodes chat in a room, send each
//! other direct messages, see each other in the members and `/who`; a node that stops
//! leaves the others working.

mod common;

use common::*;
use room::server::{Chat, RoomServer, ServerOptions, TlsPem};
use stmp_nats::NatsAdapter;
use stmp_nats::nats_server::NatsServer;

async fn node(nats: &NatsServer) -> RoomServer {
    let adapter = within(NatsAdapter::connect(&nats.url())).await.unwrap();
    within(RoomServer::start(
        Chat::new(accounts()),
        ServerOptions {
            tcp: Some("127.0.0.1:0".parse().unwrap()),
            nats: Some(adapter),
            ..ServerOptions::default()
        },
    ))
    .await
    .expect("server starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_two_nodes_chat_as_if_on_one() {
    logs();
    let nats = NatsServer::start().unwrap();
    let pem = TlsPem::self_signed().unwrap();
    let (east, west) = (node(&nats).await, node(&nats).await);
    let (alice, mut alice_events) =
        connect(options(&east.tcp_url().unwrap(), sign_up("alice"), &pem)).await;
    let (bob, mut bob_events) =
        connect(options(&west.tcp_url().unwrap(), sign_up("bob"), &pem)).await;

    assert_eq!(
        within(alice.join("lobby")).await.unwrap().members,
        ["alice"]
    );
    // The members are the room's on every node.
    let info = within(bob.join("lobby")).await.unwrap();
    assert_eq!(info.members, ["alice", "bob"]);
    assert_eq!(
        joined(next(&mut alice_events).await, "alice"),
        (s("lobby"), s("bob"))
    );

    within(alice.send("lobby", "hi from the east"))
        .await
        .unwrap();
    assert_eq!(
        room_message(next(&mut bob_events).await, "bob"),
        (s("lobby"), s("alice"), s("hi from the east"))
    );
    within(bob.send("lobby", "hello from the west"))
        .await
        .unwrap();
    assert_eq!(
        room_message(next(&mut alice_events).await, "alice"),
        (s("lobby"), s("bob"), s("hello from the west"))
    );

    within(bob.direct("alice", "just for you")).await.unwrap();
    assert_eq!(
        direct_message(next(&mut alice_events).await, "alice"),
        (s("bob"), s("alice"), s("just for you"))
    );

    let who = within(alice.who(Some("lobby"))).await.unwrap();
    let users: Vec<(&str, &str)> = who
        .entries
        .iter()
        .map(|entry| (entry.user.as_str(), entry.error.as_str()))
        .collect();
    assert_eq!(users, [("alice", ""), ("bob", "on another node")]);
    let rooms = within(bob.list_rooms()).await.unwrap().rooms;
    assert_eq!(rooms.len(), 1);
    assert_eq!(rooms[0].members, ["alice", "bob"]);

    // The west node stops: bob is gone from the room, the east carries on.
    west.server
        .shutdown(std::time::Duration::from_secs(1))
        .await;
    within(async {
        while within(alice.members("lobby")).await.unwrap().members != ["alice"] {
            tokio::task::yield_now().await;
        }
    })
    .await;
    within(alice.send("lobby", "anyone?")).await.unwrap();
    drop(bob);
}
