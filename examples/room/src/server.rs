//! The chat server: accounts, rooms, direct messages and `/who`, on TCP, WebSocket and QUIC
//! at once.
//!
//! A connection is signed in either at handshake (a `token` header from an earlier sign-in)
//! or by `SignIn` / `SignUp`; [`RequireSignIn`] refuses every other call before that. The
//! connection then carries a [`SignedIn`] extension and is bound to its user in
//! [`stmp::Users`], so a direct message reaches every device of the user. Rooms are
//! [`stmp::Rooms`]; a connection that closes leaves its rooms, and the others hear of it.
//!
//! Sign-ins are rate-limited per connection and per address ([`SignInLimits`]); names,
//! passwords and messages have length limits, refused with `BadRequest` before they cost
//! anything.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stmp::history::History;
use stmp::{CallOptions, Conn, Context, Flow, Middleware, Status};

use crate::accounts::Accounts;
use crate::limits::{SignInLimiter, SignInLimits};
use crate::{
    AccountService, AccountServiceServer, ChatService, ChatServiceServer, Credentials, DirectInput,
    DirectMessageEvent, Empty, PresenceServiceClient, RoomInfo, RoomInput, RoomList,
    RoomMessageEvent, SendInput, SendResult, Session, TokenInput, UserJoinedEvent, UserLeftEvent,
    WhoEntry, WhoInput, WhoList, account_service, chat_events, now_ms, valid_name,
};

/// The longest message text, in bytes.
pub const MAX_TEXT: usize = 4096;

/// Longer than any token the accounts issue (64 hex digits).
const MAX_TOKEN: usize = 128;

/// What a signed-in connection carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedIn {
    /// The user's name.
    pub user: String,
}

/// The user a connection is signed in as.
pub fn user_of(conn: &Conn) -> Option<String> {
    conn.extension::<SignedIn>().map(|s| s.user)
}

/// The state of the chat: accounts, rooms, users online. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Chat {
    accounts: Accounts,
    rooms: stmp::Rooms,
    /// Room messages are kept for a while, so a client that drops off gets what it missed
    /// when it joins again.
    history: History,
    users: stmp::Users,
    /// Joins and leaves decide "first of the user in the room" and "last of the user in the
    /// room" one at a time; a join whose history replay is still under way counts the user
    /// as there (by room and user: joins in progress).
    membership: Arc<Mutex<HashMap<(String, String), usize>>>,
    limiter: SignInLimiter,
    who_timeout: Duration,
    /// How long questions about the other nodes' members (with `--nats`) may take.
    cluster_timeout: Duration,
    /// The NATS adapter, when the chat spans nodes.
    nats: Option<stmp_nats::NatsAdapter>,
}

impl Chat {
    /// A chat over these accounts.
    pub fn new(accounts: Accounts) -> Self {
        let rooms = stmp::Rooms::new();
        Chat {
            accounts,
            history: History::new(rooms.clone()),
            rooms,
            users: stmp::Users::new(),
            membership: Arc::default(),
            limiter: SignInLimiter::new(SignInLimits::default()),
            who_timeout: Duration::from_secs(2),
            cluster_timeout: Duration::from_secs(1),
            nats: None,
        }
    }

    /// Waits until NATS knows this node listens for the rooms joined and users signed in so
    /// far, so a join or sign-in answers only once messages from other nodes can reach it.
    async fn settled(&self) {
        if let Some(nats) = &self.nats
            && let Err(error) = nats.flush().await
        {
            tracing::warn!(%error, "NATS did not confirm the subscriptions");
        }
    }

    /// The chat with the rooms and users of the server `builder` makes, so they go through
    /// its adapter (NATS: every node's members) and know each other (a room's members come
    /// with their user).
    pub fn on(mut self, builder: &stmp::ServerBuilder) -> Self {
        self.rooms = builder.rooms();
        self.users = builder.users();
        self.history = History::new(self.rooms.clone());
        self
    }

