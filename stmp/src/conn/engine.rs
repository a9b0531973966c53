//! The per-connection engine: reads packets, dispatches them, keeps the heartbeat, and runs the
//! close handshake. The same engine runs every transport on both sides.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::io::{PacketStream, PacketWriter};
use super::{Conn, lock};
use crate::router::Target;
use crate::wire::{Header, Packet, Response};
use crate::{Code, Context, Router, Status};

/// Tunables of one connection.
#[derive(Clone, Debug)]
pub(crate) struct EngineConfig {
    /// Silence after which the connection is dead; a Ping goes out after half of it.
    pub(crate) read_timeout: Duration,
    /// Requests handled at once; more are answered `TooManyRequests`.
    pub(crate) max_concurrent_requests: usize,
    /// How long a closing side waits for the peer's Close, and for its last writes.
    pub(crate) close_grace: Duration,
    /// Notifies queued for listeners before reading pauses.
    pub(crate) event_queue: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            read_timeout: Duration::from_secs(60),
            max_concurrent_requests: 1024,
            close_grace: Duration::from_secs(1),
            event_queue: 1024,
        }
    }
}

/// Everything one connection's engine needs.
pub(crate) struct Engine {
    pub(crate) conn: Conn,
    pub(crate) outbox: mpsc::Receiver<Packet>,
    pub(crate) reader: PacketStream,
    pub(crate) writer: PacketWriter,
    pub(crate) router: Router,
    pub(crate) config: EngineConfig,
    /// Handler tasks, so a server can wait for them when it shuts down.
    pub(crate) tasks: TaskTracker,
    /// Once cancelled, new requests are answered `ServerShutdown`.
    pub(crate) draining: CancellationToken,
}

/// Why the read loop stopped.
struct Ending {
    status: Status,
    /// Whether a Close still has to go to the peer.
    send_close: bool,
}

