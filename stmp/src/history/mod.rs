//! Event history and recovery: a client that drops off for a while gets the room events it
//! missed when it comes back, exactly once and in order, or is told it cannot.
//!
//! Every room published through [`History`] is a *stream*: its events are stamped with an
//! offset (1, 2, 3…) and the stream's *epoch*, a random name that changes whenever the history
//! is lost (a server restart, say), and the recent ones are kept ([`Retention`], per room-name
//! prefix). The [`Client`](crate::Client) (and the TypeScript client) remember the last
//! position of each stream they hear and present them when they reconnect; when the
//! application joins the room again through [`History::join`], the server replays what was
//! missed before any live event, and tells the client whether it could
//! ([`ClientBuilder::on_recovery`](crate::ClientBuilder::on_recovery)). On `false` the
//! application reloads what it shows. The wire side is in `docs/wire-format.md` ("Recovery").
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use stmp::history::{History, Retention};
//! use stmp::{Client, Context, Method, Rooms, Server, Status};
//! # #[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
//! # struct Room { #[prost(string, tag = "1")] name: String }
//! # #[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
//! # struct Said { #[prost(string, tag = "1")] text: String }
//! const JOIN: Method = Method::new("chat.Rooms.Join", "chat.Room", "chat.Room");
//! const SAID: Method = Method::new("chat.Events.Said", "chat.Said", "google.protobuf.Empty");
//!
//! let history = History::builder(Rooms::new())
//!     .retention("news/", Retention::new(1000, 1 << 20, Duration::from_secs(3600)))
//!     .build();
//! let server = Server::builder().build();
//! let rooms = history.clone();
//! server.router().route(&JOIN, move |ctx: Context, room: Room| {
//!     let rooms = rooms.clone();
//!     async move {
//!         // Replays what this client missed in the room, then it hears the live events.
//!         rooms.join(&room.name, ctx.conn()).await;
//!         Ok::<_, Status>(room)
//!     }
//! });
//! let addr = server.listen_tcp("127.0.0.1:0").await?;
//!
//! let client = Client::builder()
//!     .on_recovery(|recovery| {
//!         if !recovery.recovered {
//!             println!("reload {}: events were lost", recovery.position.stream);
//!         }
//!     })
//!     .connect(&format!("tcp://{addr}"))
//!     .await?;
//! let _: Room = client.call(&JOIN, &Room { name: "lobby".into() }).await?;
//! let published = history.publish("lobby", &SAID, &Said { text: "hi".into() }, None).await?;
//! assert_eq!(published.position.offset, 1);
//! assert_eq!(published.delivery.queued, 1);
//! # client.close().await;
//! # Ok(()) }
//! ```

mod backend;
mod memory;
mod positions;
mod protocol;
mod stream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::codec::{Codec, Message};
use crate::{Conn, Context, Delivery, Method, Rooms, Status};

pub use backend::{Backend, RoomHistory, replay, send_position, stamp, tracks_positions};
pub use memory::InProcess;
pub(crate) use positions::Positions;
pub use positions::Recovery;
pub use protocol::{
    MAX_RESUME_BYTES, MAX_RESUME_ENTRIES, POSITION, POSITION_METHOD, RECOVERED, RESUME, SUPPORTS,
    StreamPosition,
};
pub use stream::{Retention, Stream, Unrecoverable};

/// Rooms with history: [`join`](History::join) replays what a reconnecting client missed,
/// [`publish`](History::publish) stamps, keeps and sends an event. Cheap to clone; clones
/// share the history.
///
/// A room's publishes and joins are serialised by the [`Backend`] (in process: a lock per
/// room, never held across an `await`), so a joining client gets every event exactly once:
/// those before its join in the replay, those after it live. Join history rooms only through
/// `History::join`; a plain [`Rooms::join`] skips the replay.
#[derive(Clone)]
pub struct History {
    inner: Arc<Inner>,
}

struct Inner {
    rooms: Rooms,
    default: Retention,
    /// Longest prefix first.
    by_prefix: Vec<(String, Retention)>,
    backend: Box<dyn Backend>,
    /// Held while a connection's resume positions are read out of its handshake, once.
    resume_setup: Mutex<()>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History")
            .field("default", &self.inner.default)
            .field("by_prefix", &self.inner.by_prefix)
            .finish_non_exhaustive()
    }
}

