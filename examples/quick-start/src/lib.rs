//! The stmp quick start: chat rooms, wire-compatible with stmp-go's quick start.
//!
//! `build.rs` compiles `proto/quick_start.proto` with `stmp-build`; this crate includes the
//! generated code and implements `RoomService`: rooms keyed by name, each user named by their
//! address as the server sees it. Joining tells the others of the room (`UserJoin`); leaving,
//! or disconnecting, tells them too (`UserExit`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use stmp::{Conn, ConnSet, Context, Status};

stmp::include_proto!("stmp.examples.quick_start");

pub use packages::google::protobuf::Empty;

/// The path the server serves WebSocket on.
pub const WS_PATH: &str = "/quick_start";

/// The rooms: a [`RoomService`] implementation. Cheap to clone; clones share the rooms.
#[derive(Clone, Debug, Default)]
pub struct Rooms {
    rooms: Arc<Mutex<HashMap<String, Room>>>,
}

#[derive(Debug, Default)]
struct Room {
    conns: ConnSet,
    /// Users in the order they joined, with their connection's id.
    users: Vec<(u64, String)>,
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

    /// The users of a room, in the order they joined.
    pub fn users(&self, room: &str) -> Vec<String> {
        self.lock()
            .get(room)
            .map(|room| room.users.iter().map(|(_, user)| user.clone()).collect())
            .unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Room>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `conn` out of the room and tells the others; false when it was not in it.
    fn leave(&self, name: &str, conn: &Conn) -> bool {
        let (set, user) = {
            let mut rooms = self.lock();
            let Some(room) = rooms.get_mut(name) else {
                return false;
            };
            if !room.conns.remove(conn) {
                return false;
            }
            let user = match room.users.iter().position(|(id, _)| *id == conn.id()) {
                Some(index) => room.users.remove(index).1,
                None => user_name(conn),
            };
            let set = room.conns.clone();
            if room.conns.is_empty() {
                rooms.remove(name);
            }
            (set, user)
        };
        tracing::info!(room = name, %user, "user left");
        let event = UserExitEvent { user };
        if let Err(status) = RoomEventsBroadcaster::user_exit_to_set(&set, &event, None) {
            tracing::warn!(%status, "cannot send UserExit");
        }
        true
    }
}

impl RoomService for Rooms {
    async fn join_room(&self, ctx: Context, input: JoinRoomInput) -> Result<RoomModel, Status> {
        let conn = ctx.conn().clone();
        let user = user_name(&conn);
        let (model, set, joined) = {
            let mut rooms = self.lock();
            let room = rooms.entry(input.name.clone()).or_default();
            let joined = room.conns.insert(conn.clone());
            if joined {
                room.users.push((conn.id(), user.clone()));
            }
            let model = RoomModel {
                name: input.name.clone(),
                users: room.users.iter().map(|(_, user)| user.clone()).collect(),
            };
            (model, room.conns.clone(), joined)
        };
        if joined {
            tracing::info!(room = %input.name, %user, "user joined");
            // A user who disconnects leaves the room.
            let rooms = self.clone();
            let name = input.name.clone();
            let closing = conn.clone();
            conn.on_close(move |_| {
                rooms.leave(&name, &closing);
            });
            let event = UserJoinEvent { user };
            RoomEventsBroadcaster::user_join_to_set(&set, &event, Some(&conn))?;
        }
        Ok(model)
    }

    async fn exit_room(&self, ctx: Context, input: ExitRoomInput) -> Result<Empty, Status> {
        self.leave(&input.name, ctx.conn());
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
