//! The byte vectors captured from a running stmp-go 1.0 server and client, reproduced exactly
//! when encoding and parsed field by field when decoding (the format: `docs/wire-format.md`).
//!
//! Hex strings are the captured bytes verbatim (space separated, wire order).

use bytes::{Bytes, BytesMut};
use stmp::wire::{
    Action, ClientHandshake, Header, Notify, Packet, PacketCodec, Request, Response,
    ServerHandshake, Version, action_id, negotiate,
};
use stmp::{Code, Status};
use tokio_util::codec::Decoder;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Parses space-separated hex bytes as the vectors document writes them: `"a8 01 00"`.
fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|byte| {
            assert_eq!(byte.len(), 2, "not a hex byte: {byte:?}");
            u8::from_str_radix(byte, 16).unwrap_or_else(|_| panic!("not a hex byte: {byte:?}"))
        })
        .collect()
}

#[test]
fn hex_helper_parses_the_documents_format() {
    assert_eq!(hex("53 54 4d 50 10"), b"STMP\x10");
    assert_eq!(hex(" ff\n00  0a "), [0xff, 0x00, 0x0a]);
    assert!(hex("").is_empty());
}

const JOIN_ROOM: &str = "stmp.examples.quick_start.RoomService.JoinRoom";
const EXIT_ROOM: &str = "stmp.examples.quick_start.RoomService.ExitRoom";
const USER_JOIN: &str = "stmp.examples.quick_start.RoomEvents.UserJoin";
const USER_EXIT: &str = "stmp.examples.quick_start.RoomEvents.UserExit";

fn header(entries: &[(&str, &str)]) -> Header {
    entries.iter().copied().collect()
}

/// The entries of a header, sorted: Go writes multi-key headers from a map, in random order.
fn entry_set(header: &Header) -> Vec<(String, String)> {
    let mut entries: Vec<_> = header
        .iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    entries.sort();
    entries
}

fn request(mid: u16, action: Action, header: Header, payload: &[u8]) -> Packet {
    Packet::Request(Request {
        mid,
        action,
        header,
        payload: Bytes::copy_from_slice(payload),
    })
}

fn notify(action: Action, payload: &[u8]) -> Packet {
    Packet::Notify(Notify {
        action,
        header: Header::new(),
        payload: Bytes::copy_from_slice(payload),
    })
}

fn response(mid: u16, status: Code, payload: &[u8]) -> Packet {
    Packet::Response(Response {
        mid,
        status,
        header: Header::new(),
        payload: Bytes::copy_from_slice(payload),
    })
}

fn encode_stream(packets: &[Packet]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for packet in packets {
        let before = out.len();
        packet.encode_stream(&mut out);
        assert_eq!(
            out.len() - before,
            packet.encoded_stream_len(),
            "encoded_stream_len of {packet:?}"
        );
    }
    out.to_vec()
}

/// Feeds `chunks` one after the other to a fresh codec, decoding all it can after each one; the
/// stream must end on a packet boundary.
fn decode_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<Packet> {
    let mut codec = PacketCodec::new();
    let mut buffer = BytesMut::new();
    let mut packets = Vec::new();
    for chunk in chunks {
        buffer.extend_from_slice(chunk);
        while let Some(packet) = codec.decode(&mut buffer).expect("valid stream") {
            packets.push(packet);
        }
    }
    assert_eq!(codec.decode_eof(&mut buffer).expect("clean end"), None);
    assert!(buffer.is_empty(), "{} bytes left over", buffer.len());
    packets
}

/// A byte-stream vector: our encoder writes exactly these bytes, and the codec decodes them into
/// exactly these packets, in one piece and split at every position.
fn stream_vector(wire_hex: &str, packets: &[Packet]) {
    let wire = hex(wire_hex);
    assert_eq!(encode_stream(packets), wire, "encoding of {packets:?}");
    assert_eq!(decode_chunks([&wire[..]]), packets);
    for at in 1..wire.len() {
        let (a, b) = wire.split_at(at);
        assert_eq!(decode_chunks([a, b]), packets, "split at {at}");
    }
    assert_eq!(decode_chunks(wire.chunks(1)), packets, "byte by byte");
}

/// A WebSocket binary-message vector: one packet whose payload runs to the end of the message.
fn message_vector(wire_hex: &str, packet: &Packet) {
    let wire = hex(wire_hex);
    let mut out = BytesMut::new();
    packet.encode_message(&mut out);
    assert_eq!(&out[..], &wire[..], "encoding of {packet:?}");
    let decoded = Packet::decode_message(Bytes::from(wire), 1 << 20).expect("valid message");
    assert_eq!(&decoded, packet);
}

/// A WebSocket text-message vector.
fn text_vector(wire: &[u8], packet: &Packet) {
    let mut out = BytesMut::new();
    packet.encode_text(&mut out);
    assert_eq!(&out[..], wire, "encoding of {packet:?}");
    let decoded = Packet::decode_text(Bytes::copy_from_slice(wire), 1 << 20).expect("valid text");
    assert_eq!(&decoded, packet);
}

/// Encodes a client handshake, compares it with the vector, and decodes the vector (in one piece
/// and split at every position) back into it.
fn client_handshake_vector(wire_hex: &str, expected: &ClientHandshake) {
    let wire = hex(wire_hex);
    let mut out = BytesMut::new();
    expected.encode(&mut out);
    assert_eq!(&out[..], &wire[..], "encoding of {expected:?}");
    assert_eq!(&decode_client_handshake(&wire, wire.len()), expected);
    for at in 0..wire.len() {
        assert_eq!(
            &decode_client_handshake(&wire, at),
            expected,
            "split at {at}"
        );
    }
}

