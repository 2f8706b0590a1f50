//! The command line as an operator meets it: each command's help holds its own options,
//! `config check` judges the settings exactly as `serve` does (and says so with the same
//! line and exit code), secrets are never printed, errors name where a bad value came from
//! and each cause once, and the health check says up or down.

use std::{path::Path, process::Output, time::Duration};

use crate::common::{tls::TestCert, *};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run(env: &[(&str, &str)], args: &[&str]) -> Output {
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    run_with_timeout(keygate_command(&env).args(args), Duration::from_secs(60))
}

/// The options a `--help` lists: each `--flag`, with whether it has a description.
fn options(help: &str) -> Vec<(String, bool)> {
    help.lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("--") || l.starts_with("-h") || l.starts_with("-V"))
        .map(|l| {
            let flag = l.split([' ', ',']).find(|w| w.starts_with("--")).unwrap_or(l).to_owned();
            // The description follows the flag and its value name, after two spaces or more.
            let described = l.split_once("  ").is_some_and(|(_, rest)| !rest.trim().is_empty());
            (flag, described)
        })
        .collect()
}

#[test]
fn each_command_shows_only_its_own_options_each_described() {
    let server = ["--listen", "--token-ttl", "--tls-cert", "--issuer", "--lockout-threshold", "--max-connections"];
    let store = ["--config", "--data-dir", "--database-url"];
    let commands: [(&[&str], &[&str]); 16] = [
        (&["serve"], &server),
        (&["config", "check"], &server),
        (&["admin", "create"], &["--email", "--account", "--password-stdin"]),
        (&["admin", "list"], &["--account"]),
        (&["admin", "passwd"], &["--email", "--password-stdin"]),
        (&["admin", "delete"], &["--email"]),
        (&["admin", "sessions", "revoke"], &["--email"]),
        (&["admin", "unlock"], &["--email", "--api-key"]),
        (&["signing-key", "rotate"], &["--alg"]),
        (&["signing-key", "list"], &[]),
        (&["audit"], &["--account", "--limit", "--before", "--json"]),
        (&["migrate"], &["--from", "--to"]),
        (&["backup"], &["--to"]),
        (&["restore"], &["--from"]),
        (&["healthcheck"], &["--addr"]),
        (&[], &["--version"]),
    ];
    for (command, own) in commands {
        let out = run(&[], &[command, &["--help"]].concat());
        assert!(out.status.success(), "{command:?}: {}", stderr(&out));
        let listed = options(&stdout(&out));
        let names: Vec<&str> = listed.iter().map(|(name, _)| name.as_str()).collect();
        for option in own {
            assert!(names.contains(option), "{command:?} lacks {option}: {names:?}");
        }
        for (name, described) in &listed {
            assert!(described, "{command:?}: {name} has no description");
        }
        let on_the_store =
            matches!(command.first(), Some(&"admin" | &"signing-key" | &"audit" | &"backup" | &"restore"));
        let expected = own.len() + 1 + if on_the_store { store.len() } else { 0 };
        if command.first() != Some(&"serve") && command.first() != Some(&"config") {
            assert_eq!(names.len(), expected, "{command:?} lists options not its own: {names:?}");
        }
    }
    let out = run(&[], &["--version"]);
    assert_eq!(stdout(&out), format!("keygate {}\n", env!("CARGO_PKG_VERSION")));
}

/// Variables given to a command.
type Env<'a> = Vec<(&'a str, &'a str)>;

/// The environment for `serve` and `config check` on a fresh data directory in `dir`.
fn base_env(dir: &Path) -> Vec<(String, String)> {
    vec![
        ("KEYGATE_LISTEN".into(), "127.0.0.1:0".into()),
        ("KEYGATE_DATA_DIR".into(), dir.join("data").display().to_string()),
    ]
}

