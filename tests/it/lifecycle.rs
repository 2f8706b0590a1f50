//! Start-up, settings, the first admin, the CLI, restarts, and what ends up on disk and in logs.

use crate::common::*;
use jsonwebtoken::{DecodingKey, Validation, jwk::JwkSet};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

fn serve_with(env: &[(&str, &str)]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let mut all: Vec<(String, String)> = vec![
        ("KEYGATE_LISTEN".into(), "127.0.0.1:0".into()),
        ("KEYGATE_DATA_DIR".into(), dir.path().join("data").display().to_string()),
    ];
    all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    keygate_command(&all).arg("serve").output().unwrap()
}

/// Log lines are written by a thread of their own, in batches: none of a burst may be
/// dropped (the queue makes loggers wait when full), and a graceful stop is logged to the end.
#[cfg(unix)]
#[tokio::test]
async fn every_log_line_reaches_stderr_including_at_a_graceful_stop() {
    // At debug every request logs a few lines, API logins among them.
    let mut app = TestApp::builder().env("KEYGATE_LOG", "debug").process().spawn().await;
    app.admin_login().await;
    let (key, password) = app.generate_key().await;
    const LOGINS: usize = 300;
    let logins = futures_util::future::join_all((0..LOGINS).map(|_| app.api_login(&key, &password))).await;
    assert!(logins.iter().all(|r| r.status() == StatusCode::OK));

    // Everything it wrote has been read once it has exited.
    assert!(app.terminate().await.success());
    let logs = app.logs();
    assert_eq!(logs.matches("api key login").count(), LOGINS, "{logs}");
    let (before, after) = logs.split_once("shutting down").expect("the stop is logged");
    assert!(before.contains("listening on") && after.contains("stopped"), "{logs}");
}

#[test]
fn a_bad_setting_stops_start_up_with_one_line_naming_it() {
    for (name, value) in [
        ("KEYGATE_LISTEN", "localhost"),
        ("KEYGATE_TOKEN_TTL", "soon"),
        ("KEYGATE_TOKEN_TTL", "0"),
        ("KEYGATE_COOKIE_SECURE", "perhaps"),
        ("KEYGATE_DATABASE_URL", "mysql://db"),
        ("KEYGATE_SIGNING_ALG", "none"),
        ("KEYGATE_MASTER_KEY", "c2hvcnQ="),
        ("KEYGATE_BOOTSTRAP_ADMIN_EMAIL", "not-an-email"),
    ] {
        let mut env = vec![(name, value)];
        if name == "KEYGATE_BOOTSTRAP_ADMIN_EMAIL" {
            env.push(("KEYGATE_BOOTSTRAP_ADMIN_PASSWORD", "long enough password"));
        }
        let out = serve_with(&env);
        assert!(!out.status.success(), "{name}={value} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{name}: {stderr}");
        assert!(lines[0].contains(name), "{name}: {stderr}");
        assert!(!stderr.contains(value) || value.len() < 6, "the bad value should not be echoed: {stderr}");
    }
}

#[cfg(unix)]
#[tokio::test]
async fn first_start_invents_an_admin_once_and_tells_only_the_file() {
    // The real process: what it writes to a stderr that is not a terminal is the point.
    let mut app = TestApp::builder().without_bootstrap_admin().process().spawn().await;
    let path = app.data_dir().join("initial-admin-password");
    let password = std::fs::read_to_string(&path).unwrap().trim().to_owned();
    assert!(password.len() >= 32);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let master = app.data_dir().join("master.key");
        assert_eq!(std::fs::metadata(&master).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(app.data_dir()).unwrap().permissions().mode() & 0o777, 0o700);
    }
    app.login_admin_as(&app.client, "admin@localhost", &password).await;
    // stderr is not a terminal here, so the password is not printed, only where to find it.
    assert!(app.terminate().await.success());
    assert!(!app.logs().contains(&password));
    assert!(app.logs().contains("initial-admin-password"));

    // A restart does not make another admin or touch the file.
    let mut app = app.restart().await;
    assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), password);
    app.login_admin_as(&app.client, "admin@localhost", &password).await;
    assert!(app.terminate().await.success());
    assert!(app.logs().contains("listening on") && !app.logs().contains("created the first admin"), "{}", app.logs());
}

