//! History in NATS JetStream across three stmp nodes on a real `nats-server -js`: a client cut
//! off one node (by a TCP proxy, no clean close) comes back on another and gets every event it
//! missed, in order and once, or is told `recovered: false` when events are gone.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use stmp::history::{History, Recovery, Retention};
use stmp::{Client, Context, Method, Server, Status};
use stmp_nats::nats_server::NatsServer;
use stmp_nats::{JetStreamHistory, NatsAdapter};
use stmp_testkit::CutProxy;
use tokio::sync::mpsc;

const LIMIT: Duration = Duration::from_secs(30);

const JOIN: Method = Method::new("test.History.Join", "test.Room", "test.Room");
const SAID: Method = Method::new("test.History.Said", "test.Said", "google.protobuf.Empty");

#[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
struct Room {
    #[prost(string, tag = "1")]
    name: String,
}

/// An event: which node published it, and its number among that node's.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message, serde::Serialize, serde::Deserialize)]
struct Said {
    #[prost(string, tag = "1")]
    from: String,
    #[prost(uint64, tag = "2")]
    seq: u64,
}

fn said(from: &str, seq: u64) -> Said {
    Said {
        from: from.into(),
        seq,
    }
}

async fn within<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, future)
        .await
        .expect("test step timed out")
}

async fn until(mut condition: impl FnMut() -> bool) {
    within(async {
        while !condition() {
            tokio::task::yield_now().await;
        }
    })
    .await
}

/// An stmp node on NATS whose history is in JetStream.
struct Node {
    server: Server,
    history: History,
    adapter: NatsAdapter,
    addr: SocketAddr,
}

impl Node {
    async fn start(nats: &str, retention: Retention) -> Node {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let adapter = NatsAdapter::connect(nats).await.unwrap();
        let builder = Server::builder().adapter(adapter.clone());
        let rooms = builder.rooms();
        let server = builder.build();
        let backend = JetStreamHistory::builder()
            .retention(retention)
            .build(adapter.client().clone())
            .await
            .unwrap();
        let history = History::builder(rooms)
            .default_retention(retention)
            .backend(backend)
            .build();
        let joining = history.clone();
        server
            .router()
            .route(&JOIN, move |ctx: Context, room: Room| {
                let history = joining.clone();
                async move {
                    history.join(&room.name, ctx.conn()).await;
                    Ok::<_, Status>(room)
                }
            });
        let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
        Node {
            server,
            history,
            adapter,
            addr,
        }
    }

    async fn publish(&self, room: &str, event: Said) -> u64 {
        within(self.history.publish(room, &SAID, &event, None))
            .await
            .unwrap()
            .position
            .offset
    }

    fn members(&self, room: &str) -> usize {
        self.history.rooms().members(room).len()
    }

    async fn stop(self) {
        self.server.shutdown(Duration::from_secs(1)).await;
        self.adapter.close().await;
    }
}

async fn nodes(nats: &str, retention: Retention) -> Vec<Node> {
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Node::start(nats, retention).await);
    }
    nodes
}

/// What a client heard: (offset, event) of each event, and each recovery outcome.
struct Heard {
    events: mpsc::UnboundedReceiver<(u64, Said)>,
    recoveries: mpsc::UnboundedReceiver<Recovery>,
}

impl Heard {
    async fn next(&mut self, count: usize) -> Vec<(u64, Said)> {
        let mut got = Vec::with_capacity(count);
        while got.len() < count {
            got.push(within(self.events.recv()).await.expect("client gone"));
        }
        got
    }

    async fn recovery(&mut self) -> Recovery {
        within(self.recoveries.recv()).await.expect("client gone")
    }
}

/// A client through `url` that joins `room` on every (re)connect and records what it hears.
async fn member(url: &str, room: &'static str) -> (Client, Heard) {
    let (event_tx, events) = mpsc::unbounded_channel();
    let (recovery_tx, recoveries) = mpsc::unbounded_channel();
    let client = Client::builder()
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
            let _ = event_tx.send((offset, said));
            async {}
        });
    (client, Heard { events, recoveries })
}

fn roomy() -> Retention {
    Retention::new(100_000, 64 << 20, Duration::from_secs(600))
}

