//! Metrics and log spans: every series the runtime records, in one place.
//!
//! The runtime records through the [`metrics`](https://docs.rs/metrics) facade, which costs
//! next to nothing until an application installs a recorder (the Prometheus exporter of
//! `stmp-http`, say). The series:
//!
//! | name | kind | labels |
//! |---|---|---|
//! | [`CONNECTIONS`] | gauge: connections open now | `transport` |
//! | [`CONNECTIONS_OPENED`] | counter | `transport` |
//! | [`CONNECTIONS_CLOSED`] | counter | `transport`, `status` (the close code) |
//! | [`HANDSHAKES_REFUSED`] | counter | `reason` (the refusal code) |
//! | [`CALLS`] | counter: requests served | `method`, `status` |
//! | [`CALL_DURATION`] | histogram, seconds | `method` |
//! | [`EVENTS_SENT`] | counter: events queued by broadcasts | |
//! | [`EVENTS_DROPPED`] | counter: events a full or closed queue missed | |
//! | [`BYTES_RECEIVED`], [`BYTES_SENT`] | counters: bytes of the transports (below gzip, above TLS; WebSocket frames after the upgrade) | |
//! | [`SEND_QUEUE_HIGH_WATER`] | gauge: the deepest send queue seen, in bytes | |
//! | [`SLOW_CONSUMER_DISCONNECTS`] | counter: connections closed by the slow-consumer policy | |
//!
//! Requests to a method nobody serves are counted under the method `unknown`, so a peer
//! cannot grow the series without bound. Connections and calls also get `tracing` spans:
//! `conn` (id, transport, remote address) and `call` (method), and each call ends with a
//! debug event carrying its status and duration.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use metrics::{Key, Label, Metadata};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::{Code, Conn, Delivery, Status};

/// Gauge: connections open now, by `transport`.
pub const CONNECTIONS: &str = "stmp_connections";
/// Counter: connections that passed their handshake, by `transport`.
pub const CONNECTIONS_OPENED: &str = "stmp_connections_opened_total";
/// Counter: connections that ended, by `transport` and close `status`.
pub const CONNECTIONS_CLOSED: &str = "stmp_connections_closed_total";
/// Counter: handshakes refused, by `reason` (the status code sent to the client).
pub const HANDSHAKES_REFUSED: &str = "stmp_handshakes_refused_total";
/// Counter: requests answered, by `method` and `status`.
pub const CALLS: &str = "stmp_calls_total";
/// Histogram: time from a request's arrival to its response, in seconds, by `method`.
pub const CALL_DURATION: &str = "stmp_call_duration_seconds";
/// Counter: events queued on connections by broadcasts.
pub const EVENTS_SENT: &str = "stmp_events_sent_total";
/// Counter: events that connections missed because their send queue was full or closed.
pub const EVENTS_DROPPED: &str = "stmp_events_dropped_total";
/// Counter: bytes received: of the byte stream below gzip and above TLS (over WebSocket, its
/// frames after the upgrade).
pub const BYTES_RECEIVED: &str = "stmp_bytes_received_total";
/// Counter: bytes sent, counted as [`BYTES_RECEIVED`] is.
pub const BYTES_SENT: &str = "stmp_bytes_sent_total";
/// Gauge: the most bytes seen waiting in one connection's send queue.
pub const SEND_QUEUE_HIGH_WATER: &str = "stmp_send_queue_high_water_bytes";
/// Counter: connections closed because they did not read their events fast enough.
pub const SLOW_CONSUMER_DISCONNECTS: &str = "stmp_slow_consumer_disconnects_total";

/// The method label of requests no handler serves.
const UNKNOWN_METHOD: &str = "unknown";

pub(crate) fn connection_opened(conn: &Conn) {
    let transport = conn.transport();
    metrics::gauge!(CONNECTIONS, "transport" => transport).increment(1.0);
    metrics::counter!(CONNECTIONS_OPENED, "transport" => transport).increment(1);
}

pub(crate) fn connection_closed(conn: &Conn) {
    let transport = conn.transport();
    let code = conn
        .close_status()
        .map_or(Code::NetworkError, |status| status.code());
    metrics::gauge!(CONNECTIONS, "transport" => transport).decrement(1.0);
    metrics::counter!(CONNECTIONS_CLOSED, "transport" => transport, "status" => code.as_str())
        .increment(1);
}

pub(crate) fn handshake_refused(status: &Status) {
    metrics::counter!(HANDSHAKES_REFUSED, "reason" => status.code().as_str()).increment(1);
}

pub(crate) fn events_delivered(delivery: &Delivery) {
    if delivery.queued > 0 {
        metrics::counter!(EVENTS_SENT).increment(delivery.queued as u64);
    }
    if delivery.dropped > 0 {
        metrics::counter!(EVENTS_DROPPED).increment(delivery.dropped as u64);
    }
}

