//! The connection engine: concurrency, id wrap, errors, limits and the heartbeat.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::*;
use stmp::wire::{Header, Packet, PacketCodec, Request};
use stmp::{Client, Code, Server, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Decoder;

async fn tcp_server(builder: stmp::ServerBuilder) -> (Server, String) {
    let server = builder.build();
    register(server.router());
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    (server, format!("tcp://{addr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_calls_on_one_connection() {
    let (_server, url) = tcp_server(Server::builder().max_concurrent_requests(10_000)).await;
    let client = within(Client::connect(&url)).await.unwrap();
    let calls = (0..10_000).map(|i| {
        let client = client.clone();
        tokio::spawn(async move {
            let input = echo(&i.to_string());
            let output: Echo = client.call(&ECHO, &input).await?;
            Ok::<_, Status>((i, output))
        })
    });
    let results = within(futures_util::future::join_all(calls)).await;
    assert_eq!(results.len(), 10_000);
    for result in results {
        let (i, output) = result.unwrap().unwrap();
        assert_eq!(output.text, i.to_string());
    }
    assert_eq!(client.conn().unwrap().pending_calls(), 0);
}

/// A connection's writer task starts only once a packet waits for it: one call at a time is
/// written by its senders (the caller, then the handler, also one that waited first), so an
/// idle or quiet connection runs no writer task on either side.
// One thread: the tasks counted are this runtime's, and none runs while they are counted.
/// Tasks alive on this test's runtime.
/// A peer that has said hello over plain TCP, with what it read past the server's answer.
async fn handshaken(addr: &str) -> (tokio::net::TcpStream, BytesMut) {
    let mut peer = within(tokio::net::TcpStream::connect(addr)).await.unwrap();
    let (mut read_half, mut write_half) = peer.split();
    let read = say_hello(&mut write_half, &mut read_half).await;
    (peer, read)
}

#[tokio::test]
async fn a_quiet_connection_runs_no_writer_task_until_a_packet_waits_for_one() {
    const CLIENTS: usize = 8;
    let (_server, url) = tcp_server(Server::builder()).await;
    let before = alive_tasks();
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let client = within(Client::connect(&url)).await.unwrap();
        for delay_ms in [0, 0, 1] {
            // With a delay the handler waits, and answers from a task of its own.
            let input = Echo {
                delay_ms,
                ..echo(&i.to_string())
            };
            let echoed: Echo = within(client.call(&ECHO, &input)).await.unwrap();
            assert_eq!(echoed.text, i.to_string());
        }
        clients.push(client);
    }
    let quiet = alive_tasks() - before;
    // The server's engine, and the client's with the task that dials it again should the
    // connection drop: three. A writer task on each side would make five.
    assert!(
        quiet <= 3 * CLIENTS,
        "{quiet} tasks for {CLIENTS} quiet connections"
    );

    // 64 calls at once: all but the first queue behind it, and the writer task starts.
    let client = clients[0].clone();
    let calls = (0..64).map(|i| {
        let client = client.clone();
        async move {
            let echoed: Echo = client.call(&ECHO, &echo(&i.to_string())).await?;
            Ok::<_, Status>((i, echoed))
        }
    });
    for result in within(futures_util::future::join_all(calls)).await {
        let (i, echoed) = result.unwrap();
        assert_eq!(echoed.text, i.to_string());
    }
    let busy = alive_tasks() - before;
    assert!(
        busy > quiet,
        "{busy} tasks after 64 calls at once, {quiet} before"
    );

    // Quiet connections close as others do: their writer starts to send the Close.
    for client in &clients {
        within(client.close()).await;
    }
    until(|| alive_tasks() == before).await;
}

/// The heartbeat does not start a writer task either: the engine writes its Pong (and its
/// Ping) itself, as a handler's lone answer is.
#[tokio::test]
async fn a_heartbeat_starts_no_writer_task() {
    let (_server, url) = tcp_server(Server::builder()).await;
    let addr = url.trim_start_matches("tcp://");
    let before = alive_tasks();
    let (mut peer, mut read) = handshaken(addr).await;
    for _ in 0..3 {
        // A Ping, one byte; the Pong is one byte back.
        peer.write_all(&[0x80]).await.unwrap();
        while read.is_empty() {
            assert_ne!(within(peer.read_buf(&mut read)).await.unwrap(), 0);
        }
        assert_eq!(read.split().as_ref(), [0x90]);
    }
    // The connection's engine, and no writer task beside it.
    assert_eq!(alive_tasks() - before, 1);
}

/// Nor does a burst of requests read at once: their answers are held until the burst is
/// handled, and the engine writes them together.
#[tokio::test]
async fn a_burst_read_at_once_is_answered_by_the_engine_without_a_writer_task() {
    const BURST: usize = 32;
    let (_server, url) = tcp_server(Server::builder()).await;
    let addr = url.trim_start_matches("tcp://");
    let before = alive_tasks();
    let (mut peer, mut read) = handshaken(addr).await;
    for _ in 0..3 {
        // Pings in one write, each answered with a Pong.
        peer.write_all(&[0x80; BURST]).await.unwrap();
        while read.len() < BURST {
            assert_ne!(within(peer.read_buf(&mut read)).await.unwrap(), 0);
        }
        assert_eq!(read.split().as_ref(), [0x90; BURST]);
    }
    assert_eq!(
        alive_tasks() - before,
        1,
        "a writer task answered the burst"
    );
}

/// After a burst of two packets or more the engine looks for more a few times, letting the
/// ready tasks run in between, before it waits: a peer that answers back at once (here on the
/// same thread) finds it still looking, and the runtime does not park between the bursts. A
/// lone packet is not followed by more: its engine waits at once.
#[tokio::test]
async fn after_a_burst_the_engine_looks_for_more_before_it_waits() {
    const ROUNDS: u64 = 50;
    let (_server, url) = tcp_server(Server::builder()).await;
    let (mut peer, mut read) = handshaken(url.trim_start_matches("tcp://")).await;
    let parks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .worker_park_count(0)
    };
    let mut pings_and_pongs = async |pings: usize| {
        let before = parks();
        for _ in 0..ROUNDS {
            peer.write_all(&vec![0x80; pings]).await.unwrap();
            while read.len() < pings {
                assert_ne!(within(peer.read_buf(&mut read)).await.unwrap(), 0);
            }
            assert_eq!(read.split().as_ref(), vec![0x90; pings]);
        }
        parks() - before
    };
    let lone = pings_and_pongs(1).await;
    let bursts = pings_and_pongs(2).await;
    assert!(lone >= ROUNDS, "{lone} parks for {ROUNDS} lone pings");
    assert!(
        bursts < ROUNDS / 5,
        "{bursts} parks for {ROUNDS} bursts of two pings ({lone} for lone ones)"
    );
}

/// A long burst's answers are not all held to its end: once 16 are held they are written, so
/// a peer with many calls in flight gets work while the rest of the burst is handled. Here the
/// burst's 17th packet is a request whose handler does not return until the peer has read
/// the first 16 answers; held to the burst's end, they would never come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_bursts_answers_are_written_sixteen_at_a_time() {
    const WRITTEN_AT: usize = 16;
    let server = Server::builder().build();
    let (read_tx, read_rx) = std::sync::mpsc::channel::<()>();
    let read_rx = std::sync::Mutex::new(read_rx);
    server
        .router()
        .route(&BLOCK, move |_ctx: stmp::Context, input: Echo| {
            // On the engine's own turn, before the handler's future is made: nothing else in
            // the burst moves until the peer has said it read what was written.
            let told = read_rx.lock().unwrap().recv_timeout(LIMIT);
            async move {
                told.map_err(|_| Status::internal("the peer never read the first answers"))?;
                Ok::<_, Status>(input)
            }
        });
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap().to_string();
    let (peer, mut read) = handshaken(&addr).await;

    let mut burst = BytesMut::new();
    for _ in 0..WRITTEN_AT {
        Packet::Ping.encode_stream(&mut burst);
    }
    let input = echo("after the pongs");
    Packet::Request(Request {
        mid: 1,
        action: BLOCK.wire_action(),
        header: Header::new(),
        payload: stmp::Codec::PROTOBUF.encode(&input).unwrap(),
    })
    .encode_stream(&mut burst);
    // The peer reads in a thread of its own: a worker of the server's runtime is held by the
    // handler, and the test should not depend on which one drives the sockets meanwhile.
    let mut peer = peer.into_std().unwrap();
    peer.set_nonblocking(false).unwrap();
    peer.set_read_timeout(Some(LIMIT)).unwrap();
    let reading = std::thread::spawn(move || {
        use std::io::{Read, Write};
        // One write: the server reads the burst at once.
        peer.write_all(&burst).unwrap();
        let mut codec = PacketCodec::new();
        let mut next = || loop {
            if let Some(packet) = codec.decode(&mut read).unwrap() {
                return packet;
            }
            let mut chunk = [0; 256];
            let n = peer.read(&mut chunk).expect("read within the limit");
            assert_ne!(n, 0, "the server closed");
            read.extend_from_slice(&chunk[..n]);
        };
        for pong in 0..WRITTEN_AT {
            assert_eq!(next(), Packet::Pong, "answer {pong}");
        }
        read_tx.send(()).unwrap();
        next()
    });
    let answer = within(tokio::task::spawn_blocking(move || reading.join()))
        .await
        .unwrap()
        .unwrap();
    let Packet::Response(response) = answer else {
        panic!("the request's answer, not {answer:?}");
    };
    assert_eq!((response.mid, response.status), (1, Code::Ok));
    let echoed: Echo = stmp::Codec::PROTOBUF.decode(&response.payload).unwrap();
    assert_eq!(echoed, input);
}

