//! The active signing key is shared by every server on a store: a server whose
//! `KEYGATE_SIGNING_ALG` differs serves it as it is and warns, and only
//! `keygate signing-key rotate [--alg]` (audited) changes it.

use crate::common::{gateway::segment, *};
use serde_json::Value;

/// A fresh key's (api_key, password) and one token for it.
async fn key_and_token(app: &TestApp) -> (String, String, String) {
    app.admin_login().await;
    let (api_key, password) = app.generate_key().await;
    let token = app.token(&api_key, &password).await;
    (api_key, password, token)
}

fn alg_and_kid(token: &str) -> (String, String) {
    let header = segment(token, 0);
    (header["alg"].as_str().unwrap().to_owned(), header["kid"].as_str().unwrap().to_owned())
}

/// The signing-key rotations in the audit log, newest first, as (actor, target).
fn rotations(app: &TestApp) -> Vec<(String, String)> {
    let out = app.cli(&["audit", "--json", "--limit", "1000"], "");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["action"] == "signing_key.rotated")
        .map(|e| (e["actor"].as_str().unwrap().to_owned(), e["target"].as_str().unwrap().to_owned()))
        .collect()
}

backends! {
async fn a_server_with_another_algorithm_serves_the_active_key_and_only_the_cli_rotates(builder: Builder) {
    let mut first = builder.env("KEYGATE_SIGNING_ALG", "ES256").env("KEYGATE_KEY_RELOAD_INTERVAL", "1").spawn().await;
    let (api_key, password, token) = key_and_token(&first).await;
    let (alg, kid) = alg_and_kid(&token);
    assert_eq!(alg, "ES256");
    let kids = first.jwks_kids().await;
    first.kill();

    // The same store, another setting: as a replica started without the config file would.
    let second = first.sibling().env("KEYGATE_SIGNING_ALG", "EdDSA").spawn().await;
    assert_eq!(second.jwks_kids().await, kids, "the start rotated the shared key");
    assert_eq!(alg_and_kid(&second.token(&api_key, &password).await), ("ES256".to_owned(), kid.clone()));
    assert_eq!(second.verify(&token).await.status(), reqwest::StatusCode::OK);
    let warning = second.logs().lines().find(|l| l.contains("WARN") && l.contains("KEYGATE_SIGNING_ALG")).map(str::to_owned);
    let warning = warning.unwrap_or_else(|| panic!("no warning:\n{}", second.logs()));
    assert!(warning.contains("EdDSA") && warning.contains("ES256") && warning.contains(&kid), "{warning}");
    assert!(rotations(&second).is_empty());

    // The CLI, run with the first server's settings (ES256), changes it when asked to.
    let out = first.cli(&["signing-key", "rotate", "--alg", "EdDSA"], "");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let new_kid = stdout.split_whitespace().nth(3).unwrap().to_owned();
    assert!(stdout.contains("(EdDSA)"), "{stdout}");
    assert_eq!(rotations(&second), [("cli".to_owned(), format!("{kid} -> {new_kid} (EdDSA)"))]);
    second.wait_for_jwks("gained the new key", |kids| kids.contains(&new_kid)).await;
    assert_eq!(alg_and_kid(&second.token(&api_key, &password).await), ("EdDSA".to_owned(), new_kid.clone()));

    // Without --alg a rotation keeps the active key's algorithm, whatever the CLI's setting.
    let out = first.cli(&["signing-key", "rotate"], "");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let newest = String::from_utf8_lossy(&out.stdout).split_whitespace().nth(3).unwrap().to_owned();
    assert_eq!(rotations(&second)[0].1, format!("{new_kid} -> {newest} (EdDSA)"));

    // A restart of the ES256 server leaves it so too.
    let third = first.sibling().spawn().await;
    second.wait_for_jwks("gained the newest key", |kids| kids.contains(&newest)).await;
    assert_eq!(alg_and_kid(&third.token(&api_key, &password).await), ("EdDSA".to_owned(), newest));
    assert_eq!(rotations(&third).len(), 2);
}

async fn rotate_refuses_an_unknown_algorithm(builder: Builder) {
    let app = builder.spawn().await;
    let kids = app.jwks_kids().await;
    let out = app.cli(&["signing-key", "rotate", "--alg", "HS256"], "");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected ES256 or EdDSA"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(app.jwks_kids().await, kids);
}
}

/// Two replicas with different settings, restarted one after the other as in a rolling
/// deploy: the first key stays the one key, and each serves it.
#[tokio::test]
async fn postgres_replicas_with_different_algorithms_do_not_flip_the_key() {
    let Some(builder) = Builder::postgres().await else { return };
    let a = builder.env("KEYGATE_SIGNING_ALG", "ES256").spawn().await;
    let (api_key, password, token) = key_and_token(&a).await;
    let (_, kid) = alg_and_kid(&token);
    let mut b = a.replica().env("KEYGATE_SIGNING_ALG", "EdDSA").spawn().await;
    let a = a.restart().await;
    b = b.restart().await;
    let a = a.restart().await;
    let db = a.db().unwrap();
    assert_eq!(db.count("signing_keys").await, 1);
    for app in [&a, &b] {
        assert_eq!(alg_and_kid(&app.token(&api_key, &password).await), ("ES256".to_owned(), kid.clone()));
        assert_eq!(app.jwks_kids().await, vec![kid.clone()]);
    }
    assert!(b.logs().contains("KEYGATE_SIGNING_ALG is EdDSA but the active signing key is ES256"), "{}", b.logs());
    assert!(rotations(&a).is_empty());
}
