//! The incremental byte-stream decoder and encoder, as a `tokio_util` codec.

use std::sync::Arc;

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use super::Limits;
use super::budget::{BufferBudget, Charge, hold};
use super::cursor::Stop;
use super::packet::{Form, Packet, scan};
use crate::Status;

/// How much room the decoder makes in advance for a packet whose bytes are still coming.
pub(crate) const MAX_RESERVE_AHEAD: usize = 256 << 10;

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
                    hold(&mut self.charge, self.budget.as_ref(), needed)?;
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::Code;
    use crate::wire::{Action, Header, Notify};

    /// The stream form of a Notify with a `len`-byte payload.
    fn notify(len: usize) -> BytesMut {
        let mut wire = BytesMut::new();
        Packet::Notify(Notify {
            action: Action::Id(7),
            header: Header::new(),
            payload: Bytes::from(vec![b'x'; len]),
        })
        .encode_stream(&mut wire);
        wire
    }

    fn budgeted(budget: &Arc<BufferBudget>) -> PacketCodec {
        PacketCodec::new().with_budget(Some(budget.clone()))
    }

    #[test]
    fn a_large_partial_packet_charges_the_budget_until_it_completes() {
        let budget = BufferBudget::new(1 << 20);
        let mut codec = budgeted(&budget);
        let mut wire = notify(300 << 10);
        let mut buffer = BytesMut::from(&wire[..16]);
        assert_eq!(codec.decode(&mut buffer).unwrap(), None);
        assert_eq!(budget.used(), wire.len());

        buffer.extend_from_slice(&wire.split_off(16)[..]);
        assert!(matches!(
            codec.decode(&mut buffer),
            Ok(Some(Packet::Notify(_)))
        ));
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_packet_that_does_not_fit_is_refused_before_its_bytes_arrive() {
        let budget = BufferBudget::new(500 << 10);
        let mut first = budgeted(&budget);
        let mut second = budgeted(&budget);
        let wire = notify(300 << 10);
        assert_eq!(first.decode(&mut BytesMut::from(&wire[..16])), Ok(None));

        let error = second.decode(&mut BytesMut::from(&wire[..16])).unwrap_err();
        assert_eq!(error.code(), Code::TooManyRequests);
        assert!(error.message().contains("busy"), "{error}");
        assert_eq!(
            budget.used(),
            wire.len(),
            "the refused packet charged nothing"
        );

        drop(first);
        assert_eq!(
            budget.used(),
            0,
            "a connection that ends gives its charge back"
        );
        assert_eq!(second.decode(&mut BytesMut::from(&wire[..16])), Ok(None));
    }

    #[test]
    fn small_packets_never_touch_the_budget() {
        let budget = BufferBudget::new(0);
        let mut codec = budgeted(&budget);
        let wire = notify(PARTIAL_ALLOWANCE - 16);
        let mut buffer = BytesMut::from(&wire[..16]);
        assert_eq!(codec.decode(&mut buffer), Ok(None));
        buffer.extend_from_slice(&wire[16..]);
        assert!(matches!(codec.decode(&mut buffer), Ok(Some(_))));
        assert!(codec.charge.is_none());
    }

    #[test]
    fn an_oversized_header_is_refused_from_its_announced_length() {
        let mut codec = PacketCodec::with_limits(Limits::DEFAULT.with_max_header_size(100));
        // Notify, action 7, a header announced at 101 bytes and none of them sent yet.
        let mut buffer = BytesMut::from(&b"\xb4\x07\x65"[..]);
        let error = codec.decode(&mut buffer).unwrap_err();
        assert_eq!(error.code(), Code::RequestEntityTooLarge);
        assert!(error.message().contains("header of 101 bytes"), "{error}");
    }

    #[test]
    fn too_many_header_entries_are_refused() {
        let limits = Limits::DEFAULT.with_max_header_entries(3);
        let header: Header = (0..4).map(|i| (format!("k{i}"), "")).collect();
        let mut wire = BytesMut::new();
        Packet::Notify(Notify {
            action: Action::Id(7),
            header,
            payload: Bytes::new(),
        })
        .encode_stream(&mut wire);
        let error = PacketCodec::with_limits(limits)
            .decode(&mut wire.clone())
            .unwrap_err();
        assert_eq!(error.code(), Code::RequestEntityTooLarge);
        assert!(error.message().contains("4 entries"), "{error}");
        assert!(PacketCodec::new().decode(&mut wire).unwrap().is_some());
    }
}
