//! The packaging under deploy/ agrees with keygate: the Dockerfile runs the binary it builds,
//! as an unprivileged user, with a health check keygate has; the systemd unit passes
//! `systemd-analyze`; the Kubernetes manifests pass the Kubernetes schemas and use only
//! settings, probes, ports and secrets that keygate has, with settings `config check` accepts;
//! compose wires keygate, PostgreSQL and nginx the way the docs say.
//!
//! Where `systemd-analyze`, `kubernetes-validate` or nginx is missing, that part prints
//! `SKIPPED-SYSTEMD`, `SKIPPED-KUBERNETES-VALIDATE` or `SKIPPED-NGINX` and passes; `.ci/run`
//! installs them and refuses those lines.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

use crate::common::*;
use yaml_rust2::{Yaml, YamlLoader};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn skipped(what: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED-{what}: {why}");
}

/// Every variable keygate reads: the settings' and the three secrets read from the
/// environment alone.
fn known_variables() -> BTreeSet<String> {
    use clap::Args;
    let command = keygate::config::SettingsArgs::augment_args(clap::Command::new("keygate"));
    let mut names: BTreeSet<String> =
        command.get_arguments().filter_map(|a| a.get_env()).map(|e| e.to_string_lossy().into_owned()).collect();
    names.extend(
        ["KEYGATE_MASTER_KEY", "KEYGATE_BOOTSTRAP_ADMIN_EMAIL", "KEYGATE_BOOTSTRAP_ADMIN_PASSWORD"].map(String::from),
    );
    names
}

