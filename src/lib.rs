//! keygate: API keys in, signed JWTs out, and gateways that can trust them.
//!
//! - `config`: typed settings; `telemetry`: logging
//! - `domain`: parsed value types, no I/O
//! - `crypto`: hashing, secrets, signing keys; no HTTP, no storage
//! - `store`: persistence traits and their backends
//! - `service`: what keygate does, in domain terms
//! - `http`: routes, errors, middleware; `listener`: connections, their limits and timeouts
//! - `startup`: wiring it all together
//! - `cli`: the command line

pub mod cli;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod fuzzing;
pub mod http;
pub mod listener;
pub mod service;
pub mod startup;
pub mod store;
pub mod telemetry;