/// The byte counters' keys, hashed once: they are counted on every read and write.
static BYTES_RECEIVED_KEY: Key = Key::from_static_name(BYTES_RECEIVED);
static BYTES_SENT_KEY: Key = Key::from_static_name(BYTES_SENT);

pub(crate) fn bytes_received(bytes: usize) {
    if bytes > 0 {
        count(&BYTES_RECEIVED_KEY, bytes);
    }
}

pub(crate) fn bytes_sent(bytes: usize) {
    count(&BYTES_SENT_KEY, bytes);
}

fn count(key: &Key, bytes: usize) {
    metrics::with_recorder(|recorder| {
        recorder
            .register_counter(key, &METADATA)
            .increment(bytes as u64)
    });
}

pub(crate) fn slow_consumer_disconnected() {
    metrics::counter!(SLOW_CONSUMER_DISCONNECTS).increment(1);
}

static SEND_QUEUE_DEEPEST: AtomicUsize = AtomicUsize::new(0);

/// Records how many bytes wait in a send queue; only a new deepest reaches the gauge.
pub(crate) fn send_queue_depth(depth: usize) {
    if depth > SEND_QUEUE_DEEPEST.load(Ordering::Relaxed)
        && SEND_QUEUE_DEEPEST.fetch_max(depth, Ordering::Relaxed) < depth
    {
        metrics::gauge!(SEND_QUEUE_HIGH_WATER).set(depth as f64);
    }
}

/// The span a connection's engine runs in: its id, transport and peer address.
pub(crate) fn conn_span(conn: &Conn) -> tracing::Span {
    let remote = conn.remote_addr().map(tracing::field::display);
    tracing::info_span!("conn", id = conn.id(), transport = conn.transport(), remote)
}

/// The series one method's calls are recorded in. Keys are made once, when the method is
/// routed: a key with labels allocates and hashes when it is made, which per call would cost
/// more than the rest of a call's bookkeeping. Recording still goes through whatever recorder
/// is installed at the time.
#[derive(Debug)]
pub(crate) struct CallSeries {
    method: &'static str,
    answered_ok: Key,
    duration: Key,
}

impl CallSeries {
    pub(crate) fn new(method: &'static str) -> CallSeries {
        CallSeries {
            method,
            answered_ok: calls_key(method, Code::Ok),
            duration: Key::from_parts(CALL_DURATION, vec![Label::new("method", method)]),
        }
    }
}

fn calls_key(method: &'static str, code: Code) -> Key {
    Key::from_parts(
        CALLS,
        vec![
            Label::new("method", method),
            Label::new("status", code.as_str()),
        ],
    )
}

/// What [`metrics`]' own macros would say of the series recorded here.
static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// The `call` span a request's handling runs in (a child of the connection's: the engine
/// polls the handling first). `series` is the method's, if it has a route; `method` names it
/// otherwise.
pub(crate) fn call_span(
    series: Option<&CallSeries>,
    method: Option<&'static str>,
) -> tracing::Span {
    let method = series.map_or(method.unwrap_or(UNKNOWN_METHOD), |series| series.method);
    tracing::debug_span!("call", method)
}

/// Records a handled request: its status and its duration since `arrived`, in its span.
///
/// Not a wrapper future around the handling: a request's future is built and moved for
/// every request, and each layer of nesting added a copy of the handler's whole state.
pub(crate) fn call_observed(
    series: Option<&CallSeries>,
    method: Option<&'static str>,
    arrived: Instant,
    code: Code,
) {
    let since = SinceArrival(arrived);
    match series {
        Some(series) => call_finished(series, code, since),
        None => call_finished(
            &CallSeries::new(method.unwrap_or(UNKNOWN_METHOD)),
            code,
            since,
        ),
    }
}

/// A call's duration, read from the clock only by who records it: with no recorder installed
/// and the debug event off, as in most servers, a call costs no clock read.
#[derive(Clone, Copy)]
struct SinceArrival(Instant);

impl SinceArrival {
    fn elapsed(self) -> Duration {
        // The engine's clock, which tests that pause time pause too.
        tokio::time::Instant::now()
            .into_std()
            .saturating_duration_since(self.0)
    }
}

impl metrics::IntoF64 for SinceArrival {
    fn into_f64(self) -> f64 {
        self.elapsed().as_secs_f64()
    }
}

