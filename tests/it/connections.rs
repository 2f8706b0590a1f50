//! Slow and idle clients against the real server: each test holds connections open the way
//! an attacker would and checks that the server closes them and keeps serving others.

use std::time::{Duration, Instant};

use crate::common::*;
use reqwest::StatusCode;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Far more than any timeout the tests set: a connection still open this long was not closed.
const NEVER: Duration = Duration::from_secs(20);

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.base.trim_start_matches("http://")).await.unwrap()
}

/// Reads until the server closes the connection (end of stream or reset), returning how
/// long that took and what was read; panics if it stays open for `NEVER`.
async fn wait_for_close(stream: &mut TcpStream) -> (Duration, Vec<u8>) {
    let start = Instant::now();
    let mut read = Vec::new();
    let mut buf = [0; 4096];
    loop {
        match tokio::time::timeout_at((start + NEVER).into(), stream.read(&mut buf)).await {
            Err(_) => panic!("still open after {NEVER:?}; read {:?}", String::from_utf8_lossy(&read)),
            Ok(Ok(0) | Err(_)) => return (start.elapsed(), read),
            Ok(Ok(n)) => read.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends one complete `/healthz` request and reads its whole answer, leaving the
/// connection open (keep-alive).
async fn healthz_on(stream: &mut TcpStream) {
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: keygate.test\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0; 4096];
    loop {
        let n = tokio::time::timeout(NEVER, stream.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed before answering: {:?}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            let length: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .unwrap();
            if body.len() >= length {
                return;
            }
        }
    }
}

/// A whole API login with a wrong password, as bytes on the wire.
fn login_request() -> Vec<u8> {
    let body = r#"{"api_key": "ZZZZZZZZZZZZZZZZZZZZ", "password": "not the password"}"#;
    format!(
        "POST /auth/login HTTP/1.1\r\nHost: keygate.test\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn healthz(app: &TestApp) -> StatusCode {
    let client = reqwest::Client::builder().timeout(NEVER).build().unwrap();
    client.get(app.url("/healthz")).send().await.unwrap().status()
}

backends! {
async fn a_slow_loris_is_closed_after_the_header_timeout(builder: Builder) {
    let app = builder.env("KEYGATE_HEADER_READ_TIMEOUT", "2").env("KEYGATE_IDLE_TIMEOUT", "60").spawn().await;
    let mut stream = connect(&app).await;
    let (mut reader, mut writer) = stream.split();
    // One header line every half second: always busy, never done.
    let drip = async {
        writer.write_all(b"POST /auth/login HTTP/1.1\r\nHost: keygate.test\r\n").await.unwrap();
        for i in 0.. {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if writer.write_all(format!("X-Drip-{i}: {i}\r\n").as_bytes()).await.is_err() {
                break;
            }
        }
    };
    let start = Instant::now();
    let closed = async {
        let mut buf = [0; 1024];
        if let Ok(n @ 1..) = reader.read(&mut buf).await {
            panic!("answered a request that never ended: {:?}", String::from_utf8_lossy(&buf[..n]));
        }
    };
    tokio::time::timeout(NEVER, async {
        tokio::select! {
            () = closed => {}
            () = drip => {}
        }
    })
    .await
    .expect("a slow-loris connection still open");
    let took = start.elapsed();
    assert!(took < Duration::from_secs(8), "closed only after {took:?}");
    assert_eq!(healthz(&app).await, StatusCode::OK);
}

async fn a_connection_that_never_sends_a_byte_is_closed(builder: Builder) {
    let app = builder.env("KEYGATE_HEADER_READ_TIMEOUT", "2").env("KEYGATE_IDLE_TIMEOUT", "60").spawn().await;
    let mut silent = connect(&app).await;
    let (took, read) = wait_for_close(&mut silent).await;
    assert!(read.is_empty(), "{:?}", String::from_utf8_lossy(&read));
    assert!(took < Duration::from_secs(8), "closed only after {took:?}");
}

async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(builder: Builder) {
    let app = builder.env("KEYGATE_HEADER_READ_TIMEOUT", "60").env("KEYGATE_IDLE_TIMEOUT", "2").spawn().await;
    let mut stream = connect(&app).await;
    healthz_on(&mut stream).await;
    // Kept alive: a second request on it is served.
    healthz_on(&mut stream).await;
    let (took, read) = wait_for_close(&mut stream).await;
    assert!(read.is_empty(), "{:?}", String::from_utf8_lossy(&read));
    assert!(took < Duration::from_secs(8), "closed only after {took:?}");
}

async fn a_request_whose_bytes_keep_coming_is_not_cut(builder: Builder) {
    // The upload takes longer than the idle timeout, but no pause between its bytes does.
    let app = builder.env("KEYGATE_HEADER_READ_TIMEOUT", "8").env("KEYGATE_IDLE_TIMEOUT", "1").spawn().await;
    let mut stream = connect(&app).await;
    let start = Instant::now();
    for chunk in login_request().chunks(8) {
        stream.write_all(chunk).await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(start.elapsed() > Duration::from_secs(3), "{:?}", start.elapsed());
    let mut answer = [0; 64];
    let n = tokio::time::timeout(NEVER, stream.read(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
}

async fn a_body_dripped_slowly_is_closed_after_the_header_timeout(builder: Builder) {
    let app = builder.env("KEYGATE_HEADER_READ_TIMEOUT", "2").env("KEYGATE_IDLE_TIMEOUT", "60").spawn().await;
    let request = login_request();
    let body_at = request.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut stream = connect(&app).await;
    stream.write_all(&request[..body_at]).await.unwrap();
    let (mut reader, mut writer) = stream.split();
    let drip = async {
        for byte in &request[body_at..] {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
        }
        panic!("the whole body was taken");
    };
    let start = Instant::now();
    let closed = async {
        let mut buf = [0; 1024];
        if let Ok(n @ 1..) = reader.read(&mut buf).await {
            panic!("answered a body that never ended: {:?}", String::from_utf8_lossy(&buf[..n]));
        }
    };
    tokio::time::timeout(NEVER, async {
        tokio::select! {
            () = closed => {}
            () = drip => {}
        }
    })
    .await
    .expect("a slow body still being taken");
    let took = start.elapsed();
    assert!(took < Duration::from_secs(8), "closed only after {took:?}");
    assert_eq!(healthz(&app).await, StatusCode::OK);
}

async fn health_checks_are_answered_while_idle_connections_hold_the_limit(builder: Builder) {
    let app = builder
        .env("KEYGATE_MAX_CONNECTIONS", "20")
        .env("KEYGATE_HEADER_READ_TIMEOUT", "3")
        .env("KEYGATE_IDLE_TIMEOUT", "60")
        .spawn()
        .await;
    // Twenty connections that never send a byte take every place.
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(connect(&app).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The limit holds: a twenty-first client waits (in the listen backlog) ...
    let check = tokio::spawn({
        let url = app.url("/healthz");
        async move {
            let client = reqwest::Client::builder().timeout(NEVER).build().unwrap();
            client.get(url).send().await.unwrap().status()
        }
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!check.is_finished(), "a connection over the limit was served");
    // ... until the header timeout closes the silent ones, then it is answered.
    assert_eq!(tokio::time::timeout(NEVER, check).await.unwrap().unwrap(), StatusCode::OK);
    for mut stream in silent {
        let (took, _) = wait_for_close(&mut stream).await;
        assert!(took < Duration::from_secs(8));
    }
    // And the server keeps serving.
    for _ in 0..25 {
        assert_eq!(healthz(&app).await, StatusCode::OK);
    }
}

async fn at_the_limit_idle_keep_alive_connections_make_room_at_once(builder: Builder) {
    // The idle timeout alone would keep these twenty for a minute.
    let app = builder
        .env("KEYGATE_MAX_CONNECTIONS", "20")
        .env("KEYGATE_HEADER_READ_TIMEOUT", "60")
        .env("KEYGATE_IDLE_TIMEOUT", "60")
        .spawn()
        .await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        let mut stream = connect(&app).await;
        healthz_on(&mut stream).await;
        idle.push(stream);
    }
    let start = Instant::now();
    assert_eq!(healthz(&app).await, StatusCode::OK);
    let took = start.elapsed();
    assert!(took < Duration::from_secs(10), "answered only after {took:?}");
    // The one that made room was closed, not answered twice.
    let mut closed = 0;
    for stream in &mut idle {
        let mut buf = [0; 16];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
            closed += 1;
        }
    }
    assert!(closed >= 1, "no idle connection was closed");
    for _ in 0..25 {
        assert_eq!(healthz(&app).await, StatusCode::OK);
    }
}
}

/// Asking for more connections than the open-file limit leaves is refused at start-up, in one
/// line naming the setting, rather than failing on some later accept.
#[cfg(target_os = "linux")]
#[test]
fn a_connection_limit_above_the_open_file_limit_stops_start_up() {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    // "Max open files  <soft>  <hard>  files"; keygate raises the soft limit to the hard one.
    let Ok(hard) = line.split_whitespace().nth(4).unwrap().parse::<u64>() else { return };
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("KEYGATE_LISTEN", "127.0.0.1:0".to_owned()),
        ("KEYGATE_DATA_DIR", dir.path().join("data").display().to_string()),
        ("KEYGATE_MAX_CONNECTIONS", (hard + 1).to_string()),
    ]
    .map(|(k, v)| (k.to_owned(), v));
    let out = run_with_timeout(keygate_command(&env).arg("serve"), Duration::from_secs(30));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("invalid setting KEYGATE_MAX_CONNECTIONS"), "{stderr}");
    assert!(!dir.path().join("data/keygate.db").exists(), "the store was opened first");
}
