//! Properties of the wire core: round trips in every form, split-independence of the stream
//! decoder, no panics on arbitrary input, and the size limit.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use proptest::sample::Index;
use stmp::wire::{
    Action, ClientHandshake, Close, Header, Limits, Notify, Packet, PacketCodec, Request, Response,
    ServerHandshake, Version,
};
use stmp::{Code, Status};
use tokio_util::codec::Decoder;

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

/// Unicode strings, often made of the bytes the header and text forms escape or split on.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[:;%\\nHPM 3A0B25a-f\u{e9}\u{4e2d}\u{1f600}]{0,12}",
    ]
}

fn header() -> impl Strategy<Value = Header> {
    prop::collection::vec((text(), text()), 0..4).prop_map(|entries| entries.into_iter().collect())
}

fn non_empty_header() -> impl Strategy<Value = Header> {
    prop::collection::vec((text(), text()), 1..4).prop_map(|entries| entries.into_iter().collect())
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        any::<u64>().prop_map(Action::Id),
        (0u64..0x100).prop_map(Action::Id),
        text().prop_map(Action::Method),
    ]
}

fn payload() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        Just(Bytes::new()),
        prop::collection::vec(any::<u8>(), 1..200).prop_map(Bytes::from),
    ]
}

fn code() -> impl Strategy<Value = Code> {
    prop::sample::select(Code::ALL.to_vec())
}

fn packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        Just(Packet::Ping),
        Just(Packet::Pong),
        (any::<u16>(), action(), header(), payload()).prop_map(|(mid, action, header, payload)| {
            Packet::Request(Request {
                mid,
                action,
                header,
                payload,
            })
        }),
        (action(), header(), payload()).prop_map(|(action, header, payload)| {
            Packet::Notify(Notify {
                action,
                header,
                payload,
            })
        }),
        (any::<u16>(), code(), header(), payload()).prop_map(|(mid, status, header, payload)| {
            Packet::Response(Response {
                mid,
                status,
                header,
                payload,
            })
        }),
        (code(), text()).prop_map(|(status, reason)| Packet::close(status, reason)),
    ]
}

/// Which optional parts a generated packet has, so that every combination is drawn.
#[derive(Clone, Copy, Debug)]
struct Shape {
    kind: usize,
    with_header: bool,
    with_method: bool,
    with_payload: bool,
}

fn shaped_packet() -> impl Strategy<Value = (Shape, Packet)> {
    (
        (0usize..6, any::<bool>(), any::<bool>(), any::<bool>()),
        any::<u16>(),
        any::<u64>(),
        text(),
        non_empty_header(),
        prop::collection::vec(any::<u8>(), 1..200),
        code(),
    )
        .prop_map(
            |((kind, with_header, with_method, with_payload), mid, id, name, h, p, status)| {
                let shape = Shape {
                    kind,
                    with_header,
                    with_method,
                    with_payload,
                };
                (shape, build(shape, mid, id, name, h, p.into(), status))
            },
        )
}

fn build(
    shape: Shape,
    mid: u16,
    id: u64,
    name: String,
    header: Header,
    payload: Bytes,
    status: Code,
) -> Packet {
    let header = if shape.with_header {
        header
    } else {
        Header::new()
    };
    let payload = if shape.with_payload {
        payload
    } else {
        Bytes::new()
    };
    let action = if shape.with_method {
        Action::Method(name)
    } else {
        Action::Id(id)
    };
    match shape.kind {
        0 => Packet::Ping,
        1 => Packet::Pong,
        2 => Packet::Request(Request {
            mid,
            action,
            header,
            payload,
        }),
        3 => Packet::Notify(Notify {
            action,
            header,
            payload,
        }),
        4 => Packet::Response(Response {
            mid,
            status,
            header,
            payload,
        }),
        _ => Packet::Close(Close {
            status,
            reason: String::from_utf8_lossy(&payload).into_owned(),
        }),
    }
}

