//! The installed rules and their dispatch.
//!
//! A [`RuleSet`] owns one [`Instance`] per rule and the [`DispatchIndex`].
//! [`RuleSet::install`] replaces the whole set in one step between two
//! dispatches: a rule whose script, config and deadline are unchanged keeps
//! its instance (and so its state); the others get a fresh one. A rule that
//! fails to load keeps its previous version, if it had one.
//!
//! [`RuleSet::dispatch`] runs a signal through the gate, the index and the
//! matching rules, then the signals those rules raised, breadth first, up to
//! the depth limit. A trap discards the instance (the next call gets a fresh
//! one); `quarantine_after` traps in a row quarantine the rule until
//! [`RuleSet::reset`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tandem_guest::names::MAX_TIMER_MS;
use tandem_guest::{Action, Config, Notify, Signal};

use super::index::DispatchIndex;
use super::{CallError, Engine, EngineError, EngineStats, Gate, GateGuard, Instance, Script};

/// What to install for one rule (a `signal_rule` row with its script).
#[derive(Debug, Clone)]
pub struct RuleSpec {
    pub name: String,
    pub script: Arc<Script>,
    /// Patterns; empty means the script's declared defaults.
    pub signals: Vec<String>,
    pub config: Config,
    /// Overrides the engine's default deadline.
    pub deadline: Option<Duration>,
    pub enabled: bool,
    /// The rule's group: it runs only while the gate is open for it.
    pub group: Arc<str>,
}

/// One rule's run for one signal.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleRun {
    pub rule: Arc<str>,
    /// 0 for the original signal, n for a signal raised n levels down.
    pub depth: u32,
    /// 0 for the dispatched signal, i for `Outcome::raised[i - 1]`: the
    /// signal it ran for, whose key notification ids derive from
    /// ([`Outcome::signal_of`]).
    pub origin: usize,
    pub actions: Vec<Action>,
    pub error: Option<CallError>,
    /// Raise actions the host refused, with why.
    pub rejected: Vec<String>,
    /// The rule's group, and the epoch its gate was opened under (0 when
    /// the whole gate is open).
    pub group: Arc<str>,
    pub epoch: u64,
}

impl RuleRun {
    /// The notify actions with their index among this run's actions.
    pub fn notifications(&self) -> impl Iterator<Item = (usize, &Notify)> {
        self.actions
            .iter()
            .enumerate()
            .filter_map(|(i, a)| match a {
                Action::Notify(n) => Some((i, n)),
                _ => None,
            })
    }
}

/// Everything the rules did for one signal.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    pub runs: Vec<RuleRun>,
    /// The signals the rules raised, in dispatch order; a run's `origin`
    /// points here.
    pub raised: Vec<Signal>,
    /// Rule runs and raises refused because this signal reached the cap
    /// of rule runs ([`super::EngineConfig::max_runs`]).
    pub capped: u32,
}

impl Outcome {
    /// The signal a run ran for: the dispatched one or a raised one.
    pub fn signal_of<'a>(&'a self, run: &RuleRun, dispatched: &'a Signal) -> &'a Signal {
        match run.origin {
            0 => dispatched,
            n => self.raised.get(n - 1).unwrap_or(dispatched),
        }
    }
}

/// The result of a dispatch.
#[derive(Debug, Clone, PartialEq)]
pub enum Dispatch {
    /// The gate was closed: no guest code ran.
    Suppressed,
    /// The gate was open; the runs may be empty (nothing matched).
    Executed(Outcome),
}

/// What an install changed.
#[derive(Debug, Default)]
pub struct InstallReport {
    /// Rules with a fresh instance.
    pub loaded: Vec<String>,
    /// Rules that kept their instance and state.
    pub kept: Vec<String>,
    /// Rules no longer installed.
    pub removed: Vec<String>,
    /// Rules that failed to load; `true` when the previous version stays.
    pub failed: Vec<(EngineError, bool)>,
}