/// `keygate config check` with exactly `env`: its exit code and output.
fn config_check(env: &BTreeMap<String, String>) -> (Option<i32>, String) {
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let out = run_with_timeout(keygate_command(&env).args(["config", "check"]), std::time::Duration::from_secs(30));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

/// The Dockerfile's instructions, continuation lines joined, by stage.
fn dockerfile_stages() -> Vec<Vec<(String, String)>> {
    let text = read("deploy/Dockerfile").replace("\\\n", " ");
    let mut stages: Vec<Vec<(String, String)>> = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (instruction, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let instruction = instruction.to_ascii_uppercase();
        if instruction == "FROM" {
            stages.push(Vec::new());
        }
        let rest = rest.split_whitespace().collect::<Vec<_>>().join(" ");
        stages.last_mut().expect("FROM first").push((instruction, rest));
    }
    stages
}

#[test]
fn the_dockerfile_builds_keygate_and_runs_it_unprivileged_with_a_health_check() {
    let stages = dockerfile_stages();
    assert!(stages.len() >= 2, "a multi-stage build");
    let build = &stages[0];
    assert!(build[0].1.ends_with("AS build"), "{:?}", build[0]);
    assert!(
        build.iter().any(|(i, r)| i == "RUN" && r.contains("cargo build --release --locked --bin keygate")),
        "{build:?}"
    );
    let runtime = stages.last().unwrap();
    let get = |instruction: &str| -> Vec<&str> {
        runtime.iter().filter(|(i, _)| i == instruction).map(|(_, r)| r.as_str()).collect()
    };
    // The binary the runtime stage gets is the one it runs.
    let binary = "/usr/local/bin/keygate";
    assert!(get("COPY").iter().any(|c| c.starts_with("--from=build") && c.ends_with(binary)), "{runtime:?}");
    assert_eq!(get("ENTRYPOINT"), [format!("[\"{binary}\"]")]);
    assert_eq!(get("CMD"), ["[\"serve\"]"]);
    let healthcheck = get("HEALTHCHECK");
    assert_eq!(healthcheck.len(), 1);
    assert!(healthcheck[0].ends_with(&format!("CMD [\"{binary}\", \"healthcheck\"]")), "{healthcheck:?}");
    // Not root, by name or number, and the data directory is that user's.
    let user = get("USER");
    assert_eq!(user.len(), 1, "{runtime:?}");
    let uid = user[0].split(':').next().unwrap();
    assert!(uid != "root" && uid != "0", "runs as {uid}");
    assert!(get("COPY").iter().any(|c| c.contains(&format!("--chown={uid}")) && c.ends_with("/var/lib/keygate")));
    let env = get("ENV").join(" ");
    assert!(env.contains("KEYGATE_LISTEN=0.0.0.0:8080") && env.contains("KEYGATE_DATA_DIR=/var/lib/keygate"), "{env}");
    assert_eq!(get("EXPOSE"), ["8080"]);
    assert_eq!(get("STOPSIGNAL"), ["SIGTERM"]);
    assert!(read(".dockerignore").lines().any(|l| l.trim() == "target/"));
    // The health check is a command keygate has.
    let out =
        run_with_timeout(keygate_command(&[]).args(["healthcheck", "--help"]), std::time::Duration::from_secs(30));
    assert!(out.status.success());
}

#[test]
fn the_systemd_unit_is_hardened_and_passes_systemd_analyze() {
    let unit = read("deploy/keygate.service");
    let directives: Vec<(&str, &str)> =
        unit.lines().filter(|l| !l.starts_with('#') && !l.starts_with('[')).filter_map(|l| l.split_once('=')).collect();
    let value = |key: &str| directives.iter().filter(|(k, _)| *k == key).map(|(_, v)| *v).collect::<Vec<_>>();
    for (key, expected) in [
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("StateDirectory", "keygate"),
        ("NoNewPrivileges", "yes"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("CapabilityBoundingSet", ""),
        ("KillSignal", "SIGTERM"),
        ("ExecStart", "/usr/local/bin/keygate serve"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
    ] {
        assert_eq!(value(key), [expected], "{key}");
    }
    let stop: u64 = value("TimeoutStopSec")[0].trim_end_matches('s').parse().unwrap();
    assert!(stop > 30, "TimeoutStopSec={stop} must exceed the 30 s shutdown timeout");
    let known = known_variables();
    for environment in value("Environment") {
        let name = environment.split('=').next().unwrap();
        assert!(known.contains(name), "the unit sets {name}, which keygate does not read");
    }
    assert_eq!(
        value("Environment").iter().find(|e| e.starts_with("KEYGATE_DATA_DIR=")),
        Some(&"KEYGATE_DATA_DIR=/var/lib/keygate")
    );

    let Some(analyze) =
        ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"].into_iter().find(|p| Path::new(p).exists())
    else {
        return skipped("SYSTEMD", "systemd-analyze is not installed; the unit was not verified");
    };
    // As installed, but with this build's binary where the unit expects it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keygate.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/keygate", env!("CARGO_BIN_EXE_keygate"))).unwrap();
    let out = Command::new(analyze).arg("verify").arg(&path).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify:\n{said}");
    // Its exposure score: 0 (confined) to 10 (not at all); at most 2.
    let out = Command::new(analyze).args(["security", "--offline=yes", "--threshold=20"]).arg(&path).output().unwrap();
    assert!(out.status.success(), "systemd-analyze security:\n{}", String::from_utf8_lossy(&out.stdout));
}

fn yaml(path: &str) -> Yaml {
    let mut docs = YamlLoader::load_from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(docs.len(), 1, "{path}: one document");
    docs.remove(0)
}

fn text(value: &Yaml) -> &str {
    value.as_str().unwrap_or_else(|| panic!("not a string: {value:?}"))
}

#[tokio::test]
async fn the_kubernetes_manifests_pass_their_schemas_and_agree_with_keygate() {
    let files = ["deployment.yaml", "service.yaml", "pdb.yaml", "secret.example.yaml"];
    let deployment = yaml("deploy/kubernetes/deployment.yaml");
    let service = yaml("deploy/kubernetes/service.yaml");
    let pdb = yaml("deploy/kubernetes/pdb.yaml");
    let secret = yaml("deploy/kubernetes/secret.example.yaml");
    let kustomization = yaml("deploy/kubernetes/kustomization.yaml");
    let listed: Vec<&str> = kustomization["resources"].as_vec().unwrap().iter().map(text).collect();
    assert_eq!(listed, ["deployment.yaml", "service.yaml", "pdb.yaml"]);

    assert_eq!(deployment["kind"].as_str(), Some("Deployment"));
    assert_eq!(deployment["spec"]["replicas"].as_i64(), Some(3));
    let pod = &deployment["spec"]["template"];
    let labels = pod["metadata"]["labels"].as_hash().unwrap();
    for selector in [
        &deployment["spec"]["selector"]["matchLabels"],
        &pdb["spec"]["selector"]["matchLabels"],
        &service["spec"]["selector"],
    ] {
        assert_eq!(selector.as_hash().unwrap(), labels, "a selector that misses the pods");
    }
    assert_eq!(pdb["kind"].as_str(), Some("PodDisruptionBudget"));
    assert!(pdb["spec"]["minAvailable"].as_i64().is_some_and(|n| (1..3).contains(&n)));
    let containers = pod["spec"]["containers"].as_vec().unwrap();
    assert_eq!(containers.len(), 1);
    let container = &containers[0];

    // The environment: settings keygate has, secrets the Secret holds, and as a whole what
    // `config check` accepts.
    let secret_keys: BTreeSet<&str> = secret["stringData"].as_hash().unwrap().keys().map(text).collect();
    let secret_name = text(&secret["metadata"]["name"]);
    let known = known_variables();
    let mut env = BTreeMap::new();
    for var in container["env"].as_vec().unwrap() {
        let name = text(&var["name"]).to_owned();
        assert!(known.contains(&name), "the Deployment sets {name}, which keygate does not read");
        let value = match (&var["value"], &var["valueFrom"]["secretKeyRef"]) {
            (Yaml::String(value), Yaml::BadValue) => value.clone(),
            (Yaml::BadValue, reference) => {
                assert_eq!(text(&reference["name"]), secret_name, "{name}");
                let key = text(&reference["key"]);
                assert!(secret_keys.contains(key), "{name} reads {key}, which the Secret does not hold");
                text(&secret["stringData"][key]).to_owned()
            }
            other => panic!("{name}: {other:?}"),
        };
        env.insert(name, value);
    }
    assert_eq!(env.len(), container["env"].as_vec().unwrap().len(), "a variable set twice");
    for required in ["KEYGATE_DATABASE_URL", "KEYGATE_MASTER_KEY", "KEYGATE_ISSUER", "KEYGATE_LISTEN"] {
        assert!(env.contains_key(required), "{required} is required with PostgreSQL replicas");
    }
    assert!(env["KEYGATE_DATABASE_URL"].starts_with("postgres://"));
    // The example's placeholders, made real, and nothing else changed.
    env.insert("KEYGATE_MASTER_KEY".into(), random_master_key());
    env.insert("KEYGATE_BOOTSTRAP_ADMIN_PASSWORD".into(), "a long admin password".into());
    let (code, said) = config_check(&env);
    assert_eq!(code, Some(0), "config check refuses the Deployment's settings:\n{said}");

    // The port it listens on is the one declared, probed and served.
    let port: i64 = env["KEYGATE_LISTEN"].rsplit(':').next().unwrap().parse().unwrap();
    assert!(env["KEYGATE_LISTEN"].starts_with("0.0.0.0:"), "reachable from outside the pod");
    let ports = container["ports"].as_vec().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0]["containerPort"].as_i64(), Some(port));
    let port_name = text(&ports[0]["name"]);
    assert_eq!(text(&service["spec"]["ports"][0]["targetPort"]), port_name);
    let app = TestApp::spawn().await;
    for (probe, path) in [("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!((get["path"].as_str(), get["port"].as_str()), (Some(path), Some(port_name)), "{probe}");
        let status = reqwest::get(app.url(path)).await.unwrap().status();
        assert_eq!(status, reqwest::StatusCode::OK, "{path}");
    }
    // SIGTERM drains for up to the shutdown timeout after the preStop pause: the pod is given
    // longer than both.
    let shutdown: i64 = env.get("KEYGATE_SHUTDOWN_TIMEOUT").map_or(30, |s| s.parse().unwrap());
    let pause = container["lifecycle"]["preStop"]["sleep"]["seconds"].as_i64().unwrap_or(0);
    let grace = pod["spec"]["terminationGracePeriodSeconds"].as_i64().unwrap();
    assert!(grace > pause + shutdown, "terminationGracePeriodSeconds {grace} <= {pause} + {shutdown}");
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"].as_bool(), Some(false));

    // The Kubernetes schemas, offline (kubernetes-validate, from PyPI, carries them).
    let validate = Command::new("python3").args(["-m", "kubernetes_validate", "--version"]).output();
    if !validate.is_ok_and(|out| out.status.success()) {
        return skipped("KUBERNETES-VALIDATE", "python3 -m kubernetes_validate is not installed");
    }
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
        .args(files.map(|f| repo("deploy/kubernetes").join(f)))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubernetes-validate:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn compose_puts_nginx_in_front_of_keygate_on_postgres_as_the_docs_say() {
    let compose = yaml("deploy/compose.yaml");
    let services = &compose["services"];
    let (keygate, postgres, nginx) = (&services["keygate"], &services["postgres"], &services["nginx"]);
    assert_eq!(text(&keygate["build"]["dockerfile"]), "deploy/Dockerfile");
    let env = keygate["environment"].as_hash().unwrap();
    let known = known_variables();
    for name in env.keys().map(text) {
        assert!(known.contains(name), "compose sets {name}, which keygate does not read");
    }
    let get = |name: &str| text(&keygate["environment"][name]).to_owned();
    assert_eq!(get("KEYGATE_LISTEN"), "0.0.0.0:8080", "reachable from nginx's container");
    assert!(keygate["ports"].as_vec().unwrap().iter().any(|p| text(p).ends_with(":8080:8080")));
    // keygate reaches PostgreSQL by its service name, as the user and database it creates.
    let url = get("KEYGATE_DATABASE_URL");
    let user = text(&postgres["environment"]["POSTGRES_USER"]);
    let db = text(&postgres["environment"]["POSTGRES_DB"]);
    assert_eq!(url, format!("postgres://{user}:${{POSTGRES_PASSWORD}}@postgres:5432/{db}"));
    assert_eq!(text(&keygate["depends_on"]["postgres"]["condition"]), "service_healthy");
    assert_eq!(text(&nginx["depends_on"]["keygate"]["condition"]), "service_healthy");

    // nginx runs the shipped gateway configuration with one line changed: its keygate
    // upstream, to the service name and the port keygate listens on.
    let volumes: Vec<&str> = nginx["volumes"].as_vec().unwrap().iter().map(text).collect();
    let docs_mount =
        volumes.iter().find(|v| v.starts_with("../docs/gateways/nginx.conf:")).expect("the docs config mounted");
    let inside = docs_mount.split(':').nth(1).unwrap();
    let command: Vec<&str> = nginx["command"].as_vec().unwrap().iter().map(text).collect();
    let script = command.last().unwrap();
    assert!(script.contains(&format!("sed 's/server 127.0.0.1:8080;/server keygate:8080;/' {inside}")), "{script}");
    let docs = read("docs/gateways/nginx.conf");
    assert_eq!(docs.matches("server 127.0.0.1:8080;").count(), 1, "the line the sed replaces");
    let upstream_keygate = docs.split("upstream keygate {").nth(1).unwrap();
    assert!(upstream_keygate.trim_start().starts_with("server 127.0.0.1:8080;"));
    // The stand-in app listens where the docs config sends what keygate lets through.
    let app_mount = volumes.iter().find(|v| v.starts_with("./compose/app.conf:")).unwrap();
    assert!(app_mount.contains(":/etc/nginx/conf.d/"));
    let app_upstream = docs.split("upstream app {").nth(1).unwrap().trim_start();
    let app_addr = app_upstream.strip_prefix("server ").unwrap().split(';').next().unwrap();
    assert!(read("deploy/compose/app.conf").contains(&format!("listen {app_addr};")), "app.conf is not at {app_addr}");

    // keygate's part, as compose gives it (the .env values made up), passes `config check`.
    let mut settings: BTreeMap<String, String> = BTreeMap::new();
    let master_key = random_master_key();
    for (name, value) in env {
        let value = text(value)
            .replace("${POSTGRES_PASSWORD}", "pw")
            .replace("${KEYGATE_MASTER_KEY:?set KEYGATE_MASTER_KEY in deploy/.env}", &master_key)
            .replace("${KEYGATE_ISSUER:-http://localhost:8080}", "http://localhost:8080")
            .replace("${KEYGATE_BOOTSTRAP_ADMIN_EMAIL:?set it in deploy/.env}", "ops@example.com")
            .replace("${KEYGATE_BOOTSTRAP_ADMIN_PASSWORD:?set it in deploy/.env}", "a long admin password");
        assert!(!value.contains('$'), "{}: {value}", text(name));
        settings.insert(text(name).to_owned(), value);
    }
    let (code, said) = config_check(&settings);
    assert_eq!(code, Some(0), "config check refuses compose's settings:\n{said}");

    // The docs say how the pieces connect.
    let operations = read("docs/operations.md");
    assert!(operations.contains("KEYGATE_LISTEN=0.0.0.0:8080"), "docs/operations.md must say so");

    // nginx accepts the two files as the container includes them.
    let Some(binary) = ["/usr/sbin/nginx", "/usr/local/sbin/nginx"].into_iter().find(|p| Path::new(p).exists()) else {
        return skipped("NGINX", "nginx is not installed; compose's nginx files were not checked");
    };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().display();
    // As root, nginx would hand its temp dirs to `nobody`; keep them ours.
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0);
    let user = if root { "user root;" } else { "" };
    let config = format!(
        "{user}\npid {p}/nginx.pid;\nerror_log {p}/error.log;\nevents {{}}\nhttp {{\naccess_log off;\n\
         client_body_temp_path {p}/b;\nproxy_temp_path {p}/p;\nfastcgi_temp_path {p}/f;\nuwsgi_temp_path {p}/u;\n\
         scgi_temp_path {p}/s;\ninclude {};\ninclude {};\n}}\n",
        repo("docs/gateways/nginx.conf").display(),
        repo("deploy/compose/app.conf").display()
    );
    std::fs::write(dir.path().join("nginx.conf"), config).unwrap();
    let out = Command::new(binary)
        .arg("-t")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .output()
        .unwrap();
    assert!(out.status.success(), "nginx -t:\n{}", String::from_utf8_lossy(&out.stderr));
}
