//! WebSocket: the client's handshake rides on the upgrade request's query (and headers); the
//! server answers with its handshake as the first message.

use std::net::SocketAddr;

use bytes::BytesMut;
use futures_util::SinkExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::{Server, Transport};
use crate::Status;
use crate::conn::PacketFormat;
use crate::conn::io::websocket;
use crate::wire::{Header, Limits, ServerHandshake, Version};

/// Header keys of the upgrade request that are part of the stmp handshake (HTTP headers are
/// case-insensitive, stmp headers are not: these are mapped to their stmp spelling).
const HTTP_KEYS: [&str; 4] = ["Accept", "Accept-Encoding", "Packet-Format", "Stmp-Version"];

/// The frames tungstenite gathers before it writes them to the socket. The engine flushes once
/// per batch, so this is what lets a batch of small packets leave in one write instead of one
/// syscall per message; the buffer only grows to what a batch holds.
const WS_WRITE_BUFFER: usize = 64 << 10;

pub(crate) fn ws_config(max_packet_size: usize) -> WebSocketConfig {
    // A small read buffer keeps idle connections cheap; the limits keep a message within a
    // packet.
    WebSocketConfig::default()
        .read_buffer_size(4 << 10)
        .write_buffer_size(WS_WRITE_BUFFER)
        .max_message_size(Some(max_packet_size + 64))
        .max_frame_size(Some(max_packet_size + 64))
}

/// The stmp handshake of a WebSocket upgrade: query parameters, then the HTTP headers (the
/// known ones in their stmp spelling, the others by their lower-case name), each key the
/// query does not have. Applications send their entries (tokens…) as headers, out of URLs.
/// The result is held to the header limits, as a binary handshake's header is; the query is
/// checked before it is parsed.
pub(crate) fn handshake_from_request(request: &Request, limits: &Limits) -> Result<Header, Status> {
    let mut header = Header::new();
    if let Some(query) = request.uri().query() {
        if query.len() > limits.max_header_size {
            return Err(Status::request_entity_too_large(format!(
                "handshake query of {} bytes is over the header limit of {} bytes",
                query.len(),
                limits.max_header_size
            )));
        }
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            if header.len() == limits.max_header_entries {
                return Err(Status::request_entity_too_large(format!(
                    "handshake query has more than {} entries",
                    limits.max_header_entries
                )));
            }
            header.append(key, value);
        }
    }
    let from_query: Vec<String> = header.iter().map(|(k, _)| k.to_owned()).collect();
    for (name, value) in request.headers() {
        let key = HTTP_KEYS
            .into_iter()
            .find(|known| name.as_str().eq_ignore_ascii_case(known))
            .unwrap_or(name.as_str());
        if !from_query.iter().any(|k| k == key)
            && let Ok(value) = value.to_str()
        {
            header.append(key, value);
        }
    }
    if header.len() > limits.max_header_entries {
        return Err(Status::request_entity_too_large(format!(
            "handshake has {} entries, over the limit of {}",
            header.len(),
            limits.max_header_entries
        )));
    }
    let size = header.encoded_len();
    if size > limits.max_header_size {
        return Err(Status::request_entity_too_large(format!(
            "handshake header of {size} bytes is over the limit of {} bytes",
            limits.max_header_size
        )));
    }
    Ok(header)
}

fn version_of(header: &Header) -> Result<Version, Status> {
    match header.get("Stmp-Version") {
        None => Ok(Version::V1_0),
        Some(text) => {
            let (major, minor) = text.split_once('.').unwrap_or((text, "0"));
            match (major.parse::<u8>(), minor.parse::<u8>()) {
                (Ok(major), Ok(minor)) if major < 16 && minor < 16 => Ok(Version { major, minor }),
                _ => Err(Status::bad_request(format!("bad Stmp-Version: {text}"))),
            }
        }
    }
}

