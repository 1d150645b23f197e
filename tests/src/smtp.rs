//! A real SMTP server for the tests: Debian's `python3-aiosmtpd` under
//! Debian's own `/usr/bin/python3` (the Makefile installs it), running
//! `tests/smtp/server.py` on a free loopback port. Killed when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's interpreter, which has `python3-aiosmtpd`.
pub const PYTHON: &str = "/usr/bin/python3";

/// A running server and the file it records messages to.
#[derive(Debug)]
pub struct Smtp {
    child: Child,
    pub port: u16,
    out: PathBuf,
}

/// How the server is set up.
#[derive(Debug, Default)]
pub struct SmtpOpts<'a> {
    /// (certificate, key) PEM files: STARTTLS, required.
    pub starttls: Option<(&'a Path, &'a Path)>,
    /// (user, password): authentication required.
    pub auth: Option<(&'a str, &'a str)>,
}

impl Smtp {
    pub fn start(dir: &Path, opts: SmtpOpts<'_>) -> Smtp {
        let out = dir.join("smtp.jsonl");
        let mut cmd = Command::new(PYTHON);
        cmd.arg(crate::repo_root().join("tests/smtp/server.py"))
            .arg(&out);
        if let Some((cert, key)) = opts.starttls {
            cmd.arg("--starttls").arg(cert).arg(key);
        }
        if let Some((user, pass)) = opts.auth {
            cmd.args(["--auth", user, pass]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{PYTHON} (python3-aiosmtpd, `make test` installs it): {e}")
            });
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the SMTP server's first line");
        let port = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the SMTP server did not start: {line:?}"));
        Smtp { child, port, out }
    }

    /// The messages received so far.
    pub fn messages(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Wait for at least `n` messages.
    pub fn wait_for(&self, n: usize, limit: Duration) -> Vec<serde_json::Value> {
        let t = Instant::now();
        loop {
            let got = self.messages();
            if got.len() >= n {
                return got;
            }
            assert!(
                t.elapsed() < limit,
                "{} of {n} messages after {limit:?}: {got:?}",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
