//! `Packet::decode_text` (WebSocket text messages) on arbitrary bytes: no panic, only the
//! documented errors, and a decoded packet re-encodes (text and binary forms) to bytes that
//! decode to it again.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use stmp::Code;
use stmp::wire::Packet;

fuzz_target!(|data: &[u8]| {
    let packet = match Packet::decode_text(Bytes::copy_from_slice(data), 1 << 20) {
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

    let mut text = BytesMut::new();
    packet.encode_text(&mut text);
    let again = Packet::decode_text(text.freeze(), usize::MAX).expect("re-encoded text");
    assert_eq!(again, packet);

    let mut message = BytesMut::new();
    packet.encode_message(&mut message);
    let again = Packet::decode_message(message.freeze(), usize::MAX).expect("as a message");
    assert_eq!(again, packet);
});
