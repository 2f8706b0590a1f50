//! Gateway integration: forward-auth, the token attacks it must refuse, OAuth 2.0 client
//! credentials, introspection and revocation, server metadata, JWKS caching, and signing-key
//! rotation from the CLI while the server runs.

use crate::common::{gateway::*, *};
use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use keygate::crypto::signing::AccessClaims;
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;

/// A key and a live token for it: (api_key, password, key_ref, token).
async fn key_and_token(app: &TestApp) -> (String, String, String, String) {
    app.admin_login().await;
    let (api_key, password) = app.generate_key().await;
    let key_ref = app.ref_of(&api_key).await;
    let token = app.token(&api_key, &password).await;
    (api_key, password, key_ref, token)
}

/// A form POST with HTTP Basic client authentication.
async fn post_basic(app: &TestApp, path: &str, id: &str, secret: &str, form: &[(&str, &str)]) -> reqwest::Response {
    Client::new().post(app.url(path)).basic_auth(id, Some(secret)).form(form).send().await.unwrap()
}

/// Asserts an RFC 6749 §5.2 error and returns its code.
async fn assert_oauth_error(response: reqwest::Response, status: StatusCode, code: &str) {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["cache-control"], "no-store");
    if status == StatusCode::UNAUTHORIZED {
        assert!(response.headers()["www-authenticate"].to_str().unwrap().starts_with("Basic "));
    }
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], code, "{body}");
    assert!(body["error_description"].is_string());
}

async fn introspect(app: &TestApp, id: &str, secret: &str, token: &str) -> Value {
    let r = post_basic(app, "/oauth/introspect", id, secret, &[("token", token)]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    r.json().await.unwrap()
}

async fn revoke(app: &TestApp, id: &str, secret: &str, token: &str) {
    let r = post_basic(app, "/oauth/revoke", id, secret, &[("token", token)]).await;
    assert_eq!(r.status(), StatusCode::OK);
}

fn hs256(header: &Value, payload: &Value, key: &[u8]) -> String {
    let signing_input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(payload.to_string().as_bytes()));
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(signing_input.as_bytes());
    format!("{signing_input}.{}", b64(&mac.finalize().into_bytes()))
}

/// Every encoding of the public key a confused verifier might use as an HMAC secret.
fn public_key_encodings(jwk: &Value) -> Vec<Vec<u8>> {
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap();
    let y = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap();
    let point = [&[4u8][..], &x, &y].concat();
    // SubjectPublicKeyInfo for a P-256 key: fixed prefix, then the point.
    let spki_prefix = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
        0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    let der = [&spki_prefix[..], &point].concat();
    let body = STANDARD.encode(&der);
    let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    let pem = format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", lines.join("\n"));
    vec![point, der, pem.into_bytes(), jwk.to_string().into_bytes()]
}

