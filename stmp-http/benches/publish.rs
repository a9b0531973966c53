//! What publishing through the HTTP API costs, against the HTTP floor and against a publish
//! made in the server's own process. A stmp server, its HTTP API and N stmp clients (over
//! loopback TCP, in the room the events go to) all in this process; [`IN_FLIGHT`] senders,
//! each a hyper client's keep-alive connection with one request at a time. Each benchmark
//! reports the time per request (criterion's throughput: requests per second).
//!
//! - `http/health`: `GET /health`, the HTTP floor: hyper and axum's routing, no token, no
//!   body;
//! - `publish/in_process/N`: `stmp::broadcast` of the event to the room from the same senders,
//!   each yielding after every publish as a handler publishing once per request would, until
//!   the last of the N clients has every event;
//! - `publish/json/N`, `publish/protobuf/N`: `POST /v1/rooms/{room}/events/{method}` with the
//!   event in JSON or protobuf, until the answers came and the last of the N clients has every
//!   event;
//! - `publish/json_logged/N`: as `json`, in a process whose log subscriber takes `INFO`
//!   (formatted, then written into a sink).
//!
//! `cargo bench -p stmp-http --bench publish` (add `-- --warm-up-time 1 --measurement-time 3`
//! for a short run).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http_body_util::{BodyExt, Full};
use hyper::{Method as HttpMethod, Request, StatusCode};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prost::Message as _;
use quick_start::{UserJoinEvent, room_events};
use stmp_http::{Events, HttpApi, PROTOBUF};
use stmp_testkit::Countdown;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::{Layer as _, filter};

const TOKEN: &str = "bench-token";
const ROOM: &str = "lobby";
/// Requests in flight at once, each sender on a keep-alive connection of its own.
const IN_FLIGHT: u64 = 16;
/// Whether the process's log subscriber takes `INFO` events (it takes nothing otherwise).
static LOGGING: AtomicBool = AtomicBool::new(false);

/// A router whose listener counts each event it gets into `arrivals`.
fn counting_router(arrivals: &Countdown) -> stmp::Router {
    let router = stmp::Router::new();
    let arrivals = arrivals.clone();
    let _listening = router.listen(&room_events::USER_JOIN, move |_ctx, _: UserJoinEvent| {
        arrivals.arrived();
        std::future::ready(())
    });
    router
}

struct Setup {
    server: stmp::Server,
    rooms: stmp::Rooms,
    http: SocketAddr,
    client: HttpClient<HttpConnector, Full<Bytes>>,
    counter: Countdown,
    members: Vec<stmp::Client>,
}

