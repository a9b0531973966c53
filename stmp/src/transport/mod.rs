//! One module per transport, each with its accept side (`Server::listen_*`) next to its
//! connect side (what `Client::connect` runs for its URL scheme), and the pipeline they share
//! on the server: accept under the admission limits → the transport's own handshake (TLS,
//! WebSocket upgrade) → the stmp handshake → admission, authentication → the engine.
//!
//! Byte streams (TCP, TLS, QUIC) carry the stmp handshake as bytes ([`Server::serve_stream`]
//! here, `stream_handshake` on the client); WebSocket carries it in the upgrade and the first
//! message (`ws`).

#[cfg(feature = "quic")]
pub mod quic;
mod scheme;
pub(crate) mod tcp;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "ws")]
pub(crate) mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::OwnedSemaphorePermit;

pub(crate) use scheme::Scheme;

use crate::conn::io::{PacketStream, PacketWriter, byte_stream};
use crate::conn::{Conn, Outbox};
use crate::server::{AcceptBackoff, MAX_HANDSHAKE_SIZE, Refusal, Slot, Ticket, Transport};
use crate::wire::{ClientHandshake, Limits, ServerHandshake};
use crate::{Code, Server, Status};

/// Work a connection's transport needs done while the connection lives, polled by the task
/// that reads the connection (a QUIC client's driver: it receives, and keeps QUIC's timers).
pub(crate) type Driver = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs `work`, polling `driver` first each time the task is woken, until `work` is done; a
/// driver that finishes is dropped from `driver`. The driver goes first so that what it
/// receives is read by `work` in the same poll, with no wake-up in between.
pub(crate) async fn beside<F: Future>(driver: &mut Option<Driver>, work: F) -> F::Output {
    let mut work = std::pin::pin!(work);
    std::future::poll_fn(|cx| {
        if let Some(running) = driver
            && running.as_mut().poll(cx).is_ready()
        {
            *driver = None;
        }
        work.as_mut().poll(cx)
    })
    .await
}

impl Server {
    /// Binds `addr` and accepts until shutdown, handing each socket to `serve` with its
    /// admission: a slot that counts it, or the refusal it is owed.
    pub(crate) async fn listen<F, Fut>(
        &self,
        addr: impl ToSocketAddrs,
        serve: F,
    ) -> Result<SocketAddr, Status>
    where
        F: Fn(Server, TcpStream, SocketAddr, Result<Slot, Refusal>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind(addr).await.map_err(cannot_listen)?;
        let local = listener.local_addr().map_err(cannot_listen)?;
        let server = self.clone();
        self.inner.listeners.spawn(async move {
            let mut backoff = AcceptBackoff::default();
            loop {
                let accepted = tokio::select! {
                    // Shutdown first: a connection waiting in the backlog is not taken once it
                    // has begun.
                    biased;
                    _ = server.inner.stop_accepting.cancelled() => break,
                    accepted = listener.accept() => accepted,
                };
                match accepted {
                    Ok((stream, remote)) => {
                        backoff.accepted();
                        let admitted = match server.inner.admission.ticket() {
                            Ticket::Serve(slot) => Ok(slot),
                            Ticket::Refuse(refusal) => Err(refusal),
                            Ticket::Drop => {
                                tracing::debug!(%remote, "over the limit, too many refusals in flight: closed");
                                continue;
                            }
                        };
                        let _ = stream.set_nodelay(true);
                        server
                            .inner
                            .connections
                            .spawn(serve(server.clone(), stream, remote, admitted));
                    }
                    Err(error) => {
                        let failure = backoff.failed(&error, Instant::now());
                        match failure.warn {
                            Some(unwarned) => {
                                tracing::warn!(%local, %error, unwarned, pause = ?failure.pause, "accept failed")
                            }
                            None => tracing::debug!(%local, %error, "accept failed"),
                        }
                        let Some(pause) = failure.pause else { continue };
                        tokio::select! {
                            _ = server.inner.stop_accepting.cancelled() => break,
                            _ = tokio::time::sleep(pause) => {}
                        }
                    }
                }
            }
            tracing::debug!(%local, "listener stopped");
        });
        tracing::info!(%local, "listening");
        Ok(local)
    }

    /// A place among the connections that may use gzip, if gzip is on and one is free: a
    /// client asking for it past [`ServerBuilder::max_gzip_connections`] gets a plain stream.
    ///
    /// [`ServerBuilder::max_gzip_connections`]: crate::ServerBuilder::max_gzip_connections
    fn gzip_permit(&self) -> Option<OwnedSemaphorePermit> {
        if !(self.inner.config.gzip && cfg!(feature = "gzip")) {
            return None;
        }
        let permit = self.inner.gzip_streams.clone().try_acquire_owned().ok();
        if permit.is_none() {
            tracing::debug!("every gzip place is taken: this connection's stream is plain");
        }
        permit
    }

