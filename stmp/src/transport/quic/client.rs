//! A client's QUIC connection, driven by the tasks that use it.
//!
//! quinn runs an endpoint task that reads the socket and a task per connection that processes
//! packets and sends them; the application's tasks reach those through wake-ups. On a
//! multi-threaded runtime every such hand-over may move the work to the other worker, and a
//! client that keeps calls in flight paid for each one: an answer went from quinn's endpoint
//! task to its connection task to stmp's engine to the caller, whose next request woke quinn's
//! connection task again.
//!
//! Here quinn's protocol state machine (`quinn-proto`, sans-IO) sits behind a mutex, and the
//! work is done where it arises:
//! - a write puts the bytes into the stream and sends the packets that makes, in the writing
//!   task, as a write on TCP does;
//! - a read takes what the stream holds and sends the flow-control credit it frees;
//! - the [`Driver`] receives datagrams, runs the connection's timers (loss detection, delayed
//!   acknowledgements, keep-alive, idle timeout) and wakes the reader and the writer. It is
//!   not a task of its own: the connection's engine task polls it beside the engine
//!   ([`transport::beside`]), so the task that reads the answers is the one that received the
//!   datagrams carrying them, with no wake-up in between.
//!
//! The server keeps quinn's endpoint, which shares one socket among many connections.

use std::cell::RefCell;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use quinn::udp::{self, RecvMeta, UdpSocketState};
use quinn_proto::{
    self as proto, ConnectionHandle, DatagramEvent, Dir, Event, StreamEvent, StreamId,
};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::UdpSocket;

use crate::Status;
use crate::transport;

/// The most datagrams one send hands the kernel at once (generic segmentation offload), as
/// quinn's connection task does.
const MAX_SEGMENTS_PER_SEND: usize = 10;

/// The most receive calls the driver makes before it lets other tasks run.
const MAX_RECEIVES_PER_POLL: usize = 32;

/// The most timers the driver fires in one poll before it lets other tasks run: a timer due
/// again as soon as it fired (pacing, say) must not hold the worker.
const MAX_TIMERS_PER_POLL: usize = 16;

/// A datagram's largest size, and so each receive buffer's share per segment.
const MAX_DATAGRAM_SIZE: usize = 64 * 1024;

/// What ended the connection.
#[derive(Clone, Debug)]
enum Ended {
    /// QUIC's own end: closed by either side, timed out, or a protocol error.
    Lost(proto::ConnectionError),
    /// The UDP socket failed.
    Socket(Arc<io::Error>),
}

impl Ended {
    fn io_error(&self) -> io::Error {
        match self {
            Ended::Lost(error) => io::Error::new(io::ErrorKind::ConnectionAborted, error.clone()),
            Ended::Socket(error) => io::Error::new(error.kind(), error.clone()),
        }
    }

    fn status(&self) -> Status {
        match self {
            Ended::Lost(error) => super::connection_error(error.clone()),
            Ended::Socket(error) => {
                Status::network_error(format!("QUIC: the UDP socket failed: {error}"))
            }
        }
    }
}

/// What the tasks of one connection share.
struct Shared {
    state: Mutex<State>,
    socket: UdpSocket,
    udp: UdpSocketState,
}

struct State {
    /// The endpoint of this one connection: it routes datagrams, and issues connection ids.
    endpoint: proto::Endpoint,
    handle: ConnectionHandle,
    conn: proto::Connection,
    /// The one bidirectional stream stmp runs on, once open.
    stream: Option<StreamId>,
    connected: bool,
    ended: Option<Ended>,
    reader: Option<Waker>,
    writer: Option<Waker>,
    /// `connect`, waiting for the handshake.
    opener: Option<Waker>,
    driver: Option<Waker>,
    /// When the driver's timer fires; `None` when it has none.
    driver_deadline: Option<Instant>,
    /// A transmit the socket had no room for, held in `send_buffer`.
    unsent: Option<proto::Transmit>,
    send_buffer: Vec<u8>,
    /// How many times a read or write woke the driver.
    #[cfg(test)]
    driver_woken_by_io: usize,
    /// How many times the driver woke the reader for what it received.
    #[cfg(test)]
    reader_woken_by_driver: usize,
}

