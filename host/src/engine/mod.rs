//! The rule engine: compile rule modules, keep one instance per rule, and
//! dispatch signals to them under a deadline and a memory cap.
//!
//! The engine knows nothing of stores, HTTP or failover. It is told whether
//! to run rules by a [`Gate`] it is handed, and it returns what the rules
//! asked for ([`Outcome`]); the node decides what to do with it.
//!
//! - [`Engine`]: the shared, cloneable part: wasmtime, the `tandem` imports,
//!   the module cache, the memory budget and the epoch ticker.
//! - [`Script`]: a compiled, ABI-checked module ([`Engine::compile`]).
//! - [`RuleSet`]: the installed rules, their instances and the dispatch
//!   index; [`RuleSet::install`] reloads, keeping unchanged rules' state.
//! - [`Instance`]: one live instance, for direct calls (`tandem rule run`).

mod cache;
mod gate;
mod index;
mod instance;
mod limits;
mod linker;
mod module;
pub mod names;
mod ruleset;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tandem_guest::Config;
use wasmtime::{InstancePre, Linker, Module};

pub use cache::{Sha256Digest, sha256};
pub use gate::{CommitGuard, Gate, GateGuard};
pub use instance::Instance;
pub use limits::MemoryBudget;
pub use linker::{Clock, EmitLimits};
pub use module::debug_info_bytes;
pub use names::{valid_name, valid_pattern};
pub use ruleset::{
    Dispatch, InstallReport, Outcome, RuleRun, RuleSet, RuleSpec, RuleStatus, derive_key,
};

use cache::ModuleCache;
use linker::HostState;

/// Engine settings (the `[rules]` config section, validated).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Default per-call deadline; a rule may override it.
    pub deadline: Duration,
    /// Linear memory cap of one instance, in bytes.
    pub memory_limit: usize,
    /// Linear memory of all instances together, in bytes.
    pub memory_budget: usize,
    /// How deep raised signals may nest.
    pub raise_depth: u32,
    /// Rule runs one dispatched signal may cause, its raises included;
    /// past it, runs and raises are refused and counted in the outcome.
    pub max_runs: u32,
    /// Consecutive traps that quarantine a rule.
    pub quarantine_after: u32,
    /// Where serialized modules are cached (`None`: memory only).
    pub cache_dir: Option<PathBuf>,
    /// Epoch tick: the deadline's granularity.
    pub tick: Duration,
    /// What one call may emit.
    pub emit_limits: EmitLimits,
    /// Guest log lines one rule may write per second (a burst of twice
    /// that); the rest are dropped and counted.
    pub log_lines_per_second: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            deadline: Duration::from_millis(50),
            memory_limit: 32 << 20,
            memory_budget: 1 << 30,
            raise_depth: 8,
            max_runs: 1000,
            quarantine_after: 5,
            cache_dir: None,
            tick: Duration::from_millis(2),
            emit_limits: EmitLimits {
                max_actions: 256,
                max_bytes: 1 << 20,
            },
            log_lines_per_second: 100,
        }
    }
}

/// Why a module could not be loaded. Each names the rule.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("rule `{rule}`: not a valid WebAssembly module: {reason}")]
    Malformed { rule: String, reason: String },
    #[error("rule `{rule}`: {problem}")]
    Abi { rule: String, problem: String },
    #[error("rule `{rule}`: could not instantiate: {reason}")]
    Instantiate { rule: String, reason: String },
    #[error("rule `{rule}`: init failed: {error}")]
    Init { rule: String, error: CallError },
    #[error(
        "rule `{rule}`: loading it would exceed the memory budget of {budget} bytes \
         ({used} in use); raise [rules] memory_budget or remove rules"
    )]
    Budget {
        rule: String,
        budget: usize,
        used: usize,
    },
    #[error("rule `{rule}`: {reason}")]
    Patterns { rule: String, reason: String },
    #[error("rule `{rule}`: {reason}")]
    Config { rule: String, reason: String },
    #[error("could not set up the engine: {0}")]
    Setup(String),
}

/// Why one call of a rule failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    #[error("deadline of {0:?} exceeded")]
    Deadline(Duration),
    #[error("memory limit of {limit} bytes exceeded")]
    MemoryLimit { limit: usize },
    #[error("memory budget of all rules exhausted")]
    MemoryBudget,
    #[error("{0}")]
    Panic(String),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("rule error: {0}")]
    Rule(String),
    #[error("rule could not decode its input: {0}")]
    Decode(String),
    #[error("rule emitted an action the host cannot decode: {0}")]
    BadAction(String),
    #[error("unexpected return code {0}")]
    BadReturn(i32),
    #[error("quarantined after {traps} traps in a row (last: {last}); reset it to run it again")]
    Quarantined { traps: u32, last: String },
    #[error("not instantiated: {0}")]
    NotInstantiated(String),
    #[error("{refused} raises refused: one signal may cause at most {cap} rule runs")]
    FanOut { cap: u32, refused: u32 },
}

