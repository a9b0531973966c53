//! The NATS adapter: the runtime's [`Adapter`] seam driven by an async-nats client.
//!
//! One task (the "driver") owns every subscription and background task, in the order the
//! membership hooks asked for them; the hooks and broadcasts never wait, they only queue.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_nats::connection::State;
use bytes::Bytes;
use futures_util::StreamExt;
use stmp::adapter::{
    Adapter, Answer, BoxFuture, Broadcast, Membership, Node, NodeId, Query, Target,
};
use stmp::{Delivery, Status};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::control::{NodeEvent, reply_from_bytes, reply_to_bytes};
use crate::interest::{Change, Interest};
use crate::peers::Peers;
use crate::subject::{BadPrefix, Subjects};
use crate::telemetry;

/// How long [`NatsAdapter::flush`] waits for NATS to confirm.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// Spreads a server's rooms, users, broadcasts and presence over every node connected to the
/// same NATS. Cheap to clone; install it with
/// [`ServerBuilder::adapter`](stmp::ServerBuilder::adapter).
///
/// - A broadcast is delivered on this node at once, then published once on NATS with its
///   payload encoded for every codec the server accepts; other nodes deliver it without
///   re-serialising.
/// - A node subscribes to a room's subject only while the room has members on it (the same
///   for users), so it receives only the broadcasts it has recipients for.
/// - Presence questions ([`Rooms::cluster_members`](stmp::Rooms::cluster_members), …) are asked of every
///   node and answered within their deadline; a node that is gone does not answer and its
///   connections are simply not in the answer.
/// - While NATS is unreachable, broadcasts still reach this node's connections and presence
///   answers for this node; what could not be published is logged and counted
///   ([`telemetry`](crate::telemetry)). The client reconnects and resubscribes by itself.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let nats = stmp_nats::NatsAdapter::connect("nats://127.0.0.1:4222").await?;
/// let server = stmp::Server::builder().adapter(nats.clone()).build();
/// server.listen_tcp("127.0.0.1:5001").await?;
/// // … serve; a clean stop tells the other nodes this one is gone:
/// nats.close().await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct NatsAdapter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NatsAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsAdapter")
            .field("subjects", &self.inner.subjects)
            .field("node", &self.inner.me.get())
            .finish_non_exhaustive()
    }
}

struct Inner {
    client: async_nats::Client,
    subjects: Subjects,
    me: OnceLock<NodeId>,
    /// Subscription changes and lifecycle, in order, to the driver.
    commands: mpsc::UnboundedSender<Command>,
    /// Broadcasts waiting to be published; bounded so an outage cannot grow memory.
    outbox: mpsc::Sender<Outgoing>,
    peers: Arc<Mutex<Option<Peers>>>,
    heartbeat: Duration,
}

struct Outgoing {
    subject: String,
    target: &'static str,
    bytes: Bytes,
}

enum Command {
    Attach(Weak<Node>),
    Listen(String, Kind),
    Unlisten(String),
    Flush(oneshot::Sender<Result<(), Error>>),
    Close(oneshot::Sender<()>),
}

/// What a subscription's messages must be addressed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Room,
    User,
    Everyone,
}

