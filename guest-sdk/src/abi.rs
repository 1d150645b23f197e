//! Guest ABI v1: what [`export_rule!`](crate::export_rule) expands to.
//!
//! `docs/abi.md` specifies the ABI byte for byte; in short:
//!
//! | export | signature | role |
//! |---|---|---|
//! | `memory` | | the guest's linear memory |
//! | `tandem_abi_v1` | `() -> ()` | marker, never called |
//! | `tandem_alloc` | `(len: i32) -> i32` | allocate `len` bytes for the host |
//! | `tandem_free` | `(ptr: i32, len: i32)` | free what `tandem_alloc` gave |
//! | `tandem_init` | `(ptr: i32, len: i32) -> i32` | config (msgpack map) |
//! | `tandem_on_signal` | `(ptr: i32, len: i32) -> i32` | one signal (msgpack map) |
//!
//! Imports (module `tandem`): `emit(ptr, len)`, `log(level, ptr, len)`,
//! `now_ms() -> i64`, `error(ptr, len)`. Return codes: [`OK`],
//! [`RULE_ERROR`], [`DECODE_ERROR`]. Default signal patterns live in the
//! custom section [`SIGNALS_SECTION`] as a msgpack array of strings.
//!
//! The one piece of logic both the wasm exports and the native harness run is
//! [`handle_signal`]: decode, call the rule, encode each action. The native
//! baseline in the host's benchmarks is therefore the same code, minus the
//! WebAssembly boundary.

use crate::view::SignalView;
use crate::wire::{self, Config};
use crate::{Clock, Ctx, Error, Rule};

/// `tandem_on_signal` / `tandem_init` result: success.
pub const OK: i32 = 0;
/// The rule returned an error; its text went through the `error` import.
pub const RULE_ERROR: i32 = 1;
/// The input could not be decoded; the reason went through `error`.
pub const DECODE_ERROR: i32 = 2;

/// The marker export that says "this module speaks ABI v1".
pub const MARKER_EXPORT: &str = "tandem_abi_v1";
/// The import module name.
pub const IMPORT_MODULE: &str = "tandem";
/// The custom section holding the default signal patterns.
pub const SIGNALS_SECTION: &str = "tandem.signals";
/// The custom section holding the rule's config keys ([`crate::Rule::CONFIG_KEYS`])
/// as a msgpack array of strings. Added to ABI v1 later, and optional: a
/// module without it (or with an empty array) declares no keys, and the
/// host then checks none.
pub const CONFIG_SECTION: &str = "tandem.config";

/// Why a call failed, before it became a return code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The input bytes were not a valid msgpack payload.
    Decode(String),
    /// The rule returned an error.
    Rule(Error),
}

impl CallError {
    /// The ABI return code for this error.
    pub fn code(&self) -> i32 {
        match self {
            CallError::Decode(_) => DECODE_ERROR,
            CallError::Rule(_) => RULE_ERROR,
        }
    }

    /// The text reported through the `error` import.
    pub fn message(&self) -> String {
        match self {
            CallError::Decode(m) => format!("could not decode input: {m}"),
            CallError::Rule(e) => e.to_string(),
        }
    }
}

/// Decode a config payload (an empty payload is an empty config) and build
/// the rule.
pub fn init_rule<R: Rule>(input: &[u8]) -> Result<R, CallError> {
    let config = if input.is_empty() {
        Config::new()
    } else {
        wire::decode::<Config>(input).map_err(|e| CallError::Decode(e.to_string()))?
    };
    R::init(&config).map_err(CallError::Rule)
}

/// Decode one signal, run the rule, and hand each action, a msgpack map,
/// to `emit`. `buf` is the actions' buffer, reused across calls.
///
/// Actions are emitted only after the rule returned (`Ok` or `Err`): a call
/// that panics emits nothing.
pub fn handle_signal<R: Rule>(
    rule: &mut R,
    input: &[u8],
    clock: Clock,
    buf: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]),
) -> Result<(), CallError> {
    // Borrowed from `input`: only the fields the rule asks for are read.
    let signal = SignalView::parse(input).map_err(|e| CallError::Decode(e.to_string()))?;
    let mut ctx = Ctx::with_buffer(clock, std::mem::take(buf));
    let result = rule.on_signal(&signal, &mut ctx);
    ctx.encoded().for_each(&mut emit);
    *buf = ctx.into_buffer();
    result.map_err(CallError::Rule)
}

/// The host's clock, in ms since the Unix epoch (natively: the system clock).
pub fn host_now_ms() -> i64 {
    #[cfg(target_arch = "wasm32")]
    {
        // SAFETY: an import with no arguments and a plain integer result.
        unsafe { imports::now_ms() }
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }
}

/// Write to the host's log right away (not recorded in the event log; use
/// [`Ctx::log`] for that). Natively, writes to stderr.
pub fn host_log(level: crate::Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    {
        // SAFETY: ptr/len describe a live &str for the duration of the call;
        // the host copies the bytes before returning.
        unsafe { imports::log(level as i32, message.as_ptr(), message.len()) }
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        eprintln!("[{level:?}] {message}");
    }
}