/// Bytes that look like a byte-stream of packets, with a few bytes overwritten.
fn mutated_stream() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(packet(), 1..4),
        prop::collection::vec((any::<Index>(), any::<u8>()), 0..4),
        any::<Index>(),
    )
        .prop_map(|(packets, mutations, cut)| {
            let mut wire = encode_stream(&packets).to_vec();
            for (at, byte) in mutations {
                let at = at.index(wire.len());
                wire[at] = byte;
            }
            // Sometimes cut it short too.
            let keep = cut.index(wire.len() + 1).max(wire.len() / 2);
            wire.truncate(keep);
            wire
        })
}

/// Text-form-looking bytes.
fn text_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        "[IOQNSCMHP0-9A-Fa-f:;%\\n]{0,40}".prop_map(String::into_bytes),
    ]
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn encode_stream(packets: &[Packet]) -> BytesMut {
    let mut out = BytesMut::new();
    for packet in packets {
        packet.encode_stream(&mut out);
    }
    out
}

fn encode_message(packet: &Packet) -> Bytes {
    let mut out = BytesMut::new();
    packet.encode_message(&mut out);
    out.freeze()
}

fn encode_text(packet: &Packet) -> Bytes {
    let mut out = BytesMut::new();
    packet.encode_text(&mut out);
    out.freeze()
}

/// Feeds `wire` to a fresh codec in chunks ending at `cuts` (sorted positions).
fn decode_in_chunks(wire: &[u8], cuts: &[usize]) -> Result<Vec<Packet>, Status> {
    let mut codec = PacketCodec::new();
    let mut buffer = BytesMut::new();
    let mut packets = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&wire.len())) {
        buffer.extend_from_slice(&wire[start..end]);
        start = end;
        while let Some(packet) = codec.decode(&mut buffer)? {
            packets.push(packet);
        }
    }
    if let Some(packet) = codec.decode_eof(&mut buffer)? {
        packets.push(packet);
    }
    Ok(packets)
}

/// Every error of a decoder is one of these, with a message.
fn assert_decode_error(error: &Status, allowed: &[Code]) -> Result<(), TestCaseError> {
    prop_assert!(
        allowed.contains(&error.code()),
        "unexpected error code: {error}"
    );
    prop_assert!(!error.message().is_empty(), "error without a message");
    Ok(())
}

const DECODE_ERRORS: &[Code] = &[Code::ProtocolError, Code::RequestEntityTooLarge];

/// A packet decoded from anything re-encodes, in every form, to bytes that decode to it again.
fn assert_reencodes(packet: &Packet) -> Result<(), TestCaseError> {
    let mut codec = PacketCodec::new();
    let mut wire = encode_stream(std::slice::from_ref(packet));
    prop_assert_eq!(wire.len(), packet.encoded_stream_len());
    let decoded = codec.decode(&mut wire).ok().flatten();
    prop_assert_eq!(decoded.as_ref(), Some(packet));
    prop_assert!(wire.is_empty());
    prop_assert_eq!(
        &Packet::decode_message(encode_message(packet), usize::MAX).unwrap(),
        packet
    );
    prop_assert_eq!(
        &Packet::decode_text(encode_text(packet), usize::MAX).unwrap(),
        packet
    );
    Ok(())
}

fn varint(value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut value = value;
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
    out
}

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

/// Every kind × header × method name × payload, in every form, with fixed values.
#[test]
fn every_shape_round_trips_in_every_form() {
    let mut count = 0;
    for kind in 0..6 {
        for bits in 0..8u8 {
            let shape = Shape {
                kind,
                with_header: bits & 1 != 0,
                with_method: bits & 2 != 0,
                with_payload: bits & 4 != 0,
            };
            let header: Header = [("k:;%\n", "v\n%3A;"), ("k", "")].into_iter().collect();
            let packet = build(
                shape,
                0xfffe,
                u64::MAX,
                "pkg.Service/Method:;%\n".to_owned(),
                header,
                Bytes::from_static(b"\n\0P\nHpayload\xff"),
                Code::ServerShutdown,
            );
            let mut wire = encode_stream(std::slice::from_ref(&packet));
            let decoded = PacketCodec::new().decode(&mut wire).unwrap();
            assert_eq!(decoded.as_ref(), Some(&packet), "{shape:?}");
            assert!(wire.is_empty());
            assert_eq!(
                Packet::decode_message(encode_message(&packet), 1 << 20).unwrap(),
                packet,
                "{shape:?}"
            );
            assert_eq!(
                Packet::decode_text(encode_text(&packet), 1 << 20).unwrap(),
                packet,
                "{shape:?}"
            );
            count += 1;
        }
    }
    assert_eq!(count, 48);
}

