//! Native test harness: run a rule without WebAssembly and get its actions.
//!
//! ```
//! # use tandem_guest::{Config, Ctx, Error, Rule, Signal, SignalView};
//! # struct Echo;
//! # impl Rule for Echo {
//! #     const SIGNALS: &'static [&'static str] = &["*"];
//! #     fn init(_: &Config) -> Result<Self, Error> { Ok(Echo) }
//! #     fn on_signal(&mut self, s: &SignalView<'_>, ctx: &mut Ctx) -> Result<(), Error> {
//! #         ctx.notify("x", s.name, ""); Ok(())
//! #     }
//! # }
//! use tandem_guest::testing::Harness;
//! let mut h = Harness::<Echo>::new(&Config::new()).unwrap();
//! h.set_now(1_000);
//! let notes = h.notifications(&Signal::new("PING")).unwrap();
//! assert_eq!(notes[0].subject, "PING");
//! ```
//!
//! Signals go through the same msgpack encoding and the same
//! [`handle_signal`](crate::abi::handle_signal) as inside WebAssembly, so a
//! rule that passes here decodes the same way on the host.

use crate::abi::{self, CallError};
use crate::wire::{self, Action, Config, Notify, Raise, Signal};
use crate::{Clock, Error, Rule};

/// One rule instance, driven natively.
#[derive(Debug)]
pub struct Harness<R: Rule> {
    rule: R,
    clock: Clock,
    buf: Vec<u8>,
}

impl<R: Rule> Harness<R> {
    /// Build the rule from `config`, as the host would (through msgpack).
    pub fn new(config: &Config) -> Result<Self, Error> {
        let bytes = wire::encode(config).map_err(|e| Error::new(e.to_string()))?;
        let rule = abi::init_rule::<R>(&bytes).map_err(|e| Error::new(e.message()))?;
        Ok(Harness {
            rule,
            clock: Clock::Host,
            buf: Vec::new(),
        })
    }

    /// Fix what `ctx.now()` returns.
    pub fn set_now(&mut self, now_ms: i64) {
        self.clock = Clock::Fixed(now_ms);
    }

    /// The rule itself, to inspect its state.
    pub fn rule(&self) -> &R {
        &self.rule
    }

    /// Run one signal; returns its actions, or the rule's error.
    pub fn signal(&mut self, signal: &Signal) -> Result<Vec<Action>, Error> {
        let input = wire::encode(signal).map_err(|e| Error::new(e.to_string()))?;
        let mut encoded = Vec::new();
        self.run_encoded(&input, &mut encoded)
            .map_err(|e| Error::new(e.message()))?;
        encoded
            .iter()
            .map(|bytes| wire::decode(bytes).map_err(|e| Error::new(e.to_string())))
            .collect()
    }

    /// Run one signal and keep only the notifications.
    pub fn notifications(&mut self, signal: &Signal) -> Result<Vec<Notify>, Error> {
        Ok(self
            .signal(signal)?
            .into_iter()
            .filter_map(|a| match a {
                Action::Notify(n) => Some(n),
                _ => None,
            })
            .collect())
    }

    /// Run one signal and keep only the signals it raised.
    pub fn raises(&mut self, signal: &Signal) -> Result<Vec<Raise>, Error> {
        Ok(self
            .signal(signal)?
            .into_iter()
            .filter_map(|a| match a {
                Action::Raise(r) => Some(r),
                _ => None,
            })
            .collect())
    }

    /// The raw path: msgpack bytes in, one msgpack buffer per action out,
    /// exactly what the WebAssembly exports do (used as the native baseline
    /// in benchmarks). `out` is cleared first.
    pub fn run_encoded(&mut self, input: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), CallError> {
        out.clear();
        abi::handle_signal(&mut self.rule, input, self.clock, &mut self.buf, |a| {
            out.push(a.to_vec())
        })
    }
}