/// Decodes a client handshake delivered as `wire[..at]` then `wire[at..]`, followed by a Ping
/// that must stay in the buffer.
fn decode_client_handshake(wire: &[u8], at: usize) -> ClientHandshake {
    let mut buffer = BytesMut::from(&wire[..at]);
    let first = ClientHandshake::decode(&mut buffer, 1 << 20).expect("valid handshake");
    let decoded = match first {
        Some(handshake) => {
            assert_eq!(at, wire.len(), "complete before all bytes arrived");
            handshake
        }
        None => {
            assert_eq!(
                &buffer[..],
                &wire[..at],
                "an incomplete handshake consumed bytes"
            );
            buffer.extend_from_slice(&wire[at..]);
            buffer.extend_from_slice(&[0x80]);
            ClientHandshake::decode(&mut buffer, 1 << 20)
                .expect("valid handshake")
                .expect("complete handshake")
        }
    };
    if at < wire.len() {
        assert_eq!(&buffer[..], [0x80], "the following packet must be left");
    }
    decoded
}

/// The same for a server handshake on a byte stream; also decodes it as a WebSocket message.
fn server_handshake_vector(wire_hex: &str, expected: &ServerHandshake) {
    let wire = hex(wire_hex);
    let mut out = BytesMut::new();
    expected.encode(&mut out);
    assert_eq!(&out[..], &wire[..], "encoding of {expected:?}");
    assert_server_handshake_decodes(&wire, expected);
}

fn assert_server_handshake_decodes(wire: &[u8], expected: &ServerHandshake) {
    for at in 0..=wire.len() {
        let mut buffer = BytesMut::from(&wire[..at]);
        let decoded = match ServerHandshake::decode(&mut buffer, 1 << 20).expect("valid") {
            Some(handshake) => {
                assert_eq!(at, wire.len(), "complete before all bytes arrived");
                handshake
            }
            None => {
                buffer.extend_from_slice(&wire[at..]);
                ServerHandshake::decode(&mut buffer, 1 << 20)
                    .expect("valid")
                    .expect("complete")
            }
        };
        assert_eq!(&decoded, expected, "split at {at}");
        assert!(buffer.is_empty());
    }
    assert_eq!(
        &ServerHandshake::decode_message(wire, 1 << 20).expect("valid message"),
        expected
    );
}

// ---------------------------------------------------------------------------------------------
// Action ids
// ---------------------------------------------------------------------------------------------

#[test]
fn action_ids_and_their_uvarints() {
    for (name, id, wire) in [
        (JOIN_ROOM, 0x033648F7, "f7 91 d9 19"),
        (EXIT_ROOM, 0xA7FFD932, "b2 b2 ff bf 0a"),
        (USER_JOIN, 0x999B2807, "87 d0 ec cc 09"),
        (USER_EXIT, 0x827247A2, "a2 8f c9 93 08"),
    ] {
        assert_eq!(action_id(name), id, "{name}");
        // A Notify without payload is its head byte then the action uvarint.
        let mut out = BytesMut::new();
        notify(Action::Id(id), b"").encode_stream(&mut out);
        assert_eq!(out[0], 0xb0);
        assert_eq!(&out[1..], &hex(wire)[..], "{name}");
    }
}

// ---------------------------------------------------------------------------------------------
// Handshakes: T1, T11–T15
// ---------------------------------------------------------------------------------------------

const SERVER_OK_PROTOBUF: &str = "53 54 4d 50 00 21 43 6f 6e 74 65 6e 74 2d 54 79 70 65 3a 61 70 70 6c 69 63 61 74 69 6f 6e 2f 70 72 6f 74 6f 62 75 66 00";
const CLIENT_ACCEPT_PROTOBUF: &str = "53 54 4d 50 10 1b 41 63 63 65 70 74 3a 61 70 70 6c 69 63 61 74 69 6f 6e 2f 70 72 6f 74 6f 62 75 66 00";

fn server_ok(content_type: &str) -> ServerHandshake {
    ServerHandshake::ok(header(&[("Content-Type", content_type)]))
}

#[test]
fn t1_handshake_accept_protobuf() {
    let client = ClientHandshake::new(header(&[("Accept", "application/protobuf")]));
    assert_eq!(client.version, Version { major: 1, minor: 0 });
    assert_eq!(client.version.to_byte(), 0x10);
    client_handshake_vector(CLIENT_ACCEPT_PROTOBUF, &client);
    let decoded = decode_client_handshake(&hex(CLIENT_ACCEPT_PROTOBUF), 0);
    assert_eq!(decoded.version, Version::V1_0);
    assert_eq!(decoded.header.get("Accept"), Some("application/protobuf"));
    assert_eq!(decoded.header.len(), 1);
    assert_eq!(decoded.message, "");

    let server = server_ok("application/protobuf");
    server_handshake_vector(SERVER_OK_PROTOBUF, &server);
    assert_eq!(server.error(), None);
}

