//! `keygate backup` of a live embedded store under load, `keygate restore` into an empty data
//! directory, and a `migrate` into SQLite that leaves one whole file.

use std::{
    path::Path,
    process::Output,
    sync::{Arc, Mutex},
};

use crate::common::*;
use reqwest::StatusCode;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the CLI with exactly `env` off the test's runtime, so the load keeps running.
async fn cli(env: &[(&str, &str)], args: &[&str]) -> Output {
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || keygate_command(&env).args(args).stdin(std::process::Stdio::null()).output())
        .await
        .unwrap()
        .unwrap()
}

fn data_env(dir: &Path) -> String {
    dir.display().to_string()
}

#[tokio::test]
async fn a_backup_taken_under_load_restores_every_key_that_existed_before_it() {
    let app = TestApp::spawn().await;
    app.admin_login().await;
    let master_key = std::fs::read_to_string(app.data_dir().join("master.key")).unwrap().trim().to_owned();
    let generated: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    for _ in 0..20 {
        let key = app.generate_key().await;
        generated.lock().unwrap().push(key);
    }

    // Load: key generations and API logins, until told to stop.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for worker in 0..3 {
        let (client, base, generated, stop) = (app.client.clone(), app.base.clone(), generated.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut answered = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && answered < 2_000 {
                if worker == 0 {
                    let (key, password) = generated.lock().unwrap()[0].clone();
                    let r = client
                        .post(format!("{base}/auth/login"))
                        .json(&serde_json::json!({"api_key": key, "password": password}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), StatusCode::OK);
                } else {
                    let r = client.post(format!("{base}/auth/keys/generate")).send().await.unwrap();
                    assert_eq!(r.status(), StatusCode::OK);
                    let body: serde_json::Value = r.json().await.unwrap();
                    let key =
                        (body["api_key"].as_str().unwrap().to_owned(), body["password"].as_str().unwrap().to_owned());
                    generated.lock().unwrap().push(key);
                }
                answered += 1;
            }
            answered
        }));
    }
    // Some of the load's keys are in before the backup starts.
    while generated.lock().unwrap().len() < 40 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    let backups = tempfile::tempdir().unwrap();
    let file = backups.path().join("keygate-backup.db");
    let data = data_env(&app.data_dir());
    let before: Vec<(String, String)> = generated.lock().unwrap().clone();
    let out = cli(&[("KEYGATE_DATA_DIR", &data)], &["backup", "--to", file.to_str().unwrap()]).await;
    let during = generated.lock().unwrap().len();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for worker in load {
        assert!(worker.await.unwrap() > 0);
    }
    assert!(out.status.success(), "backup failed: {}", stderr(&out));
    let said = stdout(&out);
    assert!(said.starts_with(&format!("wrote {}: 1 accounts, 1 admins, ", file.display())), "{said}");
    let keys: usize = said.split(" admins, ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(keys >= before.len() && keys <= during, "{keys} keys, {} before, {during} by its end", before.len());
    assert!(said.contains("master key"), "{said}");
    // One file, nothing beside it; readable by its owner alone.
    let beside: Vec<_> = std::fs::read_dir(backups.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(beside, [file.file_name().unwrap()]);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);

    // Never over an existing file.
    let length = std::fs::metadata(&file).unwrap().len();
    let again = cli(&[("KEYGATE_DATA_DIR", &data)], &["backup", "--to", file.to_str().unwrap()]).await;
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));
    assert!(stderr(&again).contains("exists"), "{}", stderr(&again));
    assert_eq!(std::fs::metadata(&file).unwrap().len(), length);

    // A master key other than the store's is refused before anything is written.
    let elsewhere = tempfile::tempdir().unwrap();
    let wrong_dir = data_env(&elsewhere.path().join("data"));
    let wrong = random_master_key();
    let env = [("KEYGATE_DATA_DIR", wrong_dir.as_str()), ("KEYGATE_MASTER_KEY", wrong.as_str())];
    let out = cli(&env, &["restore", "--from", file.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not open this backup's signing keys"), "{}", stderr(&out));
    assert!(!elsewhere.path().join("data").exists());

    // Restored into an empty data directory, with the store's master key.
    let restored = Arc::new(tempfile::tempdir().unwrap());
    let target = data_env(&restored.path().join("data"));
    let env = [("KEYGATE_DATA_DIR", target.as_str()), ("KEYGATE_MASTER_KEY", master_key.as_str())];
    let out = cli(&env, &["restore", "--from", file.to_str().unwrap()]).await;
    assert!(out.status.success(), "restore failed: {}", stderr(&out));
    assert!(stdout(&out).contains(&format!("{keys} API keys")), "{}", stdout(&out));
    // Not over a store, nor into a directory that holds anything.
    let out = cli(&env, &["restore", "--from", file.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));

    drop(app);
    let app = TestApp::builder().dir(restored.clone()).env("KEYGATE_MASTER_KEY", &master_key).spawn().await;
    for (key, password) in &before {
        assert_eq!(app.api_login(key, password).await.status(), StatusCode::OK, "{key} is not in the restored store");
    }
    app.admin_login().await;
    assert_eq!(app.list_keys().await.len(), keys);
}

#[tokio::test]
async fn restore_and_backup_refuse_what_is_not_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_store = dir.path().join("notes.txt");
    std::fs::write(&not_a_store, "hello").unwrap();
    let data = data_env(&dir.path().join("data"));
    let out = cli(&[("KEYGATE_DATA_DIR", &data)], &["restore", "--from", not_a_store.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("is not a keygate store"), "{}", stderr(&out));
    assert!(!dir.path().join("data").exists());
    // No store to back up: said so, nothing made.
    let out = cli(&[("KEYGATE_DATA_DIR", &data)], &["backup", "--to", dir.path().join("b.db").to_str().unwrap()]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no keygate store"), "{}", stderr(&out));
    assert!(!dir.path().join("b.db").exists() && !dir.path().join("data").exists());
    // PostgreSQL has pg_dump.
    let pg = [("KEYGATE_DATABASE_URL", "postgres://keygate@127.0.0.1:1/keygate")];
    for args in [["backup", "--to", "b.db"], ["restore", "--from", "b.db"]] {
        let out = cli(&pg, &args).await;
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains("pg_"), "{}", stderr(&out));
    }
}

/// The file a `migrate --to sqlite://…` writes holds everything by itself: its write-ahead
/// log is merged into it before the command ends.
#[tokio::test]
async fn a_migration_into_sqlite_leaves_one_whole_file() {
    let mut source = TestApp::spawn().await;
    source.admin_login().await;
    for _ in 0..25 {
        source.generate_key().await;
    }
    source.kill();
    let from = format!("sqlite://{}", source.data_dir().join("keygate.db").display());
    let target = tempfile::tempdir().unwrap();
    let to = format!("sqlite://{}", target.path().join("copy.db").display());
    let out = cli(&[], &["migrate", "--from", &from, "--to", &to]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    // The database file alone, as `cp keygate.db` would take it.
    let lone = tempfile::tempdir().unwrap();
    std::fs::copy(target.path().join("copy.db"), lone.path().join("copy.db")).unwrap();
    let url = format!("sqlite://{}?mode=ro", lone.path().join("copy.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let (keys,): (i64,) = sqlx::query_as("SELECT count(*) FROM api_keys").fetch_one(&pool).await.unwrap();
    assert_eq!(keys, 25);
}
