//! Hostile peers against the connection engine: pipelined floods, members that never read,
//! peers that never read or close, full event queues, and faulty user code on the close path.
//! Raw sockets speak STMP where a well-behaved client cannot attack.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::*;
use stmp::wire::{ClientHandshake, Header, Notify, Packet, PacketCodec, Request, ServerHandshake};
use stmp::{Client, Code, Codec, Conn, Context, Server, SlowConsumer, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::codec::Decoder;

/// Connects and handshakes by hand; `recv_buffer` shrinks the socket's receive buffer, so a
/// peer that does not read is found out without megabytes of kernel buffers in between.
async fn raw(addr: SocketAddr, recv_buffer: Option<u32>) -> (TcpStream, BytesMut) {
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    let mut stream = within(socket.connect(addr)).await.unwrap();
    let mut hello = BytesMut::new();
    ClientHandshake::new(Header::new()).encode(&mut hello);
    stream.write_all(&hello).await.unwrap();
    let mut buffer = BytesMut::new();
    loop {
        if ServerHandshake::decode(&mut buffer, 1 << 10)
            .unwrap()
            .is_some()
        {
            return (stream, buffer);
        }
        assert_ne!(within(stream.read_buf(&mut buffer)).await.unwrap(), 0);
    }
}

/// The next packet from a raw socket, reading at most `chunk` bytes at a time; `None` at EOF.
async fn next_packet<R: AsyncRead + Unpin>(
    reader: &mut R,
    buffer: &mut BytesMut,
    chunk: usize,
) -> Option<Packet> {
    let mut codec = PacketCodec::new();
    loop {
        if let Some(packet) = codec.decode(buffer).unwrap() {
            return Some(packet);
        }
        let mut bytes = vec![0; chunk];
        match within(reader.read(&mut bytes)).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&bytes[..n]),
        }
    }
}

fn request(mid: u16, method: &stmp::Method, input: &Echo) -> Packet {
    Packet::Request(Request {
        mid,
        action: method.wire_action(),
        header: Header::new(),
        payload: Codec::PROTOBUF.encode(input).unwrap(),
    })
}

fn encode(packets: impl IntoIterator<Item = Packet>) -> BytesMut {
    let mut out = BytesMut::new();
    for packet in packets {
        packet.encode_stream(&mut out);
    }
    out
}

/// The server side of the connection whose client end is `client`.
fn server_side(server: &Server, client: SocketAddr) -> Conn {
    server
        .conns()
        .to_vec()
        .into_iter()
        .find(|conn| conn.remote_addr() == Some(client))
        .expect("the connection is served")
}