#[test]
fn t11_unsupported_accept_is_refused_with_bad_request() {
    let client = ClientHandshake::new(header(&[("Accept", "application/xml")]));
    client_handshake_vector(
        "53 54 4d 50 10 16 41 63 63 65 70 74 3a 61 70 70 6c 69 63 61 74 69 6f 6e 2f 78 6d 6c 00",
        &client,
    );
    let supported = [
        "application/protobuf",
        "application/json",
        "application/msgpack",
    ];
    assert_eq!(negotiate("application/xml", &supported), None);

    let reason = "no supported content-type in candidates: application/xml";
    let refusal = ServerHandshake::refuse(&Status::bad_request(reason));
    assert_eq!(refusal.status, Code::BadRequest);
    assert!(refusal.header.is_empty());
    assert_eq!(refusal.message, reason);
    server_handshake_vector(
        "53 54 4d 50 20 00 38 6e 6f 20 73 75 70 70 6f 72 74 65 64 20 63 6f 6e 74 65 6e 74 2d 74 79 70 65 20 69 6e 20 63 61 6e 64 69 64 61 74 65 73 3a 20 61 70 70 6c 69 63 61 74 69 6f 6e 2f 78 6d 6c",
        &refusal,
    );
    assert_eq!(refusal.error(), Some(Status::bad_request(reason)));
}

#[test]
fn t12_version_2_0_is_refused() {
    let client = ClientHandshake {
        version: Version { major: 2, minor: 0 },
        ..ClientHandshake::new(header(&[("Accept", "application/protobuf")]))
    };
    client_handshake_vector(
        "53 54 4d 50 20 1b 41 63 63 65 70 74 3a 61 70 70 6c 69 63 61 74 69 6f 6e 2f 70 72 6f 74 6f 62 75 66 00",
        &client,
    );
    assert_eq!(Version::from_byte(0x20).to_string(), "2.0");

    let refusal =
        ServerHandshake::refuse(&Status::bad_request("unsupported protocol version: 2.0"));
    server_handshake_vector(
        "53 54 4d 50 20 00 21 75 6e 73 75 70 70 6f 72 74 65 64 20 70 72 6f 74 6f 63 6f 6c 20 76 65 72 73 69 6f 6e 3a 20 32 2e 30",
        &refusal,
    );
}

#[test]
fn t13_escaped_semicolon_in_accept_list() {
    let client = ClientHandshake::new(header(&[("Accept", "text/x, application/json;q=0.9")]));
    client_handshake_vector(
        "53 54 4d 50 10 27 41 63 63 65 70 74 3a 74 65 78 74 2f 78 2c 20 61 70 70 6c 69 63 61 74 69 6f 6e 2f 6a 73 6f 6e 25 33 42 71 3d 30 2e 39 00",
        &client,
    );
    let supported = [
        "application/protobuf",
        "application/json",
        "application/msgpack",
    ];
    assert_eq!(
        negotiate(client.header.get("Accept").unwrap(), &supported),
        Some("application/json")
    );
    server_handshake_vector(
        "53 54 4d 50 00 1d 43 6f 6e 74 65 6e 74 2d 54 79 70 65 3a 61 70 70 6c 69 63 61 74 69 6f 6e 2f 6a 73 6f 6e 00",
        &server_ok("application/json"),
    );
}

#[test]
fn t13b_unescaped_semicolon_is_a_protocol_error() {
    let wire = hex("53 54 4d 50 10 13 41 63 63 65 70 74 3a 74 65 78 74 2f 78 3b 71 3d 30 2e 39 00");
    // Every prefix is merely incomplete; the whole handshake is malformed.
    for at in 0..wire.len() {
        let mut buffer = BytesMut::from(&wire[..at]);
        assert_eq!(
            ClientHandshake::decode(&mut buffer, 1 << 20),
            Ok(None),
            "prefix {at}"
        );
    }
    let mut buffer = BytesMut::from(&wire[..]);
    let error = ClientHandshake::decode(&mut buffer, 1 << 20).unwrap_err();
    assert_eq!(error.code(), Code::ProtocolError);
    assert!(error.message().contains("q=0.9"), "{error}");
    assert!(error.message().contains("':'"), "{error}");
    // The header alone fails the same way.
    let error = Header::decode(b"Accept:text/x;q=0.9").unwrap_err();
    assert_eq!(error.code(), Code::ProtocolError);

    let refusal = ServerHandshake::refuse(&Status::protocol_error(
        "parse handshake header: miss ':' in header",
    ));
    server_handshake_vector(
        "53 54 4d 50 03 00 2a 70 61 72 73 65 20 68 61 6e 64 73 68 61 6b 65 20 68 65 61 64 65 72 3a 20 6d 69 73 73 20 27 3a 27 20 69 6e 20 68 65 61 64 65 72",
        &refusal,
    );
    assert_eq!(refusal.error().unwrap().code(), Code::ProtocolError);
}

#[test]
fn t14_client_handshake_with_a_message() {
    let client = ClientHandshake {
        message: "hello".to_owned(),
        ..ClientHandshake::new(header(&[("Accept", "application/protobuf")]))
    };
    client_handshake_vector(
        "53 54 4d 50 10 1b 41 63 63 65 70 74 3a 61 70 70 6c 69 63 61 74 69 6f 6e 2f 70 72 6f 74 6f 62 75 66 05 68 65 6c 6c 6f",
        &client,
    );
    server_handshake_vector(SERVER_OK_PROTOBUF, &server_ok("application/protobuf"));
}

