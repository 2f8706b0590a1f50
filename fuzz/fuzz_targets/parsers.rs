//! Every string parser keygate applies to outside input (login JSON, keys, passwords,
//! emails, key refs, origins, proxy lists, X-Forwarded-For, cookies): never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| keygate::fuzzing::parsers(data));
