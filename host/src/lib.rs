//! Tandem: a rules host for alerting and notification servers.
//!
//! Rules are WebAssembly modules (ABI v1, see `tandem-guest`) run against a
//! stream of signals, only on the node that is the effective primary of a
//! primary/secondary pair.
//!
//! # Layout
//! - [`engine`]: compile rule modules, keep one instance per rule, dispatch
//!   signals under a deadline and a memory cap; gated, knows nothing of
//!   failover.
//! - [`config`]: the TOML file, parsed raw, then validated into [`config::Config`].
//! - [`store`]: SQLite (WAL), migrations on `PRAGMA user_version`, the
//!   rule and script tables; never on an executor thread.
//! - [`cli`]: the `tandem` command line; `main.rs` only calls into it.

pub mod cli;
pub mod config;
pub mod engine;
pub mod store;
