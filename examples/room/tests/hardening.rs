//! The chat server against a hostile client: sign-in floods, slow hashes, huge passwords,
//! stale tokens, nosy `/who`s, and tokens in URLs.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use common::*;
use room::accounts::{Accounts, MAX_PASSWORD};
use room::client::Auth;
use room::limits::{RateLimit, SignInLimits};
use room::server::{Chat, TlsPem};
use room::terminal::who_lines;
use room::{AccountServiceClient, Credentials, Empty};
use stmp::{Code, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Long enough that no bucket refills while a test runs.
const HOUR: Duration = Duration::from_secs(3600);

/// A chat server listening on TCP at `addrs`, WebSocket on the first one.
async fn listen(chat: &Chat, addrs: &[&str]) -> (stmp::Server, Vec<SocketAddr>) {
    let server = room::server::build(chat, Duration::from_secs(60));
    let mut bound = Vec::new();
    for addr in addrs {
        bound.push(within(server.listen_tcp(*addr)).await.expect("listens"));
    }
    (server, bound)
}

async fn raw(addr: SocketAddr) -> AccountServiceClient<stmp::Client> {
    let client = within(stmp::Client::connect(&format!("tcp://{addr}")))
        .await
        .expect("connects");
    AccountServiceClient::new(client)
}

async fn sign_in_as(
    account: &AccountServiceClient<stmp::Client>,
    name: &str,
    password: &str,
) -> Result<room::Session, Status> {
    within(account.sign_in(Credentials {
        name: s(name),
        password: s(password),
    }))
    .await
}

fn assert_limited(result: Result<room::Session, Status>, whose: &str) {
    let status = result.expect_err("let in over the limit");
    assert_eq!(status.code(), Code::TooManyRequests, "{status}");
    assert!(
        status.message().contains(whose) && status.message().contains("retry in"),
        "{status}"
    );
}

fn wrong(result: Result<room::Session, Status>) {
    let status = result.expect_err("a wrong password let in");
    assert_eq!(status.code(), Code::Unauthorized, "{status}");
}

/// A loopback address of the other family, when this machine has IPv6.
fn ipv6_loopback() -> Option<&'static str> {
    std::net::TcpListener::bind("[::1]:0")
        .ok()
        .map(|_| "[::1]:0")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_is_rate_limited_per_connection_and_per_address() {
    logs();
    let accounts = accounts();
    let chat = Chat::new(accounts.clone()).sign_in_limits(SignInLimits {
        per_conn: RateLimit {
            attempts: 3,
            period: HOUR,
        },
        per_address: RateLimit {
            attempts: 5,
            period: HOUR,
        },
        ..SignInLimits::default()
    });
    let mut addrs = vec!["127.0.0.1:0"];
    addrs.extend(ipv6_loopback());
    let (server, bound) = listen(&chat, &addrs).await;
    within(accounts.sign_up("alice", "secret")).await.unwrap();

    // One connection: three wrong passwords, then it is refused before any hashing, even
    // with the right password.
    let first = raw(bound[0]).await;
    for n in 0..3 {
        wrong(sign_in_as(&first, "alice", &format!("guess-{n}")).await);
    }
    let hashed = accounts.hash_stats().total;
    assert_limited(sign_in_as(&first, "alice", "guess-3").await, "connection");
    assert_limited(sign_in_as(&first, "alice", "secret").await, "connection");
    assert_eq!(accounts.hash_stats().total, hashed);

    // Another connection from the same address has its own budget, but shares the address's:
    // two more failures use that up.
    let second = raw(bound[0]).await;
    wrong(sign_in_as(&second, "alice", "guess-4").await);
    wrong(sign_in_as(&second, "alice", "guess-5").await);
    assert_limited(sign_in_as(&second, "alice", "secret").await, "address");
    let third = raw(bound[0]).await;
    assert_limited(sign_in_as(&third, "alice", "secret").await, "address");

    // Another address is not affected at all; and successes cost nothing, however many.
    match bound.get(1) {
        Some(&v6) => {
            let other = raw(v6).await;
            wrong(sign_in_as(&other, "alice", "guess-6").await);
            for _ in 0..6 {
                let session = sign_in_as(&other, "alice", "secret").await.unwrap();
                assert_eq!(session.user, "alice");
            }
        }
        None => eprintln!("no IPv6 loopback here: the other-address case is not run"),
    }
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_wrong_passwords_hashes_a_few_at_a_time() {
    logs();
    // Hashes slow enough that unbounded ones would overlap.
    let slow = argon2::Params::new(2048, 1, 1, None).unwrap();
    let accounts = Accounts::in_memory().with_params(slow).with_hash_limit(2);
    let chat = Chat::new(accounts.clone()).sign_in_limits(SignInLimits {
        per_conn: RateLimit {
            attempts: 4,
            period: HOUR,
        },
        per_address: RateLimit {
            attempts: 1000,
            period: HOUR,
        },
        ..SignInLimits::default()
    });
    let (server, bound) = listen(&chat, &["127.0.0.1:0"]).await;
    within(accounts.sign_up("alice", "secret")).await.unwrap();
    let before = accounts.hash_stats().total;

    // Many connections at once, each firing many sign-ins at once without waiting.
    let mut floods = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let account = raw(bound[0]).await;
        for n in 0..20 {
            let account = account.clone();
            floods.spawn(async move { sign_in_as(&account, "alice", &format!("guess-{n}")).await });
        }
    }
    let (mut refused, mut limited) = (0, 0);
    for answer in within(floods.join_all()).await {
        match answer.expect_err("a wrong password let in").code() {
            Code::Unauthorized => refused += 1,
            Code::TooManyRequests => limited += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    // Four hashes per connection, the rest refused at once; never more than two at a time.
    assert_eq!((refused, limited), (6 * 4, 6 * 16));
    let stats = accounts.hash_stats();
    assert_eq!(stats.total - before, 6 * 4, "{stats:?}");
    assert!(stats.peak <= 2, "{stats:?}");
    assert_eq!(stats.running, 0, "{stats:?}");
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_passwords_and_names_are_refused_without_hashing() {
    logs();
    let accounts = accounts();
    let chat = Chat::new(accounts.clone());
    let (server, bound) = listen(&chat, &["127.0.0.1:0"]).await;
    within(accounts.sign_up("alice", "secret")).await.unwrap();
    let hashed = accounts.hash_stats().total;
    let account = raw(bound[0]).await;

    let huge = "x".repeat(1 << 20);
    for (name, password) in [
        ("alice", huge.as_str()),
        ("alice", &huge[..MAX_PASSWORD + 1]),
        (huge.as_str(), "secret"),
    ] {
        let status = sign_in_as(&account, name, password).await.unwrap_err();
        assert_eq!(status.code(), Code::BadRequest, "{status}");
        assert!(status.message().len() < 200, "the refusal echoes the input");
        let status = within(account.sign_up(Credentials {
            name: s(name),
            password: s(password),
        }))
        .await
        .unwrap_err();
        assert_eq!(status.code(), Code::BadRequest, "{status}");
    }
    assert_eq!(accounts.hash_stats().total, hashed);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_are_refused_and_passwords_still_work() {
    logs();
    let now = Arc::new(AtomicI64::new(1_700_000_000_000));
    let clock = now.clone();
    let accounts = Accounts::in_memory()
        .with_params(Accounts::test_params())
        .with_token_ttl(Duration::from_secs(3600))
        .with_clock(move || clock.load(Ordering::SeqCst));
    let pem = TlsPem::self_signed().unwrap();
    let server = serve(accounts, Addrs::any(), &pem).await;
    let tcp = server.tcp_url().unwrap();
    let ws = server.ws_url(false).unwrap();

    let (alice, _events) = connect(options(&tcp, sign_up("alice"), &pem)).await;
    let token = alice.token();
    let (device, _device_events) = connect(options(&ws, Auth::Token(token.clone()), &pem)).await;
    assert_eq!(device.user(), "alice");
    device.close().await;

    // An hour later the token is no good, and forgotten once seen expired.
    now.fetch_add(3_600_000, Ordering::SeqCst);
    let status = refused(options(&ws, Auth::Token(token.clone()), &pem)).await;
    assert_eq!(status.code(), Code::Unauthorized, "{status}");
    assert!(status.message().contains("expired"), "{status}");
    let status = refused(options(&tcp, Auth::Token(token.clone()), &pem)).await;
    assert_eq!(status.code(), Code::Unauthorized, "{status}");
    assert!(status.message().contains("forgotten"), "{status}");
    // Signing in with the password gives a fresh one.
    let (again, _again_events) =
        connect(options(&tcp, sign_in("alice", "alice-password"), &pem)).await;
    let fresh = again.token();
    assert_ne!(fresh, token);
    let (device, _device_events) = connect(options(&ws, Auth::Token(fresh), &pem)).await;
    assert_eq!(device.user(), "alice");

    for client in [alice, again, device] {
        client.close().await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_shows_names_and_transports_but_no_addresses() {
    logs();
    let pem = TlsPem::self_signed().unwrap();
    let server = serve(accounts(), Addrs::any(), &pem).await;
    let (alice, _alice_events) =
        connect(options(&server.tcp_url().unwrap(), sign_up("alice"), &pem)).await;
    let (bob, _bob_events) = connect(options(
        &server.ws_url(false).unwrap(),
        sign_up("bob"),
        &pem,
    ))
    .await;

    let list = within(bob.who(None)).await.unwrap();
    let users: Vec<(&str, &str)> = list
        .entries
        .iter()
        .map(|e| (e.user.as_str(), e.transport.as_str()))
        .collect();
    assert_eq!(users, [("alice", "tcp"), ("bob", "ws")]);
    let shown = format!("{list:?}\n{}", who_lines(&list));
    assert!(!shown.contains("127.0.0.1"), "{shown}");
    let seen = server.server.conns().to_vec();
    assert_eq!(seen.len(), 2);
    for conn in seen {
        let port = conn.remote_addr().unwrap().port();
        assert!(!shown.contains(&port.to_string()), "{shown}");
    }

    alice.close().await;
    bob.close().await;
    server.shutdown().await;
}

/// The WebSocket upgrade request a client sends, as received by a listener that answers
/// nothing useful.
async fn upgrade_request_of(auth: Auth) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let receiving = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buffer = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 64 << 10 {
            let n = socket.read(&mut buffer).await.unwrap();
            if n == 0 {
                break;
            }
            request.extend_from_slice(&buffer[..n]);
        }
        let _ = socket
            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
            .await;
        String::from_utf8(request).unwrap()
    });
    let url = format!("ws://{addr}/room");
    let pem = TlsPem::self_signed().unwrap();
    let _ = within(room::client::ChatClient::connect(options(&url, auth, &pem))).await;
    within(receiving).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_urls_carry_no_token() {
    logs();
    let token = "c0ffee".repeat(10);
    let request = upgrade_request_of(Auth::Token(token.clone())).await;
    let (request_line, headers) = request.split_once("\r\n").unwrap();
    assert!(request_line.starts_with("GET /room?"), "{request_line}");
    assert!(!request_line.contains(&token), "{request_line}");
    assert!(!request_line.contains("token"), "{request_line}");
    assert!(
        headers
            .lines()
            .any(|line| line.eq_ignore_ascii_case(&format!("token: {token}"))),
        "{headers}"
    );

    // And a real server signs the token in from that header.
    let pem = TlsPem::self_signed().unwrap();
    let server = serve(accounts(), Addrs::any(), &pem).await;
    let (alice, _events) =
        connect(options(&server.tcp_url().unwrap(), sign_up("alice"), &pem)).await;
    for text in [false, true] {
        let url = server.ws_url(text).unwrap();
        let (device, _device_events) =
            connect(options(&url, Auth::Token(alice.token()), &pem)).await;
        let session = within(AccountServiceClient::new(device.stmp().clone()).current(Empty {}))
            .await
            .unwrap();
        assert_eq!(session.user, "alice", "{url}");
        device.close().await;
    }
    alice.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_signs_in_after_the_handshake_for_clients_without_headers() {
    logs();
    let accounts = accounts();
    let chat = Chat::new(accounts.clone()).sign_in_limits(SignInLimits {
        per_conn: RateLimit {
            attempts: 2,
            period: HOUR,
        },
        ..SignInLimits::default()
    });
    let (server, _) = listen(&chat, &[]).await;
    let token = within(accounts.sign_up("alice", "secret")).await.unwrap();
    let ws = within(server.listen_ws("127.0.0.1:0", room::WS_PATH))
        .await
        .unwrap();
    let client = within(stmp::Client::connect(&format!(
        "ws://{ws}{}",
        room::WS_PATH
    )))
    .await
    .unwrap();
    let account = AccountServiceClient::new(client.clone());
    let chat_service = room::ChatServiceClient::new(client.clone());
    let resume = |token: String| within(account.resume(room::TokenInput { token }));

    let status = resume("0".repeat(64)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthorized, "{status}");
    let status = resume("0".repeat(1 << 16)).await.unwrap_err();
    assert_eq!(status.code(), Code::BadRequest, "{status}");
    assert!(within(chat_service.list_rooms(Empty {})).await.is_err());
    let session = resume(token.clone()).await.unwrap();
    assert_eq!(session.user, "alice");
    assert!(session.token.is_empty());
    within(chat_service.list_rooms(Empty {})).await.unwrap();
    // Guessing is rate-limited like passwords.
    let status = resume("1".repeat(64)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthorized, "{status}");
    let status = resume(token).await.unwrap_err();
    assert_eq!(status.code(), Code::TooManyRequests, "{status}");

    client.close().await;
    server.shutdown(Duration::from_secs(1)).await;
}