backends! {
async fn metadata_points_at_every_endpoint(builder: Builder) {
    let app = builder.spawn().await;
    let r = Client::new().get(app.url("/.well-known/oauth-authorization-server")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["cache-control"].to_str().unwrap().starts_with("public"));
    let m: Value = r.json().await.unwrap();
    assert_eq!(m["issuer"], "https://keygate.test");
    assert_eq!(m["token_endpoint"], "https://keygate.test/oauth/token");
    assert_eq!(m["introspection_endpoint"], "https://keygate.test/oauth/introspect");
    assert_eq!(m["revocation_endpoint"], "https://keygate.test/oauth/revoke");
    assert_eq!(m["jwks_uri"], "https://keygate.test/.well-known/jwks.json");
    assert_eq!(m["grant_types_supported"], json!(["client_credentials"]));
    for field in [
        "token_endpoint_auth_methods_supported",
        "introspection_endpoint_auth_methods_supported",
        "revocation_endpoint_auth_methods_supported",
    ] {
        assert_eq!(m[field], json!(["client_secret_basic", "client_secret_post"]), "{field}");
    }
}

async fn jwks_is_cacheable_and_revalidates(builder: Builder) {
    let app = builder.spawn().await;
    let r = Client::new().get(app.url("/.well-known/jwks.json")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "public, max-age=60");
    assert_eq!(r.headers()["content-type"], "application/json");
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'));
    let jwks: Value = r.json().await.unwrap();
    for key in jwks["keys"].as_array().unwrap() {
        assert!(key["kid"].is_string() && key["alg"] == "ES256" && key["use"] == "sig");
        assert!(key.get("d").is_none(), "private part published");
    }
    let r = Client::new().get(app.url("/.well-known/jwks.json")).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers()["etag"], etag.as_str());
    let r = Client::new()
        .get(app.url("/.well-known/jwks.json"))
        .header("if-none-match", "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

async fn forward_auth_passes_a_live_token_on_any_method_and_path(builder: Builder) {
    let app = builder.spawn().await;
    let (api_key, _, key_ref, token) = key_and_token(&app).await;
    let account = segment(&token, 1)["acc"].as_str().unwrap().to_owned();
    let client = Client::new();
    for method in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        for path in ["/auth/verify", "/auth/verify/", "/auth/verify/orders/42", "/auth/verify/a/b?c=d"] {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let r = client.request(method.clone(), app.url(path)).bearer_auth(&token).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{method} {path}");
            assert_eq!(r.headers()["x-auth-subject"], key_ref.as_str());
            assert_eq!(r.headers()["x-auth-account"], account.as_str());
            assert_eq!(r.headers()["x-auth-key"], api_key.as_str());
            assert_eq!(r.headers()["x-auth-scopes"], "");
            assert_eq!(r.headers()["cache-control"], "no-store");
        }
    }
}

async fn forward_auth_without_a_bearer_token_is_401(builder: Builder) {
    let app = builder.spawn().await;
    let (api_key, password, _, _) = key_and_token(&app).await;
    // No credentials at all, or another scheme: a bare challenge (RFC 6750 §3.1).
    for r in [
        Client::new().get(app.url("/auth/verify")).send().await.unwrap(),
        Client::new().get(app.url("/auth/verify")).basic_auth(&api_key, Some(&password)).send().await.unwrap(),
    ] {
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"keygate\"");
        assert_problem(r, StatusCode::UNAUTHORIZED).await;
    }
    // A bearer header without a usable token.
    for value in ["Bearer", "Bearer ", "Bearer a b"] {
        let r = Client::new().get(app.url("/auth/verify")).header("authorization", value).send().await.unwrap();
        assert_invalid_token(r, value).await;
    }
    // The admin session cookie is not a bearer token either.
    let r = app.client.get(app.url("/auth/verify")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

async fn token_attacks_are_refused(builder: Builder) {
    let app = builder.spawn().await;
    let (_, _, _, token) = key_and_token(&app).await;
    assert_eq!(app.verify(&token).await.status(), StatusCode::OK, "control: the real token");
    let header = segment(&token, 0);
    let kid = header["kid"].as_str().unwrap().to_owned();
    let good = claims_like(&token);
    let payload = segment(&token, 1);
    let t = now();

    // alg "none", with and without a signature part, under our kid.
    for alg in ["none", "None", "NONE"] {
        let h = b64(json!({"alg": alg, "typ": "JWT", "kid": kid}).to_string().as_bytes());
        let p = b64(payload.to_string().as_bytes());
        assert_invalid_token(app.verify(&format!("{h}.{p}.")).await, alg).await;
        assert_invalid_token(app.verify(&format!("{h}.{p}")).await, alg).await;
    }

    // HS256 keyed with our public key, in every encoding of it (algorithm confusion).
    let jwks: Value = Client::new().get(app.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    let jwk = jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kid.as_str()).unwrap().clone();
    for secret in public_key_encodings(&jwk) {
        let forged = hs256(&json!({"alg": "HS256", "typ": "JWT", "kid": kid}), &payload, &secret);
        assert_invalid_token(app.verify(&forged).await, "HS256 with the public key").await;
    }
    // Another asymmetric algorithm named for our key.
    let mut other_alg = token.split('.').map(str::to_owned).collect::<Vec<_>>();
    other_alg[0] = b64(json!({"alg": "ES384", "typ": "JWT", "kid": kid}).to_string().as_bytes());
    assert_invalid_token(app.verify(&other_alg.join(".")).await, "ES384 header").await;

    // Unknown kid: a key of our own making, under its own kid and under ours.
    let attacker = foreign_ring();
    assert_invalid_token(app.verify(&attacker.sign(&good).unwrap()).await, "unknown kid").await;
    let theirs = attacker.sign(&good).unwrap();
    let mut parts: Vec<String> = theirs.split('.').map(str::to_owned).collect();
    parts[0] = token.split('.').next().unwrap().to_owned();
    assert_invalid_token(app.verify(&parts.join(".")).await, "another key's signature under our kid").await;
    let no_kid = b64(json!({"alg": "ES256", "typ": "JWT"}).to_string().as_bytes());
    let rest: Vec<&str> = token.split('.').skip(1).collect();
    assert_invalid_token(app.verify(&format!("{no_kid}.{}", rest.join("."))).await, "no kid").await;

    // Signed by our own key, but with claims we must refuse.
    let cases: Vec<(&str, AccessClaims)> = vec![
        ("expired", AccessClaims { exp: t - 3600, iat: t - 4000, nbf: t - 4000, ..good.clone() }),
        ("not yet valid", AccessClaims { nbf: t + 3600, exp: t + 7200, ..good.clone() }),
        ("wrong iss", AccessClaims { iss: "https://evil.test".into(), ..good.clone() }),
        ("wrong aud", AccessClaims { aud: "another-api".into(), ..good.clone() }),
        ("unknown key ref", AccessClaims { sub: uuid::Uuid::new_v4().to_string(), ..good.clone() }),
        ("sub not a key ref", AccessClaims { sub: "admin".into(), ..good.clone() }),
        ("wrong account", AccessClaims { acc: uuid::Uuid::new_v4().to_string(), ..good.clone() }),
        ("empty jti", AccessClaims { jti: String::new(), ..good.clone() }),
    ];
    for (what, claims) in cases {
        assert_invalid_token(app.verify(&app.forge(&claims).await).await, what).await;
    }
    // Within the clock leeway, both ways: still good.
    let slightly_expired = AccessClaims { exp: t - 2, iat: t - 60, nbf: t - 60, ..good.clone() };
    assert_eq!(app.verify(&app.forge(&slightly_expired).await).await.status(), StatusCode::OK, "leeway on exp");
    let slightly_early = AccessClaims { nbf: t + 2, ..good.clone() };
    assert_eq!(app.verify(&app.forge(&slightly_early).await).await.status(), StatusCode::OK, "leeway on nbf");

    // Truncated and mangled.
    assert_invalid_token(app.verify(&token[..token.len() - 10]).await, "truncated signature").await;
    let two: Vec<&str> = token.split('.').take(2).collect();
    assert_invalid_token(app.verify(&two.join(".")).await, "two segments").await;
    assert_invalid_token(app.verify(&format!("{token}.extra")).await, "four segments").await;
    assert_invalid_token(app.verify(token.split('.').next().unwrap()).await, "header only").await;
    assert_invalid_token(app.verify("not-a-jwt").await, "garbage").await;

    // Tampered payload, and a flipped signature.
    let mut tampered: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut evil = payload.clone();
    evil["sub"] = json!(uuid::Uuid::new_v4().to_string());
    evil["exp"] = json!(t + 86_400 * 365);
    tampered[1] = b64(evil.to_string().as_bytes());
    assert_invalid_token(app.verify(&tampered.join(".")).await, "tampered payload").await;
    let mut flipped: Vec<String> = token.split('.').map(str::to_owned).collect();
    let sig = flipped[2].clone();
    let c = if sig.starts_with('A') { "B" } else { "A" };
    flipped[2] = format!("{c}{}", &sig[1..]);
    assert_invalid_token(app.verify(&flipped.join(".")).await, "flipped signature").await;

    // Oversized: a 16 KiB header segment, and a 64 KiB token. Refused as tokens, not as
    // malformed requests, and without effort.
    let big_header = b64(json!({"alg": "ES256", "kid": kid, "pad": "x".repeat(12_000)}).to_string().as_bytes());
    let rest: Vec<&str> = token.split('.').skip(1).collect();
    assert_invalid_token(app.verify(&format!("{big_header}.{}", rest.join("."))).await, "oversized header").await;
    assert_invalid_token(app.verify(&"a".repeat(64 * 1024)).await, "oversized token").await;

    // After all that, the real token still works.
    assert_eq!(app.verify(&token).await.status(), StatusCode::OK);
}

async fn a_deleted_keys_tokens_fail_at_once(builder: Builder) {
    let app = builder.spawn().await;
    let (api_key, password, key_ref, token) = key_and_token(&app).await;
    let (other_key, other_password) = app.generate_key().await;
    let other_token = app.token(&other_key, &other_password).await;
    assert_eq!(app.verify(&token).await.status(), StatusCode::OK);
    let r = app.client.delete(app.url(&format!("/auth/user/{key_ref}"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // No sleep: the very next check must see the deletion.
    assert_invalid_token(app.verify(&token).await, "deleted key's token").await;
    assert_oauth_error(
        post_basic(&app, "/oauth/token", &api_key, &password, &[("grant_type", "client_credentials")]).await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    )
    .await;
    // Other keys are untouched.
    assert_eq!(app.verify(&other_token).await.status(), StatusCode::OK);
}

async fn client_credentials_by_basic_and_by_post(builder: Builder) {
    let app = builder.env("KEYGATE_TOKEN_TTL", "600").spawn().await;
    app.admin_login().await;
    let (api_key, password) = app.generate_key().await;
    let key_ref = app.ref_of(&api_key).await;

    let basic = post_basic(&app, "/oauth/token", &api_key, &password, &[("grant_type", "client_credentials")]).await;
    let post = Client::new()
        .post(app.url("/oauth/token"))
        .form(&[("grant_type", "client_credentials"), ("client_id", &api_key), ("client_secret", &password), ("scope", "")])
        .send()
        .await
        .unwrap();
    for r in [basic, post] {
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "application/json");
        assert_eq!(r.headers()["cache-control"], "no-store");
        assert_eq!(r.headers()["pragma"], "no-cache");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 600);
        assert_eq!(body["scope"], "");
        let token = body["access_token"].as_str().unwrap();
        let verified = app.verify(token).await;
        assert_eq!(verified.status(), StatusCode::OK);
        assert_eq!(verified.headers()["x-auth-subject"], key_ref.as_str());
    }
}

async fn token_endpoint_errors_follow_rfc_6749(builder: Builder) {
    let app = builder.spawn().await;
    app.admin_login().await;
    let (api_key, password) = app.generate_key().await;
    let (_, other_password) = app.generate_key().await;
    let cc = ("grant_type", "client_credentials");
    let url = app.url("/oauth/token");
    let c = Client::new();

    // invalid_client: no credentials, wrong secret, unknown key, malformed Basic.
    assert_oauth_error(c.post(&url).form(&[cc]).send().await.unwrap(), StatusCode::UNAUTHORIZED, "invalid_client").await;
    assert_oauth_error(post_basic(&app, "/oauth/token", &api_key, &other_password, &[cc]).await, StatusCode::UNAUTHORIZED, "invalid_client").await;
    assert_oauth_error(post_basic(&app, "/oauth/token", "AAAAAAAAAAAAAAAAAAAA", &password, &[cc]).await, StatusCode::UNAUTHORIZED, "invalid_client").await;
    let r = c.post(&url).header("authorization", "Basic !!notbase64").form(&[cc]).send().await.unwrap();
    assert_oauth_error(r, StatusCode::UNAUTHORIZED, "invalid_client").await;
    let r = c.post(&url).form(&[cc, ("client_id", api_key.as_str()), ("client_secret", other_password.as_str())]).send().await.unwrap();
    assert_oauth_error(r, StatusCode::UNAUTHORIZED, "invalid_client").await;
    let r = c.post(&url).form(&[cc, ("client_id", api_key.as_str())]).send().await.unwrap();
    assert_oauth_error(r, StatusCode::UNAUTHORIZED, "invalid_client").await;

    // unsupported_grant_type, invalid_scope.
    for grant in ["password", "authorization_code", "refresh_token", "CLIENT_CREDENTIALS"] {
        let r = post_basic(&app, "/oauth/token", &api_key, &password, &[("grant_type", grant)]).await;
        assert_oauth_error(r, StatusCode::BAD_REQUEST, "unsupported_grant_type").await;
    }
    let r = post_basic(&app, "/oauth/token", &api_key, &password, &[cc, ("scope", "orders:read")]).await;
    assert_oauth_error(r, StatusCode::BAD_REQUEST, "invalid_scope").await;

    // invalid_request: no grant_type, a repeated parameter, two authentication methods,
    // and anything but a form body.
    assert_oauth_error(post_basic(&app, "/oauth/token", &api_key, &password, &[]).await, StatusCode::BAD_REQUEST, "invalid_request").await;
    let r = post_basic(&app, "/oauth/token", &api_key, &password, &[cc, cc]).await;
    assert_oauth_error(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    let r = c.post(&url).basic_auth(&api_key, Some(&password)).form(&[cc, ("client_id", api_key.as_str()), ("client_secret", password.as_str())]).send().await.unwrap();
    assert_oauth_error(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    let r = c.post(&url).basic_auth(&api_key, Some(&password)).json(&json!({"grant_type": "client_credentials"})).send().await.unwrap();
    assert_oauth_error(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    let r = c.post(&url).basic_auth(&api_key, Some(&password)).send().await.unwrap();
    assert_oauth_error(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    let r = c
        .post(&url)
        .basic_auth(&api_key, Some(&password))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(b"grant_type=client_credentials&x=\xff".to_vec())
        .send()
        .await
        .unwrap();
    assert_oauth_error(r, StatusCode::BAD_REQUEST, "invalid_request").await;

    // Outside the OAuth errors: our usual problem documents.
    let r = c.post(&url).header("content-type", "application/x-www-form-urlencoded").body(vec![b'a'; 70 * 1024]).send().await.unwrap();
    assert_problem(r, StatusCode::PAYLOAD_TOO_LARGE).await;
    // A fresh client: the server may close a connection whose body it refused unread.
    let r = Client::new().get(&url).send().await.unwrap();
    assert_problem(r, StatusCode::METHOD_NOT_ALLOWED).await;

    // None of that locked the client out.
    assert_eq!(post_basic(&app, "/oauth/token", &api_key, &password, &[cc]).await.status(), StatusCode::OK);
}

async fn introspection_is_active_only_for_live_tokens_of_the_caller(builder: Builder) {
    let app = builder.spawn().await;
    let (api_key, password, key_ref, token) = key_and_token(&app).await;
    let (sibling_key, sibling_password) = app.generate_key().await;

    let live = introspect(&app, &api_key, &password, &token).await;
    assert_eq!(live["active"], true);
    assert_eq!(live["sub"], key_ref.as_str());
    assert_eq!(live["client_id"], api_key.as_str());
    assert_eq!(live["iss"], "https://keygate.test");
    assert_eq!(live["aud"], "keygate");
    assert_eq!(live["token_type"], "Bearer");
    assert_eq!(live["scope"], "");
    assert_eq!(live["jti"], segment(&token, 1)["jti"]);
    assert_eq!(live["exp"], segment(&token, 1)["exp"]);
    // client_secret_post works too.
    let r = Client::new()
        .post(app.url("/oauth/introspect"))
        .form(&[("token", token.as_str()), ("client_id", &api_key), ("client_secret", &password), ("token_type_hint", "access_token")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["active"], true);

    let inactive = json!({"active": false});
    let good = claims_like(&token);
    let t = now();
    let expired = app.forge(&AccessClaims { exp: t - 3600, iat: t - 4000, nbf: t - 4000, ..good.clone() }).await;
    let mut tampered: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut evil = segment(&token, 1);
    evil["exp"] = json!(t + 86_400);
    tampered[1] = b64(evil.to_string().as_bytes());
    let other_keyset = foreign_ring().sign(&good).unwrap();
    let other_issuer = app.forge(&AccessClaims { iss: "https://other-keygate.test".into(), ..good.clone() }).await;
    for (what, candidate) in [
        ("expired", expired),
        ("tampered", tampered.join(".")),
        ("another key set", other_keyset),
        ("another issuer", other_issuer),
        ("garbage", "garbage".to_owned()),
    ] {
        assert_eq!(introspect(&app, &api_key, &password, &candidate).await, inactive, "{what}");
    }

    // A token from a real, separate keygate instance.
    let elsewhere = TestApp::builder().env("KEYGATE_ISSUER", "https://keygate.test").spawn().await;
    elsewhere.admin_login().await;
    let (k, p) = elsewhere.generate_key().await;
    let foreign_token = elsewhere.token(&k, &p).await;
    assert_eq!(introspect(&app, &api_key, &password, &foreign_token).await, inactive, "another instance");
    assert_invalid_token(app.verify(&foreign_token).await, "another instance").await;

    // Another account's live token: inactive for us, active for its own account.
    let other = app.new_admin("other@example.com", "other").await;
    let (other_key, other_password) = app.generate_key_with(&other).await;
    let other_token = app.token(&other_key, &other_password).await;
    assert_eq!(introspect(&app, &api_key, &password, &other_token).await, inactive, "another account");
    assert_eq!(introspect(&app, &other_key, &other_password, &other_token).await["active"], true);
    // Another key of our own account: inactive too, until keys can hold `keygate:introspect`.
    assert_eq!(introspect(&app, &sibling_key, &sibling_password, &token).await, inactive, "another key");

    // Errors: bad client, missing token.
    let r = post_basic(&app, "/oauth/introspect", &api_key, &sibling_password, &[("token", token.as_str())]).await;
    assert_oauth_error(r, StatusCode::UNAUTHORIZED, "invalid_client").await;
    let r = Client::new().post(app.url("/oauth/introspect")).form(&[("token", token.as_str())]).send().await.unwrap();
    assert_oauth_error(r, StatusCode::UNAUTHORIZED, "invalid_client").await;
    // A bearer token is not a client credential.
    let r = Client::new().post(app.url("/oauth/introspect")).bearer_auth(&token).form(&[("token", token.as_str())]).send().await.unwrap();
    assert_oauth_error(r, StatusCode::UNAUTHORIZED, "invalid_client").await;
    let r = post_basic(&app, "/oauth/introspect", &api_key, &password, &[]).await;
    assert_oauth_error(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    let r = Client::new().post(app.url("/oauth/introspect")).basic_auth(&api_key, Some(&password)).json(&json!({"token": token})).send().await.unwrap();
    assert_oauth_error(r, StatusCode::BAD_REQUEST, "invalid_request").await;
}

async fn revocation_kills_one_token_everywhere(builder: Builder) {
    let app = builder.spawn().await;
    let (api_key, password, _, token) = key_and_token(&app).await;
    let second = app.token(&api_key, &password).await;

    revoke(&app, &api_key, &password, &token).await;
    assert_invalid_token(app.verify(&token).await, "revoked token").await;
    assert_eq!(introspect(&app, &api_key, &password, &token).await, json!({"active": false}));
    // Only that token: the key and its other tokens live on.
    assert_eq!(app.verify(&second).await.status(), StatusCode::OK);
    // Revoking again, or revoking nonsense, is still a 200 (RFC 7009 §2.2).
    revoke(&app, &api_key, &password, &token).await;
    revoke(&app, &api_key, &password, "not-a-token").await;
    let expired = app
        .forge(&AccessClaims { exp: now() - 3600, ..claims_like(&second) })
        .await;
    revoke(&app, &api_key, &password, &expired).await;

    // Another account cannot revoke our token (RFC 7009 §2.1), and the token lives.
    let other = app.new_admin("other@example.com", "other").await;
    let (other_key, other_password) = app.generate_key_with(&other).await;
    let r = post_basic(&app, "/oauth/revoke", &other_key, &other_password, &[("token", second.as_str())]).await;
    assert_oauth_error(r, StatusCode::BAD_REQUEST, "unauthorized_client").await;
    assert_eq!(app.verify(&second).await.status(), StatusCode::OK);

    // Errors: bad client, missing token.
    let r = post_basic(&app, "/oauth/revoke", &api_key, &other_password, &[("token", second.as_str())]).await;
    assert_oauth_error(r, StatusCode::UNAUTHORIZED, "invalid_client").await;
    let r = post_basic(&app, "/oauth/revoke", &api_key, &password, &[("token_type_hint", "access_token")]).await;
    assert_oauth_error(r, StatusCode::BAD_REQUEST, "invalid_request").await;
    assert_eq!(app.verify(&second).await.status(), StatusCode::OK);

    // client_secret_post works too, and the revocation survives a restart.
    let r = Client::new()
        .post(app.url("/oauth/revoke"))
        .form(&[("token", second.as_str()), ("client_id", &api_key), ("client_secret", &password)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let app = app.restart().await;
    assert_invalid_token(app.verify(&token).await, "revoked, after restart").await;
    assert_invalid_token(app.verify(&second).await, "revoked by post, after restart").await;
}

async fn a_key_revokes_and_introspects_only_its_own_tokens(builder: Builder) {
    // RFC 7009 §2.1: a token may be revoked only by the client it was issued to, even by
    // another key of the same account; and introspection shows a key only its own tokens.
    let app = builder.spawn().await;
    let (a_key, a_password, _, a_token) = key_and_token(&app).await;
    let (b_key, b_password) = app.generate_key().await;
    let b_ref = app.ref_of(&b_key).await;
    let b_token = app.token(&b_key, &b_password).await;

    let r = post_basic(&app, "/oauth/revoke", &a_key, &a_password, &[("token", b_token.as_str())]).await;
    assert_oauth_error(r, StatusCode::BAD_REQUEST, "unauthorized_client").await;
    let r = Client::new()
        .post(app.url("/oauth/revoke"))
        .form(&[("token", b_token.as_str()), ("client_id", &a_key), ("client_secret", &a_password)])
        .send()
        .await
        .unwrap();
    assert_oauth_error(r, StatusCode::BAD_REQUEST, "unauthorized_client").await;
    // Nothing was revoked: B's token still passes forward-auth, and B still sees it live.
    let r = app.verify(&b_token).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-auth-subject"], b_ref.as_str());
    assert_eq!(introspect(&app, &b_key, &b_password, &b_token).await["active"], true);

    // A sees its own token, never B's; B never A's.
    assert_eq!(introspect(&app, &a_key, &a_password, &b_token).await, json!({"active": false}));
    assert_eq!(introspect(&app, &b_key, &b_password, &a_token).await, json!({"active": false}));
    assert_eq!(introspect(&app, &a_key, &a_password, &a_token).await["active"], true);

    // A may revoke its own token, which then fails everywhere; B's lives on.
    revoke(&app, &a_key, &a_password, &a_token).await;
    assert_invalid_token(app.verify(&a_token).await, "revoked by its own key").await;
    assert_eq!(introspect(&app, &a_key, &a_password, &a_token).await, json!({"active": false}));
    assert_eq!(app.verify(&b_token).await.status(), StatusCode::OK);
}

async fn a_resource_servers_key_with_keygate_introspect_sees_its_accounts_tokens(builder: Builder) {
    let app = builder.spawn().await;
    let (_, _, key_ref, token) = key_and_token(&app).await;
    let generate = |body: Value| app.client.post(app.url("/auth/keys/generate")).json(&body).send();
    let r = generate(json!({"scopes": ["keygate:introspect"]})).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    let (rs_key, rs_password) = (body["api_key"].as_str().unwrap(), body["password"].as_str().unwrap());
    let seen = introspect(&app, rs_key, rs_password, &token).await;
    assert_eq!(seen["active"], true);
    assert_eq!(seen["sub"], key_ref.as_str());
    // Another account's token stays inactive for it.
    let other = app.new_admin("other@example.com", "other").await;
    let (o_key, o_password) = app.generate_key_with(&other).await;
    let foreign = app.token(&o_key, &o_password).await;
    assert_eq!(introspect(&app, rs_key, rs_password, &foreign).await, json!({"active": false}));

    // Bad scopes are refused, naming the field, and create nothing.
    let before = app.list_keys().await.len();
    for bad in [
        json!({"scopes": ["has space"]}),
        json!({"scopes": ["a", "a"]}),
        json!({"scopes": "keygate:introspect"}),
        json!({"scopes": [""]}),
        json!({"unknown": true}),
    ] {
        let body = assert_problem(generate(bad.clone()).await.unwrap(), StatusCode::UNPROCESSABLE_ENTITY).await;
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains("scopes") || detail.contains("unknown"), "{bad}: {detail}");
    }
    let r = app.client.post(app.url("/auth/keys/generate")).header("content-type", "text/plain").body("x").send();
    assert_problem(r.await.unwrap(), StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    assert_eq!(app.list_keys().await.len(), before);
}

async fn the_high_s_twin_of_a_token_is_the_same_token(builder: Builder) {
    // ECDSA is malleable: (r, n − s) verifies wherever (r, s) does. keygate issues only the
    // low-S form and takes the other as the same token: same claims, same jti, so that
    // revoking either string ends both.
    use p256::ecdsa::{Signature, VerifyingKey, signature::Verifier};
    let app = builder.spawn().await;
    let (api_key, password, _, token) = key_and_token(&app).await;
    assert_eq!(segment(&token, 0)["alg"], "ES256");
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let signature = Signature::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature).unwrap()).unwrap();
    assert!(signature.normalize_s().is_none(), "keygate issued a high-S signature");
    let (r, s) = signature.split_scalars();
    let twin_signature = Signature::from_scalars(r, -s).unwrap();
    let twin = format!("{signed}.{}", b64(&twin_signature.to_bytes()));

    // The twin is a genuine signature under the published key ...
    let jwks: Value = Client::new().get(app.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    let jwk = &jwks["keys"][0];
    let coordinate = |c: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(jwk[c].as_str().unwrap()).unwrap();
    let point = [vec![4u8], coordinate("x"), coordinate("y")].concat();
    let public = VerifyingKey::from_sec1_bytes(&point).unwrap();
    public.verify(signed.as_bytes(), &signature).unwrap();
    public.verify(signed.as_bytes(), &twin_signature).unwrap();

    // ... which keygate takes as the same token, before and after the original is
    // remembered as verified.
    assert_eq!(app.verify(&twin).await.status(), StatusCode::OK);
    assert_eq!(app.verify(&token).await.status(), StatusCode::OK);
    let (original, seen_as) = (introspect(&app, &api_key, &password, &token).await, introspect(&app, &api_key, &password, &twin).await);
    assert_eq!(original["jti"], seen_as["jti"]);
    assert_eq!(seen_as["active"], true);

    // Revoking the twin revokes the token, under either string.
    let r = post_basic(&app, "/oauth/revoke", &api_key, &password, &[("token", twin.as_str())]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_invalid_token(app.verify(&token).await, "revoked through its twin").await;
    assert_invalid_token(app.verify(&twin).await, "twin of a revoked token").await;
}

async fn rotation_from_the_cli_while_the_server_runs(builder: Builder) {
    let app = builder.env("KEYGATE_KEY_RELOAD_INTERVAL", "1").spawn().await;
    let (api_key, password, _, before) = key_and_token(&app).await;
    let old_kid = segment(&before, 0)["kid"].as_str().unwrap().to_owned();
    assert_eq!(app.jwks_kids().await, vec![old_kid.clone()]);

    let out = app.cli(&["signing-key", "rotate"], "");
    assert!(out.status.success(), "rotate failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let new_kid = stdout.split_whitespace().nth(3).unwrap().to_owned();
    assert_ne!(new_kid, old_kid);
    assert!(stdout.contains(&old_kid), "{stdout}");

    // The running server picks the new key up without a restart, and keeps the old one.
    let kids = app.wait_for_jwks("gained the new key", |kids| kids.contains(&new_kid)).await;
    assert!(kids.contains(&old_kid), "the old key left the JWKS too early: {kids:?}");
    let after = app.token(&api_key, &password).await;
    assert_eq!(segment(&after, 0)["kid"], new_kid.as_str());
    // Tokens from before the rotation keep working through it, next to the new ones.
    for token in [&before, &after] {
        assert_eq!(app.verify(token).await.status(), StatusCode::OK);
        assert_eq!(introspect(&app, &api_key, &password, token).await["active"], true);
    }
    let listed = String::from_utf8_lossy(&app.cli(&["signing-key", "list"], "").stdout).to_string();
    assert!(listed.lines().any(|l| l.starts_with(&new_kid) && l.contains("active")), "{listed}");
    assert!(listed.lines().any(|l| l.starts_with(&old_kid) && l.contains("retired")), "{listed}");

    // Once every token the old key can have signed has expired, it drops out of the JWKS
    // and stops verifying. Aging the retirement in the store stands in for the wait.
    app.age_retired_keys(86_400).await;
    app.wait_for_jwks("dropped the old key", |kids| !kids.contains(&old_kid)).await;
    assert_invalid_token(app.verify(&before).await, "token of a key past its window").await;
    assert_eq!(app.verify(&after).await.status(), StatusCode::OK);
    let listed = String::from_utf8_lossy(&app.cli(&["signing-key", "list"], "").stdout).to_string();
    assert!(!listed.contains(&old_kid), "{listed}");
}

async fn an_unknown_kid_makes_a_server_reload_at_once(builder: Builder) {
    // `fast` reloads every second; `slow` only every minute, so only a token with the new
    // kid can make it look before this test ends.
    let fast = builder.env("KEYGATE_KEY_RELOAD_INTERVAL", "1").spawn().await;
    let slow = fast.sibling().env("KEYGATE_KEY_RELOAD_INTERVAL", "60").spawn().await;
    let (api_key, password, _, before) = key_and_token(&fast).await;
    let out = fast.cli(&["signing-key", "rotate"], "");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let new_kid = String::from_utf8_lossy(&out.stdout).split_whitespace().nth(3).unwrap().to_owned();
    fast.wait_for_jwks("gained the new key", |kids| kids.contains(&new_kid)).await;
    assert!(!slow.jwks_kids().await.contains(&new_kid), "the slow server reloaded on its own");

    let after = fast.token(&api_key, &password).await;
    assert_eq!(segment(&after, 0)["kid"], new_kid.as_str());
    assert_eq!(slow.verify(&after).await.status(), StatusCode::OK, "the new kid did not trigger a reload");
    assert!(slow.jwks_kids().await.contains(&new_kid));
    assert_eq!(slow.verify(&before).await.status(), StatusCode::OK);
}

async fn rotation_refuses_a_master_key_that_cannot_open_the_current_key(builder: Builder) {
    let app = builder.spawn().await;
    let kids = app.jwks_kids().await;
    let wrong = STANDARD.encode([7u8; 32]);
    let out = app.cli_with(&[("KEYGATE_MASTER_KEY", &wrong)], &["signing-key", "rotate"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("master key"), "{}", String::from_utf8_lossy(&out.stderr));
    let listed = String::from_utf8_lossy(&app.cli(&["signing-key", "list"], "").stdout).to_string();
    // The header row, and the one key.
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(listed.lines().nth(1).unwrap().starts_with(&kids[0]), "{listed}");
}

async fn the_openapi_document_describes_the_gateway_endpoints(builder: Builder) {
    let app = builder.spawn().await;
    let doc: Value = Client::new().get(app.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    let paths = &doc["paths"];
    for path in ["/oauth/token", "/oauth/introspect", "/oauth/revoke"] {
        let op = &paths[path]["post"];
        assert!(op["requestBody"]["content"]["application/x-www-form-urlencoded"].is_object(), "{path}");
        for status in ["200", "400", "401", "413", "503"] {
            assert!(op["responses"][status].is_object(), "{path} {status}");
        }
        assert!(op["responses"]["400"]["content"]["application/json"].is_object(), "{path}");
    }
    assert!(paths["/.well-known/oauth-authorization-server"]["get"].is_object());
    assert!(paths["/.well-known/jwks.json"]["get"]["responses"]["304"].is_object());
    for path in ["/auth/verify", "/auth/verify/{path}"] {
        for method in ["get", "head", "post", "put", "patch", "delete", "options"] {
            let op = &paths[path][method];
            assert!(op["responses"]["200"]["headers"]["X-Auth-Subject"].is_object(), "{method} {path}");
            assert!(op["responses"]["401"].is_object(), "{method} {path}");
        }
    }
    // Operation ids stay unique across the copied methods.
    let mut ids: Vec<String> = Vec::new();
    for item in paths.as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            if let Some(id) = op.get("operationId").and_then(Value::as_str) {
                assert!(!ids.contains(&id.to_owned()), "duplicate operationId {id}");
                ids.push(id.to_owned());
            }
        }
    }
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["OAuthErrorCode"]["enum"],
        json!(["invalid_request", "invalid_client", "unauthorized_client", "unsupported_grant_type", "invalid_scope"])
    );
    assert!(doc["components"]["securitySchemes"]["client_basic"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}
}
