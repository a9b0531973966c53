//! `Packet::decode_text` (WebSocket text messages) on arbitrary bytes: no panic, only the
//! documented errors, and a decoded packet re-encodes (text and binary forms) to bytes that
//! decode to it again.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use stmp::wire::Packet;
use stmp_fuzz::{assert_message_round_trip, decode_or_refuse};

fuzz_target!(|data: &[u8]| {
    if let Some(packet) = decode_or_refuse(data, Packet::decode_text) {
        let mut text = BytesMut::new();
        packet.encode_text(&mut text);
        let again = Packet::decode_text(text.freeze(), usize::MAX).expect("re-encoded text");
        assert_eq!(again, packet);
        assert_message_round_trip(&packet);
    }
});