fn wake(waker: &mut Option<Waker>) {
    if let Some(waker) = waker.take() {
        waker.wake();
    }
}

fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(waker) if waker.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A task that panicked holding the lock left the state as consistent as quinn-proto
        // leaves it between calls.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends what the connection has to send, through `send`, until the socket is full; what
    /// did not fit stays in `state.unsent`. Returns whether everything left.
    fn transmit(
        &self,
        state: &mut State,
        now: Instant,
        send: impl Fn(&udp::Transmit<'_>) -> io::Result<()>,
    ) -> bool {
        loop {
            if state.unsent.is_none() {
                state.send_buffer.clear();
                let segments = self.udp.max_gso_segments().clamp(1, MAX_SEGMENTS_PER_SEND);
                match state
                    .conn
                    .poll_transmit(now, segments, &mut state.send_buffer)
                {
                    Some(transmit) => state.unsent = Some(transmit),
                    None => return true,
                }
            }
            let Some(unsent) = &state.unsent else {
                return true;
            };
            let transmit = udp::Transmit {
                destination: unsent.destination,
                ecn: unsent
                    .ecn
                    .and_then(|ecn| udp::EcnCodepoint::from_bits(ecn as u8)),
                contents: &state.send_buffer[..unsent.size],
                segment_size: unsent.segment_size,
                src_ip: unsent.src_ip,
            };
            match send(&transmit) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return false,
                // Anything else is a datagram lost (quinn-udp has logged it): QUIC resends.
                _ => state.unsent = None,
            }
        }
    }

    /// After a read or a write: sends what it made to send, in the task that made it, and
    /// wakes the driver only when it must act sooner than it planned (a new loss-detection
    /// deadline) or the socket was full.
    fn transmit_after_io(&self, state: &mut State) {
        let all_sent = self.transmit(state, Instant::now(), |transmit| {
            // Past tokio's readiness: a full socket is the driver's to wait for, and the
            // driver's own sends clear the readiness this leaves stale.
            self.udp.send((&self.socket).into(), transmit)
        });
        self.forward_endpoint_events(state);
        let sooner = match (state.conn.poll_timeout(), state.driver_deadline) {
            (Some(next), Some(planned)) => next < planned,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if !all_sent || sooner {
            #[cfg(test)]
            {
                state.driver_woken_by_io += 1;
            }
            wake(&mut state.driver);
        }
    }

    fn forward_endpoint_events(&self, state: &mut State) {
        while let Some(event) = state.conn.poll_endpoint_events() {
            if let Some(event) = state.endpoint.handle_event(state.handle, event) {
                state.conn.handle_event(event);
            }
        }
    }

    /// Wakes whoever the connection's events concern; not the reader when it runs in the
    /// driver's task (`driver_task`), which polls it next ([`transport::beside`]).
    fn deliver_events(&self, state: &mut State, driver_task: &Waker) {
        while let Some(event) = state.conn.poll() {
            match event {
                Event::Connected => {
                    state.connected = true;
                    wake(&mut state.opener);
                }
                Event::ConnectionLost { reason } => end(state, Ended::Lost(reason)),
                Event::Stream(StreamEvent::Readable { .. }) => {
                    let polled_next = state
                        .reader
                        .as_ref()
                        .is_some_and(|reader| reader.will_wake(driver_task));
                    if !polled_next {
                        #[cfg(test)]
                        {
                            state.reader_woken_by_driver += 1;
                        }
                        wake(&mut state.reader);
                    }
                }
                Event::Stream(StreamEvent::Writable { .. } | StreamEvent::Stopped { .. }) => {
                    wake(&mut state.writer)
                }
                _ => {}
            }
        }
    }
}

/// Records the first reason the connection ended, and wakes everyone waiting on it.
fn end(state: &mut State, ended: Ended) {
    state.ended.get_or_insert(ended);
    wake(&mut state.opener);
    wake(&mut state.reader);
    wake(&mut state.writer);
}