impl Engine {
    /// Runs the connection until it ends.
    pub(crate) async fn run(self) {
        let Engine {
            conn,
            outbox,
            mut reader,
            writer,
            router,
            config,
            tasks,
            draining,
        } = self;
        let stop_writer = CancellationToken::new();
        let writer_failed = CancellationToken::new();
        let writer_task = tokio::spawn(write_loop(
            outbox,
            writer,
            stop_writer.clone(),
            writer_failed.clone(),
        ));
        // Made on the first notify: many connections never receive one, and idle ones
        // should not pay for a queue and a task.
        let mut events: Option<(mpsc::Sender<Event>, tokio::task::JoinHandle<()>)> = None;
        let permits = Arc::new(Semaphore::new(config.max_concurrent_requests));

        let half = config.read_timeout / 2;
        let mut last_read = Instant::now();
        let mut pinged = false;
        let heartbeat = sleep_until(last_read + half);
        tokio::pin!(heartbeat);
        let mut closing_since: Option<Instant> = None;
        let grace = sleep_until(Instant::now() + Duration::from_secs(86_400));
        tokio::pin!(grace);
        // Made once, not per packet: each one registers with its token when polled.
        let close_requested = conn.shared.close_requested.clone().cancelled_owned();
        tokio::pin!(close_requested);
        let write_failed = writer_failed.clone().cancelled_owned();
        tokio::pin!(write_failed);

        let ending = loop {
            tokio::select! {
                biased;
                _ = &mut close_requested, if closing_since.is_none() => {
                    let status = requested(&conn);
                    let _ = conn.try_send(Packet::close(status.code(), status.message()));
                    closing_since = Some(Instant::now());
                    grace.as_mut().reset(Instant::now() + config.close_grace);
                }
                _ = &mut grace, if closing_since.is_some() => {
                    break Ending { status: requested(&conn), send_close: false };
                }
                _ = &mut write_failed => {
                    break Ending {
                        status: Status::network_error("cannot write to the connection"),
                        send_close: false,
                    };
                }
                item = reader.next() => {
                    let packet = match item {
                        Some(Ok(packet)) => packet,
                        Some(Err(status)) => {
                            // A network error cannot be answered; bad bytes get a Close.
                            let send_close = status.code() != Code::NetworkError;
                            if send_close {
                                tracing::debug!(conn = conn.id(), %status, "closing on bad input");
                            }
                            break Ending { status, send_close };
                        }
                        None if closing_since.is_some() => {
                            break Ending { status: requested(&conn), send_close: false };
                        }
                        None => {
                            break Ending {
                                status: Status::network_error("connection closed by the peer"),
                                send_close: true,
                            };
                        }
                    };
                    last_read = Instant::now();
                    pinged = false;
                    match packet {
                        Packet::Ping => {
                            let _ = conn.try_send(Packet::Pong);
                        }
                        Packet::Pong => {}
                        Packet::Request(request) => {
                            if draining.is_cancelled() {
                                let _ = conn.try_send(error_response(
                                    request.mid,
                                    Status::server_shutdown("the server is shutting down"),
                                ));
                                continue;
                            }
                            let Ok(permit) = permits.clone().try_acquire_owned() else {
                                let _ = conn.try_send(error_response(
                                    request.mid,
                                    Status::too_many_requests(format!(
                                        "more than {} requests in flight on this connection",
                                        config.max_concurrent_requests
                                    )),
                                ));
                                continue;
                            };
                            let target = router.target(&request.action);
                            let ctx = Context::new(
                                conn.clone(),
                                request.action,
                                target.method,
                                request.header,
                            );
                            let router = router.clone();
                            let mut handling = Box::pin(async move {
                                let outcome = crate::telemetry::observe_call(target.method, router.handle_request(target, &ctx, request.payload)).await;
                                let header = ctx.take_response_header();
                                let response = match outcome {
                                    Ok(payload) => Packet::Response(Response {
                                        mid: request.mid,
                                        status: Code::Ok,
                                        header,
                                        payload,
                                    }),
                                    Err(status) => with_header(error_response(request.mid, status), header),
                                };
                                let _ = ctx.conn().send(response).await;
                                drop(permit);
                            });
                            // Most handlers answer without waiting: run them here until their
                            // first await, and give only the ones that wait a task of their own.
                            let mut inline = std::task::Context::from_waker(std::task::Waker::noop());
                            if handling.as_mut().poll(&mut inline).is_pending() {
                                tasks.spawn(handling);
                            }
                        }
                        Packet::Notify(notify) => {
                            let target = router.target(&notify.action);
                            let ctx = Context::new(conn.clone(), notify.action, target.method, notify.header);
                            let (queue, _) = events.get_or_insert_with(|| {
                                let (queue, rx) = mpsc::channel(config.event_queue.max(1));
                                (queue, tokio::spawn(event_loop(rx, router.clone())))
                            });
                            // Waiting here when listeners fall behind is the backpressure.
                            if queue.send((target, ctx, notify.payload)).await.is_err() {
                                break Ending {
                                    status: Status::internal("event listener task ended"),
                                    send_close: true,
                                };
                            }
                        }
                        Packet::Response(response) => {
                            if !lock(&conn.shared.pending).complete(response) {
                                tracing::trace!(conn = conn.id(), "dropping a response nobody waits for");
                            }
                        }
                        Packet::Close(close) => {
                            let status = Status::new(close.status, close.reason);
                            break Ending { status, send_close: closing_since.is_none() };
                        }
                    }
                }
                _ = &mut heartbeat => {
                    let silent = last_read.elapsed();
                    if silent >= config.read_timeout {
                        break Ending {
                            status: Status::network_error(format!(
                                "no packet received for {:?}",
                                config.read_timeout
                            )),
                            send_close: true,
                        };
                    }
                    if silent >= half && !pinged {
                        let _ = conn.try_send(Packet::Ping);
                        pinged = true;
                    }
                    let next = if pinged { last_read + config.read_timeout } else { last_read + half };
                    heartbeat.as_mut().reset(next);
                }
            }
        };

        finish(conn, ending, stop_writer, writer_task, config.close_grace).await;
        if let Some((queue, task)) = events {
            drop(queue);
            // Listeners already queued still run; the task ends when the queue is empty.
            let _ = task.await;
        }
    }
}