/// Offsets strictly grow (stream order, no duplicate) and each publisher's events come in
/// the order it published them.
fn assert_in_order(heard: &[(u64, Said)]) {
    for pair in heard.windows(2) {
        assert!(pair[0].0 < pair[1].0, "out of order: {pair:?}");
        if pair[0].1.from == pair[1].1.from {
            assert!(
                pair[0].1.seq < pair[1].1.seq,
                "a publisher's order: {pair:?}"
            );
        }
    }
    let distinct: HashSet<&Said> = heard.iter().map(|(_, said)| said).collect();
    assert_eq!(distinct.len(), heard.len(), "a duplicate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cut_off_one_node_gets_the_thousand_events_on_another() {
    let nats = NatsServer::start_jetstream().unwrap();
    let nodes = Arc::new(nodes(&nats.url(), roomy()).await);
    let proxy = CutProxy::start(nodes[0].addr).await;
    let (client, mut heard) = member(&format!("tcp://{}", proxy.addr()), "lobby").await;
    until(|| nodes[0].members("lobby") == 1).await;
    for seq in 1..=5 {
        nodes[0].publish("lobby", said("a", seq)).await;
    }
    let before = heard.next(5).await;
    assert_in_order(&before);
    let last_heard = before[4].0;
    until(|| {
        client
            .position("lobby")
            .is_some_and(|p| p.offset == last_heard)
    })
    .await;

    // Cut off node A; 1,000 events from nodes B and C at once.
    proxy.cut();
    until(|| nodes[0].members("lobby") == 0).await;
    proxy.retarget(nodes[1].addr);
    let mut publishers = Vec::new();
    for (index, name) in [(1, "b"), (2, "c")] {
        let nodes = nodes.clone();
        publishers.push(tokio::spawn(async move {
            for seq in 1..=500 {
                nodes[index].publish("lobby", said(name, seq)).await;
            }
        }));
    }
    for publisher in publishers {
        within(publisher).await.unwrap();
    }

    // Back, on node B, while node C keeps publishing until the client has recovered: the
    // replay and the live events meet without a gap or a duplicate.
    proxy.restore();
    let recovered = Arc::new(AtomicBool::new(false));
    let racing = {
        let (nodes, recovered) = (nodes.clone(), recovered.clone());
        tokio::spawn(async move {
            let mut seq = 500;
            while seq < 1000 && !recovered.load(Ordering::SeqCst) {
                seq += 1;
                nodes[2].publish("lobby", said("c", seq)).await;
            }
            seq - 500
        })
    };
    let recovery = heard.recovery().await;
    recovered.store(true, Ordering::SeqCst);
    assert!(recovery.recovered, "{recovery:?}");
    let raced = within(racing).await.unwrap() as usize;
    // Live events go on, from every node, through node B.
    for (index, name) in [(0, "a"), (1, "b"), (2, "c")] {
        nodes[index].publish("lobby", said(name, 10_000)).await;
    }
    let after = heard.next(1000 + raced + 3).await;
    assert_in_order(&after);
    assert!(after[0].0 > last_heard);
    let missed: HashSet<Said> = after.iter().map(|(_, said)| said.clone()).collect();
    for seq in 1..=500 {
        assert!(missed.contains(&said("b", seq)), "b {seq} missing");
        assert!(missed.contains(&said("c", seq)), "c {seq} missing");
    }
    assert_eq!(after.last().unwrap().1, said("c", 10_000));
    assert!(heard.events.try_recv().is_err(), "a duplicate");
    assert_eq!(
        client.position("lobby").unwrap().offset,
        after.last().unwrap().0
    );
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_overflow_is_not_recovered_and_live_events_go_on() {
    let nats = NatsServer::start_jetstream().unwrap();
    let small = Retention::new(10, 1 << 20, Duration::from_secs(600));
    let nodes = nodes(&nats.url(), small).await;
    let proxy = CutProxy::start(nodes[0].addr).await;
    let (client, mut heard) = member(&format!("tcp://{}", proxy.addr()), "small").await;
    until(|| nodes[0].members("small") == 1).await;
    let first = nodes[0].publish("small", said("a", 1)).await;
    assert_eq!(heard.next(1).await, [(first, said("a", 1))]);
    until(|| client.position("small").is_some_and(|p| p.offset == first)).await;

    proxy.cut();
    until(|| nodes[0].members("small") == 0).await;
    proxy.retarget(nodes[1].addr);
    for seq in 2..=50 {
        nodes[2].publish("small", said("c", seq)).await;
    }
    proxy.restore();
    let recovery = heard.recovery().await;
    assert!(!recovery.recovered, "{recovery:?}");
    // Nothing was replayed: a partial replay would be a gap the application cannot see.
    assert!(heard.events.try_recv().is_err());
    let live = nodes[2].publish("small", said("c", 51)).await;
    assert_eq!(heard.next(1).await, [(live, said("c", 51))]);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_stream_is_a_new_epoch_and_not_recovered() {
    let nats = NatsServer::start_jetstream().unwrap();
    let nodes = nodes(&nats.url(), roomy()).await;
    let proxy = CutProxy::start(nodes[0].addr).await;
    let (client, mut heard) = member(&format!("tcp://{}", proxy.addr()), "lobby").await;
    until(|| nodes[0].members("lobby") == 1).await;
    for seq in 1..=3 {
        nodes[0].publish("lobby", said("a", seq)).await;
    }
    let before = heard.next(3).await;
    until(|| {
        client
            .position("lobby")
            .is_some_and(|p| p.offset == before[2].0)
    })
    .await;
    let old_epoch = client.position("lobby").unwrap().epoch;

    proxy.cut();
    until(|| nodes[0].members("lobby") == 0).await;
    let jetstream = async_nats::jetstream::new(nodes[1].adapter.client().clone());
    assert!(
        jetstream
            .delete_stream("STMP_HISTORY")
            .await
            .unwrap()
            .success
    );
    // Publishing recreates the stream; its sequences start over.
    for seq in 1..=5 {
        nodes[1].publish("lobby", said("b", seq)).await;
    }
    proxy.retarget(nodes[1].addr);
    proxy.restore();
    let recovery = heard.recovery().await;
    assert!(!recovery.recovered, "{recovery:?}");
    assert_ne!(recovery.position.epoch, old_epoch);
    assert!(heard.events.try_recv().is_err());
    let live = nodes[2].publish("lobby", said("c", 1)).await;
    assert_eq!(heard.next(1).await, [(live, said("c", 1))]);
    assert_eq!(
        client.position("lobby").unwrap().epoch,
        recovery.position.epoch
    );
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_in_file_storage_survives_a_whole_cluster_restart() {
    let mut nats = NatsServer::start_jetstream().unwrap();
    let first = nodes(&nats.url(), roomy()).await;
    let proxy = CutProxy::start(first[0].addr).await;
    let (client, mut heard) = member(&format!("tcp://{}", proxy.addr()), "lobby").await;
    until(|| first[0].members("lobby") == 1).await;
    let offset = first[0].publish("lobby", said("a", 1)).await;
    heard.next(1).await;
    until(|| client.position("lobby").is_some_and(|p| p.offset == offset)).await;

    proxy.cut();
    until(|| first[0].members("lobby") == 0).await;
    for seq in 1..=20 {
        first[1 + seq as usize % 2]
            .publish("lobby", said("bc", seq))
            .await;
    }
    // Every stmp node and NATS go down; all come back.
    for node in first {
        node.stop().await;
    }
    nats.restart().unwrap();
    let second = nodes(&nats.url(), roomy()).await;
    proxy.retarget(second[2].addr);
    proxy.restore();
    let recovery = heard.recovery().await;
    assert!(recovery.recovered, "{recovery:?}");
    let replayed = heard.next(20).await;
    assert_in_order(&replayed);
    let events: Vec<Said> = replayed.into_iter().map(|(_, said)| said).collect();
    assert_eq!(
        events,
        (1..=20).map(|seq| said("bc", seq)).collect::<Vec<_>>()
    );
    let live = second[0].publish("lobby", said("a", 2)).await;
    assert_eq!(heard.next(1).await, [(live, said("a", 2))]);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_events_go_on_after_nats_restarts_under_running_nodes() {
    let mut nats = NatsServer::start_jetstream().unwrap();
    let nodes = nodes(&nats.url(), roomy()).await;
    let (client, mut heard) = member(&format!("tcp://{}", nodes[0].addr), "lobby").await;
    until(|| nodes[0].members("lobby") == 1).await;
    let before = nodes[1].publish("lobby", said("b", 1)).await;
    assert_eq!(heard.next(1).await, [(before, said("b", 1))]);

    nats.restart().unwrap();
    // Node C publishes as soon as its NATS connection is back (the stream is in files).
    let after = within(async {
        loop {
            match nodes[2]
                .history
                .publish("lobby", &SAID, &said("c", 1), None)
                .await
            {
                Ok(published) => return published.position.offset,
                Err(_) => tokio::task::yield_now().await,
            }
        }
    })
    .await;
    assert!(after > before);
    // Node A's delivery picks the stream up again: the event arrives, in order, once.
    assert_eq!(heard.next(1).await, [(after, said("c", 1))]);
    let last = nodes[1].publish("lobby", said("b", 2)).await;
    assert_eq!(heard.next(1).await, [(last, said("b", 2))]);
    assert!(heard.events.try_recv().is_err());
    assert!(heard.recoveries.try_recv().is_err(), "nothing was lost");
    client.close().await;
}
