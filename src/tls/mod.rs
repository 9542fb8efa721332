//! TLS with rustls and the ring provider only: PEM loading shared by both directions,
//! [`server`] (listener certificates, ALPN, mTLS, certificate reload) and [`client`]
//! (upstream verification, SNI, client certificates).
//!
//! Position: the listener's handshake (step 1 of the walk) and the upstream connector (step 6).
//! Config: `listeners[].tls`, `upstreams.<name>.tls`.

pub(crate) mod client;
pub(crate) mod server;

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS setting that cannot be loaded: the file, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TlsError {
    /// The file (or setting) at fault, as configured.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl TlsError {
    pub(crate) fn new(path: &Path, message: impl std::fmt::Display) -> Self {
        Self {
            path: path.display().to_string(),
            message: message.to_string(),
        }
    }
}

/// The one crypto provider weir uses (ring).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in the PEM file at `path`; an error if there is none.
pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::new(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::new(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in the PEM file at `path`.
pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::new(path, e))
}

/// A root store made of every certificate in the PEM file at `path`.
pub(crate) fn load_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::new(path, e))?;
    }
    Ok(roots)
}
