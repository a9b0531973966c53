//! Trouble on the bus. NATS goes away mid-test: local delivery keeps working and the failures
//! are counted; NATS comes back on the same port and the nodes resubscribe by themselves.
//! Malformed messages on the nodes' subjects are counted and dropped, never fatal.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use stmp::Codec;
use stmp::adapter::{Broadcast, NodeId, Target};
use stmp_nats::nats_server::NatsServer;
use stmp_nats::telemetry::{MALFORMED, PUBLISH_FAILURES};
use support::*;

/// Counters by name and labels, as `name{label=value,…}`.
#[derive(Default)]
struct Counters(Mutex<HashMap<String, Arc<AtomicU64>>>);

impl Counters {
    fn get(&self, key: &str) -> u64 {
        self.0
            .lock()
            .unwrap()
            .get(key)
            .map_or(0, |value| value.load(Ordering::Relaxed))
    }
}

struct Recording(&'static Counters);

impl Recorder for Recording {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let labels: Vec<String> = key
            .labels()
            .map(|label| format!("{}={}", label.key(), label.value()))
            .collect();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        let value = self.0.0.lock().unwrap().entry(name).or_default().clone();
        Counter::from_arc(value)
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

fn counters() -> &'static Counters {
    static COUNTERS: OnceLock<&'static Counters> = OnceLock::new();
    COUNTERS.get_or_init(|| {
        let counters: &'static Counters = Box::leak(Box::default());
        metrics::set_global_recorder(Recording(counters)).unwrap();
        counters
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_delivery_survives_a_nats_outage_and_remote_delivery_resumes_after_it() {
    let counters = counters();
    let mut nats = NatsServer::start().unwrap();
    let url = nats.url();
    let nodes = [StmpNode::start(&url).await, StmpNode::start(&url).await];
    let speaker = Device::connect(&nodes[0], Codec::PROTOBUF).await;
    let mut neighbour = Device::connect(&nodes[0], Codec::PROTOBUF).await;
    let mut remote = Device::connect(&nodes[1], Codec::JSON).await;
    for device in [&speaker, &neighbour, &remote] {
        device.join("lobby").await;
    }
    speaker.say("lobby", "before").await;
    assert_eq!(neighbour.next().await.text, "before");
    assert_eq!(remote.next().await.text, "before");

    nats.stop();
    within(async {
        while nodes.iter().any(|node| node.adapter.is_connected()) {
            tokio::task::yield_now().await;
        }
    })
    .await;
    // Waiting for NATS to confirm fails at once rather than hanging a join.
    assert!(matches!(
        within(nodes[0].adapter.flush()).await,
        Err(stmp_nats::Error::Unreachable)
    ));
    let failures = format!("{PUBLISH_FAILURES}{{reason=disconnected}}");
    let failed_before = counters.get(&failures);
    speaker.say("lobby", "during").await;
    assert_eq!(
        neighbour.next().await.text,
        "during",
        "local delivery works"
    );
    within(async {
        while counters.get(&failures) == failed_before {
            tokio::task::yield_now().await;
        }
    })
    .await;

    nats.restart().unwrap();
    // Node 1 resubscribed to the lobby and node 0 publishes again: the probe gets through.
    remote.hear_from(&speaker, "lobby", "probe").await;
    speaker.say("lobby", "after").await;
    assert_eq!(remote.next_but("probe").await.text, "after");
    // The outage's broadcast was dropped, not delivered late.
    assert_eq!(neighbour.next_but("probe").await.text, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_from_the_bus_are_counted_and_dropped() {
    let counters = counters();
    let nats = NatsServer::start().unwrap();
    let node = StmpNode::start(&nats.url()).await;
    let mut member = Device::connect(&node, Codec::PROTOBUF).await;
    member.join("lobby").await;
    let mut outsider = Device::connect(&node, Codec::PROTOBUF).await;
    outsider.join("elsewhere").await;
    let malformed = |kind: &str| counters.get(&format!("{MALFORMED}{{kind={kind}}}"));
    let before: Vec<u64> = ["broadcast", "query", "node_event"]
        .iter()
        .map(|kind| malformed(kind))
        .collect();

    let rogue = async_nats::connect(nats.url()).await.unwrap();
    for garbage in [&b""[..], b"\x01", b"\x02anything", &[0xff; 64]] {
        rogue
            .publish("stmp.room.lobby", Bytes::copy_from_slice(garbage))
            .await
            .unwrap();
        rogue
            .publish("stmp.nodes", Bytes::copy_from_slice(garbage))
            .await
            .unwrap();
        rogue
            .publish_with_reply(
                "stmp.presence",
                "rogue.inbox",
                Bytes::copy_from_slice(garbage),
            )
            .await
            .unwrap();
    }
    // A well-formed broadcast to everyone, on a room's subject: refused too.
    let mut encode = |codec: &Codec| codec.encode(&line("all", "smuggled"));
    let mut smuggled = Broadcast::new(&HEARD, Target::Everyone, NodeId::new(7), &mut encode);
    let bytes = smuggled.to_bytes(&[Codec::PROTOBUF]).unwrap();
    rogue.publish("stmp.room.lobby", bytes).await.unwrap();
    rogue.flush().await.unwrap();

    within(async {
        while malformed("broadcast") < before[0] + 5
            || malformed("node_event") < before[2] + 4
            // `\x01` is a well-formed question (the room list), answered.
            || malformed("query") < before[1] + 3
        {
            tokio::task::yield_now().await;
        }
    })
    .await;
    // The node still works, and nothing reached anyone.
    outsider.say("elsewhere", "alone").await;
    let other = Device::connect(&node, Codec::PROTOBUF).await;
    other.join("lobby").await;
    other.say("lobby", "after the garbage").await;
    assert_eq!(member.next().await, line("lobby", "after the garbage"));
    assert!(
        !outsider.has_heard(),
        "the smuggled broadcast reached a non-member"
    );
    let members = within(node.rooms.cluster_members("lobby", PRESENCE))
        .await
        .unwrap();
    assert_eq!(members.len(), 2);
}
