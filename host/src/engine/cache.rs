//! Compiled modules, by the sha256 of their bytes.
//!
//! Two levels:
//! - in memory, a map from sha256 to the compiled script that is alive
//!   somewhere (held weakly: a module no rule uses any more is freed), so an
//!   unchanged module is never compiled twice;
//! - on disk, `DIR/<engine key>/<sha256>.cwasm`, wasmtime's serialized form.
//!   The engine key hashes the wasmtime build and its compilation settings
//!   with this crate's version, so an upgrade starts a fresh directory
//!   rather than loading incompatible code. Files are written to a temporary
//!   name and renamed, so a crash never leaves a half-written entry.
//!
//! The disk cache is trusted like the rest of the node's data directory:
//! loading a serialized module runs its machine code. Do not point it at a
//! directory others can write.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use sha2::{Digest, Sha256};
use wasmtime::{Engine, Module};

/// A sha256 digest.
pub type Sha256Digest = [u8; 32];

/// The sha256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> Sha256Digest {
    Sha256::digest(bytes).into()
}

/// Feeds `Hash` output into sha256, for a key that is stable across runs
/// (unlike `DefaultHasher`).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// The on-disk key of this engine build and configuration.
pub fn engine_key(engine: &Engine) -> String {
    let mut h = ShaHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    h.0.update(b"tandem-module-cache-v1\0");
    h.0.update(env!("CARGO_PKG_VERSION").as_bytes());
    hex::encode(&h.0.finalize()[..12])
}

/// The two cache levels. `T` is what the engine keeps per module.
#[derive(Debug)]
pub struct ModuleCache<T> {
    live: Mutex<HashMap<Sha256Digest, Weak<T>>>,
    dir: Option<PathBuf>,
}

impl<T> ModuleCache<T> {
    /// A cache; `dir` (already including the engine key) enables the disk
    /// level.
    pub fn new(dir: Option<PathBuf>) -> Self {
        ModuleCache {
            live: Mutex::new(HashMap::new()),
            dir,
        }
    }

    /// The live entry for `sha`, if some rule still holds it.
    pub fn get(&self, sha: &Sha256Digest) -> Option<Arc<T>> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let hit = live.get(sha).and_then(Weak::upgrade);
        if hit.is_none() {
            live.remove(sha);
        }
        hit
    }

    /// Remember `entry` for `sha` (and forget dead entries).
    pub fn put(&self, sha: Sha256Digest, entry: &Arc<T>) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|_, w| w.strong_count() > 0);
        live.insert(sha, Arc::downgrade(entry));
    }

    fn path(&self, sha: &Sha256Digest) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(format!("{}.cwasm", hex::encode(sha))))
    }

    /// Load a serialized module from disk. Any problem (absent, unreadable,
    /// incompatible) is a miss; an incompatible file is removed.
    pub fn load(&self, engine: &Engine, sha: &Sha256Digest) -> Option<Module> {
        let path = self.path(sha)?;
        if !path.is_file() {
            return None;
        }
        // SAFETY: the file was written by `store` below from a module this
        // engine compiled, into the node's private data directory (see the
        // module docs); wasmtime checks the header's version and settings.
        match unsafe { Module::deserialize_file(engine, &path) } {
            Ok(module) => Some(module),
            Err(e) => {
                tracing::warn!(path = %path.display(), "dropping unusable cached module: {e}");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Write a compiled module to disk. Failures are logged, never fatal: the
    /// cache only makes restarts faster.
    pub fn store(&self, sha: &Sha256Digest, module: &Module) {
        let Some(path) = self.path(sha) else { return };
        if let Err(e) = write_atomically(&path, module) {
            tracing::warn!(path = %path.display(), "could not write module cache: {e}");
        }
    }
}

fn write_atomically(path: &Path, module: &Module) -> std::io::Result<()> {
    let bytes = module
        .serialize()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("module"),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
