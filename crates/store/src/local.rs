//! [`ObjectStore`] on a local (or network-mounted) directory.
//!
//! Durability: an object is written to the store's staging directory
//! (`tmp/`, on the same file system so that a rename publishes it),
//! fsync'ed, renamed to its final name, and the directory holding it is
//! fsync'ed (as is its parent when the directory was just created).
//! Readers keep a small cache of open files so that reading many chunks of
//! one pack costs one `open`, and reads use `pread` so that the cache lock
//! is never held across I/O.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{directory_prefix, short_object, validate_name, ObjectStore, ObjectWriter};
use crate::error::{Error, IoContext, Result};

const OPEN_FILE_CACHE: usize = 256;
const STAGING: &str = "tmp";

pub struct LocalStore {
    root: PathBuf,
    /// Shared with the handles writers publish through, so that replacing
    /// or deleting an object drops every cached descriptor of the old one.
    open_files: Arc<Mutex<OpenFiles>>,
}

#[derive(Default)]
struct OpenFiles {
    files: HashMap<String, Arc<File>>,
    /// Bumped whenever an object is replaced or deleted: a descriptor
    /// opened before that may be of the old object, and is not cached.
    generation: u64,
}

impl OpenFiles {
    fn forget(&mut self, name: &str) {
        self.files.remove(name);
        self.generation += 1;
    }
}

static STAGING_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name unique to this process and call, for staging files.
pub fn staging_name(prefix: &str) -> String {
    let n = STAGING_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}.tmp", std::process::id())
}

/// Removes everything in the staging directory `dir` (files an
/// interrupted writer left, and scratch directories such as an index moved
/// aside); returns how many entries there were. Only the holder of the
/// repository's write lock may call this.
pub(crate) fn remove_leftovers(dir: &Path) -> Result<usize> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io("listing", dir, e)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.at("listing", dir)?;
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(&path).at("removing leftover", &path)?;
        } else {
            fs::remove_file(&path).at("removing leftover", &path)?;
        }
        removed += 1;
    }
    Ok(removed)
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
            open_files: Arc::new(Mutex::new(OpenFiles::default())),
        }
    }

    /// Creates the store's directory (which must be new or empty) and its
    /// staging area, durably.
    pub fn create(root: &Path) -> Result<Self> {
        if root.is_dir() && fs::read_dir(root).at("listing", root)?.next().is_some() {
            return Err(Error::InvalidInput(format!(
                "{} is not empty; give a new or empty directory",
                root.display()
            )));
        }
        fs::create_dir_all(root.join(STAGING)).at("creating", root)?;
        fsync_dir(root)?;
        if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
            fsync_dir(parent)?;
        }
        Ok(Self::new(root))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, name: &str) -> Result<PathBuf> {
        validate_name(name)?;
        if name.split('/').next() == Some(STAGING) {
            return Err(Error::InvalidInput(format!(
                "invalid object name {name:?}: {STAGING}/ is the store's staging area"
            )));
        }
        Ok(self.root.join(name))
    }

    fn staging_dir(&self) -> PathBuf {
        self.root.join(STAGING)
    }

    fn open_cached(&self, name: &str) -> Result<Arc<File>> {
        let generation = {
            let cache = self.open_files.lock().expect("cache lock");
            if let Some(file) = cache.files.get(name) {
                return Ok(file.clone());
            }
            cache.generation
        };
        // Opened without the lock held; cached only if nothing was
        // replaced or deleted meanwhile.
        let path = self.path_of(name)?;
        let file = Arc::new(File::open(&path).at("opening", &path)?);
        let mut cache = self.open_files.lock().expect("cache lock");
        if cache.generation == generation {
            if cache.files.len() >= OPEN_FILE_CACHE {
                cache.files.clear();
            }
            cache.files.insert(name.to_string(), file.clone());
        }
        Ok(file)
    }


    /// Moves a finished staging file to `name`: the one way an object
    /// appears in this store.
    fn publish(&self, staging: &Path, name: &str) -> Result<()> {
        let path = self.path_of(name)?;
        let dir = path.parent().expect("object paths have a parent");
        // Every directory this creates needs its own entry made durable,
        // in its parent, up to the first that existed.
        let created: Vec<PathBuf> = dir
            .ancestors()
            .take_while(|d| *d != self.root && !d.is_dir())
            .map(Path::to_path_buf)
            .collect();
        if !created.is_empty() {
            fs::create_dir_all(dir).at("creating directory", dir)?;
        }
        fs::rename(staging, &path).at("renaming staging file to", &path)?;
        self.open_files.lock().expect("cache lock").forget(name);
        fsync_dir(dir)?;
        // The directory's own entry also when it already existed: it may
        // have been created by a process that died before making it durable.
        let mut parents: Vec<&Path> = created.iter().filter_map(|d| d.parent()).collect();
        if dir != self.root {
            parents.push(dir.parent().expect("below the root"));
        }
        parents.sort();
        parents.dedup();
        for parent in parents {
            fsync_dir(parent)?;
        }
        Ok(())
    }

    /// Appends to `out`, in byte order, the names below `dir` (whose
    /// object-name prefix is `rel`) that sort after `start_after`, until
    /// `out` holds `limit`.
    fn list_into(
        &self,
        dir: &Path,
        rel: &str,
        start_after: Option<&str>,
        limit: usize,
        out: &mut Vec<String>,
    ) -> Result<()> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("listing", dir, e)),
        };
        // A directory sorts as its name plus '/', which makes this
        // depth-first walk yield full names in byte order.
        let mut keyed = Vec::new();
        for entry in entries {
            let entry = entry.at("listing", dir)?;
            let Ok(file_name) = entry.file_name().into_string() else {
                continue; // not an object name
            };
            let is_dir = entry
                .file_type()
                .at("reading type of", entry.path())?
                .is_dir();
            if rel.is_empty() && file_name == STAGING {
                continue;
            }
            let key = format!("{rel}{file_name}{}", if is_dir { "/" } else { "" });
            keyed.push((key, is_dir));
        }
        keyed.sort();
        for (key, is_dir) in keyed {
            if out.len() >= limit {
                break;
            }
            let after = |s: &str| start_after.is_none_or(|a| s > a);
            if is_dir {
                let inside = start_after.is_some_and(|a| a.starts_with(&key));
                if inside || after(&key) {
                    self.list_into(&self.root.join(&key), &key, start_after, limit, out)?;
                }
            } else if after(&key) {
                out.push(key);
            }
        }
        Ok(())
    }
}

