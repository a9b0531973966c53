//! Room history in NATS JetStream: every node reads and writes the same stream, so a client
//! that drops off one node and comes back on another recovers what it missed.
//!
//! # How positions mean the same on every node
//!
//! - A room's events are messages on `<prefix>.history.<room>` in one stream
//!   (`<PREFIX>_HISTORY`); an event's **offset is its stream sequence**, assigned by JetStream,
//!   so every node stamps and reads the same numbers. Offsets of one room grow but are not
//!   consecutive (other rooms share the sequence).
//! - The **epoch is the stream's creation time**: a stream deleted and recreated starts its
//!   sequences over under a new epoch, and a client of the old one is told `recovered: false`.
//! - Each message names the room's previous message (`Stmp-Prev`), and is published with
//!   `Nats-Expected-Last-Subject-Sequence` set to it, so JetStream refuses it if another node
//!   published to the room in between (the publisher re-reads and retries). The messages of a
//!   room thus form a chain, and a reader sees a missing event (expired, over a limit, purged)
//!   as a broken link: recovery answers `recovered: true` only when every link is there.
//!
//! # Ordering across nodes
//!
//! Live events are delivered from the stream itself, not from core NATS: each node runs one
//! ordered consumer per room it has members in, and delivers the room's messages in stream
//! order. Two nodes publishing to one room at once therefore never make a member see offset 5
//! before 4. A join is serialised with that delivery: it replays from JetStream the events up
//! to what the node's consumer has delivered, then joins, and the consumer's next message is
//! the next event: no gap, no duplicate.
//!
//! # Retention
//!
//! The stream's limits come from [`JetStreamHistoryBuilder::retention`]: `max_events` is the
//! stream's *max messages per subject* (per room), `max_age` its *max age*; `max_bytes` has no
//! per-subject limit in JetStream, so it bounds the whole stream instead
//! ([`JetStreamHistoryBuilder::max_stream_bytes`], unlimited by default). The per-prefix
//! retentions of a [`History`](stmp::history::History) cannot become JetStream limits (one
//! stream has one set); they are applied when a client recovers: a gap longer, older or
//! bigger than its room's retention is answered `recovered: false`, as on a single node.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::{
    self, DiscardPolicy, LastRawMessageErrorKind, RawMessageErrorKind, StorageType,
};
use async_nats::jetstream::{self as js};
use futures_util::StreamExt;
use stmp::adapter::{BoxFuture, Broadcast, Target};
use stmp::codec::Codec;
use stmp::history::{
    self, Backend, Event, Joined, Published, Retention, RoomHistory, StreamPosition,
};
use stmp::{Code, Conn, Rooms, Status};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::subject::{BadPrefix, Subjects};
use gap::{Found, Gap, Verdict};

mod gap;

/// The header naming the stream sequence of the room's previous event (0: none).
const PREV: &str = "Stmp-Prev";
/// Publishes of one event that may lose the race to other nodes before it fails.
const MAX_PUBLISH_ATTEMPTS: usize = 1000;
/// How long a join waits for this node's delivery to reach a position a client already has
/// from another node.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);
/// Pauses between attempts to restart a room's delivery after JetStream failed it.
const RESTART_BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));

/// A failure to set up the history stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// The subject prefix is not a literal NATS subject.
    #[error(transparent)]
    BadPrefix(#[from] BadPrefix),
    /// JetStream refused or did not answer (is the server started with `-js`?).
    #[error("JetStream: {0}")]
    JetStream(String),
}

/// Options of a [`JetStreamHistory`]; [`JetStreamHistory::builder`] makes one.
#[derive(Debug)]
pub struct JetStreamHistoryBuilder {
    prefix: String,
    retention: Retention,
    max_stream_bytes: i64,
    storage: StorageType,
    replicas: usize,
}

impl JetStreamHistoryBuilder {
    /// The first tokens of the subjects (`stmp`, as [`NatsAdapterBuilder::prefix`](crate::NatsAdapterBuilder::prefix)).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The stream's limits: `max_events` per room, `max_age` (see the module's "Retention"
    /// for `max_bytes`). Default [`Retention::default`].
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Bytes the whole stream keeps at most (its oldest messages go first); unlimited unless
    /// set.
    pub fn max_stream_bytes(mut self, bytes: u64) -> Self {
        self.max_stream_bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        self
    }

