//! [`ObjectStore`] on a local (or network-mounted) directory.
//!
//! Durability: an object is written to the staging directory, fsync'ed,
//! renamed to its final name, and the directory holding it is fsync'ed (as
//! is its parent when the directory was just created). Readers keep a small
//! cache of open files so that reading many chunks of one pack costs one
//! `open`, and reads use `pread` so that the cache lock is never held
//! across I/O.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::ObjectStore;
use crate::error::{Error, IoContext, Result};

const OPEN_FILE_CACHE: usize = 256;
const STAGING: &str = "tmp";

pub struct LocalStore {
    root: PathBuf,
    open_files: Mutex<HashMap<String, Arc<File>>>,
    /// Added to every request, to behave like a slow archival backend.
    delay: Option<std::time::Duration>,
}

static STAGING_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name unique to this process and call, for staging files.
pub fn staging_name(prefix: &str) -> String {
    let n = STAGING_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}.tmp", std::process::id())
}

pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .at("syncing directory", dir)
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStore {
            root: root.into(),
            open_files: Mutex::new(HashMap::new()),
            delay: None,
        }
    }

    /// A store that waits `delay` before answering each request.
    pub fn with_delay(root: impl Into<PathBuf>, delay: std::time::Duration) -> Self {
        LocalStore {
            delay: Some(delay),
            ..Self::new(root)
        }
    }

    fn wait(&self) {
        if let Some(delay) = self.delay {
            std::thread::sleep(delay);
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, name: &str) -> Result<PathBuf> {
        let valid = !name.is_empty()
            && !name.starts_with('/')
            && name
                .split('/')
                .all(|part| !part.is_empty() && part != "." && part != "..");
        if !valid {
            return Err(Error::InvalidInput(format!("invalid object name {name:?}")));
        }
        Ok(self.root.join(name))
    }

    /// Creates the object's directory if needed, fsyncing its parent so the
    /// new directory entry itself is durable.
    fn ensure_parent(&self, path: &Path) -> Result<()> {
        let dir = path.parent().expect("object paths have a parent");
        if dir.is_dir() {
            return Ok(());
        }
        fs::create_dir_all(dir).at("creating directory", dir)?;
        if let Some(grandparent) = dir.parent() {
            fsync_dir(grandparent)?;
        }
        Ok(())
    }

    fn open_cached(&self, name: &str) -> Result<Arc<File>> {
        if let Some(file) = self.open_files.lock().expect("cache lock").get(name) {
            return Ok(file.clone());
        }
        let path = self.path_of(name)?;
        let file = Arc::new(File::open(&path).at("opening", &path)?);
        let mut cache = self.open_files.lock().expect("cache lock");
        if cache.len() >= OPEN_FILE_CACHE {
            cache.clear();
        }
        cache.insert(name.to_string(), file.clone());
        Ok(file)
    }

    /// Removes staging files left by an interrupted writer. Only the holder
    /// of the repository's write lock may call this.
    pub fn clear_staging(&self) -> Result<usize> {
        let dir = self.staging_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(Error::io("listing", dir, e)),
        };
        let mut removed = 0;
        for entry in entries {
            let entry = entry.at("listing", &dir)?;
            let path = entry.path();
            // `repair index` builds a placeholder index directory here.
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if is_dir {
                fs::remove_dir_all(&path).at("removing leftover", &path)?;
            } else {
                fs::remove_file(&path).at("removing leftover", &path)?;
            }
            removed += 1;
        }
        Ok(removed)
    }
}

impl ObjectStore for LocalStore {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        self.wait();
        let staging = self.staging_dir().join(staging_name("put"));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&staging)
            .at("creating", &staging)?;
        file.write_all(data).at("writing", &staging)?;
        file.sync_all().at("syncing", &staging)?;
        drop(file);
        self.put_file(name, &staging)
    }

    fn put_file(&self, name: &str, staging: &Path) -> Result<()> {
        let path = self.path_of(name)?;
        self.ensure_parent(&path)?;
        match fs::rename(staging, &path) {
            Ok(()) => {}
            // The staging file is on another file system (a cold tier on
            // another disk): copy into our own staging area, then rename.
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                let local = self.staging_dir().join(staging_name("copy"));
                fs::create_dir_all(self.staging_dir()).at("creating", self.staging_dir())?;
                fs::copy(staging, &local).at("copying to", &local)?;
                File::open(&local)
                    .and_then(|f| f.sync_all())
                    .at("syncing", &local)?;
                fs::rename(&local, &path).at("renaming staging file to", &path)?;
                fs::remove_file(staging).at("removing", staging)?;
            }
            Err(e) => return Err(Error::io("renaming staging file to", path, e)),
        }
        let dir = path.parent().expect("object paths have a parent");
        fsync_dir(dir)?;
        // Also the directory's own entry: it may have been created by a
        // process that died before making it durable.
        match dir.parent() {
            Some(grandparent) if grandparent != self.root.parent().unwrap_or(&self.root) => {
                fsync_dir(grandparent)
            }
            _ => Ok(()),
        }
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        self.wait();
        let path = self.path_of(name)?;
        fs::read(&path).at("reading", &path)
    }

    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.wait();
        let file = self.open_cached(name)?;
        file.read_exact_at(buf, offset).map_err(|e| {
            let e = if e.kind() == ErrorKind::UnexpectedEof {
                std::io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!("object ends before byte {}", offset + buf.len() as u64),
                )
            } else {
                e
            };
            Error::io("reading", self.root.join(name), e)
        })
    }

    fn size(&self, name: &str) -> Result<u64> {
        let path = self.path_of(name)?;
        Ok(fs::metadata(&path).at("reading metadata of", &path)?.len())
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        self.wait();
        let base = self.root.join(prefix.trim_end_matches('/'));
        let mut names = Vec::new();
        let mut stack = vec![base.clone()];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("listing", dir, e)),
            };
            for entry in entries {
                let entry = entry.at("listing", &dir)?;
                let path = entry.path();
                if entry.file_type().at("reading type of", &path)?.is_dir() {
                    stack.push(path);
                } else if let Ok(rel) = path.strip_prefix(&self.root) {
                    if let Some(rel) = rel.to_str() {
                        names.push(rel.to_string());
                    }
                }
            }
        }
        names.sort();
        Ok(names)
    }

    fn delete(&self, name: &str) -> Result<()> {
        let path = self.path_of(name)?;
        self.open_files.lock().expect("cache lock").remove(name);
        match fs::remove_file(&path) {
            Ok(()) => fsync_dir(path.parent().expect("object paths have a parent")),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("deleting", path, e)),
        }
    }

    fn staging_dir(&self) -> PathBuf {
        self.root.join(STAGING)
    }
}
