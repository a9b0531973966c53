//! Byte-level compatibility with stmp-go 1.0: the byte vectors captured from a running Go
//! server and client, replayed on raw sockets against our server, and our client's bytes compared with the Go
//! client's.

mod common;

use common::*;
use stmp::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|byte| u8::from_str_radix(byte, 16).expect("hex"))
        .collect()
}

const T1_CLIENT: &str = "53 54 4d 50 10 1b 41 63 63 65 70 74 3a 61 70 70 6c 69 63 61 74 69 6f 6e 2f 70 72 6f 74 6f 62 75 66 00";
const T1_SERVER: &str = "53 54 4d 50 00 21 43 6f 6e 74 65 6e 74 2d 54 79 70 65 3a 61 70 70 6c 69 63 61 74 69 6f 6e 2f 70 72 6f 74 6f 62 75 66 00";

/// Reads exactly `len` bytes.
async fn read_exact(stream: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    within(stream.read_exact(&mut out)).await.expect("read");
    out
}

/// Reads until the peer closes.
async fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = within(stream.read_to_end(&mut out)).await;
    out
}

async fn server() -> (Server, std::net::SocketAddr) {
    // T15/T16 need gzip, which servers only offer when asked to.
    let server = Server::builder().gzip(true).build();
    register(server.router());
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    (server, addr)
}

/// Connects with the Go client's handshake (T1) and checks the server's answer byte for byte.
async fn handshaken(addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&hex(T1_CLIENT)).await.unwrap();
    assert_eq!(read_exact(&mut stream, 40).await, hex(T1_SERVER));
    stream
}

#[tokio::test]
async fn t1_to_t8_requests_pings_and_closes() {
    let (_server, addr) = server().await;
    let mut stream = handshaken(addr).await;
    let local = stream.local_addr().unwrap().to_string();

    // T2: JoinRoom, mid 1. The users field holds our address, as the Go example's does.
    stream
        .write_all(&hex("a8 01 00 f7 91 d9 19 08 0a 06 67 6f 6c 64 65 6e"))
        .await
        .unwrap();
    let mut expected = hex("c8 01 00 00");
    let mut body = hex("0a 06 67 6f 6c 64 65 6e 12");
    body.push(local.len() as u8);
    body.extend_from_slice(local.as_bytes());
    expected.push(body.len() as u8);
    expected.extend_from_slice(&body);
    assert_eq!(read_exact(&mut stream, expected.len()).await, expected);

    // T3: Ping → Pong.
    stream.write_all(&[0x80]).await.unwrap();
    assert_eq!(read_exact(&mut stream, 1).await, [0x90]);

    // T4: the same request with a string action: routed (stmp-go answers NotFound, a bug).
    stream
        .write_all(&hex("aa 02 00 2e 73 74 6d 70 2e 65 78 61 6d 70 6c 65 73 2e 71 75 69 63 6b 5f 73 74 61 72 74 2e 52 6f 6f 6d 53 65 72 76 69 63 65 2e 4a 6f 69 6e 52 6f 6f 6d 08 0a 06 67 6f 6c 64 65 6e"))
        .await
        .unwrap();
    expected[1] = 0x02;
    assert_eq!(read_exact(&mut stream, expected.len()).await, expected);

    // T5: unknown action 0x1234 → NotFound (status 0x22) with a message.
    stream
        .write_all(&hex("a8 03 00 b4 24 08 0a 06 67 6f 6c 64 65 6e"))
        .await
        .unwrap();
    let head = read_exact(&mut stream, 5).await;
    assert_eq!(&head[..4], hex("c8 03 00 22"));
    let message = read_exact(&mut stream, head[4] as usize).await;
    assert!(String::from_utf8(message).unwrap().contains("0x1234"));

    // T6: header and no payload, mid 0x0104 → a response for mid 0x0104 with an empty name.
    stream
        .write_all(&hex(
            "a4 04 01 f7 91 d9 19 0d 78 2d 6b 3a 76 31 3b 78 2d 6b 3a 76 32",
        ))
        .await
        .unwrap();
    let mut t6 = hex("c8 04 01 00");
    t6.push(2 + local.len() as u8);
    t6.push(0x12);
    t6.push(local.len() as u8);
    t6.extend_from_slice(local.as_bytes());
    assert_eq!(read_exact(&mut stream, t6.len()).await, t6);

    // T6b: a Notify for JoinRoom is handled but never answered (stmp-go answers with mid 0);
    // the Ping after it proves nothing was sent in between.
    stream
        .write_all(&hex("b8 f7 91 d9 19 0a 0a 08 67 6f 6c 64 65 6e 2d 6e"))
        .await
        .unwrap();
    stream.write_all(&[0x80]).await.unwrap();
    assert_eq!(read_exact(&mut stream, 1).await, [0x90]);

    // T9: Close "bye" is echoed, then the server ends the connection.
    stream.write_all(&hex("d8 00 03 62 79 65")).await.unwrap();
    assert_eq!(read_to_end(&mut stream).await, hex("d8 00 03 62 79 65"));
}