/// Configures a [`History`].
pub struct HistoryBuilder {
    rooms: Rooms,
    default: Retention,
    by_prefix: Vec<(String, Retention)>,
    backend: Option<Box<dyn Backend>>,
}

impl std::fmt::Debug for HistoryBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryBuilder")
            .field("default", &self.default)
            .field("by_prefix", &self.by_prefix)
            .finish_non_exhaustive()
    }
}

impl HistoryBuilder {
    /// The retention of rooms no prefix matches. Default [`Retention::default`].
    pub fn default_retention(mut self, retention: Retention) -> Self {
        self.default = retention;
        self
    }

    /// The retention of rooms whose name starts with `prefix` (the longest matching prefix
    /// wins). [`Retention::NONE`] turns history off for them.
    pub fn retention(mut self, prefix: impl Into<String>, retention: Retention) -> Self {
        self.by_prefix.push((prefix.into(), retention));
        self
    }

    /// Where events are kept: [`InProcess`] unless set (NATS JetStream for a cluster, in
    /// `stmp-nats`).
    pub fn backend(mut self, backend: impl Backend) -> Self {
        self.backend = Some(Box::new(backend));
        self
    }

    /// The history.
    pub fn build(mut self) -> History {
        self.by_prefix
            .sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        History {
            inner: Arc::new(Inner {
                rooms: self.rooms,
                default: self.default,
                by_prefix: self.by_prefix,
                backend: self
                    .backend
                    .unwrap_or_else(|| Box::new(InProcess::default())),
                resume_setup: Mutex::default(),
            }),
        }
    }
}

/// What [`History::publish`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// Where the event is in its stream.
    pub position: StreamPosition,
    /// The members of this node it was queued on or dropped for, when the backend delivers
    /// at once ([`InProcess`]); empty when delivery follows the store (JetStream).
    pub delivery: Delivery,
}

/// What [`History::join`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Joined {
    /// Whether the connection was not in the room yet.
    pub joined: bool,
    /// Events replayed before the live ones.
    pub replayed: usize,
    /// `Some` when the client asked to resume the room: whether it got everything it missed.
    pub recovered: Option<bool>,
}

/// Encodes an event for a codec.
type EncodeEvent = dyn Fn(&Codec) -> Result<Bytes, Status> + Send + Sync;

/// An event on its way into a history: its method, and its payload for any codec, encoded
/// once per codec however often it is replayed. Cheap to clone.
#[derive(Clone)]
pub struct Event {
    inner: Arc<EventInner>,
}

struct EventInner {
    method: Method,
    encode: Box<EncodeEvent>,
    encoded: Mutex<Vec<(Codec, Bytes)>>,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("method", &self.inner.method.name)
            .finish_non_exhaustive()
    }
}

impl Event {
    /// `event` as a notify of `method`.
    pub fn new<E: Message + Clone>(method: &Method, event: &E) -> Event {
        let event = event.clone();
        Event {
            inner: Arc::new(EventInner {
                method: *method,
                encode: Box::new(move |codec| codec.encode(&event)),
                encoded: Mutex::new(Vec::with_capacity(1)),
            }),
        }
    }

    /// The method it is a notify of.
    pub fn method(&self) -> &Method {
        &self.inner.method
    }

    /// The payload for `codec`, encoded on first use.
    pub fn payload(&self, codec: &Codec) -> Result<Bytes, Status> {
        let mut encoded = lock(&self.inner.encoded);
        if let Some((_, payload)) = encoded.iter().find(|(c, _)| c == codec) {
            return Ok(payload.clone());
        }
        let payload = (self.inner.encode)(codec)?;
        encoded.push((codec.clone(), payload.clone()));
        Ok(payload)
    }
}

/// The resume positions of one connection not used yet, by stream.
#[derive(Clone)]
struct PendingResumes(Arc<Mutex<HashMap<String, StreamPosition>>>);