/// A local failure of the adapter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The subject prefix is not a literal NATS subject.
    #[error(transparent)]
    BadPrefix(#[from] BadPrefix),
    /// NATS could not be reached.
    #[error("cannot connect to NATS: {0}")]
    Connect(#[source] async_nats::ConnectError),
    /// NATS is not connected now (it reconnects by itself).
    #[error("NATS is unreachable")]
    Unreachable,
    /// NATS did not confirm in time what was sent.
    #[error("NATS did not confirm: {0}")]
    Unconfirmed(#[source] async_nats::RequestError),
    /// The adapter was closed.
    #[error("the NATS adapter is closed")]
    Closed,
}

/// Options of a [`NatsAdapter`]; [`NatsAdapter::builder`] makes one.
#[derive(Debug)]
pub struct NatsAdapterBuilder {
    prefix: String,
    heartbeat: Duration,
    backlog: usize,
}

impl NatsAdapterBuilder {
    /// The first tokens of every subject (`stmp`): applications sharing one NATS use one
    /// prefix each.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How often a node tells the others it is alive (1 s). A presence question ends as soon
    /// as every node heard from in the last three intervals has answered.
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = interval.max(Duration::from_millis(10));
        self
    }

    /// Broadcasts that may wait to be published (8192); past it, a broadcast reaches this
    /// node only and is counted under [`PUBLISH_FAILURES`](crate::telemetry::PUBLISH_FAILURES).
    pub fn backlog(mut self, broadcasts: usize) -> Self {
        self.backlog = broadcasts.max(1);
        self
    }

    /// Connects to the NATS at `url` (several, comma-separated, for a NATS cluster). It fails
    /// if NATS cannot be reached now; once connected, the client reconnects by itself, to
    /// another node of a NATS cluster if its own is gone.
    ///
    /// Give every node of a NATS cluster: the client also learns the nodes routed to the one
    /// it connects to, but only those routed at that moment (later announcements are not
    /// taken in), so a node that connected before its cluster formed would have nowhere to
    /// fail over to.
    pub async fn connect(self, url: &str) -> Result<NatsAdapter, Error> {
        let subjects = Subjects::new(&self.prefix)?;
        let options = async_nats::ConnectOptions::new()
            .name("stmp-nats")
            // This node delivers its own broadcasts before publishing them.
            .no_echo()
            .event_callback(|event| async move {
                telemetry::connection_event(&event);
                match event {
                    async_nats::Event::Disconnected => {
                        tracing::warn!("NATS connection lost; reconnecting")
                    }
                    async_nats::Event::Connected => tracing::info!("connected to NATS"),
                    other => tracing::info!(event = %other, "NATS"),
                }
            });
        let urls: Vec<&str> = url.split(',').map(str::trim).collect();
        let client = options
            .connect(urls.as_slice())
            .await
            .map_err(Error::Connect)?;
        metrics::gauge!(telemetry::CONNECTED).set(1.0);
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (outbox, outbox_rx) = mpsc::channel(self.backlog);
        let inner = Arc::new(Inner {
            client,
            subjects,
            me: OnceLock::new(),
            commands,
            outbox,
            peers: Arc::default(),
            heartbeat: self.heartbeat,
        });
        let driver = Driver {
            client: inner.client.clone(),
            subjects: inner.subjects.clone(),
            peers: inner.peers.clone(),
            heartbeat: inner.heartbeat,
            node: Weak::new(),
            me: None,
            interest: Interest::default(),
            listening: HashMap::new(),
            background: vec![tokio::spawn(publish(inner.client.clone(), outbox_rx))],
        };
        tokio::spawn(driver.run(command_rx));
        Ok(NatsAdapter { inner })
    }
}

impl NatsAdapter {
    /// Options: subject prefix, heartbeat, backlog.
    pub fn builder() -> NatsAdapterBuilder {
        NatsAdapterBuilder {
            prefix: "stmp".into(),
            heartbeat: Duration::from_secs(1),
            backlog: 8192,
        }
    }

    /// Connects with the default options (see [`NatsAdapterBuilder::connect`]).
    pub async fn connect(url: &str) -> Result<NatsAdapter, Error> {
        NatsAdapter::builder().connect(url).await
    }

    /// Waits until the NATS server has processed every subscription change made so far and
    /// every broadcast published so far: after it, a broadcast from any node on the same NATS
    /// server reaches the rooms joined before the call. (Across a NATS cluster, interest still
    /// takes the routes' time to spread.) It fails at once with [`Error::Unreachable`] while
    /// NATS is down, and with [`Error::Unconfirmed`] if NATS does not answer within 5 s.
    pub async fn flush(&self) -> Result<(), Error> {
        let (done, flushed) = oneshot::channel();
        self.inner
            .commands
            .send(Command::Flush(done))
            .map_err(|_| Error::Closed)?;
        flushed.await.map_err(|_| Error::Closed)?
    }

    /// Tells the other nodes this one is leaving and stops: no more publishing,
    /// subscriptions or presence answers. Broadcasts then reach this node only.
    pub async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.inner.commands.send(Command::Close(done)).is_ok() {
            let _ = closed.await;
        }
    }

    /// Whether the NATS connection is up now.
    pub fn is_connected(&self) -> bool {
        self.inner.client.connection_state() == State::Connected
    }

    /// The underlying NATS client, for the application's own subjects.
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }
}

impl Adapter for NatsAdapter {
    fn attach(&self, node: Weak<Node>) {
        if let Some(node) = node.upgrade() {
            let _ = self.inner.me.set(node.id());
        }
        let _ = self.inner.commands.send(Command::Attach(node));
    }

