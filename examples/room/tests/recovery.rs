//! A client that drops off the network comes back to the messages it missed.

mod common;

use common::*;
use room::client::ChatEvent;
use room::server::TlsPem;
use room::terminal::{Clock, event_line};
use stmp_testkit::CutProxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cut_off_the_network_is_shown_the_messages_it_missed() {
    logs();
    let pem = TlsPem::self_signed().unwrap();
    let server = serve(accounts(), Addrs::any(), &pem).await;
    let proxy = CutProxy::start(server.tcp.unwrap()).await;
    let (alice, mut alice_events) = connect(options(
        &format!("tcp://{}", proxy.addr()),
        sign_up("alice"),
        &pem,
    ))
    .await;
    let (bob, _bob_events) =
        connect(options(&server.tcp_url().unwrap(), sign_up("bob"), &pem)).await;
    within(alice.join("lobby")).await.unwrap();
    within(bob.join("lobby")).await.unwrap();
    within(bob.send("lobby", "before")).await.unwrap();
    let first = until(&mut alice_events, |e| match e {
        ChatEvent::RoomMessage(m) => Some(m.text.clone()),
        _ => None,
    })
    .await;
    assert_eq!(first, "before");

    proxy.cut();
    eventually(|| server.chat.rooms().members("lobby").len() == 1).await;
    for n in 1..=20 {
        within(bob.send("lobby", &format!("missed {n}")))
            .await
            .unwrap();
    }
    proxy.restore();

    // Back: the missed messages in order, then the outcome; the re-join's answer (`Resumed`)
    // travels apart from the events and may come on either side of it.
    let mut missed = Vec::new();
    let (mut outcome, mut resumed) = (None, false);
    while outcome.is_none() || !resumed {
        match next(&mut alice_events).await {
            ChatEvent::RoomMessage(m) => {
                assert!(outcome.is_none(), "{} after the outcome", m.text);
                missed.push(m.text);
            }
            event @ ChatEvent::History { .. } => outcome = Some(event),
            ChatEvent::Resumed { .. } => resumed = true,
            ChatEvent::Disconnected { .. } | ChatEvent::Reconnected { .. } => {}
            ChatEvent::UserLeft(_) | ChatEvent::UserJoined(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let want: Vec<String> = (1..=20).map(|n| format!("missed {n}")).collect();
    assert_eq!(missed, want);
    let outcome = outcome.unwrap();
    assert_eq!(
        outcome,
        ChatEvent::History {
            room: s("lobby"),
            recovered: true
        }
    );
    assert!(event_line(&outcome, &Clock { offset_seconds: 0 }, "alice").contains("caught up"));

    // Live messages go on, none twice.
    within(bob.send("lobby", "after")).await.unwrap();
    let next_message = until(&mut alice_events, |e| match e {
        ChatEvent::RoomMessage(m) => Some(m.text.clone()),
        _ => None,
    })
    .await;
    assert_eq!(next_message, "after");
    alice.close().await;
    bob.close().await;
    server.shutdown().await;
}