    /// Limits sign-in attempts as `limits` say instead of the defaults (5 failed attempts a
    /// minute per connection, 20 per address).
    pub fn sign_in_limits(mut self, limits: SignInLimits) -> Self {
        self.limiter = SignInLimiter::new(limits);
        self
    }

    /// The sign-in rate limiter.
    pub fn limiter(&self) -> &SignInLimiter {
        &self.limiter
    }

    /// How long `Who` waits for each client's answer. Default 2 s.
    pub fn who_timeout(mut self, timeout: Duration) -> Self {
        self.who_timeout = timeout;
        self
    }

    /// The accounts.
    pub fn accounts(&self) -> &Accounts {
        &self.accounts
    }

    /// The rooms.
    pub fn rooms(&self) -> &stmp::Rooms {
        &self.rooms
    }

    /// The users online.
    pub fn users(&self) -> &stmp::Users {
        &self.users
    }

    /// Signs `conn` in as `user`. A connection signed in as someone else first leaves its
    /// rooms as that user.
    pub fn attach(&self, conn: &Conn, user: &str, how: &str) {
        let previous = conn.extension::<SignedIn>();
        match &previous {
            Some(previous) if previous.user == user => return,
            Some(previous) => {
                self.leave_all(conn, &previous.user, "signed out");
                tracing::info!(conn = conn.id(), user = %previous.user, "signed out");
            }
            None => {
                // Registered before the runtime's own hooks (Users, Rooms), so it still sees
                // the rooms the connection was in.
                let chat = self.clone();
                let closing = conn.clone();
                conn.on_close(move |status| {
                    let Some(user) = user_of(&closing) else {
                        return;
                    };
                    if status.code() == stmp::Code::ServerShutdown {
                        // Everyone is going; nobody needs to hear who left.
                        chat.rooms.leave_all(&closing);
                    } else {
                        chat.leave_all(&closing, &user, "disconnected");
                    }
                    tracing::info!(conn = closing.id(), %user, %status, "user disconnected");
                });
            }
        }
        conn.insert_extension(SignedIn {
            user: user.to_owned(),
        });
        self.users.bind(user, conn);
        tracing::info!(conn = conn.id(), %user, how, remote = %address(conn), "signed in");
    }

    /// Takes `conn` out of every room, telling the others.
    fn leave_all(&self, conn: &Conn, user: &str, reason: &str) {
        for room in self.rooms.rooms_of(conn) {
            self.leave(conn, user, &room, reason);
        }
    }

    /// Takes `conn` out of `room`; when it was the user's last connection there, the others
    /// get `UserLeft`. Returns whether it was in the room.
    fn leave(&self, conn: &Conn, user: &str, room: &str, reason: &str) -> bool {
        let joining = lock(&self.membership);
        if !self.rooms.leave(room, conn) {
            return false;
        }
        if self.has_user(room, user) || joining.contains_key(&(room.to_owned(), user.to_owned())) {
            return true;
        }
        tracing::info!(%room, %user, reason, "left room");
        let event = UserLeftEvent {
            room: room.to_owned(),
            user: user.to_owned(),
            timestamp: now_ms(),
            reason: reason.to_owned(),
        };
        if let Err(status) = chat_events::user_left(self.rooms.to(room), &event) {
            tracing::warn!(%status, "cannot send UserLeft");
        }
        true
    }

    /// Whether one of `user`'s connections is in `room`.
    fn has_user(&self, room: &str, user: &str) -> bool {
        self.rooms
            .members(room)
            .iter()
            .any(|conn| user_of(conn).as_deref() == Some(user))
    }

    /// The room and its members' names, on every node.
    async fn room_info(&self, room: &str) -> RoomInfo {
        let mut members: Vec<String> =
            match self.rooms.cluster_members(room, self.cluster_timeout).await {
                Ok(members) => members.into_iter().filter_map(|m| m.user).collect(),
                Err(status) => {
                    tracing::warn!(%status, "members of this node only");
                    self.rooms
                        .members(room)
                        .iter()
                        .filter_map(user_of)
                        .collect()
                }
            };
        members.sort();
        members.dedup();
        RoomInfo {
            room: room.to_owned(),
            members,
        }
    }

