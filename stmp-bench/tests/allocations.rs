//! The heap allocations of a unary call, both ends together, stay where they are: an
//! allocation added on the call path fails this test. The counts are not timings, so the
//! host's noise does not move them (`benches/allocations.rs` prints them).
//!
//! At 1 in flight a call costs 9 allocations: the echo message's encoding and the `Vec` it
//! decodes into on each side (4); the handler's boxed future (1); and a read buffer with its
//! shared header on each side, which an idle connection gives back (4). At 64 in flight the
//! read buffers are shared by many calls, and a call costs about 5.3. (A `oneshot` per call
//! for the client's answer was one more until session 40, when the answer moved into the
//! calls' table.) A call from the server to a client costs the same, and is held to the same
//! bounds.
//!
//! A connection — connect, one call, close — costs about 125 allocations, both ends together:
//! the handshake's headers and codecs, each side's connection state, tasks and buffers. An
//! event published through `History` to one client costs 36 (41 before the client stopped
//! copying the stream's name and epoch out of every event it tracks), to ten 100.

use std::time::Duration;

use stmp_bench::in_process::{
    CountingAllocator, allocations_per_call, allocations_per_connection,
    allocations_per_history_event, echo_pair, echo_pair_ws, echo_server_tcp, one_thread_runtime,
    reverse_echo_pair,
};

#[global_allocator]
static COUNTING: CountingAllocator = CountingAllocator::new();

/// One test for both transports: the allocator counts every thread's allocations, so two
/// tests running side by side would count each other's.
#[test]
fn a_call_allocates_no_more_than_it_did() {
    let runtime = one_thread_runtime();
    runtime.block_on(async {
        // A WebSocket connection reads and writes through the same buffers as a TCP one, so a
        // call costs the same. Over tungstenite it cost 13.5 allocations at 1 in flight and
        // 12.1 at 64, and 9.5 and 7.2 once each side encoded its messages in a scratch buffer.
        for (transport, bounds) in [
            ("tcp", [9.5, 6.0]),
            ("ws", [9.5, 6.0]),
            ("tcp, server to client", [9.5, 6.0]),
        ] {
            let (server, client, conn) = match transport {
                "tcp" => with_no_conn(echo_pair().await),
                "ws" => with_no_conn(echo_pair_ws().await),
                _ => {
                    let (server, client, conn) = reverse_echo_pair().await;
                    (server, client, Some(conn))
                }
            };
            for (callers, most) in [1, 64].into_iter().zip(bounds) {
                let (allocations, _) = match &conn {
                    Some(conn) => allocations_per_call(conn, &COUNTING, callers, 6_400).await,
                    None => allocations_per_call(&client, &COUNTING, callers, 6_400).await,
                };
                eprintln!("{transport}: {allocations:.2} allocations per call with {callers} in flight");
                assert!(
                    allocations <= most,
                    "{transport}: {allocations:.2} allocations per call with {callers} in flight (at most {most})"
                );
            }
            client.close().await;
            server.shutdown(Duration::from_secs(1)).await;
        }
        let (server, url) = echo_server_tcp().await;
        let (allocations, bytes) = allocations_per_connection(&server, &url, &COUNTING, 500).await;
        eprintln!("tcp: {allocations:.1} allocations, {bytes:.0} B per connection");
        assert!(
            allocations <= 135.0,
            "{allocations:.1} allocations per connection (at most 135)"
        );
        server.shutdown(Duration::from_secs(1)).await;
        // An event is encoded once for all its recipients; each costs its connection's share.
        for (clients, most) in [(1, 40.0), (10, 110.0)] {
            let allocations = allocations_per_history_event(&COUNTING, clients, 1_000).await;
            eprintln!(
                "an event of a room with history, {clients} clients: {allocations:.1} allocations, both ends"
            );
            assert!(
                allocations <= most,
                "{allocations:.1} allocations per history event to {clients} (at most {most})"
            );
        }
    });
}

fn with_no_conn(
    (server, client): (stmp::Server, stmp::Client),
) -> (stmp::Server, stmp::Client, Option<stmp::Conn>) {
    (server, client, None)
}