#[tokio::test]
async fn t10_bad_head_gets_close_protocol_error() {
    let (server, addr) = server().await;
    let mut stream = handshaken(addr).await;
    stream.write_all(&[0x00]).await.unwrap();
    let reply = read_to_end(&mut stream).await;
    assert_eq!(&reply[..2], [0xd8, 0x03], "{reply:x?}");
    assert_eq!(reply[2] as usize, reply.len() - 3);
    assert!(String::from_utf8_lossy(&reply[3..]).contains("FIN"));
    // The server keeps serving others.
    let mut other = handshaken(addr).await;
    other.write_all(&[0x80]).await.unwrap();
    assert_eq!(read_exact(&mut other, 1).await, [0x90]);
    drop(server);
}

#[tokio::test]
async fn handshake_refusals_match_stmp_go() {
    let (_server, addr) = server().await;
    for (client, server) in [
        // T11: unsupported Accept.
        (
            "53 54 4d 50 10 16 41 63 63 65 70 74 3a 61 70 70 6c 69 63 61 74 69 6f 6e 2f 78 6d 6c 00",
            "53 54 4d 50 20 00 38 6e 6f 20 73 75 70 70 6f 72 74 65 64 20 63 6f 6e 74 65 6e 74 2d 74 79 70 65 20 69 6e 20 63 61 6e 64 69 64 61 74 65 73 3a 20 61 70 70 6c 69 63 61 74 69 6f 6e 2f 78 6d 6c",
        ),
        // T12: version 2.0.
        (
            "53 54 4d 50 20 1b 41 63 63 65 70 74 3a 61 70 70 6c 69 63 61 74 69 6f 6e 2f 70 72 6f 74 6f 62 75 66 00",
            "53 54 4d 50 20 00 21 75 6e 73 75 70 70 6f 72 74 65 64 20 70 72 6f 74 6f 63 6f 6c 20 76 65 72 73 69 6f 6e 3a 20 32 2e 30",
        ),
        // T13: an escaped ';' in the Accept list; json is picked.
        (
            "53 54 4d 50 10 27 41 63 63 65 70 74 3a 74 65 78 74 2f 78 2c 20 61 70 70 6c 69 63 61 74 69 6f 6e 2f 6a 73 6f 6e 25 33 42 71 3d 30 2e 39 00",
            "53 54 4d 50 00 1d 43 6f 6e 74 65 6e 74 2d 54 79 70 65 3a 61 70 70 6c 69 63 61 74 69 6f 6e 2f 6a 73 6f 6e 00",
        ),
        // T14: a client message is accepted.
        (
            "53 54 4d 50 10 1b 41 63 63 65 70 74 3a 61 70 70 6c 69 63 61 74 69 6f 6e 2f 70 72 6f 74 6f 62 75 66 05 68 65 6c 6c 6f",
            T1_SERVER,
        ),
    ] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(&hex(client)).await.unwrap();
        let expected = hex(server);
        assert_eq!(read_exact(&mut stream, expected.len()).await, expected);
    }

    // T13b: an unescaped ';' breaks the header: ProtocolError, with a message saying why.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(&hex(
            "53 54 4d 50 10 13 41 63 63 65 70 74 3a 74 65 78 74 2f 78 3b 71 3d 30 2e 39 00",
        ))
        .await
        .unwrap();
    let reply = read_to_end(&mut stream).await;
    assert_eq!(&reply[..6], hex("53 54 4d 50 03 00"), "{reply:x?}");
    assert_eq!(reply[6] as usize, reply.len() - 7);
    assert!(String::from_utf8_lossy(&reply[7..]).contains("q=0.9"));

    // T15: gzip asked and granted; header order is not significant.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(&hex("53 54 4d 50 10 30 41 63 63 65 70 74 3a 61 70 70 6c 69 63 61 74 69 6f 6e 2f 70 72 6f 74 6f 62 75 66 3b 41 63 63 65 70 74 2d 45 6e 63 6f 64 69 6e 67 3a 67 7a 69 70 00"))
        .await
        .unwrap();
    let reply = read_exact(&mut stream, 62).await;
    let mut buffer = bytes::BytesMut::from(&reply[..]);
    let hello = stmp::wire::ServerHandshake::decode(&mut buffer, 1024)
        .unwrap()
        .unwrap();
    assert_eq!(hello.header.get("Content-Encoding"), Some("gzip"));
    assert_eq!(
        hello.header.get("Content-Type"),
        Some("application/protobuf")
    );

    // F4: a handshake split after "ST" still works (stmp-go fails on it).
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let hello = hex(T1_CLIENT);
    stream.write_all(&hello[..2]).await.unwrap();
    stream.flush().await.unwrap();
    tokio::task::yield_now().await;
    stream.write_all(&hello[2..]).await.unwrap();
    assert_eq!(read_exact(&mut stream, 40).await, hex(T1_SERVER));
}