/// A burst starts the writer tasks; once the connection has nothing under way they end at its
/// next heartbeat, and the next burst starts them again. A connection that once got a burst
/// (a broadcast, a replay) is back to an idle connection's cost.
#[tokio::test]
async fn a_quiet_connection_lets_its_writer_tasks_go_at_the_heartbeat() {
    const CALLS: usize = 64;
    // The heartbeat rings every half second or so. Shorter, a stall of the test's thread
    // under a loaded machine could outlast the read timeout and end the connection.
    let read_timeout = Duration::from_secs(1);
    let server = Server::builder().read_timeout(read_timeout).build();
    let mut gate = route_block(server.router());
    let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
    let before = alive_tasks();
    let client = within(
        Client::builder()
            .read_timeout(read_timeout)
            .connect(&format!("tcp://{addr}")),
    )
    .await
    .unwrap();
    let quiet = alive_tasks() - before;
    for burst in 0..2 {
        let calls = futures_util::future::join_all((0..CALLS).map(|i| {
            let client = client.clone();
            async move {
                let echoed: Echo = client.call(&BLOCK, &echo(&i.to_string())).await?;
                Ok::<_, Status>((i, echoed))
            }
        }));
        let mut calls = std::pin::pin!(calls);
        // Every call reaches its handler, which waits: calls pending on one side, handlers
        // running on the other, so neither lets its writer go. All but the first call queued
        // behind it, which started the client's writer task.
        within(async {
            for _ in 0..CALLS {
                tokio::select! {
                    biased;
                    entered = gate.entered.recv() => entered.unwrap(),
                    _ = &mut calls => panic!("the calls ended before reaching their handlers"),
                }
            }
        })
        .await;
        let busy = alive_tasks() - before;
        assert!(
            busy > quiet + CALLS,
            "burst {burst}: {busy} tasks with {CALLS} handlers waiting, {quiet} before"
        );
        gate.release.notify_waiters();
        for result in within(&mut calls).await {
            let (i, echoed) = result.unwrap();
            assert_eq!(echoed.text, i.to_string());
        }
        until(|| alive_tasks() - before == quiet).await;
    }
    within(client.close()).await;
    until(|| alive_tasks() == before).await;
}

