//! The HTTP API driven by a real HTTP client against a running stmp server on loopback, with
//! stmp clients over TCP and WebSocket, in protobuf and JSON, on the receiving end.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method as HttpMethod, Request, StatusCode};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use quick_start::{
    JoinRoomInput, RoomEventsListener, RoomServiceClient, RoomServiceServer, UserExitEvent,
    UserJoinEvent, attach_room_events, room_events,
};
use serde_json::{Value, json};
use stmp::{Client, Code, Codec, ConnectionEvent, Context, Rooms, Server, Status, Users};
use stmp_http::{Events, HttpApi};
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);
const TOKEN: &str = "test-token";
const USER_JOIN: &str = "stmp.examples.quick_start.RoomEvents.UserJoin";

/// A stmp server whose clients say who they are (`user`) and where they go (`room`) in their
/// handshake header, with its HTTP API.
struct Fixture {
    server: Server,
    tcp: SocketAddr,
    ws: SocketAddr,
    http: SocketAddr,
    client: HttpClient<HttpConnector, Full<Bytes>>,
}

async fn start() -> Fixture {
    let rooms = Rooms::new();
    let users = Users::new();
    let (joined, bound) = (rooms.clone(), users.clone());
    let server = Server::builder()
        .add_service(RoomServiceServer::new(quick_start::Rooms::new()))
        .authenticate(move |conn| {
            let (rooms, users) = (joined.clone(), bound.clone());
            async move {
                if conn.peer_header().get("user") == Some("banned") {
                    return Err(Status::unauthorized("banned"));
                }
                if let Some(user) = conn.peer_header().get("user") {
                    users.bind(user, &conn);
                }
                if let Some(room) = conn.peer_header().get("room") {
                    rooms.join(room, &conn);
                }
                Ok(())
            }
        })
        .build();
    let tcp = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let ws = server
        .listen_ws("127.0.0.1:0", quick_start::WS_PATH)
        .await
        .unwrap();
    let events = Events::new()
        .with(quick_start::FILE_DESCRIPTOR_SET, room_events::METHODS)
        .unwrap();
    let api = HttpApi::builder(server.clone(), TOKEN)
        .rooms(rooms)
        .users(users)
        .events(events)
        .metrics(stmp_http::prometheus::install().unwrap())
        .drain_deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    let http = api.listen("127.0.0.1:0").await.unwrap();
    let client = HttpClient::builder(TokioExecutor::new()).build_http();
    Fixture {
        server,
        tcp,
        ws,
        http,
        client,
    }
}

/// What an HTTP call got back.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }
}

impl Fixture {
    async fn call(
        &self,
        method: HttpMethod,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: impl Into<Bytes>,
    ) -> Reply {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.http));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let request = request.body(Full::new(body.into())).unwrap();
        let response = timeout(WAIT, self.client.request(request))
            .await
            .expect("HTTP call timed out")
            .expect("HTTP call failed");
        let status = response.status();
        let body = timeout(WAIT, response.into_body().collect())
            .await
            .expect("HTTP body timed out")
            .expect("HTTP body failed")
            .to_bytes();
        Reply {
            status,
            text: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.call(HttpMethod::GET, path, Some(TOKEN), None, Bytes::new())
            .await
    }

    async fn post_json(&self, path: &str, body: Value) -> Reply {
        self.call(
            HttpMethod::POST,
            path,
            Some(TOKEN),
            Some("application/json"),
            body.to_string(),
        )
        .await
    }

    /// A stmp client that records the room events it receives and its disconnects.
    async fn connect(&self, over_ws: bool, codec: Codec, header: &[(&str, &str)]) -> Peer {
        let (disconnects_tx, disconnects) = mpsc::unbounded_channel();
        let mut builder =
            Client::builder()
                .codec(codec)
                .no_reconnect()
                .on_connection(move |event| {
                    if let ConnectionEvent::Disconnected { status, .. } = event {
                        let _ = disconnects_tx.send(status.clone());
                    }
                });
        for (key, value) in header {
            builder = builder.header(*key, *value);
        }
        let url = match over_ws {
            true => format!("ws://{}{}", self.ws, quick_start::WS_PATH),
            false => format!("tcp://{}", self.tcp),
        };
        let client = timeout(WAIT, builder.connect(&url))
            .await
            .expect("connect timed out")
            .expect("connect failed");
        let (tx, events) = mpsc::unbounded_channel();
        let listening = attach_room_events(client.router(), Recorder(tx));
        Peer {
            client,
            events,
            disconnects,
            _listening: listening,
        }
    }
}

struct Peer {
    client: Client,
    events: mpsc::UnboundedReceiver<String>,
    disconnects: mpsc::UnboundedReceiver<Status>,
    _listening: quick_start::RoomEventsListenerHandle,
}