/// Report an error text to the host (the `error` import).
pub fn report_error(message: &str) {
    #[cfg(target_arch = "wasm32")]
    {
        // SAFETY: as for `host_log`.
        unsafe { imports::error(message.as_ptr(), message.len()) }
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = message;
    }
}

/// Length of the msgpack array of `patterns` (see [`encode_section`]).
pub const fn section_len(patterns: &[&str]) -> usize {
    let mut len = array_header_len(patterns.len());
    let mut i = 0;
    while i < patterns.len() {
        let n = patterns[i].len();
        len += str_header_len(n) + n;
        i += 1;
    }
    len
}

/// The msgpack array of `patterns`, computed at compile time for the
/// `tandem.signals` custom section. `N` must be [`section_len`]`(patterns)`.
pub const fn encode_section<const N: usize>(patterns: &[&str]) -> [u8; N] {
    let mut out = [0u8; N];
    let count = patterns.len();
    let mut at = if count < 16 {
        out[0] = 0x90 | count as u8;
        1
    } else {
        assert!(count <= u16::MAX as usize, "too many signal patterns");
        out[0] = 0xdc;
        out[1] = (count >> 8) as u8;
        out[2] = count as u8;
        3
    };
    let mut i = 0;
    while i < count {
        let bytes = patterns[i].as_bytes();
        let n = bytes.len();
        if n < 32 {
            out[at] = 0xa0 | n as u8;
            at += 1;
        } else if n < 256 {
            out[at] = 0xd9;
            out[at + 1] = n as u8;
            at += 2;
        } else {
            assert!(n <= u16::MAX as usize, "signal pattern too long");
            out[at] = 0xda;
            out[at + 1] = (n >> 8) as u8;
            out[at + 2] = n as u8;
            at += 3;
        }
        let mut j = 0;
        while j < n {
            out[at] = bytes[j];
            at += 1;
            j += 1;
        }
        i += 1;
    }
    assert!(at == N, "section length mismatch");
    out
}

const fn array_header_len(count: usize) -> usize {
    if count < 16 { 1 } else { 3 }
}

const fn str_header_len(n: usize) -> usize {
    if n < 32 {
        1
    } else if n < 256 {
        2
    } else {
        3
    }
}

#[cfg(target_arch = "wasm32")]
mod imports {
    #[link(wasm_import_module = "tandem")]
    unsafe extern "C" {
        #[link_name = "emit"]
        pub fn emit(ptr: *const u8, len: usize);
        #[link_name = "log"]
        pub fn log(level: i32, ptr: *const u8, len: usize);
        #[link_name = "now_ms"]
        pub fn now_ms() -> i64;
        #[link_name = "error"]
        pub fn error(ptr: *const u8, len: usize);
    }
}

/// Runtime pieces the macro expansion calls. Not a stable API.
#[doc(hidden)]
#[cfg(target_arch = "wasm32")]
pub mod __private {
    use std::cell::RefCell;
    use std::thread::LocalKey;

    use super::{CallError, OK, imports};
    use crate::{Clock, Rule};

    pub use std::thread_local;

    /// Where the macro keeps the rule's one instance.
    pub type Slot<R> = LocalKey<RefCell<Option<R>>>;

    thread_local! {
        static OUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }

    fn install_panic_hook() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                let payload = info.payload();
                let what = payload
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("(non-string panic payload)");
                let message = match info.location() {
                    Some(l) => format!(
                        "panicked at {}:{}:{}: {what}",
                        l.file(),
                        l.line(),
                        l.column()
                    ),
                    None => format!("panicked: {what}"),
                };
                super::report_error(&message);
            }));
        });
    }

    pub fn alloc(len: i32) -> i32 {
        let mut buf = Vec::<u8>::with_capacity(len.max(0) as usize);
        let ptr = buf.as_mut_ptr();
        std::mem::forget(buf);
        ptr as i32
    }

    /// # Safety
    /// `ptr`/`len` must come from one earlier `alloc(len)`.
    pub unsafe fn free(ptr: i32, len: i32) {
        if ptr != 0 {
            // SAFETY: by the caller's contract this is the allocation `alloc`
            // leaked, with capacity `len`.
            drop(unsafe { Vec::from_raw_parts(ptr as *mut u8, 0, len.max(0) as usize) });
        }
    }

    /// # Safety
    /// `ptr`/`len` must describe readable guest memory.
    unsafe fn input<'a>(ptr: i32, len: i32) -> &'a [u8] {
        if len <= 0 {
            &[]
        } else {
            // SAFETY: by the caller's contract.
            unsafe { std::slice::from_raw_parts(ptr as *const u8, len as usize) }
        }
    }

    fn fail(err: CallError) -> i32 {
        super::report_error(&err.message());
        err.code()
    }

    /// # Safety
    /// `ptr`/`len` must describe readable guest memory.
    pub unsafe fn init<R: Rule>(slot: &'static Slot<R>, ptr: i32, len: i32) -> i32 {
        install_panic_hook();
        // SAFETY: forwarded from the export's contract with the host.
        match super::init_rule::<R>(unsafe { input(ptr, len) }) {
            Ok(rule) => {
                slot.with(|s| *s.borrow_mut() = Some(rule));
                OK
            }
            Err(e) => fail(e),
        }
    }

    /// # Safety
    /// `ptr`/`len` must describe readable guest memory.
    pub unsafe fn on_signal<R: Rule>(slot: &'static Slot<R>, ptr: i32, len: i32) -> i32 {
        install_panic_hook();
        // SAFETY: forwarded from the export's contract with the host.
        let bytes = unsafe { input(ptr, len) };
        slot.with(|s| {
            let mut s = s.borrow_mut();
            if s.is_none() {
                match super::init_rule::<R>(&[]) {
                    Ok(rule) => *s = Some(rule),
                    Err(e) => return fail(e),
                }
            }
            let Some(rule) = s.as_mut() else {
                return fail(CallError::Rule("rule not initialised".into()));
            };
            OUT.with(|out| {
                let mut out = out.borrow_mut();
                let result = super::handle_signal(rule, bytes, Clock::Host, &mut out, |action| {
                    // SAFETY: `action` is a live slice; the host copies it.
                    unsafe { imports::emit(action.as_ptr(), action.len()) }
                });
                match result {
                    Ok(()) => OK,
                    Err(e) => fail(e),
                }
            })
        })
    }
}