impl ObjectStore for LocalStore {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        let mut writer = self.writer()?;
        writer.write_all(data).at("writing", self.root.join(name))?;
        writer.commit(name)
    }

    fn writer(&self) -> Result<Box<dyn ObjectWriter>> {
        let dir = self.staging_dir();
        fs::create_dir_all(&dir).at("creating directory", &dir)?;
        let path = dir.join(staging_name("object"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .at("creating", &path)?;
        Ok(Box::new(LocalWriter {
            store: self.clone_handle(),
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            path,
        }))
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        let path = self.path_of(name)?;
        fs::read(&path).at("reading", &path)
    }

    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        let file = self.open_cached(name)?;
        file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == ErrorKind::UnexpectedEof {
                short_object(&self.location(), name, offset + buf.len() as u64)
            } else {
                Error::io("reading", self.root.join(name), e)
            }
        })
    }

    fn size(&self, name: &str) -> Result<u64> {
        let path = self.path_of(name)?;
        Ok(fs::metadata(&path).at("reading metadata of", &path)?.len())
    }

    fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        let rel = directory_prefix(prefix);
        if !rel.is_empty() {
            self.path_of(rel.trim_end_matches('/'))?;
        }
        let mut out = Vec::new();
        self.list_into(&self.root.join(&rel), &rel, start_after, limit, &mut out)?;
        Ok(out)
    }

    fn delete(&self, name: &str) -> Result<()> {
        let path = self.path_of(name)?;
        self.open_files.lock().expect("cache lock").forget(name);
        match fs::remove_file(&path) {
            Ok(()) => fsync_dir(path.parent().expect("object paths have a parent")),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("deleting", path, e)),
        }
    }

    fn clear_staging(&self) -> Result<usize> {
        remove_leftovers(&self.staging_dir())
    }
}

impl LocalStore {
    /// A second handle on the same directory, sharing the open-file
    /// cache, for a writer to publish through.
    fn clone_handle(&self) -> LocalStore {
        LocalStore {
            root: self.root.clone(),
            open_files: self.open_files.clone(),
        }
    }
}

/// A staging file that becomes an object on commit.
struct LocalWriter {
    store: LocalStore,
    out: Option<BufWriter<File>>,
    path: PathBuf,
}

impl Write for LocalWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.as_mut().expect("open until commit").write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.as_mut().expect("open until commit").flush()
    }
}

impl ObjectWriter for LocalWriter {
    fn commit(mut self: Box<Self>, name: &str) -> Result<()> {
        let out = self.out.take().expect("committed once");
        let file = out
            .into_inner()
            .map_err(|e| e.into_error())
            .at("writing", &self.path)?;
        file.sync_all().at("syncing", &self.path)?;
        drop(file);
        let published = self.store.publish(&self.path, name);
        if published.is_err() {
            let _ = fs::remove_file(&self.path);
        }
        // Published or removed: nothing left for Drop to clean up.
        self.path = PathBuf::new();
        published
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            self.out = None;
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LocalStore;
    use crate::ObjectStore;

    #[test]
    fn conforms() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::create(&dir.path().join("store")).unwrap();
        super::super::conformance::check_all(&store);
    }

    #[test]
    fn names_and_prefixes_stay_inside_the_store_and_out_of_staging() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::create(&dir.path().join("store")).unwrap();
        assert!(store.put("tmp/x", b"x").is_err());
        for prefix in ["/etc", "../", "a/../..", "tmp/"] {
            assert!(store.list_page(prefix, None, 10).is_err(), "{prefix}");
        }
    }

    #[test]
    fn a_replaced_object_is_never_read_through_a_stale_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::create(&dir.path().join("store")).unwrap();
        store.put("a/b", b"first").unwrap();
        let mut buf = [0u8; 5];
        store.read_at("a/b", 0, &mut buf).unwrap();
        store.put("a/b", b"other").unwrap();
        store.read_at("a/b", 0, &mut buf).unwrap();
        assert_eq!(&buf, b"other");
    }

    #[test]
    fn interrupted_writes_leave_only_staging_which_is_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::create(&dir.path().join("store")).unwrap();
        let mut writer = store.writer().unwrap();
        std::io::Write::write_all(&mut writer, b"half a pack").unwrap();
        // A crash: the writer's clean-up never runs.
        std::mem::forget(writer);
        let store_ref: &dyn ObjectStore = &store;
        assert!(store_ref.list_all("").unwrap().is_empty());
        assert_eq!(store.clear_staging().unwrap(), 1);
    }
}
