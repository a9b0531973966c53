//! A shutdown's wait for the handlers still running, seen through its tracing. A binary of its
//! own: tracing caches per call site whether anyone listens, and the tests of another binary's
//! threads, with no subscriber, would race the scoped subscriber here for that cache (as this
//! test's own workers would race `tracing.rs`'s).

mod common;

use common::*;
use stmp::Server;

/// A `Write` that opens a gate once a line containing `text` is written.
#[derive(Clone)]
struct OpensOn {
    text: &'static str,
    gate: std::sync::mpsc::SyncSender<()>,
    log: Captured,
}

impl std::io::Write for OpensOn {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if String::from_utf8_lossy(bytes).contains(self.text) {
            let _ = self.gate.try_send(());
        }
        self.log.write(bytes)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A handler that runs inline, in the connection's own task, counts as running for a
/// shutdown: the shutdown waits for it until its deadline, and its answer still reaches the
/// caller. The engine tracks it from the start of its handling; no task of its own does.
#[test]
fn a_shutdown_waits_for_a_handler_running_inline_until_its_deadline() {
    const STILL_RUNNING: &str = "handlers still running at the shutdown deadline";
    let (gate, released) = std::sync::mpsc::sync_channel::<()>(1);
    let released = std::sync::Mutex::new(released);
    let (entered_tx, entered) = std::sync::mpsc::sync_channel::<()>(1);
    let log = Captured::default();
    let writer = OpensOn {
        text: STILL_RUNNING,
        gate,
        log: log.clone(),
    };
    // Scoped to this thread, which runs the shutdown: its events are the ones looked at.
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = Server::builder().build();
    register(server.router());
    server
        .router()
        .route(&BLOCK, move |_ctx: stmp::Context, input: Echo| {
            // No await: the handler answers in the poll that starts it, so the engine runs
            // it inline. It blocks its worker until the shutdown says it waited for it.
            let _ = entered_tx.try_send(());
            let waited = released
                .lock()
                .unwrap()
                .recv_timeout(std::time::Duration::from_secs(10));
            std::future::ready(match waited {
                Ok(()) => Ok(input),
                Err(_) => Err(stmp::Status::internal("the shutdown did not wait")),
            })
        });
    let (client, call) = runtime.block_on(async {
        let addr = server.listen_tcp("127.0.0.1:0").await.unwrap();
        let client = tcp_client(addr).await;
        let call = tokio::spawn({
            let client = client.clone();
            async move { client.call::<_, Echo>(&BLOCK, &echo("inline")).await }
        });
        (client, call)
    });
    entered
        .recv_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    tracing::subscriber::with_default(subscriber, || {
        runtime.block_on(within(
            server.shutdown(std::time::Duration::from_millis(50)),
        ));
    });
    let answered = runtime.block_on(within(call)).unwrap();
    let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(
        log.contains(STILL_RUNNING),
        "the shutdown did not wait:\n{log}"
    );
    assert_eq!(answered.unwrap().text, "inline");
    drop(client);
}
