//! A bounded cache, on this machine's disk, of the immutable objects a
//! remote store holds (packs and their thawed copies), so that a restore
//! or a mount reading a bucket makes one request per block of a pack, not
//! one per chunk, and reads the blocks ahead of a sequential reader
//! before it asks.
//!
//! Objects are cached in aligned blocks of [`BLOCK`] bytes, one file per
//! block, written under a temporary name and renamed, so another process
//! sharing the directory never sees half a block. Blocks are evicted least
//! recently used first once the cache holds more than its capacity; an
//! evicted block's file is unlinked, and a reader that opened it goes on
//! reading its bytes. Cached bytes are not trusted more than the bucket's:
//! the pack codec verifies every chunk, and a chunk that fails is read
//! again from the bucket after [`ObjectStore::evict`] drops the copy.
//!
//! Everything but `read_at` of a cacheable name goes straight to the
//! store behind.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::error::{Error, IoContext, Result};
use crate::{short_object, ObjectStore, ObjectWriter};

/// The unit fetched and cached: large enough that a request's latency is
/// small against its transfer, small enough that a random read through a
/// mount does not fetch a whole pack.
pub const BLOCK: u64 = 4 << 20;
/// How many blocks past the one being read a sequential reader has
/// fetched ahead of it.
const READ_AHEAD: u64 = 8;
/// Threads fetching ahead, and how many blocks may wait for them.
const FETCHERS: usize = 8;
const QUEUED: usize = 64;

/// Which object a block belongs to, and which block of it.
type BlockKey = (String, u64);

/// A block's bytes: in its cache file, or, when the cache could not keep
/// it (a full disk), in memory for the read that fetched it.
enum BlockBytes {
    Cached(Arc<File>),
    Uncached(Vec<u8>),
}

impl BlockBytes {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        match self {
            BlockBytes::Cached(file) => file.read_exact_at(buf, offset),
            BlockBytes::Uncached(bytes) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX);
                let part = bytes
                    .get(start..start.saturating_add(buf.len()))
                    .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
                buf.copy_from_slice(part);
                Ok(())
            }
        }
    }
}

/// A remote store's objects, read through a bounded local block cache.
pub struct CachedStore {
    shared: Arc<Shared>,
    /// Blocks to fetch ahead; dropping it stops the fetchers.
    ahead: SyncSender<BlockKey>,
}

struct Shared {
    inner: Arc<dyn ObjectStore>,
    dir: PathBuf,
    capacity: u64,
    state: Mutex<CacheState>,
    /// Signalled whenever a fetch finishes, well or badly.
    fetched: Condvar,
}

#[derive(Default)]
struct CacheState {
    blocks: HashMap<BlockKey, Block>,
    /// Blocks being fetched now; a reader that needs one waits for it.
    in_flight: HashSet<BlockKey>,
    /// Blocks waiting for a fetcher; a reader that needs one fetches it
    /// itself instead of waiting behind the queue.
    queued: HashSet<BlockKey>,
    sizes: HashMap<String, u64>,
    bytes: u64,
    clock: u64,
}

/// A block just read from the store: kept in its cache file, or not.
enum Fetched {
    Cached(File, u64),
    Uncached(Vec<u8>),
}

struct Block {
    /// Open until the block is evicted and every reader is done with it.
    file: Option<Arc<File>>,
    len: u64,
    last_used: u64,
    /// Whether a reader (not a fetcher) has been here, and so has already
    /// queued the blocks after it: a block read chunk by chunk asks for
    /// its read-ahead once, not once per chunk.
    visited: bool,
}

/// Whether `name` is an object whose bytes never change while it exists:
/// a pack (named by the hash of its bytes) or a thawed copy of one.
fn cacheable(name: &str) -> bool {
    (name.starts_with("packs/") || name.starts_with("thaw/")) && name.ends_with(".pack")
}