    fn broadcast(&self, node: &Node, broadcast: &mut Broadcast<'_>) -> Result<Delivery, Status> {
        let delivery = node.deliver(broadcast)?;
        let target = telemetry::target_label(broadcast.target());
        let subject = match broadcast.target() {
            Target::Room(room) => self.inner.subjects.room(room),
            Target::User(user) => self.inner.subjects.user(user),
            Target::Everyone => self.inner.subjects.all(),
        };
        let bytes = broadcast.to_bytes(node.codecs())?;
        let outgoing = Outgoing {
            subject,
            target,
            bytes,
        };
        match self.inner.outbox.try_send(outgoing) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(outgoing)) => {
                telemetry::publish_failed("backlog");
                tracing::warn!(
                    subject = outgoing.subject,
                    "NATS publishing is behind; this broadcast reached this node only"
                );
            }
            Err(mpsc::error::TrySendError::Closed(_)) => telemetry::publish_failed("closed"),
        }
        Ok(delivery)
    }

    fn membership(&self, _node: &Node, change: Membership<'_>) {
        let subjects = &self.inner.subjects;
        let command = match change {
            Membership::Joined {
                room, first: true, ..
            } => Command::Listen(subjects.room(room), Kind::Room),
            Membership::Left {
                room, last: true, ..
            } => Command::Unlisten(subjects.room(room)),
            Membership::Bound {
                user, first: true, ..
            } => Command::Listen(subjects.user(user), Kind::User),
            Membership::Unbound {
                user, last: true, ..
            } => Command::Unlisten(subjects.user(user)),
            _ => return,
        };
        let _ = self.inner.commands.send(command);
    }

    fn query(
        &self,
        node: &Node,
        query: Query,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Answer, Status>> {
        let local = node.answer(&query);
        if let Query::RoomsOf(conn) = &query
            && conn.node == node.id()
        {
            return Box::pin(std::future::ready(Ok(local)));
        }
        let inner = self.inner.clone();
        Box::pin(async move { Ok(inner.ask(query, local, timeout).await) })
    }
}

impl Inner {
    /// Asks every other node and merges their answers into `answer` (this node's), until all
    /// live nodes have answered or `timeout` passes.
    async fn ask(&self, query: Query, mut answer: Answer, timeout: Duration) -> Answer {
        let deadline = Instant::now() + timeout;
        if self.client.connection_state() != State::Connected {
            telemetry::presence_query("local");
            tracing::debug!("NATS unreachable: presence answered for this node only");
            return answer;
        }
        let inbox = self.client.new_inbox();
        let mut replies = match self.client.subscribe(inbox.clone()).await {
            Ok(replies) => replies,
            Err(error) => {
                telemetry::presence_query("local");
                tracing::warn!(%error, "presence answered for this node only");
                return answer;
            }
        };
        let asked = self
            .client
            .publish_with_reply(self.subjects.presence(), inbox, query.to_bytes())
            .await;
        if let Err(error) = asked {
            telemetry::presence_query("local");
            tracing::warn!(%error, "presence answered for this node only");
            return answer;
        }
        let mut waiting: Option<HashSet<NodeId>> = self
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
            .and_then(|peers| peers.live(std::time::Instant::now()))
            .map(HashSet::from_iter);
        loop {
            if waiting.as_ref().is_some_and(HashSet::is_empty) {
                telemetry::presence_query("complete");
                return answer;
            }
            let message = match tokio::time::timeout_at(deadline, replies.next()).await {
                Ok(Some(message)) => message,
                Ok(None) | Err(_) => {
                    telemetry::presence_query("deadline");
                    return answer;
                }
            };
            let theirs = reply_from_bytes(message.payload)
                .map_err(|error| error.to_string())
                .and_then(|(node, bytes)| {
                    Answer::from_bytes(bytes)
                        .map(|theirs| (node, theirs))
                        .map_err(|status| status.to_string())
                });
            match theirs {
                Ok((node, theirs)) => {
                    if let Err(status) = answer.merge(theirs) {
                        telemetry::malformed("answer");
                        tracing::warn!(%node, %status, "dropped a presence answer");
                    }
                    if let Some(waiting) = &mut waiting {
                        waiting.remove(&node);
                    }
                }
                Err(error) => {
                    telemetry::malformed("answer");
                    tracing::warn!(%error, "dropped a malformed presence answer from NATS");
                }
            }
        }
    }
}

