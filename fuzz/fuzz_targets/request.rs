//! Request decoding end to end: the real router on a temporary store, any method, route,
//! headers and body (with or without an admin session). Never a panic, never a 5xx.
#![no_main]

use std::sync::OnceLock;

use keygate::fuzzing::App;
use libfuzzer_sys::fuzz_target;

static APP: OnceLock<App> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let app = APP.get_or_init(|| App::new().expect("the fuzz harness starts"));
    let status = app.request(data);
    assert!(!status.is_server_error(), "{status} for {data:?}");
});
