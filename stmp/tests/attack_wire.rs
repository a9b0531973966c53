//! Hostile input at the wire and I/O layer, on loopback: header amplification, gzip bombs and
//! many connections holding large partial packets. Each attack is refused with a Close that
//! says why, and the server goes on serving other clients.

mod common;

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use common::*;
use futures_util::future::select_all;
use prost::Message as _;
use stmp::wire::{Action, ClientHandshake, Header, Packet, PacketCodec, Request, ServerHandshake};
use stmp::{CallOptions, Code, PacketFormat, Server, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

/// A client that speaks the wire format by hand.
struct RawPeer {
    socket: TcpStream,
    buffer: BytesMut,
    codec: PacketCodec,
}

impl RawPeer {
    /// Connects and sends a handshake with `header`; returns the peer and the server's answer.
    async fn connect(addr: std::net::SocketAddr, header: Header) -> (RawPeer, ServerHandshake) {
        let mut socket = within(TcpStream::connect(addr)).await.unwrap();
        let mut hello = BytesMut::new();
        ClientHandshake::new(header).encode(&mut hello);
        socket.write_all(&hello).await.unwrap();
        let mut peer = RawPeer {
            socket,
            buffer: BytesMut::new(),
            codec: PacketCodec::new(),
        };
        let answer = within(async {
            loop {
                if let Some(answer) = ServerHandshake::decode(&mut peer.buffer, 1 << 16).unwrap() {
                    return answer;
                }
                assert_ne!(peer.socket.read_buf(&mut peer.buffer).await.unwrap(), 0);
            }
        })
        .await;
        (peer, answer)
    }

    /// The next packet, or `None` at the end of the stream.
    async fn next(&mut self) -> Option<Packet> {
        within(async {
            loop {
                if let Some(packet) = self.codec.decode(&mut self.buffer).unwrap() {
                    return Some(packet);
                }
                if self.socket.read_buf(&mut self.buffer).await.ok()? == 0 {
                    return None;
                }
            }
        })
        .await
    }

    /// The status of the server's Close; any other packet is a failure.
    async fn closed(&mut self) -> Status {
        match self.next().await {
            Some(Packet::Close(close)) => Status::new(close.status, close.reason),
            other => panic!("expected a Close, got {other:?}"),
        }
    }
}

fn echo_request(mid: u16, header: Header, text: &str) -> Packet {
    Packet::Request(Request {
        mid,
        action: Action::Method(ECHO.name.to_owned()),
        header,
        payload: Bytes::from(echo(text).encode_to_vec()),
    })
}

fn stream_bytes(packet: &Packet) -> BytesMut {
    let mut wire = BytesMut::new();
    packet.encode_stream(&mut wire);
    wire
}

/// A header of `n` empty entries: 3 bytes on the wire each, far more once decoded.
fn empty_entries(n: usize) -> Header {
    (0..n).map(|_| ("a", "")).collect()
}

async fn tcp_server(builder: stmp::ServerBuilder) -> (Server, std::net::SocketAddr) {
    let server = builder.build();
    register(server.router());
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    (server, addr)
}

/// Another client's call, served as usual.
async fn still_serves(addr: std::net::SocketAddr) {
    let client = tcp_client(addr).await;
    let back: Echo = within(client.call(&ECHO, &echo("still here")))
        .await
        .unwrap();
    assert_eq!(back.text, "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_of_100k_entries_is_refused_and_others_are_served() {
    let (_server, addr) = tcp_server(Server::builder()).await;
    let (mut peer, answer) = RawPeer::connect(addr, Header::new()).await;
    assert_eq!(answer.status, Code::Ok);
    // 300 KB on the wire, well within the 16 MiB packet limit.
    let request = stream_bytes(&echo_request(1, empty_entries(100_000), "amplified"));
    peer.socket.write_all(&request).await.unwrap();
    let status = peer.closed().await;
    assert_eq!(status.code(), Code::RequestEntityTooLarge, "{status}");
    assert!(
        status.message().contains("header of 299999 bytes"),
        "{status}"
    );
    still_serves(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_header_entries_are_refused_in_every_packet_form() {
    let server = Server::builder().max_header_entries(64).build();
    let addrs = serve_all(&server).await;
    let cases = [
        ("tcp", PacketFormat::Binary),
        ("ws", PacketFormat::Binary),
        ("ws", PacketFormat::Text),
    ];
    for (scheme, format) in cases {
        let client = within(
            addrs
                .client()
                .no_reconnect()
                .packet_format(format)
                .connect(&addrs.url(scheme)),
        )
        .await
        .unwrap();
        let conn = client.conn().unwrap();
        let within_limit = CallOptions {
            header: empty_entries(64),
            ..CallOptions::default()
        };
        let back: Echo = within(conn.call_with(&ECHO, &echo("64"), within_limit))
            .await
            .unwrap();
        assert_eq!(back.text, "64");

        let over = CallOptions {
            header: empty_entries(65),
            ..CallOptions::default()
        };
        let refused = within(conn.call_with::<_, Echo>(&ECHO, &echo("65"), over)).await;
        assert!(refused.is_err(), "{scheme} {format:?}: {refused:?}");
        let closed = within(conn.closed()).await;
        assert_eq!(
            closed.code(),
            Code::RequestEntityTooLarge,
            "{scheme} {format:?}: {closed}"
        );
        assert!(closed.message().contains("65 entries"), "{closed}");
    }
    still_serves(addrs.tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_header_over_the_limits_is_refused() {
    let (_server, addr) = tcp_server(Server::builder()).await;
    // 1,000 entries in 3 KB: within the handshake size limit, over the entry limit.
    let (_peer, answer) = RawPeer::connect(addr, empty_entries(1_000)).await;
    assert_eq!(answer.status, Code::RequestEntityTooLarge, "{answer:?}");
    assert!(answer.message.contains("1000 entries"), "{answer:?}");

    let long: Header = [("token", "t".repeat(20_000))].into_iter().collect();
    let (_peer, answer) = RawPeer::connect(addr, long).await;
    assert_eq!(answer.status, Code::RequestEntityTooLarge, "{answer:?}");
    assert!(
        answer.message.contains("header of 20006 bytes"),
        "{answer:?}"
    );
    still_serves(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_handshake_query_over_the_limits_is_refused() {
    let server = Server::builder().build();
    let addrs = serve_all(&server).await;
    let query = "a=&".repeat(1_000);
    let url = format!("ws://{}/stmp?{query}", addrs.ws);
    let tcp = within(TcpStream::connect(addrs.ws)).await.unwrap();
    let (mut socket, _) = within(tokio_tungstenite::client_async(url.as_str(), tcp))
        .await
        .unwrap();
    let first = within(futures_util::StreamExt::next(&mut socket))
        .await
        .unwrap()
        .unwrap();
    let answer = ServerHandshake::decode_message(&first.into_data(), 1 << 16).unwrap();
    assert_eq!(answer.status, Code::RequestEntityTooLarge, "{answer:?}");
    still_serves(addrs.tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_frames_that_break_the_protocol_are_closed_with_a_status() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    let server = Server::builder().build();
    let addrs = serve_all(&server).await;
    // An unmasked frame from a client, and a masked one that announces 2^40 bytes.
    let cases: [(&[u8], Code, &str); 2] = [
        (&[0x82, 0x01, 0x00], Code::ProtocolError, "without a mask"),
        (
            &[0x82, 0xFF, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4],
            Code::RequestEntityTooLarge,
            "over the limit",
        ),
    ];
    for (frame, code, reason) in cases {
        let url = format!("ws://{}/stmp", addrs.ws);
        let tcp = within(TcpStream::connect(addrs.ws)).await.unwrap();
        let (mut socket, _) = within(tokio_tungstenite::client_async(url.as_str(), tcp))
            .await
            .unwrap();
        let hello = within(socket.next()).await.unwrap().unwrap();
        let hello = ServerHandshake::decode_message(&hello.into_data(), 1 << 16).unwrap();
        assert_eq!(hello.status, Code::Ok);
        // Past tungstenite's framing, straight onto the socket.
        within(socket.get_mut().write_all(frame)).await.unwrap();
        let mut close = None;
        while let Some(message) = within(socket.next()).await {
            match message {
                Ok(Message::Binary(bytes)) => match Packet::decode_message(bytes, 1 << 16) {
                    Ok(Packet::Close(packet)) => close = Some(packet),
                    other => panic!("{other:?}"),
                },
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(other) => panic!("{other:?}"),
            }
        }
        let close = close.expect("a Close packet before the end");
        assert_eq!(close.status, code, "{close:?}");
        assert!(close.reason.contains(reason), "{close:?}");
    }
    still_serves(addrs.tcp).await;
}

/// Reads the server's gzip stream until its Close.
async fn close_in_gzip(mut reader: tokio::net::tcp::OwnedReadHalf, mut buffer: BytesMut) -> Status {
    let mut inflater = flate2::write::GzDecoder::new(Vec::new());
    inflater.write_all(&buffer.split()).unwrap();
    let mut codec = PacketCodec::new();
    let mut plain = BytesMut::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        inflater.flush().unwrap();
        plain.extend_from_slice(&std::mem::take(inflater.get_mut()));
        if let Some(packet) = codec.decode(&mut plain).unwrap() {
            let Packet::Close(close) = packet else {
                panic!("unexpected {packet:?}")
            };
            return Status::new(close.status, close.reason);
        }
        match reader.read(&mut chunk).await {
            Ok(0) => panic!("the connection ended without a Close"),
            Err(error) => panic!("the connection ended without a Close: {error}"),
            Ok(n) => inflater.write_all(&chunk[..n]).unwrap(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_is_closed_after_a_bounded_inflation() {
    // Tighter than the defaults (64x, 1 MiB) so that a debug build decodes the burst quickly.
    let (max_ratio, burst) = (16, 64 << 10);
    let (server, addr) = tcp_server(
        Server::builder()
            .gzip(true)
            .gzip_inflation_limit(max_ratio, burst),
    )
    .await;
    let decoded = Arc::new(AtomicUsize::new(0));
    let counter = decoded.clone();
    let _listening = server.router().listen(&TICK, move |_ctx, _event: Echo| {
        counter.fetch_add(1, Ordering::Relaxed);
        async {}
    });
    let gzip: Header = [("Accept-Encoding", "gzip")].into_iter().collect();
    let (peer, answer) = RawPeer::connect(addr, gzip).await;
    assert_eq!(answer.header.get("Content-Encoding"), Some("gzip"));
    let (reader, mut writer) = peer.socket.into_split();

    // Up to 256 MiB of identical notifies, ~1000x smaller once compressed.
    let notify = stream_bytes(&Packet::Notify(stmp::wire::Notify {
        action: TICK.wire_action(),
        header: Header::new(),
        payload: Bytes::new(),
    }));
    let chunk = notify.repeat((256 << 10) / notify.len());
    let stop = tokio_util::sync::CancellationToken::new();
    let stop_sending = stop.clone();
    let sender = tokio::spawn(async move {
        let mut deflater = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let mut sent = 0usize;
        for _ in 0..1024 {
            if stop_sending.is_cancelled() {
                break;
            }
            deflater.write_all(&chunk).unwrap();
            deflater.flush().unwrap();
            let compressed = std::mem::take(deflater.get_mut());
            if writer.write_all(&compressed).await.is_err() {
                break;
            }
            sent += compressed.len();
        }
        sent
    });
    let close = within(close_in_gzip(reader, peer.buffer)).await;
    stop.cancel();
    assert_eq!(close.code(), Code::RequestEntityTooLarge, "{close}");
    assert!(close.message().contains("gzip"), "{close}");
    let sent = within(sender).await.unwrap();
    // Every notify read before the Close has been handed to the listener once the
    // connection is gone.
    until(|| server.conns().is_empty()).await;
    let inflated = decoded.load(Ordering::Relaxed) * notify.len();
    let bound = burst + max_ratio as usize * sent;
    assert!(
        inflated <= bound,
        "{inflated} bytes decoded from {sent} compressed bytes (bound {bound})"
    );
    still_serves(addr).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_partial_packets_share_one_budget() {
    let budget = 1 << 20;
    let (_server, addr) = tcp_server(Server::builder().max_buffered_bytes(budget)).await;
    // Four requests of ~300 KiB: three fit in the budget at once, the fourth does not.
    let request = stream_bytes(&echo_request(1, Header::new(), &"x".repeat(300 << 10)));
    assert!(3 * request.len() <= budget && 4 * request.len() > budget);
    const HEAD: usize = 24;
    let mut peers = Vec::new();
    for _ in 0..4 {
        let (mut peer, answer) = RawPeer::connect(addr, Header::new()).await;
        assert_eq!(answer.status, Code::Ok);
        // Only the start of the packet: up to its announced size and a few payload bytes.
        peer.socket.write_all(&request[..HEAD]).await.unwrap();
        peers.push(peer);
    }

    // Whichever the server reads last is refused.
    let (refused, index) = {
        let waiting = peers.iter_mut().map(|peer| Box::pin(peer.next()));
        let (first, index, _) = within(select_all(waiting)).await;
        (first, index)
    };
    let Some(Packet::Close(close)) = refused else {
        panic!("expected a Close, got {refused:?}")
    };
    assert_eq!(close.status, Code::TooManyRequests, "{close:?}");
    assert!(close.reason.contains("busy"), "{close:?}");
    peers.remove(index);

    // Small packets never need the budget, even while it is spent.
    still_serves(addr).await;

    // The three that fit are served once their bytes arrive; completing gives the budget back.
    for peer in &mut peers {
        peer.socket.write_all(&request[HEAD..]).await.unwrap();
        let Some(Packet::Response(response)) = peer.next().await else {
            panic!("no response")
        };
        assert_eq!(response.status, Code::Ok);
    }
    let whole = stream_bytes(&echo_request(2, Header::new(), &"y".repeat(900 << 10)));
    assert!(whole.len() <= budget);
    peers[0].socket.write_all(&whole).await.unwrap();
    let Some(Packet::Response(response)) = peers[0].next().await else {
        panic!("no response")
    };
    assert_eq!(response.status, Code::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_their_order_alone_or_together() {
    let (_server, addr) = tcp_server(Server::builder()).await;
    let (mut peer, _) = RawPeer::connect(addr, Header::new()).await;
    let request = |mid: u16, delay_ms: u64| {
        let input = Echo {
            text: mid.to_string(),
            delay_ms,
        };
        Packet::Request(Request {
            mid,
            action: ECHO.wire_action(),
            header: Header::new(),
            payload: input.encode_to_vec().into(),
        })
    };
    let answered = |peer_packet: Option<Packet>| match peer_packet {
        Some(Packet::Response(response)) => {
            assert_eq!(response.status, Code::Ok);
            let output = Echo::decode(response.payload).unwrap();
            assert_eq!(output.text, response.mid.to_string());
            response.mid
        }
        other => panic!("expected a response, got {other:?}"),
    };
    let mut mid = 1u16;
    for _ in 0..20 {
        // A lone request: answered by itself.
        let mut bytes = BytesMut::new();
        request(mid, 0).encode_stream(&mut bytes);
        peer.socket.write_all(&bytes).await.unwrap();
        assert_eq!(answered(peer.next().await), mid);
        mid += 1;
        // 32 in one write, one of which waits: the others are answered in their order.
        let mut bytes = BytesMut::new();
        let slow = mid + 5;
        let burst: Vec<u16> = (mid..mid + 32).collect();
        for &m in &burst {
            request(m, if m == slow { 10 } else { 0 }).encode_stream(&mut bytes);
        }
        peer.socket.write_all(&bytes).await.unwrap();
        let mut got = Vec::new();
        for _ in 0..burst.len() {
            got.push(answered(peer.next().await));
        }
        let fast: Vec<u16> = got.iter().copied().filter(|&m| m != slow).collect();
        let expected: Vec<u16> = burst.iter().copied().filter(|&m| m != slow).collect();
        assert_eq!(fast, expected);
        assert!(got.contains(&slow));
        mid += 32;
    }
}
