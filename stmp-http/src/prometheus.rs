//! The Prometheus exporter of the runtime's metrics (see [`stmp::telemetry`]).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use stmp::Status;
use stmp::telemetry as series;

/// Call latencies from 50 µs to 10 s.
const CALL_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
    10.0,
];

/// A handle on the process's Prometheus recorder: renders the text exposition format.
#[derive(Clone, Debug)]
pub struct Metrics {
    handle: PrometheusHandle,
}

static INSTALLED: OnceLock<Result<Metrics, String>> = OnceLock::new();

/// Installs the Prometheus recorder as the process's `metrics` recorder (once; later calls
/// return the same handle). Fails when another recorder was installed first.
///
/// ```
/// let metrics = stmp_http::prometheus::install().unwrap();
/// metrics::counter!("demo_requests_total").increment(1);
/// assert!(metrics.render().contains("demo_requests_total 1"));
/// ```
pub fn install() -> Result<Metrics, Status> {
    INSTALLED
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(series::CALL_DURATION.into()), &CALL_BUCKETS)
                .and_then(PrometheusBuilder::install_recorder)
                .map_err(|e| format!("cannot install the Prometheus recorder: {e}"))?;
            describe();
            Ok(Metrics { handle })
        })
        .clone()
        .map_err(Status::internal)
}

impl Metrics {
    /// The metrics in Prometheus's text format.
    pub fn render(&self) -> String {
        // Histograms fold their recent samples in here; without it they would grow.
        self.handle.run_upkeep();
        self.handle.render()
    }
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        series::SLOW_CONSUMER_DISCONNECTS,
        "Connections closed for reading too slowly."
    );
    describe_gauge!(series::CONNECTIONS, "Connections open now.");
    describe_counter!(
        series::CONNECTIONS_OPENED,
        "Connections that passed their handshake."
    );
    describe_counter!(
        series::CONNECTIONS_CLOSED,
        "Connections that ended, by close status."
    );
    describe_counter!(
        series::HANDSHAKES_REFUSED,
        "Handshakes refused, by the status sent."
    );
    describe_counter!(series::CALLS, "Requests answered, by method and status.");
    describe_histogram!(
        series::CALL_DURATION,
        Unit::Seconds,
        "Time to answer a request."
    );
    describe_counter!(
        series::EVENTS_SENT,
        "Events queued on connections by broadcasts."
    );
    describe_counter!(
        series::EVENTS_DROPPED,
        "Events missed: the send queue was full or closed."
    );
    describe_counter!(
        series::BYTES_RECEIVED,
        Unit::Bytes,
        "Packet bytes received."
    );
    describe_counter!(series::BYTES_SENT, Unit::Bytes, "Packet bytes sent.");
    describe_gauge!(
        series::SEND_QUEUE_HIGH_WATER,
        "The most bytes seen waiting in one send queue."
    );
}