#[test]
fn t15_accept_encoding_gzip() {
    let client = ClientHandshake::new(header(&[
        ("Accept", "application/protobuf"),
        ("Accept-Encoding", "gzip"),
    ]));
    client_handshake_vector(
        "53 54 4d 50 10 30 41 63 63 65 70 74 3a 61 70 70 6c 69 63 61 74 69 6f 6e 2f 70 72 6f 74 6f 62 75 66 3b 41 63 63 65 70 74 2d 45 6e 63 6f 64 69 6e 67 3a 67 7a 69 70 00",
        &client,
    );

    // The server's two keys come from a Go map: compare them as a set.
    let wire = hex(
        "53 54 4d 50 00 37 43 6f 6e 74 65 6e 74 2d 45 6e 63 6f 64 69 6e 67 3a 67 7a 69 70 3b 43 6f 6e 74 65 6e 74 2d 54 79 70 65 3a 61 70 70 6c 69 63 61 74 69 6f 6e 2f 70 72 6f 74 6f 62 75 66 00",
    );
    let ours = ServerHandshake::ok(header(&[
        ("Content-Type", "application/protobuf"),
        ("Content-Encoding", "gzip"),
    ]));
    let mut encoded = BytesMut::new();
    ours.encode(&mut encoded);
    assert_eq!(encoded.len(), wire.len());
    assert_eq!(&encoded[..6], &wire[..6], "magic, status and header length");
    let theirs = ServerHandshake::decode(&mut BytesMut::from(&wire[..]), 1 << 20)
        .unwrap()
        .unwrap();
    let reparsed = ServerHandshake::decode(&mut encoded, 1 << 20)
        .unwrap()
        .unwrap();
    for decoded in [&theirs, &reparsed] {
        assert_eq!(decoded.status, Code::Ok);
        assert_eq!(decoded.message, "");
        assert_eq!(entry_set(&decoded.header), entry_set(&ours.header));
    }
    // In the order of the capture, the bytes are the same.
    let in_capture_order = ServerHandshake::ok(header(&[
        ("Content-Encoding", "gzip"),
        ("Content-Type", "application/protobuf"),
    ]));
    server_handshake_vector(
        "53 54 4d 50 00 37 43 6f 6e 74 65 6e 74 2d 45 6e 63 6f 64 69 6e 67 3a 67 7a 69 70 3b 43 6f 6e 74 65 6e 74 2d 54 79 70 65 3a 61 70 70 6c 69 63 61 74 69 6f 6e 2f 70 72 6f 74 6f 62 75 66 00",
        &in_capture_order,
    );
}

// ---------------------------------------------------------------------------------------------
// Packets on a byte stream: T2–T10, T16
// ---------------------------------------------------------------------------------------------

const GOLDEN: &[u8] = b"\x0a\x06golden";

#[test]
fn t2_join_room_request_and_response() {
    stream_vector(
        "a8 01 00 f7 91 d9 19 08 0a 06 67 6f 6c 64 65 6e",
        &[request(
            1,
            Action::Id(action_id(JOIN_ROOM)),
            Header::new(),
            GOLDEN,
        )],
    );
    stream_vector(
        "c8 01 00 00 19 0a 06 67 6f 6c 64 65 6e 12 0f 31 32 37 2e 30 2e 30 2e 31 3a 34 30 30 30 31",
        &[response(
            1,
            Code::Ok,
            b"\x0a\x06golden\x12\x0f127.0.0.1:40001",
        )],
    );
}

#[test]
fn t3_ping_and_pong() {
    stream_vector("80", &[Packet::Ping]);
    stream_vector("90", &[Packet::Pong]);
    assert_eq!(Packet::Ping.encoded_stream_len(), 1);
}

#[test]
fn t4_request_with_a_method_name() {
    stream_vector(
        "aa 02 00 2e 73 74 6d 70 2e 65 78 61 6d 70 6c 65 73 2e 71 75 69 63 6b 5f 73 74 61 72 74 2e 52 6f 6f 6d 53 65 72 76 69 63 65 2e 4a 6f 69 6e 52 6f 6f 6d 08 0a 06 67 6f 6c 64 65 6e",
        &[request(
            2,
            Action::Method(JOIN_ROOM.to_owned()),
            Header::new(),
            GOLDEN,
        )],
    );
    stream_vector(
        "c8 02 00 22 08 4e 6f 74 46 6f 75 6e 64",
        &[response(2, Code::NotFound, b"NotFound")],
    );
}

#[test]
fn t5_unknown_action_gets_not_found() {
    stream_vector(
        "a8 03 00 b4 24 08 0a 06 67 6f 6c 64 65 6e",
        &[request(3, Action::Id(0x1234), Header::new(), GOLDEN)],
    );
    stream_vector(
        "c8 03 00 22 08 4e 6f 74 46 6f 75 6e 64",
        &[response(3, Code::NotFound, b"NotFound")],
    );
}

#[test]
fn t6_request_with_header_and_no_payload() {
    let x_k = header(&[("x-k", "v1"), ("x-k", "v2")]);
    stream_vector(
        "a4 04 01 f7 91 d9 19 0d 78 2d 6b 3a 76 31 3b 78 2d 6b 3a 76 32",
        &[request(0x0104, Action::Id(action_id(JOIN_ROOM)), x_k, b"")],
    );
    let decoded =
        decode_chunks([&hex("a4 04 01 f7 91 d9 19 0d 78 2d 6b 3a 76 31 3b 78 2d 6b 3a 76 32")[..]]);
    let Packet::Request(request) = &decoded[0] else {
        panic!("not a request: {decoded:?}")
    };
    assert_eq!(request.mid, 260);
    assert_eq!(
        request.header.get_all("x-k").collect::<Vec<_>>(),
        ["v1", "v2"]
    );
    assert!(request.payload.is_empty());

    stream_vector(
        "c8 04 01 00 11 12 0f 31 32 37 2e 30 2e 30 2e 31 3a 34 30 30 30 31",
        &[response(0x0104, Code::Ok, b"\x12\x0f127.0.0.1:40001")],
    );
}

