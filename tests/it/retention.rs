//! Retention: the periodic sweep deletes ended sessions, idle failed-login counters and
//! audit entries past `KEYGATE_AUDIT_RETENTION_DAYS`, and nothing else. Each test ages rows
//! in the store directly (standing in for the passing of time) and watches the real server
//! sweep them, every second here (`KEYGATE_SWEEP_INTERVAL=1`).

use std::time::Duration;

use crate::common::{gateway::now, *};
use reqwest::StatusCode;

const DAY: i64 = 86_400;

/// Runs `sql` on the app's store. The statements here use no parameters and no
/// backend-specific syntax, so one text serves SQLite and PostgreSQL.
async fn execute(app: &TestApp, sql: &str) -> u64 {
    let url = app.database_url();
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let done = sqlx::query(sql).execute(&pool).await.unwrap().rows_affected();
        pool.close().await;
        done
    } else {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        let done = sqlx::query(sql).execute(&pool).await.unwrap().rows_affected();
        pool.close().await;
        done
    }
}

/// `SELECT count(*) FROM <from_where>` on the app's store.
async fn count(app: &TestApp, from_where: &str) -> i64 {
    let url = app.database_url();
    let sql = format!("SELECT count(*) FROM {from_where}");
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let n = sqlx::query_scalar(&sql).fetch_one(&pool).await.unwrap();
        pool.close().await;
        n
    } else {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        let n = sqlx::query_scalar(&sql).fetch_one(&pool).await.unwrap();
        pool.close().await;
        n
    }
}

/// Waits until `SELECT count(*) FROM <from_where>` is `expected`, or panics after 30 s.
async fn wait_for_count(app: &TestApp, from_where: &str, expected: i64) {
    for _ in 0..300 {
        if count(app, from_where).await == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{from_where}: {} rows, not {expected}, after 30 s", count(app, from_where).await);
}

/// `n` audit entries at `at`, written as an older server would have.
async fn insert_audit_rows(app: &TestApp, n: u32, at: i64, actor: &str) {
    let sql = format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) \
         INSERT INTO audit_log (at, action, actor) SELECT {at}, 'admin.login', '{actor}' FROM n"
    );
    assert_eq!(execute(app, &sql).await, u64::from(n));
}

/// One failed admin login for `email`, which leaves a counter `email:<email>`.
async fn fail_login(app: &TestApp, email: &str) {
    let r = app.try_admin_login(email, "a wrong password").await;
    assert!(matches!(r.status(), StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS), "{}", r.status());
}

/// Returns once a whole sweep has run that started after this call. A counter made stale
/// now is deleted by the first sweep to start after it; once it is gone a second stale
/// counter is made, and the sweep that deletes that one starts only after the first sweep
/// has finished, audit log included.
async fn a_whole_sweep_passes(app: &TestApp) {
    for marker in ["marker-1@example.com", "marker-2@example.com"] {
        fail_login(app, marker).await;
        let subject = format!("subject = 'email:{marker}'");
        let aged = format!("UPDATE login_failures SET last_failure_at = 1 WHERE {subject}");
        assert_eq!(execute(app, &aged).await, 1);
        wait_for_count(app, &format!("login_failures WHERE {subject}"), 0).await;
    }
}

