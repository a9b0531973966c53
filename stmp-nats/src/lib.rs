//! # stmp-nats
//!
//! Scale an stmp server out to many nodes over [NATS](https://nats.io): rooms, users,
//! broadcasts and presence span every node connected to the same NATS (one server or a NATS
//! cluster). Install a [`NatsAdapter`] on each node's server; the application's code does
//! not change.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let nats = stmp_nats::NatsAdapter::connect("nats://127.0.0.1:4222").await?;
//! let builder = stmp::Server::builder().adapter(nats.clone());
//! let rooms = builder.rooms(); // a room's broadcasts now reach its members on every node
//! let server = builder.build();
//! # let _ = (rooms, server);
//! # Ok(())
//! # }
//! ```
//!
//! - [`history`]: room history in NATS JetStream ([`JetStreamHistory`]), so a client that
//!   comes back on another node recovers what it missed.
//! - [`subject`]: the subjects on NATS, with room and user names escaped into safe tokens.
//! - [`control`]: the heartbeats and presence-answer framing nodes exchange.
//! - [`telemetry`]: the metrics the adapter records.
//! - [`nats_server`]: a `nats-server` child process for tests and benchmarks.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod adapter;
pub mod control;
pub mod history;
mod interest;
pub mod nats_server;
mod peers;
pub mod subject;
pub mod telemetry;

pub use adapter::{Error, NatsAdapter, NatsAdapterBuilder};
pub use history::{HistoryError, JetStreamHistory, JetStreamHistoryBuilder};
