//! The documented contract, end to end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::json;

backends! {
async fn admin_generates_lists_and_deletes_keys_that_log_in(builder: Builder) {
    let app = builder.spawn().await;
    app.admin_login().await;
    let (api_key, password) = app.generate_key().await;
    assert_eq!(api_key.len(), 20);
    assert!(password.starts_with("kgp_"));

    let listed = app.list_keys().await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].1, api_key);

    let r = app.api_login(&api_key, &password).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.headers()["cache-control"], "no-store");
    let token: String = r.json().await.unwrap();
    assert_eq!(token.split('.').count(), 3);

    let r = app
        .client
        .delete(app.url(&format!("/auth/user/{}", listed[0].0)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(app.list_keys().await.is_empty());
    assert_problem(
        app.api_login(&api_key, &password).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
}

async fn username_is_accepted_as_the_api_key(builder: Builder) {
    let app = builder.spawn().await;
    app.admin_login().await;
    let (api_key, password) = app.generate_key().await;
    let r = app
        .post_json(
            "/auth/login",
            &json!({"username": api_key, "password": password}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
}
}
