//! The metrics the NATS adapter records, through the [`metrics`](https://docs.rs/metrics)
//! facade like the runtime's own (`stmp::telemetry`):
//!
//! | name | kind | labels |
//! |---|---|---|
//! | [`PUBLISHED`] | counter: broadcasts shipped to NATS | `target` (`room`, `user`, `everyone`) |
//! | [`PUBLISH_FAILURES`] | counter: broadcasts that reached this node only | `reason` (`disconnected`, `backlog`, `error`, `closed`) |
//! | [`RECEIVED`] | counter: broadcasts from other nodes delivered here | `target` |
//! | [`MALFORMED`] | counter: messages from NATS that were not what this version writes, dropped | `kind` |
//! | [`SUBSCRIPTIONS`] | gauge: room and user subjects listened on | |
//! | [`CONNECTED`] | gauge: 1 while the NATS connection is up | |
//! | [`CONNECTION_EVENTS`] | counter | `event` (`connected`, `disconnected`, …) |
//! | [`PRESENCE_QUERIES`] | counter: cluster-wide presence questions | `outcome` (`complete`, `deadline`, `local`) |

use stmp::adapter::Target;

/// Counter: broadcasts published on NATS, by `target`.
pub const PUBLISHED: &str = "stmp_nats_published_total";
/// Counter: broadcasts not published (delivered on this node only), by `reason`.
pub const PUBLISH_FAILURES: &str = "stmp_nats_publish_failures_total";
/// Counter: broadcasts from other nodes delivered on this one, by `target`.
pub const RECEIVED: &str = "stmp_nats_received_total";
/// Counter: malformed messages from NATS, dropped, by `kind` (`broadcast`, `node_event`,
/// `query`, `answer`).
pub const MALFORMED: &str = "stmp_nats_malformed_total";
/// Gauge: room and user subjects this node subscribes to.
pub const SUBSCRIPTIONS: &str = "stmp_nats_subscriptions";
/// Gauge: 1 while connected to NATS, 0 while not.
pub const CONNECTED: &str = "stmp_nats_connected";
/// Counter: NATS connection events, by `event`.
pub const CONNECTION_EVENTS: &str = "stmp_nats_connection_events_total";
/// Counter: cluster-wide presence questions, by `outcome`: every live node answered
/// (`complete`), the deadline ended it (`deadline`), or NATS was unreachable and only this
/// node answered (`local`).
pub const PRESENCE_QUERIES: &str = "stmp_nats_presence_queries_total";

pub(crate) fn target_label(target: &Target) -> &'static str {
    match target {
        Target::Room(_) => "room",
        Target::User(_) => "user",
        _ => "everyone",
    }
}

pub(crate) fn published(target: &'static str) {
    metrics::counter!(PUBLISHED, "target" => target).increment(1);
}

pub(crate) fn publish_failed(reason: &'static str) {
    metrics::counter!(PUBLISH_FAILURES, "reason" => reason).increment(1);
}

pub(crate) fn received(target: &'static str) {
    metrics::counter!(RECEIVED, "target" => target).increment(1);
}

pub(crate) fn malformed(kind: &'static str) {
    metrics::counter!(MALFORMED, "kind" => kind).increment(1);
}

pub(crate) fn subscriptions(count: usize) {
    metrics::gauge!(SUBSCRIPTIONS).set(count as f64);
}

pub(crate) fn connection_event(event: &async_nats::Event) {
    let label = match event {
        async_nats::Event::Connected => {
            metrics::gauge!(CONNECTED).set(1.0);
            "connected"
        }
        async_nats::Event::Disconnected => {
            metrics::gauge!(CONNECTED).set(0.0);
            "disconnected"
        }
        async_nats::Event::Closed => {
            metrics::gauge!(CONNECTED).set(0.0);
            "closed"
        }
        async_nats::Event::LameDuckMode => "lame_duck",
        async_nats::Event::Draining => "draining",
        async_nats::Event::SlowConsumer(_) => "slow_consumer",
        async_nats::Event::ServerError(_) => "server_error",
        async_nats::Event::ClientError(_) => "client_error",
    };
    metrics::counter!(CONNECTION_EVENTS, "event" => label).increment(1);
}

pub(crate) fn presence_query(outcome: &'static str) {
    metrics::counter!(PRESENCE_QUERIES, "outcome" => outcome).increment(1);
}
