//! [`ChatClient`]: the chat from the client's side, without a terminal.
//!
//! It connects by URL (`tcp://`, `ws://…/room`, `ws://…/room?format=text`, `quic://`), signs
//! in, and serves `PresenceService` so the server can ask it how it is doing. What the server
//! sends (messages, joins, leaves) and what happens to the connection comes out of
//! [`ChatEvents`].
//!
//! When the connection drops (a server restart, say), [`stmp::Client`] reconnects by itself;
//! its `on_connect` hook signs in again on the new connection and re-joins the rooms it was
//! in, and calls made meanwhile wait for it. Each step is reported as a [`ChatEvent`].

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stmp::{Code, ConnectionEvent, PacketFormat, Status};
use tokio::sync::mpsc;

use crate::{
    AccountServiceClient, ChatEventsListener, ChatServiceClient, Credentials, DirectInput,
    DirectMessageEvent, Empty, PresenceService, PresenceServiceServer, PresenceStatus, RoomInfo,
    RoomInput, RoomList, RoomMessageEvent, SendInput, SendResult, UserJoinedEvent, UserLeftEvent,
    WhoInput, WhoList, attach_chat_events,
};

/// How a client signs in.
#[derive(Clone, Debug)]
pub enum Auth {
    /// With a name and a password.
    SignIn {
        /// The name.
        user: String,
        /// The password.
        password: String,
    },
    /// By creating the account first.
    SignUp {
        /// The name.
        user: String,
        /// The password.
        password: String,
    },
    /// With the token of an earlier session, sent in the handshake.
    Token(String),
}

/// How to connect.
#[derive(Clone, Debug)]
pub struct ChatOptions {
    /// `tcp://host:port`, `ws://host:port/room` (add `?format=text` for text packets),
    /// `quic://host:port`, or the TLS ones (`tls://`, `wss://`).
    pub url: String,
    /// How to sign in.
    pub auth: Auth,
    /// The PEM certificate(s) to trust for QUIC and TLS (the server's self-signed one).
    pub ca_pem: Option<Vec<u8>>,
    /// The name the server's certificate must have, when it is not the URL's host.
    pub server_name: Option<String>,
    /// Deadline of each call, waiting for a reconnect included. Default 10 s.
    pub call_timeout: Duration,
    /// First and longest delay between reconnect attempts. Default 200 ms and 5 s.
    pub reconnect: (Duration, Duration),
    /// Idle time after which the client says it is idle. Default 60 s.
    pub idle_after: Duration,
    /// What the client calls itself in `/who`.
    pub agent: String,
}

