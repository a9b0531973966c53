//! TLS over TCP (rustls with the ring provider): listening, connecting, and helpers that
//! build the common configurations.
//!
//! Any `rustls` config works with [`Server::listen_tls`](crate::Server::listen_tls) and
//! [`ClientBuilder::tls`](crate::ClientBuilder::tls); these helpers build the common ones from PEM.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_rustls::TlsAcceptor;

use super::{Farewell, Scheme};
use crate::Status;
use crate::client::ClientBuilder;
use crate::client::endpoint::Endpoint;
use crate::server::{Refusal, Slot};

/// The crypto provider stmp uses: ring (pure Rust build, no cmake), with its cipher suites,
/// AES-128-GCM first.
///
/// ring's own order puts AES-256-GCM with SHA-384 first. SHA-384 is SHA-512 underneath,
/// which x86 processors have no instructions for, while SHA-256 runs on their SHA
/// extensions: a handshake hashes its transcript and derives its keys with the suite's hash,
/// so SHA-384 was the server's largest single cost in a TLS handshake (7 % of a connection
/// setup's CPU, `stmp-bench --only connect`). AES-128 also takes 10 rounds per block where
/// AES-256 takes 14. TLS 1.3 makes `TLS13_AES_128_GCM_SHA256` the one suite every peer must
/// have, and Go's `crypto/tls` prefers it too. The set of suites is ring's, unchanged: a peer
/// that prefers another still gets it, as rustls servers follow the client's order.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    // TLS 1.3's suites stay before TLS 1.2's, and the sort is stable: only AES-128-GCM moves,
    // ahead of the other suites of its version.
    provider.cipher_suites.sort_by_key(|suite| {
        let aes_128 = matches!(
            suite.suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
                | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        );
        (suite.tls13().is_none(), !aes_128)
    });
    Arc::new(provider)
}

/// A configuration rustls or the PEM parser rejects, with their error as the source.
fn config_error(error: impl std::error::Error + Send + Sync + 'static) -> Status {
    Status::bad_request(format!("TLS configuration: {error}")).with_source(error)
}

fn no_certificate() -> Status {
    Status::bad_request("TLS configuration: no certificate in the PEM")
}

