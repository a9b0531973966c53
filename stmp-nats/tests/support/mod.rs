//! Pieces of the cluster tests: stmp nodes on NATS, each in a runtime of its own so that
//! killing one is a crash (every socket closes, nothing says goodbye), and client devices.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use stmp::{Client, Codec, Context, Method, Rooms, Server, Status, Users};
use stmp_nats::NatsAdapter;
use tokio::sync::mpsc;

/// Bounds every await of a test.
pub const LIMIT: Duration = Duration::from_secs(20);
/// The deadline of presence questions.
pub const PRESENCE: Duration = Duration::from_secs(2);

pub async fn within<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, future)
        .await
        .expect("test step timed out")
}

/// A room or user, and a text.
#[derive(Clone, PartialEq, Eq, prost::Message, serde::Serialize, serde::Deserialize)]
pub struct Line {
    #[prost(string, tag = "1")]
    pub to: String,
    #[prost(string, tag = "2")]
    pub text: String,
}

pub fn line(to: &str, text: &str) -> Line {
    Line {
        to: to.into(),
        text: text.into(),
    }
}

pub static JOIN: Method = Method::new("test.Chat.Join", "test.Line", "test.Line");
pub static LEAVE: Method = Method::new("test.Chat.Leave", "test.Line", "test.Line");
pub static SIGN_IN: Method = Method::new("test.Chat.SignIn", "test.Line", "test.Line");
/// Says `text` in room `to`, to everyone there but the sayer.
pub static SAY: Method = Method::new("test.Chat.Say", "test.Line", "test.Line");
/// Sends `text` to every device of user `to`.
pub static TELL: Method = Method::new("test.Chat.Tell", "test.Line", "test.Line");
/// The event devices hear.
pub static HEARD: Method = Method::new("test.Events.Heard", "test.Line", "google.protobuf.Empty");

/// An stmp server with a NATS adapter, serving the chat methods on TCP.
pub struct StmpNode {
    runtime: Option<tokio::runtime::Runtime>,
    pub adapter: NatsAdapter,
    pub rooms: Rooms,
    pub users: Users,
    pub server: Server,
    pub addr: SocketAddr,
}

impl StmpNode {
    /// Starts a node on NATS at `nats` (comma-separated URLs).
    pub async fn start(nats: &str) -> StmpNode {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let nats = nats.to_owned();
        let (adapter, rooms, users, server, addr) = within(runtime.spawn(async move {
            let adapter = NatsAdapter::connect(&nats).await.unwrap();
            let builder = Server::builder().adapter(adapter.clone());
            let (rooms, users) = (builder.rooms(), builder.users());
            let server = builder.build();
            serve(&server, &adapter, &rooms, &users);
            let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
            (adapter, rooms, users, server, addr)
        }))
        .await
        .unwrap();
        StmpNode {
            runtime: Some(runtime),
            adapter,
            rooms,
            users,
            server,
            addr,
        }
    }

    /// Ends the node as a crash would: its runtime stops, every socket it had closes.
    pub fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    pub fn url(&self) -> String {
        format!("tcp://{}", self.addr)
    }
}

impl Drop for StmpNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Joins and sign-ins flush the adapter before answering, so when the call returns NATS
/// knows the node listens for that room or user.
fn serve(server: &Server, adapter: &NatsAdapter, rooms: &Rooms, users: &Users) {
    let router = server.router();
    let (a, r) = (adapter.clone(), rooms.clone());
    router.route(&JOIN, move |ctx: Context, input: Line| {
        let (adapter, rooms) = (a.clone(), r.clone());
        async move {
            rooms.join(&input.to, ctx.conn());
            adapter
                .flush()
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            Ok::<_, Status>(input)
        }
    });
    let (a, r) = (adapter.clone(), rooms.clone());
    router.route(&LEAVE, move |ctx: Context, input: Line| {
        let (adapter, rooms) = (a.clone(), r.clone());
        async move {
            rooms.leave(&input.to, ctx.conn());
            adapter
                .flush()
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            Ok::<_, Status>(input)
        }
    });
    let (a, u) = (adapter.clone(), users.clone());
    router.route(&SIGN_IN, move |ctx: Context, input: Line| {
        let (adapter, users) = (a.clone(), u.clone());
        async move {
            users.bind(&input.to, ctx.conn());
            adapter
                .flush()
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            Ok::<_, Status>(input)
        }
    });
    let r = rooms.clone();
    router.route(&SAY, move |ctx: Context, input: Line| {
        let rooms = r.clone();
        async move {
            stmp::broadcast(rooms.to(&input.to).except(ctx.conn()), &HEARD, &input)?;
            Ok::<_, Status>(input)
        }
    });
    let u = users.clone();
    router.route(&TELL, move |_ctx: Context, input: Line| {
        let users = u.clone();
        async move {
            stmp::broadcast(users.to(&input.to), &HEARD, &input)?;
            Ok::<_, Status>(input)
        }
    });
}

