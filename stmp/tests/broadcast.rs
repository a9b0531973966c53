//! Broadcasts to many connections: every event arrives once, in the order it was sent
//! relative to everything else sent to the same connection.

mod common;

use common::*;
use stmp::{Client, Context, Server};

/// Enough connections that a broadcast is still being written to some while the next
/// sends come.
const CLIENTS: usize = 150;

/// A server and `n` TCP clients that record every `TICK` they hear, in order.
async fn audience(n: usize) -> (Server, Vec<Client>, Vec<Shared<Vec<String>>>) {
    let server = Server::builder().build();
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let mut clients = Vec::new();
    let mut heard = Vec::new();
    for _ in 0..n {
        let client = tcp_client(addr).await;
        let log: Shared<Vec<String>> = Shared::default();
        let into = log.clone();
        let _ = client
            .router()
            .listen(&TICK, move |_ctx: Context, event: Echo| {
                into.lock().unwrap().push(event.text);
                async {}
            });
        clients.push(client);
        heard.push(log);
    }
    until(|| server.conns().len() == n).await;
    (server, clients, heard)
}

fn tick(text: String) -> Echo {
    Echo { text, delay_ms: 0 }
}

/// Waits until every client has heard as many events as `expected` holds; they must be those.
async fn every_client_hears<S: AsRef<str>>(heard: &[Shared<Vec<String>>], expected: &[S]) {
    until(|| {
        heard
            .iter()
            .all(|log| log.lock().unwrap().len() >= expected.len())
    })
    .await;
    let expected: Vec<&str> = expected.iter().map(AsRef::as_ref).collect();
    for log in heard {
        assert_eq!(*log.lock().unwrap(), expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_broadcast_and_sent_to_one_connection_arrive_in_the_order_sent() {
    let (server, _clients, heard) = audience(CLIENTS).await;
    let conns = server.conns().to_vec();
    let mut expected = Vec::new();
    for round in 0..4 {
        let delivery =
            stmp::broadcast(server.conns(), &TICK, &tick(format!("broadcast {round}"))).unwrap();
        assert_eq!((delivery.queued, delivery.dropped), (CLIENTS, 0));
        // Sent right behind the broadcast, before most of its events are written.
        for conn in &conns {
            conn.notify(&TICK, &tick(format!("direct {round}")))
                .await
                .unwrap();
        }
        expected.push(format!("broadcast {round}"));
        expected.push(format!("direct {round}"));
    }
    every_client_hears(&heard, &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_broadcasts_arrive_once_each_and_in_order() {
    let (server, _clients, heard) = audience(CLIENTS).await;
    let expected: Vec<String> = (0..20).map(|seq| format!("event {seq}")).collect();
    for text in &expected {
        let delivery = stmp::broadcast(server.conns(), &TICK, &tick(text.clone())).unwrap();
        assert_eq!(delivery.queued, CLIENTS);
    }
    every_client_hears(&heard, &expected).await;
}

/// A broadcast from a thread outside the runtime (a plain `std::thread`) is delivered too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_from_outside_the_runtime_is_delivered() {
    let (server, _clients, heard) = audience(CLIENTS).await;
    let everyone = server.conns().clone();
    let delivery = std::thread::spawn(move || {
        assert!(tokio::runtime::Handle::try_current().is_err());
        stmp::broadcast(&everyone, &TICK, &tick("from a thread".into())).unwrap()
    })
    .join()
    .unwrap();
    assert_eq!(delivery.queued, CLIENTS);
    every_client_hears(&heard, &["from a thread"]).await;
}

/// A connection closed between two broadcasts gets a prefix of them; the others get both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_during_broadcasts_does_not_hold_up_the_others() {
    let (server, _clients, heard) = audience(CLIENTS).await;
    let closing = server.conns().to_vec()[CLIENTS / 2].clone();
    stmp::broadcast(server.conns(), &TICK, &tick("first".into())).unwrap();
    closing.close(stmp::Code::Ok, "bye");
    stmp::broadcast(server.conns(), &TICK, &tick("second".into())).unwrap();
    within(closing.closed()).await;
    let both = ["first", "second"];
    until(|| {
        heard
            .iter()
            .filter(|log| *log.lock().unwrap() == both)
            .count()
            >= CLIENTS - 1
    })
    .await;
    for log in &heard {
        let log = log.lock().unwrap();
        assert!(log.len() <= both.len(), "{log:?}");
        assert!(
            log.iter().zip(both).all(|(got, sent)| got == sent),
            "{log:?}"
        );
    }
}
