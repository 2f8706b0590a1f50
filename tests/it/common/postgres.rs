//! A PostgreSQL database of its own for each test, on the server `KEYGATE_TEST_POSTGRES`
//! names; or, without that variable, the notice that `.ci/run` refuses.

use std::{io::Write, process::Command};

/// Prints the notice `.ci/run` looks for. Written to the stderr handle directly, because
/// libtest captures `eprintln!` of passing tests and the notice must be seen.
pub fn skip_postgres_notice() {
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED-POSTGRES: set KEYGATE_TEST_POSTGRES=postgres://user@host:port to run the PostgreSQL half"
    );
}

/// A uniquely named database on the server named by `KEYGATE_TEST_POSTGRES`, created for
/// one test and dropped (with any connections still open) when this is dropped. Tests run
/// concurrently on one server, so each touches only its own database.
pub struct PgDatabase {
    /// The server, without a database (connects to the user's default one).
    server: String,
    pub name: String,
    /// The database URL to give keygate.
    pub url: String,
}

impl PgDatabase {
    /// `None`, after printing the skip notice, when `KEYGATE_TEST_POSTGRES` is unset.
    pub async fn create() -> Option<Self> {
        let Ok(server) = std::env::var("KEYGATE_TEST_POSTGRES") else {
            skip_postgres_notice();
            return None;
        };
        let server = server_url(&server);
        let name = format!("keygate_test_{}", uuid::Uuid::new_v4().simple());
        let url = format!("{server}/{name}");
        let db = PgDatabase { server, name, url };
        let mut admin = db.admin().await;
        sqlx::query(&format!("CREATE DATABASE {}", db.name)).execute(&mut admin).await.expect("create test database");
        Some(db)
    }

    /// A connection to the server's default database, for CREATE/ALTER/DROP DATABASE.
    pub async fn admin(&self) -> sqlx::PgConnection {
        use sqlx::Connection;
        sqlx::PgConnection::connect(&self.server).await.expect("connect to KEYGATE_TEST_POSTGRES")
    }

    /// A connection to this test's database, to look at what keygate wrote.
    pub async fn connect(&self) -> sqlx::PgConnection {
        use sqlx::Connection;
        sqlx::PgConnection::connect(&self.url).await.expect("connect to the test database")
    }

    /// Everything keygate stored, as `pg_dump` writes it.
    pub fn dump(&self) -> Vec<u8> {
        let out = Command::new("pg_dump").args(["--data-only", "--no-owner", &self.url]).output().expect("run pg_dump");
        assert!(out.status.success(), "pg_dump failed: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    }

    /// `SELECT count(*) FROM <from_where>` in this database, e.g. `count("admins")`.
    pub async fn count(&self, from_where: &str) -> i64 {
        use sqlx::Connection;
        let mut conn = self.connect().await;
        let n = sqlx::query_scalar(&format!("SELECT count(*) FROM {from_where}")).fetch_one(&mut conn).await.unwrap();
        conn.close().await.ok();
        n
    }

    /// Simulates an outage of this database only: refuses new connections and ends the
    /// open ones. The server itself stays up, since other tests run on it.
    pub async fn take_down(&self) {
        let mut admin = self.admin().await;
        sqlx::query(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS false", self.name))
            .execute(&mut admin)
            .await
            .unwrap();
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&self.name)
        .execute(&mut admin)
        .await
        .unwrap();
    }

    /// Ends the outage.
    pub async fn bring_up(&self) {
        let mut admin = self.admin().await;
        sqlx::query(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", self.name)).execute(&mut admin).await.unwrap();
    }
}

/// `postgres://user@host:port[/db][?query]` without the database.
fn server_url(raw: &str) -> String {
    let raw = raw.trim().trim_end_matches('/');
    let (scheme, rest) = raw.split_once("://").expect("KEYGATE_TEST_POSTGRES must be a postgres:// URL");
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    format!("{scheme}://{authority}")
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, where we may not block on async work; a
        // thread with a runtime of its own can.
        let server = self.server.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                use sqlx::Connection;
                let mut admin = sqlx::PgConnection::connect(&server).await?;
                // FORCE ends connections a killed server may have left behind.
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await?;
                admin.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            let _ = writeln!(std::io::stderr(), "warning: could not drop test database {}", self.name);
        }
    }
}
