//! Helpers for the end-to-end tests: the built `tandem` binary, the built
//! sample rules, and running commands with a time limit.
//!
//! The Makefile builds the binary (`cargo build -p tandem-host --bin
//! tandem`) and the rules (`make rules`) before `cargo test`; set
//! `TANDEM_BIN` to test another binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The workspace's target directory (honours CARGO_TARGET_DIR).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// A loopback port nobody listens on (yet).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// The `tandem` binary under test.
pub fn tandem_bin() -> PathBuf {
    let path = std::env::var_os("TANDEM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("debug/tandem"));
    assert!(
        path.is_file(),
        "{} is missing: run `make test` (it builds the binary first)",
        path.display()
    );
    path
}

/// The path of a sample rule built by `make rules`, e.g. `failover_notify`.
pub fn sample_wasm(crate_name: &str) -> PathBuf {
    let path = target_dir()
        .join("wasm32-unknown-unknown/release")
        .join(format!("{crate_name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run `make rules`",
        path.display()
    );
    path
}

/// The host crate's WAT fixtures directory.
pub fn fixtures_dir() -> PathBuf {
    repo_root().join("host/tests/fixtures")
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Run {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Run `cmd` to completion, killing it after `limit` (a hang fails the
/// test rather than CI).
pub fn run_with_limit(cmd: &mut Command, limit: Duration) -> Run {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() > limit => {
                let _ = child.kill();
                let out = child.wait_with_output().ok();
                panic!(
                    "{cmd:?} still running after {limit:?}; stderr: {}",
                    out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                        .unwrap_or_default()
                );
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("waiting for {cmd:?}: {e}"),
        }
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("collecting {cmd:?}: {e}"));
    Run {
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// `tandem ARGS...` with a one-minute limit.
pub fn tandem(args: &[&str]) -> Run {
    run_with_limit(
        Command::new(tandem_bin()).args(args),
        Duration::from_secs(60),
    )
}

/// Assemble a WAT file into a .wasm file in `dir`.
pub fn assemble(wat_file: &Path, dir: &Path) -> PathBuf {
    let bytes = wat::parse_file(wat_file).unwrap_or_else(|e| panic!("{}: {e}", wat_file.display()));
    let out = dir.join(
        wat_file
            .file_stem()
            .map(|s| Path::new(s).with_extension("wasm"))
            .unwrap_or_else(|| PathBuf::from("module.wasm")),
    );
    std::fs::write(&out, bytes).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    out
}

pub mod browser;
pub mod cluster;
pub mod http;
pub mod node;
pub mod pair;
pub mod proxy;
pub mod smtp;
pub mod tls;
pub mod webhook;
