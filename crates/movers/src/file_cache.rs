//! The file cache: a data mover's memory of what it read, so that an
//! incremental backup reads only files that changed.
//!
//! For each source and path it keeps the file's fingerprint (size, times,
//! inode, …) and the chunks its content was cut into. It belongs to the
//! mover, not to the repository: it holds nothing the repository needs,
//! only saves reading, and a mover on another machine keeps its own. A lost
//! or damaged record only means the file is read again, so writes need no
//! fsync. It is a RocksDB database in the mover's state directory.
//!
//! Three kinds of records share it, told apart by the byte after the
//! source name's 0 (absolute paths start with `/`; see `docs/FORMAT.md`):
//! files (`FileCacheRecord`), directories (`DirCacheRecord`: an unchanged
//! directory reuses its whole tree) and runs (which restore point a backup
//! run committed, so that directory records are trusted only once their
//! run is known to have committed a restore point still kept warm).
//!
//! For an encrypted repository the cache holds no names: source names and
//! paths in keys are replaced by keyed digests, and directory listings are
//! digested with the same key (see `docs/FORMAT.md`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rocksdb::{Direction, IteratorMode, Options, WriteBatch, DB};

use crate::crypto::NameKey;
use crate::error::{Error, IoContext, Result};
use crate::id::RestorePointId;
use crate::index::records::{decode_run_record, encode_run_record, DirCacheRecord};
use crate::index::FileCacheRecord;

/// Tags of hidden-name keys; plain keys of files have none (their path
/// starts with `/`).
const FILE_TAG: u8 = 0;
const DIR_TAG: u8 = 1;
const RUN_TAG: u8 = 2;

/// Names one backup run in directory records until it has committed.
pub type RunId = [u8; 16];

pub struct FileCache {
    db: DB,
    path: PathBuf,
    /// Set for an encrypted repository: names are digested with it.
    names: Option<NameKey>,
}

fn cache_error(dir: &Path, source: rocksdb::Error) -> Error {
    Error::Index {
        path: dir.to_path_buf(),
        detail: format!("file cache: {}", source.into_string()),
    }
}

impl FileCache {
    /// The key of file `path` of `source`.
    fn key(&self, source: &str, path: &[u8]) -> Vec<u8> {
        match self.names {
            Some(_) => self.tagged_key(source, FILE_TAG, path),
            None => self.raw_key(source, None, path),
        }
    }

    /// The key of a directory (its path) or a run (its id) of `source`.
    /// Hidden names digest a path, never a run id, which is random.
    fn tagged_key(&self, source: &str, tag: u8, rest: &[u8]) -> Vec<u8> {
        match &self.names {
            Some(names) if tag != RUN_TAG => self.raw_key(source, Some(tag), &names.digest(rest)),
            _ => self.raw_key(source, Some(tag), rest),
        }
    }

    fn raw_key(&self, source: &str, tag: Option<u8>, rest: &[u8]) -> Vec<u8> {
        let mut key = Vec::with_capacity(source.len() + 2 + rest.len());
        match &self.names {
            Some(names) => key.extend_from_slice(&names.digest(source.as_bytes())),
            None => key.extend_from_slice(source.as_bytes()),
        }
        key.push(0);
        key.extend(tag);
        key.extend_from_slice(rest);
        key
    }

    /// A hasher for directory listing digests: keyed when names are
    /// hidden, so that a digest cannot confirm a guessed listing.
    pub fn listing_hasher(&self) -> blake3::Hasher {
        self.names
            .as_ref()
            .map_or_else(blake3::Hasher::new, NameKey::hasher)
    }

    /// Opens (creating if needed) the cache in `dir`, hiding names with
    /// `names` (an encrypted repository's key). One mover at a time may
    /// hold it; a second gets RocksDB's lock error, named.
    pub fn open(dir: &Path, names: Option<NameKey>) -> Result<Self> {
        std::fs::create_dir_all(dir).at("creating", dir)?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_keep_log_file_num(2);
        opts.set_max_open_files(256);
        let db = DB::open(&opts, dir).map_err(|e| cache_error(dir, e))?;
        Ok(FileCache {
            db,
            path: dir.to_path_buf(),
            names,
        })
    }

    fn err(&self, source: rocksdb::Error) -> Error {
        cache_error(&self.path, source)
    }

    /// What the mover read of `path` in `source` last time, if anything.
    pub fn get(&self, source: &str, path: &[u8]) -> Result<Option<FileCacheRecord>> {
        match self
            .db
            .get_pinned(self.key(source, path))
            .map_err(|e| self.err(e))?
        {
            // A damaged record only costs a re-read.
            Some(v) => Ok(FileCacheRecord::decode(&v).ok()),
            None => Ok(None),
        }
    }

    /// The records of several files of `source` in one lookup, in order.
    pub fn get_files(&self, source: &str, paths: &[&[u8]]) -> Result<Vec<Option<FileCacheRecord>>> {
        self.db
            .multi_get(paths.iter().map(|path| self.key(source, path)))
            .into_iter()
            .map(|found| match found.map_err(|e| self.err(e))? {
                Some(v) => Ok(FileCacheRecord::decode(&v).ok()),
                None => Ok(None),
            })
            .collect()
    }

