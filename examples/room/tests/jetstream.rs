//! Two room-server nodes on a NATS with JetStream: a node restarts while the other's users
//! keep talking, and its client comes back to the messages it missed.

mod common;

use common::*;
use room::accounts::Accounts;
use room::client::ChatEvent;
use room::server::{Chat, HistoryMode, RoomServer, ServerOptions, TlsPem, history_backend};
use stmp_nats::NatsAdapter;
use stmp_nats::nats_server::NatsServer;

async fn node(nats: &NatsServer, accounts: Accounts, tcp: std::net::SocketAddr) -> RoomServer {
    let adapter = within(NatsAdapter::connect(&nats.url())).await.unwrap();
    // What `room-server --nats URL` does: JetStream history, since this NATS has it.
    let history = within(history_backend(Some(&adapter), HistoryMode::Auto))
        .await
        .unwrap();
    assert!(history.is_some(), "the NATS has JetStream");
    within(RoomServer::start(
        Chat::new(accounts),
        ServerOptions {
            tcp: Some(tcp),
            nats: Some(adapter),
            history,
            ..ServerOptions::default()
        },
    ))
    .await
    .expect("server starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_back_after_its_server_restarts_is_shown_what_it_missed() {
    logs();
    let nats = NatsServer::start_jetstream().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("east.json");
    let open = || async {
        Accounts::open(&data)
            .await
            .unwrap()
            .with_params(Accounts::test_params())
    };
    let pem = TlsPem::self_signed().unwrap();
    let any = "127.0.0.1:0".parse().unwrap();
    let east = node(&nats, open().await, any).await;
    let west = node(&nats, accounts(), any).await;
    let (alice, mut alice_events) =
        connect(options(&east.tcp_url().unwrap(), sign_up("alice"), &pem)).await;
    let (bob, _bob_events) = connect(options(&west.tcp_url().unwrap(), sign_up("bob"), &pem)).await;
    within(alice.join("lobby")).await.unwrap();
    within(bob.join("lobby")).await.unwrap();
    within(bob.send("lobby", "before")).await.unwrap();
    let first = until(&mut alice_events, |e| match e {
        ChatEvent::RoomMessage(m) => Some(m.text.clone()),
        _ => None,
    })
    .await;
    assert_eq!(first, "before");

    // East goes down; bob keeps talking on west; east comes back on the same address.
    let east_tcp = east.tcp.unwrap();
    within(east.shutdown()).await;
    drop(east);
    for n in 1..=5 {
        within(bob.send("lobby", &format!("missed {n}")))
            .await
            .unwrap();
    }
    let _east = node(&nats, open().await, east_tcp).await;

    let mut missed = Vec::new();
    let (mut outcome, mut resumed) = (None, false);
    while outcome.is_none() || !resumed {
        match next(&mut alice_events).await {
            ChatEvent::RoomMessage(m) => {
                assert!(outcome.is_none(), "{} after the outcome", m.text);
                missed.push(m.text);
            }
            ChatEvent::History { room, recovered } => outcome = Some((room, recovered)),
            ChatEvent::Resumed { failed, .. } => {
                assert!(failed.is_empty(), "{failed:?}");
                resumed = true;
            }
            ChatEvent::Disconnected { .. } | ChatEvent::Reconnected { .. } => {}
            ChatEvent::UserLeft(_) | ChatEvent::UserJoined(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let want: Vec<String> = (1..=5).map(|n| format!("missed {n}")).collect();
    assert_eq!(missed, want);
    assert_eq!(outcome, Some((s("lobby"), true)));

    within(bob.send("lobby", "after")).await.unwrap();
    let next_message = until(&mut alice_events, |e| match e {
        ChatEvent::RoomMessage(m) => Some(m.text.clone()),
        _ => None,
    })
    .await;
    assert_eq!(next_message, "after");
    alice.close().await;
    bob.close().await;
    west.shutdown().await;
}