thread_local! {
    /// One receive buffer per thread, for the drivers that run there: a driver copies each
    /// datagram out of it before its poll ends. A buffer of each connection's own (4 MiB,
    /// where the kernel coalesces datagrams) cost every connect an `mmap` and its `munmap`.
    static RECEIVE_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Receives, keeps time, and sends what those make to send; ends when the connection has
/// drained. Its owner polls it: `connect` while the handshake runs, then the connection's
/// engine task. Dropped before it ends (a cancelled connect, the engine done first), it goes
/// on in a task of its own, so the connection still drains and its peer hears of the close.
struct Driver {
    shared: Arc<Shared>,
    /// The receive buffer the socket needs: a datagram's largest size for each datagram the
    /// kernel may coalesce into one receive.
    receive_size: usize,
    timer: Pin<Box<tokio::time::Sleep>>,
    timer_deadline: Option<Instant>,
    finished: bool,
    /// Running in a task of its own already, after its owner dropped it.
    detached: bool,
}

impl Driver {
    fn new(shared: Arc<Shared>, detached: bool) -> Driver {
        let receive_size = MAX_DATAGRAM_SIZE * shared.udp.gro_segments().max(1);
        Driver {
            shared,
            receive_size,
            timer: Box::pin(tokio::time::sleep_until(tokio::time::Instant::now())),
            timer_deadline: None,
            finished: false,
            detached,
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if self.finished || self.detached {
            return;
        }
        // Outside a runtime, or while it shuts down, the close sent when the connection was
        // dropped is all the peer gets.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(Driver::new(self.shared.clone(), true));
        }
    }
}

impl Driver {
    /// Receives what the socket holds, a bounded number of times.
    fn receive(&mut self, cx: &mut Context<'_>) -> Result<(), io::Error> {
        let shared = &self.shared;
        RECEIVE_BUFFER.with_borrow_mut(|buffer| {
            if buffer.len() < self.receive_size {
                // Zeroed by the allocator: pages are touched only as datagrams fill them.
                *buffer = vec![0; self.receive_size];
            }
            for _ in 0..MAX_RECEIVES_PER_POLL {
                match shared.socket.poll_recv_ready(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(error)) => return Err(error),
                    Poll::Pending => return Ok(()),
                }
                let mut meta = [RecvMeta::default()];
                let received = shared.socket.try_io(Interest::READABLE, || {
                    let mut buffers = [IoSliceMut::new(&mut buffer[..])];
                    shared
                        .udp
                        .recv((&shared.socket).into(), &mut buffers, &mut meta)
                });
                match received {
                    Ok(count) => {
                        let mut state = shared.lock();
                        for meta in &meta[..count] {
                            handle_datagrams(shared, &mut state, meta, &buffer[..meta.len]);
                        }
                    }
                    // Readiness was stale: polled again, it registers the wake-up.
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    // An ICMP error's echo on Linux; meaningless to QUIC, and may be forged.
                    Err(error) if error.kind() == io::ErrorKind::ConnectionReset => {}
                    Err(error) => return Err(error),
                }
            }
            // More may be waiting: come back after the other tasks have run.
            cx.waker().wake_by_ref();
            Ok(())
        })
    }

    /// Sends what the connection has to send, waiting for the socket when it is full.
    fn send(&mut self, cx: &mut Context<'_>, state: &mut State) -> Result<(), io::Error> {
        let shared = &self.shared;
        loop {
            let sent_all = shared.transmit(state, Instant::now(), |transmit| {
                // Through tokio, so that a full socket clears its readiness and the poll
                // below waits for room.
                shared.socket.try_io(Interest::WRITABLE, || {
                    shared.udp.send((&shared.socket).into(), transmit)
                })
            });
            if sent_all {
                return Ok(());
            }
            match shared.socket.poll_send_ready(cx) {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(error)) => return Err(error),
                Poll::Pending => return Ok(()),
            }
        }
    }
}