impl ChatOptions {
    /// Options with defaults.
    pub fn new(url: impl Into<String>, auth: Auth) -> Self {
        ChatOptions {
            url: url.into(),
            auth,
            ca_pem: None,
            server_name: None,
            call_timeout: Duration::from_secs(10),
            reconnect: (Duration::from_millis(200), Duration::from_secs(5)),
            idle_after: Duration::from_secs(60),
            agent: concat!("room/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }

    /// Trusts this PEM certificate (QUIC and TLS).
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Sets the reconnect delays.
    pub fn reconnect(mut self, first: Duration, longest: Duration) -> Self {
        self.reconnect = (first, longest);
        self
    }

    /// Sets the call deadline.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Sets the idle time.
    pub fn idle_after(mut self, idle: Duration) -> Self {
        self.idle_after = idle;
        self
    }

    /// Sets the agent.
    pub fn agent(mut self, agent: impl Into<String>) -> Self {
        self.agent = agent.into();
        self
    }
}

/// What happened: something the server sent, or a change of the connection.
#[derive(Clone, Debug, PartialEq)]
pub enum ChatEvent {
    /// A user joined a room we are in.
    UserJoined(UserJoinedEvent),
    /// A user left a room we are in, or disconnected.
    UserLeft(UserLeftEvent),
    /// A message to a room we are in.
    RoomMessage(RoomMessageEvent),
    /// A direct message to us (or from us, sent on another connection).
    DirectMessage(DirectMessageEvent),
    /// The connection is gone; the client tries again after `retry_in`.
    Disconnected {
        /// Why it is gone.
        status: Status,
        /// The number of the next attempt.
        attempt: u32,
        /// When the next attempt comes.
        retry_in: Duration,
    },
    /// A new connection is up; signing in again follows.
    Reconnected {
        /// The attempts it took.
        attempt: u32,
    },
    /// Signed in again on the new connection and back in the rooms.
    Resumed {
        /// Signed in as.
        user: String,
        /// The rooms re-joined.
        rooms: Vec<String>,
        /// The rooms that could not be re-joined, and why.
        failed: Vec<(String, Status)>,
        /// The server had forgotten the account (it keeps accounts in memory and was
        /// restarted), so it was made again with the same name and password.
        signed_up_again: bool,
    },
    /// After a reconnect, the server answered for a room's missed messages: `recovered` says
    /// whether all of them came (they arrive as `RoomMessage`s before this); `false` means
    /// some are lost (the server restarted, or we were away too long).
    History {
        /// The room.
        room: String,
        /// Whether every missed message was replayed.
        recovered: bool,
    },
    /// Signing in again failed; calls fail from now on.
    ResumeFailed {
        /// Why.
        status: Status,
    },
    /// The client stopped reconnecting (the server refused it).
    GaveUp {
        /// Why.
        status: Status,
    },
}

/// The events of a [`ChatClient`], in the order they happened.
#[derive(Debug)]
pub struct ChatEvents {
    rx: mpsc::UnboundedReceiver<ChatEvent>,
}

impl ChatEvents {
    /// The next event; `None` once the client is gone.
    pub async fn recv(&mut self) -> Option<ChatEvent> {
        self.rx.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<ChatEvent> {
        self.rx.try_recv().ok()
    }
}

struct Shared {
    auth: Auth,
    transport: String,
    agent: String,
    idle_after: Duration,
    user: Mutex<String>,
    token: Mutex<String>,
    rooms: Mutex<BTreeSet<String>>,
    last_active: Mutex<Instant>,
    /// Set once the first connection has signed in: later ones are resumptions.
    connected_once: AtomicBool,
    /// The reconnect attempt under way.
    attempt: AtomicU32,
    events: mpsc::UnboundedSender<ChatEvent>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn emit(&self, event: ChatEvent) {
        let _ = self.events.send(event);
    }

    fn credentials(&self) -> Option<Credentials> {
        match &self.auth {
            Auth::SignIn { user, password } | Auth::SignUp { user, password } => {
                Some(Credentials {
                    name: user.clone(),
                    password: password.clone(),
                })
            }
            Auth::Token(_) => None,
        }
    }

    fn on_connection(&self, event: &ConnectionEvent) {
        match event {
            // Reported by the `on_connect` hook, which runs before this event.
            ConnectionEvent::Connected { .. } => {}
            ConnectionEvent::Disconnected {
                status,
                will_retry: true,
                attempt,
                delay,
            } => {
                self.attempt.store(*attempt, Ordering::SeqCst);
                self.emit(ChatEvent::Disconnected {
                    status: status.clone(),
                    attempt: *attempt,
                    retry_in: delay.unwrap_or_default(),
                })
            }
            ConnectionEvent::Disconnected { status, .. } => self.emit(ChatEvent::GaveUp {
                status: status.clone(),
            }),
        }
    }

    /// The client's `on_connect` hook: signs in on each new connection and, after a
    /// reconnect, re-joins the rooms. Calls made meanwhile wait for it to finish.
    async fn sign_in(self: Arc<Self>, conn: stmp::Conn) -> Result<(), Status> {
        let first = !self.connected_once.load(Ordering::SeqCst);
        if !first {
            let attempt = self.attempt.load(Ordering::SeqCst);
            self.emit(ChatEvent::Reconnected { attempt });
        }
        let account = AccountServiceClient::new(conn.clone());
        let credentials = self.credentials();
        let signed = match (&self.auth, credentials) {
            (Auth::Token(token), _) => account.current(Empty {}).await.map(|mut session| {
                if first || session.token.is_empty() {
                    session.token = token.clone();
                }
                (session, false)
            }),
            (Auth::SignUp { .. }, Some(credentials)) if first => {
                account.sign_up(credentials).await.map(|s| (s, false))
            }
            (_, Some(credentials)) => match account.sign_in(credentials.clone()).await {
                // A restarted server forgot the account: make it again.
                Err(status) if !first && status.code() == Code::NotFound => {
                    account.sign_up(credentials).await.map(|s| (s, true))
                }
                other => other.map(|s| (s, false)),
            },
            (_, None) => Err(Status::internal("no credentials")),
        };
        let (session, signed_up_again) = match signed {
            Ok(signed) => signed,
            Err(status) => {
                if !first && !conn.is_closed() {
                    self.emit(ChatEvent::ResumeFailed {
                        status: status.clone(),
                    });
                }
                return Err(status);
            }
        };
        *lock(&self.user) = session.user.clone();
        *lock(&self.token) = session.token;
        if first {
            self.connected_once.store(true, Ordering::SeqCst);
            return Ok(());
        }
        let chat = ChatServiceClient::new(conn.clone());
        let wanted: Vec<String> = lock(&self.rooms).iter().cloned().collect();
        let mut rooms = Vec::new();
        let mut failed = Vec::new();
        for room in wanted {
            match chat.join_room(RoomInput { room: room.clone() }).await {
                Ok(_) => rooms.push(room),
                // Gone again: the next connection resumes.
                Err(status) if conn.is_closed() => return Err(status),
                Err(status) => {
                    lock(&self.rooms).remove(&room);
                    failed.push((room, status));
                }
            }
        }
        self.emit(ChatEvent::Resumed {
            user: session.user,
            rooms,
            failed,
            signed_up_again,
        });
        Ok(())
    }
}

/// Answers the server's `PresenceService.Status`.
struct Presence(Arc<Shared>);

impl PresenceService for Presence {
    async fn status(&self, _: stmp::Context, _: Empty) -> Result<PresenceStatus, Status> {
        let idle = lock(&self.0.last_active).elapsed();
        Ok(PresenceStatus {
            state: if idle >= self.0.idle_after {
                "idle"
            } else {
                "active"
            }
            .to_owned(),
            idle_seconds: idle.as_secs(),
            transport: self.0.transport.clone(),
            agent: self.0.agent.clone(),
        })
    }
}

/// Turns the server's events into [`ChatEvent`]s.
struct Listener(mpsc::UnboundedSender<ChatEvent>);

impl ChatEventsListener for Listener {
    async fn user_joined(&self, _: stmp::Context, event: UserJoinedEvent) {
        let _ = self.0.send(ChatEvent::UserJoined(event));
    }

    async fn user_left(&self, _: stmp::Context, event: UserLeftEvent) {
        let _ = self.0.send(ChatEvent::UserLeft(event));
    }

    async fn room_message(&self, _: stmp::Context, event: RoomMessageEvent) {
        let _ = self.0.send(ChatEvent::RoomMessage(event));
    }

    async fn direct_message(&self, _: stmp::Context, event: DirectMessageEvent) {
        let _ = self.0.send(ChatEvent::DirectMessage(event));
    }
}

/// Splits `?format=text` (or `binary`) off a URL: the URL to dial and whether to use text
/// packets.
pub fn packet_format(url: &str) -> Result<(String, bool), Status> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), false));
    };
    let mut text = false;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("format", "text")) => text = true,
            Some(("format", "binary")) => text = false,
            Some(("format", other)) => {
                return Err(Status::bad_request(format!(
                    "bad format {other:?} in {url:?}: text or binary"
                )));
            }
            _ => rest.push(pair),
        }
    }
    let scheme = base.split("://").next().unwrap_or_default();
    if text && !matches!(scheme, "ws" | "wss") {
        return Err(Status::bad_request(format!(
            "{url:?}: text packets need a WebSocket (ws:// or wss://)"
        )));
    }
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((url, text))
}

