//! Certificates made by the test (rcgen), and clients that trust them: for servers started
//! with `KEYGATE_TLS_CERT` and `KEYGATE_TLS_KEY`.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::client::TlsStream;

/// A self-signed certificate for `localhost` and 127.0.0.1, and its key, both PEM.
pub struct TestCert {
    pub cert_pem: String,
    pub key_pem: String,
    der: Vec<u8>,
}

impl TestCert {
    pub fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        // A name of its own: a client trusting two of them must tell them apart.
        let name = format!("keygate test {}", uuid::Uuid::new_v4());
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() }
    }

    /// The SHA-256 of the certificate, hex, as keygate logs it.
    pub fn sha256(&self) -> String {
        sha256(&self.der)
    }

    /// Writes the certificate and key as `cert.pem` and `key.pem` in `dir` (key 0600).
    pub fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        (cert, key)
    }
}

pub fn sha256(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02x}")).collect()
}

/// The certificates of a PEM file, DER.
fn pem_certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem).collect::<Result<_, _>>().unwrap()
}

/// A rustls client configuration that trusts the certificates in these PEM files only.
pub fn client_config(trusted: &[&Path]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for path in trusted {
        for cert in pem_certs(&std::fs::read(path).unwrap()) {
            roots.add(cert).unwrap();
        }
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A reqwest client (with a cookie jar) that trusts the certificate in `cert_file` only, and
/// reports the certificate each answer came with (`served_sha256`).
pub fn client_builder(cert_file: &Path) -> reqwest::ClientBuilder {
    reqwest::Client::builder().use_preconfigured_tls(client_config(&[cert_file])).tls_info(true)
}

/// The SHA-256 of the certificate the server presented on the connection `response` came on.
pub fn served_sha256(response: &reqwest::Response) -> String {
    let info = response.extensions().get::<reqwest::tls::TlsInfo>().expect("a TLS answer");
    sha256(info.peer_certificate().expect("a server certificate"))
}

/// A TLS connection to `addr` (`127.0.0.1:port`) trusting `trusted`.
pub async fn connect(addr: &str, trusted: &[&Path]) -> std::io::Result<TlsStream<TcpStream>> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(trusted)));
    let tcp = TcpStream::connect(addr).await?;
    connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await
}

/// The SHA-256 of the certificate the server presented on `stream`.
pub fn peer_sha256(stream: &TlsStream<TcpStream>) -> String {
    sha256(stream.get_ref().1.peer_certificates().unwrap()[0].as_ref())
}

/// One `GET /healthz` on an open connection, left open (keep-alive); the status code.
pub async fn healthz_on(stream: &mut TlsStream<TcpStream>) -> u16 {
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0; 4096];
    loop {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before answering: {:?}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .unwrap();
            if body.len() >= length {
                return head[9..12].parse().unwrap();
            }
        }
    }
}
