//! keygate: API keys in, signed JWTs out, and gateways that can trust them.
//!
//! - `config`: typed settings; `telemetry`: logging; `monitoring`: Prometheus metrics; `clock`:
//!   the time, as a parameter
//! - `domain`: parsed value types, no I/O
//! - `crypto`: hashing, secrets, signing keys; no HTTP, no storage
//! - `store`: narrow persistence traits; one SQL implementation for SQLite and PostgreSQL
//!   (`store::sql`, the differences behind its dialect seam); the hot-path cache in parts
//!   (`store::cache`)
//! - `service`: what keygate does, in domain terms
//! - `http`: every API route with its OpenAPI entry and the tower layers, in `http::app`; the
//!   one error type; the admin console's pages (`http::console`); `listener`: connections,
//!   their limits and timeouts; `tls`: the listener's certificate, reloaded while it serves
//! - `startup`: wiring it all together; `bootstrap`: what a first start creates;
//!   `runtime`: the async runtime the server runs on
//! - `cli`: the command line

pub mod bootstrap;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod fuzzing;
pub mod http;
pub mod listener;
pub mod monitoring;
pub mod runtime;
pub mod service;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tls;
