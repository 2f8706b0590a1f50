//! Admin recovery and the one password rule: `keygate admin list|passwd|delete|sessions
//! revoke|unlock`, `POST /auth/password`, and CLI commands that must not create a store.

use std::{process::Output, time::Duration};

use crate::common::*;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The non-blank lines of the command's standard error.
fn error_lines(out: &Output) -> Vec<String> {
    stderr(out).lines().filter(|l| !l.trim().is_empty()).map(str::to_owned).collect()
}

fn ok(out: &Output) {
    assert!(out.status.success(), "failed: {}{}", stdout(out), stderr(out));
}

/// Refused with exit code 2 and one line containing `needle`.
fn refused_as_input(out: &Output, needle: &str) {
    assert_eq!(out.status.code(), Some(2), "{}", stderr(out));
    let lines = error_lines(out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains(needle), "{lines:?}");
}

/// The audit log's actions and targets, newest first, as `keygate audit --json` prints them.
fn audit(app: &TestApp) -> Vec<(String, String)> {
    let out = app.cli(&["audit", "--json", "--limit", "200"], "");
    ok(&out);
    stdout(&out)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["action"].as_str().unwrap().to_owned(), v["target"].as_str().unwrap_or("").to_owned())
        })
        .collect()
}

fn audited(app: &TestApp, action: &str, target: &str) -> bool {
    audit(app).iter().any(|(a, t)| a == action && t == target)
}

async fn keys_status(app: &TestApp, client: &Client) -> StatusCode {
    client.get(app.url("/auth/keys/list")).send().await.unwrap().status()
}

fn jar_client() -> Client {
    Client::builder().cookie_store(true).build().unwrap()
}

async fn signed_in(app: &TestApp, email: &str, password: &str) -> Client {
    let client = jar_client();
    app.login_admin_as(&client, email, password).await;
    client
}

