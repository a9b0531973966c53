//! `Packet::decode_message` (WebSocket binary messages) on arbitrary bytes: no panic, only the
//! documented errors, and a decoded packet re-encodes (message and stream form) to bytes that
//! decode to it again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stmp::wire::Packet;
use stmp_fuzz::{assert_message_round_trip, assert_stream_round_trip, decode_or_refuse};

fuzz_target!(|data: &[u8]| {
    if let Some(packet) = decode_or_refuse(data, Packet::decode_message) {
        assert_message_round_trip(&packet);
        assert_stream_round_trip(&packet);
    }
});