impl Server {
    pub(crate) async fn serve_websocket<S>(
        &self,
        stream: S,
        remote: SocketAddr,
        path: &str,
        transport: &'static str,
        mut slot: super::Slot,
    ) where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let config = &self.inner.config;
        let limits = config.wire_limits();
        let mut header = None;
        // The callback's error type is tungstenite's; its size is not ours to choose.
        #[allow(clippy::result_large_err)]
        let callback = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
            if request.uri().path() != path {
                let mut refusal = ErrorResponse::new(Some(format!(
                    "no stmp endpoint at {}",
                    request.uri().path()
                )));
                *refusal.status_mut() = StatusCode::NOT_FOUND;
                return Err(refusal);
            }
            header = Some(handshake_from_request(request, &limits));
            Ok(response)
        };
        let upgrade = tokio_tungstenite::accept_hdr_async_with_config(
            stream,
            callback,
            Some(ws_config(config.max_packet_size)),
        );
        let mut socket = match tokio::time::timeout(config.handshake_timeout, upgrade).await {
            Ok(Ok(socket)) => socket,
            Ok(Err(error)) => return tracing::debug!(%remote, %error, "websocket upgrade failed"),
            Err(_) => return tracing::debug!(%remote, "websocket upgrade timed out"),
        };
        let (header, admitted) = match header.unwrap_or_else(|| Ok(Header::new())) {
            Ok(header) => {
                let admitted = version_of(&header)
                    .and_then(|version| self.admit(version, &header, Transport::WebSocket));
                (header, admitted)
            }
            Err(status) => (Header::new(), Err(status)),
        };
        // A refusal can only be sent in the format the client asked for if we know it.
        let text = header
            .get("Packet-Format")
            .or_else(|| header.get("Accept-Packet-Format"))
            .is_some_and(|f| f.eq_ignore_ascii_case("text"));
        let agreement = match admitted {
            Ok(agreement) => agreement,
            Err(status) => {
                crate::telemetry::handshake_refused(&status);
                let _ = socket
                    .send(handshake_message(&ServerHandshake::refuse(&status), text))
                    .await;
                let _ = socket.close(None).await;
                return;
            }
        };
        let (conn, outbox) =
            self.new_conn(Some(remote), transport, header, agreement.codec.clone());
        if let Err(status) = self.authenticate(&conn).await {
            conn.mark_closed(&status);
            crate::telemetry::handshake_refused(&status);
            let _ = socket
                .send(handshake_message(&ServerHandshake::refuse(&status), text))
                .await;
            let _ = socket.close(None).await;
            return;
        }
        let format = agreement.format;
        let hello = ServerHandshake::ok(agreement.header);
        if socket
            .send(handshake_message(&hello, format == PacketFormat::Text))
            .await
            .is_err()
        {
            conn.mark_closed(&Status::network_error(
                "connection lost during the handshake",
            ));
            return;
        }
        slot.handshaken();
        let (packets, writer) = websocket(socket, format, limits);
        self.run(conn, outbox, packets, writer).await;
        // The slot is held until the connection's socket is gone.
        drop(slot);
    }
}

/// The server handshake as a WebSocket message: binary form in a binary message, text form
/// in a text message.
pub(crate) fn handshake_message(handshake: &ServerHandshake, text: bool) -> WsMessage {
    let mut out = BytesMut::new();
    if text {
        handshake.encode_text(&mut out);
        match String::from_utf8(out.to_vec()) {
            Ok(text) => WsMessage::text(text),
            Err(_) => WsMessage::Binary(out.freeze()),
        }
    } else {
        handshake.encode(&mut out);
        WsMessage::Binary(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handshake_comes_from_the_query_and_the_http_headers() {
        let request = Request::builder()
            .uri("/room?Stmp-Version=1.0&Accept=application%2Fjson&token=from-query")
            .header("accept", "application/protobuf")
            .header("packet-format", "text")
            .header("token", "from-header")
            .header("device", "phone")
            .body(())
            .unwrap();
        let header = handshake_from_request(&request, &Limits::DEFAULT).unwrap();
        assert_eq!(header.get("Accept"), Some("application/json"));
        assert_eq!(header.get("Packet-Format"), Some("text"));
        assert_eq!(header.get_all("token").collect::<Vec<_>>(), ["from-query"]);
        assert_eq!(header.get("device"), Some("phone"));
    }

    #[test]
    fn the_http_headers_count_towards_the_header_limits() {
        let request = Request::builder()
            .uri("/room?a=1&b=2")
            .header("c", "3")
            .header("d", "x".repeat(40))
            .body(())
            .unwrap();
        let three = Limits::DEFAULT.with_max_header_entries(3);
        let error = handshake_from_request(&request, &three).unwrap_err();
        assert_eq!(error.code(), crate::Code::RequestEntityTooLarge);
        assert!(error.message().contains("4 entries"), "{error}");
        let small = Limits::DEFAULT.with_max_header_size(40);
        let error = handshake_from_request(&request, &small).unwrap_err();
        assert!(error.message().contains("header of 54 bytes"), "{error}");
        let query_over = Limits::DEFAULT.with_max_header_entries(1);
        let error = handshake_from_request(&request, &query_over).unwrap_err();
        assert!(error.message().contains("query has more than 1"), "{error}");
    }
}