#[test]
fn t6b_notify_and_gos_response_with_mid_0() {
    stream_vector(
        "b8 f7 91 d9 19 0a 0a 08 67 6f 6c 64 65 6e 2d 6e",
        &[notify(
            Action::Id(action_id(JOIN_ROOM)),
            b"\x0a\x08golden-n",
        )],
    );
    stream_vector(
        "c8 00 00 00 1b 0a 08 67 6f 6c 64 65 6e 2d 6e 12 0f 31 32 37 2e 30 2e 30 2e 31 3a 34 30 30 30 31",
        &[response(
            0,
            Code::Ok,
            b"\x0a\x08golden-n\x12\x0f127.0.0.1:40001",
        )],
    );
}

#[test]
fn t7_second_connection_and_user_join_event() {
    stream_vector(
        "a8 01 00 f7 91 d9 19 08 0a 06 67 6f 6c 64 65 6e",
        &[request(
            1,
            Action::Id(action_id(JOIN_ROOM)),
            Header::new(),
            GOLDEN,
        )],
    );
    stream_vector(
        "c8 01 00 00 2a 0a 06 67 6f 6c 64 65 6e 12 0f 31 32 37 2e 30 2e 30 2e 31 3a 34 30 30 30 31 12 0f 31 32 37 2e 30 2e 30 2e 31 3a 34 30 30 30 32",
        &[response(
            1,
            Code::Ok,
            b"\x0a\x06golden\x12\x0f127.0.0.1:40001\x12\x0f127.0.0.1:40002",
        )],
    );
    stream_vector(
        "b8 87 d0 ec cc 09 11 0a 0f 31 32 37 2e 30 2e 30 2e 31 3a 34 30 30 30 32",
        &[notify(
            Action::Id(action_id(USER_JOIN)),
            b"\x0a\x0f127.0.0.1:40002",
        )],
    );
}

#[test]
fn t8_exit_room_empty_response_and_user_exit_event() {
    stream_vector(
        "a8 02 00 b2 b2 ff bf 0a 08 0a 06 67 6f 6c 64 65 6e",
        &[request(
            2,
            Action::Id(action_id(EXIT_ROOM)),
            Header::new(),
            GOLDEN,
        )],
    );
    stream_vector("c0 02 00 00", &[response(2, Code::Ok, b"")]);
    stream_vector(
        "b8 a2 8f c9 93 08 11 0a 0f 31 32 37 2e 30 2e 30 2e 31 3a 34 30 30 30 32",
        &[notify(
            Action::Id(action_id(USER_EXIT)),
            b"\x0a\x0f127.0.0.1:40002",
        )],
    );
}

#[test]
fn t9_close_with_a_reason() {
    stream_vector("d8 00 03 62 79 65", &[Packet::close(Code::Ok, "bye")]);
    // A Close without a reason has no payload at all.
    stream_vector("d0 00", &[Packet::close(Code::Ok, "")]);
}

#[test]
fn t10_head_without_fin_is_a_protocol_error() {
    let mut buffer = BytesMut::from(&hex("00")[..]);
    let error = PacketCodec::new().decode(&mut buffer).unwrap_err();
    assert_eq!(error.code(), Code::ProtocolError);
    assert!(error.message().contains("FIN"), "{error}");
    let error = Packet::decode_message(Bytes::from(hex("00")), 1 << 20).unwrap_err();
    assert_eq!(error.code(), Code::ProtocolError);

    // The Close the Go server answers with.
    stream_vector(
        "d8 03 1a 69 6e 76 61 6c 69 64 20 72 65 73 65 72 76 65 64 20 68 65 61 64 20 62 69 74 73",
        &[Packet::close(
            Code::ProtocolError,
            "invalid reserved head bits",
        )],
    );
}

#[test]
fn t16_gzip_stream_plaintext_packets() {
    stream_vector(
        "a8 01 00 f7 91 d9 19 0b 0a 09 67 6f 6c 64 65 6e 2d 67 7a",
        &[request(
            1,
            Action::Id(action_id(JOIN_ROOM)),
            Header::new(),
            b"\x0a\x09golden-gz",
        )],
    );
    stream_vector(
        "c8 01 00 00 1c 0a 09 67 6f 6c 64 65 6e 2d 67 7a 12 0f 31 32 37 2e 30 2e 30 2e 31 3a 34 30 30 30 33",
        &[response(
            1,
            Code::Ok,
            b"\x0a\x09golden-gz\x12\x0f127.0.0.1:40003",
        )],
    );
}

