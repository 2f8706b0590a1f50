//! The admin console: what its pages are made of and the headers they carry, checked here;
//! and an admin's use of it in real headless Chromium (tests/console/console.mjs, through
//! `common::browser`): the key lifecycle from sign-in to sign-out with axe-core's
//! accessibility check, and every kind of error said in words.
//!
//! `KEYGATE_CONSOLE_SCREENSHOTS=1 cargo test --test it console::` also writes the README's
//! screenshots to docs/images/.

use std::path::Path;

use reqwest::{Client, StatusCode, redirect::Policy};

use crate::common::{Builder, TestApp, browser::Browser, cookie_client};

/// An admin signs in, generates a key with a name, a scope and an expiry (with the keyboard
/// alone), copies its password from the dialog that shows it once, finds it in the table,
/// logs in with it, rolls it (both passwords work in the grace period), edits it, disables
/// it (its login fails), deletes it, finds all that in the audit log, searches and pages
/// through keys at desktop width and at 360 px, and signs out; the session is then dead on
/// the server. No console error, CSP violation or serious accessibility violation.
#[tokio::test]
async fn an_admin_manages_a_key_from_sign_in_to_sign_out_in_chromium() {
    let Some(browser) = Browser::find() else { return };
    // Chromium takes both cores for seconds: the tests that judge bursts against bounds
    // should not share them with it.
    let app = Builder::sqlite().alone().spawn().await;
    let images = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/images");
    let screenshots = std::env::var_os("KEYGATE_CONSOLE_SCREENSHOTS").is_some_and(|v| !v.is_empty());
    let images = images.display().to_string();
    let env: &[(&str, &str)] = if screenshots { &[("SCREENSHOTS", &images)] } else { &[] };
    browser.run("lifecycle", &app, env);
}

/// A wrong password, a lockout with its wait, a refused generate (422), a bad page of the
/// list (400) and an ended session, each shown as a sentence, never as a problem document.
#[tokio::test]
async fn the_console_says_what_went_wrong_in_words_in_chromium() {
    let Some(browser) = Browser::find() else { return };
    let app = Builder::sqlite().env("KEYGATE_LOCKOUT_THRESHOLD", "3").alone().spawn().await;
    browser.run("errors", &app, &[("KEYGATE_LOCKOUT_THRESHOLD", "3")]);
}

fn no_redirects() -> Client {
    Client::builder().redirect(Policy::none()).build().unwrap()
}

/// What the console's answers must carry, by directive rather than by the exact string.
fn assert_console_policy(response: &reqwest::Response, what: &str) {
    let h = response.headers();
    let csp = h.get("content-security-policy").unwrap_or_else(|| panic!("{what}: no CSP")).to_str().unwrap();
    let directives: Vec<&str> = csp.split(';').map(str::trim).collect();
    for wanted in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ] {
        assert!(directives.contains(&wanted), "{what}: CSP {csp:?} lacks {wanted}");
    }
    for loose in ["unsafe-inline", "unsafe-eval", "data:", "*", "http:", "https:"] {
        assert!(!csp.contains(loose), "{what}: CSP {csp:?} allows {loose}");
    }
    assert_eq!(h["x-frame-options"], "DENY", "{what}");
    assert_eq!(h["x-content-type-options"], "nosniff", "{what}");
}

/// The asset paths a page links.
fn assets(html: &str) -> Vec<String> {
    html.match_indices("/console/assets/").map(|(at, _)| html[at..].split('"').next().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn every_console_answer_carries_the_console_policy() {
    let app = TestApp::spawn().await;
    let c = no_redirects();
    let root = c.get(app.url("/")).send().await.unwrap();
    assert_eq!(root.status(), StatusCode::SEE_OTHER);
    assert_eq!(root.headers()["location"], "/console");
    assert_console_policy(&root, "/");
    for path in ["/console", "/console/audit", "/console?name=x&after=y&limit=z"] {
        let r = c.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8", "{path}");
        assert_eq!(r.headers()["cache-control"], "no-store", "{path}");
        assert_console_policy(&r, path);
    }
    let html = c.get(app.url("/console")).send().await.unwrap().text().await.unwrap();
    let linked = assets(&html);
    assert!(linked.iter().any(|a| a.ends_with(".js")) && linked.iter().any(|a| a.ends_with(".css")), "{linked:?}");
    for asset in &linked {
        let r = c.get(app.url(asset)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{asset}");
        assert_console_policy(&r, asset);
        assert_eq!(r.headers()["cache-control"], "public, max-age=31536000, immutable", "{asset}");
        let kind = r.headers()["content-type"].to_str().unwrap().to_owned();
        let expected = match asset.rsplit('.').next() {
            Some("js") => "text/javascript; charset=utf-8",
            Some("css") => "text/css; charset=utf-8",
            _ => "image/svg+xml",
        };
        assert_eq!(kind, expected, "{asset}");
    }
    // Only the names the page links are served: nothing else of the binary or the disk.
    for path in ["/console/assets/console.js", "/console/assets/..%2fCargo.toml", "/console/assets/"] {
        let r = c.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
    }
    // The API keeps its own, stricter policy.
    let api = c.get(app.url("/healthz")).send().await.unwrap();
    assert!(api.headers()["content-security-policy"].to_str().unwrap().contains("form-action 'none'"));
}

/// The page opens signed in for a live session, on the sign-in form for none, and on the
/// sign-in form with a notice for a session that has ended.
#[tokio::test]
async fn the_console_page_knows_whether_its_session_lives() {
    let app = TestApp::spawn().await;
    let page = |client: Client| {
        let url = app.url("/console");
        async move { client.get(url).send().await.unwrap().text().await.unwrap() }
    };
    const ENDED: &str = "Your session has ended. Sign in again.";

    let anonymous = page(Client::new()).await;
    assert!(anonymous.contains(r#"data-signed-in="false""#) && !anonymous.contains(ENDED));

    let (cookie, _) = app.admin_session_cookie().await;
    let live = page(cookie_client(&cookie)).await;
    assert!(live.contains(r#"data-signed-in="true""#) && !live.contains(ENDED));

    let r = cookie_client(&cookie).post(app.url("/auth/logout")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let ended = page(cookie_client(&cookie)).await;
    assert!(ended.contains(r#"data-signed-in="false""#) && ended.contains(ENDED), "{ended}");

    let forged = page(cookie_client("keygate_session=not-a-session")).await;
    assert!(forged.contains(r#"data-signed-in="false""#) && forged.contains(ENDED));
}
