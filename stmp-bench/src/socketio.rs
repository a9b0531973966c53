//! socketioxide, the socket.io server for Rust, as a peer of stmp over WebSocket: an `echo`
//! event answered with its acknowledgement, as a socket.io application makes a call.
//!
//! The server is socketioxide's own (an axum app with its layer, the default namespace, one
//! handler). The client is this suite's: socket.io 5 packets over engine.io 4, on a WebSocket
//! from the start (no long-polling first), several calls in flight on one connection, matched
//! to their acknowledgements by id, and its writes gathered as stmp's client gathers them. A
//! call is `42<id>["echo","<payload>"]`; its answer `43<id>["<payload>"]`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::serve::ListenerExt as _;
use futures_util::{SinkExt, StreamExt};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Data, SocketRef};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::Result;
use crate::measure::Call;
use crate::systems::HANDSHAKE_TIMEOUT;

/// How long a call waits for its acknowledgement (as long as an stmp client's default).
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The event every call sends.
const ECHO_EVENT: &str = "echo";

/// Serves socket.io on a port of its own, in a task: every `echo` event is answered with its
/// own data as the acknowledgement. Returns the address and the handle that broadcasts.
pub async fn serve() -> Result<(SocketAddr, SocketIo)> {
    let (layer, io) = SocketIo::new_layer();
    // The listener is set in the handler's synchronous part: socketioxide sends the connect
    // answer before it runs the handler and spawns the handler's future, so a listener set in
    // that future can miss a client's first events (they go unanswered).
    io.ns("/", |socket: SocketRef| {
        socket.on(
            ECHO_EVENT,
            async |ack: AckSender, Data(payload): Data<String>| {
                let _ = ack.send(&payload);
            },
        );
        std::future::ready(())
    });
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // As every other server of the suite: no Nagle delay on small answers.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(axum::serve(listener, axum::Router::new().layer(layer)).into_future());
    Ok((addr, io))
}

/// The fan-out event as socketioxide sends it: `42["event",{"seq":…,"payload":"…"}]`, with a
/// payload of as many characters as stmp's event has bytes.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct FanoutEvent {
    /// The round it belongs to.
    pub seq: u64,
    /// Opaque text.
    pub payload: String,
}

/// The name of the fan-out event.
pub const FANOUT_EVENT: &str = "event";

/// The fan-out event of round `seq`.
pub fn fanout_event(seq: u64) -> FanoutEvent {
    FanoutEvent {
        seq,
        payload: "x".repeat(crate::EVENT_PAYLOAD),
    }
}

/// Bytes of a fan-out event's WebSocket message (as the server sends it, unmasked).
pub fn fanout_frame_len() -> usize {
    let json = serde_json::to_string(&(FANOUT_EVENT, fanout_event(u64::MAX / 2)))
        .expect("the event serialises");
    let text = 2 + json.len();
    text + if text < 126 { 2 } else { 4 }
}

/// The seq of a fan-out event's packet data (what follows `42`), if it is one.
pub fn fanout_seq(data: &str) -> Option<u64> {
    let (name, event): (String, FanoutEvent) = serde_json::from_str(data).ok()?;
    (name == FANOUT_EVENT).then_some(event.seq)
}

/// One socket.io connection: a writer task that gathers the calls' packets, a reader task
/// that hands each acknowledgement to its caller and answers the server's pings. The
/// connection closes when its last handle is dropped.
#[derive(Clone)]
pub struct SocketIoClient {
    shared: Arc<Shared>,
    _closes: Arc<CloseOnDrop>,
}

/// Sends the WebSocket's Close when the last handle on the connection goes (the reader task
/// keeps the connection's state, and so its writer, alive until the server answers it).
struct CloseOnDrop(mpsc::UnboundedSender<Message>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(Message::Close(None));
    }
}

/// What a client does with the data of each event the server sends it (what follows `42`).
pub type OnEvent = Arc<dyn Fn(&str) + Send + Sync>;

struct Shared {
    packets: mpsc::UnboundedSender<Message>,
    on_event: Option<OnEvent>,
    /// The callers waiting for an acknowledgement; `None` once the connection is gone.
    waiting: Mutex<Option<HashMap<u64, oneshot::Sender<String>>>>,
    next_id: AtomicU64,
}

impl SocketIoClient {
    /// Opens the WebSocket, reads engine.io's open packet and joins the default namespace.
    pub async fn connect(addr: SocketAddr) -> Result<SocketIoClient> {
        SocketIoClient::listening(addr, None).await
    }

