//! # stmp
//!
//! Real-time, bidirectional RPC: the STMP 1.0 protocol of stmp-go, in Rust.
//!
//! This crate is layered:
//! - [`wire`] is the sans-IO core: packets, handshakes and headers to and from bytes, in the binary
//!   (byte stream and message) and text forms, with no I/O and no panics on any input.
//! - [`Status`] and [`Code`] are the errors everything returns.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod status;
pub mod wire;

pub use status::{Code, Status};
