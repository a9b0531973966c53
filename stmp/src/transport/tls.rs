//! TLS configuration helpers (rustls with the ring provider).
//!
//! Any `rustls` config works with [`Server::listen_tls`](crate::Server::listen_tls) and
//! [`ClientBuilder::tls`](crate::ClientBuilder::tls); these helpers build the common ones from PEM.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::Status;

/// The crypto provider stmp uses: ring (pure Rust build, no cmake).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn config_error(error: impl std::fmt::Display) -> Status {
    Status::bad_request(format!("TLS configuration: {error}"))
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
        return Err(config_error("no certificate in the PEM"));
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
        return Err(config_error("no certificate in the PEM"));
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
