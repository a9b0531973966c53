//! The stmp quick start: chat rooms, wire-compatible with stmp-go's quick start.
//!
//! `build.rs` compiles `proto/quick_start.proto` with `stmp-build`; this crate includes the
//! generated code and implements `RoomService` on [`stmp::Rooms`]: rooms keyed by name, each
//! user named by their address as the server sees it. Joining tells the others of the room
//! (`UserJoin`); leaving, or disconnecting, tells them too (`UserExit`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use stmp::{Conn, Context, Status};

stmp::include_proto!("stmp.examples.quick_start");

pub use packages::google::protobuf::Empty;
// The services' items live in per-service modules; the ones the binaries and tests use.
pub use room_events::{RoomEventsListener, RoomEventsListenerHandle, attach_room_events};
pub use room_service::{RoomService, RoomServiceClient, RoomServiceServer};

/// The path the server serves WebSocket on.
pub const WS_PATH: &str = "/quick_start";

/// The longest room name, in bytes.
pub const MAX_ROOM_NAME: usize = 128;

/// The most rooms one connection may be in at once.
pub const MAX_ROOMS_PER_CONN: usize = 64;

/// The rooms: a [`RoomService`] implementation. Cheap to clone; clones share the rooms.
#[derive(Clone, Debug, Default)]
pub struct Rooms {
    rooms: stmp::Rooms,
    /// The connections whose close is hooked. A connection is hooked once, on its first join,
    /// and forgotten when it closes: joining and leaving a thousand times costs nothing.
    hooked: Arc<Mutex<HashSet<u64>>>,
}

/// The name of a connection's user: its address as the server sees it.
pub fn user_name(conn: &Conn) -> String {
    match conn.remote_addr() {
        Some(addr) => addr.to_string(),
        None => format!("conn-{}", conn.id()),
    }
}

impl Rooms {
    /// No rooms yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The users of a room, oldest connection first.
    pub fn users(&self, room: &str) -> Vec<String> {
        let mut members = self.rooms.members(room);
        // Connection ids grow, so this is the order the connections were made in.
        members.sort_by_key(Conn::id);
        members.iter().map(user_name).collect()
    }

    /// The rooms that have users.
    pub fn rooms(&self) -> Vec<String> {
        self.rooms.list()
    }

    /// The connections whose close the rooms watch (to tell the others they left): those that
    /// joined a room and are still open, each once however often it joined.
    pub fn watched_connections(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        self.hooked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hooks `conn`'s close, the first time only. The hook is registered before the
    /// connection's first [`stmp::Rooms::join`], so it runs before the runtime takes the
    /// connection out of its rooms and still sees which rooms to tell.
    fn watch(&self, conn: &Conn) {
        if !self.lock().insert(conn.id()) {
            return;
        }
        let rooms = self.clone();
        let closing = conn.clone();
        conn.on_close(move |_| {
            rooms.lock().remove(&closing.id());
            for room in rooms.rooms.leave_all(&closing) {
                rooms.tell_exit(&room, &closing);
            }
        });
    }

    fn tell_exit(&self, room: &str, conn: &Conn) {
        let user = user_name(conn);
        tracing::info!(room, %user, "user left");
        let event = UserExitEvent { user };
        if let Err(status) = room_events::user_exit(self.rooms.to(room).except(conn), &event) {
            tracing::warn!(%status, "cannot send UserExit");
        }
    }
}

impl RoomService for Rooms {
    async fn join_room(&self, ctx: Context, input: JoinRoomInput) -> Result<RoomModel, Status> {
        let conn = ctx.conn();
        let name = input.name;
        if name.is_empty() || name.len() > MAX_ROOM_NAME {
            return Err(Status::bad_request(format!(
                "a room name has 1 to {MAX_ROOM_NAME} bytes"
            )));
        }
        if !self.rooms.contains(&name, conn)
            && self.rooms.rooms_of(conn).len() >= MAX_ROOMS_PER_CONN
        {
            return Err(Status::too_many_requests(format!(
                "a connection is in at most {MAX_ROOMS_PER_CONN} rooms: exit one first"
            )));
        }
        self.watch(conn);
        if self.rooms.join(&name, conn) {
            let user = user_name(conn);
            tracing::info!(room = %name, %user, "user joined");
            let event = UserJoinEvent { user };
            room_events::user_join(self.rooms.to(&name).except(conn), &event)?;
        }
        Ok(RoomModel {
            users: self.users(&name),
            name,
        })
    }

    async fn exit_room(&self, ctx: Context, input: ExitRoomInput) -> Result<Empty, Status> {
        if self.rooms.leave(&input.name, ctx.conn()) {
            self.tell_exit(&input.name, ctx.conn());
        }
        Ok(Empty {})
    }
}

/// A self-signed certificate for `localhost`, for the QUIC listener (QUIC is always TLS):
/// the certificate's PEM, for clients to trust, and the server's TLS config.
pub fn self_signed_tls() -> Result<(String, std::sync::Arc<rustls::ServerConfig>), Status> {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .map_err(|e| Status::internal(format!("cannot make a certificate: {e}")))?;
    let cert = certified.cert.pem();
    let tls = stmp::tls::server_config(
        cert.as_bytes(),
        certified.signing_key.serialize_pem().as_bytes(),
    )?;
    Ok((cert, tls))
}

/// A server of [`Rooms`], not listening yet.
pub fn server(rooms: Rooms) -> stmp::Server {
    stmp::Server::builder()
        .add_service(RoomServiceServer::new(rooms))
        .build()
}