/// A rule's state, for status pages.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleStatus {
    pub name: String,
    pub enabled: bool,
    pub patterns: Vec<String>,
    pub sha256: String,
    pub quarantined: bool,
    pub traps_in_row: u32,
    pub last_error: Option<String>,
    pub memory_bytes: usize,
}

/// The key of a signal raised by `rule` as its action number `index` while
/// handling a signal with key `parent`: the same on both nodes of a pair.
pub fn derive_key(parent: &str, rule: &str, index: usize) -> String {
    format!("{parent}/{rule}/{index}")
}

#[derive(Debug)]
struct Loaded {
    /// What it was installed from (to keep it when a reload fails).
    spec: RuleSpec,
    name: Arc<str>,
    script: Arc<Script>,
    patterns: Vec<String>,
    config: Vec<u8>,
    deadline: Option<Duration>,
    enabled: bool,
    instance: Option<Instance>,
    traps_in_row: u32,
    quarantined: bool,
    last_error: Option<String>,
    /// When its timer is due (ms, the engine's clock), if it set one. It
    /// belongs to the instance: gone with it.
    timer: Option<i64>,
}

impl Loaded {
    fn same_instance_inputs(
        &self,
        script: &Script,
        config: &[u8],
        deadline: Option<Duration>,
    ) -> bool {
        self.script.sha256() == script.sha256()
            && self.config == config
            && self.deadline == deadline
    }
}

/// The installed rules of one node.
#[derive(Debug)]
pub struct RuleSet {
    engine: Engine,
    gate: Gate,
    rules: Vec<Loaded>,
    index: DispatchIndex,
    encoded: Vec<u8>,
    glob_scratch: Vec<usize>,
    matched: Vec<u32>,
    /// The epoch of each rule in `matched`.
    epochs: Vec<u64>,
    /// Rules quarantined since [`RuleSet::take_newly_quarantined`]: (name,
    /// why), for the node to store.
    newly_quarantined: Vec<(String, String)>,
    /// Rules whose raises hit the cap in the current dispatch (counted
    /// once per dispatched signal towards quarantine).
    capped_rules: Vec<usize>,
    /// Rules that ran without error in the current dispatch: their trap
    /// count resets at its end, unless they hit the cap.
    ok_rules: Vec<usize>,
}

