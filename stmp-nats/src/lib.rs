//! # stmp-nats
//!
//! Scale an stmp server out to many nodes over [NATS](https://nats.io): rooms, users,
//! broadcasts and presence span every node connected to the same NATS.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod nats_server;
pub mod subject;