/// Hands one receive's datagrams (several when the kernel coalesced them) to the connection.
fn handle_datagrams(shared: &Shared, state: &mut State, meta: &RecvMeta, data: &[u8]) {
    let now = Instant::now();
    let ecn = meta
        .ecn
        .and_then(|ecn| proto::EcnCodepoint::from_bits(ecn as u8));
    let mut data = BytesMut::from(data);
    while !data.is_empty() {
        let datagram = data.split_to(meta.stride.min(data.len()));
        let mut response = Vec::new();
        match state
            .endpoint
            .handle(now, meta.addr, meta.dst_ip, ecn, datagram, &mut response)
        {
            Some(DatagramEvent::ConnectionEvent(_, event)) => state.conn.handle_event(event),
            // A stateless reset or version negotiation: sent if there is room, or not at all.
            Some(DatagramEvent::Response(transmit)) => {
                let transmit = udp::Transmit {
                    destination: transmit.destination,
                    ecn: None,
                    contents: &response[..transmit.size],
                    segment_size: transmit.segment_size,
                    src_ip: transmit.src_ip,
                };
                let _ = shared.udp.send((&shared.socket).into(), &transmit);
            }
            // A client endpoint has no server configuration: nobody can open a connection to it.
            Some(DatagramEvent::NewConnection(_)) | None => {}
        }
    }
}

impl Future for Driver {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.finished {
            return Poll::Ready(());
        }
        let polled = self.as_mut().drive(cx);
        self.finished = polled.is_ready();
        polled
    }
}

impl Driver {
    fn drive(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let received = this.receive(cx);
        let shared = this.shared.clone();
        let mut state = shared.lock();
        let state = &mut *state;
        register(&mut state.driver, cx);
        if let Err(error) = received {
            tracing::debug!(%error, "the QUIC socket failed");
            end(state, Ended::Socket(Arc::new(error)));
            return Poll::Ready(());
        }
        // Each turn either fires a timer that was due or ends in a wait.
        for _ in 0..MAX_TIMERS_PER_POLL {
            let now = Instant::now();
            if state.conn.poll_timeout().is_some_and(|due| due <= now) {
                state.conn.handle_timeout(now);
            }
            shared.forward_endpoint_events(state);
            shared.deliver_events(state, cx.waker());
            if let Err(error) = this.send(cx, state) {
                tracing::debug!(%error, "the QUIC socket failed");
                end(state, Ended::Socket(Arc::new(error)));
                return Poll::Ready(());
            }
            shared.forward_endpoint_events(state);
            if state.conn.is_drained() {
                end(state, Ended::Lost(proto::ConnectionError::LocallyClosed));
                return Poll::Ready(());
            }
            state.driver_deadline = state.conn.poll_timeout();
            let Some(deadline) = state.driver_deadline else {
                return Poll::Pending;
            };
            if this.timer_deadline != Some(deadline) {
                this.timer.as_mut().reset(deadline.into());
                this.timer_deadline = Some(deadline);
            }
            // The clock rather than the timer decides: a timer polled past the task's
            // cooperative budget stays pending even when it is due.
            if Instant::now() < deadline && this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// The connection: while it lives, so does the QUIC connection. Dropping it closes the
/// connection (code 0), as dropping quinn's last handle does.
pub(crate) struct ClientConnection(Arc<Shared>);

/// What the server sends on the stream.
pub(crate) struct RecvHalf(Arc<Shared>);

/// What the client sends on the stream. Each write sends its packets before it returns.
pub(crate) struct SendHalf(Arc<Shared>);

impl Drop for ClientConnection {
    fn drop(&mut self) {
        let shared = &self.0;
        let mut state = shared.lock();
        let state = &mut *state;
        if !state.conn.is_closed() {
            state.conn.close(Instant::now(), 0u32.into(), Bytes::new());
            shared.transmit_after_io(state);
        }
        // The driver sees the connection through its draining period, then ends.
        wake(&mut state.driver);
    }
}

impl AsyncRead for RecvHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let shared = &self.0;
        let mut state = shared.lock();
        let state = &mut *state;
        let Some(id) = state.stream else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        let mut stream = state.conn.recv_stream(id);
        let Ok(mut chunks) = stream.read(true) else {
            // The stream is gone: read to its end before, or with the connection.
            return Poll::Ready(match &state.ended {
                Some(ended) => Err(ended.io_error()),
                None => Ok(()),
            });
        };
        let mut read = 0;
        let mut outcome = Ok(false);
        while buf.remaining() > 0 {
            match chunks.next(buf.remaining()) {
                Ok(Some(chunk)) => {
                    read += chunk.bytes.len();
                    buf.put_slice(&chunk.bytes);
                }
                Ok(None) => {
                    outcome = Ok(true);
                    break;
                }
                Err(proto::ReadError::Blocked) => break,
                Err(proto::ReadError::Reset(code)) => {
                    outcome = Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        format!("the server reset the QUIC stream (code {code})"),
                    ));
                    break;
                }
            }
        }
        if chunks.finalize().should_transmit() {
            shared.transmit_after_io(state);
        }
        match outcome {
            _ if read > 0 => Poll::Ready(Ok(())),
            Ok(true) => Poll::Ready(Ok(())),
            Err(error) => Poll::Ready(Err(error)),
            Ok(false) => match &state.ended {
                Some(ended) => Poll::Ready(Err(ended.io_error())),
                None => {
                    register(&mut state.reader, cx);
                    Poll::Pending
                }
            },
        }
    }
}