impl RuleSet {
    /// An empty rule set that runs rules only while `gate` is open.
    pub fn new(engine: Engine, gate: Gate) -> Self {
        RuleSet {
            engine,
            gate,
            rules: Vec::new(),
            index: DispatchIndex::default(),
            encoded: Vec::new(),
            glob_scratch: Vec::new(),
            matched: Vec::new(),
            epochs: Vec::new(),
            newly_quarantined: Vec::new(),
            capped_rules: Vec::new(),
            ok_rules: Vec::new(),
        }
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Replace the installed rules with `specs` (see the module docs).
    pub fn install(&mut self, specs: Vec<RuleSpec>) -> InstallReport {
        let mut report = InstallReport::default();
        let mut old: HashMap<Arc<str>, Loaded> =
            self.rules.drain(..).map(|r| (r.name.clone(), r)).collect();
        let mut next = Vec::with_capacity(specs.len());
        for spec in specs {
            let previous = old.remove(spec.name.as_str());
            next.extend(self.load(spec, previous, &mut report));
        }
        report.removed = old.into_keys().map(|k| k.to_string()).collect();
        report.removed.sort();
        next.sort_by(|a, b| a.name.cmp(&b.name));
        // Every rule's matcher was built alone in `load`; the combined one
        // falls back to one matcher per rule when it is too large to build.
        self.index = DispatchIndex::build_resilient(
            next.iter()
                .enumerate()
                .filter(|(_, r)| r.enabled)
                .map(|(i, r)| (i as u32, r.patterns.as_slice())),
        );
        self.rules = next;
        report
    }

    /// Load one spec: the version to install, which is the previous one
    /// (or none) when the new one fails.
    fn load(
        &self,
        spec: RuleSpec,
        previous: Option<Loaded>,
        report: &mut InstallReport,
    ) -> Option<Loaded> {
        let name = spec.name.clone();
        let patterns = if spec.signals.is_empty() {
            spec.script.default_signals().to_vec()
        } else {
            spec.signals.clone()
        };
        let config = tandem_guest::wire::encode(&spec.config).unwrap_or_default();
        let fail = |report: &mut InstallReport, e: EngineError, previous: Option<Loaded>| {
            report.failed.push((e, previous.is_some()));
            previous
        };
        // Each rule's patterns are checked, and its own matcher built, here:
        // a rule whose patterns cannot be matched is refused alone and can
        // never disable dispatch for the others.
        if let Err(reason) = super::names::check_patterns(&patterns)
            .and_then(|()| DispatchIndex::build([(0, patterns.as_slice())]).map(drop))
        {
            return fail(
                report,
                EngineError::Patterns { rule: name, reason },
                previous,
            );
        }
        if let Err(reason) = spec.script.check_config(&spec.config) {
            return fail(report, EngineError::Config { rule: name, reason }, previous);
        }
        if let Some(mut prev) = previous {
            if prev.same_instance_inputs(&spec.script, &config, spec.deadline) {
                prev.patterns = patterns;
                prev.enabled = spec.enabled;
                prev.script = spec.script.clone();
                prev.spec = spec;
                report.kept.push(name);
                return Some(prev);
            }
            return match self.engine.instantiate_encoded(
                &name,
                &spec.script,
                &config,
                spec.deadline,
            ) {
                Ok(instance) => {
                    report.loaded.push(name);
                    Some(Self::loaded(spec, patterns, config, instance))
                }
                Err(e) => fail(report, e, Some(prev)),
            };
        }
        match self
            .engine
            .instantiate_encoded(&name, &spec.script, &config, spec.deadline)
        {
            Ok(instance) => {
                report.loaded.push(name);
                Some(Self::loaded(spec, patterns, config, instance))
            }
            Err(e) => fail(report, e, None),
        }
    }

    fn loaded(
        spec: RuleSpec,
        patterns: Vec<String>,
        config: Vec<u8>,
        instance: Instance,
    ) -> Loaded {
        Loaded {
            name: spec.name.as_str().into(),
            script: spec.script.clone(),
            patterns,
            config,
            deadline: spec.deadline,
            enabled: spec.enabled,
            spec,
            instance: Some(instance),
            traps_in_row: 0,
            quarantined: false,
            last_error: None,
            timer: None,
        }
    }

    /// Run `signal` through the gate and the rules it matches, then what
    /// they raised.
    pub fn dispatch(&mut self, signal: &Signal) -> Dispatch {
        self.dispatch_where(signal, &mut |_| true)
    }

    /// [`RuleSet::dispatch`], running the dispatched signal's rules only in
    /// open groups for which `allow` says yes (a cluster member skips the
    /// groups that already ran its key). Raised signals run in every open
    /// group.
    pub fn dispatch_where(
        &mut self,
        signal: &Signal,
        allow: &mut dyn FnMut(&str) -> bool,
    ) -> Dispatch {
        let gate = self.gate.clone();
        let Some(in_flight) = gate.enter() else {
            return Dispatch::Suppressed;
        };
        Dispatch::Executed(self.run(signal, None, &in_flight, allow))
    }

    /// The enabled rules whose timer is due at `now` (ms, the engine's
    /// clock), with when each was due, in rule-name order; their timers
    /// are cleared (a rule sets a new one when it wants one).
    pub fn take_due_timers(&mut self, now: i64) -> Vec<(Arc<str>, i64)> {
        self.rules
            .iter_mut()
            .filter_map(|r| match r.timer {
                Some(due) if due <= now => {
                    r.timer = None;
                    r.enabled.then(|| (r.name.clone(), due))
                }
                _ => None,
            })
            .collect()
    }

    /// When the next timer is due, if any rule has one.
    pub fn next_timer(&self) -> Option<i64> {
        self.rules.iter().filter_map(|r| r.timer).min()
    }

    /// Run `signal` (a TIMER) in rule `name` alone, whatever its patterns,
    /// if the gate is open for its group; what it raises is dispatched as
    /// usual. An unknown rule, or a closed group, runs nothing.
    pub fn dispatch_timer(&mut self, name: &str, signal: &Signal) -> Dispatch {
        // A rule disabled or quarantined since its timer was taken runs
        // nothing.
        let Some(idx) = self
            .rules
            .iter()
            .position(|r| &*r.name == name && r.enabled && !r.quarantined)
        else {
            return Dispatch::Executed(Outcome::default());
        };
        let gate = self.gate.clone();
        let Some(in_flight) = gate.enter() else {
            return Dispatch::Suppressed;
        };
        Dispatch::Executed(self.run(signal, Some(idx), &in_flight, &mut |_| true))
    }

    /// The groups of the enabled rules `name` reaches, each once.
    pub fn groups_of(&mut self, name: &str) -> Vec<Arc<str>> {
        self.index
            .lookup(name, &mut self.glob_scratch, &mut self.matched);
        let mut groups: Vec<Arc<str>> = Vec::new();
        for &i in &self.matched {
            let g = &self.rules[i as usize].spec.group;
            if !groups.contains(g) {
                groups.push(g.clone());
            }
        }
        groups
    }

    /// Dispatch `signal` (to rule `only` alone, if given), then what the
    /// rules raised.
    fn run(
        &mut self,
        signal: &Signal,
        only: Option<usize>,
        gate: &GateGuard<'_>,
        allow: &mut dyn FnMut(&str) -> bool,
    ) -> Outcome {
        let mut outcome = Outcome::default();
        self.capped_rules.clear();
        self.ok_rules.clear();
        // Every run and every queued raise counts towards the cap, so the
        // queue can never hold more than the cap allows to run.
        let mut queue = VecDeque::new();
        self.process(signal, only, 0, 0, &mut queue, &mut outcome, &mut |g| {
            gate.epoch(g).filter(|_| allow(g))
        });
        while let Some((raised, depth)) = queue.pop_front() {
            let origin = outcome.raised.len() + 1;
            self.process(
                &raised,
                None,
                depth,
                origin,
                &mut queue,
                &mut outcome,
                &mut |g| gate.epoch(g),
            );
            outcome.raised.push(raised);
        }
        for &idx in &self.ok_rules {
            if !self.capped_rules.contains(&idx) {
                self.rules[idx].traps_in_row = 0;
            }
        }
        outcome
    }

    /// Run one signal (original or raised) through the index and its rules;
    /// what they raise joins `queue`.
    #[allow(
        clippy::too_many_arguments,
        reason = "the dispatch's state, passed down"
    )]
    fn process(
        &mut self,
        sig: &Signal,
        only: Option<usize>,
        depth: u32,
        origin: usize,
        queue: &mut VecDeque<(Signal, u32)>,
        outcome: &mut Outcome,
        epoch_of: &mut dyn FnMut(&str) -> Option<u64>,
    ) {
        match only {
            Some(idx) => {
                self.matched.clear();
                self.matched.push(idx as u32);
            }
            None => self
                .index
                .lookup(&sig.name, &mut self.glob_scratch, &mut self.matched),
        }
        // Rules of closed groups do not run here (a whole-open gate keeps
        // every rule, with epoch 0).
        let rules = &self.rules;
        let mut epochs = std::mem::take(&mut self.epochs);
        epochs.clear();
        self.matched
            .retain(|&i| match epoch_of(&rules[i as usize].spec.group) {
                Some(e) => {
                    epochs.push(e);
                    true
                }
                None => false,
            });
        if self.matched.is_empty() {
            self.epochs = epochs;
            return;
        }
        // Encoded once, however many rules it reaches.
        if let Err(e) = tandem_guest::wire::encode_into(&mut self.encoded, sig) {
            tracing::error!(signal = %sig.name, "could not encode signal: {e}");
            return;
        }
        let current = Current { sig, depth };
        let cap = self.engine.config().max_runs as usize;
        outcome.runs.reserve(epochs.len());
        for (i, &epoch) in epochs.iter().enumerate() {
            // Raises already queued hold their place under the cap.
            if outcome.runs.len() + queue.len() >= cap {
                outcome.capped += (self.matched.len() - i) as u32;
                break;
            }
            let idx = self.matched[i] as usize;
            let budget = cap.saturating_sub(outcome.runs.len() + queue.len() + 1);
            let was_quarantined = self.rules[idx].quarantined;
            // Built in place: a run is too big to move around cheaply.
            outcome.runs.push(RuleRun {
                rule: self.rules[idx].name.clone(),
                depth,
                origin,
                actions: Vec::new(),
                error: None,
                rejected: Vec::new(),
                group: self.rules[idx].spec.group.clone(),
                epoch,
            });
            if let Some(run) = outcome.runs.last_mut() {
                self.call(idx, &current, queue, budget, &mut outcome.capped, run);
            }
            let rule = &self.rules[idx];
            if rule.quarantined && !was_quarantined {
                self.newly_quarantined.push((
                    rule.name.to_string(),
                    rule.last_error.clone().unwrap_or_default(),
                ));
            }
        }
        self.epochs = epochs;
    }

    /// Call rule `idx` with the encoded signal in `self.encoded`, filling
    /// in `run`. At most `budget` of its raises are queued; the rest are
    /// refused (added to `capped`), which counts towards the rule's
    /// quarantine like a trap.
    fn call(
        &mut self,
        idx: usize,
        current: &Current<'_>,
        queue: &mut VecDeque<(Signal, u32)>,
        budget: usize,
        capped: &mut u32,
        run: &mut RuleRun,
    ) {
        let (sig, depth) = (current.sig, current.depth);
        let max_depth = self.engine.config().raise_depth;
        let stats = self.engine.stats();
        let quarantine_after = self.engine.config().quarantine_after;
        let rule = &mut self.rules[idx];
        if rule.quarantined {
            run.error = Some(CallError::Quarantined {
                traps: rule.traps_in_row,
                last: rule.last_error.clone().unwrap_or_default(),
            });
            return;
        }
        if rule.instance.is_none() {
            match self.engine.instantiate_encoded(
                &rule.name,
                &rule.script,
                &rule.config,
                rule.deadline,
            ) {
                Ok(i) => rule.instance = Some(i),
                Err(e) => {
                    let error = CallError::NotInstantiated(e.to_string());
                    Self::note_trap(rule, &error, stats, quarantine_after);
                    run.error = Some(error);
                    return;
                }
            }
        }
        let Some(instance) = rule.instance.as_mut() else {
            return;
        };
        EngineStats::bump(&stats.calls);
        let (actions, result) = instance.call(&self.encoded);
        let ok = result.is_ok();
        match result {
            // The trap count resets below, unless the raises hit the cap.
            Ok(()) => {}
            Err(e) if e.is_trap() => {
                rule.instance = None;
                rule.timer = None;
                Self::note_trap(rule, &e, stats, quarantine_after);
                run.error = Some(e);
            }
            Err(e) => {
                rule.traps_in_row = 0;
                rule.last_error = Some(e.to_string());
                run.error = Some(e);
            }
        }
        let mut queued = 0;
        let mut refused = 0u32;
        for (i, action) in actions.iter().enumerate() {
            let Action::Raise(raise) = action else {
                continue;
            };
            if let Err(why) = check_raise(&raise.name, depth, max_depth) {
                run.rejected.push(why);
                continue;
            }
            if queued >= budget {
                refused += 1;
                continue;
            }
            queued += 1;
            queue.push_back((
                Signal {
                    id: sig.id,
                    key: derive_key(&sig.key, &run.rule, i),
                    name: raise.name.clone(),
                    source: run.rule.to_string(),
                    time: sig.time,
                    fields: raise.fields.clone(),
                    replayed: sig.replayed,
                },
                depth + 1,
            ));
        }
        // A timer replaces the rule's last one (the last in a call wins).
        let mut timer = None;
        for action in &actions {
            if let Action::Timer(t) = action {
                if t.after_ms > MAX_TIMER_MS {
                    run.rejected.push(format!(
                        "timer of {} ms refused: at most {MAX_TIMER_MS} ms (a day)",
                        t.after_ms
                    ));
                } else {
                    timer = Some(t.after_ms as i64);
                }
            }
        }
        if let Some(after) = timer {
            let now = (self.engine.clock())();
            self.rules[idx].timer = Some(now.saturating_add(after));
        }
        if refused > 0 {
            *capped += refused;
            let error = CallError::FanOut {
                cap: self.engine.config().max_runs,
                refused,
            };
            run.rejected.push(error.to_string());
            if !self.capped_rules.contains(&idx) {
                self.capped_rules.push(idx);
                let rule = &mut self.rules[idx];
                Self::note_trap(rule, &error, stats, quarantine_after);
            }
        } else if ok {
            self.ok_rules.push(idx);
        }
        run.actions = actions;
    }

    /// Count a trap (or a cap hit) against `rule`, quarantining it after
    /// `after` in a row.
    fn note_trap(rule: &mut Loaded, error: &CallError, stats: &EngineStats, after: u32) {
        EngineStats::bump(&stats.traps);
        if matches!(error, CallError::Deadline(_)) {
            EngineStats::bump(&stats.deadline_hits);
        }
        rule.traps_in_row += 1;
        rule.last_error = Some(error.to_string());
        tracing::warn!(rule = %rule.name, traps_in_row = rule.traps_in_row, "rule trapped: {error}");
        if rule.traps_in_row >= after && !rule.quarantined {
            rule.quarantined = true;
            EngineStats::bump(&stats.quarantines);
            tracing::error!(rule = %rule.name, "rule quarantined after {} traps in a row: {error}", rule.traps_in_row);
        }
    }

    /// The rules quarantined since the last call, with why: the node
    /// stores them, so a restart does not run them again.
    pub fn take_newly_quarantined(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.newly_quarantined)
    }

    /// Quarantine `name` again (from what the node stored), with `why`.
    /// `false` if no such rule is installed.
    pub fn restore_quarantine(&mut self, name: &str, why: &str) -> bool {
        let Some(rule) = self.rules.iter_mut().find(|r| &*r.name == name) else {
            return false;
        };
        rule.quarantined = true;
        rule.traps_in_row = rule.traps_in_row.max(self.engine.config().quarantine_after);
        rule.instance = None;
        rule.timer = None;
        rule.last_error = Some(why.to_owned());
        true
    }

    /// The spec a rule was installed from.
    pub fn spec(&self, name: &str) -> Option<RuleSpec> {
        self.rules
            .iter()
            .find(|r| &*r.name == name)
            .map(|r| r.spec.clone())
    }

    /// Clear a rule's quarantine and trap count. `false` if no such rule.
    pub fn reset(&mut self, name: &str) -> bool {
        let Some(rule) = self.rules.iter_mut().find(|r| &*r.name == name) else {
            return false;
        };
        rule.quarantined = false;
        rule.traps_in_row = 0;
        true
    }

    /// Every rule's state, by name.
    pub fn status(&self) -> Vec<RuleStatus> {
        self.rules
            .iter()
            .map(|r| RuleStatus {
                name: r.name.to_string(),
                enabled: r.enabled,
                patterns: r.patterns.clone(),
                sha256: hex::encode(r.script.sha256()),
                quarantined: r.quarantined,
                traps_in_row: r.traps_in_row,
                last_error: r.last_error.clone(),
                memory_bytes: r.instance.as_ref().map_or(0, Instance::memory_bytes),
            })
            .collect()
    }

    /// How many rules are installed.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether no rule is installed.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// The signal being dispatched, and how deep among raises.
struct Current<'a> {
    sig: &'a Signal,
    depth: u32,
}

fn check_raise(name: &str, depth: u32, max_depth: u32) -> Result<(), String> {
    super::names::check_raise_name(name)?;
    if depth + 1 > max_depth {
        return Err(format!(
            "raise of `{name}` refused: raise depth limit of {max_depth} reached"
        ));
    }
    Ok(())
}
