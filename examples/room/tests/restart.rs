//! A server restart: the clients reconnect, sign in again and re-join by themselves.

mod common;

use common::*;
use room::accounts::Accounts;
use room::client::{Auth, ChatEvent, ChatEvents};
use room::server::TlsPem;
use stmp::Code;

/// Waits for the client to be back: `(user, rooms)` of its `Resumed`, after a `Disconnected`
/// that says the server shut down and a `Reconnected`, and after being told, for each room,
/// that the messages of the restart are lost (the history lived in the old process).
async fn resumed(events: &mut ChatEvents, who: &str) -> (String, Vec<String>) {
    let mut saw_shutdown = false;
    let mut reconnected = false;
    let mut lost = Vec::new();
    let mut back = None;
    // The outcomes travel with the events, the re-join's answer apart from them: they may come
    // on either side of `Resumed`.
    loop {
        if let Some((_, rooms)) = &back
            && lost.len() == <Vec<String>>::len(rooms)
        {
            break;
        }
        match next(events).await {
            ChatEvent::Disconnected { status, .. } => {
                saw_shutdown |= status.code() == Code::ServerShutdown;
            }
            ChatEvent::Reconnected { .. } => reconnected = true,
            ChatEvent::Resumed {
                user,
                rooms,
                failed,
                signed_up_again,
            } => {
                assert!(saw_shutdown, "{who} was not told the server shut down");
                assert!(reconnected, "{who} did not report the reconnect");
                assert!(failed.is_empty(), "{who}: {failed:?}");
                assert!(!signed_up_again, "{who}: the data file was not read");
                back = Some((user, rooms));
            }
            ChatEvent::History {
                room,
                recovered: false,
            } => lost.push(room),
            // The others coming back.
            ChatEvent::UserJoined(_) => {}
            other => panic!("{who}: unexpected {other:?}"),
        }
    }
    let (user, rooms) = back.unwrap();
    lost.sort();
    assert_eq!(lost, rooms, "{who}: every room's history is lost");
    (user, rooms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_come_back_after_a_restart() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("accounts.json");
    let pem = TlsPem::self_signed().unwrap();
    let open = || async {
        Accounts::open(&data)
            .await
            .unwrap()
            .with_params(Accounts::test_params())
    };
    let first = serve(open().await, Addrs::any(), &pem).await;
    let addrs = addrs(&first);

    let (alice, mut alice_events) =
        connect(options(&first.tcp_url().unwrap(), sign_up("alice"), &pem)).await;
    let (bob, mut bob_events) =
        connect(options(&first.quic_url().unwrap(), sign_up("bob"), &pem)).await;
    let (carol, mut carol_events) = connect(options(
        &first.ws_url(true).unwrap(),
        sign_up("carol"),
        &pem,
    ))
    .await;
    // carol's second device signs in with her token: the session must survive the restart.
    let (carol2, mut carol2_events) = connect(options(
        &first.ws_url(false).unwrap(),
        Auth::Token(carol.token()),
        &pem,
    ))
    .await;
    for (client, room) in [
        (&alice, "lobby"),
        (&bob, "lobby"),
        (&bob, "dev"),
        (&carol, "lobby"),
    ] {
        within(client.join(room)).await.unwrap();
    }
    within(carol2.join("dev")).await.unwrap();
    within(alice.send("lobby", "before")).await.unwrap();
    for (events, who) in [(&mut bob_events, "bob"), (&mut carol_events, "carol")] {
        let text = until(events, |e| match e {
            ChatEvent::RoomMessage(m) => Some(m.text.clone()),
            _ => None,
        })
        .await;
        assert_eq!(text, "before", "{who}");
    }

    // Stop the server; a new one on the same addresses, data file and certificate.
    within(first.shutdown()).await;
    drop(first);
    let second = serve(open().await, addrs, &pem).await;
    assert_eq!(second.chat.accounts().len(), 3);

    assert_eq!(
        resumed(&mut alice_events, "alice").await,
        (s("alice"), vec![s("lobby")])
    );
    assert_eq!(
        resumed(&mut bob_events, "bob").await,
        (s("bob"), vec![s("dev"), s("lobby")])
    );
    assert_eq!(
        resumed(&mut carol_events, "carol").await,
        (s("carol"), vec![s("lobby")])
    );
    assert_eq!(
        resumed(&mut carol2_events, "carol2").await,
        (s("carol"), vec![s("dev")])
    );
    let mut lobby = within(alice.members("lobby")).await.unwrap().members;
    lobby.sort();
    assert_eq!(lobby, ["alice", "bob", "carol"]);

    // Messages flow again, on every transport.
    within(alice.send("lobby", "after")).await.unwrap();
    for (events, who) in [(&mut bob_events, "bob"), (&mut carol_events, "carol")] {
        let text = until(events, |e| match e {
            ChatEvent::RoomMessage(m) => Some(m.text.clone()),
            _ => None,
        })
        .await;
        assert_eq!(text, "after", "{who}");
    }
    within(bob.send("dev", "dev after")).await.unwrap();
    let text = until(&mut carol2_events, |e| match e {
        ChatEvent::RoomMessage(m) => Some(m.text.clone()),
        _ => None,
    })
    .await;
    assert_eq!(text, "dev after");
    within(bob.direct("carol", "both devices")).await.unwrap();
    for (events, who) in [(&mut carol_events, "carol"), (&mut carol2_events, "carol2")] {
        let text = until(events, |e| match e {
            ChatEvent::DirectMessage(m) => Some(m.text.clone()),
            _ => None,
        })
        .await;
        assert_eq!(text, "both devices", "{who}");
    }
    // Who works on the new connections too.
    let who = within(carol2.who(Some("lobby"))).await.unwrap();
    assert_eq!(who.entries.len(), 3);
    assert!(who.entries.iter().all(|e| e.status.is_some()), "{who:?}");

    for client in [alice, bob, carol, carol2] {
        client.close().await;
    }
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_memory_server_forgets_accounts_and_the_client_makes_its_own_again() {
    logs();
    let pem = TlsPem::self_signed().unwrap();
    let first = serve(accounts(), Addrs::any(), &pem).await;
    let addrs = addrs(&first);
    let (alice, mut alice_events) =
        connect(options(&first.tcp_url().unwrap(), sign_up("alice"), &pem)).await;
    within(alice.join("lobby")).await.unwrap();
    within(first.shutdown()).await;
    drop(first);
    let second = serve(accounts(), addrs, &pem).await;
    let again = until(&mut alice_events, |e| match e {
        ChatEvent::Resumed {
            rooms,
            signed_up_again,
            ..
        } => Some((rooms.clone(), *signed_up_again)),
        _ => None,
    })
    .await;
    assert_eq!(again, (vec![s("lobby")], true));
    assert!(second.chat.accounts().exists("alice"));
    assert_eq!(
        within(alice.members("lobby")).await.unwrap().members,
        ["alice"]
    );
    alice.close().await;
    second.shutdown().await;
}