    /// Keeps the stream in memory instead of files: faster, lost when NATS restarts.
    pub fn in_memory(mut self) -> Self {
        self.storage = StorageType::Memory;
        self
    }

    /// Copies of the stream in a JetStream cluster (1).
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas.max(1);
        self
    }

    /// Creates the stream if it does not exist (or updates its limits) over `client`'s
    /// JetStream, and returns the backend to give
    /// [`HistoryBuilder::backend`](stmp::history::HistoryBuilder::backend).
    pub async fn build(self, client: async_nats::Client) -> Result<JetStreamHistory, HistoryError> {
        let subjects = Subjects::new(&self.prefix)?;
        let config = stream::Config {
            name: subjects.history_stream(),
            subjects: vec![subjects.all_history()],
            max_messages_per_subject: i64::try_from(self.retention.max_events)
                .unwrap_or(i64::MAX)
                .max(1),
            max_age: self.retention.max_age,
            max_bytes: self.max_stream_bytes,
            storage: self.storage,
            num_replicas: self.replicas,
            discard: DiscardPolicy::Old,
            ..Default::default()
        };
        let shared = Arc::new(Shared {
            js: js::new(client),
            subjects,
            config,
            epoch: Mutex::default(),
            rooms: Mutex::default(),
        });
        shared.ensure_stream().await?;
        Ok(JetStreamHistory { shared })
    }
}

/// A [`Backend`] that keeps the history in NATS JetStream, shared by every node: positions
/// mean the same everywhere, and live events reach members in stream order (see the module
/// documentation for the design).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use stmp::history::{History, Retention};
///
/// let nats = stmp_nats::NatsAdapter::connect("nats://127.0.0.1:4222").await?;
/// let builder = stmp::Server::builder().adapter(nats.clone());
/// let backend = stmp_nats::JetStreamHistory::builder()
///     .retention(Retention::default())
///     .build(nats.client().clone())
///     .await?;
/// let history = History::builder(builder.rooms()).backend(backend).build();
/// # let _ = history;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct JetStreamHistory {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for JetStreamHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamHistory")
            .field("stream", &self.shared.config.name)
            .finish_non_exhaustive()
    }
}

struct Shared {
    js: js::Context,
    subjects: Subjects,
    config: stream::Config,
    /// The stream's epoch as last read.
    epoch: Mutex<Option<String>>,
    rooms: Mutex<HashMap<String, Arc<RoomState>>>,
}

/// This node's state of one room.
#[derive(Default)]
struct RoomState {
    /// The room's last stream sequence as this node's publisher knows it; publishes of the
    /// room on this node go one at a time.
    publishing: tokio::sync::Mutex<Option<u64>>,
    /// This node's live delivery; joins take it too, so they fall between two deliveries.
    live: tokio::sync::Mutex<Live>,
    /// The last stream sequence delivered, for joins waiting for delivery to catch up.
    delivered: watch::Sender<u64>,
}

/// The live delivery of a room on this node.
#[derive(Default)]
struct Live {
    /// The epoch it delivers in ("" before it starts).
    epoch: String,
    /// Every message of the room up to this stream sequence was delivered (or came before
    /// delivery started); the consumer's next one is after it.
    delivered: u64,
    task: Option<JoinHandle<()>>,
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Live {
    fn running(&self) -> bool {
        self.task.as_ref().is_some_and(|task| !task.is_finished())
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The delivery tasks hold their room's state, not the backend: stop them with it.
        for state in lock(&self.rooms).values() {
            if let Ok(mut live) = state.live.try_lock()
                && let Some(task) = live.task.take()
            {
                task.abort();
            }
        }
    }
}

// Nothing is left half-updated across a panic, so a poisoned lock is still consistent.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn unavailable(what: &str, error: impl std::fmt::Display) -> Status {
    Status::new(
        Code::NetworkError,
        format!("history unavailable: {what}: {error}"),
    )
}

/// The epoch of a stream: its creation time, which a recreated stream does not share.
fn epoch_of(info: &stream::Info) -> String {
    format!("{:x}", info.created.unix_timestamp_nanos())
}