/// A client of one node, and the events it heard.
pub struct Device {
    pub client: Client,
    heard: mpsc::UnboundedReceiver<Line>,
}

impl Device {
    pub async fn connect(node: &StmpNode, codec: Codec) -> Device {
        let client = within(
            Client::builder()
                .codec(codec)
                .no_reconnect()
                .connect(&node.url()),
        )
        .await
        .unwrap();
        let (tx, heard) = mpsc::unbounded_channel();
        // The handle is dropped: the listener stays for the client's life.
        let _listening = client
            .router()
            .listen(&HEARD, move |_ctx: Context, line: Line| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(line);
                }
            });
        Device { client, heard }
    }

    async fn call(&self, method: &'static Method, to: &str, text: &str) {
        let _: Line = within(self.client.call(method, &line(to, text)))
            .await
            .unwrap();
    }

    pub async fn join(&self, room: &str) {
        self.call(&JOIN, room, "").await
    }

    pub async fn leave(&self, room: &str) {
        self.call(&LEAVE, room, "").await
    }

    pub async fn sign_in(&self, user: &str) {
        self.call(&SIGN_IN, user, "").await
    }

    pub async fn say(&self, room: &str, text: &str) {
        self.call(&SAY, room, text).await
    }

    pub async fn tell(&self, user: &str, text: &str) {
        self.call(&TELL, user, text).await
    }

    /// The next event heard.
    pub async fn next(&mut self) -> Line {
        within(self.heard.recv()).await.expect("the client is gone")
    }

    /// The next event heard whose text is not `skip` (repeated probes).
    pub async fn next_but(&mut self, skip: &str) -> Line {
        loop {
            let line = self.next().await;
            if line.text != skip {
                return line;
            }
        }
    }

    /// Whether an event is waiting.
    pub fn has_heard(&mut self) -> bool {
        !self.heard.is_empty()
    }

    /// Says `probe` in `room` from `speaker` until `self` hears it: interest spreads over a
    /// NATS cluster's routes, and a restarted NATS takes the nodes' resubscriptions, in their
    /// own time.
    pub async fn hear_from(&mut self, speaker: &Device, room: &str, probe: &str) {
        within(async {
            loop {
                speaker.say(room, probe).await;
                if let Ok(Some(line)) =
                    tokio::time::timeout(Duration::from_millis(100), self.heard.recv()).await
                {
                    assert_eq!(line.text, probe, "heard something else first");
                    return;
                }
            }
        })
        .await
    }
}

/// The subjects the NATS server's connections subscribe to, one entry per subscription,
/// from its monitoring endpoint.
pub fn subscriptions(nats: &stmp_nats::nats_server::NatsServer) -> Vec<String> {
    let connz: serde_json::Value =
        serde_json::from_str(&nats.monitor("/connz?subs=1").unwrap()).unwrap();
    let mut subjects: Vec<String> = connz["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|conn| {
            conn["subscriptions_list"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|subject| subject.as_str().map(str::to_owned))
        .collect();
    subjects.sort();
    subjects
}

pub fn count(subjects: &[String], subject: &str) -> usize {
    subjects.iter().filter(|s| *s == subject).count()
}