proptest! {
    #[test]
    fn packets_round_trip_in_every_form((shape, packet) in shaped_packet()) {
        let stream = encode_stream(std::slice::from_ref(&packet));
        prop_assert_eq!(stream.len(), packet.encoded_stream_len());

        // The head byte's flags match the packet's parts.
        let head = stream[0];
        let kind = packet.kind();
        let has_action = matches!(kind, stmp::wire::Kind::Request | stmp::wire::Kind::Notify);
        let takes_header = has_action || kind == stmp::wire::Kind::Response;
        prop_assert_eq!(head & 0x80, 0x80, "FIN");
        prop_assert_eq!((head >> 4) & 0x07, shape.kind as u8, "kind");
        prop_assert_eq!(head & 0x04 != 0, takes_header && shape.with_header, "WH");
        prop_assert_eq!(head & 0x02 != 0, has_action && shape.with_method, "SA");
        prop_assert_eq!(head & 0x08 != 0, shape.kind >= 2 && shape.with_payload, "WP");
        prop_assert_eq!(head & 0x01, 0, "reserved");

        let mut buffer = stream.clone();
        buffer.extend_from_slice(b"\x80"); // the next packet must stay in the buffer
        let mut codec = PacketCodec::new();
        prop_assert_eq!(codec.decode(&mut buffer).unwrap(), Some(packet.clone()));
        prop_assert_eq!(&buffer[..], b"\x80");

        let message = encode_message(&packet);
        prop_assert_eq!(&Packet::decode_message(message.clone(), 1 << 20).unwrap(), &packet);
        // The message form is the stream form without the payload length.
        prop_assert!(message.len() <= stream.len());

        let text = encode_text(&packet);
        prop_assert_eq!(&Packet::decode_text(text, 1 << 20).unwrap(), &packet);
    }

    #[test]
    fn any_packet_round_trips_in_every_form(packet in packet()) {
        assert_reencodes(&packet)?;
    }

    #[test]
    fn headers_round_trip(header in header()) {
        let wire = header.to_wire();
        prop_assert_eq!(wire.len(), header.encoded_len());
        // Escaping leaves no separator inside a key or value.
        let separators = wire.iter().filter(|b| **b == b';').count();
        prop_assert_eq!(separators, header.len().saturating_sub(1));
        prop_assert!(!wire.contains(&b'\n'));
        prop_assert_eq!(Header::decode(&wire).unwrap(), header);
    }

    #[test]
    fn client_handshakes_round_trip(
        version in any::<u8>(),
        header in header(),
        message in text(),
        at in any::<Index>(),
    ) {
        let handshake = ClientHandshake {
            version: Version::from_byte(version),
            header,
            message,
        };
        prop_assert_eq!(handshake.version.to_byte(), version);
        let mut wire = BytesMut::new();
        handshake.encode(&mut wire);
        wire.extend_from_slice(b"\x80");
        let at = at.index(wire.len() - 1);
        let mut buffer = BytesMut::from(&wire[..at]);
        prop_assert_eq!(ClientHandshake::decode(&mut buffer, 1 << 20).unwrap(), None);
        prop_assert_eq!(buffer.len(), at);
        buffer.extend_from_slice(&wire[at..]);
        prop_assert_eq!(ClientHandshake::decode(&mut buffer, 1 << 20).unwrap(), Some(handshake));
        prop_assert_eq!(&buffer[..], b"\x80");
    }

    #[test]
    fn server_handshakes_round_trip(status in code(), header in header(), message in text()) {
        let handshake = ServerHandshake { status, header, message };
        let mut wire = BytesMut::new();
        handshake.encode(&mut wire);
        prop_assert_eq!(&ServerHandshake::decode_message(&wire, 1 << 20).unwrap(), &handshake);
        let mut buffer = wire.clone();
        buffer.extend_from_slice(b"\x90");
        let decoded = ServerHandshake::decode(&mut buffer, 1 << 20).unwrap();
        prop_assert_eq!(decoded.as_ref(), Some(&handshake));
        prop_assert_eq!(&buffer[..], b"\x90");

        let mut text = BytesMut::new();
        handshake.encode_text(&mut text);
        prop_assert!(text.starts_with(b"STMP"));
        prop_assert_eq!(&ServerHandshake::decode_text(&text, 1 << 20).unwrap(), &handshake);
        prop_assert_eq!(handshake.error().is_none(), status == Code::Ok);
    }

    // -----------------------------------------------------------------------------------------
    // The stream decoder does not care where reads end
    // -----------------------------------------------------------------------------------------

    #[test]
    fn stream_decoding_is_independent_of_chunk_boundaries(
        packets in prop::collection::vec(packet(), 1..6),
        cuts in prop::collection::vec(any::<Index>(), 0..10),
    ) {
        let wire = encode_stream(&packets);
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        cuts.sort_unstable();
        prop_assert_eq!(decode_in_chunks(&wire, &[]).unwrap(), packets.clone());
        prop_assert_eq!(decode_in_chunks(&wire, &cuts).unwrap(), packets.clone());
        let every_byte: Vec<usize> = (1..wire.len()).collect();
        prop_assert_eq!(decode_in_chunks(&wire, &every_byte).unwrap(), packets);
    }

    #[test]
    fn stream_decoding_of_garbage_is_the_same_for_every_split(
        wire in mutated_stream(),
        at in any::<Index>(),
    ) {
        // Whatever the bytes, the packets before the first error are the same for any split,
        // and so is the error.
        fn run(wire: &[u8], cuts: &[usize]) -> (Vec<Packet>, Option<Status>) {
            let mut codec = PacketCodec::new();
            let mut buffer = BytesMut::new();
            let mut packets = Vec::new();
            let mut start = 0;
            for &end in cuts.iter().chain(std::iter::once(&wire.len())) {
                buffer.extend_from_slice(&wire[start..end]);
                start = end;
                loop {
                    match codec.decode(&mut buffer) {
                        Ok(Some(packet)) => packets.push(packet),
                        Ok(None) => break,
                        Err(error) => return (packets, Some(error)),
                    }
                }
            }
            (packets, None)
        }
        let whole = run(&wire, &[]);
        let split = run(&wire, &[at.index(wire.len() + 1)]);
        prop_assert_eq!(whole.0, split.0);
        prop_assert_eq!(whole.1.map(|e| e.code()), split.1.map(|e| e.code()));
    }

    // -----------------------------------------------------------------------------------------
    // No panics, and only the documented errors, on arbitrary input
    // -----------------------------------------------------------------------------------------

    #[test]
    fn packet_codec_never_panics(
        wire in prop_oneof![prop::collection::vec(any::<u8>(), 0..256), mutated_stream()],
        limit in prop_oneof![Just(stmp::wire::DEFAULT_MAX_PACKET_SIZE), 0usize..64],
    ) {
        let mut codec = PacketCodec::with_max_packet_size(limit);
        let mut buffer = BytesMut::from(&wire[..]);
        loop {
            let before = buffer.len();
            match codec.decode(&mut buffer) {
                Ok(Some(packet)) => {
                    prop_assert!(buffer.len() < before, "a packet consumed nothing");
                    assert_reencodes(&packet)?;
                }
                Ok(None) => {
                    prop_assert_eq!(buffer.len(), before);
                    match codec.decode_eof(&mut buffer) {
                        Ok(None) => prop_assert!(buffer.is_empty()),
                        Ok(Some(_)) => prop_assert!(false, "decode_eof found what decode did not"),
                        Err(error) => assert_decode_error(&error, &[Code::NetworkError])?,
                    }
                    break;
                }
                Err(error) => {
                    assert_decode_error(&error, DECODE_ERRORS)?;
                    break;
                }
            }
        }
    }

    #[test]
    fn decode_message_never_panics(
        wire in prop_oneof![prop::collection::vec(any::<u8>(), 0..256), mutated_stream()],
    ) {
        match Packet::decode_message(Bytes::from(wire), 1 << 20) {
            Ok(packet) => assert_reencodes(&packet)?,
            Err(error) => assert_decode_error(&error, DECODE_ERRORS)?,
        }
    }

    #[test]
    fn decode_text_never_panics(wire in text_bytes()) {
        match Packet::decode_text(Bytes::from(wire), 1 << 20) {
            Ok(packet) => assert_reencodes(&packet)?,
            Err(error) => assert_decode_error(&error, DECODE_ERRORS)?,
        }
    }

    #[test]
    fn handshake_decoders_never_panic(
        magic in prop_oneof![Just(&b"STMP"[..]), Just(&b""[..]), Just(&b"ST"[..])],
        rest in prop_oneof![prop::collection::vec(any::<u8>(), 0..128), text_bytes()],
        limit in prop_oneof![Just(1usize << 20), 0usize..32],
    ) {
        let wire = [magic, &rest[..]].concat();

        let mut buffer = BytesMut::from(&wire[..]);
        match ClientHandshake::decode(&mut buffer, limit) {
            Ok(Some(handshake)) => {
                let mut again = BytesMut::new();
                handshake.encode(&mut again);
                prop_assert_eq!(ClientHandshake::decode(&mut again, usize::MAX).unwrap(), Some(handshake));
            }
            Ok(None) => prop_assert_eq!(buffer.len(), wire.len()),
            Err(error) => assert_decode_error(&error, DECODE_ERRORS)?,
        }

        let mut buffer = BytesMut::from(&wire[..]);
        match ServerHandshake::decode(&mut buffer, limit) {
            Ok(Some(handshake)) => {
                let mut again = BytesMut::new();
                handshake.encode(&mut again);
                prop_assert_eq!(ServerHandshake::decode_message(&again, usize::MAX).unwrap(), handshake);
            }
            Ok(None) => prop_assert_eq!(buffer.len(), wire.len()),
            Err(error) => assert_decode_error(&error, DECODE_ERRORS)?,
        }

        match ServerHandshake::decode_message(&wire, limit) {
            Ok(handshake) => {
                let mut again = BytesMut::new();
                handshake.encode(&mut again);
                prop_assert_eq!(ServerHandshake::decode_message(&again, usize::MAX).unwrap(), handshake);
            }
            Err(error) => assert_decode_error(&error, DECODE_ERRORS)?,
        }

        match ServerHandshake::decode_text(&wire, limit) {
            Ok(handshake) => {
                let mut again = BytesMut::new();
                handshake.encode_text(&mut again);
                prop_assert_eq!(ServerHandshake::decode_text(&again, usize::MAX).unwrap(), handshake);
            }
            Err(error) => assert_decode_error(&error, DECODE_ERRORS)?,
        }
    }

    #[test]
    fn header_decode_never_panics(wire in text_bytes()) {
        match Header::decode(&wire) {
            Ok(header) => prop_assert_eq!(Header::decode(&header.to_wire()).unwrap(), header),
            Err(error) => assert_decode_error(&error, &[Code::ProtocolError])?,
        }
    }

    // -----------------------------------------------------------------------------------------
    // The size limit
    // -----------------------------------------------------------------------------------------

    /// An announced length over what is left of the limit is refused from the length alone; one
    /// that exactly fits is merely incomplete.
    #[test]
    fn oversize_is_refused_before_the_bytes_arrive(
        case in 0usize..10,
        limit in prop_oneof![0usize..64, 0usize..(1 << 24)],
        used in any::<Index>(),
        excess in prop_oneof![1u64..4, 1u64..(u64::MAX / 2)],
    ) {
        // `used` bytes of header come first for the payload cases, so the budget is shared.
        // A valid header is at least "k:"; one byte would not be, so 1 becomes 0.
        let used = match used.index(limit.min(64) + 1) {
            1 => 0,
            n => n,
        };
        let header_bytes: Vec<u8> = if used == 0 {
            Vec::new()
        } else {
            let mut h = b"k:".to_vec();
            h.resize(used, b'v');
            h
        };
        let with_header = |head: u8, fixed: &[u8]| {
            let mut prefix = vec![head | if used > 0 { 0x04 } else { 0 }];
            prefix.extend_from_slice(fixed);
            if used > 0 {
                prefix.extend(varint(used as u64));
                prefix.extend_from_slice(&header_bytes);
            }
            prefix
        };
        // (prefix before the announced length, budget already used, whether the message form
        // carries this length too)
        let (prefix, already, in_message) = match case {
            0 => (vec![0xa2, 1, 0], 0, true),                       // Request method name
            1 => (vec![0xb2], 0, true),                             // Notify method name
            2 => (vec![0xa4, 1, 0, 0x05], 0, true),                 // Request header
            3 => (vec![0xb4, 0x05], 0, true),                       // Notify header
            4 => (vec![0xc4, 1, 0, 0x00], 0, true),                 // Response header
            5 => (with_header(0xa8, &[1, 0, 0x05]), used, false),   // Request payload
            6 => (with_header(0xb8, &[0x05]), used, false),         // Notify payload
            7 => (with_header(0xc8, &[1, 0, 0x22]), used, false),   // Response payload
            8 => (vec![0xd8, 0x00], 0, false),                      // Close payload
            _ => (vec![0xae, 1, 0, 0x00, 0x00], 0, false), // SA+WH+WP, empty method and header
        };
        let fits = (limit - already) as u64;
        let over = fits.saturating_add(excess);
        // The packet limit alone: the header limits have a property of their own.
        let limits = Limits::from(limit).with_max_header_size(usize::MAX);

        let mut wire = prefix.clone();
        wire.extend(varint(over));
        let mut codec = PacketCodec::with_limits(limits);
        let error = codec.decode(&mut BytesMut::from(&wire[..])).unwrap_err();
        prop_assert_eq!(error.code(), Code::RequestEntityTooLarge, "{}", error);
        if in_message {
            let error = Packet::decode_message(Bytes::from(wire), limits).unwrap_err();
            prop_assert_eq!(error.code(), Code::RequestEntityTooLarge, "{}", error);
        }

        let mut wire = prefix;
        wire.extend(varint(fits));
        let mut buffer = BytesMut::from(&wire[..]);
        let exact = codec.decode(&mut buffer);
        if fits == 0 {
            // Nothing more to wait for: the packet is complete.
            prop_assert!(matches!(exact, Ok(Some(_))), "{:?}", exact);
        } else {
            prop_assert_eq!(exact, Ok(None));
            prop_assert_eq!(buffer.len(), wire.len());
        }
    }

    #[test]
    fn oversize_message_payload_and_text_are_refused(
        limit in 0usize..256,
        excess in 1usize..64,
        text in any::<bool>(),
    ) {
        let payload = vec![b'x'; limit + excess];
        let packet = Packet::Notify(Notify {
            action: Action::Id(1),
            header: Header::new(),
            payload: payload.into(),
        });
        let error = if text {
            Packet::decode_text(encode_text(&packet), limit).unwrap_err()
        } else {
            Packet::decode_message(encode_message(&packet), limit).unwrap_err()
        };
        prop_assert_eq!(error.code(), Code::RequestEntityTooLarge);
    }

    #[test]
    fn oversize_handshakes_are_refused_before_the_bytes_arrive(
        limit in prop_oneof![0usize..64, 0usize..(1 << 24)],
        header_len in any::<Index>(),
        excess in prop_oneof![1u64..4, 1u64..(u64::MAX / 2)],
        on_header in any::<bool>(),
    ) {
        let mut wire = BytesMut::new();
        wire.put_slice(b"STMP\x10");
        let fits = if on_header {
            limit as u64
        } else {
            // A header of `header_len` bytes (0, or at least "k:") within the limit, then a
            // message length over what is left.
            let header_len = match header_len.index(limit.min(64) + 1) {
                1 => 0,
                n => n,
            };
            let mut h = Vec::new();
            if header_len > 0 {
                h.extend_from_slice(b"k:");
                h.resize(header_len, b'v');
            }
            wire.put_slice(&varint(h.len() as u64));
            wire.put_slice(&h);
            (limit - h.len()) as u64
        };
        wire.put_slice(&varint(fits.saturating_add(excess)));
        let limits = Limits::from(limit).with_max_header_size(usize::MAX);
        let error = ClientHandshake::decode(&mut wire.clone(), limits).unwrap_err();
        prop_assert_eq!(error.code(), Code::RequestEntityTooLarge, "{}", error);
        let error = ServerHandshake::decode(&mut wire.clone(), limits).unwrap_err();
        prop_assert_eq!(error.code(), Code::RequestEntityTooLarge, "{}", error);
        let error = ServerHandshake::decode_message(&wire, limits).unwrap_err();
        prop_assert_eq!(error.code(), Code::RequestEntityTooLarge, "{}", error);
    }

    /// A header is decoded in every packet form and in handshakes exactly when it is within
    /// both header limits; otherwise the answer is `RequestEntityTooLarge`.
    #[test]
    fn header_limits_hold_in_every_form(
        entries in prop::collection::vec(("[a-z]{0,3}", "[a-z:;%]{0,6}"), 0..12),
        max_entries in 0usize..12,
        max_size in 0usize..64,
    ) {
        let header: Header = entries.into_iter().collect();
        let limits = Limits::from(1 << 20)
            .with_max_header_entries(max_entries)
            .with_max_header_size(max_size);
        let wire_len = header.encoded_len();
        let fits = header.len() <= max_entries && wire_len <= max_size;
        let check = |result: Result<Header, Status>| -> Result<(), TestCaseError> {
            match result {
                Ok(decoded) => {
                    prop_assert!(fits, "{} entries, {} bytes accepted", header.len(), wire_len);
                    prop_assert_eq!(&decoded, &header);
                }
                Err(error) => {
                    prop_assert!(!fits, "{}", error);
                    prop_assert_eq!(error.code(), Code::RequestEntityTooLarge, "{}", error);
                }
            }
            Ok(())
        };
        let packet = Packet::Notify(Notify {
            action: Action::Id(1),
            header: header.clone(),
            payload: Bytes::new(),
        });
        let header_of = |packet: Packet| match packet {
            Packet::Notify(notify) => notify.header,
            other => panic!("{other:?}"),
        };
        let mut stream = BytesMut::new();
        packet.encode_stream(&mut stream);
        check(
            PacketCodec::with_limits(limits)
                .decode(&mut stream)
                .map(|packet| header_of(packet.expect("complete"))),
        )?;
        check(Packet::decode_message(encode_message(&packet), limits).map(header_of))?;
        check(Packet::decode_text(encode_text(&packet), limits).map(header_of))?;

        let client = ClientHandshake::new(header.clone());
        let mut wire = BytesMut::new();
        client.encode(&mut wire);
        check(
            ClientHandshake::decode(&mut wire, limits)
                .map(|hello| hello.expect("complete").header),
        )?;
        let server = ServerHandshake::ok(header.clone());
        let mut text = BytesMut::new();
        server.encode_text(&mut text);
        check(ServerHandshake::decode_text(&text, limits).map(|hello| hello.header))?;
    }
}