#[test]
fn config_check_refuses_what_serve_refuses_with_the_same_line_and_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keygate.toml");
    std::fs::write(&file, "audience = \"api\"\n\n  token_ttl = 5\n").unwrap();
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "audience = \"api\"\ntoken_ttl = \"soon\"\n").unwrap();
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let cert = TestCert::new();
    let (cert_file, _) = cert.write(dir.path());
    let other_key = TestCert::new();
    let key_dir = tempfile::tempdir().unwrap();
    let (_, wrong_key) = other_key.write(key_dir.path());
    let (file, broken, not_pem, cert_file, wrong_key) = (
        file.display().to_string(),
        broken.display().to_string(),
        not_pem.display().to_string(),
        cert_file.display().to_string(),
        wrong_key.display().to_string(),
    );
    let pg = "postgres://keygate@127.0.0.1:1/keygate";
    let master_key = random_master_key();
    #[rustfmt::skip]
    let cases: Vec<(Env, Vec<&str>, String)> = vec![
        (vec![], vec!["--token-ttl", "5"], "error: invalid setting --token-ttl: expected a whole number of seconds from 60 to 86400".into()),
        (vec![("KEYGATE_TOKEN_TTL", "5")], vec![], "error: invalid setting KEYGATE_TOKEN_TTL: expected a whole number".into()),
        (vec![("KEYGATE_CONFIG", &file)], vec![], format!("error: invalid setting token_ttl at {file}:3:3: expected a whole number")),
        (vec![], vec!["--config", &broken], format!("error: invalid settings file {broken}:2:13: invalid type")),
        (vec![("KEYGATE_MASTER_KEY", "c2hvcnQ=")], vec![], "error: invalid setting KEYGATE_MASTER_KEY: must be 32 bytes".into()),
        (vec![("KEYGATE_DATABASE_URL", pg)], vec![], "error: invalid setting KEYGATE_MASTER_KEY: required with PostgreSQL".into()),
        (vec![("KEYGATE_DATABASE_URL", pg), ("KEYGATE_MASTER_KEY", &master_key)], vec![], "error: invalid setting KEYGATE_ISSUER: required with PostgreSQL".into()),
        (vec![], vec!["--max-connections", "10000000"], "error: invalid setting --max-connections: at most".into()),
        (vec![("KEYGATE_TLS_CERT", &not_pem), ("KEYGATE_TLS_KEY", &wrong_key)], vec![], format!("error: invalid setting KEYGATE_TLS_CERT: {not_pem}: no PEM certificate")),
        (vec![], vec!["--tls-cert", &cert_file, "--tls-key", &wrong_key], format!("error: invalid setting --tls-key: {wrong_key}: not the private key of the certificate")),
        (vec![], vec!["--tls-cert", &cert_file], "error: invalid setting KEYGATE_TLS_KEY: required with KEYGATE_TLS_CERT".into()),
    ];
    for (extra, flags, expected) in cases {
        let data = tempfile::tempdir().unwrap();
        let mut env = base_env(data.path());
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let serve = run_with_timeout(keygate_command(&env).arg("serve").args(&flags), Duration::from_secs(60));
        let check =
            run_with_timeout(keygate_command(&env).args(["config", "check"]).args(&flags), Duration::from_secs(60));
        // `serve` may log before it stops (its log is stderr too); its error is one line.
        let error = |out: &Output| {
            stderr(out).lines().filter(|l| l.starts_with("error")).map(str::to_owned).collect::<Vec<_>>()
        };
        for (what, out) in [("serve", &serve), ("config check", &check)] {
            assert_eq!(out.status.code(), Some(2), "{what} {extra:?} {flags:?}: {}", stderr(out));
            let lines = error(out);
            assert_eq!(lines.len(), 1, "{what} {extra:?} {flags:?}: {}", stderr(out));
            assert!(lines[0].starts_with(&expected), "{what} {extra:?} {flags:?}:\n{}\nnot\n{expected}", lines[0]);
        }
        assert_eq!(error(&serve), error(&check), "{extra:?} {flags:?}");
        assert_eq!(stderr(&check).lines().count(), 1, "{}", stderr(&check));
        assert!(stdout(&check).is_empty(), "{}", stdout(&check));
        assert!(!data.path().join("data").exists(), "{extra:?} {flags:?}: a data directory was made");
    }
}