impl CallError {
    /// Whether the instance is gone (trapped) and must be replaced.
    pub fn is_trap(&self) -> bool {
        matches!(
            self,
            CallError::Deadline(_)
                | CallError::MemoryLimit { .. }
                | CallError::MemoryBudget
                | CallError::Panic(_)
                | CallError::Trap(_)
                | CallError::BadReturn(_)
        )
    }

    /// A short stable name, for metrics and the event log.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Deadline(_) => "deadline",
            CallError::MemoryLimit { .. } => "memory_limit",
            CallError::MemoryBudget => "memory_budget",
            CallError::Panic(_) => "panic",
            CallError::Trap(_) => "trap",
            CallError::Rule(_) => "rule_error",
            CallError::Decode(_) => "decode",
            CallError::BadAction(_) => "bad_action",
            CallError::BadReturn(_) => "bad_return",
            CallError::Quarantined { .. } => "quarantined",
            CallError::NotInstantiated(_) => "not_instantiated",
            CallError::FanOut { .. } => "fan_out",
        }
    }
}

/// A compiled module that passed the ABI check, ready to instantiate.
pub struct Script {
    sha256: Sha256Digest,
    pre: InstancePre<HostState>,
    default_signals: Vec<String>,
    config_keys: Vec<String>,
    has_init: bool,
    size: usize,
}