fn requested(conn: &Conn) -> Status {
    conn.shared
        .requested_status
        .get()
        .cloned()
        .unwrap_or_else(|| Status::new(Code::Ok, ""))
}

fn error_response(mid: u16, status: Status) -> Packet {
    // A handler that fails with `Ok` still failed.
    let code = match status.code() {
        Code::Ok => Code::Unknown,
        code => code,
    };
    Packet::Response(Response {
        mid,
        status: code,
        header: Header::new(),
        payload: Bytes::from(status.message().to_owned()),
    })
}

fn with_header(mut packet: Packet, header: Header) -> Packet {
    if let Packet::Response(response) = &mut packet {
        response.header = header;
    }
    packet
}

async fn finish(
    conn: Conn,
    ending: Ending,
    stop_writer: CancellationToken,
    writer_task: tokio::task::JoinHandle<()>,
    grace: Duration,
) {
    let Ending { status, send_close } = ending;
    if send_close {
        let _ = conn.try_send(Packet::close(status.code(), status.message()));
    }
    tracing::debug!(conn = conn.id(), %status, "connection closed");
    let _ = conn.shared.close_status.set(status.clone());
    lock(&conn.shared.pending).close(Status::network_error(format!(
        "connection closed: {status}"
    )));
    stop_writer.cancel();
    if tokio::time::timeout(grace, writer_task).await.is_err() {
        tracing::debug!(conn = conn.id(), "writer did not finish in time");
    }
    conn.mark_closed(&status);
}

/// Writes queued packets; whatever is queued together goes out in one write and one flush.
async fn write_loop(
    mut outbox: mpsc::Receiver<Packet>,
    mut writer: PacketWriter,
    stop: CancellationToken,
    failed: CancellationToken,
) {
    const BATCH: usize = 64;
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        // Made per wake-up, so an idle connection holds no batch.
        let mut batch = Vec::new();
        let stopping = tokio::select! {
            biased;
            received = outbox.recv_many(&mut batch, BATCH) => received == 0,
            _ = &mut stopped => true,
        };
        if stopping {
            while let Ok(packet) = outbox.try_recv() {
                batch.push(packet);
            }
        }
        if !batch.is_empty() {
            if let Err(status) = writer.write_batch(&batch).await {
                tracing::debug!(%status, "write failed");
                failed.cancel();
                return;
            }
        }
        if stopping {
            writer.shutdown().await;
            return;
        }
    }
}

/// A notify on its way to its listeners.
type Event = (Target, Context, Bytes);

/// Runs notifies through listeners one at a time, in the order they arrived.
async fn event_loop(mut events: mpsc::Receiver<Event>, router: Router) {
    while let Some((target, ctx, payload)) = events.recv().await {
        router.handle_notify(target, &ctx, payload).await;
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context as TaskContext, Poll};

    use bytes::BytesMut;
    use tokio::io::AsyncWrite;

    use super::*;

    /// Records what reaches the socket: bytes, and how many writes and flushes it took.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<(Vec<u8>, usize, usize)>>);

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut TaskContext<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let mut state = self.0.lock().unwrap();
            state.0.extend_from_slice(buf);
            state.1 += 1;
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
            self.0.lock().unwrap().2 += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: Pin<&mut Self>,
            _: &mut TaskContext<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn queued_packets_go_out_in_one_write_and_one_flush() {
        let recorder = Recorder::default();
        let writer = PacketWriter::Stream {
            io: Box::pin(recorder.clone()),
            buf: BytesMut::new(),
        };
        let (tx, rx) = mpsc::channel(64);
        for _ in 0..10 {
            tx.try_send(Packet::Ping).unwrap();
        }
        let stop = CancellationToken::new();
        stop.cancel();
        write_loop(rx, writer, stop, CancellationToken::new()).await;
        let (bytes, writes, flushes) = recorder.0.lock().unwrap().clone();
        assert_eq!(bytes, [0x80; 10]);
        assert_eq!((writes, flushes), (1, 1));
    }
}