/// The cache file of block `index` of `name`: the name with its `/`s
/// made `+`s (object names never hold a `+`), and the block's number.
fn block_file_name(name: &str, index: u64) -> String {
    format!("{}.{index}", name.replace('/', "+"))
}

/// The block a cache file holds, if it is one.
fn parse_block_file_name(file: &str) -> Option<BlockKey> {
    let (name, index) = file.rsplit_once('.')?;
    let name = name.replace('+', "/");
    (cacheable(&name) && crate::validate_name(&name).is_ok()).then_some(())?;
    Some((name, index.parse().ok()?))
}

impl CachedStore {
    /// `inner`'s objects cached in `dir` (created when first needed),
    /// holding at most about `capacity` bytes. Blocks a previous run left
    /// in `dir` are used again.
    pub fn new(inner: Arc<dyn ObjectStore>, dir: &Path, capacity: u64) -> Result<Self> {
        let mut state = CacheState::default();
        if let Err(e) = state.load(dir) {
            // An unreadable cache is an empty one: reads go to the store.
            tracing::warn!(error = %e, "not using the blocks cached in {}", dir.display());
            state = CacheState::default();
        }
        let shared = Arc::new(Shared {
            inner,
            dir: dir.to_path_buf(),
            capacity: capacity.max(BLOCK),
            state: Mutex::new(state),
            fetched: Condvar::new(),
        });
        let (ahead, queue) = sync_channel(QUEUED);
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..FETCHERS {
            let (shared, queue) = (Arc::clone(&shared), Arc::clone(&queue));
            std::thread::Builder::new()
                .name("read-ahead".into())
                .spawn(move || shared.fetch_ahead(&queue))
                .map_err(|e| Error::io("starting", "a read-ahead thread", e))?;
        }
        Ok(CachedStore { shared, ahead })
    }

    /// Bytes of blocks cached now.
    pub fn cached_bytes(&self) -> u64 {
        self.shared.lock().bytes
    }

    /// Queues the blocks after `index` that a sequential reader of `name`
    /// will want next and nobody has fetched or asked for.
    fn read_ahead(&self, name: &str, index: u64, size: u64) {
        let last = size.div_ceil(BLOCK);
        let mut state = self.shared.lock();
        for next in index + 1..(index + 1 + READ_AHEAD).min(last) {
            let key = (name.to_string(), next);
            if state.blocks.contains_key(&key)
                || state.in_flight.contains(&key)
                || state.queued.contains(&key)
            {
                continue;
            }
            match self.ahead.try_send(key.clone()) {
                Ok(()) => {
                    state.queued.insert(key);
                }
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => break,
            }
        }
    }
}

impl CacheState {
    /// Takes in the blocks a previous run left, and removes the partial
    /// files of one that died while writing.
    fn load(&mut self, dir: &Path) -> Result<()> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("listing", dir, e)),
        };
        for entry in entries {
            let entry = entry.at("listing", dir)?;
            let file_name = entry.file_name();
            let file_name = file_name.to_string_lossy();
            let metadata = entry.metadata().at("reading", entry.path())?;
            match parse_block_file_name(&file_name) {
                Some(key) if metadata.is_file() => {
                    // Oldest first, so that eviction starts with them.
                    let age = metadata
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_secs());
                    self.bytes += metadata.len();
                    self.blocks.insert(
                        key,
                        Block {
                            file: None,
                            len: metadata.len(),
                            last_used: age,
                            visited: false,
                        },
                    );
                }
                _ if is_stale_partial(&file_name, &metadata) => {
                    let _ = std::fs::remove_file(entry.path());
                }
                _ => {}
            }
        }
        // Ticks of this run come after every loaded block's age.
        self.clock = self.blocks.values().map(|b| b.last_used).max().unwrap_or(0);
        Ok(())
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }
}

