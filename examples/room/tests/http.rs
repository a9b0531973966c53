//! The HTTP API of the chat server: what the README's `curl` does reaches a signed-in
//! client, and the API refuses callers without the token.

mod common;

use common::*;
use room::server::TlsPem;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One HTTP/1.1 request, as curl sends it; returns the status and the body.
async fn http(
    addr: std::net::SocketAddr,
    request_line: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut stream = within(TcpStream::connect(addr)).await.unwrap();
    let auth = token
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{request_line} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    within(stream.write_all(request.as_bytes())).await.unwrap();
    let mut response = String::new();
    within(stream.read_to_string(&mut response)).await.unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_publishes_into_a_room_over_http() {
    logs();
    let pem = TlsPem::self_signed().unwrap();
    let server = serve(accounts(), Addrs::any(), &pem).await;
    let api = room::http::api(&server.chat, &server.server, "s3cret").unwrap();
    let http_addr = api.listen("127.0.0.1:0").await.unwrap();

    let (alice, mut alice_events) =
        connect(options(&server.tcp_url().unwrap(), sign_up("alice"), &pem)).await;
    within(alice.join("lobby")).await.unwrap();

    let publish = "POST /v1/rooms/lobby/events/stmp.examples.room.ChatEvents.RoomMessage";
    let message = r#"{"room": "lobby", "sender": "ops", "text": "maintenance at noon", "timestamp": 1700000000000}"#;
    let (status, body) = http(http_addr, publish, None, message).await;
    assert_eq!(status, 401, "{body}");

    let (status, body) = http(
        http_addr,
        publish,
        Some("s3cret"),
        r#"{"room": "lobby", "txt": "typo"}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("txt"), "{body}");

    let (status, body) = http(http_addr, publish, Some("s3cret"), message).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""queued":1"#), "{body}");
    let event = until(&mut alice_events, |event| match event {
        room::client::ChatEvent::RoomMessage(m) => Some(m.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        (
            event.room.as_str(),
            event.sender.as_str(),
            event.text.as_str(),
            event.timestamp
        ),
        ("lobby", "ops", "maintenance at noon", 1_700_000_000_000)
    );

    let (status, body) = http(http_addr, "GET /v1/users/alice", Some("s3cret"), "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""online":true"#), "{body}");
}