fn prev_of(headers: Option<&HeaderMap>) -> Option<u64> {
    headers?.get(PREV)?.as_str().parse().ok()
}

impl Shared {
    async fn ensure_stream(&self) -> Result<stream::Info, HistoryError> {
        let mut stream = self
            .js
            .get_or_create_stream(self.config.clone())
            .await
            .map_err(|e| HistoryError::JetStream(e.to_string()))?;
        let info = stream
            .info()
            .await
            .map_err(|e| HistoryError::JetStream(e.to_string()))?
            .clone();
        *lock(&self.epoch) = Some(epoch_of(&info));
        Ok(info)
    }

    /// The stream's state now, recreating the stream if it is gone.
    async fn info(&self) -> Result<stream::Info, Status> {
        let fetched = match self.js.get_stream(&self.config.name).await {
            Ok(mut stream) => stream.info().await.cloned().ok(),
            Err(_) => None,
        };
        let info = match fetched {
            Some(info) => info,
            None => self
                .ensure_stream()
                .await
                .map_err(|e| unavailable("stream", e))?,
        };
        *lock(&self.epoch) = Some(epoch_of(&info));
        Ok(info)
    }

    async fn stream(&self) -> Result<stream::Stream<()>, Status> {
        self.js
            .get_stream_no_info(&self.config.name)
            .await
            .map_err(|e| unavailable("stream", e))
    }

    async fn epoch(&self) -> Result<String, Status> {
        if let Some(epoch) = lock(&self.epoch).clone() {
            return Ok(epoch);
        }
        Ok(epoch_of(&self.info().await?))
    }

    fn room(&self, room: &str) -> Arc<RoomState> {
        lock(&self.rooms)
            .entry(room.to_owned())
            .or_default()
            .clone()
    }

    /// The stream sequence of the room's newest message (0: none).
    async fn last_of(&self, subject: &str) -> Result<u64, Status> {
        match self
            .stream()
            .await?
            .get_last_raw_message_by_subject(subject)
            .await
        {
            Ok(message) => Ok(message.sequence),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(0),
            Err(e) => Err(unavailable("last message", e)),
        }
    }