/// A partial block file old enough that no live process is writing it.
fn is_stale_partial(file_name: &str, metadata: &std::fs::Metadata) -> bool {
    let old = metadata
        .modified()
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age.as_secs() > 3600);
    file_name.starts_with(".partial-") && old
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn size_of(&self, name: &str) -> Result<u64> {
        if let Some(size) = self.lock().sizes.get(name) {
            return Ok(*size);
        }
        let size = self.inner.size(name)?;
        self.lock().sizes.insert(name.to_string(), size);
        Ok(size)
    }

    /// Block `index` of `name` (`size` bytes long), from the cache or
    /// fetched now; with its length, and whether this is a reader's first
    /// visit (a fetcher's never is).
    fn block(&self, name: &str, index: u64, size: u64, reader: bool) -> Result<(BlockBytes, u64, bool)> {
        let key = (name.to_string(), index);
        let mut state = self.lock();
        loop {
            if state.in_flight.contains(&key) {
                state = self
                    .fetched
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                continue;
            }
            let tick = state.tick();
            if let Some(block) = state.blocks.get_mut(&key) {
                block.last_used = tick;
                let len = block.len;
                let first_visit = reader && !block.visited;
                block.visited |= reader;
                if let Some(file) = &block.file {
                    return Ok((BlockBytes::Cached(Arc::clone(file)), len, first_visit));
                }
                // Left by an earlier run: opened on first use.
                match File::open(self.dir.join(block_file_name(name, index))) {
                    Ok(file) => {
                        let file = Arc::new(file);
                        block.file = Some(Arc::clone(&file));
                        return Ok((BlockBytes::Cached(file), len, first_visit));
                    }
                    Err(_) => {
                        state.bytes -= len;
                        state.blocks.remove(&key);
                    }
                }
            }
            break;
        }
        state.queued.remove(&key);
        state.in_flight.insert(key.clone());
        drop(state);
        let fetched = self.fetch(name, index, size);
        let mut state = self.lock();
        state.in_flight.remove(&key);
        let result = fetched.map(|fetched| {
            let (file, len) = match fetched {
                Fetched::Cached(file, len) => (Arc::new(file), len),
                Fetched::Uncached(bytes) => {
                    let len = bytes.len() as u64;
                    return (BlockBytes::Uncached(bytes), len, reader);
                }
            };
            let last_used = state.tick();
            state.bytes += len;
            state.blocks.insert(
                key.clone(),
                Block {
                    file: Some(Arc::clone(&file)),
                    len,
                    last_used,
                    visited: reader,
                },
            );
            self.evict_beyond_capacity(&mut state, &key);
            (BlockBytes::Cached(file), len, reader)
        });
        drop(state);
        self.fetched.notify_all();
        result
    }

    /// Reads block `index` of `name` from the store into a new cache file;
    /// a cache that cannot take it (no space, no permission) only costs
    /// the caching, never the read.
    fn fetch(&self, name: &str, index: u64, size: u64) -> Result<Fetched> {
        let start = index * BLOCK;
        let len = BLOCK.min(size.saturating_sub(start));
        if len == 0 {
            return Err(short_object(&self.inner.location(), name, start + 1));
        }
        let mut bytes = vec![0u8; usize::try_from(len).expect("a block fits in memory")];
        self.inner.read_at(name, start, &mut bytes)?;
        match self.keep(name, index, &bytes) {
            Ok(file) => Ok(Fetched::Cached(file, len)),
            Err(e) => {
                tracing::warn!(error = %e, "not caching a block of {name}");
                Ok(Fetched::Uncached(bytes))
            }
        }
    }

    /// Writes a fetched block to its cache file and opens it.
    fn keep(&self, name: &str, index: u64, bytes: &[u8]) -> Result<File> {
        std::fs::create_dir_all(&self.dir).at("creating", &self.dir)?;
        let path = self.dir.join(block_file_name(name, index));
        let partial = self.dir.join(format!(
            ".partial-{}",
            crate::local::staging_name("block")
        ));
        let written = std::fs::write(&partial, bytes)
            .and_then(|()| std::fs::rename(&partial, &path))
            .at("caching", &path);
        if let Err(e) = written {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
        File::open(&path).at("opening", &path)
    }

    /// Drops least recently used blocks (never `keep`, just fetched) until
    /// the cache is within its capacity.
    fn evict_beyond_capacity(&self, state: &mut CacheState, keep: &BlockKey) {
        while state.bytes > self.capacity {
            let Some(oldest) = state
                .blocks
                .iter()
                .filter(|(key, _)| *key != keep)
                .min_by_key(|(_, block)| block.last_used)
                .map(|(key, _)| key.clone())
            else {
                return;
            };
            self.remove_block(state, &oldest);
        }
    }

    fn remove_block(&self, state: &mut CacheState, key: &BlockKey) {
        if let Some(block) = state.blocks.remove(key) {
            state.bytes -= block.len;
            let _ = std::fs::remove_file(self.dir.join(block_file_name(&key.0, key.1)));
        }
    }

    /// A fetcher thread: fetches queued blocks until the store is dropped.
    /// A failed fetch ahead is only logged: the reader that needs the
    /// block fetches it again and gets the error itself.
    fn fetch_ahead(&self, queue: &Mutex<Receiver<BlockKey>>) {
        loop {
            let next = queue.lock().unwrap_or_else(|p| p.into_inner()).recv();
            let Ok((name, index)) = next else { return };
            let wanted = self.lock().queued.remove(&(name.clone(), index));
            if !wanted {
                continue; // a reader took it over
            }
            let fetched = self
                .size_of(&name)
                .and_then(|size| self.block(&name, index, size, false));
            if let Err(e) = fetched {
                tracing::debug!(object = %name, block = index, error = %e, "reading ahead failed");
            }
        }
    }
}

