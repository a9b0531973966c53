//! The byte vectors captured from a running stmp-go 1.0 server and client, reproduced exactly
//! when encoding and parsed field by field when decoding (the format: `docs/wire-format.md`).
//!
//! The bytes live in `tests/vectors/wire.json` (space-separated hex, wire order), shared with the
//! TypeScript client's tests; each entry also says what it decodes to, and
//! `every_shared_vector_matches_its_description` checks those descriptions against this crate, so
//! another implementation can trust them.

use bytes::{Bytes, BytesMut};
use stmp::wire::{
    Action, ClientHandshake, Header, Notify, Packet, PacketCodec, Request, Response,
    ServerHandshake, Version, action_id, negotiate,
};
use stmp::{Code, Status};
use tokio_util::codec::Decoder;

mod vectors;

use vectors::{Described, chunk, described, large_request, uvarint_of, v};

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
        (
            JOIN_ROOM,
            0x033648F7,
            uvarint_of("stmp.examples.quick_start.RoomService.JoinRoom"),
        ),
        (
            EXIT_ROOM,
            0xA7FFD932,
            uvarint_of("stmp.examples.quick_start.RoomService.ExitRoom"),
        ),
        (
            USER_JOIN,
            0x999B2807,
            uvarint_of("stmp.examples.quick_start.RoomEvents.UserJoin"),
        ),
        (
            USER_EXIT,
            0x827247A2,
            uvarint_of("stmp.examples.quick_start.RoomEvents.UserExit"),
        ),
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

fn server_ok(content_type: &str) -> ServerHandshake {
    ServerHandshake::ok(header(&[("Content-Type", content_type)]))
}

#[test]
fn t1_handshake_accept_protobuf() {
    let client = ClientHandshake::new(header(&[("Accept", "application/protobuf")]));
    assert_eq!(client.version, Version { major: 1, minor: 0 });
    assert_eq!(client.version.to_byte(), 0x10);
    client_handshake_vector(v("t1.client"), &client);
    let decoded = decode_client_handshake(&hex(v("t1.client")), 0);
    assert_eq!(decoded.version, Version::V1_0);
    assert_eq!(decoded.header.get("Accept"), Some("application/protobuf"));
    assert_eq!(decoded.header.len(), 1);
    assert_eq!(decoded.message, "");

    let server = server_ok("application/protobuf");
    server_handshake_vector(v("t1.server"), &server);
    assert_eq!(server.error(), None);
}

#[test]
fn t11_unsupported_accept_is_refused_with_bad_request() {
    let client = ClientHandshake::new(header(&[("Accept", "application/xml")]));
    client_handshake_vector(v("t11.client"), &client);
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
    server_handshake_vector(v("t11.server"), &refusal);
    assert_eq!(refusal.error(), Some(Status::bad_request(reason)));
}

#[test]
fn t12_version_2_0_is_refused() {
    let client = ClientHandshake {
        version: Version { major: 2, minor: 0 },
        ..ClientHandshake::new(header(&[("Accept", "application/protobuf")]))
    };
    client_handshake_vector(v("t12.client"), &client);
    assert_eq!(Version::from_byte(0x20).to_string(), "2.0");

    let refusal =
        ServerHandshake::refuse(&Status::bad_request("unsupported protocol version: 2.0"));
    server_handshake_vector(v("t12.server"), &refusal);
}

#[test]
fn t13_escaped_semicolon_in_accept_list() {
    let client = ClientHandshake::new(header(&[("Accept", "text/x, application/json;q=0.9")]));
    client_handshake_vector(v("t13.client"), &client);
    let supported = [
        "application/protobuf",
        "application/json",
        "application/msgpack",
    ];
    assert_eq!(
        negotiate(client.header.get("Accept").unwrap(), &supported),
        Some("application/json")
    );
    server_handshake_vector(v("t13.server"), &server_ok("application/json"));
}

#[test]
fn t13b_unescaped_semicolon_is_a_protocol_error() {
    let wire = hex(v("t13b.client"));
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
    server_handshake_vector(v("t13b.server"), &refusal);
    assert_eq!(refusal.error().unwrap().code(), Code::ProtocolError);
}

