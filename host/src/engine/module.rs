//! Checking a module against ABI v1 and reading its default signals.
//!
//! [`read_default_signals`] reads the `tandem.signals` custom section from
//! the raw bytes without compiling or instantiating. [`check_abi`] checks a
//! compiled module's exports and imports and names the first problem.

use tandem_guest::abi::{CONFIG_SECTION, IMPORT_MODULE, MARKER_EXPORT, SIGNALS_SECTION};
use wasmtime::wasmparser::{Parser, Payload};
use wasmtime::{ExternType, FuncType, Module, ValType};

use super::linker::PROVIDED;

/// What the section scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sections {
    /// The default signal patterns (empty when the section is absent).
    pub default_signals: Vec<String>,
    /// The config keys the rule declares (empty: none declared).
    pub config_keys: Vec<String>,
}

/// Scan `wasm` for the `tandem.signals` custom section. Errors are texts
/// for the caller to wrap with the rule's name.
pub fn read_default_signals(wasm: &[u8]) -> Result<Sections, String> {
    let mut out = Sections::default();
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(|e| e.to_string())?;
        if let Payload::CustomSection(section) = payload {
            let target = match section.name() {
                SIGNALS_SECTION => &mut out.default_signals,
                CONFIG_SECTION => &mut out.config_keys,
                _ => continue,
            };
            *target = rmp_serde::from_slice(section.data()).map_err(|e| {
                format!(
                    "custom section `{}` is not a msgpack array of strings: {e}",
                    section.name()
                )
            })?;
        }
    }
    Ok(out)
}

/// Bytes of DWARF (`.debug_*` custom sections) in `wasm`: a debug build
/// carries them, a release build does not. Unreadable bytes count nothing.
pub fn debug_info_bytes(wasm: &[u8]) -> usize {
    Parser::new(0)
        .parse_all(wasm)
        .map_while(Result::ok)
        .filter_map(|payload| match payload {
            Payload::CustomSection(s) if s.name().starts_with(".debug_") => Some(s.data().len()),
            _ => None,
        })
        .sum()
}

fn sig(params: &[ValType], results: &[ValType]) -> String {
    let list = |v: &[ValType]| {
        v.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("({}) -> ({})", list(params), list(results))
}

fn func_sig(f: &FuncType) -> String {
    let params: Vec<ValType> = f.params().collect();
    let results: Vec<ValType> = f.results().collect();
    sig(&params, &results)
}

/// The exports ABI v1 requires (name, params, results). `tandem_init` is
/// optional and checked apart.
const I32: ValType = ValType::I32;
const I64: ValType = ValType::I64;

fn required_exports() -> [(&'static str, Vec<ValType>, Vec<ValType>); 4] {
    [
        (MARKER_EXPORT, vec![], vec![]),
        ("tandem_alloc", vec![I32], vec![I32]),
        ("tandem_free", vec![I32, I32], vec![]),
        ("tandem_on_signal", vec![I32, I32], vec![I32]),
    ]
}

fn import_type(name: &str) -> Option<(Vec<ValType>, Vec<ValType>)> {
    Some(match name {
        "emit" | "error" => (vec![I32, I32], vec![]),
        "log" => (vec![I32, I32, I32], vec![]),
        "now_ms" => (vec![], vec![I64]),
        _ => return None,
    })
}

fn same(f: &FuncType, params: &[ValType], results: &[ValType]) -> bool {
    f.params().count() == params.len()
        && f.results().count() == results.len()
        && f.params().zip(params).all(|(a, b)| ValType::eq(&a, b))
        && f.results().zip(results).all(|(a, b)| ValType::eq(&a, b))
}

/// What [`check_abi`] learned about a valid module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbiInfo {
    /// Whether it exports `tandem_init`.
    pub has_init: bool,
}

/// Check `module` against ABI v1. The error names the problem; the caller
/// adds the rule's name.
pub fn check_abi(module: &Module) -> Result<AbiInfo, String> {
    let export = |name: &str| module.get_export(name);
    if export(MARKER_EXPORT).is_none() {
        return Err(format!(
            "no `{MARKER_EXPORT}` marker export: not a Tandem ABI v1 module \
             (build it with tandem-guest's export_rule!)"
        ));
    }
    match export("memory") {
        Some(ExternType::Memory(_)) => {}
        Some(_) => return Err("export `memory` is not a memory".into()),
        None => return Err("no `memory` export".into()),
    }
    for (name, params, results) in required_exports() {
        match export(name) {
            Some(ExternType::Func(f)) if same(&f, &params, &results) => {}
            Some(ExternType::Func(f)) => {
                return Err(format!(
                    "export `{name}` has type {}, expected {}",
                    func_sig(&f),
                    sig(&params, &results)
                ));
            }
            Some(_) => return Err(format!("export `{name}` is not a function")),
            None => return Err(format!("missing export `{name}`")),
        }
    }
    let has_init = match export("tandem_init") {
        None => false,
        Some(ExternType::Func(f)) if same(&f, &[I32, I32], &[I32]) => true,
        Some(ExternType::Func(f)) => {
            return Err(format!(
                "export `tandem_init` has type {}, expected {}",
                func_sig(&f),
                sig(&[I32, I32], &[I32])
            ));
        }
        Some(_) => return Err("export `tandem_init` is not a function".into()),
    };
    for import in module.imports() {
        let (m, n) = (import.module(), import.name());
        let expected = (m == IMPORT_MODULE).then(|| import_type(n)).flatten();
        let Some((params, results)) = expected else {
            return Err(format!(
                "imports `{m}.{n}`, which the host does not provide (ABI v1 provides {})",
                PROVIDED
                    .iter()
                    .map(|p| format!("{IMPORT_MODULE}.{p}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        match import.ty() {
            ExternType::Func(f) if same(&f, &params, &results) => {}
            ExternType::Func(f) => {
                return Err(format!(
                    "import `{m}.{n}` has type {}, the host provides {}",
                    func_sig(&f),
                    sig(&params, &results)
                ));
            }
            _ => return Err(format!("import `{m}.{n}` is not a function")),
        }
    }
    Ok(AbiInfo { has_init })
}