// One thread: the writer runs only when the read loop lets it, so a send queue of a few
// answers fills for sure.
#[tokio::test]
async fn every_pipelined_request_is_answered_by_a_slow_reader() {
    let server = Server::builder()
        .max_concurrent_requests(8)
        .send_queue_bytes(1 << 10)
        .build();
    register(server.router());
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let (stream, mut buffer) = raw(addr, Some(4 << 10)).await;
    let (mut reader, mut writer) = stream.into_split();
    const REQUESTS: u16 = 20_000;
    // Handlers that wait a little hold their slots, so most requests are refused.
    let input = Echo {
        text: "x".into(),
        delay_ms: 1,
    };
    let flood = encode((1..=REQUESTS).map(|mid| request(mid, &ECHO, &input)));
    let writing = tokio::spawn(async move {
        writer.write_all(&flood).await.unwrap();
        writer
    });
    let mut answers = vec![0u32; usize::from(REQUESTS) + 1];
    let (mut ok, mut refused, mut answered) = (0, 0, 0);
    let reading = async {
        while answered < REQUESTS {
            // Small reads: the peer is slow, the server's send queue fills.
            match next_packet(&mut reader, &mut buffer, 512).await {
                Some(Packet::Response(response)) => {
                    answers[usize::from(response.mid)] += 1;
                    answered += 1;
                    match response.status {
                        Code::Ok => ok += 1,
                        Code::TooManyRequests => refused += 1,
                        other => panic!("unexpected status {other:?}"),
                    }
                }
                Some(Packet::Ping) => {}
                other => panic!("the connection ended before every answer: {other:?}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), reading)
        .await
        .unwrap_or_else(|_| panic!("only {answered} of {REQUESTS} requests answered"));
    assert!(
        answers[1..].iter().all(|&n| n == 1),
        "one answer per request"
    );
    assert!(ok > 0 && refused > 0, "{ok} ok, {refused} refused");
    assert_eq!(server.stats().requests_rejected, refused);
    drop(within(writing).await.unwrap());
}

/// Members of one server: two clients that count their events, and a raw socket that never
/// reads. Broadcasts go out two at a time, each round once the good members have had the
/// last, until the non-reader's send queue overflows.
struct Flood {
    server: Server,
    slow: Conn,
    rounds: u64,
    received: [Arc<AtomicU64>; 2],
    _clients: Vec<Client>,
    _slow_socket: TcpStream,
}

const EVENTS_PER_ROUND: u64 = 2;

impl Flood {
    async fn start(policy: SlowConsumer) -> Flood {
        let server = Server::builder()
            .send_queue_bytes(64 << 10)
            .slow_consumer(policy)
            .build();
        let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
        let mut clients = Vec::new();
        let received = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
        for count in &received {
            let client = within(Client::connect(&format!("tcp://{addr}")))
                .await
                .unwrap();
            let count = count.clone();
            let _ = client
                .router()
                .listen(&TICK, move |_ctx: Context, _event: Echo| {
                    count.fetch_add(1, Ordering::Relaxed);
                    async {}
                });
            clients.push(client);
        }
        let (socket, _) = raw(addr, Some(4 << 10)).await;
        until(|| server.conns().len() == 3).await;
        let slow = server_side(&server, socket.local_addr().unwrap());
        Flood {
            server,
            slow,
            rounds: 0,
            received,
            _clients: clients,
            _slow_socket: socket,
        }
    }

    /// One round: events to everyone, then wait for the good members to have them.
    ///
    /// A writer gives its queue budget back only after its write returns, which can be after
    /// the reader already has the bytes: a good member may still be charged for the previous
    /// round. Two rounds (32 KiB) fit in the 64 KiB budget with room to spare, so only the
    /// member that never reads can run out.
    async fn round(&mut self) {
        let event = Echo {
            text: "e".repeat(8 << 10),
            delay_ms: 0,
        };
        for _ in 0..EVENTS_PER_ROUND {
            stmp::broadcast(self.server.conns(), &TICK, &event).unwrap();
        }
        self.rounds += 1;
        let expected = self.rounds * EVENTS_PER_ROUND;
        let received = self.received.clone();
        until(|| {
            received
                .iter()
                .all(|count| count.load(Ordering::Relaxed) == expected)
        })
        .await;
    }

    /// Rounds until the slow member has had an event dropped (at most 32 MiB of events).
    async fn until_dropped(&mut self) {
        while self.slow.events_dropped() == 0 {
            assert!(self.rounds < 2048, "the non-reader never fell behind");
            self.round().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_never_reads_is_disconnected_and_the_others_get_every_event() {
    let mut flood = Flood::start(SlowConsumer::Disconnect { max_dropped: 1 }).await;
    flood.until_dropped().await;
    let status = within(flood.slow.closed()).await;
    assert_eq!(status.code(), Code::TooManyRequests, "{status}");
    assert!(status.message().contains("slow consumer"), "{status}");
    until(|| flood.server.conns().len() == 2).await;
    // The others go on hearing everything.
    for _ in 0..8 {
        flood.round().await;
    }
    let stats = flood.server.stats();
    assert_eq!(stats.slow_consumers_closed, 1, "{stats:?}");
    assert!(stats.events_dropped >= 1, "{stats:?}");
    assert_eq!(
        stats.events_dropped,
        flood.slow.events_dropped(),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_drop_events_a_member_that_never_reads_stays_and_its_drops_are_counted() {
    let mut flood = Flood::start(SlowConsumer::DropEvents).await;
    flood.until_dropped().await;
    // The writer may still push part of its queue into the kernel's send buffer between rounds,
    // so not every round drops; but a member that never reads keeps losing events, and stays.
    let first_drop_round = flood.rounds;
    while flood.slow.events_dropped() < 8 * EVENTS_PER_ROUND {
        assert!(
            flood.rounds < first_drop_round + 2048,
            "drops stopped at {}",
            flood.slow.events_dropped()
        );
        flood.round().await;
        assert!(
            !flood.slow.is_closed(),
            "closed after round {}",
            flood.rounds
        );
    }
    for _ in 0..8 {
        flood.round().await;
    }
    assert!(!flood.slow.is_closed());
    let stats = flood.server.stats();
    assert_eq!(stats.slow_consumers_closed, 0, "{stats:?}");
    assert!(
        flood.slow.events_dropped() >= 8 * EVENTS_PER_ROUND,
        "{stats:?}"
    );
    assert_eq!(
        stats.events_dropped,
        flood.slow.events_dropped(),
        "{stats:?}"
    );
    assert_eq!(stats.connections, 3);
}

/// Whether the server still has a file descriptor for the TCP connection `server` ↔ `client`
/// (an orphaned socket, still sending its last bytes, has inode 0 in `/proc/net/tcp`).
#[cfg(target_os = "linux")]
fn server_socket_open(server: SocketAddr, client: SocketAddr) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port =
        |address: &str| u16::from_str_radix(address.rsplit(':').next().unwrap(), 16).unwrap();
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        port(fields[1]) == server.port() && port(fields[2]) == client.port() && fields[9] != "0"
    })
}

/// Sends requests whose answers (1 MiB each) are far more than a peer that never reads can
/// take in; returns the raw socket.
async fn flood_a_non_reader(addr: SocketAddr) -> TcpStream {
    let (mut socket, _) = raw(addr, Some(4 << 10)).await;
    let big = Echo {
        text: "b".repeat(1 << 20),
        delay_ms: 0,
    };
    let requests = encode((1..=12).map(|mid| request(mid, &ECHO, &big)));
    within(socket.write_all(&requests)).await.unwrap();
    socket
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_read_timeout_the_socket_is_closed_though_the_peer_never_reads() {
    let server = Server::builder()
        .read_timeout(Duration::from_millis(400))
        .write_stall_timeout(Duration::from_secs(600))
        .build();
    register(server.router());
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let socket = flood_a_non_reader(addr).await;
    let client = socket.local_addr().unwrap();
    until(|| server.conns().len() == 1).await;
    let conn = server_side(&server, client);
    assert!(server_socket_open(addr, client));
    let status = within(conn.closed()).await;
    assert!(status.message().contains("no packet received"), "{status}");
    until(|| server.conns().is_empty()).await;
    assert!(
        !server_socket_open(addr, client),
        "the connection is gone from the server, its socket must be too"
    );
    drop(socket);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_reads_nothing_is_cut_off_by_the_write_stall_timeout() {
    let server = Server::builder()
        .write_stall_timeout(Duration::from_millis(300))
        .build();
    register(server.router());
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let socket = flood_a_non_reader(addr).await;
    until(|| server.conns().len() == 1).await;
    let conn = server_side(&server, socket.local_addr().unwrap());
    let status = within(conn.closed()).await;
    assert_eq!(status.code(), Code::NetworkError, "{status}");
    assert!(status.message().contains("read nothing"), "{status}");
    until(|| server.conns().is_empty()).await;
    assert_eq!(server.stats().write_stalls, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_event_queue_leaves_heartbeat_and_close_working() {
    let server = Server::builder()
        .read_timeout(Duration::from_millis(400))
        .build();
    let release = Arc::new(tokio::sync::Notify::new());
    let heard = Arc::new(AtomicUsize::new(0));
    let _listener = server.router().listen(&TICK, {
        let release = release.clone();
        let heard = heard.clone();
        move |_ctx: Context, _event: Echo| {
            let release = release.clone();
            heard.fetch_add(1, Ordering::Relaxed);
            async move { release.notified().await }
        }
    });
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let (mut socket, mut buffer) = raw(addr, None).await;
    // The first listener blocks; more notifies than the event queue holds follow.
    let event = Codec::PROTOBUF.encode(&echo("tick")).unwrap();
    let notifies = encode((0..1100).map(|_| {
        Packet::Notify(Notify {
            action: TICK.wire_action(),
            header: Header::new(),
            payload: event.clone(),
        })
    }));
    within(socket.write_all(&notifies)).await.unwrap();
    until(|| heard.load(Ordering::Relaxed) == 1).await;
    let conn = server_side(&server, socket.local_addr().unwrap());
    // The heartbeat still runs: Pings come, and the connection is not timed out for the
    // silence of its own making.
    for _ in 0..2 {
        assert_eq!(
            next_packet(&mut socket, &mut buffer, 4096).await,
            Some(Packet::Ping)
        );
    }
    assert!(!conn.is_closed());
    // Close still works, and does not wait for the listeners still queued.
    conn.close(Code::BadRequest, "enough");
    let Some(Packet::Close(close)) = next_packet(&mut socket, &mut buffer, 4096).await else {
        panic!("a Close was expected");
    };
    assert_eq!(
        (close.status, close.reason.as_str()),
        (Code::BadRequest, "enough")
    );
    until(|| server.conns().is_empty()).await;
    assert_eq!(
        heard.load(Ordering::Relaxed),
        1,
        "listeners are still blocked"
    );
    release.notify_waiters();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_close_callbacks_still_let_the_connection_go() {
    let others_ran = Arc::new(AtomicBool::new(false));
    let server = Server::builder()
        .authenticate({
            let others_ran = others_ran.clone();
            move |conn| {
                let others_ran = others_ran.clone();
                async move {
                    conn.on_close(|_| panic!("close callback bug"));
                    conn.on_close(move |_| others_ran.store(true, Ordering::Relaxed));
                    Ok(())
                }
            }
        })
        .on_close(|_, _| panic!("close hook bug"))
        .build();
    register(server.router());
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let url = format!("tcp://{addr}");
    for _ in 0..2 {
        let client = within(Client::connect(&url)).await.unwrap();
        until(|| server.conns().len() == 1).await;
        within(client.close()).await;
        until(|| server.conns().is_empty()).await;
        assert!(others_ran.swap(false, Ordering::Relaxed));
    }
    // The server goes on serving.
    let client = within(Client::connect(&url)).await.unwrap();
    let ok: Echo = within(client.call(&ECHO, &echo("still here")))
        .await
        .unwrap();
    assert_eq!(ok.text, "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_handler_that_panics_before_its_future_fails_only_its_call() {
    let server = Server::builder().build();
    register(server.router());
    const BROKEN: stmp::Method = stmp::Method::new("test.Echo.Broken", "test.Echo", "test.Echo");
    server.router().route_raw(
        BROKEN.name,
        BROKEN.action,
        |_ctx: Context, _payload: Bytes| {
            if true {
                panic!("bug before the future");
            }
            async { Ok::<Bytes, Status>(Bytes::new()) }
        },
    );
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let client = within(Client::connect(&format!("tcp://{addr}")))
        .await
        .unwrap();
    let conn = client.conn().unwrap();
    for _ in 0..2 {
        let error =
            within(conn.request_raw(BROKEN.wire_action(), Header::new(), Bytes::new(), None))
                .await
                .unwrap_err();
        assert_eq!(error.code(), Code::InternalServerError, "{error}");
    }
    let ok: Echo = within(conn.call(&ECHO, &echo("after"))).await.unwrap();
    assert_eq!(ok.text, "after");
    assert!(
        client.conn().unwrap() == conn,
        "the panic must not cost the connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_in_flight_budget_are_shed_on_every_connection() {
    let server = Server::builder().max_in_flight_bytes(64 << 10).build();
    register(server.router());
    let Gate {
        release,
        mut entered,
    } = route_block(server.router());
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let url = format!("tcp://{addr}");
    let big = echo(&"p".repeat(20 << 10));
    let mut held = Vec::new();
    for _ in 0..3 {
        let client = within(Client::connect(&url)).await.unwrap();
        let big = big.clone();
        held.push(tokio::spawn(async move {
            client.call::<_, Echo>(&BLOCK, &big).await
        }));
        within(entered.recv()).await.unwrap();
    }
    assert!(server.stats().in_flight_bytes >= 60 << 10);
    // A fourth connection: the server as a whole holds its budget.
    let other = within(Client::connect(&url)).await.unwrap();
    let shed = within(other.call::<_, Echo>(&BLOCK, &big))
        .await
        .unwrap_err();
    assert_eq!(shed.code(), Code::TooManyRequests, "{shed}");
    assert!(shed.message().contains("in flight"), "{shed}");
    // Small requests still fit.
    let ok: Echo = within(other.call(&ECHO, &echo("small"))).await.unwrap();
    assert_eq!(ok.text, "small");
    assert_eq!(server.stats().requests_shed, 1);
    release.notify_waiters();
    for call in held {
        assert_eq!(within(call).await.unwrap().unwrap(), big);
    }
    until(|| server.stats().in_flight_bytes == 0).await;
}

/// How often another task runs while one connection's read loop works through a burst of
/// packets that are all already in its buffer.
#[tokio::test]
async fn a_burst_of_buffered_packets_does_not_starve_other_tasks() {
    let server = Server::builder().build();
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let (socket, mut buffer) = raw(addr, None).await;
    let (mut reader, mut writer) = socket.into_split();
    const PONGS: usize = 1 << 20;
    let mut burst = vec![0x90u8; PONGS];
    // A Ping at the end: its Pong says the burst has been read.
    burst.push(0x80);
    let writing = tokio::spawn(async move {
        writer.write_all(&burst).await.unwrap();
        writer
    });
    let done = Arc::new(AtomicBool::new(false));
    let turns = Arc::new(AtomicUsize::new(0));
    let probe = tokio::spawn({
        let (done, turns) = (done.clone(), turns.clone());
        async move {
            while !done.load(Ordering::Relaxed) {
                turns.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        }
    });
    assert_eq!(
        next_packet(&mut reader, &mut buffer, 64).await,
        Some(Packet::Pong)
    );
    done.store(true, Ordering::Relaxed);
    within(probe).await.unwrap();
    drop(within(writing).await.unwrap());
    let turns = turns.load(Ordering::Relaxed);
    // One turn per 64 packets at least, less a wide margin.
    assert!(turns >= PONGS / 64 / 4, "the probe ran {turns} times");
}

/// Requests the engine has already read are taken one after another without polling what it
/// waits on; a close asked for meanwhile is still heard before the next of them, and nothing
/// is handled or written after the Close.
#[tokio::test]
async fn a_close_asked_for_during_a_burst_of_read_requests_is_heard_before_the_next() {
    let server = Server::builder().build();
    let handled = Arc::new(AtomicUsize::new(0));
    server.router().route(&ECHO, {
        let handled = handled.clone();
        move |ctx: Context, input: Echo| {
            handled.fetch_add(1, Ordering::Relaxed);
            ctx.conn().close(Code::ServerShutdown, "enough");
            async move { Ok::<_, Status>(input) }
        }
    });
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let (mut socket, mut buffer) = raw(addr, None).await;
    const BURST: u16 = 200;
    let burst = encode((1..=BURST).map(|mid| request(mid, &ECHO, &echo("hi"))));
    socket.write_all(&burst).await.unwrap();
    let mut answers = 0;
    let close = loop {
        match next_packet(&mut socket, &mut buffer, 1 << 16).await {
            Some(Packet::Response(_)) => answers += 1,
            Some(Packet::Close(close)) => break close,
            other => panic!("neither an answer nor the Close: {other:?}"),
        }
    };
    assert_eq!(close.status, Code::ServerShutdown);
    // The first request asks for the close, and the Close follows its answer. What was read
    // with it is not handled: nothing would answer it.
    assert_eq!(answers, 1);
    assert_eq!(handled.load(Ordering::Relaxed), 1);
    // Nothing follows the Close; the server ends the connection after its grace.
    let after = next_packet(&mut socket, &mut buffer, 1 << 16).await;
    assert_eq!(after, None, "after the Close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_cannot_take_the_whole_in_flight_budget() {
    let server = Server::builder()
        .max_in_flight_bytes(1 << 20)
        .max_conn_in_flight_bytes(48 << 10)
        .build();
    register(server.router());
    let Gate {
        release,
        mut entered,
    } = route_block(server.router());
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let url = format!("tcp://{addr}");
    let big = echo(&"p".repeat(20 << 10));
    let hog = within(Client::connect(&url)).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..2 {
        let (hog, big) = (hog.clone(), big.clone());
        held.push(tokio::spawn(async move {
            hog.call::<_, Echo>(&BLOCK, &big).await
        }));
        within(entered.recv()).await.unwrap();
    }
    let shed = within(hog.call::<_, Echo>(&BLOCK, &big)).await.unwrap_err();
    assert_eq!(shed.code(), Code::TooManyRequests, "{shed}");
    assert!(shed.message().contains("this connection"), "{shed}");
    // Another connection still has room.
    let other = within(Client::connect(&url)).await.unwrap();
    let waiting = tokio::spawn(async move { other.call::<_, Echo>(&BLOCK, &big).await });
    within(entered.recv()).await.unwrap();
    release.notify_waiters();
    within(waiting).await.unwrap().unwrap();
    for call in held {
        within(call).await.unwrap().unwrap();
    }
    assert_eq!(server.stats().requests_shed, 1);
    until(|| server.stats().in_flight_bytes == 0).await;
}

/// Calls to a peer that reads nothing: the first fills the socket, the others wait for room
/// in the send queue. Each still ends at its own deadline, and the table keeps none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_waiting_for_room_to_be_sent_end_at_their_deadline() {
    let server = Server::builder().send_queue_bytes(1 << 10).build();
    register(server.router());
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let (stream, _buffer) = raw(addr, Some(4 << 10)).await;
    let client = stream.local_addr().unwrap();
    until(|| server.conns().len() == 1).await;
    let conn = server_side(&server, client);
    let big = Echo {
        text: "x".repeat(8 << 20),
        delay_ms: 0,
    };
    let options = stmp::CallOptions::new().timeout(Duration::from_millis(200));
    let calls = (0..3).map(|_| conn.call_with::<_, Echo>(&ECHO, &big, options.clone()));
    for ended in within(futures_util::future::join_all(calls)).await {
        assert_eq!(ended.unwrap_err().code(), Code::RequestTimeout);
    }
    assert_eq!(conn.pending_calls(), 0);
    drop(stream);
}