    /// Signs in or up, and attaches the session.
    async fn sign(&self, ctx: &Context, input: Credentials, up: bool) -> Result<Session, Status> {
        let name = input.name.trim();
        let refused = |status: &Status| {
            tracing::info!(conn = ctx.conn().id(), %status, "sign-in refused");
        };
        // Malformed credentials cost nothing, so they do not count as attempts.
        crate::accounts::check_credentials(name, &input.password).inspect_err(refused)?;
        let attempt = self
            .limiter
            .attempt(ctx.conn(), std::time::Instant::now())
            .inspect_err(refused)?;
        let token = if up {
            self.accounts.sign_up(name, &input.password).await
        } else {
            self.accounts.sign_in(name, &input.password).await
        };
        let token = token.inspect_err(refused)?;
        attempt.succeeded();
        self.attach(ctx.conn(), name, if up { "sign-up" } else { "password" });
        self.settled().await;
        Ok(Session {
            user: name.to_owned(),
            token,
        })
    }
}

/// The peer's address, as text.
fn address(conn: &Conn) -> String {
    conn.remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "?".to_owned())
}

/// A join counted in [`Chat::membership`] until it is done (or its future dropped).
struct JoinInProgress<'a> {
    joining: &'a Mutex<HashMap<(String, String), usize>>,
    key: (String, String),
}

