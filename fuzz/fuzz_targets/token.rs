//! Token parsing and verification: any input, never a panic, and nothing verifies but the
//! one token the harness signed.
#![no_main]

use std::sync::OnceLock;

use keygate::fuzzing::Tokens;
use libfuzzer_sys::fuzz_target;

static TOKENS: OnceLock<Tokens> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let tokens = TOKENS.get_or_init(Tokens::new);
    let Ok(text) = std::str::from_utf8(data) else { return };
    if tokens.verify(text) {
        assert_eq!(text, tokens.valid, "a token the harness did not sign verified");
    }
    // The valid token with the input spliced in: mutations that keep the structure.
    let mut spliced = tokens.valid.clone();
    let at = data.first().map_or(0, |&b| usize::from(b) % spliced.len());
    spliced.insert_str(at, text);
    if tokens.verify(&spliced) {
        assert_eq!(spliced, tokens.valid);
    }
});
