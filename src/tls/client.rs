//! Client TLS toward an upstream: the rustls `ClientConfig` (ring, TLS 1.2 and 1.3), the trust
//! anchors (the built-in web roots, or only the configured `ca`), the client certificate for
//! mTLS, ALPN, and the server name each endpoint is verified against.
//!
//! Position: the upstream connector (step 6 of the walk): [`crate::upstream::pool`] for HTTP/1.1
//! and the HTTPS client of [`crate::upstream::client`] for `protocol = "http2"`. Config:
//! `upstreams.<name>.tls` (`sni`, `ca`, `cert`, `key`), `protocol`. Metrics: none.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::uri::Authority;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::tls::{TlsError, load_certs, load_key, load_roots, provider};

/// TLS to an upstream (`upstreams.NAME.tls`). Files are read when the upstream is built.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settings {
    /// Server name to send and verify; default the endpoint host.
    pub sni: Option<String>,
    /// PEM CA bundle to trust; default the built-in web roots.
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain for mTLS; needs `key`.
    pub cert: Option<PathBuf>,
    /// PEM client private key for mTLS; needs `cert`.
    pub key: Option<PathBuf>,
}

/// The TLS settings of one upstream, loaded: files are read once, when the upstream is built.
/// Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct ClientTls {
    config: Arc<ClientConfig>,
    /// `tls.sni`, parsed; `None` means each endpoint's own host.
    sni: Option<ServerName<'static>>,
}

impl ClientTls {
    /// Loads `tls` for an upstream whose ALPN offer is `alpn` (most preferred first).
    ///
    /// Trust: only the certificates in `ca` when it is set, else the built-in web roots
    /// (webpki-roots). `cert` + `key` are presented when the upstream asks for a client
    /// certificate. The server chooses among `alpn`. Errors name the file (or `tls.sni`) at
    /// fault.
    pub(crate) fn new(tls: &Settings, alpn: &[&[u8]]) -> Result<Self, TlsError> {
        let roots = match &tls.ca {
            Some(ca) => load_roots(ca)?,
            None => rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| setting_error("tls", e))?
            .with_root_certificates(roots);
        let mut config = match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
                .map_err(|e| {
                    let cert = cert.display();
                    TlsError::new(key, format_args!("cannot be used with {cert}: {e}"))
                })?,
            (None, None) => builder.with_no_client_auth(),
            // Config reading refuses one without the other; a hand-built config may not.
            (Some(cert), None) => {
                return Err(TlsError::new(cert, "a client certificate needs `key` too"));
            }
            (None, Some(key)) => return Err(TlsError::new(key, "a client key needs `cert` too")),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let sni = match &tls.sni {
            Some(name) => Some(
                ServerName::try_from(name.clone())
                    .map_err(|e| setting_error("tls.sni", format_args!("{name:?}: {e}")))?,
            ),
            None => None,
        };
        Ok(Self {
            config: Arc::new(config),
            sni,
        })
    }

    /// The rustls client config (shared by every connection of the upstream).
    pub(crate) fn config(&self) -> &Arc<ClientConfig> {
        &self.config
    }

    /// The configured `tls.sni`, when set: sent in the handshake and verified for every
    /// endpoint.
    pub(crate) fn fixed_name(&self) -> Option<&ServerName<'static>> {
        self.sni.as_ref()
    }

    /// The name endpoint `addr` is verified against: `tls.sni` when set, else the endpoint's
    /// host. A DNS name is also sent as SNI; an IP address is sent as no SNI at all and must
    /// be among the certificate's IP addresses.
    pub(crate) fn server_name(&self, addr: &Authority) -> Result<ServerName<'static>, TlsError> {
        match &self.sni {
            Some(name) => Ok(name.clone()),
            None => host_name(addr.host()),
        }
    }

    /// Runs the handshake over `tcp`, verifying the server as `name`. Unbounded in time: the
    /// caller applies the connect timeout.
    pub(crate) async fn connect(
        &self,
        name: ServerName<'static>,
        tcp: TcpStream,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
    }
}

/// The server name of `host` (a DNS name, an IPv4 address or a bracketed IPv6 address).
pub(crate) fn host_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(bare.to_owned()).map_err(|e| setting_error(host, e))
}

/// True when a rustls error (a failed handshake, a certificate that does not verify, an alert
/// from the server) is somewhere in the cause chain of `err`. Looks inside `io::Error`s too,
/// whose `source()` skips the error they wrap.
pub(crate) fn is_tls_failure(err: &(dyn StdError + 'static)) -> bool {
    crate::error::caused_by::<rustls::Error>(err)
}

fn setting_error(what: &str, message: impl std::fmt::Display) -> TlsError {
    TlsError::new(Path::new(what), message)
}

/// ALPN protocol id of HTTP/2 over TLS.
pub(crate) const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol id of HTTP/1.1.
pub(crate) const ALPN_HTTP1: &[u8] = b"http/1.1";

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn tls() -> Settings {
        Settings::default()
    }

    #[test]
    fn web_roots_by_default_and_alpn_by_protocol() {
        let h1 = ClientTls::new(&tls(), &[ALPN_HTTP1]).unwrap();
        assert_eq!(h1.config().alpn_protocols, [b"http/1.1".to_vec()]);
        let h2 = ClientTls::new(&tls(), &[ALPN_H2, ALPN_HTTP1]).unwrap();
        assert_eq!(
            h2.config().alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert!(h1.fixed_name().is_none());
    }

    #[test]
    fn server_name_is_sni_or_the_endpoint_host() {
        let by_host = ClientTls::new(&tls(), &[ALPN_HTTP1]).unwrap();
        let name = |t: &ClientTls, a: &str| t.server_name(&a.parse().unwrap()).unwrap();
        assert_eq!(
            name(&by_host, "backend.internal:443"),
            ServerName::try_from("backend.internal").unwrap()
        );
        assert!(matches!(
            name(&by_host, "127.0.0.1:8443"),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            name(&by_host, "[::1]:8443"),
            ServerName::IpAddress(_)
        ));
        let fixed = Settings {
            sni: Some("api.example.com".into()),
            ..tls()
        };
        let fixed = ClientTls::new(&fixed, &[ALPN_HTTP1]).unwrap();
        assert_eq!(
            name(&fixed, "127.0.0.1:8443"),
            ServerName::try_from("api.example.com").unwrap()
        );
    }

    #[test]
    fn load_errors_name_the_file() {
        let missing = PathBuf::from("/nonexistent/weir-ca.pem");
        let cases = [
            Settings {
                ca: Some(missing.clone()),
                ..tls()
            },
            Settings {
                cert: Some(missing.clone()),
                key: Some("/nonexistent/k.pem".into()),
                ..tls()
            },
            Settings {
                cert: Some(missing.clone()),
                ..tls()
            },
        ];
        for case in cases {
            let err = ClientTls::new(&case, &[ALPN_HTTP1]).unwrap_err();
            assert_eq!(err.path, missing.display().to_string(), "{err}");
        }
        let bad_sni = Settings {
            sni: Some("not a name".into()),
            ..tls()
        };
        let err = ClientTls::new(&bad_sni, &[ALPN_HTTP1]).unwrap_err();
        assert_eq!(err.path, "tls.sni");
    }

    #[test]
    fn tls_failures_are_found_inside_io_errors() {
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, alert);
        let wrapped = std::io::Error::other(io);
        assert!(is_tls_failure(&wrapped));
        assert!(!is_tls_failure(&std::io::Error::other("refused")));
    }
}