impl ObjectStore for CachedStore {
    fn location(&self) -> String {
        self.shared.inner.location()
    }

    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        self.shared.inner.put(name, data)
    }

    fn writer(&self) -> Result<Box<dyn ObjectWriter>> {
        self.shared.inner.writer()
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        self.shared.inner.get(name)
    }

    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        if !cacheable(name) || buf.is_empty() {
            return self.shared.inner.read_at(name, offset, buf);
        }
        let size = self.shared.size_of(name)?;
        let end = offset + buf.len() as u64;
        if end > size {
            return Err(short_object(&self.location(), name, end));
        }
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let index = at / BLOCK;
            let (file, len, first_visit) = self.shared.block(name, index, size, true)?;
            if first_visit {
                self.read_ahead(name, index, size);
            }
            let within = at - index * BLOCK;
            let take = (len - within).min((buf.len() - done) as u64) as usize;
            let path = || self.shared.dir.join(block_file_name(name, index));
            file.read_exact_at(&mut buf[done..done + take], within)
                .at("reading cached", path())?;
            done += take;
        }
        Ok(())
    }

    fn size(&self, name: &str) -> Result<u64> {
        // Asked afresh: whether the object still exists is the question.
        self.shared.inner.size(name)
    }

    fn list_page(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        self.shared.inner.list_page(prefix, start_after, limit)
    }

    fn delete(&self, name: &str) -> Result<()> {
        self.evict(name);
        self.shared.inner.delete(name)
    }

    fn clear_staging(&self) -> Result<usize> {
        self.shared.inner.clear_staging()
    }

    fn availability(&self, name: &str) -> Result<crate::Availability> {
        self.shared.inner.availability(name)
    }

    fn request_restore(&self, name: &str, days: u32, priority: crate::RestorePriority) -> Result<()> {
        self.shared.inner.request_restore(name, days, priority)
    }

    fn return_to_archive(&self, name: &str) -> Result<()> {
        self.shared.inner.return_to_archive(name)
    }

    fn evict(&self, name: &str) {
        let mut state = self.shared.lock();
        state.sizes.remove(name);
        let keys: Vec<BlockKey> = state
            .blocks
            .keys()
            .filter(|(object, _)| object == name)
            .cloned()
            .collect();
        for key in keys {
            self.shared.remove_block(&mut state, &key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::MemoryStore;

    /// A memory store that counts the ranged reads that reach it.
    #[derive(Default)]
    struct Counted {
        store: MemoryStore,
        reads: AtomicUsize,
    }

    impl ObjectStore for Counted {
        fn location(&self) -> String {
            "counted:".into()
        }
        fn put(&self, name: &str, data: &[u8]) -> Result<()> {
            self.store.put(name, data)
        }
        fn writer(&self) -> Result<Box<dyn ObjectWriter>> {
            self.store.writer()
        }
        fn get(&self, name: &str) -> Result<Vec<u8>> {
            self.store.get(name)
        }
        fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.store.read_at(name, offset, buf)
        }
        fn size(&self, name: &str) -> Result<u64> {
            self.store.size(name)
        }
        fn list_page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
            self.store.list_page(prefix, after, limit)
        }
        fn delete(&self, name: &str) -> Result<()> {
            self.store.delete(name)
        }
    }

    const PACK: &str = "packs/ab/ab01.pack";

    fn pack_bytes(len: u64, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
    }

    fn cached(dir: &Path, capacity: u64) -> (Arc<Counted>, CachedStore) {
        let counted = Arc::new(Counted::default());
        let store = CachedStore::new(counted.clone(), dir, capacity).unwrap();
        (counted, store)
    }

    fn read_sequentially(store: &CachedStore, name: &str, len: u64, piece: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < len {
            let mut buf = vec![0u8; piece.min(len - at) as usize];
            store.read_at(name, at, &mut buf).unwrap();
            out.extend_from_slice(&buf);
            at += buf.len() as u64;
        }
        out
    }

    #[test]
    fn it_keeps_the_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        let (_, store) = cached(dir.path(), 64 << 20);
        crate::conformance::check_all(&store);
    }

    #[test]
    fn a_sequential_read_makes_one_request_per_block() {
        let dir = tempfile::tempdir().unwrap();
        let (counted, store) = cached(dir.path(), 64 << 20);
        let bytes = pack_bytes(5 * BLOCK + 1234, 7);
        counted.put(PACK, &bytes).unwrap();
        // Chunk-sized pieces that straddle block boundaries.
        assert_eq!(read_sequentially(&store, PACK, bytes.len() as u64, 300_001), bytes);
        assert_eq!(counted.reads.load(Ordering::SeqCst), 6);
        assert_eq!(store.cached_bytes(), bytes.len() as u64);
        // Read again: all from the cache.
        assert_eq!(read_sequentially(&store, PACK, bytes.len() as u64, 1 << 20), bytes);
        assert_eq!(counted.reads.load(Ordering::SeqCst), 6);
    }

    #[test]
    fn blocks_ahead_of_a_reader_are_fetched_before_it_asks() {
        let dir = tempfile::tempdir().unwrap();
        let (counted, store) = cached(dir.path(), 64 << 20);
        let blocks = READ_AHEAD + 3;
        counted.put(PACK, &pack_bytes(blocks * BLOCK, 5)).unwrap();
        let wait_for_cached = |expected: u64| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while store.cached_bytes() < expected * BLOCK {
                assert!(std::time::Instant::now() < deadline, "read-ahead stopped at {} bytes", store.cached_bytes());
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        };
        let mut byte = [0u8; 1];
        store.read_at(PACK, 0, &mut byte).unwrap();
        wait_for_cached(1 + READ_AHEAD);
        // Reading on into the next block (chunk by chunk) moves the window.
        store.read_at(PACK, BLOCK, &mut byte).unwrap();
        store.read_at(PACK, BLOCK + 1, &mut byte).unwrap();
        wait_for_cached(2 + READ_AHEAD);
        assert_eq!(counted.reads.load(Ordering::SeqCst) as u64, 2 + READ_AHEAD);
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let dir = tempfile::tempdir().unwrap();
        let (counted, store) = cached(dir.path(), 3 * BLOCK);
        for seed in 0..4u8 {
            let name = format!("packs/0{seed}/0{seed}.pack");
            let bytes = pack_bytes(2 * BLOCK, seed);
            counted.put(&name, &bytes).unwrap();
            assert_eq!(read_sequentially(&store, &name, 2 * BLOCK, 1 << 20), bytes);
            assert!(store.cached_bytes() <= 3 * BLOCK + BLOCK);
        }
        let files = std::fs::read_dir(dir.path()).unwrap().count() as u64;
        assert!(files <= 4, "{files} block files left for a capacity of 3");
    }

    #[test]
    fn blocks_left_by_an_earlier_run_are_used_again() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = pack_bytes(BLOCK + 10, 3);
        let (counted, store) = cached(dir.path(), 64 << 20);
        counted.put(PACK, &bytes).unwrap();
        read_sequentially(&store, PACK, bytes.len() as u64, 4096);
        drop(store);
        let (again, store) = cached(dir.path(), 64 << 20);
        again.put(PACK, &bytes).unwrap();
        assert_eq!(read_sequentially(&store, PACK, bytes.len() as u64, 4096), bytes);
        assert_eq!(again.reads.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn an_evicted_copy_is_read_again_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let (counted, store) = cached(dir.path(), 64 << 20);
        let bytes = pack_bytes(1000, 9);
        counted.put(PACK, &bytes).unwrap();
        read_sequentially(&store, PACK, 1000, 1000);
        // Damage the local copy, as a failing disk would.
        let block = dir.path().join(block_file_name(PACK, 0));
        let mut damaged = std::fs::read(&block).unwrap();
        damaged[10] ^= 0xff;
        std::fs::write(&block, damaged).unwrap();
        store.evict(PACK);
        assert_eq!(read_sequentially(&store, PACK, 1000, 1000), bytes);
        assert_eq!(counted.reads.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_cache_that_cannot_keep_blocks_still_serves_reads() {
        let dir = tempfile::tempdir().unwrap();
        // Below a regular file, no directory can be made: as unwritable
        // as a full disk, even for root.
        let blocked = dir.path().join("a-file");
        std::fs::write(&blocked, b"").unwrap();
        let (counted, store) = cached(&blocked.join("cache"), 64 << 20);
        let bytes = pack_bytes(2 * BLOCK + 77, 4);
        counted.put(PACK, &bytes).unwrap();
        assert_eq!(read_sequentially(&store, PACK, bytes.len() as u64, 100_003), bytes);
        assert_eq!(store.cached_bytes(), 0);
    }

    #[test]
    fn missing_objects_and_reads_past_the_end_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (counted, store) = cached(dir.path(), 64 << 20);
        let mut buf = [0u8; 10];
        assert!(store.read_at(PACK, 0, &mut buf).unwrap_err().is_not_found());
        counted.put(PACK, &[1u8; 15]).unwrap();
        assert!(store.read_at(PACK, 10, &mut buf).is_err());
        store.read_at(PACK, 5, &mut buf).unwrap();
        assert_eq!(buf, [1u8; 10]);
    }

    #[test]
    fn block_file_names_round_trip_and_refuse_foreign_files() {
        assert_eq!(
            parse_block_file_name(&block_file_name(PACK, 12)),
            Some((PACK.to_string(), 12))
        );
        assert_eq!(parse_block_file_name("config.0"), None);
        assert_eq!(parse_block_file_name("packs+..+x.pack.1"), None);
        assert_eq!(parse_block_file_name(".partial-x"), None);
    }
}