/// Export a [`Rule`](crate::Rule) type as a Tandem v1 module.
///
/// On `wasm32` this generates the exports of ABI v1 and the `tandem.signals`
/// custom section from `Rule::SIGNALS`. On other targets it only checks
/// that the type is a rule, so the same crate builds natively for tests
/// and benchmarks.
#[macro_export]
macro_rules! export_rule {
    ($rule:ty) => {
        // A pattern the node would refuse fails the build, saying what is
        // allowed.
        const _: () = $crate::names::check_signals(<$rule as $crate::Rule>::SIGNALS);

        #[cfg(target_arch = "wasm32")]
        const _: () = {
            $crate::abi::__private::thread_local! {
                static TANDEM_RULE: ::core::cell::RefCell<::core::option::Option<$rule>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn tandem_abi_v1() {}

            #[unsafe(no_mangle)]
            pub extern "C" fn tandem_alloc(len: i32) -> i32 {
                $crate::abi::__private::alloc(len)
            }

            /// # Safety
            /// Called by the host with a pointer from `tandem_alloc`.
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn tandem_free(ptr: i32, len: i32) {
                unsafe { $crate::abi::__private::free(ptr, len) }
            }

            /// # Safety
            /// Called by the host with a buffer it wrote.
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn tandem_init(ptr: i32, len: i32) -> i32 {
                unsafe { $crate::abi::__private::init::<$rule>(&TANDEM_RULE, ptr, len) }
            }

            /// # Safety
            /// Called by the host with a buffer it wrote.
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn tandem_on_signal(ptr: i32, len: i32) -> i32 {
                unsafe { $crate::abi::__private::on_signal::<$rule>(&TANDEM_RULE, ptr, len) }
            }

            #[used]
            #[unsafe(link_section = "tandem.signals")]
            static TANDEM_SIGNALS: [u8; $crate::abi::section_len(
                <$rule as $crate::Rule>::SIGNALS,
            )] = $crate::abi::encode_section(<$rule as $crate::Rule>::SIGNALS);

            #[used]
            #[unsafe(link_section = "tandem.config")]
            static TANDEM_CONFIG_KEYS: [u8; $crate::abi::section_len(
                <$rule as $crate::Rule>::CONFIG_KEYS,
            )] = $crate::abi::encode_section(<$rule as $crate::Rule>::CONFIG_KEYS);
        };

        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            fn tandem_assert_rule<R: $crate::Rule>() {}
            let _ = tandem_assert_rule::<$rule>;
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_is_a_msgpack_string_array() {
        const P: &[&str] = &["FAILOVER-ON", "DOOR-*-OPEN"];
        const BYTES: [u8; section_len(P)] = encode_section(P);
        let decoded: Vec<String> = rmp_serde::from_slice(&BYTES).unwrap();
        assert_eq!(decoded, P);
    }

    #[test]
    fn section_handles_long_patterns_and_many_entries() {
        let long = "A".repeat(300);
        let mid = "B".repeat(40);
        let mut patterns: Vec<&str> = vec![&long, &mid];
        patterns.extend(std::iter::repeat_n("X", 20));
        let mut out = vec![0u8; section_len(&patterns)];
        // Runtime check of the const encoder through a fixed-size wrapper.
        fn enc<const N: usize>(p: &[&str]) -> [u8; N] {
            encode_section(p)
        }
        assert_eq!(out.len(), 3 + 3 + 300 + 2 + 40 + 20 * 2);
        out.copy_from_slice(&enc::<388>(&patterns));
        let decoded: Vec<String> = rmp_serde::from_slice(&out).unwrap();
        assert_eq!(decoded, patterns);
    }

    #[test]
    fn empty_section_is_an_empty_array() {
        assert_eq!(encode_section::<1>(&[]), [0x90]);
    }
}
