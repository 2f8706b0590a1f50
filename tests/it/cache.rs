//! The in-memory caches stay coherent with the store: whoever deletes a key or revokes a
//! token (this server, another server on the same store, an operator's own SQL), its
//! tokens stop verifying within a second, and this server's own changes at once.
//! Replicas on PostgreSQL are in `replicas.rs`.

use std::time::Instant;

use crate::common::{cache::*, gateway::*, *};
use reqwest::StatusCode;

/// Runs `sql` with one bound text parameter directly on the server's database.
async fn execute_sql(app: &TestApp, sqlite: &str, postgres: &str, param: &str) -> u64 {
    let url = app.database_url();
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        sqlx::query(sqlite).bind(param).execute(&pool).await.unwrap().rows_affected()
    } else {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::query(postgres).bind(param).execute(&pool).await.unwrap().rows_affected()
    }
}

backends! {
async fn own_deletions_and_revocations_apply_at_once(builder: Builder) {
    let app = builder.spawn().await;
    let (api_key, password, key_ref, token) = app.cached_key_on(&app).await;
    let (other_key, other_password) = app.generate_key().await;
    let second = app.token(&other_key, &other_password).await;
    let third = app.token(&other_key, &other_password).await;
    assert_eq!(app.verify(&second).await.status(), StatusCode::OK);

    // Revoked here: refused on the very next request, its sibling token untouched.
    assert_eq!(app.revoke_token(&other_key, &other_password, &second).await.status(), StatusCode::OK);
    assert_invalid_token(app.verify(&second).await, "revoked token").await;
    assert_eq!(app.verify(&third).await.status(), StatusCode::OK);

    // Deleted here: no login and no token, on the very next request.
    let r = app.client.delete(app.url(&format!("/auth/user/{key_ref}"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_problem(app.api_login(&api_key, &password).await, StatusCode::UNAUTHORIZED).await;
    assert_invalid_token(app.verify(&token).await, "deleted key's token").await;
    // Asking again, now that the deletion is known, gives the same answer.
    assert_invalid_token(app.verify(&token).await, "deleted key's token, again").await;
    assert_eq!(app.verify(&third).await.status(), StatusCode::OK);
}

async fn a_deletion_by_sql_reaches_the_cache_within_a_second(builder: Builder) {
    // An operator deleting a row by hand bypasses keygate entirely; the trigger-written
    // change log still carries it to every server.
    let app = builder.spawn().await;
    let (api_key, password, key_ref, token) = app.cached_key_on(&app).await;
    let since = Instant::now();
    let deleted = execute_sql(
        &app,
        "DELETE FROM api_keys WHERE key_ref = ?",
        "DELETE FROM api_keys WHERE key_ref = $1::uuid",
        &key_ref,
    )
    .await;
    assert_eq!(deleted, 1);
    let refused = within(since, PROPAGATION_BOUND, || async {
        app.verify(&token).await.status() == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(refused, "the deleted key's token still verified a second after the deletion");
    let refused = within(since, PROPAGATION_BOUND, || async {
        app.api_login(&api_key, &password).await.status() == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(refused, "the deleted key still logged in a second after the deletion");
}

async fn a_revocation_by_sql_reaches_the_cache_within_a_second(builder: Builder) {
    let app = builder.spawn().await;
    let (_, _, key_ref, token) = app.cached_key_on(&app).await;
    let claims = claims_like(&token);
    let since = Instant::now();
    let url = app.database_url();
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        sqlx::query("INSERT INTO revoked_tokens (jti, key_ref, expires_at, revoked_at) VALUES (?, ?, ?, ?)")
            .bind(&claims.jti)
            .bind(&key_ref)
            .bind(claims.exp as i64 + 10)
            .bind(now() as i64)
            .execute(&pool)
            .await
            .unwrap();
    } else {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::query("INSERT INTO revoked_tokens (jti, key_ref, expires_at, revoked_at) VALUES ($1, $2::uuid, $3, $4)")
            .bind(&claims.jti)
            .bind(&key_ref)
            .bind(claims.exp as i64 + 10)
            .bind(now() as i64)
            .execute(&pool)
            .await
            .unwrap();
    }
    let refused = within(since, PROPAGATION_BOUND, || async {
        app.verify(&token).await.status() == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(refused, "the revoked token still verified a second after the revocation");
}

async fn revocations_survive_a_restart_of_the_cache(builder: Builder) {
    // The revocation set is loaded from the store at start, not only learned while running.
    let app = builder.spawn().await;
    let (api_key, password, _, token) = app.cached_key_on(&app).await;
    assert_eq!(app.revoke_token(&api_key, &password, &token).await.status(), StatusCode::OK);
    let app = app.restart().await;
    app.wait_for_caches().await;
    assert_invalid_token(app.verify(&token).await, "token revoked before the restart").await;
    // And the key itself still works.
    let fresh = app.token(&api_key, &password).await;
    assert_eq!(app.verify(&fresh).await.status(), StatusCode::OK);
}
}

#[tokio::test]
async fn a_second_server_on_the_same_sqlite_file_is_heard_within_a_second() {
    // Not the embedded store's intended use (one server per file), but it must stay safe:
    // B's deletions and revocations reach A's caches through the change log.
    let a = TestApp::spawn().await;
    let (api_key, password, key_ref, token) = a.cached_key_on(&a).await;
    let (other_key, other_password) = a.generate_key().await;
    let other_token = a.token(&other_key, &other_password).await;
    assert_eq!(a.verify(&other_token).await.status(), StatusCode::OK);
    let b = a.sibling().spawn().await;
    b.admin_login().await;

    let since = Instant::now();
    assert_eq!(b.revoke_token(&other_key, &other_password, &other_token).await.status(), StatusCode::OK);
    let refused = within(since, PROPAGATION_BOUND, || async {
        a.verify(&other_token).await.status() == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(refused, "a token revoked on B still verified on A after a second");

    let since = Instant::now();
    let r = b.client.delete(b.url(&format!("/auth/user/{key_ref}"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let refused =
        within(since, PROPAGATION_BOUND, || async { a.verify(&token).await.status() == StatusCode::UNAUTHORIZED })
            .await;
    assert!(refused, "a key deleted on B still verified on A after a second");
    let refused = within(since, PROPAGATION_BOUND, || async {
        a.api_login(&api_key, &password).await.status() == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(refused, "a key deleted on B still logged in on A after a second");
}