/// Polls `login` until it answers 200, for at most the second within which every server
/// honours a CLI unlock (the embedded store's server hears of it through the change log).
async fn unlocked_within_a_second<F, Fut>(mut login: F) -> StatusCode
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = reqwest::Response>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        let status = login().await.status();
        if status == StatusCode::OK || std::time::Instant::now() >= deadline {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn create(app: &TestApp, email: &str, account: &str, password: &str) -> Output {
    app.cli(&["admin", "create", "--email", email, "--account", account, "--password-stdin"], password)
}

#[tokio::test]
async fn a_bootstrap_password_login_would_refuse_stops_start_up_with_exit_code_2() {
    for (password, needle) in [
        ("x".repeat(1100), "at most 1024 bytes"),
        ("é".repeat(600), "at most 1024 bytes"),
        (" ".repeat(20), "whitespace"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let env: Vec<(String, String)> = vec![
            ("KEYGATE_LISTEN".into(), "127.0.0.1:0".into()),
            ("KEYGATE_DATA_DIR".into(), dir.path().join("data").display().to_string()),
            ("KEYGATE_BOOTSTRAP_ADMIN_EMAIL".into(), "a@example.com".into()),
            ("KEYGATE_BOOTSTRAP_ADMIN_PASSWORD".into(), password),
        ];
        let out = run_with_timeout(keygate_command(&env).arg("serve"), Duration::from_secs(30));
        refused_as_input(&out, "KEYGATE_BOOTSTRAP_ADMIN_PASSWORD");
        assert!(error_lines(&out)[0].contains(needle), "{}", stderr(&out));
    }
}

backends! {
async fn no_password_login_would_refuse_can_be_set(builder: Builder) {
    let app = builder.spawn().await;
    // 600 characters but 1200 bytes: accepted before, and then refused at every login.
    refused_as_input(&create(&app, "e@example.com", "acme", &"é".repeat(600)), "at most 1024 bytes");
    refused_as_input(&create(&app, "w@example.com", "acme", &" \t".repeat(10)), "whitespace");
    refused_as_input(&create(&app, "s@example.com", "acme", "too short"), "at least 12");
    let passwd = |password: &str| app.cli(&["admin", "passwd", "--email", ADMIN_EMAIL, "--password-stdin"], password);
    refused_as_input(&passwd(&"x".repeat(1100)), "at most 1024 bytes");
    refused_as_input(&passwd(&" ".repeat(30)), "whitespace");
    let listed = stdout(&app.cli(&["admin", "list"], ""));
    assert!(!listed.contains("e@example.com") && !listed.contains("w@example.com"), "{listed}");

    // The longest password allowed can be set every way, and logs in.
    let longest = "é".repeat(512);
    ok(&create(&app, "long@example.com", "acme", &longest));
    signed_in(&app, "long@example.com", &longest).await;
    let longest_ascii = "a".repeat(1024);
    ok(&passwd(&longest_ascii));
    let client = signed_in(&app, ADMIN_EMAIL, &longest_ascii).await;
    let change = |new: String| {
        client
            .post(app.url("/auth/password"))
            .json(&json!({"current_password": longest_ascii, "new_password": new}))
            .send()
    };
    for (bad, needle) in [("é".repeat(600), "1024 bytes"), ("\u{3000}".repeat(12), "whitespace"), ("short".into(), "12")] {
        let body = assert_problem(change(bad).await.unwrap(), StatusCode::UNPROCESSABLE_ENTITY).await;
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.starts_with("new_password: ") && detail.contains(needle), "{body}");
    }
    assert_eq!(change("b".repeat(1024)).await.unwrap().status(), StatusCode::NO_CONTENT);
    signed_in(&app, ADMIN_EMAIL, &"b".repeat(1024)).await;
}

async fn admin_list_shows_admins_by_account_with_a_header(builder: Builder) {
    let app = builder.spawn().await;
    ok(&create(&app, "zed@example.com", "acme", ADMIN_PASSWORD));
    ok(&create(&app, "amy@example.com", "acme", ADMIN_PASSWORD));
    let out = app.cli(&["admin", "list"], "");
    ok(&out);
    let lines: Vec<Vec<String>> =
        stdout(&out).lines().map(|l| l.split('\t').map(str::to_owned).collect()).collect();
    assert_eq!(lines[0], ["EMAIL", "ACCOUNT", "CREATED"]);
    let rows: Vec<(&str, &str)> = lines[1..].iter().map(|r| (r[0].as_str(), r[1].as_str())).collect();
    assert_eq!(rows, [("amy@example.com", "acme"), ("zed@example.com", "acme"), (ADMIN_EMAIL, "default")]);
    assert!(lines[1..].iter().all(|r| r.len() == 3 && r[2].ends_with('Z') && r[2].contains('T')), "{lines:?}");
    assert!(!stdout(&out).contains("argon2"), "no hash is shown");

    let only = stdout(&app.cli(&["admin", "list", "--account", "default"], ""));
    assert_eq!(only.lines().count(), 2, "{only}");
    assert!(only.contains(ADMIN_EMAIL));
    refused_as_input(&app.cli(&["admin", "list", "--account", "no such!"], ""), "--account");
}

async fn admin_passwd_sets_a_new_password_and_ends_every_session(builder: Builder) {
    let app = builder.spawn().await;
    let first = signed_in(&app, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let second = signed_in(&app, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let colleague = app.new_admin("colleague@example.com", "default").await;

    let new = "a completely new passphrase";
    let out = app.cli(&["admin", "passwd", "--email", ADMIN_EMAIL, "--password-stdin"], &format!("{new}\n"));
    ok(&out);
    // Whoever knew the old password and was signed in with it is out.
    assert_eq!(keys_status(&app, &first).await, StatusCode::UNAUTHORIZED);
    assert_eq!(keys_status(&app, &second).await, StatusCode::UNAUTHORIZED);
    assert!(stdout(&out).contains("ended 2 session(s)"), "{}", stdout(&out));
    assert_eq!(keys_status(&app, &colleague).await, StatusCode::OK);
    assert_problem(app.try_admin_login(ADMIN_EMAIL, ADMIN_PASSWORD).await, StatusCode::UNAUTHORIZED).await;
    signed_in(&app, ADMIN_EMAIL, new).await;
    assert!(audited(&app, "admin.password_changed", ADMIN_EMAIL));

    let unknown = app.cli(&["admin", "passwd", "--email", "nobody@example.com", "--password-stdin"], new);
    assert_eq!(unknown.status.code(), Some(1));
    assert_eq!(error_lines(&unknown).len(), 1);
    assert!(stderr(&unknown).contains("no admin with email nobody@example.com"), "{}", stderr(&unknown));
    // Piped without --password-stdin: refused rather than read from a pipe unasked.
    refused_as_input(&app.cli(&["admin", "passwd", "--email", ADMIN_EMAIL], new), "--password-stdin");
}

async fn admin_delete_ends_their_sessions_and_never_removes_the_last_admin(builder: Builder) {
    let app = builder.spawn().await;
    let leaving = app.new_admin("leaving@example.com", "acme").await;
    let staying = app.new_admin("staying@example.com", "acme").await;

    ok(&app.cli(&["admin", "delete", "--email", "leaving@example.com"], ""));
    assert_eq!(keys_status(&app, &leaving).await, StatusCode::UNAUTHORIZED);
    assert_problem(app.try_admin_login("leaving@example.com", ADMIN_PASSWORD).await, StatusCode::UNAUTHORIZED).await;
    assert_eq!(keys_status(&app, &staying).await, StatusCode::OK);
    assert!(audited(&app, "admin.deleted", "leaving@example.com"));

    // Nobody could manage acme's keys (or default's) any more: refused, in one line.
    for last in ["staying@example.com", ADMIN_EMAIL] {
        let out = app.cli(&["admin", "delete", "--email", last], "");
        assert!(!out.status.success());
        let lines = error_lines(&out);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("last admin"), "{lines:?}");
    }
    assert_eq!(keys_status(&app, &staying).await, StatusCode::OK);
    app.admin_login().await;
    assert!(!audited(&app, "admin.deleted", "staying@example.com"));

    let again = app.cli(&["admin", "delete", "--email", "leaving@example.com"], "");
    assert!(!again.status.success());
    assert!(stderr(&again).contains("no admin with email"), "{}", stderr(&again));
}

async fn admin_sessions_revoke_ends_every_session_of_that_admin_only(builder: Builder) {
    let app = builder.spawn().await;
    let laptop = signed_in(&app, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let phone = signed_in(&app, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let colleague = app.new_admin("colleague@example.com", "default").await;

    let out = app.cli(&["admin", "sessions", "revoke", "--email", ADMIN_EMAIL], "");
    ok(&out);
    assert_eq!(keys_status(&app, &laptop).await, StatusCode::UNAUTHORIZED);
    assert_eq!(keys_status(&app, &phone).await, StatusCode::UNAUTHORIZED);
    assert!(stdout(&out).contains("ended 2 session(s)"), "{}", stdout(&out));
    assert_eq!(keys_status(&app, &colleague).await, StatusCode::OK);
    // The password still works: this ends sessions, not the admin.
    signed_in(&app, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert!(audited(&app, "admin.sessions_revoked", ADMIN_EMAIL));
}

async fn admin_unlock_ends_a_lockout_of_an_email_or_a_key(builder: Builder) {
    let app = builder.env("KEYGATE_LOCKOUT_THRESHOLD", "3").spawn().await;
    app.admin_login().await;
    let (key, password) = app.generate_key().await;
    for _ in 0..3 {
        app.try_admin_login(ADMIN_EMAIL, "wrong password, again").await;
        app.api_login(&key, "kgp_wrong").await;
    }
    assert_eq!(app.try_admin_login(ADMIN_EMAIL, ADMIN_PASSWORD).await.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(app.api_login(&key, &password).await.status(), StatusCode::TOO_MANY_REQUESTS);

    let out = app.cli(&["admin", "unlock", "--email", ADMIN_EMAIL], "");
    ok(&out);
    assert!(stdout(&out).contains("cleared"), "{}", stdout(&out));
    assert_eq!(unlocked_within_a_second(|| app.try_admin_login(ADMIN_EMAIL, ADMIN_PASSWORD)).await, StatusCode::OK);
    // Only what was named is unlocked.
    assert_eq!(app.api_login(&key, &password).await.status(), StatusCode::TOO_MANY_REQUESTS);
    ok(&app.cli(&["admin", "unlock", "--api-key", &key], ""));
    assert_eq!(unlocked_within_a_second(|| app.api_login(&key, &password)).await, StatusCode::OK);
    assert!(audited(&app, "lockout.cleared", &format!("email:{ADMIN_EMAIL}")));
    assert!(audited(&app, "lockout.cleared", &format!("key:{key}")));

    let nothing = app.cli(&["admin", "unlock", "--email", ADMIN_EMAIL], "");
    ok(&nothing);
    assert!(stdout(&nothing).contains("nothing to clear"), "{}", stdout(&nothing));
    refused_as_input(&app.cli(&["admin", "unlock", "--api-key", "not a key"], ""), "--api-key");
    assert_eq!(app.cli(&["admin", "unlock"], "").status.code(), Some(2), "one of the two is required");
}

async fn a_password_change_needs_the_current_password_and_counts_wrong_ones(builder: Builder) {
    let app = builder.env("KEYGATE_LOCKOUT_THRESHOLD", "3").spawn().await;
    let client = signed_in(&app, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let change = |current: &str| {
        client
            .post(app.url("/auth/password"))
            .json(&json!({"current_password": current, "new_password": "the attacker's own password"}))
            .send()
    };
    // A stolen session guessing the password: each guess is refused and counted.
    for _ in 0..2 {
        let body = assert_problem(change("a wrong guess here").await.unwrap(), StatusCode::FORBIDDEN).await;
        assert!(body["detail"].as_str().unwrap().contains("current_password"), "{body}");
    }
    let locked = change("a third wrong guess").await.unwrap();
    assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&locked) >= 1);
    // Locked like a login: even the right password is refused now, here and at login.
    assert_eq!(change(ADMIN_PASSWORD).await.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(app.try_admin_login(ADMIN_EMAIL, ADMIN_PASSWORD).await.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_problem(app.try_admin_login(ADMIN_EMAIL, "the attacker's own password").await, StatusCode::TOO_MANY_REQUESTS)
        .await;
    assert_eq!(keys_status(&app, &client).await, StatusCode::OK, "the session itself stays");
    let log = audit(&app);
    assert_eq!(log.iter().filter(|(a, _)| a == "admin.password_change_failed").count(), 3, "{log:?}");
    assert!(log.iter().any(|(a, t)| a == "lockout" && *t == format!("email:{ADMIN_EMAIL}")), "{log:?}");

    // After an unlock, the right password changes it.
    ok(&app.cli(&["admin", "unlock", "--email", ADMIN_EMAIL], ""));
    assert_eq!(unlocked_within_a_second(|| app.try_admin_login(ADMIN_EMAIL, ADMIN_PASSWORD)).await, StatusCode::OK);
    let r = client
        .post(app.url("/auth/password"))
        .json(&json!({"current_password": ADMIN_PASSWORD, "new_password": "a new password at last"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
}

async fn a_password_change_ends_every_other_session_and_keeps_this_one(builder: Builder) {
    let app = builder.spawn().await;
    let here = signed_in(&app, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let elsewhere = signed_in(&app, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let colleague = app.new_admin("colleague@example.com", "default").await;
    let new = "a completely new passphrase";

    let r = here
        .post(app.url("/auth/password"))
        .json(&json!({"current_password": ADMIN_PASSWORD, "new_password": new}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(keys_status(&app, &here).await, StatusCode::OK);
    assert_eq!(keys_status(&app, &elsewhere).await, StatusCode::UNAUTHORIZED);
    assert_eq!(keys_status(&app, &colleague).await, StatusCode::OK);
    assert_problem(app.try_admin_login(ADMIN_EMAIL, ADMIN_PASSWORD).await, StatusCode::UNAUTHORIZED).await;
    signed_in(&app, ADMIN_EMAIL, new).await;
    assert!(audited(&app, "admin.password_changed", ADMIN_EMAIL));
}

async fn a_password_change_refuses_bad_input_and_other_sites(builder: Builder) {
    let app = builder.spawn().await;
    let (cookie, _) = app.admin_session_cookie().await;
    let post = |body: Value, headers: &[(&str, &str)]| {
        let mut rb = Client::new().post(app.url("/auth/password")).header("cookie", &cookie).json(&body);
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        rb.send()
    };
    let good = json!({"current_password": ADMIN_PASSWORD, "new_password": "an attacker's choice"});

    // A page on another site making the signed-in admin's browser change the password.
    for headers in [[("origin", "https://evil.example")], [("sec-fetch-site", "cross-site")]] {
        let body = assert_problem(post(good.clone(), &headers).await.unwrap(), StatusCode::FORBIDDEN).await;
        assert!(body["detail"].as_str().unwrap().contains("cross-site"), "{body}");
    }
    for (body, field) in [
        (json!({"new_password": "long enough new one"}), "current_password"),
        (json!({"current_password": ADMIN_PASSWORD}), "new_password"),
        (json!({"current_password": ADMIN_PASSWORD, "new_password": 12}), "new_password"),
        (json!({"current_password": ADMIN_PASSWORD, "new_password": "long enough new one", "extra": 1}), "extra"),
    ] {
        let problem = assert_problem(post(body.clone(), &[]).await.unwrap(), StatusCode::UNPROCESSABLE_ENTITY).await;
        assert!(problem["detail"].as_str().unwrap().contains(field), "{body}: {problem}");
    }
    let anonymous = Client::new().post(app.url("/auth/password")).json(&good).send().await.unwrap();
    assert_problem(anonymous, StatusCode::UNAUTHORIZED).await;
    // Nothing above changed it.
    app.admin_login().await;
}

async fn cli_commands_refuse_a_store_that_is_not_there_and_create_nothing(builder: Builder) {
    let app = builder.spawn().await;
    let elsewhere = tempfile::tempdir().unwrap();
    let missing = elsewhere.path().join("data");
    // The running server's settings, but a data directory (or database) that holds no store.
    let mut env: Vec<(String, String)> = vec![("KEYGATE_DATA_DIR".into(), missing.display().to_string())];
    let empty_db = match app.db() {
        Some(_) => {
            let db = PgDatabase::create().await.unwrap();
            env.push(("KEYGATE_DATABASE_URL".into(), db.url.clone()));
            env.push(("KEYGATE_MASTER_KEY".into(), app.setting("KEYGATE_MASTER_KEY").unwrap().to_owned()));
            Some(db)
        }
        None => None,
    };
    let named = match &empty_db {
        Some(db) => db.name.clone(),
        None => missing.join("keygate.db").display().to_string(),
    };
    let commands: [&[&str]; 9] = [
        &["admin", "create", "--email", "new@example.com", "--account", "acme", "--password-stdin"],
        &["admin", "list"],
        &["admin", "passwd", "--email", ADMIN_EMAIL, "--password-stdin"],
        &["admin", "delete", "--email", ADMIN_EMAIL],
        &["admin", "sessions", "revoke", "--email", ADMIN_EMAIL],
        &["admin", "unlock", "--email", ADMIN_EMAIL],
        &["audit"],
        &["signing-key", "list"],
        &["signing-key", "rotate"],
    ];
    for args in commands {
        let mut child = keygate_command(&env)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        let _ = child.stdin.take().unwrap().write_all(ADMIN_PASSWORD.as_bytes());
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded: {}", stdout(&out));
        let lines = error_lines(&out);
        assert_eq!(lines.len(), 1, "{args:?}: {lines:?}");
        assert!(lines[0].contains(&named) && lines[0].contains("no keygate store"), "{args:?}: {lines:?}");
        assert!(!missing.exists(), "{args:?} created {}", missing.display());
        if let Some(db) = &empty_db {
            assert_eq!(db.count("information_schema.tables WHERE table_schema = 'public'").await, 0, "{args:?}");
        }
    }
    // A data directory that exists but holds no store: still nothing is written into it.
    std::fs::create_dir(&missing).unwrap();
    for args in [&["admin", "list"][..], &["signing-key", "rotate"]] {
        let out = run_with_timeout(keygate_command(&env).args(args), Duration::from_secs(30));
        assert!(!out.status.success() && stderr(&out).contains(&named), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(std::fs::read_dir(&missing).unwrap().count(), 0, "files appeared in {}", missing.display());
    // `migrate --from` a store that is not there, too.
    let from = match &empty_db {
        Some(db) => db.url.clone(),
        None => format!("sqlite://{}", missing.join("keygate.db").display()),
    };
    let target = tempfile::tempdir().unwrap();
    let to = format!("sqlite://{}", target.path().join("copy.db").display());
    let out = run_with_timeout(keygate_command(&[]).args(["migrate", "--from", &from, "--to", &to]), Duration::from_secs(30));
    assert!(!out.status.success() && stderr(&out).contains("no keygate store"), "{}", stderr(&out));
    assert_eq!(std::fs::read_dir(&missing).unwrap().count(), 0);

    // The embedded store found, but not its master key: a rotation must not invent one.
    if app.db().is_none() {
        let db = format!("sqlite://{}", app.data_dir().join("keygate.db").display());
        let env = [("KEYGATE_DATABASE_URL".to_owned(), db), ("KEYGATE_DATA_DIR".to_owned(), missing.display().to_string())];
        std::fs::remove_dir(&missing).unwrap();
        let out = run_with_timeout(keygate_command(&env).args(["signing-key", "rotate"]), Duration::from_secs(30));
        assert!(!out.status.success(), "{}", stdout(&out));
        let lines = error_lines(&out);
        assert!(lines.len() == 1 && lines[0].contains("no master key at"), "{lines:?}");
        assert!(!missing.exists(), "{} was created", missing.display());
    }

    // And the real store still answers every command.
    ok(&app.cli(&["admin", "list"], ""));
    ok(&app.cli(&["signing-key", "list"], ""));
}
}

mod store_level {
    use std::sync::Arc;

    use keygate::{
        domain::AccountName,
        store::{AdminDeletion, Store},
    };

    use crate::common::fixture::*;

    store_cases! {
    // Two operators deleting the two admins of an account at the same moment: one
    // deletion wins, the other is refused, and the account keeps an admin.
    async fn concurrent_deletions_never_remove_an_accounts_last_admin(fx: Fixture) {
        for round in 0..10 {
            let store = fx.open().await;
            let account = AccountName::parse(&format!("acme{round}")).unwrap();
            let (a, b) = (new_admin(&format!("a{round}@example.com")), new_admin(&format!("b{round}@example.com")));
            store.create_admin(&account, &a).await.unwrap();
            store.create_admin(&account, &b).await.unwrap();
            // Each deletion on a store (and so a pool) of its own, as from two processes.
            let other: Arc<dyn Store> = fx.open().await;
            let (x, y) = tokio::join!(store.delete_admin(a.id), other.delete_admin(b.id));
            let mut outcomes = [x.unwrap(), y.unwrap()];
            outcomes.sort_by_key(|o| *o == AdminDeletion::Deleted);
            assert_eq!(outcomes, [AdminDeletion::LastOfAccount, AdminDeletion::Deleted], "round {round}");
            assert_eq!(store.list_admins(Some(&account)).await.unwrap().len(), 1, "round {round}");
        }
    }
    }
}

/// `keygate admin create` on a real terminal (a pseudo-terminal that `script` gives it):
/// the password is asked for twice, and what is typed never appears on the screen.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_password_typed_on_a_terminal_is_asked_twice_and_never_echoed() {
    use std::{
        io::{Read, Write},
        process::{Command, Stdio},
        sync::{Arc, Mutex},
    };

    let app = TestApp::spawn().await;
    let data_dir = app.data_dir().display().to_string();
    let typed = move |email: &str, first: &str, second: &str| {
        let command = format!("{} admin create --email {email} --account acme", env!("CARGO_BIN_EXE_keygate"));
        let mut script = Command::new("script");
        script.args(["-qfec", &command, "/dev/null"]);
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("KEYGATE_")) {
            script.env_remove(key);
        }
        let mut child = script
            .env("KEYGATE_DATA_DIR", &data_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run script (util-linux)");
        let screen = Arc::new(Mutex::new(Vec::new()));
        let mut stdout = child.stdout.take().unwrap();
        let sink = screen.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while let Ok(n @ 1..) = stdout.read(&mut buf) {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let mut keyboard = child.stdin.take().unwrap();
        let script_pid = child.id();
        let shown = || String::from_utf8_lossy(&screen.lock().unwrap()).into_owned();
        for (prompt, line) in [("New password: ", first), ("Repeat it: ", second)] {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            // Typed only once the prompt is shown and the terminal no longer echoes: a
            // person typing sooner would be seen, whatever keygate does.
            while !(shown().matches(prompt).count() == 1 && echo_is_off(script_pid)) {
                assert!(std::time::Instant::now() < deadline, "no {prompt:?} prompt with echo off: {}", shown());
                std::thread::sleep(Duration::from_millis(20));
            }
            keyboard.write_all(format!("{line}\r").as_bytes()).unwrap();
            keyboard.flush().unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("still running: {}", shown());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        reader.join().unwrap();
        (status.code(), shown())
    };

    let password = "typed on a keyboard, twice";
    let (code, screen) = typed("typist@example.com", password, password);
    assert_eq!(code, Some(0), "{screen}");
    assert!(screen.contains("created admin typist@example.com"), "{screen}");
    assert!(!screen.contains(password), "the password was echoed: {screen}");
    signed_in(&app, "typist@example.com", password).await;

    let (code, screen) = typed("other@example.com", "a first long password", "a second long password");
    assert_eq!(code, Some(2), "{screen}");
    assert!(screen.contains("differ"), "{screen}");
    assert!(!stdout(&app.cli(&["admin", "list"], "")).contains("other@example.com"));
}

/// Whether the terminal of the `keygate` process under `script` has echo turned off.
#[cfg(target_os = "linux")]
fn echo_is_off(script_pid: u32) -> bool {
    fn descendants(pid: u32) -> Vec<u32> {
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        let children: Vec<u32> = children.split_whitespace().filter_map(|p| p.parse().ok()).collect();
        children.iter().flat_map(|&c| std::iter::once(c).chain(descendants(c))).collect()
    }
    let Some(keygate) = descendants(script_pid)
        .into_iter()
        .find(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "keygate"))
    else {
        return false;
    };
    let Ok(tty) = std::fs::read_link(format!("/proc/{keygate}/fd/0")) else { return false };
    let out = std::process::Command::new("stty").arg("-F").arg(&tty).arg("-a").output();
    out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().any(|w| w == "-echo"))
}