#[tokio::test]
async fn bootstrap_settings_are_used_only_on_an_empty_store() {
    let app = TestApp::spawn().await;
    app.admin_login().await;
    assert!(!app.data_dir().join("initial-admin-password").exists());
    // Changing the bootstrap settings later creates nobody.
    let later = app
        .sibling()
        .env("KEYGATE_BOOTSTRAP_ADMIN_EMAIL", "late@example.com")
        .env("KEYGATE_BOOTSTRAP_ADMIN_PASSWORD", "another long password")
        .spawn()
        .await;
    let r = later
        .post_json("/auth/login", &json!({"email": "late@example.com", "password": "another long password"}))
        .await;
    assert_problem(r, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test]
async fn admin_create_cli() {
    let app = TestApp::spawn().await;
    // Works while the server runs, creates the account, and the admin can log in at once.
    let client = app.new_admin("Second@Example.com", "acme").await;
    assert_eq!(client.get(app.url("/auth/keys/list")).send().await.unwrap().status(), StatusCode::OK);

    // A second admin in the same account sees the same keys.
    let (key, _) = app.generate_key_with(&client).await;
    let colleague = app.new_admin("third@example.com", "acme").await;
    assert_eq!(app.list_keys_with(&colleague).await[0].1, key);

    let create = |email: &str, account: &str, password: &str| {
        app.cli(&["admin", "create", "--email", email, "--account", account, "--password-stdin"], password)
    };
    let dup = create("second@example.com", "other", ADMIN_PASSWORD);
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));
    let short = create("short@example.com", "acme", "too short");
    assert!(!short.status.success());
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 12"));
    assert!(!create("bad", "acme", ADMIN_PASSWORD).status.success());
    assert!(!create("ok@example.com", "bad account!", ADMIN_PASSWORD).status.success());
    // The password is never an argument.
    let out = app.cli(&["admin", "create", "--email", "x@example.com", "--account", "acme"], ADMIN_PASSWORD);
    assert!(!out.status.success());
}

/// The embedded store only: with PostgreSQL the issuer must be set (see
/// `tests/it/replicas.rs` `postgres_without_an_issuer_refuses_to_start`).
#[tokio::test]
async fn the_default_issuer_is_the_bound_address() {
    let app = TestApp::builder().without_env("KEYGATE_ISSUER").spawn().await;
    let meta: Value = Client::new()
        .get(app.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["issuer"], app.base.as_str());
    assert!(!app.base.ends_with(":0"));
    app.admin_login().await;
    let (api_key, password) = app.generate_key().await;
    assert_eq!(verify_with_jwks(&app, &app.token(&api_key, &password).await).await["iss"], app.base.as_str());
}

// --- Files on disk are the owner's alone ---------------------------------------------------

/// `keygate serve` started from a shell with the common umask 022, as a login shell or many
/// service managers leave it, with `env`; returns once it serves. Its stderr is all in the
/// logs once it has been killed.
#[cfg(unix)]
async fn serve_under_umask_022(env: &[(&str, &str)]) -> (Process, Logs) {
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let logs = Logs::default();
    let (_, server) = Process::start_with(&env, &logs, |env| {
        let keygate = keygate_command(env);
        let mut sh = std::process::Command::new("sh");
        sh.args(["-c", "umask 022 && exec \"$0\" serve", env!("CARGO_BIN_EXE_keygate")]);
        for (key, value) in keygate.get_envs() {
            match value {
                Some(value) => sh.env(key, value),
                None => sh.env_remove(key),
            };
        }
        sh
    })
    .await;
    (server, logs)
}

/// The permission bits of `path`.
#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

#[cfg(unix)]
fn assert_private(dir: &std::path::Path, names: &[&str]) {
    for name in names {
        assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
    }
    // And anything else keygate left there.
    for (path, _) in read_tree(dir) {
        assert_eq!(mode(&path) & 0o077, 0, "{} is open to other users", path.display());
    }
}

#[cfg(unix)]
fn open_dir(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[cfg(unix)]
#[tokio::test]
async fn every_file_keygate_writes_is_private_even_in_an_open_data_directory() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    open_dir(&data);
    let (_server, _) =
        serve_under_umask_022(&[("KEYGATE_DATA_DIR", data.to_str().unwrap()), ("KEYGATE_LOG", "info")]).await;
    let files = ["keygate.db", "keygate.db-wal", "keygate.db-shm", "master.key", "initial-admin-password"];
    assert_private(&data, &files);
}