impl Drop for JoinInProgress<'_> {
    fn drop(&mut self) {
        let mut joining = lock(self.joining);
        if let Some(count) = joining.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                joining.remove(&self.key);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The user of a request's connection (the middleware made sure there is one).
fn signed_in(ctx: &Context) -> Result<String, Status> {
    user_of(ctx.conn()).ok_or_else(not_signed_in)
}

/// Checks a message's text: not blank, at most [`MAX_TEXT`] bytes.
fn valid_text(text: &str) -> Result<(), Status> {
    if text.len() > MAX_TEXT {
        return Err(Status::bad_request(format!(
            "the message is longer than {MAX_TEXT} bytes"
        )));
    }
    if text.trim().is_empty() {
        return Err(Status::bad_request("the message is empty"));
    }
    Ok(())
}

fn not_signed_in() -> Status {
    Status::unauthorized("not signed in: call SignIn or SignUp, or connect with a token header")
}

impl AccountService for Chat {
    async fn sign_up(&self, ctx: Context, input: Credentials) -> Result<Session, Status> {
        self.sign(&ctx, input, true).await
    }

    async fn sign_in(&self, ctx: Context, input: Credentials) -> Result<Session, Status> {
        self.sign(&ctx, input, false).await
    }

    async fn resume(&self, ctx: Context, input: TokenInput) -> Result<Session, Status> {
        let conn = ctx.conn();
        let refused = |status: &Status| {
            tracing::info!(conn = conn.id(), %status, "token refused");
        };
        if input.token.len() > MAX_TOKEN {
            return Err(Status::bad_request("that is no token")).inspect_err(refused);
        }
        let attempt = self
            .limiter
            .attempt(conn, std::time::Instant::now())
            .inspect_err(refused)?;
        let user = self
            .accounts
            .check_token(&input.token)
            .inspect_err(refused)?;
        attempt.succeeded();
        self.attach(conn, &user, "token");
        self.settled().await;
        Ok(Session {
            user,
            token: String::new(),
        })
    }

    async fn current(&self, ctx: Context, _: Empty) -> Result<Session, Status> {
        Ok(Session {
            user: signed_in(&ctx)?,
            token: String::new(),
        })
    }
}

impl ChatService for Chat {
    async fn join_room(&self, ctx: Context, input: RoomInput) -> Result<RoomInfo, Status> {
        let user = signed_in(&ctx)?;
        let room = input.room.trim();
        valid_name("room name", room)?;
        let conn = ctx.conn();
        {
            let key = (room.to_owned(), user.clone());
            let was_there = {
                let mut joining = lock(&self.membership);
                let there = self.has_user(room, &user) || joining.contains_key(&key);
                *joining.entry(key.clone()).or_default() += 1;
                there
            };
            let in_progress = JoinInProgress {
                joining: &self.membership,
                key,
            };
            // Through the history: a client coming back gets the messages it missed first.
            let joined = self.history.join(room, conn).await.joined;
            drop(in_progress);
            if joined && !was_there {
                tracing::info!(%room, %user, rooms = self.rooms.list().len(), "joined room");
                let event = UserJoinedEvent {
                    room: room.to_owned(),
                    user: user.clone(),
                    timestamp: now_ms(),
                };
                chat_events::user_joined(self.rooms.to(room).except(conn), &event)?;
            }
        }
        self.settled().await;
        Ok(self.room_info(room).await)
    }

    async fn leave_room(&self, ctx: Context, input: RoomInput) -> Result<Empty, Status> {
        let user = signed_in(&ctx)?;
        let room = input.room.trim();
        valid_name("room name", room)?;
        if self.leave(ctx.conn(), &user, room, "left") {
            Ok(Empty {})
        } else {
            Err(Status::not_found(format!("you are not in #{room}")))
        }
    }

    async fn list_rooms(&self, ctx: Context, _: Empty) -> Result<RoomList, Status> {
        signed_in(&ctx)?;
        let names = match self.rooms.cluster_list(self.cluster_timeout).await {
            Ok(names) => names,
            Err(status) => {
                tracing::warn!(%status, "rooms of this node only");
                self.rooms.list()
            }
        };
        let mut rooms = Vec::with_capacity(names.len());
        for room in names {
            let info = self.room_info(&room).await;
            if !info.members.is_empty() {
                rooms.push(info);
            }
        }
        Ok(RoomList { rooms })
    }

    async fn list_members(&self, ctx: Context, input: RoomInput) -> Result<RoomInfo, Status> {
        signed_in(&ctx)?;
        valid_name("room name", input.room.trim())?;
        let info = self.room_info(input.room.trim()).await;
        if info.members.is_empty() {
            return Err(Status::not_found(format!("no room #{}", info.room)));
        }
        Ok(info)
    }

    async fn send_message(&self, ctx: Context, input: SendInput) -> Result<SendResult, Status> {
        let user = signed_in(&ctx)?;
        let conn = ctx.conn();
        let room = input.room.trim();
        valid_name("room name", room)?;
        valid_text(&input.text)?;
        if !self.rooms.contains(room, conn) {
            return Err(Status::unauthorized(format!(
                "you are not in #{room}: join it first"
            )));
        }
        let event = RoomMessageEvent {
            room: room.to_owned(),
            sender: user,
            text: input.text,
            timestamp: now_ms(),
        };
        let delivery = self
            .history
            .publish(room, &chat_events::ROOM_MESSAGE, &event, Some(conn))
            .await?
            .delivery;
        Ok(SendResult {
            timestamp: event.timestamp,
            delivered: delivery.queued as u32,
        })
    }

    async fn send_direct(&self, ctx: Context, input: DirectInput) -> Result<SendResult, Status> {
        let user = signed_in(&ctx)?;
        let to = input.user.trim();
        valid_name("user name", to)?;
        valid_text(&input.text)?;
        // Online on any node.
        let online = self
            .users
            .cluster_is_online(to, self.cluster_timeout)
            .await
            .unwrap_or_else(|_| self.users.is_online(to));
        if !online {
            return Err(Status::not_found(if self.accounts.exists(to) {
                format!("{to} is not online")
            } else {
                format!("no user named {to:?}")
            }));
        }
        let event = DirectMessageEvent {
            sender: user.clone(),
            recipient: to.to_owned(),
            text: input.text,
            timestamp: now_ms(),
        };
        // The recipient's devices, and the sender's others (a copy for them), on any node.
        let conn = ctx.conn();
        let mut delivery = chat_events::direct_message(self.users.to(to).except(conn), &event)?;
        if user != to {
            let copies = chat_events::direct_message(self.users.to(&user).except(conn), &event)?;
            delivery.queued += copies.queued;
        }
        Ok(SendResult {
            timestamp: event.timestamp,
            delivered: delivery.queued as u32,
        })
    }

    async fn who(&self, ctx: Context, input: WhoInput) -> Result<WhoList, Status> {
        signed_in(&ctx)?;
        let room = input.room.trim().to_owned();
        if !room.is_empty() {
            valid_name("room name", &room)?;
        }
        let mut conns: Vec<Conn> = if room.is_empty() {
            self.users
                .online()
                .iter()
                .flat_map(|user| self.users.conns(user))
                .collect()
        } else {
            self.rooms.members(&room)
        };
        conns.retain(|conn| !conn.is_closed());
        // Members on other nodes (with `--nats`) are listed; only this node can ask its own
        // clients how they are doing.
        let here = self.rooms.node().id();
        let elsewhere: Vec<WhoEntry> = match room.is_empty() {
            true => self
                .users
                .cluster_online(self.cluster_timeout)
                .await
                .map(|users| {
                    users
                        .into_iter()
                        .filter(|user| !self.users.is_online(user))
                        .map(Some)
                        .collect::<Vec<_>>()
                }),
            false => self
                .rooms
                .cluster_members(&room, self.cluster_timeout)
                .await
                .map(|members| {
                    members
                        .into_iter()
                        .filter(|member| member.conn.node != here)
                        .map(|member| member.user)
                        .collect()
                }),
        }
        .unwrap_or_default()
        .into_iter()
        .map(|user| WhoEntry {
            user: user.unwrap_or_default(),
            transport: String::new(),
            status: None,
            error: "on another node".to_owned(),
        })
        .collect();
        if conns.is_empty() && elsewhere.is_empty() {
            return Err(Status::not_found(format!("no room #{room}")));
        }
        // Every client at once: a server → client call on each connection.
        let mut asks = tokio::task::JoinSet::new();
        for conn in conns {
            let timeout = self.who_timeout;
            asks.spawn(async move {
                let presence = PresenceServiceClient::new(conn.clone());
                let answer = presence
                    .status_with(Empty {}, CallOptions::new().timeout(timeout))
                    .await;
                let (status, error) = match answer {
                    Ok(status) => (Some(status), String::new()),
                    Err(status) => (None, status.to_string()),
                };
                // Names and transports only: an address is nobody's business but the
                // server's.
                WhoEntry {
                    user: user_of(&conn).unwrap_or_default(),
                    transport: conn.transport().to_owned(),
                    status,
                    error,
                }
            });
        }
        let mut entries = asks.join_all().await;
        entries.extend(elsewhere);
        entries.sort_by(|a, b| (&a.user, &a.transport).cmp(&(&b.user, &b.transport)));
        Ok(WhoList { room, entries })
    }
}

/// Refuses every call but those of `AccountService` (`SignUp`, `SignIn`, `Current`) from a connection that is not
/// signed in.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequireSignIn;

impl Middleware for RequireSignIn {
    async fn before(&self, ctx: &Context) -> Result<Flow, Status> {
        let open = ctx
            .method()
            .is_some_and(|method| account_service::METHODS.iter().any(|m| m.name == method));
        if open || ctx.conn().extension::<SignedIn>().is_some() {
            Ok(Flow::Continue)
        } else {
            Err(not_signed_in())
        }
    }
}

/// A certificate and its private key, PEM.
#[derive(Clone, Debug)]
pub struct TlsPem {
    /// The certificate chain.
    pub cert: String,
    /// The private key.
    pub key: String,
}

impl TlsPem {
    /// A self-signed certificate for `localhost`, `127.0.0.1` and `::1`.
    pub fn self_signed() -> Result<TlsPem, Status> {
        let names = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
        let cert = rcgen::generate_simple_self_signed(names)
            .map_err(|e| Status::internal(format!("cannot make a certificate: {e}")))?;
        Ok(TlsPem {
            cert: cert.cert.pem(),
            key: cert.signing_key.serialize_pem(),
        })
    }
}

/// Where and how to serve.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Plain TCP.
    pub tcp: Option<SocketAddr>,
    /// WebSocket on [`WS_PATH`](crate::WS_PATH), binary and text packets.
    pub ws: Option<SocketAddr>,
    /// QUIC (UDP); needs `tls`.
    pub quic: Option<SocketAddr>,
    /// The certificate QUIC serves.
    pub tls: Option<TlsPem>,
    /// Silence after which a connection is dead. Default 60 s.
    pub read_timeout: Duration,
    /// How long binding a QUIC port may be retried while a previous server's socket goes
    /// away. Default zero: fail at once.
    pub bind_retry: Duration,
    /// Share rooms, users and messages with every node on this NATS.
    pub nats: Option<stmp_nats::NatsAdapter>,
    /// Keep room messages in NATS JetStream (every node reads them, and they outlive
    /// restarts) instead of in this process; see [`history_backend`].
    pub history: Option<stmp_nats::JetStreamHistory>,
}

