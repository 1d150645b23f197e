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
//! - [`failover`]: the pair: pure state machine, authenticated link,
//!   driver; reaches the engine only through the gate.
//! - [`sync`]: table sync snapshots (export, import, signatures).
//! - [`node`]: the pipeline (signal -> store -> engine -> outbox), the
//!   reload loop, delivery to sinks, the rules directory watcher.
//! - [`admin`]: the HTTP API, `app(node) -> Router`.
//! - [`server`]: `tandem serve`: wires node, workers and listener.
//! - [`metrics`], [`shutdown`]: leaves used by the above.
//! - [`cli`]: the `tandem` command line; `main.rs` only calls into it.
//!
//! A signal's walk: `admin` (HTTP) -> `node` (engine, then one store
//! transaction) -> `engine` (index, gate, guest call) -> `node` (actions
//! into the outbox) -> `node::delivery` (webhook, log).

pub mod admin;
pub mod cli;
pub mod config;
pub mod engine;
pub mod escape;
pub mod failover;
pub mod internal_auth;
pub mod metrics;
pub mod net;
pub mod node;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod sync;