/// Owns the subscriptions and background tasks; ends (aborting them, which unsubscribes)
/// when the adapter is dropped or closed.
struct Driver {
    client: async_nats::Client,
    subjects: Subjects,
    peers: Arc<Mutex<Option<Peers>>>,
    heartbeat: Duration,
    node: Weak<Node>,
    me: Option<NodeId>,
    interest: Interest,
    listening: HashMap<String, JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        while let Some(command) = commands.recv().await {
            match command {
                Command::Attach(node) => self.attach(node).await,
                Command::Listen(subject, kind) => {
                    if self.interest.add(&subject) == Change::Subscribe {
                        self.subscribe(subject, kind).await;
                    }
                }
                Command::Unlisten(subject) => {
                    if self.interest.remove(&subject) == Change::Unsubscribe
                        && let Some(task) = self.listening.remove(&subject)
                    {
                        task.abort();
                    }
                }
                Command::Flush(done) => {
                    let _ = done.send(self.round_trip().await);
                }
                Command::Close(done) => {
                    if let Some(me) = self.me {
                        let goodbye = NodeEvent::Goodbye(me).to_bytes();
                        let _ = self.client.publish(self.subjects.nodes(), goodbye).await;
                        let _ = self.client.flush().await;
                    }
                    self.stop();
                    let _ = done.send(());
                    return;
                }
            }
            telemetry::subscriptions(self.interest.len());
        }
        self.stop();
    }

    /// A request nobody serves: NATS answers "no responders" once it has processed
    /// everything this connection sent before (a flush only empties the socket buffer).
    async fn round_trip(&self) -> Result<(), Error> {
        if self.client.connection_state() != State::Connected {
            return Err(Error::Unreachable);
        }
        let nobody = format!("{}.sync.{:016x}", self.subjects.nodes(), fastrand::u64(..));
        let answered =
            tokio::time::timeout(CONFIRM_TIMEOUT, self.client.request(nobody, Bytes::new())).await;
        match answered {
            Err(_) => Err(Error::Unconfirmed(async_nats::RequestError::new(
                async_nats::RequestErrorKind::TimedOut,
            ))),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) if error.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
            Ok(Err(error)) => Err(Error::Unconfirmed(error)),
        }
    }

    fn stop(&mut self) {
        for (_, task) in self.listening.drain() {
            task.abort();
        }
        for task in self.background.drain(..) {
            task.abort();
        }
    }

    async fn subscribe(&mut self, subject: String, kind: Kind) {
        match self.client.subscribe(subject.clone()).await {
            Ok(subscriber) => {
                let forwarding = forward(
                    subscriber,
                    self.node.clone(),
                    self.me,
                    kind,
                    self.subjects.clone(),
                );
                self.listening.insert(subject, tokio::spawn(forwarding));
            }
            Err(error) => {
                tracing::warn!(subject, %error, "cannot subscribe on NATS");
            }
        }
    }

    async fn attach(&mut self, node: Weak<Node>) {
        let Some(me) = node.upgrade().map(|node| node.id()) else {
            return;
        };
        self.node = node;
        self.me = Some(me);
        *self.peers.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Peers::new(me, self.heartbeat, std::time::Instant::now()));
        match self.client.subscribe(self.subjects.all()).await {
            Ok(all) => self.background.push(tokio::spawn(forward(
                all,
                self.node.clone(),
                Some(me),
                Kind::Everyone,
                self.subjects.clone(),
            ))),
            Err(error) => tracing::warn!(%error, "cannot subscribe on NATS"),
        }
        match self.client.subscribe(self.subjects.presence()).await {
            Ok(questions) => self.background.push(tokio::spawn(answer(
                questions,
                self.client.clone(),
                self.node.clone(),
                me,
            ))),
            Err(error) => tracing::warn!(%error, "cannot subscribe on NATS"),
        }
        match self.client.subscribe(self.subjects.nodes()).await {
            Ok(events) => self.background.push(tokio::spawn(listen_to_nodes(
                events,
                self.client.clone(),
                self.subjects.nodes(),
                self.peers.clone(),
                me,
            ))),
            Err(error) => tracing::warn!(%error, "cannot subscribe on NATS"),
        }
        self.background.push(tokio::spawn(beat(
            self.client.clone(),
            self.subjects.nodes(),
            me,
            self.heartbeat,
        )));
    }
}

