//! The STMP 1.0 wire format, sans IO.
//!
//! Everything here turns bytes into protocol values and back; transports only move the bytes.
//! The format is the one stmp-go 1.0 speaks, described in `docs/wire-format.md` in the
//! repository:
//!
//! - [`Packet`]: Ping, Pong, Request, Notify, Response and Close, in three forms — binary on a
//!   byte stream ([`PacketCodec`], payload length-prefixed), binary in a message
//!   ([`Packet::decode_message`], payload runs to the end) and text ([`Packet::decode_text`]).
//! - [`ClientHandshake`] and [`ServerHandshake`], which open a connection.
//! - [`Header`], the multi-valued `key:value;key:value` block both carry.
//! - [`negotiate()`] for `Accept`-style lists and [`action_id`] for method names.
//!
//! Every decoder checks the announced sizes against its [`Limits`] (packet size, header size and
//! header entries) before it buffers or allocates anything, reports malformed input as
//! [`Code::ProtocolError`](crate::Code::ProtocolError) and oversized input as
//! [`Code::RequestEntityTooLarge`](crate::Code::RequestEntityTooLarge), and never panics.
//!
//! ```
//! use bytes::{Bytes, BytesMut};
//! use stmp::wire::{Action, Packet, Request};
//!
//! let request = Packet::Request(Request {
//!     mid: 1,
//!     action: Action::Id(0x033648F7),
//!     header: Default::default(),
//!     payload: Bytes::from_static(b"\x0a\x06golden"),
//! });
//! let mut wire = BytesMut::new();
//! request.encode_stream(&mut wire);
//! assert_eq!(&wire[..], b"\xa8\x01\x00\xf7\x91\xd9\x19\x08\x0a\x06golden");
//! ```

mod action;
mod budget;
mod codec;
mod cursor;
mod handshake;
mod header;
mod limits;
mod negotiate;
mod packet;
mod text;
pub(crate) mod varint;

pub use action::{action_id, murmur3_x86_32, option_action_id};
pub(crate) use budget::BufferBudget;
#[cfg(feature = "ws")]
pub(crate) use budget::{Charge, hold};
pub use codec::PacketCodec;
#[cfg(feature = "ws")]
pub(crate) use codec::{MAX_RESERVE_AHEAD, PARTIAL_ALLOWANCE};
pub use handshake::{ClientHandshake, ServerHandshake, Version};
pub use header::Header;
pub use limits::{DEFAULT_MAX_HEADER_ENTRIES, DEFAULT_MAX_HEADER_SIZE, Limits};
pub use negotiate::negotiate;
pub use packet::{Action, Close, Kind, Notify, Packet, Request, Response};

/// The default limit on method + header + payload of one packet: 16 MiB, as in stmp-go.
pub const DEFAULT_MAX_PACKET_SIZE: usize = 16 << 20;

/// The magic bytes that open every handshake.
pub const MAGIC: &[u8; 4] = b"STMP";
