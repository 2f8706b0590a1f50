//! Native TLS (`KEYGATE_TLS_CERT`, `KEYGATE_TLS_KEY`) with certificates made here: clients
//! that trust the certificate get HTTPS, plain HTTP gets nothing, and a new certificate is
//! served after SIGHUP or a change of the files, while connections already open go on.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use crate::common::{tls::*, *};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Far more than any timeout or reload interval the tests meet.
const NEVER: Duration = Duration::from_secs(20);

fn with_tls(builder: Builder, cert: &Path, key: &Path) -> Builder {
    builder
        .env("KEYGATE_TLS_CERT", cert.to_str().unwrap())
        .env("KEYGATE_TLS_KEY", key.to_str().unwrap())
        .without_env("KEYGATE_ISSUER")
}

fn addr(app: &TestApp) -> String {
    app.base.trim_start_matches("https://").to_owned()
}

/// Reads until the server closes the connection; what it sent. Panics if it stays open.
async fn read_until_closed(stream: &mut TcpStream) -> (Duration, Vec<u8>) {
    let start = Instant::now();
    let mut read = Vec::new();
    let mut buf = [0; 4096];
    loop {
        match tokio::time::timeout_at((start + NEVER).into(), stream.read(&mut buf)).await {
            Err(_) => panic!("still open after {NEVER:?}; read {read:?}"),
            Ok(Ok(0) | Err(_)) => return (start.elapsed(), read),
            Ok(Ok(n)) => read.extend_from_slice(&buf[..n]),
        }
    }
}