    async fn publish(
        &self,
        room: RoomHistory<'_>,
        event: Event,
        exclude: Option<&Conn>,
    ) -> Result<Published, Status> {
        let node = room.rooms.node();
        let bytes = {
            let mut encode = |codec: &Codec| event.payload(codec);
            let mut broadcast = Broadcast::new(
                event.method(),
                Target::Room(room.name.to_owned()),
                node.id(),
                &mut encode,
            );
            if let Some(sender) = exclude {
                broadcast.except(node.conn_ref(sender));
            }
            broadcast.to_bytes(node.codecs())?
        };
        let subject = self.subjects.history(room.name);
        let state = self.room(room.name);
        let mut last = state.publishing.lock().await;
        for _ in 0..MAX_PUBLISH_ATTEMPTS {
            let prev = match *last {
                Some(prev) => prev,
                None => match self.last_of(&subject).await {
                    Ok(prev) => prev,
                    // The stream may be gone (deleted): recreated, it starts empty.
                    Err(_) => {
                        self.info().await?;
                        self.last_of(&subject).await?
                    }
                },
            };
            let mut headers = HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                prev.to_string().as_str(),
            );
            headers.insert(PREV, prev.to_string().as_str());
            let acked = match self
                .js
                .publish_with_headers(subject.clone(), headers, bytes.clone())
                .await
            {
                Ok(ack) => ack.await,
                Err(error) => Err(error),
            };
            match acked {
                Ok(ack) => {
                    *last = Some(ack.sequence);
                    let epoch = self.epoch().await?;
                    return Ok(Published {
                        position: StreamPosition::new(room.name, epoch, ack.sequence),
                        delivery: stmp::Delivery::default(),
                    });
                }
                // Another node published to the room first: read where it is now.
                Err(error) if error.kind() == PublishErrorKind::WrongLastSequence => *last = None,
                Err(error) if error.kind() == PublishErrorKind::StreamNotFound => {
                    *last = None;
                    self.info().await?;
                }
                Err(error) => return Err(unavailable("publish", error)),
            }
        }
        Err(Status::new(
            Code::TooManyRequests,
            format!(
                "history: lost the race to publish in {} too often",
                room.name
            ),
        ))
    }

    /// Starts (or restarts, after the epoch changed) this node's delivery of `room`.
    fn start_live(
        self: &Arc<Self>,
        state: &Arc<RoomState>,
        live: &mut Live,
        room: &RoomHistory<'_>,
        info: &stream::Info,
    ) {
        if let Some(task) = live.task.take() {
            task.abort();
        }
        live.epoch = epoch_of(info);
        live.delivered = info.state.last_sequence;
        state.delivered.send_replace(live.delivered);
        live.task = Some(tokio::spawn(deliver(
            Arc::downgrade(self),
            state.clone(),
            room.name.to_owned(),
            room.rooms.clone(),
        )));
    }

    async fn join(
        self: &Arc<Self>,
        room: RoomHistory<'_>,
        conn: &Conn,
        resume: Option<StreamPosition>,
    ) -> Joined {
        let state = self.room(room.name);
        let info = match self.info().await {
            Ok(info) => info,
            Err(status) => {
                // Without JetStream the client cannot be told where it is: it joins live,
                // and a resume is answered as lost.
                tracing::warn!(room = room.name, %status, "history unavailable: joined without it");
                let joined = room.rooms.join(room.name, conn);
                return Joined {
                    joined,
                    replayed: 0,
                    recovered: resume.map(|_| false),
                };
            }
        };
        let epoch = epoch_of(&info);
        let mut live = state.live.lock().await;
        if room.rooms.contains(room.name, conn) {
            return Joined::default();
        }
        if live.epoch != epoch || !live.running() {
            let lost = !live.epoch.is_empty() && live.epoch != epoch;
            self.start_live(&state, &mut live, &room, &info);
            if lost {
                // The stream was recreated under the room's members here: what they had is
                // gone, and they now hear the new epoch.
                let position = StreamPosition::new(room.name, live.epoch.as_str(), live.delivered);
                for member in room.rooms.members(room.name) {
                    history::send_position(&member, &position, Some(false));
                }
            }
        }
        // A client that heard events from another node's delivery may be ahead of this
        // node's: wait for it, or the events in between would reach it twice.
        if let Some(from) = &resume
            && from.epoch == live.epoch
            && from.offset > live.delivered
            && from.offset <= info.state.last_sequence
        {
            drop(live);
            let mut delivered = state.delivered.subscribe();
            let target = from.offset;
            let _ =
                tokio::time::timeout(CATCH_UP_TIMEOUT, delivered.wait_for(|d| *d >= target)).await;
            live = state.live.lock().await;
            if room.rooms.contains(room.name, conn) {
                return Joined::default();
            }
        }
        let mut outcome = Joined {
            joined: true,
            ..Joined::default()
        };
        if let Some(from) = resume {
            let missed = self
                .missed(&room, &from, &live, info.state.first_sequence)
                .await;
            let recovered = match missed {
                Ok(missed) => {
                    let mut complete = true;
                    for (sequence, payload) in missed {
                        let position =
                            StreamPosition::new(room.name, live.epoch.as_str(), sequence);
                        let queued = Broadcast::from_bytes(payload).is_ok_and(|mut broadcast| {
                            history::replay(conn, &mut broadcast, &position)
                        });
                        if !queued {
                            complete = false;
                            break;
                        }
                        outcome.replayed += 1;
                    }
                    complete
                }
                Err(reason) => {
                    tracing::debug!(conn = conn.id(), room = room.name, reason, "cannot recover");
                    false
                }
            };
            outcome.recovered = Some(recovered);
        }
        room.rooms.join(room.name, conn);
        let position = StreamPosition::new(room.name, live.epoch.as_str(), live.delivered);
        history::send_position(conn, &position, outcome.recovered);
        outcome
    }

    /// The room's events after `from` up to what this node delivered, if every one of them
    /// is still kept and within the room's retention; otherwise why not.
    async fn missed(
        &self,
        room: &RoomHistory<'_>,
        from: &StreamPosition,
        live: &Live,
        first_kept: u64,
    ) -> Result<Vec<(u64, bytes::Bytes)>, &'static str> {
        if from.epoch != live.epoch {
            return Err("epoch changed");
        }
        if from.offset > live.delivered {
            return Err("position ahead of the stream");
        }
        let stream = self.stream().await.map_err(|_| "stream unavailable")?;
        let subject = self.subjects.history(room.name);
        let now = time::OffsetDateTime::now_utc();
        let mut gap = Gap::new(from.offset, live.delivered, room.retention);
        let mut missed = Vec::new();
        loop {
            let next = stream
                .get_first_raw_message_by_subject(&subject, gap.next_wanted())
                .await;
            let message = match next {
                Ok(message) => message,
                Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => {
                    let keeps_older = stream
                        .get_last_raw_message_by_subject(&subject)
                        .await
                        .is_ok();
                    return gap.none_after(first_kept, keeps_older).map(|()| missed);
                }
                Err(_) => return Err("stream unavailable"),
            };
            let found = Found {
                sequence: message.sequence,
                prev: prev_of(Some(&message.headers)),
                size: message.payload.len(),
                age: Duration::try_from(now - message.time).unwrap_or_default(),
            };
            match gap.found(found) {
                Verdict::Replay => missed.push((message.sequence, message.payload)),
                Verdict::Complete => return Ok(missed),
                Verdict::Lost(reason) => return Err(reason),
            }
        }
    }
}

