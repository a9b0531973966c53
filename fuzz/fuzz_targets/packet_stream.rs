//! The byte-stream decoder (`PacketCodec`) on arbitrary bytes, delivered in two reads split at a
//! position taken from the input. It must not panic, must decode the same packets (and stop on
//! the same error) as when the bytes come in one read, and every packet it decodes must
//! re-encode to bytes that decode to it again.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use stmp::wire::{Packet, PacketCodec};
use stmp::{Code, Status};
use stmp_fuzz::{assert_stream_round_trip, check_error};
use tokio_util::codec::Decoder;

/// Decodes `chunks` in order; the packets, then the error if one stopped the decoding.
fn decode(chunks: &[&[u8]], max_size: usize) -> (Vec<Packet>, Option<Status>) {
    let mut codec = PacketCodec::with_max_packet_size(max_size);
    let mut buffer = BytesMut::new();
    let mut packets = Vec::new();
    for chunk in chunks {
        buffer.extend_from_slice(chunk);
        loop {
            let before = buffer.len();
            match codec.decode(&mut buffer) {
                Ok(Some(packet)) => {
                    assert!(buffer.len() < before, "a packet consumed no bytes");
                    packets.push(packet);
                }
                Ok(None) => {
                    assert_eq!(buffer.len(), before, "an incomplete packet consumed bytes");
                    break;
                }
                Err(error) => {
                    check_error(&error);
                    return (packets, Some(error));
                }
            }
        }
    }
    match codec.decode_eof(&mut buffer) {
        Ok(None) => assert!(buffer.is_empty()),
        Ok(Some(_)) => panic!("decode_eof found a packet that decode did not"),
        Err(error) => assert!(
            matches!(
                error.code(),
                Code::NetworkError | Code::ProtocolError | Code::RequestEntityTooLarge
            ),
            "unexpected error {error}"
        ),
    }
    (packets, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, wire)) = data.split_first() else {
        return;
    };
    // The low bit picks a small or the default size limit; the byte picks the split.
    let max_size = if control & 1 == 0 {
        stmp::wire::DEFAULT_MAX_PACKET_SIZE
    } else {
        64
    };
    let at = (control as usize).min(wire.len());
    let (first, second) = wire.split_at(at);

    let (whole, whole_error) = decode(&[wire], max_size);
    let (split, split_error) = decode(&[first, second], max_size);
    assert_eq!(whole, split, "the split at {at} changed the packets");
    assert_eq!(
        whole_error.map(|e| e.code()),
        split_error.map(|e| e.code()),
        "the split at {at} changed the error"
    );

    whole.iter().for_each(assert_stream_round_trip);
});