/// Where room messages are kept for clients that come back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HistoryMode {
    /// In JetStream when the server is on a NATS that has it, else in this process.
    #[default]
    Auto,
    /// In this process: lost on restart, not seen by other nodes.
    Memory,
    /// In NATS JetStream; failing if NATS has no JetStream.
    JetStream,
}

/// The JetStream history for `mode` on `nats`, or `None` for history in this process.
/// `Auto` falls back to the process (with a warning) when NATS has no JetStream.
pub async fn history_backend(
    nats: Option<&stmp_nats::NatsAdapter>,
    mode: HistoryMode,
) -> Result<Option<stmp_nats::JetStreamHistory>, String> {
    let nats = match (nats, mode) {
        (_, HistoryMode::Memory) | (None, HistoryMode::Auto) => return Ok(None),
        (None, HistoryMode::JetStream) => return Err("JetStream history needs --nats".into()),
        (Some(nats), _) => nats,
    };
    match stmp_nats::JetStreamHistory::builder()
        .build(nats.client().clone())
        .await
    {
        Ok(history) => {
            tracing::info!(
                stream = history.stream_name(),
                "room history in NATS JetStream"
            );
            Ok(Some(history))
        }
        Err(error) if mode == HistoryMode::Auto => {
            tracing::warn!(%error, "no JetStream on this NATS: room history stays in this process");
            Ok(None)
        }
        Err(error) => Err(error.to_string()),
    }
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            tcp: None,
            ws: None,
            quic: None,
            tls: None,
            read_timeout: Duration::from_secs(60),
            bind_retry: Duration::ZERO,
            nats: None,
            history: None,
        }
    }
}