/// Publishes queued broadcasts. While NATS is unreachable they are dropped, not buffered
/// (they would arrive late and all at once), logged once per outage and counted each.
async fn publish(client: async_nats::Client, mut outbox: mpsc::Receiver<Outgoing>) {
    let mut lost = 0u64;
    while let Some(outgoing) = outbox.recv().await {
        if client.connection_state() != State::Connected {
            if lost == 0 {
                tracing::warn!(
                    "NATS is unreachable: broadcasts reach this node's connections only until it is back"
                );
            }
            lost += 1;
            telemetry::publish_failed("disconnected");
            continue;
        }
        match client.publish(outgoing.subject, outgoing.bytes).await {
            Ok(()) => {
                telemetry::published(outgoing.target);
                if lost > 0 {
                    tracing::info!(lost, "NATS is back: broadcasts reach every node again");
                    lost = 0;
                }
            }
            Err(error) => {
                telemetry::publish_failed("error");
                tracing::warn!(%error, "a broadcast was not published on NATS");
            }
        }
    }
}

/// Delivers the broadcasts of one subscription on this node.
async fn forward(
    mut subscriber: async_nats::Subscriber,
    node: Weak<Node>,
    me: Option<NodeId>,
    kind: Kind,
    subjects: Subjects,
) {
    while let Some(message) = subscriber.next().await {
        let Some(node) = node.upgrade() else { return };
        let mut broadcast = match Broadcast::from_bytes(message.payload) {
            Ok(broadcast) => broadcast,
            Err(status) => {
                telemetry::malformed("broadcast");
                tracing::warn!(subject = %message.subject, %status, "dropped a malformed broadcast from NATS");
                continue;
            }
        };
        if Some(broadcast.origin()) == me {
            continue;
        }
        // A message must be addressed to what its subject is for: a room's subject cannot
        // carry a broadcast to everyone.
        let addressed = match (kind, broadcast.target()) {
            (Kind::Room, Target::Room(room)) => subjects.room(room) == message.subject.as_str(),
            (Kind::User, Target::User(user)) => subjects.user(user) == message.subject.as_str(),
            (Kind::Everyone, Target::Everyone) => true,
            _ => false,
        };
        if !addressed {
            telemetry::malformed("broadcast");
            tracing::warn!(subject = %message.subject, target = ?broadcast.target(), "dropped a broadcast sent to the wrong subject");
            continue;
        }
        telemetry::received(telemetry::target_label(broadcast.target()));
        if let Err(status) = node.deliver(&mut broadcast) {
            tracing::warn!(%status, "a broadcast from another node was not delivered");
        }
    }
}

/// Answers other nodes' presence questions for this node.
async fn answer(
    mut questions: async_nats::Subscriber,
    client: async_nats::Client,
    node: Weak<Node>,
    me: NodeId,
) {
    while let Some(message) = questions.next().await {
        let Some(node) = node.upgrade() else { return };
        let Some(reply) = message.reply else {
            telemetry::malformed("query");
            continue;
        };
        let query = match Query::from_bytes(message.payload) {
            Ok(query) => query,
            Err(status) => {
                telemetry::malformed("query");
                tracing::warn!(%status, "dropped a malformed presence question from NATS");
                continue;
            }
        };
        let answer = node.answer(&query).to_bytes();
        drop(node);
        if let Err(error) = client.publish(reply, reply_to_bytes(me, &answer)).await {
            tracing::warn!(%error, "a presence answer was not published");
        }
    }
}

/// Keeps [`Peers`] up to date and greets new nodes.
async fn listen_to_nodes(
    mut events: async_nats::Subscriber,
    client: async_nats::Client,
    subject: String,
    peers: Arc<Mutex<Option<Peers>>>,
    me: NodeId,
) {
    while let Some(message) = events.next().await {
        let event = match NodeEvent::from_bytes(&message.payload) {
            Ok(event) => event,
            Err(error) => {
                telemetry::malformed("node_event");
                tracing::warn!(%error, "dropped a malformed node event from NATS");
                continue;
            }
        };
        let greet = peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
            .is_some_and(|peers| peers.heard(event, std::time::Instant::now()));
        if greet {
            let beat = NodeEvent::Heartbeat(me).to_bytes();
            let _ = client.publish(subject.clone(), beat).await;
        }
    }
}

/// Says hello, then beats every `interval`.
async fn beat(client: async_nats::Client, subject: String, me: NodeId, interval: Duration) {
    let _ = client
        .publish(subject.clone(), NodeEvent::Hello(me).to_bytes())
        .await;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let _ = client
            .publish(subject.clone(), NodeEvent::Heartbeat(me).to_bytes())
            .await;
    }
}
