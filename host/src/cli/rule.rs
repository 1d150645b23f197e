//! `tandem rule new | check | run`: the rule author's tools.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use tandem_guest::{Action, Config, Signal, Value};

use crate::engine::{Engine, EngineConfig, Script};

/// The rules `rule new` can start from; each is a working rule with its
/// own tests (`host/src/cli/rule_templates/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Template {
    /// Notify on every ALARM-* signal, with its zone.
    Alarm,
    /// Tell IT when a server (or a cluster group) failed over and back.
    Failover,
    /// COUNT alarms from one source within SECONDS raise ALARM-STORM.
    Window,
    /// A reading above a threshold COUNT times in a row notifies once.
    Threshold,
}

impl Template {
    /// The template's `src/lib.rs`, its type named `MyRule`.
    fn source(self) -> &'static str {
        match self {
            Template::Alarm => include_str!("rule_templates/alarm.rs.in"),
            Template::Failover => include_str!("rule_templates/failover.rs.in"),
            Template::Window => include_str!("rule_templates/window.rs.in"),
            Template::Threshold => include_str!("rule_templates/threshold.rs.in"),
        }
    }
}

/// Rule author commands.
#[derive(Debug, Subcommand)]
pub enum RuleCommand {
    /// Scaffold a rule crate that builds to a .wasm and passes its own test.
    New {
        /// Crate name (lowercase letters, digits, `-`, `_`).
        name: String,
        /// Path to the tandem-guest SDK (default: the one in this checkout).
        #[arg(long)]
        sdk: Option<PathBuf>,
        /// Parent directory for the new crate.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// What the rule starts as.
        #[arg(long, value_enum, default_value_t = Template::Alarm)]
        template: Template,
    },
    /// Validate a module: ABI marker, exports, imports, default signals, and
    /// an instantiation with its init.
    Check {
        file: PathBuf,
        /// Config (JSON object) for the init check.
        #[arg(long)]
        config: Option<String>,
    },
    /// Dry-run a module on one signal (`--signal`), or on several through
    /// one instance in order (`--signals FILE.jsonl`). Actions are printed
    /// as JSON lines on stdout; raises the node would refuse are warned
    /// about on stderr. The guest is always called, whatever it subscribes
    /// to.
    Run {
        file: PathBuf,
        /// The signal's name.
        #[arg(long, required_unless_present = "signals", conflicts_with = "signals")]
        signal: Option<String>,
        /// A file of signals, one JSON object per line (`{"name": ...,
        /// "fields": {...}}`, as `POST /api/v1/signals` takes); `-` reads
        /// stdin. Each line's actions print as one JSON line
        /// `{"line", "signal", "actions", "error"}`.
        #[arg(long, value_name = "FILE.jsonl")]
        signals: Option<PathBuf>,
        /// A field, `key=value`; the value is JSON if it parses, else a string.
        #[arg(long = "field", value_name = "KEY=VALUE")]
        fields: Vec<String>,
        /// The rule's config (JSON object).
        #[arg(long)]
        config: Option<String>,
        #[arg(long, default_value = "cli")]
        source: String,
        #[arg(long, default_value = "dry-run")]
        key: String,
        /// Signal time, ms since the Unix epoch (default: now).
        #[arg(long)]
        time: Option<i64>,
        /// Mark the signal as replayed.
        #[arg(long)]
        replayed: bool,
        /// Per-call deadline, e.g. `50ms`.
        #[arg(long, value_parser = parse_millis, default_value = "50ms")]
        deadline: Duration,
    },
}

/// Run a rule command.
pub fn run(cmd: RuleCommand) -> anyhow::Result<()> {
    match cmd {
        RuleCommand::New {
            name,
            sdk,
            dir,
            template,
        } => new(&name, sdk, &dir, template),
        RuleCommand::Check { file, config } => check(&file, config.as_deref()),
        RuleCommand::Run {
            file,
            signal,
            signals: Some(list),
            config,
            deadline,
            ..
        } => {
            debug_assert!(signal.is_none());
            run_many(&file, &list, config.as_deref(), deadline)
        }
        RuleCommand::Run {
            file,
            signal,
            signals: None,
            fields,
            config,
            source,
            key,
            time,
            replayed,
            deadline,
        } => {
            let signal = signal.context("--signal NAME or --signals FILE.jsonl is needed")?;
            let mut sig = Signal::new(signal).with_source(source).with_key(key);
            sig.id = 1;
            sig.time = time.unwrap_or_else(|| (crate::engine::system_clock())());
            sig.replayed = replayed;
            for f in &fields {
                let (k, v) = parse_field(f)?;
                sig.fields.insert(k, v);
            }
            dry_run(&file, &sig, config.as_deref(), deadline)
        }
    }
}