fn call_finished(series: &CallSeries, code: Code, since: SinceArrival) {
    // The method is on the enclosing `call` span; the fields are read only when the event is
    // enabled.
    tracing::debug!(
        status = code.as_str(),
        duration_us = since.elapsed().as_micros() as u64,
        "call finished"
    );
    metrics::with_recorder(|recorder| {
        let calls = match code {
            Code::Ok => recorder.register_counter(&series.answered_ok, &METADATA),
            code => recorder.register_counter(&calls_key(series.method, code), &METADATA),
        };
        calls.increment(1);
        recorder
            .register_histogram(&series.duration, &METADATA)
            .record(since);
    });
}

pin_project_lite::pin_project! {
    /// A transport's byte stream, counted into [`BYTES_RECEIVED`] and [`BYTES_SENT`] as the
    /// bytes cross it (below gzip, above TLS).
    pub(crate) struct Counted<T> {
        #[pin]
        inner: T,
    }
}

impl<T> Counted<T> {
    pub(crate) fn new(inner: T) -> Counted<T> {
        Counted { inner }
    }
}

impl<T: AsyncRead> AsyncRead for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = self.project().inner.poll_read(cx, buf);
        bytes_received(buf.filled().len() - before);
        polled
    }
}

impl<T: AsyncWrite> AsyncWrite for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = self.project().inner.poll_write(cx, bytes);
        if let Poll::Ready(Ok(written)) = &polled {
            bytes_sent(*written);
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = self.project().inner.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(written)) = &polled {
            bytes_sent(*written);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Keeps the key of every counter and histogram registered with it, and what was added
    /// (to a histogram: milliseconds).
    #[derive(Default)]
    struct Keys(Mutex<Vec<(String, u64)>>);

    struct Count(Arc<Keys>, String);

    impl metrics::CounterFn for Count {
        fn increment(&self, value: u64) {
            self.0.0.lock().unwrap().push((self.1.clone(), value));
        }
        fn absolute(&self, _: u64) {}
    }

    impl metrics::HistogramFn for Count {
        fn record(&self, seconds: f64) {
            let millis = (seconds * 1e3).round() as u64;
            self.0.0.lock().unwrap().push((self.1.clone(), millis));
        }
    }

    struct Recorder(Arc<Keys>);

    fn describe(key: &Key) -> String {
        let labels: Vec<String> = key
            .labels()
            .map(|label| format!("{}={}", label.key(), label.value()))
            .collect();
        format!("{}{{{}}}", key.name(), labels.join(","))
    }

    impl metrics::Recorder for Recorder {
        fn describe_counter(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_gauge(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_histogram(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> metrics::Counter {
            metrics::Counter::from_arc(Arc::new(Count(self.0.clone(), describe(key))))
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> metrics::Gauge {
            metrics::Gauge::noop()
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> metrics::Histogram {
            metrics::Histogram::from_arc(Arc::new(Count(self.0.clone(), describe(key))))
        }
    }

    #[test]
    fn calls_are_counted_by_method_and_status_and_timed_by_method() {
        let keys = Arc::new(Keys::default());
        let recorder = Recorder(keys.clone());
        let series = CallSeries::new("demo.Echo");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        metrics::with_local_recorder(&recorder, || {
            runtime.block_on(async {
                let arrived = tokio::time::Instant::now().into_std();
                tokio::time::advance(Duration::from_millis(250)).await;
                call_observed(Some(&series), Some("demo.Echo"), arrived, Code::Ok);
                tokio::time::advance(Duration::from_millis(250)).await;
                call_observed(Some(&series), Some("demo.Echo"), arrived, Code::NotFound);
                call_observed(None, None, arrived, Code::NotFound);
            })
        });
        let recorded = keys.0.lock().unwrap().clone();
        let recorded: Vec<(&str, u64)> = recorded
            .iter()
            .map(|(key, value)| (key.as_str(), *value))
            .collect();
        assert_eq!(
            recorded,
            [
                ("stmp_calls_total{method=demo.Echo,status=Ok}", 1),
                ("stmp_call_duration_seconds{method=demo.Echo}", 250),
                ("stmp_calls_total{method=demo.Echo,status=NotFound}", 1),
                ("stmp_call_duration_seconds{method=demo.Echo}", 500),
                ("stmp_calls_total{method=unknown,status=NotFound}", 1),
                ("stmp_call_duration_seconds{method=unknown}", 500),
            ]
        );
    }

    #[test]
    fn the_high_water_mark_only_rises() {
        send_queue_depth(3);
        send_queue_depth(1);
        assert!(SEND_QUEUE_DEEPEST.load(Ordering::Relaxed) >= 3);
        let deepest = SEND_QUEUE_DEEPEST.load(Ordering::Relaxed);
        send_queue_depth(deepest + 5);
        assert_eq!(SEND_QUEUE_DEEPEST.load(Ordering::Relaxed), deepest + 5);
    }
}