    /// What the directory `path` of `source` looked like when its tree
    /// was last stored.
    pub fn get_dir(&self, source: &str, path: &[u8]) -> Result<Option<DirCacheRecord>> {
        let value = self
            .db
            .get_pinned(self.tagged_key(source, DIR_TAG, path))
            .map_err(|e| self.err(e))?;
        Ok(value.and_then(|v| DirCacheRecord::decode(&v).ok()))
    }

    /// Records that `run` committed `restore_point`.
    pub fn record_run(&self, source: &str, run: &RunId, restore_point: &RestorePointId) -> Result<()> {
        self.db
            .put(
                self.tagged_key(source, RUN_TAG, run),
                encode_run_record(restore_point),
            )
            .map_err(|e| self.err(e))
    }

    /// The runs of `source` whose restore point `trust` accepts; records
    /// of the others (restore points forgotten or gone cold since) are
    /// dropped, since they can never be trusted again.
    pub fn trusted_runs(
        &self,
        source: &str,
        trust: impl Fn(&RestorePointId) -> bool,
    ) -> Result<HashSet<RunId>> {
        let prefix = self.tagged_key(source, RUN_TAG, &[]);
        let mut trusted = HashSet::new();
        let mut stale = WriteBatch::default();
        for item in self
            .db
            .iterator(IteratorMode::From(&prefix, Direction::Forward))
        {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let Some(run) = k.strip_prefix(prefix.as_slice()) else {
                break;
            };
            match (RunId::try_from(run), decode_run_record(&v)) {
                (Ok(run), Ok(id)) if trust(&id) => {
                    trusted.insert(run);
                }
                _ => stale.delete(&k),
            }
        }
        self.db.write(stale).map_err(|e| self.err(e))?;
        Ok(trusted)
    }

    pub fn batch(&self) -> FileCacheBatch<'_> {
        FileCacheBatch {
            cache: self,
            batch: WriteBatch::default(),
        }
    }
}

/// File cache updates, written together.
pub struct FileCacheBatch<'a> {
    cache: &'a FileCache,
    batch: WriteBatch,
}

impl FileCacheBatch<'_> {
    pub fn put(&mut self, source: &str, path: &[u8], record: &FileCacheRecord) -> Result<()> {
        self.batch.put(self.cache.key(source, path), record.encode());
        if self.batch.len() >= 4096 {
            self.flush()?;
        }
        Ok(())
    }

    pub fn put_dir(&mut self, source: &str, path: &[u8], record: &DirCacheRecord) -> Result<()> {
        self.batch
            .put(self.cache.tagged_key(source, DIR_TAG, path), record.encode());
        if self.batch.len() >= 4096 {
            self.flush()?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<()> {
        let batch = std::mem::take(&mut self.batch);
        self.cache.db.write(batch).map_err(|e| self.cache.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ChunkId;
    use crate::index::FileFingerprint;
    use crate::tree::Extent;

    fn records_survive_reopening_and_are_kept_per_source(names: Option<NameKey>) {
        let dir = tempfile::tempdir().unwrap();
        let record = FileCacheRecord {
            fingerprint: FileFingerprint {
                size: 5,
                mtime_ns: 1_000_000_002,
                ctime_ns: 3_000_000_004,
                inode: 7,
                device: 8,
            },
            extents: vec![Extent::Data {
                id: ChunkId::of(b"hello"),
                len: 5,
            }],
        };
        {
            let cache = FileCache::open(dir.path(), names).unwrap();
            let mut batch = cache.batch();
            batch.put("web", b"/etc/hosts", &record).unwrap();
            batch.flush().unwrap();
            cache.record_run("web", &[2; 16], &RestorePointId([3; 32])).unwrap();
        }
        let cache = FileCache::open(dir.path(), names).unwrap();
        assert_eq!(cache.get("web", b"/etc/hosts").unwrap(), Some(record));
        assert_eq!(cache.get("db", b"/etc/hosts").unwrap(), None);
        let runs = cache.trusted_runs("web", |_| true).unwrap();
        assert_eq!(runs.len(), 1, "file records are not mistaken for runs");
        assert!(cache.get("web", b"/etc/hosts").unwrap().is_some());
        if names.is_some() {
            for item in cache.db.iterator(IteratorMode::Start) {
                let (key, _) = item.unwrap();
                let text = String::from_utf8_lossy(&key);
                assert!(!text.contains("hosts") && !text.contains("web"), "{key:?}");
            }
        }
        assert!(
            FileCache::open(dir.path(), names).is_err(),
            "a second holder is refused"
        );
    }

    #[test]
    fn records_survive_reopening_with_plain_names() {
        records_survive_reopening_and_are_kept_per_source(None);
    }

    #[test]
    fn records_survive_reopening_with_hidden_names() {
        let master = crate::crypto::MasterKey::generate().unwrap();
        let names = crate::crypto::Protection::encrypted(&master).name_key();
        records_survive_reopening_and_are_kept_per_source(names);
    }
}