/// A running chat server.
#[derive(Clone, Debug)]
pub struct RoomServer {
    /// The stmp server (its connections, its router, its shutdown).
    pub server: stmp::Server,
    /// The chat's state.
    pub chat: Chat,
    /// The TCP address it listens on.
    pub tcp: Option<SocketAddr>,
    /// The WebSocket address it listens on.
    pub ws: Option<SocketAddr>,
    /// The QUIC (UDP) address it listens on.
    pub quic: Option<SocketAddr>,
}

/// A stmp server of `chat`: the services, the sign-in middleware, token authentication at
/// handshake and connection logs. It listens nowhere yet.
pub fn build(chat: &Chat, read_timeout: Duration) -> stmp::Server {
    let builder = stmp::Server::builder();
    let chat = chat.clone().on(&builder);
    build_on(builder, &chat, read_timeout)
}

/// [`build`] from `builder` (with an adapter, say); `chat` should be [on](Chat::on) it.
pub fn build_on(builder: stmp::ServerBuilder, chat: &Chat, read_timeout: Duration) -> stmp::Server {
    let server = builder
        .read_timeout(read_timeout)
        // Browsers offer permessage-deflate by themselves: long messages go compressed.
        .websocket_compression(true)
        .authenticate({
            let chat = chat.clone();
            move |conn: Conn| {
                let chat = chat.clone();
                async move {
                    tracing::info!(
                        conn = conn.id(),
                        remote = %address(&conn),
                        codec = conn.codec().content_type(),
                        "connection"
                    );
                    if let Some(token) = conn.peer_header().get("token") {
                        let user = chat.accounts.check_token(token).inspect_err(|status| {
                            tracing::info!(conn = conn.id(), %status, "token refused");
                        })?;
                        chat.attach(&conn, &user, "token");
                        chat.settled().await;
                    }
                    Ok(())
                }
            }
        })
        .on_close(|conn, status| {
            tracing::info!(conn = conn.id(), user = user_of(conn).unwrap_or_default(), %status, "connection closed");
        })
        .add_service(AccountServiceServer::new(chat.clone()))
        .add_service(ChatServiceServer::new(chat.clone()))
        .build();
    server.router().layer(RequireSignIn);
    server
}

