//! A PostgreSQL database of its own for each test, on the server `KEYGATE_TEST_POSTGRES`
//! names; or, without that variable, the notice that `.ci/run` refuses.

use std::{io::Write, process::Command, sync::OnceLock};

use sqlx::Connection;

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
    /// An empty database, as an operator gives keygate before its first start. `None`, after
    /// printing the skip notice, when `KEYGATE_TEST_POSTGRES` is unset.
    pub async fn create() -> Option<Self> {
        let server = server_url(&std::env::var("KEYGATE_TEST_POSTGRES").ok().or_else(|| {
            skip_postgres_notice();
            None
        })?);
        Some(PgDatabase::create_from(server, None).await)
    }

    /// A database that already holds keygate's schema, as the first start of a server leaves
    /// it: a copy of a template migrated once per test run, for the many tests that are not
    /// about that first start, which costs several times the copy.
    pub async fn create_migrated() -> Option<Self> {
        let server = server_url(&std::env::var("KEYGATE_TEST_POSTGRES").ok().or_else(|| {
            skip_postgres_notice();
            None
        })?);
        let template = template(&server);
        Some(PgDatabase::create_from(server, Some(template)).await)
    }

    /// A database with a name of its own that does not exist yet: `create_now` makes it
    /// (empty), and it is dropped like the others.
    pub async fn not_yet_created() -> Option<Self> {
        let server = server_url(&std::env::var("KEYGATE_TEST_POSTGRES").ok().or_else(|| {
            skip_postgres_notice();
            None
        })?);
        let name = format!("keygate_test_{}", uuid::Uuid::new_v4().simple());
        let url = format!("{server}/{name}");
        Some(PgDatabase { server, name, url })
    }

    pub async fn create_now(&self) {
        let mut admin = self.admin().await;
        sqlx::query(&format!("CREATE DATABASE {}", self.name)).execute(&mut admin).await.expect("create test database");
        admin.close().await.ok();
    }

    async fn create_from(server: String, template: Option<&str>) -> Self {
        let name = format!("keygate_test_{}", uuid::Uuid::new_v4().simple());
        let url = format!("{server}/{name}");
        let db = PgDatabase { server, name, url };
        let mut admin = db.admin().await;
        let template = template.map(|t| format!(" TEMPLATE {t}")).unwrap_or_default();
        sqlx::query(&format!("CREATE DATABASE {}{template}", db.name))
            .execute(&mut admin)
            .await
            .expect("create test database");
        admin.close().await.ok();
        db
    }

    /// A connection to the server's default database, for CREATE/ALTER/DROP DATABASE.
    pub async fn admin(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(&self.server).await.expect("connect to KEYGATE_TEST_POSTGRES")
    }

    /// A connection to this test's database, to look at what keygate wrote.
    pub async fn connect(&self) -> sqlx::PgConnection {
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

/// This test run's template: made, and migrated by `keygate::store::connect` as a server's
/// first start would, on first use. It lives while this process holds an advisory lock named
/// after it, on a connection of its own; a later run drops the templates nobody holds.
fn template(server: &str) -> &'static str {
    static TEMPLATE: OnceLock<String> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let (made, template) = std::sync::mpsc::channel();
        let server = server.to_owned();
        std::thread::Builder::new()
            .name("pg-template".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(async move {
                    let (_lock, name) = make_template(&server).await;
                    let _ = made.send(name);
                    std::future::pending::<()>().await
                })
            })
            .unwrap();
        template.recv().expect("the template database could not be made")
    })
}

async fn make_template(server: &str) -> (sqlx::PgConnection, String) {
    let mut lock = sqlx::PgConnection::connect(server).await.expect("connect to KEYGATE_TEST_POSTGRES");
    let name = format!("keygate_template_{}", uuid::Uuid::new_v4().simple());
    // Taken before the database exists, so that no other run takes it for a leftover.
    sqlx::query("SELECT pg_advisory_lock(hashtext($1))").bind(&name).execute(&mut lock).await.unwrap();
    let earlier: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'keygate\\_template\\_%'")
            .fetch_all(&mut lock)
            .await
            .unwrap();
    for old in earlier {
        let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
            .bind(&old)
            .fetch_one(&mut lock)
            .await
            .unwrap();
        if free {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {old} WITH (FORCE)")).execute(&mut lock).await;
            sqlx::query("SELECT pg_advisory_unlock(hashtext($1))").bind(&old).execute(&mut lock).await.unwrap();
        }
    }
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut lock).await.expect("create the template database");
    let store = keygate::store::connect(&format!("{server}/{name}")).await.expect("migrate the template database");
    drop(store);
    // A template may have no connections while it is copied: none from now on.
    sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false")).execute(&mut lock).await.unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&name)
        .execute(&mut lock)
        .await
        .unwrap();
    (lock, name)
}
