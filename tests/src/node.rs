//! A real `tandem serve` process on loopback, with its own data directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::tandem_bin;

/// A running node. Killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct NodeProc {
    child: Option<Child>,
    pub dir: PathBuf,
    pub config: PathBuf,
    admin: String,
}

/// The config of a standalone test node in `dir`, with `extra` TOML
/// appended (sinks, rules dir...).
pub fn write_config(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        "[node]\nname = \"{name}\"\ndata_dir = \"{data}\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"admin\"\ningest_token = \"ingest\"\n\n{extra}\n",
        data = dir.join("data").display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

impl NodeProc {
    /// Start a node with `config` (written by [`write_config`] into `dir`)
    /// and wait until it listens (its `listen.json` appears).
    pub fn start(dir: &Path, config: &Path) -> NodeProc {
        let mut cmd = Command::new(tandem_bin());
        cmd.args(["serve", "--config"]).arg(config);
        Self::spawn(dir, config, cmd)
    }

    /// [`NodeProc::start`] under `ulimit -n nofile` (soft and hard).
    pub fn start_limited(dir: &Path, config: &Path, nofile: u32) -> NodeProc {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!(
                "ulimit -n {nofile} && exec \"$0\" serve --config \"$1\""
            ))
            .arg(tandem_bin())
            .arg(config);
        Self::spawn(dir, config, cmd)
    }

    fn spawn(dir: &Path, config: &Path, mut cmd: Command) -> NodeProc {
        let listen = dir.join("data/listen.json");
        let _ = std::fs::remove_file(&listen);
        let log = std::fs::File::create(dir.join("node.log")).expect("log file");
        let child = cmd
            .env(
                "RUST_LOG",
                std::env::var("TANDEM_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn tandem serve");
        let mut node = NodeProc {
            child: Some(child),
            dir: dir.to_owned(),
            config: config.to_owned(),
            admin: String::new(),
        };
        let started = Instant::now();
        loop {
            if let Some(admin) = std::fs::read_to_string(&listen)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| v["admin"].as_str().map(str::to_owned))
            {
                node.admin = format!("http://{admin}");
                return node;
            }
            if let Some(status) = node
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("tandem serve exited with {status}: {}", node.log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "node did not start: {}",
                node.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn admin(&self) -> &str {
        &self.admin
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
    }

    /// The database file.
    pub fn db(&self) -> PathBuf {
        self.dir.join("data/tandem.db")
    }

    /// kill -9, and wait for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// This process may open `n` descriptors (raises its soft limit up
    /// to the hard one; `false` if the hard limit is lower).
    pub fn raise_own_fd_limit(n: u64) -> bool {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit read and write one plain struct.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_max < n {
                return false;
            }
            lim.rlim_cur = lim.rlim_cur.max(n);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0
        }
    }

    /// Send `sig` (e.g. `libc::SIGSTOP`) to the process.
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) with a pid this test spawned and still owns.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// Start again with the same config and data.
    pub fn restart(&mut self) {
        self.kill9();
        *self = NodeProc::start(&self.dir.clone(), &self.config.clone());
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
    }
}