backends! {
async fn ended_sessions_are_swept_and_live_ones_stay(builder: Builder) {
    let app = builder.env("KEYGATE_SWEEP_INTERVAL", "1").env("KEYGATE_SESSION_IDLE_TIMEOUT", "1800").spawn().await;
    let now = now() as i64;
    // Past its absolute expiry, though used a moment ago.
    let (expired, _) = app.admin_session_cookie().await;
    assert_eq!(execute(&app, &format!("UPDATE sessions SET expires_at = {}", now - 1)).await, 1);
    // Idle for the whole idle timeout, though far from its absolute expiry.
    let (idle, _) = app.admin_session_cookie().await;
    let aged = execute(&app, &format!("UPDATE sessions SET last_seen_at = {} WHERE expires_at > {now}", now - 1800)).await;
    assert_eq!(aged, 1);
    let (live, _) = app.admin_session_cookie().await;

    // Nobody presents the ended sessions (which would delete them on the spot): only the
    // sweep can remove their rows.
    wait_for_count(&app, "sessions", 1).await;
    let list = |cookie: String| {
        let url = app.url("/auth/keys/list");
        async move { cookie_client(&cookie).get(url).send().await.unwrap().status() }
    };
    assert_eq!(list(live).await, StatusCode::OK);
    assert_eq!(list(expired).await, StatusCode::UNAUTHORIZED);
    assert_eq!(list(idle).await, StatusCode::UNAUTHORIZED);
}

async fn idle_counters_are_swept_and_locked_ones_stay(builder: Builder) {
    let app = builder.env("KEYGATE_SWEEP_INTERVAL", "1").spawn().await;
    fail_login(&app, "stale@example.com").await;
    fail_login(&app, "recent@example.com").await;
    // Five failures lock it (the default threshold) for a minute.
    for _ in 0..5 {
        fail_login(&app, "locked@example.com").await;
    }
    assert_problem(app.try_admin_login("locked@example.com", "x").await, StatusCode::TOO_MANY_REQUESTS).await;

    // Both last failed longer ago than any lockout window; one is still locked.
    let old = now() as i64 - 10 * DAY;
    let aged = format!(
        "UPDATE login_failures SET last_failure_at = {old} \
         WHERE subject IN ('email:stale@example.com', 'email:locked@example.com')"
    );
    assert_eq!(execute(&app, &aged).await, 2);
    wait_for_count(&app, "login_failures WHERE subject = 'email:stale@example.com'", 0).await;
    assert_eq!(count(&app, "login_failures WHERE subject = 'email:locked@example.com'").await, 1);
    assert_eq!(count(&app, "login_failures WHERE subject = 'email:recent@example.com'").await, 1);
    assert_eq!(count(&app, "login_failures WHERE subject LIKE 'addr:%'").await, 1);
    assert_problem(app.try_admin_login("locked@example.com", "x").await, StatusCode::TOO_MANY_REQUESTS).await;

    // Once its lock is over too, it goes at the next sweep.
    let unlocked = "UPDATE login_failures SET locked_until = 0 WHERE subject = 'email:locked@example.com'";
    assert_eq!(execute(&app, unlocked).await, 1);
    wait_for_count(&app, "login_failures WHERE subject = 'email:locked@example.com'", 0).await;
    assert_eq!(count(&app, "login_failures WHERE subject = 'email:recent@example.com'").await, 1);
}

async fn audit_entries_past_the_retention_go_and_newer_ones_stay(builder: Builder) {
    let app = builder.env("KEYGATE_SWEEP_INTERVAL", "1").env("KEYGATE_AUDIT_RETENTION_DAYS", "30").spawn().await;
    app.admin_login().await;
    fail_login(&app, ADMIN_EMAIL).await;
    let now = now() as i64;
    // More than one batch of old rows, so a sweep that deleted one batch and stopped
    // would leave some.
    insert_audit_rows(&app, 2_500, now - 31 * DAY, "old").await;
    insert_audit_rows(&app, 3, now - 29 * DAY, "within").await;
    let aged = format!("UPDATE audit_log SET at = {} WHERE action = 'admin.login_failed'", now - 30 * DAY - 60);
    assert_eq!(execute(&app, &aged).await, 1);

    wait_for_count(&app, "audit_log WHERE actor = 'old'", 0).await;
    wait_for_count(&app, "audit_log WHERE action = 'admin.login_failed'", 0).await;
    assert_eq!(count(&app, "audit_log WHERE actor = 'within'").await, 3);
    assert_eq!(count(&app, "audit_log WHERE action = 'admin.login' AND actor LIKE 'admin:%'").await, 1);
    let out = app.cli(&["audit", "--json"], "");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"admin.login\""));
}

async fn audit_retention_zero_keeps_everything(builder: Builder) {
    let app = builder.env("KEYGATE_SWEEP_INTERVAL", "1").env("KEYGATE_AUDIT_RETENTION_DAYS", "0").spawn().await;
    insert_audit_rows(&app, 50, 1, "ancient").await;
    a_whole_sweep_passes(&app).await;
    assert_eq!(count(&app, "audit_log WHERE actor = 'ancient'").await, 50);
}
}

/// Every replica sweeps the one database. Two that sweep the same old rows at once must
/// between them delete each exactly once, without an error: every row goes, the newer stay,
/// and the counts the two logged add up to the rows there were.
#[tokio::test]
async fn replicas_sweeping_at_once_delete_each_row_once() {
    let Some(builder) = Builder::postgres().await else { return };
    let builder = builder.env("KEYGATE_SWEEP_INTERVAL", "1").env("KEYGATE_AUDIT_RETENTION_DAYS", "30");
    // The first server makes the schema; the rows go in before either sweeps them.
    let mut first = builder.clone().spawn().await;
    first.kill();
    let old = now() as i64 - 31 * DAY;
    insert_audit_rows(&first, 20_000, old, "old").await;
    insert_audit_rows(&first, 10, now() as i64, "new").await;
    // A forgets idle counters sooner (a lockout window of 1920 s against B's 19 200 s), B
    // idle sessions (60 s against A's 1800 s): so each has rows that only its own sweep
    // deletes, which tell when it has swept again.
    let (a, b) = tokio::join!(
        first.replica().env("KEYGATE_LOCKOUT_DURATION", "60").spawn(),
        first.replica().env("KEYGATE_LOCKOUT_DURATION", "600").env("KEYGATE_SESSION_IDLE_TIMEOUT", "60").spawn(),
    );

    wait_for_count(&a, "audit_log WHERE actor = 'old'", 0).await;
    assert_eq!(count(&a, "audit_log WHERE actor = 'new'").await, 10);
    // Each replica sweeps once more, from the start: the sweep that deleted its last old rows
    // has ended, and logged what it deleted.
    fail_login(&a, "only-a-sweeps@example.com").await;
    let aged = "UPDATE login_failures SET last_failure_at = last_failure_at - 5000 \
                WHERE subject = 'email:only-a-sweeps@example.com'";
    assert_eq!(execute(&a, aged).await, 1);
    b.admin_session_cookie().await;
    assert_eq!(execute(&b, &format!("UPDATE sessions SET last_seen_at = {}", now() as i64 - 600)).await, 1);
    wait_for_count(&a, "login_failures WHERE subject = 'email:only-a-sweeps@example.com'", 0).await;
    wait_for_count(&b, "sessions", 0).await;

    let swept = |app: &TestApp| -> u64 {
        app.logs()
            .lines()
            .filter(|l| l.contains(" swept"))
            .filter_map(|l| l.split("audit=").nth(1)?.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    };
    assert_eq!(swept(&a) + swept(&b), 20_000, "A:\n{}\nB:\n{}", a.logs(), b.logs());
    for app in [&a, &b] {
        assert!(!app.logs().contains("cannot sweep"), "{}", app.logs());
    }
}
