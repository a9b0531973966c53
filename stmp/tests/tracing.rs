//! Tracing of handled requests. A binary of its own, with this one test: tracing caches per
//! call site whether anyone listens, and another test's threads, with no subscriber, would race
//! the scoped subscriber here for that cache (a shutdown test that shared this binary made it
//! fail once; it has a binary of its own now, `shutdown_tracing.rs`).

mod common;

use common::*;
use stmp::{Client, Server};

async fn tcp_server(builder: stmp::ServerBuilder) -> (Server, String) {
    let server = builder.build();
    register(server.router());
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    (server, format!("tcp://{addr}"))
}

/// With a subscriber listening at debug, a request's handling runs in a `call` span that
/// names its method, and its status is recorded in it.
#[test]
fn a_handled_request_is_traced_in_a_call_span_when_someone_listens() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (_server, url) = tcp_server(Server::builder()).await;
            let client = within(Client::connect(&url)).await.unwrap();
            let echoed: Echo = within(client.call(&ECHO, &echo("traced"))).await.unwrap();
            assert_eq!(echoed.text, "traced");
            client.close().await;
        });
    });
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let finished = log
        .lines()
        .find(|line| line.contains("call finished"))
        .unwrap_or_else(|| panic!("no call finished event in\n{log}"));
    assert!(
        finished.contains("call{method=\"test.Echo.Echo\"}") && finished.contains("status=\"Ok\""),
        "{finished}"
    );
}
