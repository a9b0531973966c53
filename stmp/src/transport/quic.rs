//! QUIC settings shared by both sides: the ALPN, and transport timers lined up with the stmp
//! heartbeat.

use std::sync::Arc;
use std::time::Duration;

use crate::Status;

/// The ALPN protocol id of stmp over QUIC.
pub const ALPN: &[u8] = b"stmp/1";

/// QUIC's own idle timeout and keep-alive, derived from the stmp read timeout: keep-alives
/// hold NAT mappings open well inside it, and QUIC gives up on a lost peer when stmp would.
pub(crate) fn transport_config(read_timeout: Duration) -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    if let Ok(idle) = quinn::IdleTimeout::try_from(read_timeout) {
        transport.max_idle_timeout(Some(idle));
    }
    transport.keep_alive_interval(Some(read_timeout / 3));
    // One bidirectional stream carries the connection; the peer needs no others.
    transport.max_concurrent_uni_streams(0u32.into());
    transport.max_concurrent_bidi_streams(1u32.into());
    Arc::new(transport)
}

pub(crate) fn server_config(
    tls: &rustls::ServerConfig,
    read_timeout: Duration,
) -> Result<quinn::ServerConfig, Status> {
    let mut tls = tls.clone();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| Status::bad_request(format!("TLS config unusable for QUIC: {e}")))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport_config(read_timeout));
    Ok(config)
}

pub(crate) fn client_config(
    tls: &rustls::ClientConfig,
    read_timeout: Duration,
) -> Result<quinn::ClientConfig, Status> {
    let mut tls = tls.clone();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| Status::bad_request(format!("TLS config unusable for QUIC: {e}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport_config(read_timeout));
    Ok(config)
}

/// Connection errors as statuses: a TLS failure is the client's configuration (`BadRequest`,
/// not retried); anything else is the network.
pub(crate) fn connection_error(error: quinn::ConnectionError) -> Status {
    match &error {
        quinn::ConnectionError::TransportError(transport)
            if is_crypto(u64::from(transport.code)) =>
        {
            Status::bad_request(format!("QUIC TLS: {transport}"))
        }
        quinn::ConnectionError::ConnectionClosed(closed)
            if is_crypto(u64::from(closed.error_code)) =>
        {
            Status::bad_request(format!(
                "QUIC TLS: the server refused the handshake: {closed}"
            ))
        }
        // What a server over its connection limit answers (`Incoming::refuse`).
        quinn::ConnectionError::ConnectionClosed(closed)
            if closed.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
        {
            Status::too_many_requests(format!("QUIC: the server refused the connection: {closed}"))
        }
        _ => Status::network_error(format!("QUIC: {error}")),
    }
}

/// QUIC carries TLS alerts as transport error codes 0x100–0x1ff (RFC 9001 section 4.8).
fn is_crypto(code: u64) -> bool {
    (0x100..0x200).contains(&code)
}