#[tokio::test]
async fn t16_gzip_stream_from_python_zlib() {
    let (_server, addr) = server().await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(&hex("53 54 4d 50 10 30 41 63 63 65 70 74 3a 61 70 70 6c 69 63 61 74 69 6f 6e 2f 70 72 6f 74 6f 62 75 66 3b 41 63 63 65 70 74 2d 45 6e 63 6f 64 69 6e 67 3a 67 7a 69 70 00"))
        .await
        .unwrap();
    read_exact(&mut stream, 62).await;
    // JoinRoom "golden-gz" as Python's zlib (wbits=31, Z_SYNC_FLUSH) compressed it.
    stream
        .write_all(&hex("1f 8b 08 00 00 00 00 00 00 03 5a c1 c8 f0 7d e2 4d 49 6e 2e ce f4 fc 9c 94 d4 3c dd f4 2a 00 00 00 00 ff ff"))
        .await
        .unwrap();
    // The answer is a gzip stream too; decompress what has arrived so far.
    let mut compressed = Vec::new();
    let mut inflater = flate2::Decompress::new(false);
    let mut plain = Vec::with_capacity(4096);
    let expected_name = b"golden-gz";
    let mut header_skipped = false;
    while !plain
        .windows(expected_name.len())
        .any(|w| w == expected_name)
    {
        let mut chunk = [0u8; 256];
        let read = within(stream.read(&mut chunk)).await.unwrap();
        assert!(read > 0, "server closed");
        compressed.extend_from_slice(&chunk[..read]);
        if !header_skipped && compressed.len() >= 10 {
            assert_eq!(&compressed[..3], [0x1f, 0x8b, 0x08]);
            compressed.drain(..10);
            header_skipped = true;
        }
        if header_skipped {
            let before = inflater.total_in();
            inflater
                .decompress_vec(&compressed, &mut plain, flate2::FlushDecompress::Sync)
                .unwrap();
            compressed.drain(..(inflater.total_in() - before) as usize);
        }
    }
    assert_eq!(&plain[..4], hex("c8 01 00 00"));
    let mut buffer = bytes::BytesMut::from(&plain[..]);
    let decoded =
        tokio_util::codec::Decoder::decode(&mut stmp::wire::PacketCodec::new(), &mut buffer)
            .unwrap()
            .unwrap();
    let stmp::wire::Packet::Response(response) = decoded else {
        panic!("not a response")
    };
    let room: RoomModel = prost::Message::decode(response.payload).unwrap();
    assert_eq!(room.name, "golden-gz");
}

