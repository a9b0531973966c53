//! The incremental byte-stream decoder and encoder, as a `tokio_util` codec.

use std::sync::Arc;

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use super::Limits;
use super::budget::{BufferBudget, Charge};
use super::cursor::Stop;
use super::packet::{Form, Packet, scan};
use crate::Status;

/// How much room the decoder makes in advance for a packet whose bytes are still coming.
const MAX_RESERVE_AHEAD: usize = 256 << 10;

/// Partial packets up to this size never touch a shared [`BufferBudget`]: the common small
/// packet pays nothing for it.
pub(crate) const PARTIAL_ALLOWANCE: usize = 64 << 10;

/// Frames packets on a byte stream (TCP, TLS, a QUIC stream): the binary form with
/// length-prefixed payloads.
///
/// Decoding is incremental: any split of the input gives the same packets, and a payload is a
/// zero-copy slice of the read buffer. The size limit is checked as soon as a length is
/// read, so an oversized packet is refused before its bytes are awaited or buffered; so are the
/// header limits of [`Limits`].
///
/// ```
/// use bytes::BytesMut;
/// use stmp::wire::{Packet, PacketCodec};
/// use tokio_util::codec::Decoder;
///
/// let mut codec = PacketCodec::new();
/// let mut buffer = BytesMut::from(&b"\x80\x90\xd8\x00\x03b"[..]);
/// assert_eq!(codec.decode(&mut buffer).unwrap(), Some(Packet::Ping));
/// assert_eq!(codec.decode(&mut buffer).unwrap(), Some(Packet::Pong));
/// assert_eq!(codec.decode(&mut buffer).unwrap(), None); // the Close is not complete yet
/// buffer.extend_from_slice(b"ye");
/// assert_eq!(codec.decode(&mut buffer).unwrap(), Some(Packet::close(stmp::Code::Ok, "bye")));
/// ```
#[derive(Debug)]
pub struct PacketCodec {
    limits: Limits,
    /// Shared with the server's other connections, for packets over [`PARTIAL_ALLOWANCE`].
    budget: Option<Arc<BufferBudget>>,
    /// What the packet being received has charged to `budget`.
    charge: Option<Charge>,
}

impl PacketCodec {
    /// A codec with the default limits ([`Limits::DEFAULT`]).
    pub fn new() -> Self {
        Self::with_limits(Limits::DEFAULT)
    }

    /// A codec that refuses packets whose method + header + payload exceed `max_packet_size`,
    /// with the default header limits.
    pub fn with_max_packet_size(max_packet_size: usize) -> Self {
        Self::with_limits(Limits::from(max_packet_size))
    }

    /// A codec with these limits.
    pub fn with_limits(limits: Limits) -> Self {
        PacketCodec {
            limits,
            budget: None,
            charge: None,
        }
    }

    /// Makes packets over [`PARTIAL_ALLOWANCE`] charge `budget` while they are received.
    pub(crate) fn with_budget(mut self, budget: Option<Arc<BufferBudget>>) -> Self {
        self.budget = budget;
        self
    }

    /// The size limit.
    pub fn max_packet_size(&self) -> usize {
        self.limits.max_packet_size
    }

    /// The limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Charges the budget for a partial packet of `needed` bytes before its bytes are awaited.
    fn charge_for(&mut self, needed: usize) -> Result<(), Status> {
        let Some(budget) = &self.budget else {
            return Ok(());
        };
        let charge = self
            .charge
            .get_or_insert_with(|| Charge::new(budget.clone()));
        if charge.raise_to(needed) {
            return Ok(());
        }
        Err(Status::too_many_requests(format!(
            "the server is busy receiving large packets ({} of {} bytes in use); a packet of \
             {needed} bytes does not fit now",
            budget.used(),
            budget.limit()
        )))
    }
}

/// A clone has the same limits and budget, and nothing charged yet.
impl Clone for PacketCodec {
    fn clone(&self) -> Self {
        PacketCodec::with_limits(self.limits).with_budget(self.budget.clone())
    }
}

impl Default for PacketCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder for PacketCodec {
    type Item = Packet;
    type Error = Status;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, Status> {
        if src.is_empty() {
            return Ok(None);
        }
        match scan(src, Form::Stream, &self.limits) {
            Ok(layout) => {
                self.charge = None;
                let bytes = src.split_to(layout.len).freeze();
                layout.assemble(&bytes, &self.limits).map(Some)
            }
            Err(Stop::Incomplete(needed)) => {
                if needed > PARTIAL_ALLOWANCE {
                    self.charge_for(needed)?;
                }
                // `needed` is within the limit, but a peer that announces a large packet and
                // sends it slowly must not make us hold the whole size up front.
                src.reserve(needed.saturating_sub(src.len()).min(MAX_RESERVE_AHEAD));
                Ok(None)
            }
            Err(Stop::Invalid(status)) => Err(status),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, Status> {
        match self.decode(src)? {
            Some(packet) => Ok(Some(packet)),
            None if src.is_empty() => Ok(None),
            None => Err(Status::network_error(format!(
                "connection closed inside a packet ({} bytes unread)",
                src.len()
            ))),
        }
    }
}

impl Encoder<&Packet> for PacketCodec {
    type Error = Status;

    fn encode(&mut self, packet: &Packet, dst: &mut BytesMut) -> Result<(), Status> {
        packet.encode_stream(dst);
        Ok(())
    }
}

impl Encoder<Packet> for PacketCodec {
    type Error = Status;

    fn encode(&mut self, packet: Packet, dst: &mut BytesMut) -> Result<(), Status> {
        packet.encode_stream(dst);
        Ok(())
    }
}
