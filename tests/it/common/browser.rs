//! Real headless Chromium, driven by the Node script tests/console/console.mjs (Playwright's
//! client and axe-core, from tests/console/package-lock.json) against a server of the test.
//!
//! Without Chromium, Node or the installed packages, `Browser::find` prints
//! `SKIPPED-CHROMIUM: …` and the test passes; `.ci/run` installs all three and fails on that
//! line.

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use super::TestApp;

/// How long one scenario may take before it counts as hung (Chromium on a busy machine is
/// slow to start, and every axe run reads the whole page).
const LIMIT: Duration = Duration::from_secs(300);

pub struct Browser {
    node: PathBuf,
    chromium: PathBuf,
    dir: PathBuf,
}

impl Browser {
    /// The tools, or `None` with the notice that says which is missing.
    pub fn find() -> Option<Browser> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console");
        let chromium =
            ["/usr/bin/chromium", "/usr/bin/chromium-browser"].map(PathBuf::from).into_iter().find(|p| p.is_file());
        let node = on_path("node");
        let packages = ["playwright-core", "axe-core"].iter().all(|p| dir.join("node_modules").join(p).is_dir());
        let missing = match (&chromium, &node, packages) {
            (None, ..) => "no Chromium (apt-get install chromium)",
            (_, None, _) => "no Node.js (apt-get install nodejs npm)",
            (.., false) => "the test's npm packages are not installed (npm ci --prefix tests/console)",
            (Some(chromium), Some(node), true) => {
                return Some(Browser { node: node.clone(), chromium: chromium.clone(), dir });
            }
        };
        println!("SKIPPED-CHROMIUM: {missing}; the console's browser test did not run");
        None
    }

    /// Runs `scenario` of console.mjs against `app`, signing in as the bootstrap admin;
    /// `env` adds settings the scenario reads. Fails the test if the script fails or hangs,
    /// with everything it printed.
    pub fn run(&self, scenario: &str, app: &TestApp, env: &[(&str, &str)]) {
        let mut child = Command::new(&self.node)
            .arg("console.mjs")
            .arg(scenario)
            .current_dir(&self.dir)
            .env("KEYGATE_URL", &app.base)
            .env("KEYGATE_EMAIL", super::ADMIN_EMAIL)
            .env("KEYGATE_PASSWORD", super::ADMIN_PASSWORD)
            .env("CHROMIUM", &self.chromium)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start node");
        // Read as it comes, so that a chatty script never blocks on a full pipe.
        let drain = |mut pipe: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = pipe.read_to_string(&mut text);
                text
            })
        };
        let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
        let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
        let deadline = Instant::now() + LIMIT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
        println!("{stdout}");
        let report = format!("stdout:\n{stdout}\nstderr:\n{stderr}\nserver log:\n{}", app.logs());
        match status {
            None => panic!("console.mjs {scenario} still running after {LIMIT:?}\n{report}"),
            Some(status) => assert!(status.success(), "console.mjs {scenario} failed ({status})\n{report}"),
        }
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths).map(|p| p.join(name)).find(|p| p.is_file())
}
