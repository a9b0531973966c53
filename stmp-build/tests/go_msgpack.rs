//! msgpack with stmp-go: generated messages read the Go encoding, and `Codec::MSGPACK_GO`
//! writes it, so a Go client asking for `application/msgpack` gets its answers.
//!
//! The Go bytes below were not captured from a running Go program (no msgpack vectors were
//! recorded); they are built by hand from how stmp-go encodes: its msgpack codec calls
//! `msgpack.Marshal` of github.com/vmihailenco/msgpack v4.0.4 on the protoc-gen-gogo structs of
//! the quick-start proto. That encoder writes a struct as a map of every exported field in
//! declaration order, keyed by the Go field name (no `msgpack` tags on these structs):
//! `Name`, `Users`, then the generated `XXX_NoUnkeyedLiteral struct{}` (an empty map, `80`),
//! `XXX_unrecognized []byte` (nil, `c0`) and `XXX_sizecache int32` (always 5 bytes: `d2` and
//! four zero bytes); a nil slice is nil (`c0`), strings are fixstr (`a0 | len`).

use std::time::Duration;

use stmp::codec::Codec;
use stmp::{Context, Server, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

#[allow(dead_code)]
mod generated {
    include!("snapshots/quick_start/stmp.examples.quick_start.include.rs");
}

use generated::room_service::{RoomService, RoomServiceServer};
use generated::*;

/// A fixstr: `a0 | len`, then the bytes.
fn fixstr(text: &str) -> Vec<u8> {
    assert!(text.len() < 32);
    let mut out = vec![0xa0 | text.len() as u8];
    out.extend_from_slice(text.as_bytes());
    out
}

/// The three bookkeeping fields every gogo-generated struct ends with, as msgpack map entries.
fn go_xxx_fields() -> Vec<u8> {
    let mut out = fixstr("XXX_NoUnkeyedLiteral");
    out.push(0x80);
    out.extend(fixstr("XXX_unrecognized"));
    out.push(0xc0);
    out.extend(fixstr("XXX_sizecache"));
    out.extend([0xd2, 0, 0, 0, 0]);
    out
}

/// `JoinRoomInput{Name: name}` as stmp-go encodes it.
fn go_join_room_input(name: &str) -> Vec<u8> {
    let mut out = vec![0x84];
    out.extend(fixstr("Name"));
    out.extend(fixstr(name));
    out.extend(go_xxx_fields());
    out
}

/// `RoomModel{Name: name, Users: users}` as stmp-go encodes it (`None`: a nil slice).
fn go_room_model(name: &str, users: Option<&[&str]>) -> Vec<u8> {
    let mut out = vec![0x85];
    out.extend(fixstr("Name"));
    out.extend(fixstr(name));
    out.extend(fixstr("Users"));
    match users {
        None => out.push(0xc0),
        Some(users) => {
            out.push(0x90 | users.len() as u8);
            for user in users {
                out.extend(fixstr(user));
            }
        }
    }
    out.extend(go_xxx_fields());
    out
}

#[test]
fn generated_messages_read_go_msgpack() {
    for codec in [Codec::MSGPACK, Codec::MSGPACK_GO] {
        let input: JoinRoomInput = codec.decode(&go_join_room_input("lobby")).unwrap();
        assert_eq!(input.name, "lobby", "{codec:?}");
        let room: RoomModel = codec
            .decode(&go_room_model("lobby", Some(&["127.0.0.1:40005", "bob"])))
            .unwrap();
        assert_eq!(room.name, "lobby");
        assert_eq!(room.users, ["127.0.0.1:40005", "bob"]);
        // An empty Go slice is nil on the wire.
        let empty: RoomModel = codec.decode(&go_room_model("void", None)).unwrap();
        assert_eq!(
            empty,
            RoomModel {
                name: "void".into(),
                users: vec![]
            }
        );
    }
}

#[test]
fn msgpack_go_writes_go_field_names() {
    let room = RoomModel {
        name: "lobby".into(),
        users: vec!["bob".into()],
    };
    // What Go's decoder looks up: "Name" and "Users" (it matches keys exactly). The XXX_ fields
    // carry nothing, so they are left out; Go leaves absent fields at their zero value.
    let mut expected = vec![0x82];
    expected.extend(fixstr("Name"));
    expected.extend(fixstr("lobby"));
    expected.extend(fixstr("Users"));
    expected.push(0x91);
    expected.extend(fixstr("bob"));
    assert_eq!(&Codec::MSGPACK_GO.encode(&room).unwrap()[..], &expected[..]);
    // The plain codec writes proto names, which a Go peer would skip as unknown.
    assert_ne!(&Codec::MSGPACK.encode(&room).unwrap()[..], &expected[..]);
    // And stmp peers read the Go spelling back.
    let back: RoomModel = Codec::MSGPACK
        .decode(&Codec::MSGPACK_GO.encode(&room).unwrap())
        .unwrap();
    assert_eq!(back, room);
}

struct Rooms;

impl RoomService for Rooms {
    async fn join_room(&self, _ctx: Context, input: JoinRoomInput) -> Result<RoomModel, Status> {
        Ok(RoomModel {
            users: vec![format!("{}-member", input.name)],
            name: input.name,
        })
    }

    async fn exit_room(
        &self,
        _ctx: Context,
        _input: ExitRoomInput,
    ) -> Result<packages::google::protobuf::Empty, Status> {
        Ok(Default::default())
    }
}

/// A uvarint, as the wire's lengths are written.
fn uvarint(mut value: usize, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[tokio::test]
async fn a_go_client_with_msgpack_gets_its_answer() {
    let server = Server::builder()
        .codec(Codec::MSGPACK_GO)
        .add_service(RoomServiceServer::new(Rooms))
        .build();
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let work = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        // The Go client's handshake, asking for msgpack.
        let accept = b"Accept:application/msgpack";
        let mut hello = b"STMP\x10".to_vec();
        uvarint(accept.len(), &mut hello);
        hello.extend_from_slice(accept);
        hello.push(0);
        stream.write_all(&hello).await.unwrap();
        let content_type = b"Content-Type:application/msgpack";
        let mut answer = b"STMP\x00".to_vec();
        uvarint(content_type.len(), &mut answer);
        answer.extend_from_slice(content_type);
        answer.push(0);
        let mut got = vec![0; answer.len()];
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(got, answer);

        // JoinRoom (mid 1, action 0x033648F7) with the Go encoding of its input.
        let payload = go_join_room_input("lobby");
        let mut request = vec![0xa8, 0x01, 0x00, 0xf7, 0x91, 0xd9, 0x19];
        uvarint(payload.len(), &mut request);
        request.extend_from_slice(&payload);
        stream.write_all(&request).await.unwrap();

        // An Ok response whose payload a Go decoder fills its RoomModel from.
        let mut body = vec![0x82];
        body.extend(fixstr("Name"));
        body.extend(fixstr("lobby"));
        body.extend(fixstr("Users"));
        body.push(0x91);
        body.extend(fixstr("lobby-member"));
        let mut response = vec![0xc8, 0x01, 0x00, 0x00];
        uvarint(body.len(), &mut response);
        response.extend_from_slice(&body);
        let mut got = vec![0; response.len()];
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(got, response);
    };
    timeout(Duration::from_secs(20), work)
        .await
        .expect("timed out");
    server.shutdown(Duration::from_secs(1)).await;
}