#[test]
fn t14_client_handshake_with_a_message() {
    let client = ClientHandshake {
        message: "hello".to_owned(),
        ..ClientHandshake::new(header(&[("Accept", "application/protobuf")]))
    };
    client_handshake_vector(v("t14.client"), &client);
    server_handshake_vector(v("t1.server"), &server_ok("application/protobuf"));
}

#[test]
fn t15_accept_encoding_gzip() {
    let client = ClientHandshake::new(header(&[
        ("Accept", "application/protobuf"),
        ("Accept-Encoding", "gzip"),
    ]));
    client_handshake_vector(v("t15.client"), &client);

    // The server's two keys come from a Go map: compare them as a set.
    let wire = hex(v("t15.server"));
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
    server_handshake_vector(v("t15.server"), &in_capture_order);
}

// ---------------------------------------------------------------------------------------------
// Packets on a byte stream: T2–T10, T16
// ---------------------------------------------------------------------------------------------

const GOLDEN: &[u8] = b"\x0a\x06golden";

#[test]
fn t2_join_room_request_and_response() {
    stream_vector(
        v("t2.request"),
        &[request(
            1,
            Action::Id(action_id(JOIN_ROOM)),
            Header::new(),
            GOLDEN,
        )],
    );
    stream_vector(
        v("t2.response"),
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
        v("t4.request"),
        &[request(
            2,
            Action::Method(JOIN_ROOM.to_owned()),
            Header::new(),
            GOLDEN,
        )],
    );
    stream_vector(
        v("t4.response"),
        &[response(2, Code::NotFound, b"NotFound")],
    );
}

#[test]
fn t5_unknown_action_gets_not_found() {
    stream_vector(
        v("t5.request"),
        &[request(3, Action::Id(0x1234), Header::new(), GOLDEN)],
    );
    stream_vector(
        v("t5.response"),
        &[response(3, Code::NotFound, b"NotFound")],
    );
}

#[test]
fn t6_request_with_header_and_no_payload() {
    let x_k = header(&[("x-k", "v1"), ("x-k", "v2")]);
    stream_vector(
        v("t6.request"),
        &[request(0x0104, Action::Id(action_id(JOIN_ROOM)), x_k, b"")],
    );
    let decoded = decode_chunks([&hex(v("t6.request"))[..]]);
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
        v("t6.response"),
        &[response(0x0104, Code::Ok, b"\x12\x0f127.0.0.1:40001")],
    );
}

#[test]
fn t6b_notify_and_gos_response_with_mid_0() {
    stream_vector(
        v("t6b.notify"),
        &[notify(
            Action::Id(action_id(JOIN_ROOM)),
            b"\x0a\x08golden-n",
        )],
    );
    stream_vector(
        v("t6b.response"),
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
        v("t7.request"),
        &[request(
            1,
            Action::Id(action_id(JOIN_ROOM)),
            Header::new(),
            GOLDEN,
        )],
    );
    stream_vector(
        v("t7.response"),
        &[response(
            1,
            Code::Ok,
            b"\x0a\x06golden\x12\x0f127.0.0.1:40001\x12\x0f127.0.0.1:40002",
        )],
    );
    stream_vector(
        v("t7.user_join"),
        &[notify(
            Action::Id(action_id(USER_JOIN)),
            b"\x0a\x0f127.0.0.1:40002",
        )],
    );
}

#[test]
fn t8_exit_room_empty_response_and_user_exit_event() {
    stream_vector(
        v("t8.request"),
        &[request(
            2,
            Action::Id(action_id(EXIT_ROOM)),
            Header::new(),
            GOLDEN,
        )],
    );
    stream_vector(v("t8.response"), &[response(2, Code::Ok, b"")]);
    stream_vector(
        v("t8.user_exit"),
        &[notify(
            Action::Id(action_id(USER_EXIT)),
            b"\x0a\x0f127.0.0.1:40002",
        )],
    );
}

