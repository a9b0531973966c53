//! Checks the fuzz targets share.

use bytes::{Bytes, BytesMut};
use stmp::wire::{Packet, PacketCodec};
use stmp::{Code, Status};
use tokio_util::codec::Decoder;

/// A decoder may only fail with the errors its docs name.
pub fn check_error(error: &Status) {
    assert!(
        matches!(
            error.code(),
            Code::ProtocolError | Code::RequestEntityTooLarge
        ),
        "unexpected error {error}"
    );
}

/// Decodes a whole message with `decode`; `None` (after [`check_error`]) when it is refused.
pub fn decode_or_refuse(
    data: &[u8],
    decode: impl FnOnce(Bytes, usize) -> Result<Packet, Status>,
) -> Option<Packet> {
    decode(Bytes::copy_from_slice(data), 1 << 20)
        .inspect_err(check_error)
        .ok()
}

/// The packet in the message form decodes back to itself.
pub fn assert_message_round_trip(packet: &Packet) {
    let mut message = BytesMut::new();
    packet.encode_message(&mut message);
    let again = Packet::decode_message(message.freeze(), usize::MAX).expect("as a message");
    assert_eq!(&again, packet);
}

/// The packet in the stream form decodes back to itself, using every byte it wrote.
pub fn assert_stream_round_trip(packet: &Packet) {
    let mut encoded = BytesMut::new();
    packet.encode_stream(&mut encoded);
    assert_eq!(encoded.len(), packet.encoded_stream_len());
    let again = PacketCodec::with_max_packet_size(usize::MAX)
        .decode(&mut encoded)
        .expect("a re-encoded packet decodes");
    assert_eq!(again.as_ref(), Some(packet));
    assert!(encoded.is_empty());
}