impl Peer {
    async fn next_event(&mut self) -> String {
        timeout(WAIT, self.events.recv())
            .await
            .expect("no event within the deadline")
            .expect("listener gone")
    }

    async fn disconnected(&mut self) -> Status {
        timeout(WAIT, self.disconnects.recv())
            .await
            .expect("not disconnected within the deadline")
            .expect("hook gone")
    }

    /// Waits until the handshake is done (and the server has run its hook).
    async fn ready(&self) {
        timeout(WAIT, self.client.connected())
            .await
            .expect("not connected within the deadline")
            .expect("not connected");
    }
}

/// Records `join:<user>` and `exit:<user>`.
struct Recorder(mpsc::UnboundedSender<String>);

impl RoomEventsListener for Recorder {
    async fn user_join(&self, _ctx: Context, event: UserJoinEvent) {
        let _ = self.0.send(format!("join:{}", event.user));
    }

    async fn user_exit(&self, _ctx: Context, event: UserExitEvent) {
        let _ = self.0.send(format!("exit:{}", event.user));
    }
}

fn room_path(room: &str, method: &str) -> String {
    format!("/v1/rooms/{room}/events/{method}")
}

#[tokio::test]
async fn requests_without_the_token_are_refused() {
    let api = start().await;
    for token in [None, Some("wrong"), Some("test-token-but-longer"), Some("")] {
        for (method, path) in [
            (HttpMethod::GET, "/v1/rooms"),
            (HttpMethod::GET, "/metrics"),
            (HttpMethod::POST, "/drain"),
            (
                HttpMethod::POST,
                "/v1/events/stmp.examples.quick_start.RoomEvents.UserJoin",
            ),
        ] {
            let reply = api
                .call(method.clone(), path, token, Some("application/json"), "{}")
                .await;
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {token:?}"
            );
            assert!(reply.error().contains("bearer token"), "{}", reply.text);
        }
    }
    // Nothing was drained by the refused calls.
    assert_eq!(api.get("/health").await.json()["status"], "ok");
    // Health answers probes without the token.
    let health = api
        .call(HttpMethod::GET, "/health", None, None, Bytes::new())
        .await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(api.get("/v1/rooms").await.status, StatusCode::OK);
}

#[tokio::test]
async fn events_are_checked_against_their_message() {
    let api = start().await;
    let path = room_path("lobby", USER_JOIN);

    let unknown_field = api
        .post_json(&path, json!({"user": "ops", "nick": "x"}))
        .await;
    assert_eq!(unknown_field.status, StatusCode::BAD_REQUEST);
    assert!(
        unknown_field.error().contains("nick"),
        "{}",
        unknown_field.text
    );
    assert!(
        unknown_field
            .error()
            .contains("stmp.examples.quick_start.UserJoinEvent"),
        "{}",
        unknown_field.text
    );

    let wrong_type = api.post_json(&path, json!({"user": 5})).await;
    assert_eq!(wrong_type.status, StatusCode::BAD_REQUEST);
    assert!(wrong_type.error().contains("string"), "{}", wrong_type.text);

    let not_json = api
        .call(
            HttpMethod::POST,
            &path,
            Some(TOKEN),
            Some("application/json"),
            "{\"user\": ",
        )
        .await;
    assert_eq!(not_json.status, StatusCode::BAD_REQUEST);

    // Field 1 announced as a 10-byte string, with 2 bytes behind it.
    let bad_protobuf = api
        .call(
            HttpMethod::POST,
            &path,
            Some(TOKEN),
            Some("application/protobuf"),
            &b"\x0a\x0aab"[..],
        )
        .await;
    assert_eq!(bad_protobuf.status, StatusCode::BAD_REQUEST);
    assert!(
        bad_protobuf.error().contains("protobuf"),
        "{}",
        bad_protobuf.text
    );

    let text = api
        .call(
            HttpMethod::POST,
            &path,
            Some(TOKEN),
            Some("text/plain"),
            "hello",
        )
        .await;
    assert_eq!(text.status, StatusCode::BAD_REQUEST);
    assert!(text.error().contains("content type"), "{}", text.text);

    let unknown_method = api
        .post_json(
            &room_path("lobby", "stmp.examples.quick_start.RoomService.JoinRoom"),
            json!({}),
        )
        .await;
    assert_eq!(unknown_method.status, StatusCode::NOT_FOUND);

    let valid = api.post_json(&path, json!({"user": "ops"})).await;
    assert_eq!(valid.status, StatusCode::OK, "{}", valid.text);
    assert_eq!(valid.json(), json!({"queued": 0, "dropped": 0}));
}

