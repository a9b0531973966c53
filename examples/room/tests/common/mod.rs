//! Helpers shared by the tests: a server on loopback, clients, and bounded waits.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use room::accounts::Accounts;
use room::client::{Auth, ChatClient, ChatEvent, ChatEvents, ChatOptions};
use room::server::{Chat, RoomServer, ServerOptions, TlsPem};
use stmp::Status;

/// The longest any single step may take (debug builds on a busy machine are slow).
pub const STEP: Duration = Duration::from_secs(20);

/// Runs `future`, failing the test when it takes longer than [`STEP`].
pub async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(STEP, future).await.expect("timed out")
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Where a server listens.
#[derive(Clone, Copy, Debug)]
pub struct Addrs {
    pub tcp: SocketAddr,
    pub ws: SocketAddr,
    pub quic: SocketAddr,
}

impl Addrs {
    /// Port 0 everywhere.
    pub fn any() -> Addrs {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        Addrs {
            tcp: any,
            ws: any,
            quic: any,
        }
    }
}

/// Accounts with cheap hashing.
pub fn accounts() -> Accounts {
    Accounts::in_memory().with_params(Accounts::test_params())
}

/// Starts a server on TCP, WebSocket and QUIC.
pub async fn serve(accounts: Accounts, addrs: Addrs, pem: &TlsPem) -> RoomServer {
    within(RoomServer::start(
        Chat::new(accounts),
        ServerOptions {
            tcp: Some(addrs.tcp),
            ws: Some(addrs.ws),
            quic: Some(addrs.quic),
            tls: Some(pem.clone()),
            bind_retry: Duration::from_secs(10),
            ..ServerOptions::default()
        },
    ))
    .await
    .expect("server starts")
}

/// The addresses a server listens on.
pub fn addrs(server: &RoomServer) -> Addrs {
    Addrs {
        tcp: server.tcp.unwrap(),
        ws: server.ws.unwrap(),
        quic: server.quic.unwrap(),
    }
}

/// Client options for tests: the server's certificate, quick reconnects.
pub fn options(url: &str, auth: Auth, pem: &TlsPem) -> ChatOptions {
    ChatOptions::new(url, auth)
        .ca_pem(pem.cert.as_bytes())
        .reconnect(Duration::from_millis(20), Duration::from_millis(250))
        .call_timeout(STEP)
}

pub fn sign_up(user: &str) -> Auth {
    Auth::SignUp {
        user: user.into(),
        password: format!("{user}-password"),
    }
}

pub fn sign_in(user: &str, password: &str) -> Auth {
    Auth::SignIn {
        user: user.into(),
        password: password.into(),
    }
}

/// Connects and signs in.
pub async fn connect(options: ChatOptions) -> (ChatClient, ChatEvents) {
    let url = options.url.clone();
    within(ChatClient::connect(options))
        .await
        .unwrap_or_else(|status| panic!("cannot connect to {url}: {status}"))
}

/// Connects, expecting a refusal.
pub async fn refused(options: ChatOptions) -> Status {
    match within(ChatClient::connect(options)).await {
        Ok((client, _)) => panic!("{client:?} was let in"),
        Err(status) => status,
    }
}

/// The next event.
pub async fn next(events: &mut ChatEvents) -> ChatEvent {
    within(events.recv()).await.expect("the client is gone")
}

/// Skips events until `pick` takes one.
pub async fn until<T>(events: &mut ChatEvents, mut pick: impl FnMut(&ChatEvent) -> Option<T>) -> T {
    within(async {
        loop {
            let event = events.recv().await.expect("the client is gone");
            if let Some(picked) = pick(&event) {
                return picked;
            }
        }
    })
    .await
}

/// Asserts that no event is waiting.
pub fn quiet(events: &mut ChatEvents, who: &str) {
    if let Some(event) = events.try_recv() {
        panic!("{who} got an unexpected {event:?}");
    }
}

/// `(room, sender, text)` of a room message, or a panic naming `who`.
pub fn room_message(event: ChatEvent, who: &str) -> (String, String, String) {
    match event {
        ChatEvent::RoomMessage(m) => (m.room, m.sender, m.text),
        other => panic!("{who} expected a room message, got {other:?}"),
    }
}

/// `(sender, recipient, text)` of a direct message, or a panic naming `who`.
pub fn direct_message(event: ChatEvent, who: &str) -> (String, String, String) {
    match event {
        ChatEvent::DirectMessage(m) => (m.sender, m.recipient, m.text),
        other => panic!("{who} expected a direct message, got {other:?}"),
    }
}

/// `(room, user)` of a join, or a panic naming `who`.
pub fn joined(event: ChatEvent, who: &str) -> (String, String) {
    match event {
        ChatEvent::UserJoined(e) => (e.room, e.user),
        other => panic!("{who} expected a join, got {other:?}"),
    }
}

/// `(room, user, reason)` of a leave, or a panic naming `who`.
pub fn left(event: ChatEvent, who: &str) -> (String, String, String) {
    match event {
        ChatEvent::UserLeft(e) => (e.room, e.user, e.reason),
        other => panic!("{who} expected a leave, got {other:?}"),
    }
}

pub fn s(text: &str) -> String {
    text.to_owned()
}

/// Waits until `condition` holds (state other tasks change, such as the server noticing a
/// client went away).
pub async fn eventually(mut condition: impl FnMut() -> bool) {
    within(async {
        while !condition() {
            tokio::task::yield_now().await;
        }
    })
    .await
}
