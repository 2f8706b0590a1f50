//! A redis-server of its own for each test that needs one, on a free port and keeping
//! nothing on disk, as the machines' own Redis is set up; or, without the binary, the
//! notice that `.ci/run` refuses. A test can stop it and start it again on the same port.

use std::{
    io::Write,
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

pub struct RedisServer {
    port: u16,
    child: Mutex<Option<Child>>,
}

impl RedisServer {
    /// A running redis-server, or `None` after printing the skip notice when there is none
    /// to run.
    pub async fn start() -> Option<RedisServer> {
        if Command::new("redis-server").arg("--version").stdout(Stdio::null()).status().is_err() {
            let _ = writeln!(std::io::stderr(), "SKIPPED-REDIS: install redis-server to run the tests with Redis");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let server = RedisServer { port, child: Mutex::new(None) };
        server.start_again().await;
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again, empty: it keeps nothing) and waits until it answers.
    pub async fn start_again(&self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        *self.child.lock().unwrap() = Some(child);
        let started = Instant::now();
        while !self.answers().await {
            assert!(started.elapsed() < Duration::from_secs(10), "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills it, as a crash would.
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn answers(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else { return false };
        let Ok(mut connection) = client.get_multiplexed_async_connection().await else { return false };
        redis::cmd("PING").query_async::<String>(&mut connection).await.is_ok()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