// Nothing here is left half-updated across a panic, so a poisoned lock is still consistent.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl History {
    /// History over `rooms` with the default retention everywhere, kept in process.
    pub fn new(rooms: Rooms) -> History {
        History::builder(rooms).build()
    }

    /// A builder over `rooms`.
    pub fn builder(rooms: Rooms) -> HistoryBuilder {
        HistoryBuilder {
            rooms,
            default: Retention::default(),
            by_prefix: Vec::new(),
            backend: None,
        }
    }

    /// The rooms underneath (members, leave, list…).
    pub fn rooms(&self) -> &Rooms {
        &self.inner.rooms
    }

    /// The retention of `room`.
    pub fn retention_of(&self, room: &str) -> Retention {
        self.inner
            .by_prefix
            .iter()
            .find(|(prefix, _)| room.starts_with(prefix.as_str()))
            .map_or(self.inner.default, |(_, retention)| *retention)
    }

    fn room<'a>(&'a self, room: &'a str) -> RoomHistory<'a> {
        RoomHistory {
            name: room,
            retention: self.retention_of(room),
            rooms: &self.inner.rooms,
        }
    }

    /// The newest position of `room`, if it has a stream yet.
    pub async fn position(&self, room: &str) -> Option<StreamPosition> {
        self.inner.backend.position(room).await
    }

    /// Stamps `event` with the room's next offset, keeps it for replay and sends it to every
    /// member but `exclude`, serialised once per content type. A member whose send queue is
    /// full misses it (and its client recovers it on reconnect). `exclude` (the sender,
    /// typically) gets only the position notify, so it is not replayed its own event.
    pub async fn publish<E: Message + Clone>(
        &self,
        room: &str,
        method: &Method,
        event: &E,
        exclude: Option<&Conn>,
    ) -> Result<Published, Status> {
        let event = Event::new(method, event);
        self.inner
            .backend
            .publish(self.room(room), event, exclude)
            .await
    }

    /// Puts `conn` in `room`. A client that asked to resume the room first gets the events it
    /// missed, then the position notify with `recovered`; a client that tracks positions gets
    /// the position notify in any case. Already a member: nothing happens.
    pub async fn join(&self, room: &str, conn: &Conn) -> Joined {
        if self.inner.rooms.contains(room, conn) {
            return Joined::default();
        }
        let resume = if backend::tracks_positions(conn) {
            self.take_resume(conn, room)
        } else {
            None
        };
        self.inner.backend.join(self.room(room), conn, resume).await
    }

    /// Takes `conn` out of `room`; returns whether it was there.
    pub fn leave(&self, room: &str, conn: &Conn) -> bool {
        self.inner.rooms.leave(room, conn)
    }

    /// The position `conn`'s handshake asked to resume `room` from, once: a later re-join on
    /// the same connection starts live.
    fn take_resume(&self, conn: &Conn, room: &str) -> Option<StreamPosition> {
        let pending = {
            let _setup = lock(&self.inner.resume_setup);
            match conn.extension::<PendingResumes>() {
                Some(pending) => pending,
                None => {
                    let positions = protocol::resume_positions(
                        conn.peer_header(),
                        protocol::MAX_RESUME_ENTRIES,
                    )
                    .into_iter()
                    .map(|position| (position.stream.clone(), position))
                    .collect();
                    let pending = PendingResumes(Arc::new(Mutex::new(positions)));
                    conn.insert_extension(pending.clone());
                    pending
                }
            }
        };
        lock(&pending.0).remove(room)
    }
}

impl Context {
    /// Where this event is in its stream, when it came from a room with history: listeners
    /// read the offset here.
    pub fn position(&self) -> Option<StreamPosition> {
        StreamPosition::from_header(self.header())
    }
}

/// Lets a client's position tracker see an incoming notify first; returns whether the notify
/// was the tracker's own (the position notify) and goes no further.
pub(crate) fn observe_notify(ctx: &Context) -> bool {
    if !ctx.header().contains_key(POSITION) {
        return false;
    }
    match ctx.conn().extension::<Positions>() {
        Some(positions) => positions.observe(ctx.action(), ctx.header()),
        None => false,
    }
}
