//! Every integration test, in one binary (linked once): a module per feature, one harness.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

mod access_log;
mod admins;
mod bad_input;
mod bounds;
mod cache;
mod caddy;
mod connections;
mod console;
mod contract;
mod gateway;
mod keys;
mod lifecycle;
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
mod upgrade;