/// A signed-in chat connection that comes back by itself. Cheap to clone.
#[derive(Clone)]
pub struct ChatClient {
    shared: Arc<Shared>,
    client: stmp::Client,
}

impl std::fmt::Debug for ChatClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatClient")
            .field("user", &self.user())
            .field("transport", &self.shared.transport)
            .field("rooms", &self.rooms())
            .finish_non_exhaustive()
    }
}

impl ChatClient {
    /// Connects and signs in; the events come out of the returned [`ChatEvents`].
    pub async fn connect(options: ChatOptions) -> Result<(ChatClient, ChatEvents), Status> {
        let (url, text) = packet_format(&options.url)?;
        let scheme = url.split("://").next().unwrap_or_default().to_owned();
        let transport = if text {
            format!("{scheme} (text)")
        } else {
            scheme
        };
        let (events, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            auth: options.auth.clone(),
            transport,
            agent: options.agent.clone(),
            idle_after: options.idle_after,
            user: Mutex::default(),
            token: Mutex::default(),
            rooms: Mutex::default(),
            last_active: Mutex::new(Instant::now()),
            connected_once: AtomicBool::new(false),
            attempt: AtomicU32::new(0),
            events: events.clone(),
        });

        let router = stmp::Router::new();
        router.add_service(PresenceServiceServer::new(Presence(shared.clone())));
        // Kept for the client's life: the router lives as long as the client.
        let _listeners = attach_chat_events(&router, Listener(events));