#[test]
fn a_whole_tcp_conversation_decodes_from_one_buffer() {
    // T3, T2 and T9 back to back, as one read could return them.
    stream_vector(
        "80 a8 01 00 f7 91 d9 19 08 0a 06 67 6f 6c 64 65 6e d8 00 03 62 79 65",
        &[
            Packet::Ping,
            request(1, Action::Id(action_id(JOIN_ROOM)), Header::new(), GOLDEN),
            Packet::close(Code::Ok, "bye"),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// WebSocket: W1–W3
// ---------------------------------------------------------------------------------------------

#[test]
fn w1_binary_messages() {
    let handshake = hex(
        "53 54 4d 50 00 21 43 6f 6e 74 65 6e 74 2d 54 79 70 65 3a 61 70 70 6c 69 63 61 74 69 6f 6e 2f 70 72 6f 74 6f 62 75 66 00",
    );
    assert_eq!(
        ServerHandshake::decode_message(&handshake, 1 << 20).unwrap(),
        server_ok("application/protobuf")
    );
    message_vector(
        "a8 01 00 f7 91 d9 19 0a 0a 67 6f 6c 64 65 6e 2d 77 73 31",
        &request(
            1,
            Action::Id(action_id(JOIN_ROOM)),
            Header::new(),
            b"\x0a\x0agolden-ws1",
        ),
    );
    message_vector(
        "c8 01 00 00 0a 0a 67 6f 6c 64 65 6e 2d 77 73 31 12 0f 31 32 37 2e 30 2e 30 2e 31 3a 34 30 30 30 34",
        &response(1, Code::Ok, b"\x0a\x0agolden-ws1\x12\x0f127.0.0.1:40004"),
    );
}

#[test]
fn w2_binary_messages_with_json() {
    let handshake = hex(
        "53 54 4d 50 00 1d 43 6f 6e 74 65 6e 74 2d 54 79 70 65 3a 61 70 70 6c 69 63 61 74 69 6f 6e 2f 6a 73 6f 6e 00",
    );
    let expected = server_ok("application/json");
    assert_eq!(
        ServerHandshake::decode_message(&handshake, 1 << 20).unwrap(),
        expected
    );
    let mut out = BytesMut::new();
    expected.encode(&mut out);
    assert_eq!(&out[..], &handshake[..]);
    message_vector(
        "a8 01 00 f7 91 d9 19 7b 22 6e 61 6d 65 22 3a 22 67 6f 6c 64 65 6e 2d 77 73 32 22 7d",
        &request(
            1,
            Action::Id(action_id(JOIN_ROOM)),
            Header::new(),
            br#"{"name":"golden-ws2"}"#,
        ),
    );
    message_vector(
        "c8 01 00 00 7b 22 6e 61 6d 65 22 3a 22 67 6f 6c 64 65 6e 2d 77 73 32 22 2c 22 75 73 65 72 73 22 3a 5b 22 31 32 37 2e 30 2e 30 2e 31 3a 34 30 30 30 35 22 5d 7d",
        &response(
            1,
            Code::Ok,
            br#"{"name":"golden-ws2","users":["127.0.0.1:40005"]}"#,
        ),
    );
}

#[test]
fn w3_text_handshake_and_text_packets() {
    let wire = hex(
        "53 54 4d 50 30 0a 48 43 6f 6e 74 65 6e 74 2d 54 79 70 65 3a 61 70 70 6c 69 63 61 74 69 6f 6e 2f 6a 73 6f 6e 3b 50 61 63 6b 65 74 2d 46 6f 72 6d 61 74 3a 74 65 78 74",
    );
    assert_eq!(
        &wire[..],
        b"STMP0\nHContent-Type:application/json;Packet-Format:text"
    );
    let decoded = ServerHandshake::decode_text(&wire, 1 << 20).unwrap();
    assert_eq!(decoded.status, Code::Ok);
    assert_eq!(decoded.message, "");
    // The header comes from a Go map: compare as a set.
    let expected = ServerHandshake::ok(header(&[
        ("Packet-Format", "text"),
        ("Content-Type", "application/json"),
    ]));
    assert_eq!(entry_set(&decoded.header), entry_set(&expected.header));
    let mut ours = BytesMut::new();
    expected.encode_text(&mut ours);
    assert_eq!(ours.len(), wire.len());
    let reparsed = ServerHandshake::decode_text(&ours, 1 << 20).unwrap();
    assert_eq!(reparsed, expected);
    // In the capture's order the bytes are the same.
    let mut in_capture_order = BytesMut::new();
    decoded.encode_text(&mut in_capture_order);
    assert_eq!(&in_capture_order[..], &wire[..]);

    let request_wire = hex(
        "51 31 3a 33 33 36 34 38 46 37 0a 50 7b 22 6e 61 6d 65 22 3a 22 67 6f 6c 64 65 6e 2d 77 73 33 22 7d",
    );
    assert_eq!(
        &request_wire[..],
        br#"Q1:33648F7
P{"name":"golden-ws3"}"#
    );
    text_vector(
        &request_wire,
        &request(
            1,
            Action::Id(action_id(JOIN_ROOM)),
            Header::new(),
            br#"{"name":"golden-ws3"}"#,
        ),
    );
    let response_wire = hex(
        "53 31 3a 30 0a 50 7b 22 6e 61 6d 65 22 3a 22 67 6f 6c 64 65 6e 2d 77 73 33 22 2c 22 75 73 65 72 73 22 3a 5b 22 31 32 37 2e 30 2e 30 2e 31 3a 34 30 30 30 36 22 5d 7d",
    );
    text_vector(
        &response_wire,
        &response(
            1,
            Code::Ok,
            br#"{"name":"golden-ws3","users":["127.0.0.1:40006"]}"#,
        ),
    );
}

#[test]
fn text_forms_of_every_kind() {
    text_vector(b"I", &Packet::Ping);
    text_vector(b"O", &Packet::Pong);
    text_vector(
        b"S1:22\nPNotFound",
        &response(1, Code::NotFound, b"NotFound"),
    );
    text_vector(b"C0\nPbye", &Packet::close(Code::Ok, "bye"));
    text_vector(
        b"N999B2807\nP{}",
        &notify(Action::Id(action_id(USER_JOIN)), b"{}"),
    );
    text_vector(
        b"QFFFF:M:a%3Ab%0Ac\nHx-k:v1;x-k:v%3B2\nP\nraw\n",
        &request(
            0xffff,
            Action::Method("a:b\nc".to_owned()),
            header(&[("x-k", "v1"), ("x-k", "v;2")]),
            b"\nraw\n",
        ),
    );
}

// ---------------------------------------------------------------------------------------------
// The Go client's trace: one packet in two writes
// ---------------------------------------------------------------------------------------------

#[test]
fn go_client_trace_run_1_head_and_payload_in_two_reads() {
    let handshake = hex(CLIENT_ACCEPT_PROTOBUF);
    assert_eq!(
        decode_client_handshake(&handshake, handshake.len()),
        ClientHandshake::new(header(&[("Accept", "application/protobuf")]))
    );

    let expected_request = request(
        1,
        Action::Id(action_id(JOIN_ROOM)),
        Header::new(),
        b"\x0a\x09golden-go",
    );
    let head = hex("a8 01 00 f7 91 d9 19 0b");
    let payload = hex("0a 09 67 6f 6c 64 65 6e 2d 67 6f");
    assert_eq!((head.len(), payload.len()), (8, 11));
    let mut codec = PacketCodec::new();
    let mut buffer = BytesMut::from(&head[..]);
    assert_eq!(codec.decode(&mut buffer).unwrap(), None);
    assert_eq!(buffer.len(), 8, "an incomplete packet is not consumed");
    buffer.extend_from_slice(&payload);
    assert_eq!(
        codec.decode(&mut buffer).unwrap(),
        Some(expected_request.clone())
    );
    assert!(buffer.is_empty());
    assert_eq!(encode_stream(&[expected_request]), [head, payload].concat());

    let expected_response = response(1, Code::Ok, b"\x0a\x09golden-go\x12\x0f127.0.0.1:45042");
    let head = hex("c8 01 00 00 1c");
    let payload =
        hex("0a 09 67 6f 6c 64 65 6e 2d 67 6f 12 0f 31 32 37 2e 30 2e 30 2e 31 3a 34 35 30 34 32");
    assert_eq!(
        decode_chunks([&head[..], &payload[..]]),
        std::slice::from_ref(&expected_response)
    );
    assert_eq!(
        encode_stream(&[expected_response]),
        [head, payload].concat()
    );

    stream_vector(
        "d8 02 17 72 65 61 64 20 70 61 63 6b 65 74 20 68 65 61 64 65 72 3a 20 45 4f 46",
        &[Packet::close(Code::NetworkError, "read packet header: EOF")],
    );
}

#[test]
fn go_client_trace_run_2_whole_packets() {
    stream_vector(
        "a8 01 00 f7 91 d9 19 0c 0a 0a 67 6f 6c 64 65 6e 2d 67 6f 32",
        &[request(
            1,
            Action::Id(action_id(JOIN_ROOM)),
            Header::new(),
            b"\x0a\x0agolden-go2",
        )],
    );
    stream_vector(
        "c8 01 00 00 1d 0a 0a 67 6f 6c 64 65 6e 2d 67 6f 32 12 0f 31 32 37 2e 30 2e 30 2e 31 3a 34 38 32 38 36",
        &[response(
            1,
            Code::Ok,
            b"\x0a\x0agolden-go2\x12\x0f127.0.0.1:48286",
        )],
    );
}

#[test]
fn eof_inside_a_packet_is_a_network_error() {
    let mut codec = PacketCodec::new();
    let mut buffer = BytesMut::from(&hex("a8 01 00 f7 91 d9 19 0b 0a 09")[..]);
    assert_eq!(codec.decode(&mut buffer).unwrap(), None);
    let error = codec.decode_eof(&mut buffer).unwrap_err();
    assert_eq!(error.code(), Code::NetworkError);
}

// ---------------------------------------------------------------------------------------------
// Robustness probes F1–F4: what the Go server gets wrong, we must get right
// ---------------------------------------------------------------------------------------------

#[test]
fn f1_split_inside_the_payload() {
    let chunk0 = hex("a8 05 00 f7 91 d9 19 08 0a 06 67");
    let chunk1 = hex("6f 6c 64 65 6e");
    let expected = [request(
        5,
        Action::Id(action_id(JOIN_ROOM)),
        Header::new(),
        GOLDEN,
    )];
    let mut codec = PacketCodec::new();
    let mut buffer = BytesMut::from(&chunk0[..]);
    assert_eq!(codec.decode(&mut buffer).unwrap(), None);
    assert_eq!(&buffer[..], &chunk0[..]);
    buffer.extend_from_slice(&chunk1);
    assert_eq!(
        codec.decode(&mut buffer).unwrap().as_ref(),
        Some(&expected[0])
    );
    assert!(buffer.is_empty());
    assert_eq!(codec.decode_eof(&mut buffer).unwrap(), None);

    // What the Go server answered (a zero-padded payload, then a Close) is well-formed.
    let answer = hex(
        "c8 05 00 00 19 0a 06 67 00 00 00 00 00 12 0f 31 32 37 2e 30 2e 30 2e 31 3a 33 38 34 32 34 d8 03 1a 69 6e 76 61 6c 69 64 20 72 65 73 65 72 76 65 64 20 68 65 61 64 20 62 69 74 73",
    );
    assert_eq!(
        decode_chunks([&answer[..]]),
        [
            response(5, Code::Ok, b"\x0a\x06g\0\0\0\0\0\x12\x0f127.0.0.1:38424"),
            Packet::close(Code::ProtocolError, "invalid reserved head bits"),
        ]
    );
}

#[test]
fn f2_split_inside_the_mid() {
    let chunk0 = hex("a8 01");
    let chunk1 = hex("02 f7 91 d9 19 08 0a 06 67 6f 6c 64 65 6e");
    let expected = request(
        0x0201,
        Action::Id(action_id(JOIN_ROOM)),
        Header::new(),
        GOLDEN,
    );
    let mut codec = PacketCodec::new();
    let mut buffer = BytesMut::from(&chunk0[..]);
    assert_eq!(codec.decode(&mut buffer).unwrap(), None);
    buffer.extend_from_slice(&chunk1);
    assert_eq!(codec.decode(&mut buffer).unwrap(), Some(expected.clone()));
    assert!(buffer.is_empty());
    assert_eq!(encode_stream(&[expected]), [chunk0, chunk1].concat());

    // Go's answer: a Close with RequestEntityTooLarge.
    stream_vector(
        "d8 24 2b 70 61 63 6b 65 74 20 73 69 7a 65 20 35 33 38 38 39 32 37 31 20 69 73 20 6c 61 72 67 65 20 74 68 61 6e 20 31 36 37 37 37 32 31 36",
        &[Packet::close(
            Code::RequestEntityTooLarge,
            "packet size 53889271 is large than 16777216",
        )],
    );
}

/// A small deterministic generator for chunk sizes (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound as u64) as usize
    }
}

#[test]
fn f3_a_300_kb_request_in_random_chunks() {
    // a8 06 00 f7 91 d9 19 e4 a7 12 | 0a e0 a7 12 + 300000 'x'
    let mut payload = hex("0a e0 a7 12");
    payload.resize(4 + 300_000, b'x');
    assert_eq!(payload.len(), 300_004);
    let expected = request(6, Action::Id(action_id(JOIN_ROOM)), Header::new(), &payload);
    let wire = encode_stream(std::slice::from_ref(&expected));
    assert_eq!(wire.len(), 300_014);
    assert_eq!(
        &wire[..14],
        &hex("a8 06 00 f7 91 d9 19 e4 a7 12 0a e0 a7 12")[..]
    );

    for seed in [1u64, 0x5eed, 0xdead_beef, 42] {
        let mut rng = Rng(seed);
        let mut chunks = Vec::new();
        let mut at = 0;
        while at < wire.len() {
            // Mostly loopback-sized reads, sometimes tiny ones.
            let size = if rng.below(4) == 0 {
                1 + rng.below(16)
            } else {
                1 + rng.below(65_536)
            };
            let end = (at + size).min(wire.len());
            chunks.push(&wire[at..end]);
            at = end;
        }
        assert!(chunks.len() > 4, "seed {seed}");
        let decoded = decode_chunks(chunks);
        assert_eq!(decoded.len(), 1, "seed {seed}");
        assert!(decoded[0] == expected, "seed {seed}: payload differs");
    }
}

#[test]
fn f3_the_limit_is_checked_before_the_payload_arrives() {
    let wire = hex("a8 06 00 f7 91 d9 19 e4 a7 12");
    let mut codec = PacketCodec::with_max_packet_size(300_003);
    let mut buffer = BytesMut::from(&wire[..]);
    let error = codec.decode(&mut buffer).unwrap_err();
    assert_eq!(error.code(), Code::RequestEntityTooLarge);
    // With a limit that allows it, the header alone is merely incomplete.
    let mut codec = PacketCodec::with_max_packet_size(300_004);
    let mut buffer = BytesMut::from(&wire[..]);
    assert_eq!(codec.decode(&mut buffer).unwrap(), None);
}

#[test]
fn f4_handshake_split_after_st() {
    let wire = hex(
        "53 54 4d 50 10 1b 41 63 63 65 70 74 3a 61 70 70 6c 69 63 61 74 69 6f 6e 2f 70 72 6f 74 6f 62 75 66 00",
    );
    let mut buffer = BytesMut::from(&hex("53 54")[..]);
    assert_eq!(ClientHandshake::decode(&mut buffer, 1 << 20), Ok(None));
    assert_eq!(&buffer[..], b"ST");
    buffer.extend_from_slice(&wire[2..]);
    let handshake = ClientHandshake::decode(&mut buffer, 1 << 20)
        .unwrap()
        .unwrap();
    assert_eq!(
        handshake,
        ClientHandshake::new(header(&[("Accept", "application/protobuf")]))
    );
    assert!(buffer.is_empty());

    // A wrong magic is refused as soon as its first wrong byte is there.
    let mut buffer = BytesMut::from(&b"SX"[..]);
    let error = ClientHandshake::decode(&mut buffer, 1 << 20).unwrap_err();
    assert_eq!(error.code(), Code::ProtocolError);
    assert!(error.message().contains("magic"), "{error}");

    // Go's answer is itself a well-formed refusal.
    let answer = hex(
        "53 54 4d 50 03 00 21 68 61 6e 64 73 68 61 6b 65 20 6d 61 67 69 63 20 53 54 00 00 00 20 69 73 20 6e 6f 74 20 53 54 4d 50",
    );
    assert_server_handshake_decodes(
        &answer,
        &ServerHandshake::refuse(&Status::protocol_error(
            "handshake magic ST\0\0\0 is not STMP",
        )),
    );
}