#[cfg(unix)]
#[tokio::test]
async fn a_database_elsewhere_is_private_and_an_open_one_is_closed_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let (data, elsewhere) = (root.path().join("data"), root.path().join("db"));
    open_dir(&elsewhere);
    let url = format!("sqlite://{}", elsewhere.join("store.db").display());
    let env =
        [("KEYGATE_DATA_DIR", data.to_str().unwrap()), ("KEYGATE_DATABASE_URL", url.as_str()), ("KEYGATE_LOG", "info")];
    let files = ["store.db", "store.db-wal", "store.db-shm"];
    let (mut server, _) = serve_under_umask_022(&env).await;
    assert_private(&elsewhere, &files);
    assert_private(&data, &["master.key", "initial-admin-password"]);
    // Killed, so the -wal and -shm files stay; an operator's copy or chmod leaves them 0644.
    server.kill();
    for name in files {
        std::fs::set_permissions(elsewhere.join(name), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let (mut server, logs) = serve_under_umask_022(&env).await;
    assert_private(&elsewhere, &files);
    server.kill();
    let logs = logs.text();
    assert_eq!(logs.matches("database file was open to other users: made it 0600").count(), 3, "{logs}");

    // A fresh start on a 0644 database file alone: SQLite would give its new -wal and -shm
    // files the same 0644.
    for name in &files[1..] {
        std::fs::remove_file(elsewhere.join(name)).unwrap();
    }
    std::fs::set_permissions(elsewhere.join("store.db"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let (_server, _) = serve_under_umask_022(&env).await;
    assert_private(&elsewhere, &files);
}

#[cfg(unix)]
#[test]
fn a_master_key_file_open_to_others_stops_start_up_with_one_line() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let key = data.join("master.key");
    std::fs::write(&key, format!("{}\n", random_master_key())).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let env: Vec<(String, String)> = [("KEYGATE_LISTEN", "127.0.0.1:0"), ("KEYGATE_DATA_DIR", data.to_str().unwrap())]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let out = run_with_timeout(keygate_command(&env).arg("serve"), std::time::Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(2), "a setting error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("KEYGATE_MASTER_KEY"), "{stderr}");
    assert!(lines[0].contains(&format!("chmod 600 {}", key.display())), "{stderr}");
    // It stopped before opening the store, and left the file as it was.
    assert!(!data.join("keygate.db").exists());
    assert_eq!(mode(&key), 0o644);
}

backends! {
async fn keys_and_signing_keys_survive_a_restart(builder: Builder) {
    let app = builder.spawn().await;
    app.admin_login().await;
    let (api_key, password) = app.generate_key().await;
    let token = app.token(&api_key, &password).await;
    let jwks_before: Value = Client::new().get(app.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();

    let app = app.restart().await;
    let jwks_after: Value = Client::new().get(app.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(jwks_before, jwks_after);
    assert_eq!(app.api_login(&api_key, &password).await.status(), StatusCode::OK);
    verify_with_jwks(&app, &token).await;
    let new_token = app.token(&api_key, &password).await;
    assert_eq!(header(&token)["kid"], header(&new_token)["kid"]);
}

async fn tokens_carry_the_documented_claims_and_verify_against_the_jwks(builder: Builder) {
    let app = builder.env("KEYGATE_AUDIENCE", "payments-api").env("KEYGATE_TOKEN_TTL", "120").spawn().await;
    app.admin_login().await;
    let (api_key, password) = app.generate_key().await;
    let key_ref = app.ref_of(&api_key).await;
    let token = app.token(&api_key, &password).await;

    let h = header(&token);
    assert_eq!(h["alg"], "ES256");
    assert!(h["kid"].is_string());
    let claims = verify_with_jwks(&app, &token).await;
    assert_eq!(claims["iss"], "https://keygate.test");
    assert_eq!(claims["aud"], "payments-api");
    assert_eq!(claims["sub"], key_ref.as_str());
    assert_eq!(claims["api_key"], api_key.as_str());
    assert!(claims["acc"].is_string());
    let iat = claims["iat"].as_u64().unwrap();
    assert_eq!(claims["nbf"].as_u64().unwrap(), iat);
    assert_eq!(claims["exp"].as_u64().unwrap(), iat + 120);
    let other = app.token(&api_key, &password).await;
    assert_ne!(claims["jti"], verify_with_jwks(&app, &other).await["jti"]);

    // The JWKS carries public parts only.
    let jwks: Value = Client::new().get(app.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    for key in jwks["keys"].as_array().unwrap() {
        assert!(key.get("d").is_none());
        assert_eq!(key["use"], "sig");
    }
}

async fn eddsa_is_selectable(builder: Builder) {
    let app = builder.env("KEYGATE_SIGNING_ALG", "EdDSA").spawn().await;
    app.admin_login().await;
    let (api_key, password) = app.generate_key().await;
    let token = app.token(&api_key, &password).await;
    assert_eq!(header(&token)["alg"], "EdDSA");
    verify_with_jwks(&app, &token).await;
}

async fn nothing_secret_reaches_the_database_or_the_logs(builder: Builder) {
    // The real process, whose log is its stderr.
    let mut app = builder.env("KEYGATE_LOG", "debug").process().spawn().await;
    let r = app.post_json("/auth/login", &json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})).await;
    let session = r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().split('=').nth(1).unwrap().to_owned();
    app.login_admin_as(&app.client, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let (api_key, password) = app.generate_key().await;
    let token = app.token(&api_key, &password).await;
    let _ = app.api_login(&api_key, "kgp_wrongwrongwrongwrongwrongwrongww000000").await;
    let _ = app.post_json("/auth/login", &json!({"email": ADMIN_EMAIL, "password": "a wrong password"})).await;
    app.client.post(app.url("/auth/logout")).send().await.unwrap();

    let secrets = [ADMIN_PASSWORD, password.as_str(), session.as_str(), token.as_str()];
    // Stopped, so that every line it wrote has been read.
    assert!(app.terminate().await.success());
    let logs = app.logs();
    assert!(logs.contains("DEBUG") && logs.contains("admin login"), "the flow must actually be logged at debug");
    for secret in secrets {
        assert!(!logs.contains(secret), "a secret reached the logs");
    }
    // What an attacker with the database (file or dump) would hold.
    let files = match app.db() {
        Some(db) => vec![(std::path::PathBuf::from("pg_dump"), db.dump())],
        None => read_tree(&app.data_dir()),
    };
    assert!(files.iter().any(|(_, bytes)| contains(bytes, "sealed") || bytes.len() > 1000), "nothing was read");
    for (path, bytes) in &files {
        if path.ends_with("master.key") {
            continue;
        }
        for secret in secrets {
            assert!(!contains(bytes, secret), "a secret is stored in clear in {}", path.display());
        }
        // A PKCS#8 EC private key carries the id-ecPublicKey OID; sealed keys do not.
        let oid = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
        assert!(!bytes.windows(oid.len()).any(|w| w == oid), "an unsealed private key is in {}", path.display());
        assert!(!contains(bytes, "2a8648ce3d0201"), "an unsealed private key is in {} (hex)", path.display());
    }
}

async fn the_session_cookie_is_locked_down_by_default(builder: Builder) {
    // The harness turns `Secure` off for its plain-HTTP clients: here the default applies.
    let app = builder.without_env("KEYGATE_COOKIE_SECURE").spawn().await;
    assert_eq!(app.setting("KEYGATE_COOKIE_SECURE"), None);
    let r = app.post_json("/auth/login", &json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})).await;
    assert_eq!(r.status(), StatusCode::OK);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("__Host-keygate_session="), "{cookie}");
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(cookie.contains(attribute), "{attribute} missing: {cookie}");
    }
    assert!(!cookie.contains("Domain"));
    let value = cookie.split(';').next().unwrap().to_owned();
    assert!(value.len() >= "__Host-keygate_session=".len() + 43);
    let r = Client::new().get(app.url("/auth/keys/list")).header("cookie", &value).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
}

fn header(token: &str) -> Value {
    use base64::Engine;
    let h = token.split('.').next().unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(h).unwrap()).unwrap()
}

/// Verifies `token` the way a gateway would: with the published JWKS only.
async fn verify_with_jwks(app: &TestApp, token: &str) -> Value {
    let jwks: JwkSet = Client::new().get(app.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    let h = header(token);
    let jwk = jwks.find(h["kid"].as_str().unwrap()).expect("kid in JWKS");
    let key = DecodingKey::from_jwk(jwk).unwrap();
    let alg: jsonwebtoken::Algorithm = h["alg"].as_str().unwrap().parse().unwrap();
    let mut validation = Validation::new(alg);
    validation.validate_aud = false;
    jsonwebtoken::decode::<Value>(token, &key, &validation).expect("valid signature").claims
}