#[tokio::test]
async fn a_room_publish_reaches_tcp_and_websocket_clients_in_their_codecs() {
    let api = start().await;
    let mut tcp = api
        .connect(false, Codec::PROTOBUF, &[("room", "lobby")])
        .await;
    let mut ws = api.connect(true, Codec::JSON, &[("room", "lobby")]).await;
    let mut elsewhere = api.connect(false, Codec::JSON, &[("room", "garden")]).await;
    // The clients are in their rooms once they are connected: the handshake joined them.
    tcp.ready().await;
    ws.ready().await;
    elsewhere.ready().await;

    let json = api
        .post_json(&room_path("lobby", USER_JOIN), json!({"user": "from-json"}))
        .await;
    assert_eq!(json.status, StatusCode::OK, "{}", json.text);
    assert_eq!(json.json(), json!({"queued": 2, "dropped": 0}));
    assert_eq!(tcp.next_event().await, "join:from-json");
    assert_eq!(ws.next_event().await, "join:from-json");

    // The same event as protobuf bytes: field 1, "from-proto".
    let protobuf = api
        .call(
            HttpMethod::POST,
            &room_path("lobby", USER_JOIN),
            Some(TOKEN),
            Some("application/protobuf"),
            &b"\x0a\x0afrom-proto"[..],
        )
        .await;
    assert_eq!(protobuf.status, StatusCode::OK, "{}", protobuf.text);
    assert_eq!(tcp.next_event().await, "join:from-proto");
    assert_eq!(ws.next_event().await, "join:from-proto");

    // The other room heard none of it: its first event is its own.
    api.post_json(&room_path("garden", USER_JOIN), json!({"user": "gardener"}))
        .await;
    assert_eq!(elsewhere.next_event().await, "join:gardener");
}

#[tokio::test]
async fn user_and_everyone_publishes_reach_every_device() {
    let api = start().await;
    let mut phone = api
        .connect(false, Codec::PROTOBUF, &[("user", "alice")])
        .await;
    let mut laptop = api.connect(true, Codec::JSON, &[("user", "alice")]).await;
    let mut bob = api.connect(true, Codec::MSGPACK, &[("user", "bob")]).await;
    for peer in [&phone, &laptop, &bob] {
        peer.ready().await;
    }

    let to_alice = api
        .post_json(
            &format!("/v1/users/alice/events/{USER_JOIN}"),
            json!({"user": "for-alice"}),
        )
        .await;
    assert_eq!(to_alice.json(), json!({"queued": 2, "dropped": 0}));
    assert_eq!(phone.next_event().await, "join:for-alice");
    assert_eq!(laptop.next_event().await, "join:for-alice");

    let to_all = api
        .post_json(
            &format!("/v1/events/{USER_JOIN}"),
            json!({"user": "for-all"}),
        )
        .await;
    assert_eq!(to_all.json(), json!({"queued": 3, "dropped": 0}));
    assert_eq!(phone.next_event().await, "join:for-all");
    assert_eq!(laptop.next_event().await, "join:for-all");
    // Bob missed the first publish: his first event is the second.
    assert_eq!(bob.next_event().await, "join:for-all");
}