    /// Runs the handshake on a byte stream, then the connection.
    pub(crate) async fn serve_stream<R, W>(
        &self,
        reader: R,
        writer: W,
        remote: SocketAddr,
        scheme: Scheme,
        mut slot: Slot,
    ) where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        // Taken apart at once: a local moved out of only in part would keep its place in this
        // future while the connection runs.
        let Some((
            Opened {
                conn,
                outbox,
                packets,
                writer,
            },
            gzip_permit,
        )) = self.open_stream(reader, writer, remote, scheme).await
        else {
            return;
        };
        slot.handshaken();
        self.run(conn, outbox, packets, writer).await;
        // The slot is held until the connection's socket is gone.
        drop(slot);
        drop(gzip_permit);
    }

    /// Both handshakes on a byte stream: the connection, ready to run, once the server's hello
    /// is sent, and its place among the gzip streams if it uses gzip. A future of its own, so
    /// that what the handshakes hold is not kept in the connection's task for its whole life.
    async fn open_stream<R, W>(
        &self,
        mut reader: R,
        mut writer: W,
        remote: SocketAddr,
        scheme: Scheme,
    ) -> Option<(Opened, Option<OwnedSemaphorePermit>)>
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        let config = &self.inner.config;
        let mut buffer = BytesMut::with_capacity(512);
        let hello = tokio::time::timeout(
            config.handshake_timeout,
            read_client_handshake(
                &mut reader,
                &mut buffer,
                config
                    .wire_limits()
                    .with_max_packet_size(MAX_HANDSHAKE_SIZE),
            ),
        )
        .await;
        let hello = match hello {
            Ok(Ok(hello)) => hello,
            Ok(Err(status)) => {
                tracing::debug!(%remote, %status, "bad client handshake");
                if status.code() != Code::NetworkError {
                    refuse(&mut writer, &status).await;
                }
                return None;
            }
            Err(_) => {
                tracing::debug!(%remote, "client handshake timed out");
                return None;
            }
        };
        let gzip_permit = self.gzip_permit();
        let transport = Transport::Stream {
            gzip_allowed: gzip_permit.is_some(),
        };
        let established = self
            .establish(hello.version, hello.header, transport, remote, scheme)
            .await;
        let (conn, outbox, agreement) = match established {
            Ok(established) => established,
            Err(status) => {
                refuse(&mut writer, &status).await;
                return None;
            }
        };
        // Held while the connection lives, and only if it uses gzip.
        let gzip_permit = gzip_permit.filter(|_| agreement.gzip);
        let mut hello = BytesMut::new();
        ServerHandshake::ok(agreement.header).encode(&mut hello);
        if writer.write_all(&hello).await.is_err() || writer.flush().await.is_err() {
            conn.mark_closed(&Status::network_error(
                "connection lost during the handshake",
            ));
            return None;
        }
        let (packets, writer) = byte_stream(
            reader,
            writer,
            buffer,
            &self.inner.read_limits,
            agreement.gzip,
        );
        let opened = Opened {
            conn,
            outbox,
            packets,
            writer,
        };
        Some((opened, gzip_permit))
    }

    /// Turns away a socket over the limits: opens it (a TLS handshake, or nothing), sends the
    /// refusal and waits for the client to close, all within a short time; the refusal's
    /// place among the bounded refusals in flight is held until then.
    pub(crate) async fn turn_away<S, F>(&self, open: F, refusal: Refusal, farewell: Farewell)
    where
        F: Future<Output = std::io::Result<S>>,
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let status = &refusal.status;
        tracing::debug!(%status, "refusing a connection over the limits");
        let mut message = BytesMut::new();
        match farewell {
            Farewell::Handshake => ServerHandshake::refuse(status).encode(&mut message),
            Farewell::Http => message.extend_from_slice(http_refusal(status).as_bytes()),
        }
        let limit = self.inner.config.handshake_timeout.min(REFUSAL_TIME);
        let _ = tokio::time::timeout(limit, async {
            let mut stream = open.await?;
            stream.write_all(&message).await?;
            stream.shutdown().await?;
            // Closing with the client's bytes unread would reset the connection, and the
            // client could lose the refusal with it: read until the client closes.
            let mut sink = [0u8; 512];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        })
        .await;
        drop(refusal);
    }
}

/// A connection past both handshakes, ready for [`Server::run`].
pub(crate) struct Opened {
    pub(crate) conn: Conn,
    pub(crate) outbox: Outbox,
    pub(crate) packets: PacketStream,
    pub(crate) writer: PacketWriter,
}

/// A failure to bind or to set up a listening socket, with the I/O error as its source.
pub(crate) fn cannot_listen(error: std::io::Error) -> Status {
    Status::network_error(format!("cannot listen: {error}")).with_source(error)
}

/// Time to spend on telling an over-limit client no, at most.
const REFUSAL_TIME: Duration = Duration::from_secs(3);

/// The form of a refusal at accept: an stmp handshake, or an HTTP answer to a WebSocket
/// upgrade (cheaper than the upgrade, and what proxies and browsers understand).
#[cfg_attr(not(feature = "ws"), allow(dead_code))]
pub(crate) enum Farewell {
    Handshake,
    Http,
}

