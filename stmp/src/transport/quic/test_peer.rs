//! For the QUIC tests: a quinn server endpoint on loopback with a fresh self-signed
//! certificate, and the client TLS that trusts it.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

pub(super) struct Peer {
    pub(super) server: quinn::Endpoint,
    pub(super) client_tls: Arc<rustls::ClientConfig>,
}

/// A server whose transport settings are stmp's, for `read_timeout`.
pub(super) fn peer(read_timeout: Duration) -> Peer {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("a self-signed certificate");
    let (cert, key) = (certified.cert.pem(), certified.signing_key.serialize_pem());
    let server_tls = crate::tls::server_config(cert.as_bytes(), key.as_bytes()).expect("tls");
    let client_tls = crate::tls::client_config(cert.as_bytes()).expect("tls");
    let server = quinn::Endpoint::server(
        super::server_config(&server_tls, read_timeout).expect("server config"),
        (Ipv4Addr::LOCALHOST, 0).into(),
    )
    .expect("server endpoint");
    Peer { server, client_tls }
}

/// The server's next connection and the stream its client opens.
pub(super) async fn accept(
    server: &quinn::Endpoint,
) -> (quinn::Connection, quinn::SendStream, quinn::RecvStream) {
    let connection = server
        .accept()
        .await
        .expect("incoming")
        .await
        .expect("accept");
    let (send, recv) = connection.accept_bi().await.expect("stream");
    (connection, send, recv)
}