        let (hook, sign_in) = (shared.clone(), shared.clone());
        let mut builder = stmp::Client::builder()
            .router(router)
            .call_timeout(options.call_timeout)
            .reconnect(options.reconnect.0, options.reconnect.1)
            .on_connection(move |event| hook.on_connection(event))
            .on_connect(move |conn| sign_in.clone().sign_in(conn))
            .on_recovery({
                let shared = shared.clone();
                move |recovery| {
                    shared.emit(ChatEvent::History {
                        room: recovery.position.stream.clone(),
                        recovered: recovery.recovered,
                    })
                }
            });
        if text {
            builder = builder.packet_format(PacketFormat::Text);
        }
        if let Some(pem) = &options.ca_pem {
            builder = builder.tls(stmp::tls::client_config(pem)?);
        }
        if let Some(name) = &options.server_name {
            builder = builder.server_name(name.clone());
        }
        if let Auth::Token(token) = &options.auth {
            builder = builder.header("token", token.clone());
        }
        let client = builder.connect(&url).await?;
        Ok((ChatClient { shared, client }, ChatEvents { rx }))
    }

    /// The user signed in as.
    pub fn user(&self) -> String {
        lock(&self.shared.user).clone()
    }

    /// The session token, for another connection of the same user ([`Auth::Token`]).
    pub fn token(&self) -> String {
        lock(&self.shared.token).clone()
    }

    /// The rooms joined (and re-joined after a reconnect).
    pub fn rooms(&self) -> Vec<String> {
        lock(&self.shared.rooms).iter().cloned().collect()
    }

    /// The transport, as `/who` shows it: `tcp`, `ws`, `ws (text)`, `quic`…
    pub fn transport(&self) -> &str {
        &self.shared.transport
    }

    /// The underlying stmp client.
    pub fn stmp(&self) -> &stmp::Client {
        &self.client
    }

    /// The chat service, once signed in; `active` marks the user active.
    async fn chat(&self, active: bool) -> Result<ChatServiceClient<stmp::Client>, Status> {
        if active {
            *lock(&self.shared.last_active) = Instant::now();
        }
        Ok(ChatServiceClient::new(self.client.clone()))
    }

    /// Joins a room; returns its members.
    pub async fn join(&self, room: &str) -> Result<RoomInfo, Status> {
        let info = self
            .chat(true)
            .await?
            .join_room(RoomInput {
                room: room.to_owned(),
            })
            .await?;
        lock(&self.shared.rooms).insert(info.room.clone());
        Ok(info)
    }

    /// Leaves a room.
    pub async fn leave(&self, room: &str) -> Result<(), Status> {
        let left = self
            .chat(true)
            .await?
            .leave_room(RoomInput {
                room: room.to_owned(),
            })
            .await;
        if left.is_ok() || left.as_ref().is_err_and(|s| s.code() == Code::NotFound) {
            lock(&self.shared.rooms).remove(room);
        }
        left.map(|_| ())
    }

    /// The rooms that have members.
    pub async fn list_rooms(&self) -> Result<RoomList, Status> {
        self.chat(false).await?.list_rooms(Empty {}).await
    }

    /// A room's members.
    pub async fn members(&self, room: &str) -> Result<RoomInfo, Status> {
        self.chat(false)
            .await?
            .list_members(RoomInput {
                room: room.to_owned(),
            })
            .await
    }

    /// Sends a message to a room.
    pub async fn send(&self, room: &str, text: &str) -> Result<SendResult, Status> {
        self.chat(true)
            .await?
            .send_message(SendInput {
                room: room.to_owned(),
                text: text.to_owned(),
            })
            .await
    }

    /// Sends a direct message to a user.
    pub async fn direct(&self, user: &str, text: &str) -> Result<SendResult, Status> {
        self.chat(true)
            .await?
            .send_direct(DirectInput {
                user: user.to_owned(),
                text: text.to_owned(),
            })
            .await
    }

    /// Asks the server who is there (in `room`, or everyone online), and how they are.
    pub async fn who(&self, room: Option<&str>) -> Result<WhoList, Status> {
        self.chat(false)
            .await?
            .who(WhoInput {
                room: room.unwrap_or_default().to_owned(),
            })
            .await
    }

    /// Disconnects for good.
    pub async fn close(&self) {
        self.client.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::packet_format;

    #[test]
    fn the_format_comes_off_the_url() {
        assert_eq!(
            packet_format("ws://h:1/room?format=text").unwrap(),
            ("ws://h:1/room".to_owned(), true)
        );
        assert_eq!(
            packet_format("ws://h:1/room?a=b&format=binary").unwrap(),
            ("ws://h:1/room?a=b".to_owned(), false)
        );
        assert_eq!(
            packet_format("tcp://h:1").unwrap(),
            ("tcp://h:1".to_owned(), false)
        );
        assert!(packet_format("tcp://h:1?format=text").is_err());
        assert!(packet_format("ws://h:1/room?format=xml").is_err());
    }
}
