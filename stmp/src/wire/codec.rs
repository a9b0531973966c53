//! The incremental byte-stream decoder and encoder, as a `tokio_util` codec.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use super::DEFAULT_MAX_PACKET_SIZE;
use super::cursor::Stop;
use super::packet::{Form, Packet, scan};
use crate::Status;

/// How much room the decoder makes in advance for a packet whose bytes are still coming.
const MAX_RESERVE_AHEAD: usize = 256 << 10;

/// Frames packets on a byte stream (TCP, TLS, a QUIC stream): the binary form with
/// length-prefixed payloads.
///
/// Decoding is incremental: any split of the input gives the same packets, and a payload is a
/// zero-copy slice of the read buffer. The size limit is checked as soon as a length is
/// read, so an oversized packet is refused before its bytes are awaited or buffered.
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
#[derive(Clone, Copy, Debug)]
pub struct PacketCodec {
    max_packet_size: usize,
}

impl PacketCodec {
    /// A codec with the default size limit ([`DEFAULT_MAX_PACKET_SIZE`]).
    pub fn new() -> Self {
        Self::with_max_packet_size(DEFAULT_MAX_PACKET_SIZE)
    }

    /// A codec that refuses packets whose method + header + payload exceed `max_packet_size`.
    pub fn with_max_packet_size(max_packet_size: usize) -> Self {
        PacketCodec { max_packet_size }
    }

    /// The size limit.
    pub fn max_packet_size(&self) -> usize {
        self.max_packet_size
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
        match scan(src, Form::Stream, self.max_packet_size) {
            Ok(layout) => {
                let bytes = src.split_to(layout.len).freeze();
                layout.assemble(&bytes).map(Some)
            }
            Err(Stop::Incomplete(needed)) => {
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
