//! The `tandem` import module of ABI v1, added to a linker by one
//! [`add_to_linker`], and the per-instance [`HostState`] it works on.
//!
//! Every import reads guest memory only through bounds-checked slices: a
//! pointer or length outside the memory traps the call (the instance is then
//! discarded), it never reaches host memory.

use std::sync::Arc;

use tandem_guest::Level;
use wasmtime::{Caller, Linker, Memory};

use super::limits::Limiter;

/// Milliseconds since the Unix epoch, as the `now_ms` import reports them.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The most one `log` or `error` message may carry; longer ones are cut.
pub const MAX_MESSAGE: usize = 4096;

/// Limits on what one call may emit.
#[derive(Debug, Clone, Copy)]
pub struct EmitLimits {
    /// Actions per call.
    pub max_actions: usize,
    /// Bytes of all encoded actions of one call together.
    pub max_bytes: usize,
}

/// What the host keeps per instance (the wasmtime `Store` data).
pub struct HostState {
    /// The rule's name, for logs.
    pub rule: Arc<str>,
    /// The instance's memory, set once instantiation finished.
    pub memory: Option<Memory>,
    /// Encoded actions of the current call, back to back.
    pub out: Vec<u8>,
    /// End offset of each action in `out`.
    pub ends: Vec<usize>,
    /// The last text reported through `error` during the current call.
    pub error: Option<String>,
    /// Memory cap and budget accounting.
    pub limiter: Limiter,
    pub clock: Clock,
    pub emit_limits: EmitLimits,
    /// The rule's log rate limit.
    pub logs: LogBucket,
    pub stats: Arc<super::EngineStats>,
}

/// A token bucket for one rule's log lines: `rate` a second, bursts of
/// twice that. Lines past it are dropped and counted; the next line that
/// passes says how many were dropped.
#[derive(Debug)]
pub struct LogBucket {
    rate: f64,
    tokens: f64,
    last: std::time::Instant,
    dropped: u64,
}

impl LogBucket {
    pub fn new(rate: u32) -> LogBucket {
        let rate = f64::from(rate.max(1));
        LogBucket {
            rate,
            tokens: rate * 2.0,
            last: std::time::Instant::now(),
            dropped: 0,
        }
    }

    /// Whether a line may be written at `now`; `Some(n)` also says that
    /// `n` lines were dropped before it.
    fn take(&mut self, now: std::time::Instant) -> Result<u64, ()> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate * 2.0);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(std::mem::take(&mut self.dropped))
        } else {
            self.dropped += 1;
            Err(())
        }
    }
}

impl std::fmt::Debug for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostState")
            .field("rule", &self.rule)
            .field("actions", &self.ends.len())
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl HostState {
    /// Forget the previous call's actions and error.
    pub fn reset_call(&mut self) {
        self.out.clear();
        self.ends.clear();
        self.error = None;
    }

    /// The encoded actions of the last call.
    pub fn actions(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let slice = &self.out[start..end];
            start = end;
            slice
        })
    }
}

/// The import names v1 provides, for error messages.
pub const PROVIDED: &[&str] = &["emit", "log", "now_ms", "error"];

/// Copy `len` bytes at `ptr` out of the caller's memory into `dst` (via
/// `f`), trapping on a bad range.
fn with_guest_bytes<R>(
    caller: &mut Caller<'_, HostState>,
    what: &str,
    ptr: i32,
    len: i32,
    f: impl FnOnce(&[u8], &mut HostState) -> wasmtime::Result<R>,
) -> wasmtime::Result<R> {
    let memory = caller.data().memory.ok_or_else(|| {
        wasmtime::Error::msg(format!("`{what}` called before instantiation finished"))
    })?;
    let (data, state) = memory.data_and_store_mut(caller);
    let range = usize::try_from(ptr)
        .ok()
        .zip(usize::try_from(len).ok())
        .and_then(|(p, l)| Some(p..p.checked_add(l)?))
        .filter(|r| r.end <= data.len())
        .ok_or_else(|| {
            wasmtime::Error::msg(format!(
                "`{what}`: range {ptr}+{len} is outside the guest's memory"
            ))
        })?;
    f(&data[range], state)
}

fn message(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(MAX_MESSAGE)];
    String::from_utf8_lossy(cut).into_owned()
}

/// Add the `tandem` imports of ABI v1 to `linker`.
///
/// - `emit(ptr: i32, len: i32)`: one msgpack-encoded action. The host copies
///   the bytes before returning; the guest keeps ownership of its buffer.
///   More than `max_actions` actions, or more than `max_bytes` in all, in
///   one call traps it.
/// - `log(level: i32, ptr: i32, len: i32)`: a UTF-8 line for the node's log
///   (0 error, 1 warn, 2 info, 3 debug, 4 trace; others clamp). Copied; cut
///   at [`MAX_MESSAGE`] bytes. Not recorded in the event log.
/// - `now_ms() -> i64`: the host's clock, ms since the Unix epoch.
/// - `error(ptr: i32, len: i32)`: the text of an error the guest is about to
///   report by return code, or the panic message before a trap. Copied; the
///   last one of a call wins; cut at [`MAX_MESSAGE`] bytes.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "tandem",
        "emit",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| {
            with_guest_bytes(&mut caller, "emit", ptr, len, |bytes, state| {
                let limits = state.emit_limits;
                if state.ends.len() >= limits.max_actions {
                    return Err(wasmtime::Error::msg(format!(
                        "rule emitted more than {} actions in one call",
                        limits.max_actions
                    )));
                }
                if state.out.len() + bytes.len() > limits.max_bytes {
                    return Err(wasmtime::Error::msg(format!(
                        "rule emitted more than {} bytes of actions in one call",
                        limits.max_bytes
                    )));
                }
                state.out.extend_from_slice(bytes);
                state.ends.push(state.out.len());
                Ok(())
            })
        },
    )?;
    linker.func_wrap(
        "tandem",
        "log",
        |mut caller: Caller<'_, HostState>, level: i32, ptr: i32, len: i32| {
            with_guest_bytes(&mut caller, "log", ptr, len, |bytes, state| {
                let dropped = match state.logs.take(std::time::Instant::now()) {
                    Ok(dropped) => dropped,
                    Err(()) => {
                        state
                            .stats
                            .logs_dropped
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return Ok(());
                    }
                };
                let text = message(bytes);
                let text = crate::escape::log_safe(&text);
                let rule = &*state.rule;
                if dropped > 0 {
                    tracing::warn!(target: "tandem::rule", rule, dropped, "log lines dropped: over [rules] log_lines_per_second");
                }
                match Level::from_abi(level) {
                    Level::Error => tracing::error!(target: "tandem::rule", rule, "{text}"),
                    Level::Warn => tracing::warn!(target: "tandem::rule", rule, "{text}"),
                    Level::Info => tracing::info!(target: "tandem::rule", rule, "{text}"),
                    Level::Debug => tracing::debug!(target: "tandem::rule", rule, "{text}"),
                    Level::Trace => tracing::trace!(target: "tandem::rule", rule, "{text}"),
                }
                Ok(())
            })
        },
    )?;
    linker.func_wrap("tandem", "now_ms", |caller: Caller<'_, HostState>| {
        (caller.data().clock)()
    })?;
    linker.func_wrap(
        "tandem",
        "error",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| {
            with_guest_bytes(&mut caller, "error", ptr, len, |bytes, state| {
                state.error = Some(message(bytes));
                Ok(())
            })
        },
    )?;
    Ok(())
}