#[tokio::test]
async fn rooms_and_presence_are_listed() {
    let api = start().await;
    let phone = api
        .connect(
            false,
            Codec::PROTOBUF,
            &[("user", "alice"), ("room", "lobby")],
        )
        .await;
    let laptop = api
        .connect(true, Codec::JSON, &[("user", "alice"), ("room", "lobby")])
        .await;
    let bob = api
        .connect(
            false,
            Codec::PROTOBUF,
            &[("user", "bob"), ("room", "garden")],
        )
        .await;
    phone.ready().await;
    laptop.ready().await;
    bob.ready().await;

    assert_eq!(
        api.get("/v1/rooms").await.json(),
        json!({"rooms": [{"name": "garden", "members": 1}, {"name": "lobby", "members": 2}]})
    );
    let lobby = api.get("/v1/rooms/lobby").await.json();
    let members = lobby["members"].as_array().unwrap();
    let mut seen: Vec<(&str, &str, &str)> = members
        .iter()
        .map(|m| {
            assert_eq!(m["rooms"], json!(["lobby"]));
            assert!(m["remote"].as_str().unwrap().starts_with("127.0.0.1:"));
            (
                m["transport"].as_str().unwrap(),
                m["codec"].as_str().unwrap(),
                m["user"].as_str().unwrap(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("tcp", "application/protobuf", "alice"),
            ("ws", "application/json", "alice")
        ]
    );
    let ids = |list: &Value| -> Vec<u64> {
        let mut ids: Vec<u64> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_u64().unwrap())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(
        api.get("/v1/rooms/attic").await.status,
        StatusCode::NOT_FOUND
    );

    assert_eq!(
        api.get("/v1/users").await.json(),
        json!({"users": [{"name": "alice", "connections": 2}, {"name": "bob", "connections": 1}]})
    );
    let alice = api.get("/v1/users/alice").await.json();
    assert_eq!(alice["online"], true);
    assert_eq!(ids(&alice["connections"]), ids(&lobby["members"]));
    let carol = api.get("/v1/users/carol").await.json();
    assert_eq!(
        carol,
        json!({"name": "carol", "online": false, "connections": []})
    );
}

#[tokio::test]
async fn closing_over_http_sends_the_status() {
    let api = start().await;
    let mut one = api
        .connect(false, Codec::PROTOBUF, &[("user", "mallory")])
        .await;
    let mut two = api.connect(true, Codec::JSON, &[("user", "mallory")]).await;
    let mut other = api
        .connect(false, Codec::PROTOBUF, &[("user", "trent")])
        .await;
    for peer in [&one, &two, &other] {
        peer.ready().await;
    }
    // The server's id of the TCP connection, as presence shows it.
    let mallory = api.get("/v1/users/mallory").await.json();
    let one_id = mallory["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["transport"] == "tcp")
        .unwrap()["id"]
        .as_u64()
        .unwrap();

    let bad_code = api
        .post_json(
            &format!("/v1/connections/{one_id}/close"),
            json!({"code": "Goodbye"}),
        )
        .await;
    assert_eq!(bad_code.status, StatusCode::BAD_REQUEST);
    assert!(
        bad_code.error().contains("Unauthorized"),
        "{}",
        bad_code.text
    );
    let unknown = api
        .post_json("/v1/connections/999999999/close", json!({}))
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    let closed = api
        .post_json(
            &format!("/v1/connections/{one_id}/close"),
            json!({"code": "TooManyRequests", "reason": "slow down"}),
        )
        .await;
    assert_eq!(closed.json(), json!({"closed": 1}));
    let status = one.disconnected().await;
    assert_eq!(
        (status.code(), status.message()),
        (Code::TooManyRequests, "slow down")
    );

    let closed = api
        .post_json("/v1/users/mallory/close", json!({"reason": "banned"}))
        .await;
    assert_eq!(closed.json(), json!({"closed": 1}));
    let status = two.disconnected().await;
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthorized, "banned")
    );

    // Trent is still there and still hears events.
    api.post_json(
        &format!("/v1/users/trent/events/{USER_JOIN}"),
        json!({"user": "still"}),
    )
    .await;
    assert_eq!(other.next_event().await, "join:still");
}

#[tokio::test]
async fn metrics_show_the_series_after_traffic() {
    let api = start().await;
    let peer = api
        .connect(false, Codec::PROTOBUF, &[("room", "metrics")])
        .await;
    let rooms = RoomServiceClient::new(peer.client.clone());
    timeout(
        WAIT,
        rooms.join_room(JoinRoomInput {
            name: "metrics".into(),
        }),
    )
    .await
    .unwrap()
    .unwrap();
    let refused = Client::builder()
        .header("user", "banned")
        .no_reconnect()
        .connect(&format!("tcp://{}", api.tcp))
        .await;
    assert_eq!(refused.unwrap_err().code(), Code::Unauthorized);
    api.post_json(&room_path("metrics", USER_JOIN), json!({"user": "m"}))
        .await;

    let reply = api.get("/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    let text = reply.text;
    for series in [
        "stmp_connections{transport=\"tcp\"}",
        "stmp_connections_opened_total{transport=\"tcp\"}",
        "stmp_handshakes_refused_total{reason=\"Unauthorized\"}",
        "stmp_calls_total{method=\"stmp.examples.quick_start.RoomService.JoinRoom\",status=\"Ok\"}",
        "stmp_call_duration_seconds_bucket{method=\"stmp.examples.quick_start.RoomService.JoinRoom\",le=\"0.001\"}",
        "stmp_events_sent_total",
        "stmp_bytes_received_total",
        "stmp_bytes_sent_total",
        "stmp_send_queue_high_water_bytes",
    ] {
        assert!(text.contains(series), "no {series} in\n{text}");
    }
}

#[tokio::test]
async fn drain_shuts_the_server_down_and_health_says_so() {
    let api = start().await;
    let mut peer = api.connect(false, Codec::PROTOBUF, &[]).await;
    peer.ready().await;
    let health = api.get("/health").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json(), json!({"status": "ok", "connections": 1}));

    let drained = api.post_json("/drain", json!({"deadline_ms": 500})).await;
    assert_eq!(drained.status, StatusCode::OK, "{}", drained.text);
    assert_eq!(peer.disconnected().await.code(), Code::ServerShutdown);

    let health = api.get("/health").await;
    assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(health.json()["status"], "draining");
    let late = Client::builder()
        .no_reconnect()
        .connect(&format!("tcp://{}", api.tcp))
        .await;
    assert!(late.is_err(), "a drained server accepted a connection");
    assert!(api.server.conns().is_empty());
}
