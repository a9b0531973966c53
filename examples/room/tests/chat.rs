//! End to end: one server, clients on TCP, WebSocket (text and binary packets) and QUIC.
//!
//! Events on one connection arrive in the order the server queued them, so "X did not get
//! the message" is shown without waiting: the server queues the message, answers the sender,
//! then a marker is sent, and X's next event must be the marker.

mod common;

use std::time::Duration;

use common::*;
use room::client::{Auth, ChatEvent};
use room::server::TlsPem;
use stmp::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_direct_messages_leaving_disconnecting_and_who() {
    logs();
    let pem = TlsPem::self_signed().unwrap();
    let server = serve(accounts(), Addrs::any(), &pem).await;

    // Three users on three transports; bob has a second connection (another device) that
    // signs in with his session token over binary WebSocket.
    let tcp = server.tcp_url().unwrap();
    let ws_text = server.ws_url(true).unwrap();
    let ws_binary = server.ws_url(false).unwrap();
    let quic = server.quic_url().unwrap();
    let (alice, mut alice_events) = connect(options(&tcp, sign_up("alice"), &pem)).await;
    let (bob, mut bob_events) = connect(options(&ws_text, sign_up("bob"), &pem)).await;
    let (carol, mut carol_events) =
        connect(options(&quic, sign_up("carol"), &pem).idle_after(Duration::ZERO)).await;
    let (bob2, mut bob2_events) =
        connect(options(&ws_binary, Auth::Token(bob.token()), &pem)).await;
    assert_eq!(bob2.user(), "bob");
    assert_eq!(
        [
            alice.transport(),
            bob.transport(),
            carol.transport(),
            bob2.transport()
        ],
        ["tcp", "ws (text)", "quic", "ws"]
    );
    assert_eq!(server.chat.users().online(), ["alice", "bob", "carol"]);
    assert_eq!(server.chat.users().conns("bob").len(), 2);

    // Joining: the members hear of each newcomer.
    let info = within(alice.join("lobby")).await.unwrap();
    assert_eq!(info.members, ["alice"]);
    let info = within(bob.join("lobby")).await.unwrap();
    assert_eq!(info.members, ["alice", "bob"]);
    assert_eq!(
        joined(next(&mut alice_events).await, "alice"),
        (s("lobby"), s("bob"))
    );
    let info = within(carol.join("lobby")).await.unwrap();
    assert_eq!(info.members, ["alice", "bob", "carol"]);
    assert_eq!(
        joined(next(&mut alice_events).await, "alice"),
        (s("lobby"), s("carol"))
    );
    assert_eq!(
        joined(next(&mut bob_events).await, "bob"),
        (s("lobby"), s("carol"))
    );
    let rooms = within(bob2.list_rooms()).await.unwrap();
    assert_eq!(rooms.rooms.len(), 1);
    assert_eq!(rooms.rooms[0].room, "lobby");
    assert_eq!(rooms.rooms[0].members, ["alice", "bob", "carol"]);

    // A room message reaches the room's other members, and only them.
    let sent = within(alice.send("lobby", "hello lobby")).await.unwrap();
    assert_eq!(sent.delivered, 2);
    for (events, who) in [(&mut bob_events, "bob"), (&mut carol_events, "carol")] {
        assert_eq!(
            room_message(next(events).await, who),
            (s("lobby"), s("alice"), s("hello lobby"))
        );
    }

    // A direct message reaches every connection of its user, and no one else.
    let sent = within(alice.direct("bob", "psst")).await.unwrap();
    assert_eq!(sent.delivered, 2);
    for (events, who) in [(&mut bob_events, "bob"), (&mut bob2_events, "bob2")] {
        // bob2 is not in the lobby: its first event is the direct message.
        assert_eq!(
            direct_message(next(events).await, who),
            (s("alice"), s("bob"), s("psst"))
        );
    }
    // Markers: carol's next event is the next room message (she got no direct message)...
    within(alice.send("lobby", "marker 1")).await.unwrap();
    assert_eq!(
        room_message(next(&mut carol_events).await, "carol").2,
        "marker 1"
    );
    assert_eq!(
        room_message(next(&mut bob_events).await, "bob").2,
        "marker 1"
    );
    // ...and alice's is bob's answer (she got neither her messages nor her direct message
    // back); bob's other connection gets a copy of what he sent.
    within(bob.direct("alice", "got it")).await.unwrap();
    assert_eq!(
        direct_message(next(&mut alice_events).await, "alice"),
        (s("bob"), s("alice"), s("got it"))
    );
    assert_eq!(
        direct_message(next(&mut bob2_events).await, "bob2"),
        (s("bob"), s("alice"), s("got it"))
    );

    // /who: the server calls each member's client and reports what it says.
    let who = within(alice.who(Some("lobby"))).await.unwrap();
    assert_eq!(who.room, "lobby");
    let rows: Vec<(String, String, String)> = who
        .entries
        .iter()
        .map(|entry| {
            let status = entry
                .status
                .as_ref()
                .unwrap_or_else(|| panic!("{} did not answer: {}", entry.user, entry.error));
            (
                entry.user.clone(),
                status.state.clone(),
                status.transport.clone(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (s("alice"), s("active"), s("tcp")),
            (s("bob"), s("active"), s("ws (text)")),
            (s("carol"), s("idle"), s("quic")),
        ]
    );
    let everyone = within(carol.who(None)).await.unwrap();
    let users: Vec<&str> = everyone.entries.iter().map(|e| e.user.as_str()).collect();
    assert_eq!(users, ["alice", "bob", "bob", "carol"]);
    assert!(everyone.entries.iter().all(|e| e.status.is_some()));

    // Leaving: the others hear of it, and the room's messages stop.
    within(carol.leave("lobby")).await.unwrap();
    assert!(carol.rooms().is_empty());
    for (events, who) in [(&mut alice_events, "alice"), (&mut bob_events, "bob")] {
        assert_eq!(
            left(next(events).await, who),
            (s("lobby"), s("carol"), s("left"))
        );
    }
    let sent = within(alice.send("lobby", "carol is gone")).await.unwrap();
    assert_eq!(sent.delivered, 1);
    assert_eq!(
        room_message(next(&mut bob_events).await, "bob").2,
        "carol is gone"
    );
    within(alice.direct("carol", "marker 2")).await.unwrap();
    assert_eq!(
        direct_message(next(&mut carol_events).await, "carol").2,
        "marker 2"
    );
    let error = within(carol.send("lobby", "let me in")).await.unwrap_err();
    assert_eq!(error.code(), Code::Unauthorized, "{error}");

    // A user is in a room while any of their connections is: bob's second connection joins
    // (no news for alice), his first disconnects (still no news), then the second does.
    within(bob2.join("lobby")).await.unwrap();
    within(bob.close()).await;
    eventually(|| server.chat.users().conns("bob").len() == 1).await;
    within(alice.send("lobby", "marker 3")).await.unwrap();
    assert_eq!(
        room_message(next(&mut bob2_events).await, "bob2").2,
        "marker 3"
    );
    within(bob2.direct("alice", "marker 4")).await.unwrap();
    assert_eq!(
        direct_message(next(&mut alice_events).await, "alice").2,
        "marker 4"
    );

    within(bob2.close()).await;
    assert_eq!(
        left(next(&mut alice_events).await, "alice"),
        (s("lobby"), s("bob"), s("disconnected"))
    );
    let members = within(alice.members("lobby")).await.unwrap();
    assert_eq!(members.members, ["alice"]);
    let error = within(alice.direct("bob", "are you there?"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "{error}");
    assert!(error.message().contains("not online"), "{error}");
    eventually(|| server.chat.users().online() == ["alice", "carol"]).await;
    quiet(&mut alice_events, "alice");
    quiet(&mut carol_events, "carol");

    alice.close().await;
    carol.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_with_no_answer_shows_in_who_with_the_reason() {
    logs();
    let pem = TlsPem::self_signed().unwrap();
    let server = serve(accounts(), Addrs::any(), &pem).await;
    let tcp = server.tcp_url().unwrap();
    let (alice, _alice_events) = connect(options(&tcp, sign_up("alice"), &pem)).await;
    // dave is a bare stmp client: signed in, but serving no PresenceService.
    let dave = within(stmp::Client::connect(&tcp)).await.unwrap();
    within(
        room::AccountServiceClient::new(dave.clone()).sign_up(room::Credentials {
            name: s("dave"),
            password: s("pw"),
        }),
    )
    .await
    .unwrap();
    let who = within(alice.who(None)).await.unwrap();
    assert_eq!(who.entries.len(), 2);
    assert_eq!(who.entries[0].user, "alice");
    assert!(who.entries[0].status.is_some());
    assert_eq!(who.entries[1].user, "dave");
    assert!(who.entries[1].status.is_none());
    assert!(
        who.entries[1].error.contains("NotFound"),
        "{}",
        who.entries[1].error
    );
    dave.close().await;
    alice.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_the_same_in_every_codec() {
    // JSON (text packets) and protobuf (binary) clients see the same message and timestamp.
    logs();
    let pem = TlsPem::self_signed().unwrap();
    let server = serve(accounts(), Addrs::any(), &pem).await;
    let (alice, _) = connect(options(&server.tcp_url().unwrap(), sign_up("alice"), &pem)).await;
    let (bob, mut bob_events) =
        connect(options(&server.ws_url(true).unwrap(), sign_up("bob"), &pem)).await;
    let (carol, mut carol_events) = connect(options(
        &server.ws_url(false).unwrap(),
        sign_up("carol"),
        &pem,
    ))
    .await;
    within(bob.join("x")).await.unwrap();
    within(carol.join("x")).await.unwrap();
    assert_eq!(
        joined(next(&mut bob_events).await, "bob"),
        (s("x"), s("carol"))
    );
    within(alice.join("x")).await.unwrap();
    let text = "ünïcødé ✓ \"quoted\" \\ back";
    let sent = within(alice.send("x", text)).await.unwrap();
    let mut seen = Vec::new();
    for (events, who) in [(&mut bob_events, "bob"), (&mut carol_events, "carol")] {
        let event = until(events, |e| match e {
            ChatEvent::RoomMessage(m) => Some(m.clone()),
            _ => None,
        })
        .await;
        assert_eq!(event.text, text, "{who}");
        assert_eq!(event.timestamp, sent.timestamp, "{who}");
        seen.push(event);
    }
    assert_eq!(seen[0], seen[1]);
    server.shutdown().await;
}
