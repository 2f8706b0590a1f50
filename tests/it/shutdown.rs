//! Graceful shutdown of the real process: on SIGTERM it stops accepting connections, answers
//! every request it had accepted (within `KEYGATE_SHUTDOWN_TIMEOUT`), keeps everything it
//! answered for, leaves the SQLite file whole, and exits 0.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::common::*;

/// An API login sent as far as half its body: the server has its head, and so the request,
/// and waits for the rest.
async fn half_sent_login(app: &TestApp, api_key: &str, password: &str) -> (TcpStream, Vec<u8>) {
    let body = json!({"api_key": api_key, "password": password}).to_string().into_bytes();
    let head = format!(
        "POST /auth/login HTTP/1.1\r\nhost: keygate\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut stream = TcpStream::connect(app.base.trim_start_matches("http://")).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let (first, rest) = body.split_at(body.len() / 2);
    stream.write_all(first).await.unwrap();
    (stream, rest.to_vec())
}

/// What one worker of the burst saw.
#[derive(Default)]
struct Seen {
    /// Keys whose generation answered 200, with the whole body.
    generated: Mutex<Vec<String>>,
    tokens: AtomicUsize,
    /// Answers that came but were not complete 200s.
    broken: Mutex<Vec<String>>,
}

/// Sends `request` until the server stops taking requests; every answer must be a complete
/// 200, whose body `keep` takes. A request the server never took (refused, or sent on a
/// connection it closed meanwhile) ends the loop, after SIGTERM only.
async fn hammer<F, Fut>(request: F, keep: impl Fn(Value), seen: &Seen, terminated: &AtomicBool)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = reqwest::Result<reqwest::Response>>,
{
    loop {
        let response = match request().await {
            Ok(response) => response,
            Err(e) => {
                if !terminated.load(Ordering::SeqCst) {
                    seen.broken.lock().unwrap().push(format!("before SIGTERM: {e}"));
                }
                return;
            }
        };
        let status = response.status();
        match response.json::<Value>().await {
            Ok(body) if status == StatusCode::OK => keep(body),
            Ok(body) => seen.broken.lock().unwrap().push(format!("{status}: {body}")),
            Err(e) => seen.broken.lock().unwrap().push(format!("{status}, body cut: {e}")),
        }
    }
}

backends! {
async fn sigterm_during_a_burst_answers_what_was_accepted_and_keeps_what_was_answered(builder: Builder) {
    let mut app = builder.process().spawn().await;
    app.admin_login().await;
    let (api_key, password) = app.generate_key().await;
    let seen = Arc::new(Seen::default());
    let terminated = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for i in 0..6 {
        let (seen, terminated) = (seen.clone(), terminated.clone());
        let (admin, base) = (app.client.clone(), app.base.clone());
        let (api_key, password) = (api_key.clone(), password.clone());
        workers.push(tokio::spawn(async move {
            let client = Client::new();
            if i % 2 == 0 {
                let generate = || admin.post(format!("{base}/auth/keys/generate")).send();
                let keep = |body: Value| seen.generated.lock().unwrap().push(body["api_key"].as_str().unwrap().to_owned());
                hammer(generate, keep, &seen, &terminated).await;
            } else {
                let body = json!({"api_key": api_key, "password": password});
                let login = || client.post(format!("{base}/auth/login")).json(&body).send();
                let keep = |body: Value| {
                    assert!(body.as_str().is_some_and(|t| t.split('.').count() == 3), "{body}");
                    seen.tokens.fetch_add(1, Ordering::SeqCst);
                };
                hammer(login, keep, &seen, &terminated).await;
            }
        }));
    }
    // A request the server has taken and is still reading when the signal comes.
    let (mut pending, rest) = half_sent_login(&app, &api_key, &password).await;
    while seen.generated.lock().unwrap().len() < 10 || seen.tokens.load(Ordering::SeqCst) < 10 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    terminated.store(true, Ordering::SeqCst);
    let pid = app.pid().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    // The listener closes at once; the request in flight is still waited for.
    let address = app.base.trim_start_matches("http://").to_owned();
    let mut refused = false;
    for _ in 0..250 {
        if TcpStream::connect(&address).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "still accepting connections after SIGTERM");
    // Time enough for a server that did not wait for it to be gone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    pending.write_all(&rest).await.unwrap();
    let mut answer = String::new();
    pending.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("\"eyJ"), "no token in: {answer}");

    for worker in workers {
        worker.await.unwrap();
    }
    let status = app.wait_for_exit(Duration::from_secs(60)).await;
    assert!(status.success(), "exit status {status:?}:\n{}", app.logs());
    let broken = seen.broken.lock().unwrap().clone();
    assert!(broken.is_empty(), "incomplete or failed answers: {broken:?}\n{}", app.logs());

    let app = app.restart().await;
    app.admin_login().await;
    let stored: Vec<String> = app.list_keys().await.into_iter().map(|(_, key)| key).collect();
    let generated = seen.generated.lock().unwrap().clone();
    let missing: Vec<&String> = generated.iter().filter(|k| !stored.contains(k)).collect();
    assert!(missing.is_empty(), "answered 200 but not stored: {missing:?}");
}
}

#[tokio::test]
async fn after_sigterm_the_sqlite_file_alone_holds_every_key() {
    let mut app = Builder::sqlite().process().spawn().await;
    app.admin_login().await;
    let mut keys = Vec::new();
    for _ in 0..20 {
        keys.push(app.generate_key().await);
    }
    assert!(app.terminate().await.success(), "{}", app.logs());
    let data = app.data_dir();
    let wal = std::fs::metadata(data.join("keygate.db-wal")).map_or(0, |m| m.len());
    assert_eq!(wal, 0, "the write-ahead log was left with {wal} bytes");

    // A copy of the database file and the master key only, as an operator's backup script
    // would take them.
    let copy = Arc::new(tempfile::tempdir().unwrap());
    std::fs::create_dir(copy.path().join("data")).unwrap();
    for file in ["keygate.db", "master.key"] {
        std::fs::copy(data.join(file), copy.path().join("data").join(file)).unwrap();
    }
    let restored = Builder::sqlite().dir(copy).process().spawn().await;
    restored.admin_login().await;
    let stored = restored.list_keys().await;
    assert_eq!(stored.len(), keys.len());
    for (api_key, password) in &keys {
        restored.token(api_key, password).await;
    }
}

#[tokio::test]
async fn requests_still_running_at_the_shutdown_timeout_are_cut_and_the_process_exits() {
    let mut app = Builder::sqlite()
        .env("KEYGATE_SHUTDOWN_TIMEOUT", "1")
        .env("KEYGATE_HEADER_READ_TIMEOUT", "300")
        .env("KEYGATE_IDLE_TIMEOUT", "3600")
        .process()
        .spawn()
        .await;
    app.admin_login().await;
    let (api_key, password) = app.generate_key().await;
    // Its body never comes: only the shutdown timeout ends it.
    let (mut stalled, _rest) = half_sent_login(&app, &api_key, &password).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = app.terminate().await;
    assert!(status.success(), "exit status {status:?}:\n{}", app.logs());
    assert!(app.logs().contains("were cut"), "{}", app.logs());
    let mut answer = Vec::new();
    let _ = stalled.read_to_end(&mut answer).await;
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"));
}