impl std::fmt::Debug for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Script")
            .field("sha256", &hex::encode(self.sha256))
            .field("default_signals", &self.default_signals)
            .field("has_init", &self.has_init)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Script {
    /// The sha256 of the module bytes.
    pub fn sha256(&self) -> &Sha256Digest {
        &self.sha256
    }

    /// The patterns of the module's `tandem.signals` section.
    pub fn default_signals(&self) -> &[String] {
        &self.default_signals
    }

    /// The config keys the module declares (its `tandem.config` section);
    /// empty when it declares none.
    pub fn config_keys(&self) -> &[String] {
        &self.config_keys
    }

    /// A config key the module does not declare, with what it allows, as
    /// an error text; `Ok` when it declares no keys.
    pub fn check_config(&self, config: &Config) -> Result<(), String> {
        if self.config_keys.is_empty() {
            return Ok(());
        }
        match config.0.keys().find(|k| !self.config_keys.contains(k)) {
            None => Ok(()),
            Some(k) => Err(format!(
                "config key `{k}` is not one the rule reads; it reads {}",
                self.config_keys
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// Whether it exports `tandem_init`.
    pub fn has_init(&self) -> bool {
        self.has_init
    }

    /// Size of the module bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The module's exports, `name: type`, for `tandem rule check`.
    pub fn exports(&self) -> Vec<String> {
        self.pre
            .module()
            .exports()
            .map(|e| format!("{}: {}", e.name(), extern_kind(&e.ty())))
            .collect()
    }

    /// The module's imports, `module.name`.
    pub fn imports(&self) -> Vec<String> {
        self.pre
            .module()
            .imports()
            .map(|i| format!("{}.{}", i.module(), i.name()))
            .collect()
    }
}

fn extern_kind(ty: &wasmtime::ExternType) -> &'static str {
    match ty {
        wasmtime::ExternType::Func(_) => "func",
        wasmtime::ExternType::Global(_) => "global",
        wasmtime::ExternType::Table(_) => "table",
        wasmtime::ExternType::Memory(_) => "memory",
        _ => "other",
    }
}

/// Counters the node turns into metrics.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Modules compiled (cache misses on both levels).
    pub compiles: AtomicU64,
    /// Modules loaded from the disk cache.
    pub disk_hits: AtomicU64,
    /// Modules found alive in memory.
    pub memory_hits: AtomicU64,
    /// Guest calls (`tandem_on_signal`).
    pub calls: AtomicU64,
    /// Calls that trapped (all kinds).
    pub traps: AtomicU64,
    /// Calls that hit their deadline.
    pub deadline_hits: AtomicU64,
    /// Rules quarantined.
    pub quarantines: AtomicU64,
    /// Guest log lines dropped by the per-rule rate limit.
    pub logs_dropped: AtomicU64,
}

impl EngineStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Read a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Inner {
    wasm: wasmtime::Engine,
    linker: Linker<HostState>,
    cache: ModuleCache<Script>,
    config: EngineConfig,
    budget: Arc<MemoryBudget>,
    clock: Clock,
    stats: Arc<EngineStats>,
    _ticker: Ticker,
}

/// The shared engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// The system clock in ms since the Unix epoch.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    })
}

impl Engine {
    /// An engine with `config` and the system clock.
    pub fn new(config: EngineConfig) -> Result<Engine, EngineError> {
        Self::with_clock(config, system_clock())
    }

    /// An engine whose `now_ms` import reads `clock`.
    pub fn with_clock(config: EngineConfig, clock: Clock) -> Result<Engine, EngineError> {
        let setup = |e: wasmtime::Error| EngineError::Setup(format!("{e:#}"));
        let mut wc = wasmtime::Config::new();
        wc.epoch_interruption(true);
        let wasm = wasmtime::Engine::new(&wc).map_err(setup)?;
        let mut linker = Linker::new(&wasm);
        linker::add_to_linker(&mut linker).map_err(setup)?;
        let cache_dir = config
            .cache_dir
            .as_ref()
            .map(|d| d.join(cache::engine_key(&wasm)));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (wasm, stop, tick) = (wasm.clone(), stop.clone(), config.tick);
            std::thread::Builder::new()
                .name("tandem-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        wasm.increment_epoch();
                    }
                })
                .map_err(|e| EngineError::Setup(format!("epoch thread: {e}")))?
        };
        Ok(Engine {
            inner: Arc::new(Inner {
                budget: Arc::new(MemoryBudget::new(config.memory_budget)),
                wasm,
                linker,
                cache: ModuleCache::new(cache_dir),
                config,
                clock,
                stats: Arc::new(EngineStats::default()),
                _ticker: Ticker {
                    stop,
                    thread: Some(thread),
                },
            }),
        })
    }

    /// The settings.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The counters.
    pub fn stats(&self) -> &EngineStats {
        &self.inner.stats
    }

    /// The shared memory budget.
    pub fn budget(&self) -> &MemoryBudget {
        &self.inner.budget
    }

    /// The clock rules see.
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    fn deadline_ticks(&self, deadline: Duration) -> u64 {
        let tick = self.inner.config.tick.as_nanos().max(1);
        // Round up, plus one: the current tick may be about to end.
        (deadline.as_nanos().div_ceil(tick) as u64).max(1) + 1
    }

    /// The compiled module with this sha256, if one is still loaded.
    pub fn cached(&self, sha: &Sha256Digest) -> Option<Arc<Script>> {
        let hit = self.inner.cache.get(sha);
        if hit.is_some() {
            EngineStats::bump(&self.inner.stats.memory_hits);
        }
        hit
    }

    /// Compile `wasm` (the module of rule `rule`) and check it against ABI
    /// v1. A module with the same sha256 that is still loaded, or in the disk
    /// cache, is not compiled again.
    pub fn compile(&self, rule: &str, wasm: &[u8]) -> Result<Arc<Script>, EngineError> {
        let inner = &self.inner;
        let sha = sha256(wasm);
        if let Some(script) = inner.cache.get(&sha) {
            EngineStats::bump(&inner.stats.memory_hits);
            return Ok(script);
        }
        let malformed = |reason: String| EngineError::Malformed {
            rule: rule.to_owned(),
            reason,
        };
        let sections = module::read_default_signals(wasm).map_err(malformed)?;
        let module = match inner.cache.load(&inner.wasm, &sha) {
            Some(m) => {
                EngineStats::bump(&inner.stats.disk_hits);
                m
            }
            None => {
                let m = Module::new(&inner.wasm, wasm).map_err(|e| malformed(format!("{e:#}")))?;
                EngineStats::bump(&inner.stats.compiles);
                inner.cache.store(&sha, &m);
                m
            }
        };
        let abi = module::check_abi(&module).map_err(|problem| EngineError::Abi {
            rule: rule.to_owned(),
            problem,
        })?;
        names::check_patterns(&sections.default_signals).map_err(|reason| {
            EngineError::Patterns {
                rule: rule.to_owned(),
                reason: format!("its `tandem.signals` section: {reason}"),
            }
        })?;
        let pre = inner
            .linker
            .instantiate_pre(&module)
            .map_err(|e| EngineError::Abi {
                rule: rule.to_owned(),
                problem: format!("{e:#}"),
            })?;
        let script = Arc::new(Script {
            sha256: sha,
            pre,
            default_signals: sections.default_signals,
            config_keys: sections.config_keys,
            has_init: abi.has_init,
            size: wasm.len(),
        });
        inner.cache.put(sha, &script);
        Ok(script)
    }

    /// A new instance of `script` for rule `rule`, initialised with `config`.
    pub fn instantiate(
        &self,
        rule: &str,
        script: &Script,
        config: &Config,
        deadline: Option<Duration>,
    ) -> Result<Instance, EngineError> {
        let bytes = tandem_guest::wire::encode(config).map_err(|e| EngineError::Init {
            rule: rule.to_owned(),
            error: CallError::Decode(e.to_string()),
        })?;
        self.instantiate_encoded(rule, script, &bytes, deadline)
    }

    fn instantiate_encoded(
        &self,
        rule: &str,
        script: &Script,
        config: &[u8],
        deadline: Option<Duration>,
    ) -> Result<Instance, EngineError> {
        let deadline = deadline.unwrap_or(self.inner.config.deadline);
        Instance::new(self, script, rule, config, deadline)
    }
}
