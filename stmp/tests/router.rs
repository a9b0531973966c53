//! Middleware, response headers, custom codecs and server limits.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use stmp::codec::SerdeCodec;
use stmp::{Client, Code, Codec, Context, Flow, Middleware, Server, Status};
use tokio::io::AsyncReadExt;

/// Refuses calls without a `token` header, answers `Echo` "cached" from a cache, and tags
/// every outcome.
struct Gate {
    seen: Arc<AtomicUsize>,
}

impl Middleware for Gate {
    async fn before(&self, ctx: &Context) -> Result<Flow, Status> {
        self.seen.fetch_add(1, Ordering::SeqCst);
        match ctx.header().get("token") {
            None => Err(Status::unauthorized("no token")),
            Some("cached") => {
                let cached = echo("from cache");
                Ok(Flow::Respond(ctx.conn().codec().encode(&cached)?))
            }
            Some(_) => Ok(Flow::Continue),
        }
    }

    async fn after(&self, ctx: &Context, outcome: &mut Result<Bytes, Status>) {
        ctx.insert_response_header("x-gate", if outcome.is_ok() { "passed" } else { "failed" });
        if let Err(status) = outcome
            && status.code() == Code::BadRequest
        {
            *status = Status::new(Code::BadRequest, format!("[gate] {}", status.message()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn middleware_rejects_short_circuits_and_rewrites() {
    let server = Server::builder().build();
    let seen = Arc::new(AtomicUsize::new(0));
    server.router().layer(Gate { seen: seen.clone() });
    register(server.router());
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let client = within(Client::connect(&format!("tcp://{addr}")))
        .await
        .unwrap();
    let conn = client.conn().unwrap();
    let call = |token: Option<&str>, method: &'static stmp::Method| {
        let conn = conn.clone();
        let mut header = stmp::wire::Header::new();
        if let Some(token) = token {
            header.append("token", token);
        }
        async move {
            let payload = conn.codec().encode(&echo("hi")).unwrap();
            conn.request_raw(method.wire_action(), header, payload, None)
                .await
        }
    };
    let refused = within(call(None, &ECHO)).await.unwrap_err();
    assert_eq!(
        (refused.code(), refused.message()),
        (Code::Unauthorized, "no token")
    );

    let cached = within(call(Some("cached"), &ECHO)).await.unwrap();
    let echo: Echo = conn.codec().decode(&cached.payload).unwrap();
    assert_eq!(echo.text, "from cache");
    assert_eq!(cached.header.get("x-gate"), Some("passed"));

    let passed = within(call(Some("t"), &ECHO)).await.unwrap();
    assert_eq!(
        conn.codec().decode::<Echo>(&passed.payload).unwrap().text,
        "hi"
    );
    assert_eq!(passed.header.get("x-gate"), Some("passed"));

    let rewritten = within(call(Some("t"), &FAIL)).await.unwrap_err();
    assert_eq!(rewritten.message(), "[gate] refused: hi");
    assert_eq!(seen.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_set_response_headers() {
    const TAGGED: stmp::Method = stmp::Method::new("test.Echo.Tagged", "test.Echo", "test.Echo");
    let server = Server::builder().build();
    server
        .router()
        .route(&TAGGED, |ctx: Context, input: Echo| async move {
            let trace = ctx.header().get("trace").unwrap_or("none").to_owned();
            ctx.append_response_header("trace", trace);
            ctx.append_response_header("method", ctx.method().unwrap_or("?"));
            Ok::<_, Status>(input)
        });
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let client = within(Client::connect(&format!("tcp://{addr}")))
        .await
        .unwrap();
    let conn = client.conn().unwrap();
    let header: stmp::wire::Header = [("trace", "t-1")].into_iter().collect();
    let response = within(conn.request_raw(TAGGED.wire_action(), header, Bytes::new(), None))
        .await
        .unwrap();
    assert_eq!(response.header.get("trace"), Some("t-1"));
    assert_eq!(response.header.get("method"), Some("test.Echo.Tagged"));
}

/// JSON under another name, to show a serde codec of one's own.
struct RenamedJson;

impl SerdeCodec for RenamedJson {
    fn content_type(&self) -> &str {
        "application/x-test-json"
    }
    fn serialize(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>, Status> {
        serde_json::to_vec(value).map_err(|e| Status::internal(e.to_string()))
    }
    fn deserialize(
        &self,
        bytes: &[u8],
        visit: &mut dyn FnMut(
            &mut dyn erased_serde::Deserializer,
        ) -> Result<(), erased_serde::Error>,
    ) -> Result<(), Status> {
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        visit(&mut <dyn erased_serde::Deserializer>::erase(
            &mut deserializer,
        ))
        .map_err(|e| Status::bad_request(e.to_string()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_codec_is_negotiated_and_used() {
    let server = Server::builder().codec(Codec::custom(RenamedJson)).build();
    register(server.router());
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let client = within(
        Client::builder()
            .codec(Codec::custom(RenamedJson))
            .connect(&format!("tcp://{addr}")),
    )
    .await
    .unwrap();
    let conn = client.conn().unwrap();
    assert_eq!(conn.codec().content_type(), "application/x-test-json");
    let echo: Echo = within(client.call(
        &ECHO,
        &Echo {
            text: "custom".into(),
            delay_ms: 1,
        },
    ))
    .await
    .unwrap();
    assert_eq!(echo.text, "custom");
    // A server without the codec refuses it at handshake.
    let plain = Server::builder().build();
    let addr = plain.listen_tcp("127.0.0.1:0").await.unwrap();
    let refused = within(
        Client::builder()
            .codec(Codec::custom(RenamedJson))
            .connect(&format!("tcp://{addr}")),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::BadRequest);
    assert!(
        refused.message().contains("application/x-test-json"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_hit_the_handshake_timeout() {
    let server = Server::builder()
        .handshake_timeout(Duration::from_millis(200))
        .build();
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    // Timed from before the connect: the server may accept (and start its timer) before the
    // connect returns here.
    let started = tokio::time::Instant::now();
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut rest = Vec::new();
    within(socket.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(server.conns().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_and_the_close_hook() {
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
    let server = Server::builder()
        .max_connections(1)
        .on_close(move |conn, status| {
            let _ = closed_tx.send((conn.id(), status.code()));
        })
        .build();
    register(server.router());
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let url = format!("tcp://{addr}");
    let first = within(Client::connect(&url)).await.unwrap();
    until(|| !server.conns().is_empty()).await;
    let full = within(Client::builder().no_reconnect().connect(&url))
        .await
        .unwrap_err();
    assert_eq!(full.code(), Code::TooManyRequests, "{full}");
    let id = server.conns().to_vec()[0].id();
    within(first.close()).await;
    let (closed_id, code) = within(closed.recv()).await.unwrap();
    assert_eq!((closed_id, code), (id, Code::Ok));
    // The closed connection's place is free once its socket is gone, a moment after the hook.
    let again = within(async {
        loop {
            match Client::builder().no_reconnect().connect(&url).await {
                Err(status) if status.code() == Code::TooManyRequests => {
                    tokio::task::yield_now().await
                }
                other => break other.unwrap(),
            }
        }
    })
    .await;
    let ok: Echo = within(again.call(&ECHO, &Echo::default())).await.unwrap();
    assert_eq!(ok, Echo::default());
}
