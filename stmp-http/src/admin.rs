//! Rooms, presence and closing connections.

use axum::Json;
use axum::extract::{Path, State};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use stmp::{Code, Conn, Rooms, Users};

use crate::Shared;
use crate::error::ApiError;

/// One connection, as the API shows it.
#[derive(Serialize)]
pub(crate) struct ConnInfo {
    id: u64,
    transport: &'static str,
    remote: Option<String>,
    codec: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rooms: Option<Vec<String>>,
}

impl ConnInfo {
    fn of(conn: &Conn, state: &Shared) -> ConnInfo {
        ConnInfo {
            id: conn.id(),
            transport: conn.transport(),
            remote: conn.remote_addr().map(|addr| addr.to_string()),
            codec: conn.codec().content_type().to_owned(),
            user: state.users.as_ref().and_then(|users| users.user_of(conn)),
            rooms: state.rooms.as_ref().map(|rooms| rooms.rooms_of(conn)),
        }
    }
}

fn conn_list(conns: &[Conn], state: &Shared) -> Vec<ConnInfo> {
    let mut list: Vec<ConnInfo> = conns.iter().map(|conn| ConnInfo::of(conn, state)).collect();
    list.sort_by_key(|info| info.id);
    list
}

fn rooms(state: &Shared) -> Result<&Rooms, ApiError> {
    state
        .rooms
        .as_ref()
        .ok_or_else(|| ApiError::not_found("this server has no rooms"))
}

fn users(state: &Shared) -> Result<&Users, ApiError> {
    state
        .users
        .as_ref()
        .ok_or_else(|| ApiError::not_found("this server has no users"))
}

/// `{"rooms": [{"name": "lobby", "members": 2}]}`, sorted by name.
pub(crate) async fn list_rooms(
    State(state): State<Shared>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let rooms = rooms(&state)?;
    let list: Vec<serde_json::Value> = rooms
        .list()
        .into_iter()
        .map(|name| {
            let members = rooms.members(&name).len();
            serde_json::json!({ "name": name, "members": members })
        })
        .collect();
    Ok(Json(serde_json::json!({ "rooms": list })))
}

/// `{"name": "lobby", "members": [connection…]}`; 404 when the room has no members.
pub(crate) async fn room(
    State(state): State<Shared>,
    Path(room): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let members = rooms(&state)?.members(&room);
    if members.is_empty() {
        return Err(ApiError::not_found(format!("no room {room:?}")));
    }
    Ok(Json(
        serde_json::json!({ "name": room, "members": conn_list(&members, &state) }),
    ))
}

/// Presence: `{"users": [{"name": "alice", "connections": 2}]}`, sorted by name.
pub(crate) async fn list_users(
    State(state): State<Shared>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let users = users(&state)?;
    let list: Vec<serde_json::Value> = users
        .online()
        .into_iter()
        .map(|name| {
            let connections = users.conns(&name).len();
            serde_json::json!({ "name": name, "connections": connections })
        })
        .collect();
    Ok(Json(serde_json::json!({ "users": list })))
}

/// One user's presence: `{"name": "alice", "online": true, "connections": [connection…]}`.
pub(crate) async fn user(
    State(state): State<Shared>,
    Path(user): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let conns = users(&state)?.conns(&user);
    Ok(Json(serde_json::json!({
        "name": user,
        "online": !conns.is_empty(),
        "connections": conn_list(&conns, &state),
    })))
}

/// The body of a close: a [`Code`] name and a reason, both optional.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CloseBody {
    code: Option<String>,
    reason: Option<String>,
}

impl CloseBody {
    fn status(self) -> Result<(Code, String), ApiError> {
        let code = match self.code {
            None => Code::Unauthorized,
            Some(name) => Code::ALL
                .into_iter()
                .find(|code| code.as_str().eq_ignore_ascii_case(&name))
                .ok_or_else(|| {
                    let names: Vec<&str> = Code::ALL.iter().map(|code| code.as_str()).collect();
                    ApiError::bad_request(format!(
                        "unknown code {name:?}: one of {}",
                        names.join(", ")
                    ))
                })?,
        };
        let reason = self
            .reason
            .unwrap_or_else(|| "closed by an operator".to_owned());
        Ok((code, reason))
    }
}

/// Closes one connection: `{"closed": 1}`; 404 when no connection has the id.
pub(crate) async fn close_connection(
    State(state): State<Shared>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (code, reason) = optional_json::<CloseBody>(&body)?.status()?;
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::bad_request(format!("not a connection id: {id:?}")))?;
    let conn = state
        .server
        .conns()
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("no connection {id}")))?;
    tracing::info!(conn = id, %code, %reason, "closing a connection over HTTP");
    conn.close(code, reason);
    Ok(Json(serde_json::json!({ "closed": 1 })))
}

/// Closes every connection of a user: `{"closed": n}` (0 when the user is offline).
pub(crate) async fn close_user(
    State(state): State<Shared>,
    Path(user): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (code, reason) = optional_json::<CloseBody>(&body)?.status()?;
    let conns = users(&state)?.conns(&user);
    tracing::info!(%user, connections = conns.len(), %code, %reason, "closing a user's connections over HTTP");
    for conn in &conns {
        conn.close(code, reason.clone());
    }
    Ok(Json(serde_json::json!({ "closed": conns.len() })))
}

/// A JSON body, or the defaults when the body is empty.
pub(crate) fn optional_json<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))
}
