//! The stmp chat room: a small instant-messaging service people can actually run.
//!
//! - [`accounts`]: sign up and sign in with a name and a password (salted argon2 hashes), in
//!   memory or in a JSON file; session tokens for later connections.
//! - [`server`]: the chat service over TCP, WebSocket (binary and text packets) and QUIC at
//!   once: rooms, direct messages, and `/who`, which calls every member's client
//!   (`PresenceService.Status`, a server → client call).
//! - [`client`]: [`ChatClient`](client::ChatClient), the client side without a terminal:
//!   connect by URL, sign in, join, send, and after a server restart reconnect, sign in again
//!   and re-join by itself.
//! - [`limits`]: sign-in rate limits, per connection and per address.
//! - [`terminal`]: the commands and output of the `room-client` binary.
//! - [`web`]: the browser client's files, for `room-server --web`.
//! - [`http`]: the HTTP API (`room-server --http`): publish, presence, close, drain, metrics.
//!
//! `build.rs` compiles `proto/room.proto` with `stmp-build`; the generated messages and
//! services are at the crate root.

#![warn(missing_docs)]

pub mod accounts;
pub mod client;
pub mod http;
pub mod limits;
pub mod server;
pub mod terminal;
pub mod web;

#[allow(missing_docs)]
mod proto {
    stmp::include_proto!("stmp.examples.room");
}

pub use proto::*;
// The services' items live in per-service modules; the ones this crate uses, by name.
pub use proto::account_service::{AccountService, AccountServiceClient, AccountServiceServer};
pub use proto::chat_events::{ChatEventsListener, attach_chat_events};
pub use proto::chat_service::{ChatService, ChatServiceClient, ChatServiceServer};
pub use proto::presence_service::{PresenceService, PresenceServiceClient, PresenceServiceServer};

/// `google.protobuf.Empty`.
pub use proto::packages::google::protobuf::Empty;

/// The path the server serves WebSocket on.
pub const WS_PATH: &str = "/room";

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Checks a user or room name: 1 to 32 ASCII letters, digits, `-`, `_` or `.`.
pub fn valid_name(what: &str, name: &str) -> Result<(), stmp::Status> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else if name.len() > 32 {
        // Not echoed: a refusal must not cost more than the request.
        Err(stmp::Status::bad_request(format!(
            "bad {what} ({} bytes): use 1 to 32 letters, digits, '-', '_' or '.'",
            name.len()
        )))
    } else {
        Err(stmp::Status::bad_request(format!(
            "bad {what} {name:?}: use 1 to 32 letters, digits, '-', '_' or '.'"
        )))
    }
}