/// Delivers `room`'s messages on this node, in stream order, while it has members here;
/// restarts its consumer when JetStream drops it, and tells the members when events were
/// lost meanwhile.
async fn deliver(shared: Weak<Shared>, state: Arc<RoomState>, room: String, rooms: Rooms) {
    let mut backoff = RESTART_BACKOFF.0;
    loop {
        let mut reconnected = false;
        let Some(this) = shared.upgrade() else { return };
        let start = state.live.lock().await.delivered + 1;
        let subject = this.subjects.history(&room);
        let consumer = match this.stream().await {
            Ok(stream) => stream
                .create_consumer(pull::OrderedConfig {
                    filter_subject: subject,
                    deliver_policy: DeliverPolicy::ByStartSequence {
                        start_sequence: start,
                    },
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string()),
            Err(status) => Err(status.to_string()),
        };
        let messages = match consumer {
            Ok(consumer) => consumer.messages().await.map_err(|e| e.to_string()),
            Err(error) => Err(error),
        };
        let client = this.js.client();
        drop(this);
        match messages {
            Ok(mut messages) => {
                // A consumer does not survive a NATS restart, and JetStream's heartbeats take
                // seconds to say so: a reconnect restarts delivery at once.
                let mut reconnects = Reconnects::new(client);
                loop {
                    let message = tokio::select! {
                        message = messages.next() => message,
                        () = reconnects.next() => {
                            tracing::debug!(room, "NATS reconnected: history delivery restarts");
                            reconnected = true;
                            break;
                        }
                    };
                    let Some(message) = message else { break };
                    let message = match message {
                        Ok(message) => message,
                        Err(error) => {
                            tracing::warn!(room, %error, "history delivery interrupted");
                            break;
                        }
                    };
                    backoff = RESTART_BACKOFF.0;
                    let Ok(info) = message.info() else { continue };
                    let sequence = info.stream_sequence;
                    let prev = prev_of(message.headers.as_ref());
                    let mut live = state.live.lock().await;
                    if sequence <= live.delivered {
                        continue;
                    }
                    let position = StreamPosition::new(&room, live.epoch.as_str(), sequence);
                    let lost = prev.is_none_or(|prev| prev > live.delivered);
                    deliver_one(&rooms, &room, message.payload.clone(), &position);
                    live.delivered = sequence;
                    state.delivered.send_replace(sequence);
                    if lost {
                        // A link of the chain is missing: the members missed events for good.
                        tracing::warn!(room, sequence, "history events were lost before delivery");
                        for member in rooms.members(&room) {
                            history::send_position(&member, &position, Some(false));
                        }
                    }
                    if rooms.members(&room).is_empty() {
                        // Nobody here to deliver to: the next join starts afresh.
                        live.task = None;
                        live.epoch.clear();
                        return;
                    }
                }
            }
            Err(error) => tracing::warn!(room, %error, "cannot start history delivery"),
        }
        if !reconnected {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RESTART_BACKOFF.1);
        }
        // The stream may have been recreated: members then learn their events are lost.
        let Some(this) = shared.upgrade() else { return };
        let Ok(info) = this.info().await else {
            continue;
        };
        let epoch = epoch_of(&info);
        let mut live = state.live.lock().await;
        if live.epoch != epoch {
            live.epoch = epoch;
            live.delivered = info.state.last_sequence;
            state.delivered.send_replace(live.delivered);
            let position = StreamPosition::new(&room, live.epoch.as_str(), live.delivered);
            for member in rooms.members(&room) {
                history::send_position(&member, &position, Some(false));
            }
        }
    }
}

