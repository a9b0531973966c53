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

/// The crypto provider stmp uses: ring (pure Rust build, no cmake).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
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
