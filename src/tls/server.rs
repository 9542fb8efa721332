//! Listener TLS: the rustls `ServerConfig` of a listener (ring only; TLS 1.3 and 1.2; the
//! Mozilla "intermediate" cipher suites; ALPN `h2` then `http/1.1`; client certificates checked
//! against `client_ca` when it is set) and its certificate, which is swapped while the listener
//! serves: [`Certs`] is the resolver, [`watch`] reloads it when the files change.
//!
//! Position: the handshake of step 1 (see [`crate::server`]). Config: `listeners[].tls`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CipherSuite, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

use crate::tls::{TlsError, load_roots};

/// TLS settings of a listener (`listeners[].tls`). Files are read when the listener starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// PEM certificate chain (`cert`); required.
    pub cert: PathBuf,
    /// PEM private key (`key`); required.
    pub key: PathBuf,
    /// PEM CA bundle for client certificates (`client_ca`); set, it turns on mTLS.
    pub client_ca: Option<PathBuf>,
}

/// The certificate a listener presents, swappable while it serves: the resolver of its
/// `ServerConfig`. A handshake takes the certificate current when it starts; a swap changes
/// only later handshakes, so open connections are not touched.
pub(crate) struct Certs {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// The file bytes `current` was made from, so that an unchanged file is not parsed again.
    seen: Mutex<Seen>,
}