#[test]
fn config_check_prints_the_settings_with_secrets_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keygate.toml");
    std::fs::write(&file, "audience = \"api\"\ntoken_ttl = 300\n").unwrap();
    let master_key = random_master_key();
    let data = dir.path().join("data");
    let env = [
        ("KEYGATE_CONFIG", file.to_str().unwrap()),
        ("KEYGATE_DATA_DIR", data.to_str().unwrap()),
        ("KEYGATE_DATABASE_URL", "postgres://keygate:hunter2-db@db.internal:5432/keygate?sslmode=require"),
        ("KEYGATE_MASTER_KEY", master_key.as_str()),
        ("KEYGATE_ISSUER", "https://auth.example.com"),
        ("KEYGATE_BOOTSTRAP_ADMIN_EMAIL", "ops@example.com"),
        ("KEYGATE_BOOTSTRAP_ADMIN_PASSWORD", "hunter2 the admin password"),
        ("KEYGATE_REDIS_URL", "redis://:hunter2-redis@cache.internal:6379/2"),
    ];
    let out = run(&env, &["config", "check", "--token-ttl", "600", "--listen", "0.0.0.0:8080"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let printed = stdout(&out);
    let row = |name: &str| {
        printed
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name}:\n{printed}"))
            .to_owned()
    };
    assert!(row("KEYGATE_TOKEN_TTL").contains("600 s") && row("KEYGATE_TOKEN_TTL").ends_with("flag --token-ttl"));
    assert!(
        row("KEYGATE_AUDIENCE").contains("api") && row("KEYGATE_AUDIENCE").ends_with(&format!("{}:1", file.display()))
    );
    assert!(row("KEYGATE_LISTEN").contains("0.0.0.0:8080"));
    assert!(
        row("KEYGATE_ISSUER").contains("https://auth.example.com") && row("KEYGATE_ISSUER").ends_with("environment")
    );
    assert!(row("KEYGATE_SIGNING_ALG").ends_with("default"));
    assert!(row("KEYGATE_DATABASE_URL").contains("postgres://keygate:****@db.internal:5432/keygate?sslmode=require"));
    assert!(row("KEYGATE_REDIS_URL").contains("redis://:****@cache.internal:6379/2"));
    assert!(row("KEYGATE_MASTER_KEY").contains("hidden"));
    assert!(row("KEYGATE_BOOTSTRAP_ADMIN_EMAIL").contains("ops@example.com"));
    assert!(row("KEYGATE_BOOTSTRAP_ADMIN_PASSWORD").contains("hidden"));
    // Every setting keygate has is shown.
    use clap::Args;
    let command = keygate::config::SettingsArgs::augment_args(clap::Command::new("keygate"));
    for name in command.get_arguments().filter_map(|a| a.get_env()) {
        row(&name.to_string_lossy());
    }
    for secret in ["hunter2", &master_key, &master_key[..16]] {
        assert!(!printed.contains(secret) && !stderr(&out).contains(secret), "{secret} printed:\n{printed}");
    }
    // Nothing was made: no data directory, no master key.
    assert!(!dir.path().join("data").exists());

    // The embedded default: the master key file is judged as `serve` judges it.
    let data = dir.path().join("embedded");
    let env = [("KEYGATE_DATA_DIR", data.to_str().unwrap())];
    let out = run(&env, &["config", "check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("the first start generates one"), "{}", stdout(&out));
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("master.key"), format!("{}\n", random_master_key())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(data.join("master.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(&env, &["config", "check"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with("error: invalid setting KEYGATE_MASTER_KEY: from the data directory"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
    std::fs::set_permissions(data.join("master.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = run(&env, &["config", "check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("in {}", data.join("master.key").display())), "{}", stdout(&out));
}

#[test]
fn an_unreachable_database_is_one_line_with_each_cause_once_and_exit_code_1() {
    let env = [("KEYGATE_DATABASE_URL", "postgres://keygate@127.0.0.1:1/keygate"), ("KEYGATE_MASTER_KEY", "")];
    let out = run(&env, &["admin", "list"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stderr(&out);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{text}");
    let parts: Vec<&str> = lines[0].trim_start_matches("error: ").split(": ").collect();
    for (i, part) in parts.iter().enumerate() {
        assert!(
            !parts[i + 1..].iter().any(|later| later.contains(part) || part.contains(later)),
            "said twice: {}",
            lines[0]
        );
    }
    assert_eq!(text.matches("refused").count(), 1, "{text}");
}

#[tokio::test]
async fn healthcheck_says_up_or_down() {
    let app = TestApp::spawn().await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let out = run(&[("KEYGATE_LISTEN", &addr)], &["healthcheck"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listen = format!("0.0.0.0:{}", addr.rsplit(':').next().unwrap());
    assert!(run(&[("KEYGATE_LISTEN", &listen)], &["healthcheck"]).status.success(), "a wildcard is asked at loopback");
    drop(app);
    // Down: exit code 1, never 2 (reserved by Docker), even for a bad setting.
    assert_eq!(run(&[("KEYGATE_LISTEN", &addr)], &["healthcheck"]).status.code(), Some(1));
    assert_eq!(run(&[("KEYGATE_LISTEN", "nonsense")], &["healthcheck"]).status.code(), Some(1));

    // With native TLS: the server must present the certificate of KEYGATE_TLS_CERT.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = TestCert::new().write(dir.path());
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let app = TestApp::builder().env("KEYGATE_TLS_CERT", cert).env("KEYGATE_TLS_KEY", key).spawn().await;
    let addr = app.base.trim_start_matches("https://").to_owned();
    let tls = [("KEYGATE_LISTEN", addr.as_str()), ("KEYGATE_TLS_CERT", cert), ("KEYGATE_TLS_KEY", key)];
    let out = run(&tls, &["healthcheck"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let other = tempfile::tempdir().unwrap();
    let (other_cert, other_key) = TestCert::new().write(other.path());
    let impostor = [
        ("KEYGATE_LISTEN", addr.as_str()),
        ("KEYGATE_TLS_CERT", other_cert.to_str().unwrap()),
        ("KEYGATE_TLS_KEY", other_key.to_str().unwrap()),
    ];
    assert_eq!(run(&impostor, &["healthcheck"]).status.code(), Some(1));
    assert_eq!(run(&[("KEYGATE_LISTEN", addr.as_str())], &["healthcheck"]).status.code(), Some(1), "plain HTTP to TLS");
}

#[tokio::test]
async fn signing_key_list_has_a_header_and_rfc3339_times() {
    let app = TestApp::spawn().await;
    let out = app.cli(&["signing-key", "list"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = stdout(&out);
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines[0], "KID\tALG\tSTATE\tCREATED\tRETIRED\tVERIFIES UNTIL");
    let row: Vec<&str> = lines[1].split('\t').collect();
    assert_eq!(&row[1..3], ["ES256", "active"]);
    assert!(time::OffsetDateTime::parse(row[3], &time::format_description::well_known::Rfc3339).is_ok(), "{}", row[3]);
}

/// sqlx's migrator creates its table `IF NOT EXISTS` at every start, and PostgreSQL says
/// "relation … already exists, skipping": not news at info.
#[tokio::test]
async fn postgres_starts_log_no_server_notices() {
    let Some(builder) = Builder::postgres().await else { return };
    let mut app = builder.process().spawn().await;
    let mut app = {
        app.terminate().await;
        app.restart().await
    };
    app.terminate().await;
    let logs = app.logs();
    assert!(logs.contains("listening on"), "{logs}");
    assert!(!logs.contains("already exists"), "{logs}");
}