// One thread: the 70,000 round trips then cost no cross-CPU wake-ups, which are slow and
// erratic on small VMs.
#[tokio::test]
async fn more_calls_than_message_ids_in_sequence() {
    let (_server, url) = tcp_server(Server::builder()).await;
    let client = within(Client::connect(&url)).await.unwrap();
    let conn = client.conn().unwrap();
    let calls = async {
        for i in 0..70_000u32 {
            let output: Echo = conn.call(&ECHO, &echo(&i.to_string())).await.unwrap();
            assert_eq!(output.text, i.to_string());
        }
    };
    tokio::time::timeout(Duration::from_secs(120), calls)
        .await
        .expect("70,000 calls in time");
    assert!(!conn.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handler_does_not_delay_a_fast_one() {
    let (server, url) = tcp_server(Server::builder()).await;
    let Gate { release, .. } = route_block(server.router());
    let client = within(Client::connect(&url)).await.unwrap();
    let slow = tokio::spawn({
        let client = client.clone();
        async move { client.call::<_, Echo>(&BLOCK, &echo("slow")).await }
    });
    for _ in 0..10 {
        let fast: Echo = within(client.call(&ECHO, &echo("fast"))).await.unwrap();
        assert_eq!(fast.text, "fast");
    }
    assert!(!slow.is_finished());
    release.notify_one();
    assert_eq!(within(slow).await.unwrap().unwrap().text, "slow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_reach_the_caller_and_panics_stay_in_their_call() {
    let (_server, url) = tcp_server(Server::builder()).await;
    let client = within(Client::connect(&url)).await.unwrap();
    let input = echo("x");

    let missing = within(client.call::<_, Echo>(&MISSING, &input))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert!(
        missing.message().contains("test.Echo.Missing") || missing.message().contains("0x"),
        "{missing}"
    );

    let failed = within(client.call::<_, Echo>(&FAIL, &input))
        .await
        .unwrap_err();
    assert_eq!(
        (failed.code(), failed.message()),
        (Code::BadRequest, "refused: x")
    );

    panics_fail_only_their_call(&client, &PANIC, 1).await;
}

/// Calls `method`, whose handler panics, `times` times: each call fails with
/// `InternalServerError`, and an echo on the same connection still works afterwards.
async fn panics_fail_only_their_call(client: &Client, method: &'static stmp::Method, times: usize) {
    let conn = client.conn().unwrap();
    let input = echo("x");
    for _ in 0..times {
        let panicked = within(client.call::<_, Echo>(method, &input))
            .await
            .unwrap_err();
        assert_eq!(panicked.code(), Code::InternalServerError, "{panicked}");
    }
    let after: Echo = within(client.call(&ECHO, &input)).await.unwrap();
    assert_eq!(after, input);
    assert!(
        client.conn().unwrap() == conn,
        "the panic must not cost the connection"
    );
}

/// A handler that waits before it panics has left the reading task by then: the panic is
/// caught on its own task, and still fails only its call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_panics_after_waiting_fails_only_its_call() {
    let (server, url) = tcp_server(Server::builder()).await;
    const LATE_PANIC: stmp::Method =
        stmp::Method::new("test.Echo.LatePanic", "test.Echo", "test.Echo");
    server.router().route(
        &LATE_PANIC,
        |_ctx: stmp::Context, _input: Echo| async move {
            tokio::task::yield_now().await;
            if true {
                panic!("handler bug after an await");
            }
            Ok::<Echo, Status>(Echo::default())
        },
    );
    let client = within(Client::connect(&url)).await.unwrap();
    panics_fail_only_their_call(&client, &LATE_PANIC, 2).await;
}

/// Calls queued while answered callers are on their way back wait for them, but not for a
/// caller whose future was polled once and then left aside: another task's call still gets
/// its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_left_aside_after_its_answer_came_holds_up_no_other_call() {
    let (_server, url) = tcp_server(Server::builder()).await;
    let client = within(Client::connect(&url)).await.unwrap();
    let conn = client.conn().unwrap();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    // Sent, then not polled again: its answer comes and is not taken. The handler waits a
    // little, so the answer cannot come back inside the first poll.
    let input = Echo {
        delay_ms: 50,
        ..echo("aside")
    };
    let mut aside = Box::pin(conn.call::<_, Echo>(&ECHO, &input));
    assert!(aside.as_mut().poll(&mut cx).is_pending());
    within(async {
        while conn.pending_calls() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    for i in 0..20 {
        let text = i.to_string();
        let echoed: Echo = within(client.call(&ECHO, &echo(&text))).await.unwrap();
        assert_eq!(echoed.text, text);
    }
    // Polled again at last, it has its answer.
    let echoed = within(aside).await.unwrap();
    assert_eq!(echoed.text, "aside");
}

/// The callers answered in one burst are woken one after another, each by the one before it
/// as it takes its answer. A caller whose task is woken but does not poll its call again (it
/// waits for something else) must not hold up the callers behind it: here the peer answers
/// both calls in one write, the left-aside call's answer first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_does_not_take_its_answer_holds_up_none_answered_after_it() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buffer = BytesMut::new();
        while stmp::wire::ClientHandshake::decode(&mut buffer, 1 << 10)
            .unwrap()
            .is_none()
        {
            assert_ne!(within(stream.read_buf(&mut buffer)).await.unwrap(), 0);
        }
        let mut out = BytesMut::new();
        stmp::wire::ServerHandshake::ok(Header::new()).encode(&mut out);
        stream.write_all(&out).await.unwrap();
        let mut codec = PacketCodec::new();
        let mut mids = Vec::new();
        while mids.len() < 2 {
            match codec.decode(&mut buffer).unwrap() {
                Some(Packet::Request(request)) => mids.push(request.mid),
                Some(other) => panic!("{other:?}"),
                None => assert_ne!(within(stream.read_buf(&mut buffer)).await.unwrap(), 0),
            }
        }
        out.clear();
        for mid in mids {
            Packet::Response(stmp::wire::Response {
                mid,
                status: Code::Ok,
                header: Header::new(),
                payload: bytes::Bytes::new(),
            })
            .encode_stream(&mut out);
        }
        stream.write_all(&out).await.unwrap();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
    });
    let client = tcp_client(addr).await;
    // Polled once by this task (its request leaves first), then left aside while this task
    // waits for the other call: woken by its answer, this task polls only that other call.
    let input = echo("aside");
    let mut aside = Box::pin(client.call::<_, Echo>(&ECHO, &input));
    assert!(futures_util::poll!(aside.as_mut()).is_pending());
    let behind = tokio::spawn({
        let client = client.clone();
        async move { client.call::<_, Echo>(&ECHO, &echo("behind")).await }
    });
    within(behind).await.unwrap().unwrap();
    within(aside).await.unwrap();
    within(client.close()).await;
    within(peer).await.unwrap();
}

