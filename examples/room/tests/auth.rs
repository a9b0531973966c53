//! Wrong passwords, unknown users, bad tokens and calls before signing in: clear statuses,
//! and the server keeps serving everyone else.

mod common;

use common::*;
use room::client::{Auth, ChatEvent};
use room::server::TlsPem;
use room::{AccountServiceClient, ChatServiceClient, Credentials, Empty, RoomInput, SendInput};
use stmp::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_clear_and_disturb_no_one() {
    logs();
    let pem = TlsPem::self_signed().unwrap();
    let server = serve(accounts(), Addrs::any(), &pem).await;
    let tcp = server.tcp_url().unwrap();
    let ws = server.ws_url(true).unwrap();
    let quic = server.quic_url().unwrap();
    let (alice, mut alice_events) = connect(options(&tcp, sign_up("alice"), &pem)).await;
    within(alice.join("lobby")).await.unwrap();

    // Wrong password, on every transport.
    for url in [&tcp, &ws, &quic] {
        let status = refused(options(url, sign_in("alice", "guess"), &pem)).await;
        assert_eq!(status.code(), Code::Unauthorized, "{url}: {status}");
        assert_eq!(status.message(), "wrong password for \"alice\"", "{url}");
    }
    // Unknown user.
    let status = refused(options(&tcp, sign_in("mallory", "x"), &pem)).await;
    assert_eq!(status.code(), Code::NotFound, "{status}");
    assert!(
        status.message().contains("no user named \"mallory\""),
        "{status}"
    );
    // A taken name, a bad name.
    let status = refused(options(&ws, sign_up("alice"), &pem)).await;
    assert_eq!(status.code(), Code::BadRequest, "{status}");
    assert!(status.message().contains("taken"), "{status}");
    let status = refused(options(&ws, sign_up("no spaces"), &pem)).await;
    assert_eq!(status.code(), Code::BadRequest, "{status}");
    // A token nobody issued: refused at handshake.
    let status = refused(options(&tcp, Auth::Token("0".repeat(64)), &pem)).await;
    assert_eq!(status.code(), Code::Unauthorized, "{status}");
    assert!(status.message().contains("token"), "{status}");

    // Calls before signing in, on a bare stmp connection.
    let raw = within(stmp::Client::connect(&tcp)).await.unwrap();
    let chat = ChatServiceClient::new(raw.clone());
    let account = AccountServiceClient::new(raw.clone());
    let status = within(chat.join_room(RoomInput { room: s("lobby") }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthorized, "{status}");
    assert!(status.message().starts_with("not signed in"), "{status}");
    let status = within(chat.send_message(SendInput {
        room: s("lobby"),
        text: s("spam"),
    }))
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unauthorized, "{status}");
    let status = within(chat.list_rooms(Empty {})).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthorized, "{status}");
    let status = within(account.current(Empty {})).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthorized, "{status}");
    // A wrong password on it leaves it signed out, and the connection open.
    let status = within(account.sign_in(Credentials {
        name: s("alice"),
        password: s("guess"),
    }))
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unauthorized, "{status}");
    let status = within(chat.list_rooms(Empty {})).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthorized, "{status}");

    // Signing up on the same connection lets its calls through.
    let session = within(account.sign_up(Credentials {
        name: s("bob"),
        password: s("hunter2"),
    }))
    .await
    .unwrap();
    assert_eq!(session.user, "bob");
    assert_eq!(within(account.current(Empty {})).await.unwrap().user, "bob");
    let info = within(chat.join_room(RoomInput { room: s("lobby") }))
        .await
        .unwrap();
    assert_eq!(info.members, ["alice", "bob"]);

    // Alice saw none of the refusals: her first event is bob joining, then his message.
    assert_eq!(
        joined(next(&mut alice_events).await, "alice"),
        (s("lobby"), s("bob"))
    );
    within(chat.send_message(SendInput {
        room: s("lobby"),
        text: s("hi alice"),
    }))
    .await
    .unwrap();
    assert_eq!(
        room_message(next(&mut alice_events).await, "alice"),
        (s("lobby"), s("bob"), s("hi alice"))
    );
    // And she can still do everything.
    within(alice.send("lobby", "hi bob")).await.unwrap();
    within(alice.direct("bob", "welcome")).await.unwrap();
    assert_eq!(server.chat.users().online(), ["alice", "bob"]);

    // The password bob chose works from another client, and his token too.
    let (bob, _bob_events) = connect(options(&quic, sign_in("bob", "hunter2"), &pem)).await;
    let (bob_token, _) = connect(options(&ws, Auth::Token(session.token), &pem)).await;
    assert_eq!(bob_token.user(), "bob");
    assert_eq!(server.chat.users().conns("bob").len(), 3);

    raw.close().await;
    bob.close().await;
    bob_token.close().await;
    alice.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_as_someone_else_leaves_the_rooms_as_the_first() {
    logs();
    let pem = TlsPem::self_signed().unwrap();
    let server = serve(accounts(), Addrs::any(), &pem).await;
    let tcp = server.tcp_url().unwrap();
    let (alice, mut alice_events) = connect(options(&tcp, sign_up("alice"), &pem)).await;
    let (bob, _) = connect(options(&tcp, sign_up("bob"), &pem)).await;
    within(alice.join("lobby")).await.unwrap();
    within(bob.join("lobby")).await.unwrap();
    assert_eq!(
        joined(next(&mut alice_events).await, "alice"),
        (s("lobby"), s("bob"))
    );
    // Carol's account, then bob's connection signs in as carol.
    let (carol, _) = connect(options(&tcp, sign_up("carol"), &pem)).await;
    carol.close().await;
    within(
        AccountServiceClient::new(bob.stmp().clone()).sign_in(Credentials {
            name: s("carol"),
            password: s("carol-password"),
        }),
    )
    .await
    .unwrap();
    match next(&mut alice_events).await {
        ChatEvent::UserLeft(e) => {
            assert_eq!((e.room.as_str(), e.user.as_str()), ("lobby", "bob"));
            assert_eq!(e.reason, "signed out");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        within(alice.members("lobby")).await.unwrap().members,
        ["alice"]
    );
    server.shutdown().await;
}