#[tokio::test]
async fn f1_f2_f3_fragmented_input_is_reassembled() {
    let (_server, addr) = server().await;
    let mut stream = handshaken(addr).await;
    stream.set_nodelay(true).unwrap();
    // F1: split inside the payload; F2: split inside the mid.
    for (first, second, mid) in [
        ("a8 05 00 f7 91 d9 19 08 0a 06 67", "6f 6c 64 65 6e", 5u16),
        ("a8 01", "02 f7 91 d9 19 08 0a 06 67 6f 6c 64 65 6e", 0x0201),
    ] {
        stream.write_all(&hex(first)).await.unwrap();
        stream.flush().await.unwrap();
        stream.write_all(&hex(second)).await.unwrap();
        let head = read_exact(&mut stream, 5).await;
        assert_eq!(head[0], 0xc8);
        assert_eq!(u16::from_le_bytes([head[1], head[2]]), mid);
        assert_eq!(head[3], 0);
        let payload = read_exact(&mut stream, head[4] as usize).await;
        let room: RoomModel = prost::Message::decode(&payload[..]).unwrap();
        assert_eq!(room.name, "golden");
    }
    // F3: one 300 KB request in one write.
    let name = "x".repeat(300_000);
    let input = prost::Message::encode_to_vec(&JoinRoomInput { name: name.clone() });
    let mut request = hex("a8 06 00 f7 91 d9 19");
    prost::encoding::encode_varint(input.len() as u64, &mut request);
    request.extend_from_slice(&input);
    stream.write_all(&request).await.unwrap();
    let mut buffer = bytes::BytesMut::new();
    let mut codec = stmp::wire::PacketCodec::new();
    let response = loop {
        if let Some(packet) = tokio_util::codec::Decoder::decode(&mut codec, &mut buffer).unwrap() {
            break packet;
        }
        let read = within(stream.read_buf(&mut buffer)).await.unwrap();
        assert!(read > 0);
    };
    let stmp::wire::Packet::Response(response) = response else {
        panic!("not a response")
    };
    assert_eq!(response.mid, 6);
    let room: RoomModel = prost::Message::decode(response.payload).unwrap();
    assert_eq!(room.name, name);
}

/// Our client sends what the Go client sends (see "Go client trace"): the same handshake, and
/// the same request bytes. History tracking is off: it adds one handshake entry
/// (`stmp-history:1`, an extension a Go server ignores), the only byte that differs.
#[tokio::test]
async fn our_client_bytes_match_the_go_client() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        assert_eq!(read_exact(&mut stream, 34).await, hex(T1_CLIENT));
        stream.write_all(&hex(T1_SERVER)).await.unwrap();
        let request = read_exact(&mut stream, 20).await;
        assert_eq!(
            request,
            hex("a8 01 00 f7 91 d9 19 0c 0a 0a 67 6f 6c 64 65 6e 2d 67 6f 32")
        );
        // Answer as the Go server did.
        stream
            .write_all(&hex("c8 01 00 00 1d 0a 0a 67 6f 6c 64 65 6e 2d 67 6f 32 12 0f 31 32 37 2e 30 2e 30 2e 31 3a 34 38 32 38 36"))
            .await
            .unwrap();
        read_to_end(&mut stream).await
    });
    let client = within(
        stmp::Client::builder()
            .no_reconnect()
            .history(false)
            .connect(&format!("tcp://{addr}")),
    )
    .await
    .unwrap();
    let room: RoomModel = within(client.call(
        &JOIN_ROOM,
        &JoinRoomInput {
            name: "golden-go2".into(),
        },
    ))
    .await
    .unwrap();
    assert_eq!(room.users, ["127.0.0.1:48286"]);
    within(client.close()).await;
    // After the request, the client's Close (status Ok) is all the peer reads.
    let rest = within(peer).await.unwrap();
    assert_eq!(&rest[..2], [0xd8, 0x00], "{rest:x?}");
}