/// A connection resolves a request's handler once per action; a route added, replaced or
/// wrapped in middleware later reaches the connections already open at their next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_and_middleware_added_later_reach_open_connections() {
    let (server, url) = tcp_server(Server::builder()).await;
    let client = within(Client::connect(&url)).await.unwrap();
    let conn = client.conn().unwrap();
    let input = echo("x");
    let missing = within(client.call::<_, Echo>(&MISSING, &input))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    server
        .router()
        .route(&MISSING, |_ctx: stmp::Context, input: Echo| async move {
            Ok::<_, Status>(echo(&format!("found {}", input.text)))
        });
    let found: Echo = within(client.call(&MISSING, &input)).await.unwrap();
    assert_eq!(found.text, "found x");

    server
        .router()
        .route(&MISSING, |_ctx: stmp::Context, input: Echo| async move {
            Ok::<_, Status>(echo(&format!("replaced {}", input.text)))
        });
    let replaced: Echo = within(client.call(&MISSING, &input)).await.unwrap();
    assert_eq!(replaced.text, "replaced x");

    struct Refuse;
    impl stmp::Middleware for Refuse {
        async fn before(&self, _ctx: &stmp::Context) -> Result<stmp::Flow, Status> {
            Err(Status::unauthorized("refused by middleware"))
        }
    }
    server.router().layer(Refuse);
    let refused = within(client.call::<_, Echo>(&MISSING, &input))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), refused.message()),
        (Code::Unauthorized, "refused by middleware")
    );
    assert!(client.conn().unwrap() == conn, "one connection throughout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_and_dropped_calls_forget_their_ids() {
    let (server, url) = tcp_server(Server::builder()).await;
    let Gate { release, .. } = route_block(server.router());
    let client = within(Client::connect(&url)).await.unwrap();
    let conn = client.conn().unwrap();
    let options = stmp::CallOptions::new().timeout(Duration::from_millis(50));
    let timed_out = within(conn.call_with::<_, Echo>(&BLOCK, &Echo::default(), options))
        .await
        .unwrap_err();
    assert_eq!(timed_out.code(), Code::RequestTimeout);
    assert_eq!(conn.pending_calls(), 0);
    // A dropped call future forgets its id too.
    let dropped = tokio::time::timeout(
        Duration::from_millis(10),
        conn.call::<_, Echo>(&BLOCK, &Echo::default()),
    )
    .await;
    assert!(dropped.is_err());
    assert_eq!(conn.pending_calls(), 0);
    // The late responses are ignored; the connection goes on.
    release.notify_waiters();
    let ok: Echo = within(conn.call(&ECHO, &Echo::default())).await.unwrap();
    assert_eq!(ok, Echo::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_requests_beyond_the_concurrency_limit() {
    let (server, url) = tcp_server(Server::builder().max_concurrent_requests(1)).await;
    let Gate {
        release,
        mut entered,
    } = route_block(server.router());
    let client = within(Client::connect(&url)).await.unwrap();
    let blocked = tokio::spawn({
        let client = client.clone();
        async move { client.call::<_, Echo>(&BLOCK, &Echo::default()).await }
    });
    within(entered.recv()).await.unwrap();
    let refused = within(client.call::<_, Echo>(&ECHO, &Echo::default()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::TooManyRequests);
    release.notify_one();
    within(blocked).await.unwrap().unwrap();
    let ok: Echo = within(client.call(&ECHO, &Echo::default())).await.unwrap();
    assert_eq!(ok, Echo::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_packet_closes_with_request_entity_too_large() {
    let (server, url) = tcp_server(Server::builder().max_packet_size(1024)).await;
    let client = within(Client::builder().no_reconnect().connect(&url))
        .await
        .unwrap();
    let conn = client.conn().unwrap();
    let big = echo(&"x".repeat(2048));
    let error = within(client.call::<_, Echo>(&ECHO, &big))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NetworkError);
    let closed = within(conn.closed()).await;
    assert_eq!(closed.code(), Code::RequestEntityTooLarge, "{closed}");
    assert!(closed.message().contains("1024"), "{closed}");
    // Others are not disturbed.
    let other = within(Client::connect(&url)).await.unwrap();
    let ok: Echo = within(other.call(&ECHO, &Echo::default())).await.unwrap();
    assert_eq!(ok, Echo::default());
    drop(server);
}

/// A TCP server with `read_timeout`, and a raw socket that has sent it a client's hello.
async fn hello_sent(read_timeout: Duration) -> (Server, tokio::net::TcpStream) {
    let (server, url) = tcp_server(Server::builder().read_timeout(read_timeout)).await;
    let addr = url.trim_start_matches("tcp://");
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut hello = bytes::BytesMut::new();
    stmp::wire::ClientHandshake::new(Default::default()).encode(&mut hello);
    socket.write_all(&hello).await.unwrap();
    (server, socket)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_pinged_then_closed() {
    let (_server, mut socket) = hello_sent(Duration::from_millis(400)).await;
    let started = tokio::time::Instant::now();
    let mut received = Vec::new();
    within(socket.read_to_end(&mut received)).await.unwrap();
    let elapsed = started.elapsed();
    // Server handshake, then a Ping after half the timeout, then Close(NetworkError).
    let mut buffer = bytes::BytesMut::from(&received[..]);
    stmp::wire::ServerHandshake::decode(&mut buffer, 1024)
        .unwrap()
        .unwrap();
    let mut codec = stmp::wire::PacketCodec::new();
    let mut packets = Vec::new();
    while let Some(packet) = tokio_util::codec::Decoder::decode(&mut codec, &mut buffer).unwrap() {
        packets.push(packet);
    }
    assert_eq!(
        packets.first(),
        Some(&stmp::wire::Packet::Ping),
        "{packets:?}"
    );
    let Some(stmp::wire::Packet::Close(close)) = packets.last() else {
        panic!("{packets:?}")
    };
    assert_eq!(close.status, Code::NetworkError);
    assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_goes_silent_after_packets_is_still_pinged_then_closed() {
    // The engine leaves its heartbeat timer alone on the waits of a busy connection, once the
    // timer holds its waker: the timer must still ring once the packets stop.
    let (_server, mut socket) = hello_sent(Duration::from_millis(400)).await;
    let mut buffer = bytes::BytesMut::new();
    while within(socket.read_buf(&mut buffer)).await.unwrap() > 0 {
        if stmp::wire::ServerHandshake::decode(&mut buffer, 1024)
            .unwrap()
            .is_some()
        {
            break;
        }
    }
    let mut codec = stmp::wire::PacketCodec::new();
    let mut next_packet = async |socket: &mut tokio::net::TcpStream,
                                 buffer: &mut bytes::BytesMut| loop {
        if let Some(packet) = tokio_util::codec::Decoder::decode(&mut codec, buffer).unwrap() {
            return Some(packet);
        }
        if within(socket.read_buf(buffer)).await.unwrap() == 0 {
            return None;
        }
    };
    // Five Pings, each answered before the next: five waits of the engine after its first.
    let mut ping = bytes::BytesMut::new();
    stmp::wire::Packet::Ping.encode_stream(&mut ping);
    for _ in 0..5 {
        socket.write_all(&ping).await.unwrap();
        assert_eq!(
            next_packet(&mut socket, &mut buffer).await,
            Some(stmp::wire::Packet::Pong)
        );
    }
    let silent_from = tokio::time::Instant::now();
    assert_eq!(
        next_packet(&mut socket, &mut buffer).await,
        Some(stmp::wire::Packet::Ping),
        "the heartbeat pinged the silent peer"
    );
    let Some(stmp::wire::Packet::Close(close)) = next_packet(&mut socket, &mut buffer).await else {
        panic!("no Close after the Ping")
    };
    assert_eq!(close.status, Code::NetworkError);
    let elapsed = silent_from.elapsed();
    assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_healthy_connection_stays_up() {
    // Long enough that a busy CI machine answers a Ping well inside half of it.
    let timeout = Duration::from_millis(600);
    let (_server, url) = tcp_server(Server::builder().read_timeout(timeout)).await;
    let client = within(Client::builder().read_timeout(timeout).connect(&url))
        .await
        .unwrap();
    let conn = client.conn().unwrap();
    // Idle for several timeouts: only the heartbeat crosses the wire.
    tokio::time::sleep(timeout * 4).await;
    assert!(!conn.is_closed(), "closed: {:?}", conn.close_status());
    let ok: Echo = within(conn.call(&ECHO, &Echo::default())).await.unwrap();
    assert_eq!(ok, Echo::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_string_action_is_routed_like_its_number() {
    let (_server, url) = tcp_server(Server::builder()).await;
    let client = within(Client::connect(&url)).await.unwrap();
    let conn = client.conn().unwrap();
    let payload = conn.codec().encode(&echo("by name")).unwrap();
    let response = within(conn.request_raw(
        stmp::wire::Action::Method(ECHO.name.to_owned()),
        Default::default(),
        payload,
        None,
    ))
    .await
    .unwrap();
    let echo: Echo = conn.codec().decode(&response.payload).unwrap();
    assert_eq!(echo.text, "by name");
}

/// Two listeners of one event run in turn for each event: a panic in the first (when it is
/// called, or in its future) is its own and the second still runs; when the first waits, the
/// second runs after it, and the events behind wait for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_listener_of_an_event_runs_in_turn_though_the_one_before_panics_or_waits() {
    let (server, url) = tcp_server(Server::builder()).await;
    let client = within(Client::connect(&url)).await.unwrap();
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let (tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
    let _first = client.router().listen(&USER_JOIN, {
        let (gate, tx) = (gate.clone(), tx.clone());
        move |_ctx: stmp::Context, e: UserJoinEvent| {
            assert!(e.user != "panic when called", "the listener panics");
            let (gate, tx) = (gate.clone(), tx.clone());
            async move {
                assert!(
                    e.user != "panic when polled",
                    "the listener's future panics"
                );
                if e.user == "wait" {
                    gate.notified().await;
                }
                tx.send(format!("first {}", e.user)).unwrap();
            }
        }
    });
    let _second =
        client
            .router()
            .listen(&USER_JOIN, move |_ctx: stmp::Context, e: UserJoinEvent| {
                let tx = tx.clone();
                async move { tx.send(format!("second {}", e.user)).unwrap() }
            });
    until(|| !server.conns().is_empty()).await;
    let send = |user: &str| {
        let event = UserJoinEvent { user: user.into() };
        stmp::broadcast(server.everyone(), &USER_JOIN, &event).unwrap();
    };
    for user in ["a", "panic when called", "panic when polled", "wait", "b"] {
        send(user);
    }
    for expected in [
        "first a",
        "second a",
        "second panic when called",
        "second panic when polled",
    ] {
        assert_eq!(within(heard.recv()).await.unwrap(), expected);
    }
    // A call's round trip proves every event has arrived: the rest waits for the first
    // listener of "wait".
    let _: Echo = within(client.call(&ECHO, &Echo::default())).await.unwrap();
    assert!(heard.try_recv().is_err(), "ran before the waiting listener");
    gate.notify_one();
    for expected in ["first wait", "second wait", "first b", "second b"] {
        assert_eq!(within(heard.recv()).await.unwrap(), expected);
    }
}

/// Listeners that finish at once run on the read task; one that waits moves to a task of its
/// own. Either way every event reaches the listeners once, in the order it was sent, and the
/// ones behind a waiting listener wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_behind_a_waiting_listener_wait_for_it_and_keep_their_order() {
    let (server, url) = tcp_server(Server::builder()).await;
    let client = within(Client::connect(&url)).await.unwrap();
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let (tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
    let _listener = client.router().listen(&USER_JOIN, {
        let gate = gate.clone();
        move |_ctx: stmp::Context, e: UserJoinEvent| {
            let (gate, tx) = (gate.clone(), tx.clone());
            async move {
                if e.user.starts_with("wait") {
                    gate.notified().await;
                }
                tx.send(e.user).unwrap();
            }
        }
    });
    until(|| !server.conns().is_empty()).await;
    let names: Vec<String> = (0..50)
        .map(|i| match i {
            10 | 30 => format!("wait {i}"),
            _ => format!("quick {i}"),
        })
        .collect();
    for name in &names[..20] {
        let event = UserJoinEvent { user: name.clone() };
        stmp::broadcast(server.everyone(), &USER_JOIN, &event).unwrap();
    }
    for name in &names[..10] {
        assert_eq!(&within(heard.recv()).await.unwrap(), name);
    }
    // The first waiting listener holds back every event after it: a call's round trip
    // proves they have all arrived.
    let _: Echo = within(client.call(&ECHO, &Echo::default())).await.unwrap();
    assert!(
        heard.try_recv().is_err(),
        "an event overtook a waiting listener"
    );
    for name in &names[20..] {
        let event = UserJoinEvent { user: name.clone() };
        stmp::broadcast(server.everyone(), &USER_JOIN, &event).unwrap();
    }
    gate.notify_one();
    for name in &names[10..30] {
        assert_eq!(&within(heard.recv()).await.unwrap(), name);
    }
    let _: Echo = within(client.call(&ECHO, &Echo::default())).await.unwrap();
    assert!(
        heard.try_recv().is_err(),
        "an event overtook a waiting listener"
    );
    gate.notify_one();
    for name in &names[30..] {
        assert_eq!(&within(heard.recv()).await.unwrap(), name);
    }
}

/// Deadlines share one alarm per connection: a short deadline that comes after a long one
/// must bring the alarm forward, or it would wait for the long one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_deadline_after_a_long_one_ends_on_time() {
    let (server, url) = tcp_server(Server::builder()).await;
    let Gate {
        release,
        mut entered,
    } = route_block(server.router());
    let client = within(Client::connect(&url)).await.unwrap();
    let conn = client.conn().unwrap();
    let hour = stmp::CallOptions::new().timeout(Duration::from_secs(3600));
    let long = tokio::spawn({
        let conn = conn.clone();
        async move {
            conn.call_with::<_, Echo>(&BLOCK, &Echo::default(), hour)
                .await
        }
    });
    within(entered.recv()).await.unwrap();
    let short = stmp::CallOptions::new().timeout(Duration::from_millis(50));
    let minute_long = Echo {
        text: String::new(),
        delay_ms: 60_000,
    };
    let timed_out = within(conn.call_with::<_, Echo>(&ECHO, &minute_long, short))
        .await
        .unwrap_err();
    assert_eq!(timed_out.code(), Code::RequestTimeout);
    assert!(!long.is_finished(), "the long call still waits");
    assert_eq!(conn.pending_calls(), 1);
    release.notify_one();
    within(long).await.unwrap().unwrap();
    assert_eq!(conn.pending_calls(), 0);
}
