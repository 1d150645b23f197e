//! Primary/secondary failover (DESIGN.md §4).
//!
//! - [`machine`]: the pure state machine; no I/O.
//! - [`link`]: the TCP link: framing, HMAC handshake, MAC on every frame.
//! - [`peer`]: drives the machine from the check timer, the link and
//!   operator commands, and carries out its effects (persist FS, open and
//!   close the gate, raise FAILOVER-ON/OFF, failover log).
//! - [`wire`]: the rows the link carries, apart from the store's.
//!
//! Failover reaches the engine only through the [`crate::engine::Gate`].

pub mod link;
pub mod machine;
pub mod peer;
pub mod wire;

pub use peer::{Handle, View};