/// `503 Service Unavailable` with the status's message as its body.
fn http_refusal(status: &Status) -> String {
    let body = status.message();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Reads the client's handshake, keeping any bytes after it in `buffer`.
async fn read_client_handshake<R: AsyncRead + Unpin>(
    reader: &mut R,
    buffer: &mut BytesMut,
    limits: Limits,
) -> Result<ClientHandshake, Status> {
    loop {
        if let Some(hello) = ClientHandshake::decode(buffer, limits)? {
            return Ok(hello);
        }
        if reader.read_buf(buffer).await? == 0 {
            return Err(Status::network_error(
                "connection closed during the handshake",
            ));
        }
    }
}

/// Sends a refusal handshake and ends the connection.
async fn refuse<W: AsyncWrite + Unpin>(writer: &mut W, status: &Status) {
    tracing::debug!(%status, "refusing a connection");
    crate::telemetry::handshake_refused(status);
    let mut out = BytesMut::new();
    ServerHandshake::refuse(status).encode(&mut out);
    let _ = writer.write_all(&out).await;
    let _ = writer.shutdown().await;
}

#[cfg(all(test, feature = "tls", feature = "ws", feature = "quic"))]
mod tests {
    use std::mem::size_of_val;

    use super::*;

    #[tokio::test]
    async fn the_driver_is_polled_before_the_work_and_let_go_once_it_ends() {
        use std::sync::{Arc, Mutex};
        use std::task::Poll;
        let polls = Arc::new(Mutex::new(Vec::new()));
        // Each ends at its nth poll, waking its task until then.
        let ending_at = |name: &'static str, nth: usize| {
            let polls = polls.clone();
            let mut polled = 0;
            std::future::poll_fn(move |cx| {
                polls.lock().expect("polls").push(name);
                polled += 1;
                if polled == nth {
                    return Poll::Ready(nth);
                }
                cx.waker().wake_by_ref();
                Poll::Pending
            })
        };
        let driver = ending_at("driver", 2);
        let mut driver: Option<Driver> = Some(Box::pin(async move {
            driver.await;
        }));
        assert_eq!(beside(&mut driver, ending_at("work", 3)).await, 3);
        assert!(driver.is_none(), "the driver ended, and was dropped");
        assert_eq!(
            *polls.lock().expect("polls"),
            ["driver", "work", "driver", "work", "work"]
        );
    }

    /// The size of what `f` returns, without calling it.
    fn output_size<A, B, C, R>(_: impl FnOnce(A, B, C) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// A connection's task lives as long as its connection, and its future keeps room for
    /// whatever it holds by value at any of its awaits. A TLS stream (1.2 KB) or a QUIC
    /// `Incoming` (0.8 KB) held so made an idle TLS connection's task 6.5 KB, against 2.1 KB
    /// over TCP.
    #[tokio::test]
    async fn a_connection_task_over_tls_or_quic_is_as_small_as_one_over_tcp() {
        let server = Server::builder().build();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cert, key) = {
            let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
                .expect("a self-signed certificate");
            (certified.cert.pem(), certified.signing_key.serialize_pem())
        };
        let config = crate::tls::server_config(cert.as_bytes(), key.as_bytes()).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let path: std::sync::Arc<str> = std::sync::Arc::from("/stmp");
        let mut clients = Vec::new();
        let mut accepted = async || {
            clients.push(TcpStream::connect(addr).await.unwrap());
            let (stream, remote) = listener.accept().await.unwrap();
            let admitted = match server.inner.admission.ticket() {
                Ticket::Serve(slot) => Ok(slot),
                _ => panic!("a fresh server refused a connection"),
            };
            (stream, remote, admitted)
        };

        let (stream, remote, admitted) = accepted().await;
        let tcp = size_of_val(&tcp::serve_tcp(server.clone(), stream, remote, admitted));
        let (stream, remote, admitted) = accepted().await;
        let tls = size_of_val(&tls::serve_tls(
            server.clone(),
            acceptor.clone(),
            stream,
            remote,
            admitted,
        ));
        let (stream, remote, admitted) = accepted().await;
        let ws = size_of_val(&ws::serve_ws(
            server.clone(),
            path.clone(),
            stream,
            remote,
            admitted,
        ));
        let (stream, remote, admitted) = accepted().await;
        let wss = size_of_val(&ws::serve_wss(
            server.clone(),
            acceptor,
            path,
            stream,
            remote,
            admitted,
        ));
        let quic = output_size(Server::serve_quic);
        eprintln!(
            "connection task futures: tcp {tcp} B, tls {tls}, ws {ws}, wss {wss}, quic {quic}"
        );
        // What TLS, WebSocket and QUIC hold beyond TCP lives on the heap, once, and what the
        // handshakes hold is not kept once the connection runs.
        assert!(tls <= tcp + 128, "tls {tls} B against tcp {tcp} B");
        assert!(ws <= tcp + 128, "ws {ws} B against tcp {tcp} B");
        assert!(wss <= ws + 128, "wss {wss} B against ws {ws} B");
        assert!(quic <= tcp + 256, "quic {quic} B against tcp {tcp} B");
    }
}
