//! The handshake decoders and the header parser on arbitrary bytes: no panic, only the
//! documented errors, and whatever decodes re-encodes to bytes that decode to it again. The
//! binary stream decoders also get the bytes in two reads (split at a position taken from the
//! input) and must give the same answer.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use stmp::wire::{ClientHandshake, Header, ServerHandshake};
use stmp::Status;
use stmp_fuzz::check_error;

const LIMIT: usize = 1 << 16;

/// Runs a stream decoder on `wire` in one read and in two; both must agree.
fn decode_stream<T: PartialEq + std::fmt::Debug>(
    wire: &[u8],
    at: usize,
    decode: impl Fn(&mut BytesMut) -> Result<Option<T>, Status>,
) -> Option<T> {
    let mut whole = BytesMut::from(wire);
    let whole_result = decode(&mut whole);

    let mut split = BytesMut::from(&wire[..at]);
    let split_result = match decode(&mut split) {
        Ok(None) => {
            assert_eq!(split.len(), at, "an incomplete handshake consumed bytes");
            split.extend_from_slice(&wire[at..]);
            decode(&mut split)
        }
        Ok(Some(handshake)) => {
            // Complete before the second read: that read only adds what follows it.
            split.extend_from_slice(&wire[at..]);
            Ok(Some(handshake))
        }
        Err(error) => Err(error),
    };
    match (whole_result, split_result) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "the split at {at} changed the handshake");
            assert_eq!(
                &whole[..],
                &split[..],
                "the split at {at} changed what is left"
            );
            a
        }
        (Err(a), Err(b)) => {
            check_error(&a);
            assert_eq!(a.code(), b.code(), "the split at {at} changed the error");
            None
        }
        (a, b) => panic!("split at {at}: {a:?} in one read, {b:?} in two"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, wire)) = data.split_first() else {
        return;
    };
    let at = (control as usize).min(wire.len());

    if let Some(client) = decode_stream(wire, at, |b| ClientHandshake::decode(b, LIMIT)) {
        let mut again = BytesMut::new();
        client.encode(&mut again);
        let decoded = ClientHandshake::decode(&mut again, usize::MAX).expect("re-encoded");
        assert_eq!(decoded, Some(client));
    }

    if let Some(server) = decode_stream(wire, at, |b| ServerHandshake::decode(b, LIMIT)) {
        let mut again = BytesMut::new();
        server.encode(&mut again);
        let decoded = ServerHandshake::decode_message(&again, usize::MAX).expect("re-encoded");
        assert_eq!(decoded, server);
    }

    match ServerHandshake::decode_message(wire, LIMIT) {
        Ok(server) => {
            let mut again = BytesMut::new();
            server.encode(&mut again);
            let decoded = ServerHandshake::decode_message(&again, usize::MAX).expect("re-encoded");
            assert_eq!(decoded, server);
        }
        Err(error) => check_error(&error),
    }

    match ServerHandshake::decode_text(wire, LIMIT) {
        Ok(server) => {
            let mut again = BytesMut::new();
            server.encode_text(&mut again);
            let decoded = ServerHandshake::decode_text(&again, usize::MAX).expect("re-encoded");
            assert_eq!(decoded, server);
        }
        Err(error) => check_error(&error),
    }

    match Header::decode(wire) {
        Ok(header) => {
            assert_eq!(header.to_wire().len(), header.encoded_len());
            assert_eq!(
                Header::decode(&header.to_wire()).expect("re-encoded"),
                header
            );
        }
        Err(error) => check_error(&error),
    }
});
