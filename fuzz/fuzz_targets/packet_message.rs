//! `Packet::decode_message` (WebSocket binary messages) on arbitrary bytes: no panic, only the
//! documented errors, and a decoded packet re-encodes (message and stream form) to bytes that
//! decode to it again.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use stmp::Code;
use stmp::wire::{Packet, PacketCodec};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let packet = match Packet::decode_message(Bytes::copy_from_slice(data), 1 << 20) {
        Ok(packet) => packet,
        Err(error) => {
            assert!(
                matches!(
                    error.code(),
                    Code::ProtocolError | Code::RequestEntityTooLarge
                ),
                "unexpected error {error}"
            );
            return;
        }
    };

    let mut message = BytesMut::new();
    packet.encode_message(&mut message);
    let again = Packet::decode_message(message.freeze(), usize::MAX).expect("re-encoded message");
    assert_eq!(again, packet);

    let mut stream = BytesMut::new();
    packet.encode_stream(&mut stream);
    let again = PacketCodec::with_max_packet_size(usize::MAX)
        .decode(&mut stream)
        .expect("re-encoded stream packet");
    assert_eq!(again.as_ref(), Some(&packet));
});
