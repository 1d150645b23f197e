//! Tandem: a rules host for alerting and notification servers.
//!
//! Rules are WebAssembly modules (ABI v1, see `tandem-guest`) run against a
//! stream of signals, only on the node that is the effective primary of a
//! primary/secondary pair.
//!
//! # Layout
//! Leaves first; a module uses only those above it in this list.
//! - [`config`]: the TOML file, parsed raw, then validated into
//!   [`config::Config`]; owns the types others need from it (pair role,
//!   failback, the daily sync time, compiled channel matchers).
//! - [`shutdown`]: one shutdown signal handed to every task.
//! - [`clock`]: CLOCK_BOOTTIME, the clock of fencing deadlines.
//! - [`escape`]: control characters escaped for logs; a log rate limiter.
//! - [`metrics`]: every metric, on `prometheus-client`; knows nothing of
//!   the host (values from elsewhere come in as plain numbers).
//! - [`engine`]: compile rule modules, keep one instance per rule,
//!   dispatch signals under a deadline, a memory cap and a cap on the runs
//!   one signal may cause; [`engine::names`] holds the naming rules. Gated,
//!   knows nothing of failover or the store.
//! - [`store`]: SQLite (WAL), migrations on `PRAGMA user_version`, one
//!   writer and one reader, never on an executor thread.
//! - [`http_client`]: the one way outgoing HTTP(S) clients are built
//!   (timeouts, the system's roots plus a CA file).
//! - [`internal_auth`]: signing and checking node-to-node calls (nonces
//!   kept in the store); the constant-time secret comparison.
//! - [`net`]: the admin listener's timeouts, connection cap and accept
//!   backoff.
//! - [`node`]: the pipeline (ingest, replay, reload, notify), delivery to
//!   sinks, the rules directory watcher.
//! - [`failover`]: the pair: pure state machine, authenticated link,
//!   driver; reaches the engine only through the gate and the node.
//! - [`cluster`]: a cluster member on etcd: membership, ownership per
//!   group, self-fencing; reaches the engine only through the gate (per
//!   group, with a deadline) and the node.
//! - [`sync`]: table sync: snapshots, push, receive, triggers.
//! - [`admin`]: the HTTP API, `app(node) -> Router`, one file per
//!   resource.
//! - [`server`]: `tandem serve`: wires node, workers and listeners.
//! - [`cli`]: the `tandem` command line; `main.rs` only calls into it.
//!
//! A signal's walk: `admin` (HTTP) -> `node` (validate, then one store
//! write transaction) -> `engine`, inside that transaction (index, gate,
//! guest call) -> `node` (event rows, executed keys, outbox rows, commit)
//! -> reply -> `node::delivery` (webhook, log), after the commit.

pub mod admin;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod engine;
pub mod escape;
pub mod failover;
pub mod http_client;
pub mod internal_auth;
pub mod metrics;
pub mod net;
pub mod node;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod sync;
