//! An stmp echo server and client in the calling process, for the benches under `benches/`
//! that look at one process alone (time per call on one thread, heap allocations per call).

use crate::{ECHO, Echo};

/// A server with the echo method on loopback TCP (port 0) and a client connected to it, on
/// the current runtime.
pub async fn echo_pair() -> (stmp::Server, stmp::Client) {
    let router = stmp::Router::new();
    router.route(&ECHO, |_ctx, input: Echo| async move { Ok(input) });
    let server = stmp::Server::builder().router(router).build();
    let addr = server.listen_tcp("127.0.0.1:0").await.expect("listen");
    let client = stmp::Client::builder()
        .no_reconnect()
        .connect(&format!("tcp://{addr}"))
        .await
        .expect("connect");
    (server, client)
}

/// `callers` tasks sharing `client`, each making `each` echo calls of 32 bytes; returns once
/// all are done.
pub async fn echo_calls(client: &stmp::Client, callers: usize, each: u64) {
    let input = Echo {
        payload: vec![7; 32],
    };
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (client, input) = (client.clone(), input.clone());
            tokio::spawn(async move {
                for _ in 0..each {
                    let output: Echo = client.call(&ECHO, &input).await.expect("echo");
                    assert_eq!(output.payload.len(), 32);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("caller");
    }
}
