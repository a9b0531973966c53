//! Accepting at the open-file limit: the accept loop pauses ever longer instead of retrying in
//! a loop, and serves the waiting client as soon as descriptors are free again.
//!
//! The test lowers this process's open-file limit, so it has a test binary of its own.
#![cfg(unix)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use rlimit::Resource;
use stmp::{Client, Server};
use tokio::sync::mpsc;
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};

/// Hears every "accept failed" event, with when it happened.
struct AcceptFailures(mpsc::UnboundedSender<Instant>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AcceptFailures {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: LayerContext<'_, S>) {
        struct Message(bool);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" && format!("{value:?}") == "accept failed" {
                    self.0 = true;
                }
            }
        }
        let mut message = Message(false);
        event.record(&mut message);
        if message.0 {
            let _ = self.0.send(Instant::now());
        }
    }
}

// One thread: the subscriber set below sees the accept loop's events.
#[tokio::test(flavor = "current_thread")]
async fn at_the_open_file_limit_accept_pauses_and_recovers() {
    let (failed_tx, mut failed) = mpsc::unbounded_channel();
    let subscriber = tracing_subscriber::registry().with(AcceptFailures(failed_tx));
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = Server::builder().build();
    register(server.router());
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();

    let (soft, hard) = Resource::NOFILE.get().unwrap();
    Resource::NOFILE.set(soft.min(512), hard).unwrap();
    let mut fillers = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(file) => fillers.push(file),
            Err(error) => {
                assert_eq!(error.raw_os_error(), Some(libc::EMFILE), "{error}");
                break;
            }
        }
    }
    // One descriptor for the client's socket; none for the server to accept it with.
    assert!(fillers.pop().is_some());
    let client = tokio::spawn(
        Client::builder()
            .no_reconnect()
            .connect(&format!("tcp://{addr}")),
    );

    const FAILURES: usize = 10;
    let mut times = Vec::new();
    for _ in 0..FAILURES {
        times.push(within(failed.recv()).await.unwrap());
    }
    let span = times[FAILURES - 1] - times[0];
    // Pauses of 5, 10, 20 … 640 ms, 1 s: 2.3 s for ten failures. A fixed pause of 50 ms
    // would take 0.45 s; no pause at all, microseconds.
    assert!(
        span >= Duration::from_millis(1500),
        "{FAILURES} failed accepts within {span:?}"
    );

    drop(fillers);
    Resource::NOFILE.set(soft, hard).unwrap();
    let client = within(client).await.unwrap().unwrap();
    let ok: Echo = within(client.call(&ECHO, &echo("after the shortage")))
        .await
        .unwrap();
    assert_eq!(ok.text, "after the shortage");
}
