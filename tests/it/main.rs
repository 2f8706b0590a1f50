//! Every integration test, in one binary (linked once): a module per feature, one harness.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

mod access_log;
mod admins;
mod backup;
mod bad_input;
mod bounds;
mod cache;
mod caddy;
mod cli;
mod connections;
mod console;
mod contract;
mod deploy;
mod gateway;
mod keys;
mod lifecycle;
mod limits;
mod load;
mod metrics;
mod migrate;
mod nginx;
mod outage;
mod paging;
mod replicas;
mod retention;
mod security;
mod shutdown;
mod signing_keys;
mod store;
mod store_cache;
mod tls;
mod upgrade;
