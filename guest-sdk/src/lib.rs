//! The SDK for Tandem rules.
//!
//! A rule is a Rust type that implements [`Rule`], compiled to
//! `wasm32-unknown-unknown` and loaded by a Tandem node. Here is a complete
//! rule, the classic one: tell IT when the primary server went offline, and
//! again when it is back.
//!
//! ```
//! use tandem_guest::{export_rule, Config, Ctx, Error, Rule, Signal, SignalView};
//!
//! pub struct NotifyIt {
//!     to: String,
//! }
//!
//! impl Rule for NotifyIt {
//!     // Written to the module's `tandem.signals` section: the rule subscribes
//!     // to these unless its `signal_rule` row says otherwise.
//!     const SIGNALS: &'static [&'static str] = &["FAILOVER-ON", "FAILOVER-OFF"];
//!
//!     fn init(config: &Config) -> Result<Self, Error> {
//!         Ok(NotifyIt { to: config.str_or("to", "group:it")?.to_owned() })
//!     }
//!
//!     fn on_signal(&mut self, signal: &SignalView<'_>, ctx: &mut Ctx) -> Result<(), Error> {
//!         // A field of another type is an error naming it; `?` reports it.
//!         let primary = signal.str_field("primary")?.unwrap_or("the primary");
//!         match signal.name {
//!             "FAILOVER-ON" => ctx.notify(
//!                 &self.to,
//!                 format!("{primary} is offline"),
//!                 format!("The secondary took over: {}", signal.str_field("reason")?.unwrap_or("")),
//!             ),
//!             "FAILOVER-OFF" => ctx.notify(&self.to, format!("{primary} is back"), "Handback complete."),
//!             _ => {}
//!         }
//!         Ok(())
//!     }
//! }
//!
//! export_rule!(NotifyIt);
//!
//! // The native harness runs it without WebAssembly:
//! let mut rule = tandem_guest::testing::Harness::<NotifyIt>::new(&Config::new()).unwrap();
//! let actions = rule.notifications(&Signal::new("FAILOVER-ON").with_field("primary", "dev4120")).unwrap();
//! assert_eq!(actions[0].to, "group:it");
//! assert_eq!(actions[0].subject, "dev4120 is offline");
//! ```
//!
//! Build it with `cargo build --target wasm32-unknown-unknown --release`
//! (the crate is a `cdylib`) and drop the `.wasm` into the node's rules
//! directory, or `PUT` it to `/api/v1/scripts/NAME`.
//!
//! # Layout
//! - [`wire`]: the wire types host and guest share ([`Signal`], [`Value`],
//!   [`Action`], [`Config`]), msgpack maps.
//! - [`view`]: [`SignalView`], a signal borrowed from the input bytes,
//!   with typed field accessors that allocate nothing.
//! - `ctx`: [`Ctx`], through which a rule acts; each action is written
//!   once, as the msgpack the host reads.
//! - [`names`]: what a signal name or pattern may be, shared with the
//!   host and checked while a rule compiles.
//! - [`abi`]: the v1 ABI: [`export_rule!`] and what it expands to.
//! - [`testing`]: the native harness.
//!
//! # What a rule can rely on
//! - One long-lived instance per rule per node: `self` keeps state between
//!   signals. It is lost when the instance traps, when the rule's own script
//!   or config is reloaded, and at a failover (the other node has its own).
//! - `signal.replayed` is true when a node that just took over runs a
//!   signal it stored while standby; `signal.time` is then the original time.
//! - A panic is reported to the host with its message and location, the
//!   call's actions are dropped, and the next signal gets a fresh instance.

pub mod abi;
mod ctx;
pub mod names;
pub mod testing;
pub mod time;
pub mod view;
pub mod wire;

use std::fmt;

pub use ctx::{Clock, Ctx, Encoded, FieldValue, RaiseBuilder};
pub use view::{FieldError, SignalView};
pub use wire::{Action, Config, Fields, Level, Log, Notify, Raise, Signal, Timer, Value};

/// The ABI version this SDK implements (the `tandem_abi_v1` marker).
pub const ABI_VERSION: u32 = 1;

/// A rule: subscribe to signals, react with actions.
pub trait Rule: Sized + 'static {
    /// The signal name patterns the rule subscribes to by default: exact
    /// names or globs in which `*` matches any run of characters. The
    /// `signal_rule` row may override them.
    const SIGNALS: &'static [&'static str];

    /// The keys the rule's config may have, written to the module's
    /// `tandem.config` section. When it is not empty, the node refuses a
    /// config with any other key (a typo such as `too = ...` is an error
    /// naming the key and the ones allowed, not a silent default). Empty,
    /// the default, declares nothing and nothing is checked.
    const CONFIG_KEYS: &'static [&'static str] = &[];

    /// Build the rule from its config. Called once per instance. Every
    /// sample rule works with an empty config; do likewise.
    fn init(config: &Config) -> Result<Self, Error>;

    /// React to one signal, borrowed from the bytes the host sent
    /// ([`SignalView`]: fields are read on access, nothing is allocated).
    /// Actions go through `ctx`; they take effect only if this returns `Ok`
    /// or `Err` (not if it panics).
    fn on_signal(&mut self, signal: &SignalView<'_>, ctx: &mut Ctx) -> Result<(), Error>;
}

/// An error a rule reports. The host records its text in the event log; the
/// instance is kept (unlike a panic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl Error {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Error(message.into())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(s: String) -> Self {
        Error(s)
    }
}

impl From<&str> for Error {
    fn from(s: &str) -> Self {
        Error(s.to_owned())
    }
}