impl SendHalf {
    fn poll_write_all_of(
        &self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let shared = &self.0;
        let mut state = shared.lock();
        let state = &mut *state;
        if let Some(ended) = &state.ended {
            return Poll::Ready(Err(ended.io_error()));
        }
        let Some(id) = state.stream else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        let mut written = 0;
        let mut failed = None;
        for buf in bufs.iter().filter(|buf| !buf.is_empty()) {
            match state.conn.send_stream(id).write(buf) {
                Ok(taken) => {
                    written += taken;
                    if taken < buf.len() {
                        break;
                    }
                }
                Err(proto::WriteError::Blocked) => break,
                Err(error) => {
                    failed = Some(io::Error::new(io::ErrorKind::BrokenPipe, error));
                    break;
                }
            }
        }
        if written > 0 {
            shared.transmit_after_io(state);
            return Poll::Ready(Ok(written));
        }
        if let Some(error) = failed {
            return Poll::Ready(Err(error));
        }
        if bufs.iter().all(|buf| buf.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        // Flow control or the congestion window: the driver wakes this when there is room.
        register(&mut state.writer, cx);
        Poll::Pending
    }
}

impl AsyncWrite for SendHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_all_of(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_all_of(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Writes have sent what they could already; the rest waits for the peer, not for us.
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let shared = &self.0;
        let mut state = shared.lock();
        let state = &mut *state;
        if let Some(id) = state.stream {
            // Already finished or stopped by the peer: either way nothing more goes out.
            let _ = state.conn.send_stream(id).finish();
            shared.transmit_after_io(state);
        }
        Poll::Ready(Ok(()))
    }
}

/// A connected client: the connection, its stream's halves, and its driver, which the task
/// that reads `recv` must poll ([`transport::beside`]).
pub(crate) struct Connected {
    pub(crate) connection: ClientConnection,
    pub(crate) recv: RecvHalf,
    pub(crate) send: SendHalf,
    pub(crate) driver: Option<transport::Driver>,
}

/// Connects over `socket` (bound, not yet connected), runs the QUIC handshake, and opens the
/// stream stmp runs on.
pub(crate) async fn connect(
    socket: std::net::UdpSocket,
    config: quinn::ClientConfig,
    remote: SocketAddr,
    server_name: &str,
) -> Result<Connected, Status> {
    socket.set_nonblocking(true)?;
    let udp = UdpSocketState::new((&socket).into())?;
    let socket = UdpSocket::from_std(socket)?;
    let mut endpoint = proto::Endpoint::new(
        Arc::new(proto::EndpointConfig::default()),
        None,
        // Path MTU discovery only where the socket forbids fragments.
        !udp.may_fragment(),
        None,
    );
    let (handle, conn) = endpoint
        .connect(Instant::now(), config, remote, server_name)
        .map_err(|e| Status::bad_request(format!("QUIC: {e}")))?;
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            endpoint,
            handle,
            conn,
            stream: None,
            connected: false,
            ended: None,
            reader: None,
            writer: None,
            opener: None,
            driver: None,
            driver_deadline: None,
            unsent: None,
            send_buffer: Vec::new(),
            #[cfg(test)]
            driver_woken_by_io: 0,
            #[cfg(test)]
            reader_woken_by_driver: 0,
        }),
        socket,
        udp,
    });
    // From here on, dropping the connection (a failed handshake, a cancelled connect) closes it.
    let connection = ClientConnection(shared.clone());
    let mut driver: Option<transport::Driver> = Some(Box::pin(Driver::new(shared.clone(), false)));
    let handshake = std::future::poll_fn(|cx| {
        let mut state = shared.lock();
        if let Some(ended) = &state.ended {
            return Poll::Ready(Err(ended.status()));
        }
        if state.connected {
            return Poll::Ready(Ok(()));
        }
        register(&mut state.opener, cx);
        Poll::Pending
    });
    transport::beside(&mut driver, handshake).await?;
    let stream = shared.lock().conn.streams().open(Dir::Bi);
    if stream.is_none() {
        return Err(Status::protocol_error(
            "the QUIC server allows this client no bidirectional stream",
        ));
    }
    shared.lock().stream = stream;
    Ok(Connected {
        connection,
        recv: RecvHalf(shared.clone()),
        send: SendHalf(shared),
        driver,
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::super::test_peer::{Peer, accept, peer};
    use super::*;

    impl Peer {
        /// Connects, and drops the driver: it goes on in a task of its own.
        async fn connect(
            &self,
            to: SocketAddr,
            read_timeout: Duration,
        ) -> Result<(ClientConnection, RecvHalf, SendHalf), Status> {
            let Connected {
                connection,
                recv,
                send,
                driver,
            } = self.connect_keeping_the_driver(to, read_timeout).await?;
            drop(driver);
            Ok((connection, recv, send))
        }

        async fn connect_keeping_the_driver(
            &self,
            to: SocketAddr,
            read_timeout: Duration,
        ) -> Result<Connected, Status> {
            let socket = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
            let config =
                super::super::client_config(&self.client_tls, read_timeout).expect("config");
            connect(socket, config, to, "localhost").await
        }

        /// Serves one connection: echoes its stream until the client finishes it.
        fn echo_one(&self) -> tokio::task::JoinHandle<quinn::Connection> {
            let server = self.server.clone();
            tokio::spawn(async move {
                let (connection, mut send, mut recv) = accept(&server).await;
                tokio::io::copy(&mut recv, &mut send).await.expect("echo");
                send.finish().expect("finish");
                connection
            })
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(60);

    /// Sends `count` messages of 32 bytes through an echo, one at a time, and checks each.
    async fn round_trips(send: &mut SendHalf, recv: &mut RecvHalf, count: u32) {
        for round in 0..count {
            let message = [round as u8; 32];
            send.write_all(&message).await.expect("write");
            let mut echoed = [0; 32];
            recv.read_exact(&mut echoed).await.expect("read");
            assert_eq!(echoed, message);
        }
    }

    /// Finishes the stream, and checks that the echo ends it too with nothing more.
    async fn finish(
        mut send: SendHalf,
        mut recv: RecvHalf,
        echo: tokio::task::JoinHandle<quinn::Connection>,
    ) {
        send.shutdown().await.expect("finish");
        let mut rest = Vec::new();
        recv.read_to_end(&mut rest)
            .await
            .expect("the end of the stream");
        assert!(rest.is_empty());
        echo.await.expect("the server's side");
    }

    #[tokio::test]
    async fn a_write_is_sent_by_the_task_that_writes_it_not_by_the_driver() {
        let peer = peer(TIMEOUT);
        let echo = peer.echo_one();
        let (connection, mut recv, mut send) = peer
            .connect(peer.server.local_addr().expect("address"), TIMEOUT)
            .await
            .expect("connect");
        const ROUND_TRIPS: u32 = 200;
        round_trips(&mut send, &mut recv, ROUND_TRIPS).await;
        let woken = connection.0.lock().driver_woken_by_io;
        // Woken for every write, the driver would be woken `ROUND_TRIPS` times; it is woken
        // only when a write arms a timer sooner than the one it sleeps on.
        assert!(
            woken * 10 < ROUND_TRIPS as usize,
            "the driver was woken {woken} times for {ROUND_TRIPS} writes"
        );
        finish(send, recv, echo).await;
    }

    #[tokio::test]
    async fn a_driver_polled_beside_the_reader_wakes_no_one_for_what_it_receives() {
        let peer = peer(TIMEOUT);
        let echo = peer.echo_one();
        let Connected {
            connection,
            mut recv,
            mut send,
            mut driver,
        } = peer
            .connect_keeping_the_driver(peer.server.local_addr().expect("address"), TIMEOUT)
            .await
            .expect("connect");
        const ROUND_TRIPS: u32 = 200;
        transport::beside(&mut driver, round_trips(&mut send, &mut recv, ROUND_TRIPS)).await;
        assert!(
            driver.is_some(),
            "the connection lives, and so does its driver"
        );
        // Polled in the reader's task, the driver left the reading of 200 answers to the
        // poll that followed it.
        let woken = connection.0.lock().reader_woken_by_driver;
        assert_eq!(woken, 0, "the reader was woken {woken} times");

        // Dropped, the driver goes on in a task of its own, and wakes the reader.
        drop(driver);
        round_trips(&mut send, &mut recv, 1).await;
        finish(send, recv, echo).await;
        assert!(connection.0.lock().reader_woken_by_driver > 0);
    }

    /// A UDP relay between a client and `server` that loses every `lose_every`th datagram
    /// each way, or all of them once `silent` is set.
    struct Relay {
        addr: SocketAddr,
        lost: Arc<std::sync::atomic::AtomicUsize>,
        silent: Arc<std::sync::atomic::AtomicBool>,
    }

    async fn relay(server: SocketAddr, lose_every: usize) -> Relay {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        let lost = Arc::new(AtomicUsize::new(0));
        let silent = Arc::new(AtomicBool::new(false));
        let relay = Relay {
            addr: socket.local_addr().expect("address"),
            lost: lost.clone(),
            silent: silent.clone(),
        };
        tokio::spawn(async move {
            let mut client = None;
            let mut buffer = vec![0; 65536];
            let mut relayed = 0;
            loop {
                let Ok((len, from)) = socket.recv_from(&mut buffer).await else {
                    return;
                };
                let to = if from == server {
                    match client {
                        Some(client) => client,
                        None => continue,
                    }
                } else {
                    client = Some(from);
                    server
                };
                relayed += 1;
                if silent.load(Ordering::Relaxed) || relayed % lose_every == 0 {
                    lost.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let _ = socket.send_to(&buffer[..len], to).await;
            }
        });
        relay
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_path_that_loses_datagrams_loses_no_bytes() {
        loses_no_bytes_on_a_lossy_path(false).await;
    }

    #[tokio::test]
    async fn a_path_that_loses_datagrams_loses_no_bytes_with_the_driver_beside_the_reader() {
        loses_no_bytes_on_a_lossy_path(true).await;
    }

    /// Echoes 3 MB through a relay that loses every seventh datagram, with the driver in the
    /// reading task (`beside_the_reader`) or in a task of its own.
    async fn loses_no_bytes_on_a_lossy_path(beside_the_reader: bool) {
        let peer = peer(TIMEOUT);
        let echo = peer.echo_one();
        let relay = relay(peer.server.local_addr().expect("address"), 7).await;
        let Connected {
            connection: _connection,
            mut recv,
            mut send,
            mut driver,
        } = peer
            .connect_keeping_the_driver(relay.addr, TIMEOUT)
            .await
            .expect("connect");
        if !beside_the_reader {
            driver = None;
        }
        // More than the server's stream window (1.25 MB): the writes wait for the credit that
        // the client's reads give the server, and that the driver brings back.
        let sent: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let writing = tokio::spawn({
            let sent = sent.clone();
            async move {
                send.write_all(&sent).await.expect("write");
                send.shutdown().await.expect("finish");
            }
        });
        let mut received = Vec::with_capacity(sent.len());
        let reading = transport::beside(&mut driver, recv.read_to_end(&mut received));
        tokio::time::timeout(Duration::from_secs(30), reading)
            .await
            .expect("echoed within 30 s")
            .expect("read");
        writing.await.expect("the writer");
        assert!(
            received == sent,
            "{} bytes came back of {}",
            received.len(),
            sent.len()
        );
        let lost = relay.lost.load(std::sync::atomic::Ordering::Relaxed);
        assert!(lost > 100, "only {lost} datagrams were lost");
        echo.await.expect("the server's side");
    }

    #[tokio::test]
    async fn a_silent_server_ends_the_connection_at_the_idle_timeout() {
        let read_timeout = Duration::from_millis(500);
        let peer = peer(read_timeout);
        let echo = peer.echo_one();
        let relay = relay(peer.server.local_addr().expect("address"), usize::MAX).await;
        let (_connection, mut recv, mut send) = peer
            .connect(relay.addr, read_timeout)
            .await
            .expect("connect");
        send.write_all(b"hello").await.expect("write");
        let mut echoed = [0; 5];
        recv.read_exact(&mut echoed).await.expect("read");
        relay
            .silent
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let started = Instant::now();
        let error = tokio::time::timeout(Duration::from_secs(10), recv.read(&mut echoed))
            .await
            .expect("the read ends within 10 s")
            .expect_err("a read of a lost connection fails");
        assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted, "{error}");
        assert!(error.to_string().contains("timed out"), "{error}");
        assert!(
            started.elapsed() >= read_timeout / 2,
            "{:?}",
            started.elapsed()
        );
        let error = send.write_all(b"more").await.expect_err("a write too");
        assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted, "{error}");
        drop(echo);
    }

    #[tokio::test]
    async fn the_servers_close_reaches_reads_and_writes_with_its_reason() {
        let peer = peer(TIMEOUT);
        let server = peer.server.clone();
        let closing = tokio::spawn(async move {
            let (connection, _send, mut recv) = accept(&server).await;
            let mut first = [0; 5];
            recv.read_exact(&mut first).await.expect("read");
            connection.close(7u32.into(), b"going away");
        });
        let (_connection, mut recv, mut send) = peer
            .connect(peer.server.local_addr().expect("address"), TIMEOUT)
            .await
            .expect("connect");
        send.write_all(b"hello").await.expect("write");
        let mut buffer = [0; 16];
        let error = tokio::time::timeout(Duration::from_secs(10), recv.read(&mut buffer))
            .await
            .expect("the read ends")
            .expect_err("a closed connection's read fails");
        assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted, "{error}");
        assert!(error.to_string().contains("going away"), "{error}");
        let error = send.write_all(b"more").await.expect_err("writes fail too");
        assert!(error.to_string().contains("going away"), "{error}");
        closing.await.expect("the server's side");
    }

    #[tokio::test]
    async fn dropping_the_connection_closes_it_for_the_server() {
        let peer = peer(TIMEOUT);
        let server = peer.server.clone();
        let accepted = tokio::spawn(async move {
            let (connection, _send, mut recv) = accept(&server).await;
            let mut first = [0; 5];
            recv.read_exact(&mut first).await.expect("read");
            connection
        });
        let (connection, recv, mut send) = peer
            .connect(peer.server.local_addr().expect("address"), TIMEOUT)
            .await
            .expect("connect");
        send.write_all(b"hello").await.expect("write");
        let server_side = accepted.await.expect("accepted");
        drop((connection, recv, send));
        let closed = tokio::time::timeout(Duration::from_secs(10), server_side.closed())
            .await
            .expect("closed within 10 s, not at the idle timeout");
        match closed {
            quinn::ConnectionError::ApplicationClosed(close) => {
                assert_eq!(close.error_code, 0u32.into())
            }
            other => panic!("closed by {other}"),
        }
    }

    #[tokio::test]
    async fn a_handshake_nobody_answers_fails_at_the_idle_timeout() {
        let read_timeout = Duration::from_millis(300);
        let peer = peer(read_timeout);
        let nobody = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let outcome = tokio::time::timeout(
            Duration::from_secs(10),
            peer.connect(nobody.local_addr().expect("address"), read_timeout),
        )
        .await
        .expect("the handshake gives up within 10 s");
        let Err(status) = outcome else {
            panic!("connected to nobody")
        };
        assert_eq!(status.code(), crate::Code::NetworkError, "{status}");
    }
}
