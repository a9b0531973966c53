//! # stmp
//!
//! Real-time, bidirectional RPC: the STMP 1.0 protocol of stmp-go, in Rust. The wire format is
//! described in `docs/wire-format.md` in the repository.
//!
//! - [`wire`] is the sans-IO core: packets, handshakes and headers to and from bytes.
//! - [`Conn`] is one live connection; one engine runs every transport on both sides.
//! - [`Router`] holds handlers, event listeners and [`Middleware`].
//! - [`Server`] listens on TCP, TLS, WebSocket, WebSocket over TLS and QUIC at once;
//!   [`Client`] connects by URL (`tcp://`, `tls://`, `ws://`, `wss://`, `quic://`) and
//!   reconnects by itself.
//! - [`Rooms`] and [`Users`] group connections; [`broadcast()`] sends one event to many,
//!   serialised once per content type; [`adapter`] is the seam that spreads rooms, users and
//!   broadcasts over several server nodes.
//! - [`history`] keeps recent room events so reconnecting clients get what they missed.
//! - [`codec`] turns messages into payloads: protobuf, JSON, msgpack, or your own.
//! - [`Status`] and [`Code`] are the errors everything returns.
//! - [`telemetry`] names the metrics the runtime records.
//!
//! ## Cargo features
//!
//! The optional stacks are features, all on by default; plain TCP and protobuf are always
//! there. A build without one leaves out its code and dependencies: its `listen_*` method
//! is gone, and a client given its URL scheme fails with `BadRequest` naming the feature.
//!
//! | feature | adds | dependencies |
//! |---|---|---|
//! | `tls` | `Server::listen_tls`, `tls://`, [`ClientBuilder::tls`], the `tls` config helpers | rustls (ring), tokio-rustls |
//! | `ws` | `Server::listen_ws`, `ws://`; with `tls`, `listen_wss` and `wss://` | tokio-tungstenite (the HTTP upgrade), rand (client masks) |
//! | `quic` (implies `tls`) | `Server::listen_quic`, `quic://`, the `quic` module | quinn |
//! | `gzip` | gzip stream compression on byte streams ([`ServerBuilder::gzip`]), permessage-deflate on WebSocket ([`ServerBuilder::websocket_compression`]) | flate2 (zlib-rs) |
//! | `msgpack` | `Codec::MSGPACK`, `Codec::MSGPACK_GO` | rmp-serde |
//! | `json` | `Codec::JSON`, the default codec of text packets | serde_json |
//!
//! ```toml
//! # TCP, TLS and protobuf only:
//! stmp = { version = "0.1", default-features = false, features = ["tls"] }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod adapter;
mod broadcast;
mod client;
pub mod codec;
mod conn;
mod context;
#[cfg(feature = "gzip")]
mod deflater;
pub mod history;
mod id_map;
mod method;
mod rooms;
mod router;
#[doc(hidden)]
pub mod serde_support;
mod server;
mod stats;
mod status;
mod sync;
pub mod telemetry;
mod transport;
pub mod wire;

pub use broadcast::{Audience, ConnSet, Delivery, SlowConsumer, broadcast, broadcast_with};
pub use client::{Client, ClientBuilder, ConnectionEvent};
pub use codec::{Codec, Message};
pub use conn::{CallOptions, Caller, Conn, PacketFormat, Side};
pub use context::Context;
pub use method::Method;
pub use rooms::{Rooms, Users};
pub use router::{Flow, ListenerHandle, Middleware, Router, Service};
pub use server::{Server, ServerBuilder, raise_fd_limit};
pub use stats::ServerStats;
pub use status::{Code, Status};
#[cfg(feature = "quic")]
pub use transport::quic;
#[cfg(feature = "tls")]
pub use transport::tls;

/// Includes the code `stmp-build` generated for a proto package: its messages, and for each
/// service a module named after it holding its method table, service trait, server, client
/// stub, events listener and one broadcast function per event.
///
/// The package's items land in the current module; the packages it imports (well-known types
/// such as `google.protobuf.Empty` included) are reachable under `packages::…` by their
/// package path.
///
/// ```ignore
/// stmp::include_proto!("stmp.examples.quick_start");
/// // RoomModel, room_service::{JOIN_ROOM, RoomServiceServer}, room_events::user_join, …
/// // packages::google::protobuf::Empty
/// ```
#[macro_export]
macro_rules! include_proto {
    ($package:literal) => {
        ::core::include!(::core::concat!(
            ::core::env!("OUT_DIR"),
            "/",
            $package,
            ".include.rs"
        ));
    };
}