fn parse_millis(s: &str) -> Result<Duration, String> {
    let ms = s.strip_suffix("ms").ok_or("use milliseconds, e.g. 50ms")?;
    ms.parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|e| format!("`{s}`: {e}"))
}

/// `k=v`: `v` as JSON if it parses (numbers, booleans, quoted strings,
/// objects), otherwise the text itself.
pub fn parse_field(field: &str) -> anyhow::Result<(String, Value)> {
    let Some((k, v)) = field.split_once('=') else {
        bail!("field `{field}` is not KEY=VALUE");
    };
    if k.is_empty() {
        bail!("field `{field}` has an empty key");
    }
    let value = serde_json::from_str::<Value>(v).unwrap_or_else(|_| Value::Str(v.to_owned()));
    Ok((k.to_owned(), value))
}

fn parse_config(config: Option<&str>) -> anyhow::Result<Config> {
    match config {
        None => Ok(Config::new()),
        Some(text) => serde_json::from_str(text).context("--config must be a JSON object"),
    }
}

fn rule_name(file: &Path) -> String {
    file.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("rule")
        .to_owned()
}

fn load(file: &Path) -> anyhow::Result<(Engine, std::sync::Arc<Script>)> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let engine = Engine::new(EngineConfig::default())?;
    let script = engine.compile(&rule_name(file), &bytes)?;
    Ok((engine, script))
}

fn check(file: &Path, config: Option<&str>) -> anyhow::Result<()> {
    let config = parse_config(config)?;
    let (engine, script) = load(file)?;
    engine.instantiate(&rule_name(file), &script, &config, None)?;
    println!("{}: ok", file.display());
    if let Some(warning) = debug_build_warning(&std::fs::read(file)?) {
        eprintln!("{warning}");
    }
    println!("  abi: v{}", tandem_guest::ABI_VERSION);
    println!("  sha256: {}", hex::encode(script.sha256()));
    println!("  size: {} bytes", script.size());
    println!("  default signals: {}", script.default_signals().join(", "));
    println!(
        "  init: {}",
        if script.has_init() {
            "exported, ran"
        } else {
            "not exported"
        }
    );
    println!("  exports: {}", script.exports().join(", "));
    println!("  imports: {}", script.imports().join(", "));
    Ok(())
}

/// A warning when `wasm` carries DWARF, the mark of a debug build: its
/// size beside the size without it, which release would beat (it also
/// optimizes).
pub fn debug_build_warning(wasm: &[u8]) -> Option<String> {
    let debug = crate::engine::debug_info_bytes(wasm);
    (debug > 0).then(|| {
        format!(
            "warning: this looks like a debug build: {} bytes, {debug} of them debug info; \
             a release build (`cargo build --release --target wasm32-unknown-unknown`) \
             would be under {} bytes, and faster",
            wasm.len(),
            wasm.len() - debug
        )
    })
}

/// Warnings for the raises in `actions` the node would refuse.
pub fn raise_warnings(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Raise(r) => crate::engine::names::check_raise_name(&r.name)
                .err()
                .map(|why| format!("warning: the node would refuse this: {why}")),
            _ => None,
        })
        .collect()
}

fn dry_run(
    file: &Path,
    signal: &Signal,
    config: Option<&str>,
    deadline: Duration,
) -> anyhow::Result<()> {
    let config = parse_config(config)?;
    let (engine, script) = load(file)?;
    let mut instance = engine.instantiate(&rule_name(file), &script, &config, Some(deadline))?;
    let input = tandem_guest::wire::encode(signal)?;
    let (actions, result) = instance.call(&input);
    for action in &actions {
        println!("{}", serde_json::to_string(action)?);
    }
    for warning in raise_warnings(&actions) {
        eprintln!("{warning}");
    }
    result.with_context(|| format!("rule `{}` failed on {}", rule_name(file), signal.name))
}

/// Most lines `--signals` reads; more is refused, not truncated.
const MAX_SIGNAL_LINES: usize = 100_000;

