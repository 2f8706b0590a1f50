//! Native TLS (`KEYGATE_TLS_CERT`, `KEYGATE_TLS_KEY`): the certificate the listener serves,
//! read from PEM files and replaced while the server runs, on SIGHUP or when the files
//! change. A replacement applies to the handshakes that follow; connections already open
//! keep the certificate they began with. A replacement that does not load (a half-written
//! file, a key that is not the certificate's) is refused with a warning, and the certificate
//! in use stays.
//!
//! TLS 1.2 and 1.3 only, on aws-lc (the provider the rest of keygate's cryptography and the
//! PostgreSQL client already use), HTTP/1.1 by ALPN.

use std::{
    fmt::Write as _,
    path::Path,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::config::{ConfigError, TlsFiles};

/// How often the files are looked at for a change (their modification time, size and inode:
/// a Kubernetes Secret volume swaps a symlink, a `cp` rewrites in place).
const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// The certificate in use, and how to replace it.
pub struct Certificates {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Current>,
    /// The files as last tried, loaded or not: a broken file is warned about once.
    tried: RwLock<Stamp>,
    reload: Notify,
}

struct Current {
    key: Arc<CertifiedKey>,
    fingerprint: String,
}

/// What tells a file changed without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Option<(SystemTime, u64, u64)>, Option<(SystemTime, u64, u64)>);

impl Stamp {
    fn of(files: &TlsFiles) -> Self {
        Self(file_stamp(&files.cert), file_stamp(&files.key))
    }
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some((meta.modified().ok()?, meta.len(), inode))
}

impl Certificates {
    /// Loads the files; a setting error (exit code 2) naming the file if they do not.
    pub fn load(files: &TlsFiles) -> Result<Arc<Self>, ConfigError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let stamp = Stamp::of(files);
        let key = read(files, &provider)?;
        let current = Current { fingerprint: fingerprint(&key), key };
        Ok(Arc::new(Self {
            files: files.clone(),
            provider,
            current: RwLock::new(current),
            tried: RwLock::new(stamp),
            reload: Notify::new(),
        }))
    }

    /// The listener's TLS configuration, serving whichever certificate is current.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, ConfigError> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| ConfigError::new("KEYGATE_TLS_CERT", e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        // The server speaks HTTP/1.1 only.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The SHA-256 fingerprint of the certificate being served, hex.
    pub fn fingerprint(&self) -> String {
        self.current.read().map(|c| c.fingerprint.clone()).unwrap_or_default()
    }

    /// Re-reads the files now, changed or not (SIGHUP).
    pub fn reload_now(&self) {
        self.reload.notify_one();
    }

    /// Replaces the certificate whenever the files change or `reload_now` is called.
    pub async fn watch(self: Arc<Self>) {
        loop {
            let forced = tokio::select! {
                () = tokio::time::sleep(POLL_INTERVAL) => false,
                () = self.reload.notified() => true,
            };
            self.reload(forced);
        }
    }

    /// Loads the files if `forced` or they changed since last tried; returns whether the
    /// certificate was replaced.
    fn reload(&self, forced: bool) -> bool {
        let stamp = Stamp::of(&self.files);
        let unchanged = self.tried.read().is_ok_and(|tried| *tried == stamp);
        if unchanged && !forced {
            return false;
        }
        if let Ok(mut tried) = self.tried.write() {
            *tried = stamp;
        }
        match read(&self.files, &self.provider) {
            Ok(key) => {
                let fingerprint = fingerprint(&key);
                let Ok(mut current) = self.current.write() else { return false };
                if current.fingerprint != fingerprint {
                    tracing::info!(sha256 = %fingerprint, previous = %current.fingerprint, "TLS certificate reloaded");
                }
                *current = Current { key, fingerprint };
                true
            }
            Err(e) => {
                tracing::warn!(error = %e.reason, sha256 = %self.fingerprint(), "TLS certificate not reloaded: still serving the previous one");
                false
            }
        }
    }
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates").field("files", &self.files).field("sha256", &self.fingerprint()).finish()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.key.clone())
    }
}

/// The chain and key of `files`, checked to belong together.
fn read(files: &TlsFiles, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, ConfigError> {
    let cert_error =
        |reason: String| ConfigError::new("KEYGATE_TLS_CERT", format!("{}: {reason}", files.cert.display()));
    let key_error = |reason: String| ConfigError::new("KEYGATE_TLS_KEY", format!("{}: {reason}", files.key.display()));
    let chain = std::fs::read(&files.cert).map_err(|e| cert_error(format!("cannot read it: {e}")))?;
    let chain = CertificateDer::pem_slice_iter(&chain)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(cert_error("no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into()));
    }
    let key = std::fs::read(&files.key).map_err(|e| key_error(format!("cannot read it: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| key_error(format!("not a PEM private key: {e}")))?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => key_error("not the private key of the certificate's public key".into()),
        other => key_error(format!("cannot be used: {other}")),
    })?;
    Ok(Arc::new(certified))
}

fn fingerprint(key: &CertifiedKey) -> String {
    let digest = key.cert.first().map(|cert| Sha256::digest(cert.as_ref())).unwrap_or_default();
    digest.iter().fold(String::with_capacity(64), |mut hex, byte| {
        let _ = write!(hex, "{byte:02x}");
        hex
    })
}

/// A client configuration that trusts exactly the certificate in `cert_file` (its first one),
/// whatever name it carries: for `keygate healthcheck`, which talks to the server on this
/// machine at an address its certificate need not name.
pub fn pinned_client_config(cert_file: &Path) -> Result<rustls::ClientConfig, ConfigError> {
    let error = |reason: String| ConfigError::new("KEYGATE_TLS_CERT", format!("{}: {reason}", cert_file.display()));
    let pem = std::fs::read(cert_file).map_err(|e| error(format!("cannot read it: {e}")))?;
    let pinned = CertificateDer::pem_slice_iter(&pem)
        .next()
        .ok_or_else(|| error("no PEM certificate in it".into()))?
        .map_err(|e| error(format!("not a PEM certificate: {e}")))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(Pinned { cert: pinned, provider: provider.clone() });
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| error(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// Accepts the one pinned certificate, and checks the handshake's signatures as usual.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