/// Polls new connections until the server presents the certificate `sha256`.
async fn wait_until_served(app: &TestApp, trusted: &[&Path], sha256: &str) {
    let deadline = Instant::now() + NEVER;
    loop {
        let stream = connect(&addr(app), trusted).await.unwrap();
        if peer_sha256(&stream) == sha256 {
            return;
        }
        assert!(Instant::now() < deadline, "still serving the old certificate after {NEVER:?}:\n{}", app.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Appends blank lines to `path` (text outside a PEM block is ignored): room for
/// `rewrite_unseen`.
fn pad(path: &Path) {
    let mut text = std::fs::read_to_string(path).unwrap();
    text.push_str(&"\n".repeat(256));
    std::fs::write(path, text).unwrap();
}

/// Rewrites `path` with `text` in place (same inode), padded to its old length with blank
/// lines and given back its old modification time: a change that only a reload on demand
/// can see.
fn rewrite_unseen(path: &Path, text: &str) {
    let meta = std::fs::metadata(path).unwrap();
    let old_len = meta.len() as usize;
    assert!(text.len() <= old_len, "the new file is longer than the old one");
    let padded = format!("{text}{}", "\n".repeat(old_len - text.len()));
    std::fs::write(path, &padded).unwrap();
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(meta.modified().unwrap()).unwrap();
    assert_eq!(std::fs::metadata(path).unwrap().len(), meta.len());
}

#[tokio::test]
async fn a_client_that_trusts_the_certificate_gets_https_and_tokens_name_https() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::new();
    let (cert_file, key_file) = cert.write(dir.path());
    let app = with_tls(TestApp::builder(), &cert_file, &key_file).spawn().await;
    assert!(app.base.starts_with("https://127.0.0.1:"), "{}", app.base);

    let r = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(served_sha256(&r), cert.sha256());
    // The default issuer is the address bound, over https.
    let meta: Value =
        app.client.get(app.url("/.well-known/oauth-authorization-server")).send().await.unwrap().json().await.unwrap();
    assert_eq!(meta["issuer"], app.base.as_str());
    // The whole walk works over it: admin session, a key, a token.
    app.admin_login().await;
    let (api_key, password) = app.generate_key().await;
    let token = app.token(&api_key, &password).await;
    let claims = crate::common::gateway::segment(&token, 1);
    assert_eq!(claims["iss"], app.base.as_str());

    // TLS 1.2 and 1.3 both negotiate.
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates({
            let mut roots = rustls::RootCertStore::empty();
            roots.add(rustls::pki_types::CertificateDer::from(cert_der(&cert_file))).unwrap();
            roots
        })
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let tcp = TcpStream::connect(addr(&app)).await.unwrap();
        let mut stream = connector.connect("localhost".try_into().unwrap(), tcp).await.unwrap();
        assert_eq!(stream.get_ref().1.protocol_version(), Some(version.version));
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(healthz_on(&mut stream).await, 200);
    }

    // A client that does not trust it gets no answer at all.
    let stranger = TestCert::new();
    let other = tempfile::tempdir().unwrap();
    let (stranger_file, _) = stranger.write(other.path());
    let untrusting = client_builder(&stranger_file).build().unwrap();
    assert!(untrusting.get(app.url("/healthz")).send().await.is_err());
}

fn cert_der(path: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(path).unwrap().to_vec()
}

#[tokio::test]
async fn plain_http_to_the_tls_port_gets_no_http_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = TestCert::new().write(dir.path());
    let app = with_tls(TestApp::builder(), &cert_file, &key_file).spawn().await;
    let requests: [&[u8]; 2] = [
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"POST /auth/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    ];
    for request in requests {
        let mut stream = TcpStream::connect(addr(&app)).await.unwrap();
        stream.write_all(request).await.unwrap();
        let (_, answer) = read_until_closed(&mut stream).await;
        // Closed, or a TLS alert record (content type 21) at most: no HTTP, nothing of keygate.
        assert!(answer.is_empty() || answer[0] == 0x15, "{:?}", String::from_utf8_lossy(&answer));
        assert!(answer.len() <= 7 + 64, "{answer:?}");
        let text = String::from_utf8_lossy(&answer);
        assert!(!text.contains("HTTP/") && !text.contains("keygate") && !text.contains('{'), "{text}");
    }
    let plain = reqwest::Client::new();
    assert!(plain.get(app.url("/healthz").replace("https://", "http://")).send().await.is_err());
    // And the server still serves HTTPS.
    assert_eq!(app.client.get(app.url("/healthz")).send().await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn a_rotated_certificate_is_served_after_sighup_and_open_connections_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (TestCert::new(), TestCert::new());
    let (cert_file, key_file) = first.write(dir.path());
    pad(&cert_file);
    pad(&key_file);
    // Both also in places of their own, for the clients to trust.
    let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let trusted = [first.write(first_dir.path()).0, second.write(second_dir.path()).0];
    let trusted = [trusted[0].as_path(), trusted[1].as_path()];
    let mut app = with_tls(TestApp::builder().process(), &cert_file, &key_file).spawn().await;

    let mut open = connect(&addr(&app), &trusted).await.unwrap();
    assert_eq!(peer_sha256(&open), first.sha256());
    assert_eq!(healthz_on(&mut open).await, 200);

    // The files rewritten so that they look unchanged (length, time, inode): only SIGHUP can
    // make keygate read them again.
    let key_before = std::fs::read_to_string(&key_file).unwrap();
    rewrite_unseen(&cert_file, &second.cert_pem);
    rewrite_unseen(&key_file, &second.key_pem);
    assert_ne!(std::fs::read_to_string(&key_file).unwrap(), key_before);
    hang_up(&app);
    wait_until_served(&app, &trusted, &second.sha256()).await;
    // The connection opened before goes on, with the certificate it began with.
    assert_eq!(healthz_on(&mut open).await, 200);
    assert_eq!(peer_sha256(&open), first.sha256());

    // A broken replacement is refused with a warning: the second certificate stays.
    std::fs::write(&cert_file, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    hang_up(&app);
    wait_for_log(&app, "TLS certificate not reloaded").await;
    let stream = connect(&addr(&app), &trusted).await.unwrap();
    assert_eq!(peer_sha256(&stream), second.sha256());

    assert!(app.terminate().await.success());
    let logs = app.logs();
    assert!(logs.contains(&format!("TLS certificate reloaded sha256={}", second.sha256())), "{logs}");
    let warning = logs.lines().find(|l| l.contains("TLS certificate not reloaded")).unwrap();
    assert!(warning.contains("WARN") && warning.contains(cert_file.to_str().unwrap()), "{warning}");
}

fn hang_up(app: &TestApp) {
    let status = std::process::Command::new("kill").args(["-HUP", &app.pid().to_string()]).status().unwrap();
    assert!(status.success());
}

async fn wait_for_log(app: &TestApp, needle: &str) {
    let deadline = Instant::now() + NEVER;
    while !app.logs().contains(needle) {
        assert!(Instant::now() < deadline, "no {needle:?} in the log:\n{}", app.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_certificate_replaced_on_disk_is_served_without_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (TestCert::new(), TestCert::new());
    let (cert_file, key_file) = first.write(dir.path());
    let app = with_tls(TestApp::builder(), &cert_file, &key_file).spawn().await;
    let new_dir = tempfile::tempdir_in(dir.path()).unwrap();
    let (new_cert, new_key) = second.write(new_dir.path());
    let old_dir = tempfile::tempdir().unwrap();
    let (old_cert, _) = first.write(old_dir.path());
    let trusted = [new_cert.as_path(), old_cert.as_path()];
    assert_eq!(peer_sha256(&connect(&addr(&app), &trusted).await.unwrap()), first.sha256());
    // Swapped in by rename, as a Secret volume or certbot's deploy hook does.
    std::fs::copy(&new_cert, dir.path().join("cert.new")).unwrap();
    std::fs::copy(&new_key, dir.path().join("key.new")).unwrap();
    std::fs::rename(dir.path().join("key.new"), &key_file).unwrap();
    std::fs::rename(dir.path().join("cert.new"), &cert_file).unwrap();
    wait_until_served(&app, &trusted, &second.sha256()).await;
}

#[tokio::test]
async fn a_tls_handshake_is_held_to_the_header_timeout_and_the_connection_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = TestCert::new().write(dir.path());
    let app = with_tls(TestApp::builder(), &cert_file, &key_file)
        .env("KEYGATE_HEADER_READ_TIMEOUT", "2")
        .env("KEYGATE_IDLE_TIMEOUT", "60")
        .env("KEYGATE_MAX_CONNECTIONS", "1")
        .spawn()
        .await;
    // Silent, and a handshake begun but never finished (a TLS record header, no more).
    for opening in [&b""[..], &[0x16, 0x03, 0x01, 0x02, 0x00][..]] {
        let mut stalled = TcpStream::connect(addr(&app)).await.unwrap();
        stalled.write_all(opening).await.unwrap();
        // The one connection allowed is the stalled one: this waits until it is cut.
        let client = client_builder(&cert_file).timeout(NEVER).build().unwrap();
        let waiting = tokio::spawn({
            let url = app.url("/healthz");
            async move { client.get(url).send().await.map(|r| r.status()) }
        });
        let (took, read) = read_until_closed(&mut stalled).await;
        assert!(read.is_empty() || read[0] == 0x15, "{read:?}");
        assert!(took < Duration::from_secs(8), "closed only after {took:?}");
        assert_eq!(waiting.await.unwrap().unwrap(), StatusCode::OK);
    }
}

/// `systemctl reload` sends SIGHUP whatever the settings: without TLS it must not stop the
/// server, as SIGHUP's default would.
#[tokio::test]
async fn sighup_without_tls_leaves_the_server_serving() {
    let mut app = TestApp::builder().process().spawn().await;
    hang_up(&app);
    wait_for_log(&app, "SIGHUP: nothing to reload").await;
    assert_eq!(reqwest::get(app.url("/healthz")).await.unwrap().status(), StatusCode::OK);
    assert!(app.terminate().await.success());
}
