//! # stmp
//!
//! Real-time, bidirectional RPC: the STMP 1.0 protocol of stmp-go, in Rust.
//!
//! - [`wire`] is the sans-IO core: packets, handshakes and headers to and from bytes.
//! - [`Conn`] is one live connection; one engine runs every transport on both sides.
//! - [`Router`] holds handlers, event listeners and [`Middleware`].
//! - [`Server`] listens on TCP, TLS, WebSocket (and WebSocket over TLS) at once; [`Client`]
//!   connects by URL and reconnects by itself.
//! - [`codec`] turns messages into payloads: protobuf, JSON, msgpack, or your own.
//! - [`Status`] and [`Code`] are the errors everything returns.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod broadcast;
mod client;
pub mod codec;
mod conn;
mod context;
mod method;
mod router;
mod server;
mod status;
pub mod tls;
pub mod wire;

pub use broadcast::{ConnSet, Delivery, broadcast};
pub use client::{Client, ClientBuilder, ConnectionEvent};
pub use codec::{Codec, Message};
pub use conn::{CallOptions, Caller, Conn, PacketFormat, Side};
pub use context::Context;
pub use method::Method;
pub use router::{Flow, ListenerHandle, Middleware, Router, Service};
pub use server::{Server, ServerBuilder};
pub use status::{Code, Status};