    /// [`connect`](Self::connect), with `on_event` called for every event the server sends.
    pub async fn listening(addr: SocketAddr, on_event: Option<OnEvent>) -> Result<SocketIoClient> {
        let connecting = SocketIoClient::open(addr, on_event);
        tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting)
            .await
            .map_err(|_| format!("no socket.io connection within {HANDSHAKE_TIMEOUT:?}"))?
    }

    async fn open(addr: SocketAddr, on_event: Option<OnEvent>) -> Result<SocketIoClient> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
        let (ws, _) = tokio_tungstenite::client_async(url, tcp).await?;
        let (mut sink, mut stream) = ws.split();
        let opened = next_text(&mut stream).await?;
        if !opened.starts_with('0') {
            return Err(format!("not engine.io's open packet: {opened:?}").into());
        }
        sink.send(Message::text("40")).await?;
        loop {
            match next_text(&mut stream).await? {
                joined if joined.starts_with("40") => break,
                ping if ping == "2" => sink.send(Message::text("3")).await?,
                other => return Err(format!("not socket.io's connect answer: {other:?}").into()),
            }
        }
        let (packets, mut queued) = mpsc::unbounded_channel::<Message>();
        let shared = Arc::new(Shared {
            packets,
            on_event,
            waiting: Mutex::new(Some(HashMap::new())),
            next_id: AtomicU64::new(0),
        });
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(64);
            while queued.recv_many(&mut batch, 64).await > 0 {
                for packet in batch.drain(..) {
                    sink.feed(packet).await?;
                }
                sink.flush().await?;
            }
            sink.close().await
        });
        let reading = shared.clone();
        tokio::spawn(async move {
            while let Ok(text) = next_text(&mut stream).await {
                reading.received(&text);
            }
            // Callers still waiting see their sender dropped, and later ones find it gone.
            reading
                .waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
        });
        let closes = Arc::new(CloseOnDrop(shared.packets.clone()));
        Ok(SocketIoClient {
            shared,
            _closes: closes,
        })
    }

    /// Emits `echo` with `payload` and waits for its acknowledgement's data.
    pub async fn echo(&self, payload: &str) -> Result<String> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        self.shared
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
            .ok_or("the socket.io connection is closed")?
            .insert(id, answer);
        let packet = format!("42{id}{}", serde_json::to_string(&(ECHO_EVENT, payload))?);
        self.shared
            .packets
            .send(Message::text(packet))
            .map_err(|_| "the socket.io connection is closed")?;
        let acked = tokio::time::timeout(CALL_TIMEOUT, answered)
            .await
            .map_err(|_| format!("no acknowledgement within {CALL_TIMEOUT:?}"))?
            .map_err(|_| "the socket.io connection closed before the answer")?;
        let (data,): (String,) = serde_json::from_str(&acked)?;
        Ok(data)
    }
}

impl Shared {
    fn received(&self, text: &str) {
        // engine.io's ping: answer it, or the server drops the connection.
        if text == "2" {
            let _ = self.packets.send(Message::text("3"));
            return;
        }
        if let (Some(event), Some(on_event)) = (text.strip_prefix("42"), &self.on_event) {
            return on_event(event);
        }
        let Some(ack) = text.strip_prefix("43") else {
            return;
        };
        let digits = ack.bytes().take_while(u8::is_ascii_digit).count();
        let Ok(id) = ack[..digits].parse::<u64>() else {
            return;
        };
        let waiting = self
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
            .and_then(|waiting| waiting.remove(&id));
        if let Some(caller) = waiting {
            let _ = caller.send(ack[digits..].to_owned());
        }
    }
}

/// Connects `n` clients, 64 at a time, each calling `on_event` (if any) for every event.
pub async fn clients(
    addr: SocketAddr,
    n: usize,
    on_event: Option<OnEvent>,
) -> Result<Vec<SocketIoClient>> {
    futures_util::stream::iter(0..n)
        .map(|_| SocketIoClient::listening(addr, on_event.clone()))
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// The next text message; pings, pongs and binary messages are not socket.io's packets.
async fn next_text<S>(stream: &mut S) -> Result<String>
where
    S: futures_util::Stream<Item = tokio_tungstenite::tungstenite::Result<Message>> + Unpin,
{
    loop {
        match stream.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
            Some(Ok(Message::Close(_))) | None => {
                return Err("the socket.io server closed the connection".into());
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

/// A caller on a socket.io connection, with each of its payloads in turn.
pub struct SocketIoCall {
    client: SocketIoClient,
    inputs: Vec<String>,
    next: usize,
}

impl SocketIoCall {
    /// Caller number `caller` of a point, with payloads of `payload` bytes.
    pub fn caller(client: SocketIoClient, payload: usize, caller: usize) -> SocketIoCall {
        let inputs = crate::echo_payloads(payload, caller)
            .into_iter()
            .map(|bytes| String::from_utf8(bytes).expect("the echo payloads are text"))
            .collect();
        SocketIoCall {
            client,
            inputs,
            next: 0,
        }
    }
}

impl Call for SocketIoCall {
    async fn call(&mut self) -> Result<()> {
        let turn = self.next;
        self.next = (turn + 1) % self.inputs.len();
        let sent = &self.inputs[turn];
        let answer = self.client.echo(sent).await?;
        if answer.len() == sent.len() {
            Ok(())
        } else {
            Err(format!(
                "echo of {} bytes came back with {}",
                sent.len(),
                answer.len()
            )
            .into())
        }
    }
}
