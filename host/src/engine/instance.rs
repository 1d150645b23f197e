//! One live instance of a rule: its store, memory and typed exports, and the
//! host side of a call (input buffer, deadline, result code, trap
//! classification).

use std::sync::Arc;
use std::time::Duration;

use tandem_guest::Action;
use tandem_guest::abi::{DECODE_ERROR, OK, RULE_ERROR};
use wasmtime::{Store, Trap, TypedFunc};

use super::limits::{LimitHit, Limiter};
use super::linker::HostState;
use super::linker::LogBucket;
use super::{CallError, Engine, EngineError, Script};

/// The smallest input buffer the host asks a guest for.
const MIN_BUFFER: usize = 256;

/// A rule instance. Dropping it frees its memory back to the budget.
pub struct Instance {
    store: Store<HostState>,
    alloc: TypedFunc<i32, i32>,
    free: TypedFunc<(i32, i32), ()>,
    on_signal: TypedFunc<(i32, i32), i32>,
    /// The input buffer in guest memory: (ptr, capacity).
    buffer: Option<(i32, usize)>,
    deadline: Duration,
    deadline_ticks: u64,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("state", self.store.data())
            .field("buffer", &self.buffer)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl Instance {
    /// Instantiate `script` and run its `tandem_init` with `config` (a
    /// msgpack map; empty for none).
    pub(super) fn new(
        engine: &Engine,
        script: &Script,
        rule: &str,
        config: &[u8],
        deadline: Duration,
    ) -> Result<Instance, EngineError> {
        let inner = &engine.inner;
        let state = HostState {
            rule: Arc::from(rule),
            memory: None,
            out: Vec::new(),
            ends: Vec::new(),
            error: None,
            limiter: Limiter::new(inner.config.memory_limit, inner.budget.clone()),
            clock: inner.clock.clone(),
            emit_limits: inner.config.emit_limits,
            logs: LogBucket::new(inner.config.log_lines_per_second),
            stats: inner.stats.clone(),
        };
        let mut store = Store::new(&inner.wasm, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        let deadline_ticks = engine.deadline_ticks(deadline);
        store.set_epoch_deadline(deadline_ticks);

        let instance = script.pre.instantiate(&mut store).map_err(|e| {
            match store.data_mut().limiter.take_hit() {
                Some(LimitHit::Budget) => EngineError::Budget {
                    rule: rule.to_owned(),
                    budget: inner.budget.limit(),
                    used: inner.budget.used(),
                },
                Some(LimitHit::Cap) => EngineError::Instantiate {
                    rule: rule.to_owned(),
                    reason: format!(
                        "its initial memory exceeds the cap of {} bytes",
                        inner.config.memory_limit
                    ),
                },
                None => EngineError::Instantiate {
                    rule: rule.to_owned(),
                    reason: format!("{e:#}"),
                },
            }
        })?;
        let typed = |name: &str| EngineError::Abi {
            rule: rule.to_owned(),
            problem: format!("export `{name}` has the wrong type"),
        };
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| typed("memory"))?;
        store.data_mut().memory = Some(memory);
        let alloc = instance
            .get_typed_func::<i32, i32>(&mut store, "tandem_alloc")
            .map_err(|_| typed("tandem_alloc"))?;
        let free = instance
            .get_typed_func::<(i32, i32), ()>(&mut store, "tandem_free")
            .map_err(|_| typed("tandem_free"))?;
        let on_signal = instance
            .get_typed_func::<(i32, i32), i32>(&mut store, "tandem_on_signal")
            .map_err(|_| typed("tandem_on_signal"))?;
        let init = if script.has_init {
            Some(
                instance
                    .get_typed_func::<(i32, i32), i32>(&mut store, "tandem_init")
                    .map_err(|_| typed("tandem_init"))?,
            )
        } else {
            None
        };
        let mut this = Instance {
            store,
            alloc,
            free,
            on_signal,
            buffer: None,
            deadline,
            deadline_ticks,
        };
        if let Some(init) = init {
            this.invoke(Export::Init(&init), config)
                .map_err(|error| EngineError::Init {
                    rule: rule.to_owned(),
                    error,
                })?;
        }
        Ok(this)
    }

    /// The deadline of each call.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Linear memory this instance holds, in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.store.data().limiter.reserved()
    }