async fn setup(members: usize) -> Setup {
    let server = stmp::Server::builder().build();
    let addr = server.listen_tcp("127.0.0.1:0").await.expect("listen");
    let rooms = stmp::Rooms::new();
    let events = Events::new()
        .with(quick_start::FILE_DESCRIPTOR_SET, room_events::METHODS)
        .expect("the quick start's events");
    let api = HttpApi::builder(server.clone(), TOKEN)
        .rooms(rooms.clone())
        .events(events)
        .build()
        .expect("the HTTP API");
    let http = api.listen("127.0.0.1:0").await.expect("listen HTTP");
    let counter = Countdown::default();
    let mut clients = Vec::with_capacity(members);
    for known in 0..members {
        let client = stmp::Client::builder()
            .no_reconnect()
            .router(counting_router(&counter))
            .connect(&format!("tcp://{addr}"))
            .await
            .expect("connect");
        while server.conns().len() <= known {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let newest = server
            .conns()
            .to_vec()
            .into_iter()
            .max_by_key(stmp::Conn::id);
        rooms.join(ROOM, &newest.expect("a connection"));
        clients.push(client);
    }
    Setup {
        server,
        rooms,
        http,
        client: HttpClient::builder(TokioExecutor::new()).build_http(),
        counter,
        members: clients,
    }
}

impl Setup {
    async fn request(&self, method: HttpMethod, path: &str, content_type: &str, body: Bytes) {
        let request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.http))
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", content_type)
            .body(Full::new(body))
            .expect("a request");
        let response = self.client.request(request).await.expect("an answer");
        let status = response.status();
        let body = response.into_body().collect().await.expect("a body");
        assert_eq!(status, StatusCode::OK, "{:?}", body.to_bytes());
    }

    /// `count` requests ([`send_one`](Self::send_one)), [`IN_FLIGHT`] at a time, timed until
    /// every member has every event.
    async fn send_all(self: &Arc<Self>, how: &'static str, body: Bytes, count: u64) -> Duration {
        self.counter.expect(self.members.len() * count as usize);
        let began = Instant::now();
        let senders = (0..IN_FLIGHT).map(|sender| {
            let (setup, body) = (self.clone(), body.clone());
            // The publishes of this sender: every IN_FLIGHT-th of them.
            let share = (count + IN_FLIGHT - 1 - sender) / IN_FLIGHT;
            tokio::spawn(async move {
                for _ in 0..share {
                    setup.send_one(how, body.clone()).await;
                }
            })
        });
        for sender in futures_util::future::join_all(senders).await {
            sender.expect("a sender");
        }
        self.counter.wait().await;
        began.elapsed()
    }

    /// One request: `health`, or a publish `in_process`, in `protobuf` or in JSON.
    async fn send_one(&self, how: &str, body: Bytes) {
        let path = format!("/v1/rooms/{ROOM}/events/{}", room_events::USER_JOIN.name);
        match how {
            "health" => {
                let uri = format!("http://{}/health", self.http);
                let response = self.client.get(uri.parse().expect("a URI")).await;
                let response = response.expect("an answer");
                assert_eq!(response.status(), StatusCode::OK);
                response.into_body().collect().await.expect("a body");
            }
            "in_process" => {
                let event = UserJoinEvent::decode(body).expect("an event");
                let delivery =
                    stmp::broadcast(self.rooms.to(ROOM), &room_events::USER_JOIN, &event);
                assert_eq!(delivery.expect("broadcast").queued, self.members.len());
                // One publish per turn, as a handler publishes once per request it serves.
                tokio::task::yield_now().await;
            }
            "protobuf" => self.request(HttpMethod::POST, &path, PROTOBUF, body).await,
            _ => {
                let json = "application/json";
                self.request(HttpMethod::POST, &path, json, body).await
            }
        }
    }
}

fn health(c: &mut Criterion, runtime: &tokio::runtime::Runtime) {
    let setup = Arc::new(runtime.block_on(setup(0)));
    let mut group = c.benchmark_group("http");
    group.throughput(Throughput::Elements(1));
    group.bench_function("health", |b| {
        b.iter_custom(|iters| runtime.block_on(setup.send_all("health", Bytes::new(), iters)))
    });
    group.finish();
    runtime.block_on(setup.server.shutdown(Duration::from_secs(1)));
}

fn publish(c: &mut Criterion, runtime: &tokio::runtime::Runtime) {
    let mut group = c.benchmark_group("publish");
    group.throughput(Throughput::Elements(1));
    let user = "someone with a name of a usual length";
    let json = Bytes::from(serde_json::json!({ "user": user }).to_string());
    let protobuf = Bytes::from(
        UserJoinEvent {
            user: user.to_owned(),
        }
        .encode_to_vec(),
    );
    for members in [0usize, 100] {
        let setup = Arc::new(runtime.block_on(setup(members)));
        for how in ["in_process", "protobuf", "json", "json_logged"] {
            let body = match how {
                "in_process" | "protobuf" => protobuf.clone(),
                _ => json.clone(),
            };
            LOGGING.store(how == "json_logged", Ordering::SeqCst);
            group.bench_with_input(BenchmarkId::new(how, members), &members, |b, _| {
                b.iter_custom(|iters| runtime.block_on(setup.send_all(how, body.clone(), iters)))
            });
        }
        LOGGING.store(false, Ordering::SeqCst);
        runtime.block_on(async {
            futures_util::future::join_all(setup.members.iter().map(stmp::Client::close)).await;
            setup.server.shutdown(Duration::from_secs(1)).await;
        });
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::sink)
        .with_filter(filter::filter_fn(|meta| {
            LOGGING.load(Ordering::Relaxed) && *meta.level() <= tracing::Level::INFO
        }));
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(logs))
        .expect("the only subscriber");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    health(c, &runtime);
    publish(c, &runtime);
}

criterion_group!(http, benches);
criterion_main!(http);
