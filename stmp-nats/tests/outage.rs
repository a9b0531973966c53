//! NATS goes away mid-test: local delivery keeps working and the failures are counted; NATS
//! comes back on the same port and the nodes resubscribe by themselves.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use stmp::Codec;
use stmp_nats::nats_server::NatsServer;
use stmp_nats::telemetry::PUBLISH_FAILURES;
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