    /// Call `tandem_on_signal` with one encoded signal; returns the actions
    /// it emitted and how the call ended. A rule that returns an error keeps
    /// its actions; a trap has none. After an error for which
    /// [`CallError::is_trap`] holds, the instance must not be used again.
    pub fn call(&mut self, signal: &[u8]) -> (Vec<Action>, Result<(), CallError>) {
        let result = self.call_raw(signal);
        if result.as_ref().is_err_and(CallError::is_trap) {
            return (Vec::new(), result);
        }
        let mut actions = Vec::with_capacity(self.store.data().ends.len());
        for bytes in self.store.data().actions() {
            match tandem_guest::wire::decode::<Action>(bytes) {
                Ok(a) => actions.push(a),
                Err(e) => return (actions, Err(CallError::BadAction(e.to_string()))),
            }
        }
        (actions, result)
    }

    /// Call `tandem_on_signal` and leave the encoded actions in place
    /// (see [`Instance::encoded_actions`]).
    pub fn call_raw(&mut self, signal: &[u8]) -> Result<(), CallError> {
        self.invoke(Export::OnSignal, signal)
    }

    /// The encoded actions of the last call.
    pub fn encoded_actions(&self) -> impl Iterator<Item = &[u8]> {
        self.store.data().actions()
    }

    fn invoke(&mut self, f: Export<'_>, input: &[u8]) -> Result<(), CallError> {
        self.store.set_epoch_deadline(self.deadline_ticks);
        self.store.data_mut().reset_call();
        let result = self.write_input(input).and_then(|ptr| {
            // Borrowed, not cloned: a `TypedFunc` clone costs a type
            // registry clone and drop, a tenth of a light rule's call.
            let f = match f {
                Export::Init(f) => f,
                Export::OnSignal => &self.on_signal,
            };
            f.call(&mut self.store, (ptr, len_i32(input.len())?))
                .map_err(|e| self.classify(e))
        })?;
        let state = self.store.data_mut();
        match result {
            OK => Ok(()),
            RULE_ERROR => Err(CallError::Rule(
                state.error.take().unwrap_or_else(|| "(no message)".into()),
            )),
            DECODE_ERROR => Err(CallError::Decode(
                state.error.take().unwrap_or_else(|| "(no message)".into()),
            )),
            other => Err(CallError::BadReturn(other)),
        }
    }

    /// Put `input` in the guest's buffer, growing it when needed; returns the
    /// pointer.
    fn write_input(&mut self, input: &[u8]) -> Result<i32, CallError> {
        let ptr = match self.buffer {
            Some((ptr, cap)) if cap >= input.len() => ptr,
            old => {
                if let Some((ptr, cap)) = old {
                    self.buffer = None;
                    self.free
                        .call(&mut self.store, (ptr, len_i32(cap)?))
                        .map_err(|e| self.classify(e))?;
                }
                let cap = input.len().max(MIN_BUFFER).next_power_of_two();
                let ptr = self
                    .alloc
                    .call(&mut self.store, len_i32(cap)?)
                    .map_err(|e| self.classify(e))?;
                if ptr == 0 {
                    return Err(CallError::Trap(format!(
                        "tandem_alloc({cap}) returned null (out of memory?)"
                    )));
                }
                self.buffer = Some((ptr, cap));
                ptr
            }
        };
        let Some(memory) = self.store.data().memory else {
            return Err(CallError::Trap("instance has no memory".into()));
        };
        memory
            .write(&mut self.store, ptr as u32 as usize, input)
            .map_err(|_| {
                CallError::Trap(format!(
                    "tandem_alloc returned {ptr}, outside the guest's memory"
                ))
            })?;
        Ok(ptr)
    }

    /// Turn a wasmtime error from a call into what happened.
    fn classify(&mut self, err: wasmtime::Error) -> CallError {
        let state = self.store.data_mut();
        if let Some(hit) = state.limiter.take_hit() {
            return match hit {
                LimitHit::Cap => CallError::MemoryLimit {
                    limit: state.limiter.cap(),
                },
                LimitHit::Budget => CallError::MemoryBudget,
            };
        }
        if err.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            return CallError::Deadline(self.deadline);
        }
        if let Some(panic) = state.error.take() {
            return CallError::Panic(panic);
        }
        // Wasmtime wraps the cause in a backtrace context; the root cause is
        // what happened ("wasm trap: integer divide by zero", or a host
        // import's own message).
        CallError::Trap(err.root_cause().to_string())
    }
}

/// Which export [`Instance::invoke`] calls.
enum Export<'a> {
    Init(&'a TypedFunc<(i32, i32), i32>),
    OnSignal,
}

fn len_i32(len: usize) -> Result<i32, CallError> {
    i32::try_from(len).map_err(|_| CallError::Trap(format!("input of {len} bytes is too large")))
}