/// A certificate and key read from their files, not yet in use (see [`Certs::install`]).
#[derive(Debug)]
pub(crate) struct Loaded {
    key: Arc<CertifiedKey>,
    seen: Seen,
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Seen {
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl Certs {
    /// Reads `tls.cert` and `tls.key`. An error names the file at fault and what is wrong:
    /// unreadable, not PEM, no certificate, an unsupported key, a key that does not match
    /// the certificate.
    pub(crate) fn load(tls: &Settings) -> Result<Arc<Self>, TlsError> {
        let loaded = read(&tls.cert, &tls.key)?;
        Ok(Arc::new(Self {
            cert: tls.cert.clone(),
            key: tls.key.clone(),
            current: ArcSwap::new(loaded.key),
            seen: Mutex::new(loaded.seen),
        }))
    }

    /// Reads the files again, without using what they hold yet (a config reload reads every
    /// file first, and swaps only once the whole reload has succeeded).
    pub(crate) fn read(&self) -> Result<Loaded, TlsError> {
        read(&self.cert, &self.key)
    }

    /// Puts `loaded` in use for the handshakes that start from now on.
    pub(crate) fn install(&self, loaded: Loaded) {
        self.current.store(loaded.key);
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = loaded.seen;
    }

    /// Reads the files and, if their bytes changed since the last load, swaps the new
    /// certificate in: `Ok(true)` when it did, `Ok(false)` when nothing changed. On an error
    /// the certificate in use stays.
    pub(crate) fn reload(&self) -> Result<bool, TlsError> {
        let (cert, key) = (read_file(&self.cert)?, read_file(&self.key)?);
        {
            let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if seen.cert == cert && seen.key == key {
                return Ok(false);
            }
        }
        let loaded = parse(&self.cert, cert, &self.key, key)?;
        self.install(loaded);
        Ok(true)
    }

    /// The certificate chain and key in use now.
    #[cfg(test)]
    fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certs")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The `ServerConfig` of a listener with `tls`, presenting `certs`. With `tls.client_ca` a
/// client must present a certificate that CA signed, or the handshake fails. An error names
/// the file at fault.
pub(crate) fn server_config(
    tls: &Settings,
    certs: Arc<Certs>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(intermediate(&super::provider()));
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::new(&tls.cert, e))?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = Arc::new(load_roots(ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| TlsError::new(ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(certs);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// `provider` restricted to the Mozilla "intermediate" cipher suites, in that order
/// (<https://wiki.mozilla.org/Security/Server_Side_TLS>).
pub(crate) fn intermediate(provider: &CryptoProvider) -> CryptoProvider {
    let mut p = provider.clone();
    p.cipher_suites = INTERMEDIATE
        .iter()
        .filter_map(|id| {
            provider
                .cipher_suites
                .iter()
                .find(|s| s.suite() == *id)
                .copied()
        })
        .collect();
    p
}

/// Reloads `certs` whenever the directory of its certificate or key changes (a file written,
/// renamed over, or a Kubernetes secret's symlink swapped) and the files' bytes differ, until
/// `stop`. A file that cannot be used is logged with the reason and the certificate in use
/// stays; the next change is tried again.
pub(crate) async fn watch(certs: Arc<Certs>, stop: CancellationToken) {
    let files = [certs.cert.as_path(), certs.key.as_path()];
    let otherwise = "it reloads with the config only";
    crate::watch::on_change(&files, "the certificate", otherwise, stop, || {
        match certs.reload() {
            Ok(true) => tracing::info!(cert = %certs.cert.display(), "certificate reloaded"),
            Ok(false) => {}
            Err(e) => tracing::warn!(file = %e.path, error = %e.message,
                "certificate not reloaded; the one in use stays"),
        }
    })
    .await;
}

fn read(cert: &Path, key: &Path) -> Result<Loaded, TlsError> {
    parse(cert, read_file(cert)?, key, read_file(key)?)
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::new(path, e))
}

fn parse(
    cert_path: &Path,
    cert: Vec<u8>,
    key_path: &Path,
    key: Vec<u8>,
) -> Result<Loaded, TlsError> {
    let chain = CertificateDer::pem_slice_iter(&cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(cert_path, e))?;
    if chain.is_empty() {
        return Err(TlsError::new(cert_path, "no certificate in the file"));
    }
    let private = PrivateKeyDer::from_pem_slice(&key).map_err(|e| TlsError::new(key_path, e))?;
    let certified = CertifiedKey::from_der(chain, private, &super::provider()).map_err(|e| {
        if matches!(e, rustls::Error::InconsistentKeys(_)) {
            TlsError::new(
                key_path,
                format!("does not match the certificate in {}", cert_path.display()),
            )
        } else {
            TlsError::new(key_path, e)
        }
    })?;
    Ok(Loaded {
        key: Arc::new(certified),
        seen: Seen { cert, key },
    })
}

/// ALPN protocols offered, in the server's order of preference.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Mozilla "intermediate": TLS 1.3 AEADs, then TLS 1.2 ECDHE with AES-GCM or ChaCha20-Poly1305.
const INTERMEDIATE: [CipherSuite; 9] = [
    CipherSuite::TLS13_AES_128_GCM_SHA256,
    CipherSuite::TLS13_AES_256_GCM_SHA384,
    CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
];

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of its own under the system temp dir, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let d = std::env::temp_dir().join(format!("weir-tls-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&d).unwrap();
            Self(d)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A self-signed certificate for `localhost`: (cert PEM, key PEM, cert DER).
    fn self_signed() -> (String, String, Vec<u8>) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        (
            c.cert.pem(),
            c.signing_key.serialize_pem(),
            c.cert.der().to_vec(),
        )
    }

    fn settings(dir: &Dir) -> Settings {
        Settings {
            cert: dir.0.join("server.pem"),
            key: dir.0.join("server.key"),
            client_ca: None,
        }
    }

    fn in_use(certs: &Certs) -> Vec<u8> {
        certs.current().cert[0].to_vec()
    }

    #[test]
    fn only_the_intermediate_suites_are_offered_in_order() {
        let p = intermediate(&crate::tls::provider());
        let ids: Vec<CipherSuite> = p.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(ids, INTERMEDIATE.to_vec());
    }

    #[test]
    fn the_config_prefers_h2_then_http11() {
        let dir = Dir::new("alpn");
        let tls = settings(&dir);
        let (cert, key, _) = self_signed();
        std::fs::write(&tls.cert, cert).unwrap();
        std::fs::write(&tls.key, key).unwrap();
        let config = server_config(&tls, Certs::load(&tls).unwrap()).unwrap();
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn errors_name_the_file_at_fault() {
        let dir = Dir::new("errors");
        let tls = settings(&dir);
        let e = Certs::load(&tls).unwrap_err();
        assert_eq!(e.path, tls.cert.display().to_string(), "{e}");

        std::fs::write(&tls.cert, "not a certificate").unwrap();
        let (_, key, _) = self_signed();
        std::fs::write(&tls.key, key).unwrap();
        let e = Certs::load(&tls).unwrap_err();
        assert_eq!(e.path, tls.cert.display().to_string(), "{e}");
        assert_eq!(e.message, "no certificate in the file");

        let (cert, _, _) = self_signed();
        std::fs::write(&tls.cert, cert).unwrap();
        let e = Certs::load(&tls).unwrap_err();
        assert_eq!(e.path, tls.key.display().to_string(), "{e}");
        assert!(e.message.contains("does not match"), "{e}");

        let ca = dir.0.join("missing-ca.pem");
        let (cert, key, _) = self_signed();
        std::fs::write(&tls.cert, cert).unwrap();
        std::fs::write(&tls.key, key).unwrap();
        let with_ca = Settings {
            client_ca: Some(ca.clone()),
            ..tls.clone()
        };
        let e = server_config(&with_ca, Certs::load(&tls).unwrap()).unwrap_err();
        assert_eq!(e.path, ca.display().to_string(), "{e}");
    }

    #[test]
    fn reload_swaps_a_new_pair_and_keeps_the_old_one_on_a_bad_file() {
        let dir = Dir::new("reload");
        let tls = settings(&dir);
        let (a_cert, a_key, a_der) = self_signed();
        std::fs::write(&tls.cert, &a_cert).unwrap();
        std::fs::write(&tls.key, &a_key).unwrap();
        let certs = Certs::load(&tls).unwrap();
        assert_eq!(in_use(&certs), a_der);
        assert!(
            !certs.reload().unwrap(),
            "unchanged files are not loaded again"
        );

        std::fs::write(&tls.cert, "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
        let e = certs.reload().unwrap_err();
        assert_eq!(e.path, tls.cert.display().to_string(), "{e}");
        assert_eq!(
            in_use(&certs),
            a_der,
            "a bad file leaves the old certificate"
        );

        // Half way through a replacement: the new certificate with the old key.
        let (b_cert, b_key, b_der) = self_signed();
        std::fs::write(&tls.cert, &b_cert).unwrap();
        let e = certs.reload().unwrap_err();
        assert_eq!(e.path, tls.key.display().to_string(), "{e}");
        assert_eq!(in_use(&certs), a_der);

        std::fs::write(&tls.key, &b_key).unwrap();
        assert!(certs.reload().unwrap());
        assert_eq!(in_use(&certs), b_der);

        std::fs::remove_file(&tls.key).unwrap();
        assert!(certs.reload().is_err());
        assert_eq!(
            in_use(&certs),
            b_der,
            "a missing file leaves the old certificate"
        );
    }

    #[test]
    fn read_then_install_swaps_only_on_install() {
        let dir = Dir::new("install");
        let tls = settings(&dir);
        let (a_cert, a_key, a_der) = self_signed();
        std::fs::write(&tls.cert, &a_cert).unwrap();
        std::fs::write(&tls.key, &a_key).unwrap();
        let certs = Certs::load(&tls).unwrap();
        let (b_cert, b_key, b_der) = self_signed();
        std::fs::write(&tls.cert, &b_cert).unwrap();
        std::fs::write(&tls.key, &b_key).unwrap();
        let loaded = certs.read().unwrap();
        assert_eq!(in_use(&certs), a_der);
        certs.install(loaded);
        assert_eq!(in_use(&certs), b_der);
        assert!(
            !certs.reload().unwrap(),
            "what was installed counts as seen"
        );
    }
}
