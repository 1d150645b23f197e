//! Shared by the host's integration tests: where the built sample rules and
//! the WAT fixtures are.

#![allow(dead_code)]

use std::path::PathBuf;

/// The workspace's target directory (honours CARGO_TARGET_DIR).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")))
}

/// The bytes of a sample rule built by `make rules` (`crate_name` with
/// underscores, e.g. `failover_notify`).
pub fn sample_wasm(crate_name: &str) -> Vec<u8> {
    let path = target_dir()
        .join("wasm32-unknown-unknown/release")
        .join(format!("{crate_name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the sample rules first: `make rules`",
            path.display()
        )
    })
}

/// A WAT fixture from `tests/fixtures`, assembled.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))
        .join(format!("{name}.wat"));
    wat::parse_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// WAT string literal for arbitrary bytes.
pub fn wat_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:02x}")).collect()
}