/// `rule run --signals`: every line's signal through one instance, in
/// order, as a node would run them (a trap discards the instance and the
/// next line gets a fresh one). Fails at the end if any line failed.
fn run_many(
    file: &Path,
    list: &Path,
    config: Option<&str>,
    deadline: Duration,
) -> anyhow::Result<()> {
    use std::io::BufRead;
    let config = parse_config(config)?;
    let (engine, script) = load(file)?;
    let name = rule_name(file);
    let reader: Box<dyn BufRead> = if list == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(list).with_context(|| format!("reading {}", list.display()))?;
        Box::new(std::io::BufReader::new(f))
    };
    let mut instance = None;
    let mut failed = 0usize;
    let now = (crate::engine::system_clock())();
    for (i, line) in reader.lines().enumerate() {
        let n = i + 1;
        if n > MAX_SIGNAL_LINES {
            bail!("{}: more than {MAX_SIGNAL_LINES} lines", list.display());
        }
        let line = line.with_context(|| format!("{}: line {n}", list.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let mut sig: Signal = serde_json::from_str(&line)
            .with_context(|| format!("{}: line {n} is not a signal object", list.display()))?;
        if sig.name.is_empty() {
            bail!("{}: line {n} has no `name`", list.display());
        }
        // What a node fills in for a signal that leaves them out.
        if sig.id == 0 {
            sig.id = n as u64;
        }
        if sig.key.is_empty() {
            sig.key = format!("dry-run-{n}");
        }
        if sig.time == 0 {
            sig.time = now;
        }
        let inst = match &mut instance {
            Some(inst) => inst,
            None => instance.insert(engine.instantiate(&name, &script, &config, Some(deadline))?),
        };
        let (actions, result) = inst.call(&tandem_guest::wire::encode(&sig)?);
        if result
            .as_ref()
            .is_err_and(crate::engine::CallError::is_trap)
        {
            instance = None;
        }
        for warning in raise_warnings(&actions) {
            eprintln!("line {n}: {warning}");
        }
        let error = result.err().map(|e| {
            failed += 1;
            e.to_string()
        });
        println!(
            "{}",
            serde_json::json!({"line": n, "signal": sig.name, "actions": actions, "error": error})
        );
    }
    if failed > 0 {
        bail!("rule `{name}` failed on {failed} signal(s)");
    }
    Ok(())
}

fn new(name: &str, sdk: Option<PathBuf>, dir: &Path, template: Template) -> anyhow::Result<()> {
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        bail!(
            "`{name}` is not a valid crate name: use lowercase letters, digits, `-` and `_`, starting with a letter"
        );
    }
    let sdk = match sdk {
        Some(p) => p,
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../guest-sdk")),
    };
    let sdk = sdk.canonicalize().with_context(|| {
        format!(
            "the tandem-guest SDK is not at {}; pass --sdk PATH",
            sdk.display()
        )
    })?;
    if !sdk.join("Cargo.toml").is_file() {
        bail!(
            "{} is not the tandem-guest crate (no Cargo.toml); pass --sdk PATH",
            sdk.display()
        );
    }
    let root = dir.join(name);
    if root.exists() {
        bail!("{} already exists", root.display());
    }
    std::fs::create_dir_all(root.join("src"))
        .with_context(|| format!("creating {}", root.display()))?;
    let files = scaffold(name, &sdk, template);
    for (path, text) in &files {
        std::fs::write(root.join(path), text).with_context(|| format!("writing {path}"))?;
    }
    let lib = name.replace('-', "_");
    println!("created rule crate {}", root.display());
    println!();
    println!("  cd {}", root.display());
    println!(
        "  cargo test                                          # native tests through the harness"
    );
    println!("  cargo build --target wasm32-unknown-unknown --release");
    println!("  tandem rule check target/wasm32-unknown-unknown/release/{lib}.wasm");
    Ok(())
}

fn camel(name: &str) -> String {
    name.split(['-', '_'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// The files of a new rule crate.
fn scaffold(name: &str, sdk: &Path, template: Template) -> Vec<(&'static str, String)> {
    let ty = camel(name);
    let sdk = sdk
        .display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    let cargo = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

# cdylib: the .wasm the node loads; rlib: native tests and benchmarks.
[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
tandem-guest = {{ path = "{sdk}" }}

[profile.release]
opt-level = 3
lto = true

# A standalone crate, not part of any enclosing workspace.
[workspace]
"#
    );
    let lib = template.source().replace("MyRule", &ty);
    vec![
        ("Cargo.toml", cargo),
        ("src/lib.rs", lib),
        (".gitignore", "/target\n".to_owned()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_parse_as_json_or_text() {
        assert_eq!(parse_field("n=3").unwrap(), ("n".into(), Value::Int(3)));
        assert_eq!(
            parse_field("z=north").unwrap(),
            ("z".into(), Value::from("north"))
        );
        assert_eq!(
            parse_field("b=true").unwrap(),
            ("b".into(), Value::Bool(true))
        );
        assert_eq!(
            parse_field("s=\"3\"").unwrap(),
            ("s".into(), Value::from("3"))
        );
        assert_eq!(parse_field("e=").unwrap(), ("e".into(), Value::from("")));
        assert!(parse_field("novalue").is_err());
        assert!(parse_field("=x").is_err());
    }

    #[test]
    fn camel_case_type_names() {
        assert_eq!(camel("door-alarm"), "DoorAlarm");
        assert_eq!(camel("my_rule2"), "MyRule2");
    }
}