/// Notices when the NATS connection comes back after being lost (however briefly: the
/// client counts its connects).
struct Reconnects {
    statistics: Arc<async_nats::Statistics>,
    seen: u64,
    ticks: tokio::time::Interval,
}

impl Reconnects {
    /// How often the connect count is looked at.
    const EVERY: Duration = Duration::from_millis(100);

    fn new(client: async_nats::Client) -> Reconnects {
        let mut ticks = tokio::time::interval(Self::EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let statistics = client.statistics();
        Reconnects {
            seen: statistics.connects.load(Ordering::Relaxed),
            statistics,
            ticks,
        }
    }

    /// Returns once the client has connected again.
    async fn next(&mut self) {
        loop {
            self.ticks.tick().await;
            let connects = self.statistics.connects.load(Ordering::Relaxed);
            if connects != self.seen {
                self.seen = connects;
                return;
            }
        }
    }
}

/// Delivers one kept event to the room's members on this node, and moves the position of
/// those it leaves out (its sender) past it.
fn deliver_one(rooms: &Rooms, room: &str, payload: bytes::Bytes, position: &StreamPosition) {
    let node = rooms.node();
    let mut broadcast = match Broadcast::from_bytes(payload) {
        Ok(broadcast) => broadcast,
        Err(status) => {
            tracing::warn!(room, %status, "dropped a malformed history event");
            return;
        }
    };
    if broadcast.target() != &Target::Room(room.to_owned()) {
        tracing::warn!(room, target = ?broadcast.target(), "dropped a history event for another target");
        return;
    }
    history::stamp(&mut broadcast, position);
    if let Err(status) = node.deliver(&mut broadcast) {
        tracing::warn!(room, %status, "a history event was not delivered");
    }
    let excluded: Vec<u64> = broadcast
        .excluded()
        .iter()
        .filter(|conn| conn.node == node.id())
        .map(|conn| conn.id)
        .collect();
    if !excluded.is_empty() {
        for member in rooms.members(room) {
            if excluded.contains(&member.id()) {
                history::send_position(&member, position, None);
            }
        }
    }
}

impl JetStreamHistory {
    /// Options: prefix, retention, storage, replicas.
    pub fn builder() -> JetStreamHistoryBuilder {
        JetStreamHistoryBuilder {
            prefix: "stmp".into(),
            retention: Retention::default(),
            max_stream_bytes: -1,
            storage: StorageType::File,
            replicas: 1,
        }
    }

    /// The name of the JetStream stream.
    pub fn stream_name(&self) -> &str {
        &self.shared.config.name
    }
}

impl Backend for JetStreamHistory {
    fn publish<'a>(
        &'a self,
        room: RoomHistory<'a>,
        event: Event,
        exclude: Option<&'a Conn>,
    ) -> BoxFuture<'a, Result<Published, Status>> {
        Box::pin(self.shared.publish(room, event, exclude))
    }

    fn join<'a>(
        &'a self,
        room: RoomHistory<'a>,
        conn: &'a Conn,
        resume: Option<StreamPosition>,
    ) -> BoxFuture<'a, Joined> {
        Box::pin(self.shared.join(room, conn, resume))
    }

    fn position<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Option<StreamPosition>> {
        Box::pin(async move {
            let last = self
                .shared
                .last_of(&self.shared.subjects.history(room))
                .await
                .ok()?;
            let epoch = self.shared.epoch().await.ok()?;
            (last > 0).then(|| StreamPosition::new(room, epoch, last))
        })
    }
}
