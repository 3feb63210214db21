//! Where repository objects live: packs and manifests, addressed by name.
//!
//! The interface is deliberately narrow (put, get, ranged read, list, delete
//! of named objects) so that an object-store backend can sit behind it later
//! without touching the layers above. Names are relative, `/`-separated
//! paths such as `packs/3f/3f2a….pack`. Every `put` is durable when it
//! returns; a crash part-way through leaves the name absent, never partial.

pub mod local;

use std::path::{Path, PathBuf};

use crate::error::Result;

pub use local::LocalStore;

pub trait ObjectStore: Send + Sync {
    /// Human-readable location, for messages.
    fn location(&self) -> String;

    /// Stores `data` under `name`, replacing any object of that name.
    fn put(&self, name: &str, data: &[u8]) -> Result<()>;

    /// Stores a finished staging file (see [`ObjectStore::staging_dir`])
    /// under `name`; the staging file is consumed.
    fn put_file(&self, name: &str, staging: &Path) -> Result<()>;

    fn get(&self, name: &str) -> Result<Vec<u8>>;

    /// Fills `buf` from `offset` of the object; a short object is an error.
    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<()>;

    fn size(&self, name: &str) -> Result<u64>;

    /// Names of the objects below `prefix` (a directory-like prefix such
    /// as `packs/`), sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>>;

    fn delete(&self, name: &str) -> Result<()>;

    /// Local directory in which writers build files before `put_file`.
    fn staging_dir(&self) -> PathBuf;
}