#[test]
fn t9_close_with_a_reason() {
    stream_vector(v("t9.close"), &[Packet::close(Code::Ok, "bye")]);
    // A Close without a reason has no payload at all.
    stream_vector(v("t9.close_empty"), &[Packet::close(Code::Ok, "")]);
}

#[test]
fn t10_head_without_fin_is_a_protocol_error() {
    let mut buffer = BytesMut::from(&hex(v("t10.no_fin"))[..]);
    let error = PacketCodec::new().decode(&mut buffer).unwrap_err();
    assert_eq!(error.code(), Code::ProtocolError);
    assert!(error.message().contains("FIN"), "{error}");
    let error = Packet::decode_message(Bytes::from(hex(v("t10.no_fin"))), 1 << 20).unwrap_err();
    assert_eq!(error.code(), Code::ProtocolError);

    // The Close the Go server answers with.
    stream_vector(
        v("t10.close"),
        &[Packet::close(
            Code::ProtocolError,
            "invalid reserved head bits",
        )],
    );
}

#[test]
fn t16_gzip_stream_plaintext_packets() {
    stream_vector(
        v("t16.request"),
        &[request(
            1,
            Action::Id(action_id(JOIN_ROOM)),
            Header::new(),
            b"\x0a\x09golden-gz",
        )],
    );
    stream_vector(
        v("t16.response"),
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
        v("conversation"),
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
    let handshake = hex(v("t1.server"));
    assert_eq!(
        ServerHandshake::decode_message(&handshake, 1 << 20).unwrap(),
        server_ok("application/protobuf")
    );
    message_vector(
        v("w1.request"),
        &request(
            1,
            Action::Id(action_id(JOIN_ROOM)),
            Header::new(),
            b"\x0a\x0agolden-ws1",
        ),
    );
    message_vector(
        v("w1.response"),
        &response(1, Code::Ok, b"\x0a\x0agolden-ws1\x12\x0f127.0.0.1:40004"),
    );
}

#[test]
fn w2_binary_messages_with_json() {
    let handshake = hex(v("t13.server"));
    let expected = server_ok("application/json");
    assert_eq!(
        ServerHandshake::decode_message(&handshake, 1 << 20).unwrap(),
        expected
    );
    let mut out = BytesMut::new();
    expected.encode(&mut out);
    assert_eq!(&out[..], &handshake[..]);
    message_vector(
        v("w2.request"),
        &request(
            1,
            Action::Id(action_id(JOIN_ROOM)),
            Header::new(),
            br#"{"name":"golden-ws2"}"#,
        ),
    );
    message_vector(
        v("w2.response"),
        &response(
            1,
            Code::Ok,
            br#"{"name":"golden-ws2","users":["127.0.0.1:40005"]}"#,
        ),
    );
}

#[test]
fn w3_text_handshake_and_text_packets() {
    let wire = hex(v("w3.server"));
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

    let request_wire = hex(v("w3.request"));
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
    let response_wire = hex(v("w3.response"));
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
    text_vector(&hex(v("text.ping")), &Packet::Ping);
    text_vector(&hex(v("text.pong")), &Packet::Pong);
    text_vector(
        &hex(v("text.not_found")),
        &response(1, Code::NotFound, b"NotFound"),
    );
    text_vector(&hex(v("text.close")), &Packet::close(Code::Ok, "bye"));
    text_vector(
        &hex(v("text.notify")),
        &notify(Action::Id(action_id(USER_JOIN)), b"{}"),
    );
    text_vector(
        &hex(v("text.method_name")),
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
    let handshake = hex(v("t1.client"));
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
    let head = hex(chunk("go_run1.request", 0));
    let payload = hex(chunk("go_run1.request", 1));
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
    let head = hex(chunk("go_run1.response", 0));
    let payload = hex(chunk("go_run1.response", 1));
    assert_eq!(
        decode_chunks([&head[..], &payload[..]]),
        std::slice::from_ref(&expected_response)
    );
    assert_eq!(
        encode_stream(&[expected_response]),
        [head, payload].concat()
    );

    stream_vector(
        v("go_run1.close"),
        &[Packet::close(Code::NetworkError, "read packet header: EOF")],
    );
}

#[test]
fn go_client_trace_run_2_whole_packets() {
    stream_vector(
        v("go_run2.request"),
        &[request(
            1,
            Action::Id(action_id(JOIN_ROOM)),
            Header::new(),
            b"\x0a\x0agolden-go2",
        )],
    );
    stream_vector(
        v("go_run2.response"),
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
    let mut buffer = BytesMut::from(&hex(v("eof_inside_a_packet"))[..]);
    assert_eq!(codec.decode(&mut buffer).unwrap(), None);
    let error = codec.decode_eof(&mut buffer).unwrap_err();
    assert_eq!(error.code(), Code::NetworkError);
}

// ---------------------------------------------------------------------------------------------
// Robustness probes F1–F4: what the Go server gets wrong, we must get right
// ---------------------------------------------------------------------------------------------

#[test]
fn f1_split_inside_the_payload() {
    let chunk0 = hex(chunk("f1.request", 0));
    let chunk1 = hex(chunk("f1.request", 1));
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
    let answer = hex(v("f1.answer"));
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
    let chunk0 = hex(chunk("f2.request", 0));
    let chunk1 = hex(chunk("f2.request", 1));
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
        v("f2.close"),
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
    let mut payload = hex(large_request("payload_prefix"));
    payload.resize(4 + 300_000, b'x');
    assert_eq!(payload.len(), 300_004);
    let expected = request(6, Action::Id(action_id(JOIN_ROOM)), Header::new(), &payload);
    let wire = encode_stream(std::slice::from_ref(&expected));
    assert_eq!(wire.len(), 300_014);
    assert_eq!(&wire[..14], &hex(large_request("head"))[..]);

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
    let wire = hex(large_request("limit_prefix"));
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
    let wire = hex(v("t1.client"));
    let mut buffer = BytesMut::from(&hex(v("t1.client"))[..2]);
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
    let answer = hex(v("f4.server"));
    assert_server_handshake_decodes(
        &answer,
        &ServerHandshake::refuse(&Status::protocol_error(
            "handshake magic ST\0\0\0 is not STMP",
        )),
    );
}

// ---------------------------------------------------------------------------------------------
// The shared vectors' descriptions, which other implementations test against
// ---------------------------------------------------------------------------------------------

#[test]
fn every_shared_vector_matches_its_description() {
    let mut checked = 0;
    for Described { name, wire, entry } in described("stream") {
        let packets: Vec<Packet> = entry["packets"]
            .as_array()
            .unwrap()
            .iter()
            .map(vectors::packet)
            .collect();
        assert_eq!(encode_stream(&packets), wire, "{name}");
        assert_eq!(decode_chunks([&wire[..]]), packets, "{name}");
        checked += 1;
    }
    for entry in vectors::section("stream_chunks") {
        let chunks: Vec<Vec<u8>> = entry["chunks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|chunk| hex(chunk.as_str().unwrap()))
            .collect();
        let packets: Vec<Packet> = entry["packets"]
            .as_array()
            .unwrap()
            .iter()
            .map(vectors::packet)
            .collect();
        assert_eq!(
            encode_stream(&packets),
            chunks.concat(),
            "{}",
            entry["name"]
        );
        assert_eq!(decode_chunks(chunks.iter().map(Vec::as_slice)), packets);
        checked += 1;
    }
    for Described { wire, entry, .. } in described("message") {
        message_vector(&hex_string(&wire), &vectors::packet(&entry["packet"]));
        checked += 1;
    }
    for Described { wire, entry, .. } in described("text") {
        text_vector(&wire, &vectors::packet(&entry["packet"]));
        checked += 1;
    }
    for Described { wire, entry, .. } in described("client_handshakes") {
        let (major, minor) = entry["version"].as_str().unwrap().split_once('.').unwrap();
        let expected = ClientHandshake {
            version: Version {
                major: major.parse().unwrap(),
                minor: minor.parse().unwrap(),
            },
            header: vectors::header(&entry["header"]),
            message: entry["message"].as_str().unwrap().to_owned(),
        };
        client_handshake_vector(&hex_string(&wire), &expected);
        checked += 1;
    }
    for Described { wire, entry, .. } in described("server_handshakes") {
        server_handshake_vector(&hex_string(&wire), &described_server_handshake(entry));
        checked += 1;
    }
    for Described { name, wire, entry } in described("server_handshakes_text") {
        let expected = described_server_handshake(entry);
        assert_eq!(
            ServerHandshake::decode_text(&wire, 1 << 20).unwrap(),
            expected,
            "{name}"
        );
        let mut out = BytesMut::new();
        expected.encode_text(&mut out);
        assert_eq!(&out[..], &wire[..], "{name}");
        checked += 1;
    }
    for Described { name, wire, entry } in described("invalid_client_handshakes") {
        let error = ClientHandshake::decode(&mut BytesMut::from(&wire[..]), 1 << 20).unwrap_err();
        assert_described_error(name, &error, entry);
        checked += 1;
    }
    for Described { name, wire, entry } in described("invalid_packets") {
        for form in entry["forms"].as_array().unwrap() {
            let error = match form.as_str().unwrap() {
                "stream" => PacketCodec::new()
                    .decode(&mut BytesMut::from(&wire[..]))
                    .unwrap_err(),
                "message" => {
                    Packet::decode_message(Bytes::from(wire.clone()), 1 << 20).unwrap_err()
                }
                other => panic!("{name}: unknown form {other}"),
            };
            assert_described_error(name, &error, entry);
        }
        checked += 1;
    }
    for Described { name, wire, .. } in described("truncated_stream") {
        let mut codec = PacketCodec::new();
        let mut buffer = BytesMut::from(&wire[..]);
        assert_eq!(codec.decode(&mut buffer).unwrap(), None, "{name}");
        assert_eq!(
            codec.decode_eof(&mut buffer).unwrap_err().code(),
            Code::NetworkError
        );
        checked += 1;
    }
    let total: usize = [
        "stream",
        "stream_chunks",
        "message",
        "text",
        "client_handshakes",
        "server_handshakes",
        "server_handshakes_text",
        "invalid_client_handshakes",
        "invalid_packets",
        "truncated_stream",
    ]
    .iter()
    .map(|section| vectors::section(section).len())
    .sum();
    assert_eq!(checked, total);
    assert!(checked > 50, "only {checked} vectors");
}

fn described_server_handshake(entry: &serde_json::Value) -> ServerHandshake {
    ServerHandshake {
        status: vectors::status(entry, "status"),
        header: vectors::header(&entry["header"]),
        message: entry["message"].as_str().unwrap().to_owned(),
    }
}

fn assert_described_error(name: &str, error: &Status, entry: &serde_json::Value) {
    assert_eq!(
        error.code(),
        vectors::status(entry, "code"),
        "{name}: {error}"
    );
    for part in entry["contains"].as_array().unwrap() {
        let part = part.as_str().unwrap();
        assert!(
            error.message().contains(part),
            "{name}: {error} lacks {part:?}"
        );
    }
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x} ")).collect()
}

#[test]
fn the_large_request_is_described_exactly() {
    let mut payload = hex(large_request("payload_prefix"));
    let fill = u8::from_str_radix(large_request("fill_byte"), 16).unwrap();
    let doc = vectors::section_value("large_request");
    payload.resize(doc["payload_len"].as_u64().unwrap() as usize, fill);
    let expected = request(
        doc["mid"].as_u64().unwrap() as u16,
        Action::Id(doc["action"].as_u64().unwrap()),
        Header::new(),
        &payload,
    );
    let wire = encode_stream(std::slice::from_ref(&expected));
    assert_eq!(wire.len() as u64, doc["stream_len"].as_u64().unwrap());
    assert_eq!(&wire[..14], &hex(large_request("head"))[..]);
}