impl RoomServer {
    /// Starts serving `chat` as `options` say.
    pub async fn start(chat: Chat, options: ServerOptions) -> std::io::Result<RoomServer> {
        let mut builder = stmp::Server::builder();
        if let Some(nats) = &options.nats {
            builder = builder.adapter(nats.clone());
        }
        let mut chat = chat.on(&builder);
        chat.nats = options.nats.clone();
        if let Some(backend) = options.history.clone() {
            chat.history = History::builder(chat.rooms.clone())
                .backend(backend)
                .build();
        }
        let server = build_on(builder, &chat, options.read_timeout);
        let tcp = match options.tcp {
            Some(addr) => Some(server.listen_tcp(addr).await?),
            None => None,
        };
        let ws = match options.ws {
            Some(addr) => Some(server.listen_ws(addr, crate::WS_PATH).await?),
            None => None,
        };
        let quic = match options.quic {
            Some(addr) => {
                let pem = options.tls.as_ref().ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "QUIC needs a certificate",
                    )
                })?;
                let tls = stmp::tls::server_config(pem.cert.as_bytes(), pem.key.as_bytes())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                let deadline = tokio::time::Instant::now() + options.bind_retry;
                loop {
                    match server
                        .listen_quic(addr, tls.clone())
                        .await
                        .map_err(std::io::Error::from)
                    {
                        Ok(bound) => break Some(bound),
                        Err(e)
                            if e.kind() == std::io::ErrorKind::AddrInUse
                                && tokio::time::Instant::now() < deadline =>
                        {
                            // The previous server's endpoint lets its socket go once its
                            // connections have drained.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            None => None,
        };
        Ok(RoomServer {
            server,
            chat,
            tcp,
            ws,
            quic,
        })
    }

    /// `tcp://…`, when listening on TCP.
    pub fn tcp_url(&self) -> Option<String> {
        self.tcp.map(|addr| format!("tcp://{addr}"))
    }

    /// `ws://…/room`, when listening on WebSocket; `text` adds `?format=text`.
    pub fn ws_url(&self, text: bool) -> Option<String> {
        let query = if text { "?format=text" } else { "" };
        self.ws
            .map(|addr| format!("ws://{addr}{}{query}", crate::WS_PATH))
    }

    /// `quic://…`, when listening on QUIC.
    pub fn quic_url(&self) -> Option<String> {
        self.quic.map(|addr| format!("quic://{addr}"))
    }

    /// Shuts down gracefully: clients are told `ServerShutdown` (and reconnect).
    pub async fn shutdown(&self) {
        self.server.shutdown(Duration::from_secs(2)).await;
    }
}