/// A server config from a PEM certificate chain and a PEM private key.
pub fn server_config(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<rustls::ServerConfig>, Status> {
    let chain = CertificateDer::pem_slice_iter(cert_chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(config_error)?;
    if chain.is_empty() {
        return Err(no_certificate());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(config_error)?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(config_error)?;
    Ok(Arc::new(config))
}

/// A client config that trusts the certificates in `roots_pem` (a private CA, or a
/// self-signed server certificate).
pub fn client_config(roots_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, Status> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(roots_pem) {
        roots
            .add(cert.map_err(config_error)?)
            .map_err(config_error)?;
    }
    if roots.is_empty() {
        return Err(no_certificate());
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

impl crate::Server {
    /// Listens for TLS over TCP.
    pub async fn listen_tls(
        &self,
        addr: impl ToSocketAddrs,
        tls: Arc<rustls::ServerConfig>,
    ) -> Result<SocketAddr, Status> {
        let acceptor = TlsAcceptor::from(tls);
        self.listen(addr, move |server, stream, remote, admitted| {
            serve_tls(server, acceptor.clone(), stream, remote, admitted)
        })
        .await
    }
}

/// An accepted socket of a TLS listener, from its admission to the end of its connection.
pub(crate) async fn serve_tls(
    server: crate::Server,
    acceptor: TlsAcceptor,
    stream: TcpStream,
    remote: SocketAddr,
    admitted: Result<Slot, Refusal>,
) {
    let admitted = admit(
        &server,
        &acceptor,
        stream,
        remote,
        admitted,
        Farewell::Handshake,
    );
    let Some((tls, slot)) = admitted.await else {
        return;
    };
    let (reader, writer) = tokio::io::split(tls);
    server
        .serve_stream(reader, writer, remote, Scheme::Tls, slot)
        .await;
}

/// Turns away a socket over the limits (with `farewell`, after the TLS handshake), or runs the
/// TLS handshake of an admitted one within the server's handshake timeout; a failure is logged.
///
/// The stream comes back boxed. A rustls connection is 1.2 KB, and a connection task's future
/// keeps room, for as long as the connection lives, for each place that holds the stream by
/// value across an await: a future's argument (`serve_websocket`'s), a `match` on the
/// handshake's result around the serving, the refusal's handshake (boxed here for that
/// reason). Held so, an idle TLS connection's task was 6.5 KB, against 2.1 KB over TCP. The
/// handshake's own future holds the connection too, and is boxed while it runs for the same
/// reason: once the serving part of the task got smaller, it was the task's largest state.
pub(crate) async fn admit(
    server: &crate::Server,
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    remote: SocketAddr,
    admitted: Result<Slot, Refusal>,
    farewell: Farewell,
) -> Option<(Box<tokio_rustls::server::TlsStream<TcpStream>>, Slot)> {
    let slot = match admitted {
        Ok(slot) => slot,
        Err(refusal) => {
            let open = acceptor.accept(stream);
            Box::pin(server.turn_away(open, refusal, farewell)).await;
            return None;
        }
    };
    let timeout = server.inner.config.handshake_timeout;
    let handshake = async move { Box::pin(acceptor.accept(stream)).await.map(Box::new) };
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(tls)) => Some((tls, slot)),
        Ok(Err(error)) => {
            tracing::debug!(%remote, %error, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%remote, "TLS handshake timed out");
            None
        }
    }
}

/// Runs the TLS handshake of a client on `tcp`.
pub(crate) async fn connect(
    tcp: TcpStream,
    endpoint: &Endpoint,
    config: &ClientBuilder,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Status> {
    let tls = config.tls.clone().ok_or_else(|| {
        Status::bad_request(format!(
            "{endpoint} needs TLS settings (ClientBuilder::tls)"
        ))
    })?;
    let name = config
        .server_name
        .clone()
        .unwrap_or_else(|| endpoint.host.clone());
    let name = ServerName::try_from(name)
        .map_err(|e| Status::bad_request(format!("bad TLS server name: {e}")))?;
    tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(tls_error)
}

/// A certificate problem is the client's configuration, not the network: it is reported as
/// `BadRequest` so the client does not retry it.
pub(crate) fn tls_error(error: std::io::Error) -> Status {
    let status = match error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(why)) => Status::bad_request(format!(
            "TLS: the server's certificate is not trusted: {why:?}"
        )),
        Some(tls) => Status::bad_request(format!("TLS: {tls}")),
        None => Status::network_error(format!("TLS: {error}")),
    };
    status.with_source(error)
}

#[cfg(test)]
mod tests {
    use rustls::CipherSuite;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn cert() -> (String, String) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("a self-signed certificate");
        (certified.cert.pem(), certified.signing_key.serialize_pem())
    }

    #[test]
    fn the_provider_has_rings_suites_with_aes_128_gcm_first_in_each_version() {
        let suites: Vec<CipherSuite> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
        let ring: Vec<CipherSuite> = rustls::crypto::ring::default_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        let mut sorted = (suites.clone(), ring.clone());
        sorted.0.sort_by_key(|s| u16::from(*s));
        sorted.1.sort_by_key(|s| u16::from(*s));
        assert_eq!(sorted.0, sorted.1, "the same set of suites as ring's");
        assert_eq!(
            suites[..3],
            [
                CipherSuite::TLS13_AES_128_GCM_SHA256,
                CipherSuite::TLS13_AES_256_GCM_SHA384,
                CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
            ]
        );
        let tls12 = &suites[3..];
        assert!(tls12.iter().all(|s| !format!("{s:?}").starts_with("TLS13")));
        assert_eq!(
            tls12.first(),
            Some(&CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)
        );
    }

    /// Handshakes a client config with a server config over an in-memory pipe; the suite
    /// they agreed on.
    async fn negotiated(
        client: Arc<rustls::ClientConfig>,
        server: Arc<rustls::ServerConfig>,
    ) -> CipherSuite {
        let (near, far) = tokio::io::duplex(64 << 10);
        let accepting = tokio::spawn(async move {
            let mut tls = TlsAcceptor::from(server).accept(far).await.expect("accept");
            let mut byte = [0];
            tls.read_exact(&mut byte).await.expect("read");
            tls.write_all(&byte).await.expect("write");
            tls.flush().await.expect("flush");
        });
        let name = ServerName::try_from("localhost").expect("name");
        let mut tls = tokio_rustls::TlsConnector::from(client)
            .connect(name, near)
            .await
            .expect("connect");
        tls.write_all(b"x").await.expect("write");
        let mut byte = [0];
        tls.read_exact(&mut byte).await.expect("the echo");
        accepting.await.expect("the server side");
        tls.get_ref()
            .1
            .negotiated_cipher_suite()
            .expect("a suite")
            .suite()
    }

    #[tokio::test]
    async fn stmp_peers_agree_on_aes_128_gcm_and_others_get_the_suite_they_prefer() {
        let (cert, key) = cert();
        let server = server_config(cert.as_bytes(), key.as_bytes()).expect("server config");
        let client = client_config(cert.as_bytes()).expect("client config");
        assert_eq!(
            negotiated(client.clone(), server.clone()).await,
            CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        // A client with ring's own order, as stmp's was: the server follows it.
        let mut roots = rustls::RootCertStore::empty();
        for root in CertificateDer::pem_slice_iter(cert.as_bytes()) {
            roots.add(root.expect("PEM")).expect("a root");
        }
        let ring_order = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        assert_eq!(
            negotiated(Arc::new(ring_order), server).await,
            CipherSuite::TLS13_AES_256_GCM_SHA384
        );
    }
}
