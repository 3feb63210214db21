//! A byte-bounded cache of decompressed, verified chunks shared by all
//! reader threads. The lock is held only to look up or insert, never while
//! a chunk is read or decompressed. A chunk being loaded is loaded once:
//! a reader asking for it meanwhile (the kernel catching up with the
//! read-ahead) waits for that load instead of reading it again.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};

use lru::LruCache;

use crate::id::ChunkId;

pub struct ChunkCache {
    inner: Mutex<Inner>,
    budget: u64,
}

struct Inner {
    lru: LruCache<ChunkId, Arc<Vec<u8>>>,
    bytes: u64,
    loading: HashMap<ChunkId, Arc<Loading>>,
}

/// A load in progress; set done (whatever its outcome) when it ends.
#[derive(Default)]
struct Loading {
    done: Mutex<bool>,
    ended: Condvar,
}

impl Loading {
    fn wait(&self) {
        let mut done = self.done.lock().expect("chunk load");
        while !*done {
            done = self.ended.wait(done).expect("chunk load");
        }
    }

    fn finish(&self) {
        *self.done.lock().expect("chunk load") = true;
        self.ended.notify_all();
    }
}

impl ChunkCache {
    pub fn new(budget: u64) -> Self {
        ChunkCache {
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                bytes: 0,
                loading: HashMap::new(),
            }),
            budget,
        }
    }

    /// Whether the chunk is cached or being loaded.
    pub fn has(&self, id: &ChunkId) -> bool {
        let inner = self.inner.lock().expect("chunk cache");
        inner.lru.contains(id) || inner.loading.contains_key(id)
    }

    /// The chunk from the cache, or from the load of it in progress, or
    /// else from `load`, then cached. A load that fails is retried by
    /// whoever waited for it, so each reader gets the cause of its own.
    pub fn get_or_load<E>(
        &self,
        id: &ChunkId,
        load: impl FnOnce() -> Result<Vec<u8>, E>,
    ) -> Result<Arc<Vec<u8>>, E> {
        loop {
            let loading = {
                let mut inner = self.inner.lock().expect("chunk cache");
                if let Some(data) = inner.lru.get(id) {
                    return Ok(data.clone());
                }
                match inner.loading.get(id) {
                    Some(loading) => loading.clone(),
                    None => {
                        inner.loading.insert(*id, Arc::default());
                        break;
                    }
                }
            };
            loading.wait();
        }
        let result = load().map(Arc::new);
        let loading = {
            let mut inner = self.inner.lock().expect("chunk cache");
            if let Ok(data) = &result {
                Self::put(&mut inner, self.budget, *id, data.clone());
            }
            inner.loading.remove(id)
        };
        if let Some(loading) = loading {
            loading.finish();
        }
        result
    }

    fn put(inner: &mut Inner, budget: u64, id: ChunkId, data: Arc<Vec<u8>>) {
        let len = data.len() as u64;
        if len > budget {
            return;
        }
        if let Some(old) = inner.lru.put(id, data) {
            inner.bytes -= old.len() as u64;
        }
        inner.bytes += len;
        while inner.bytes > budget {
            match inner.lru.pop_lru() {
                Some((_, evicted)) => inner.bytes -= evicted.len() as u64,
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[test]
    fn concurrent_readers_of_a_chunk_load_it_once() {
        let cache = ChunkCache::new(1 << 20);
        let id = ChunkId([7; 32]);
        let loads = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    let data = cache
                        .get_or_load(&id, || {
                            loads.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(50));
                            Ok::<_, ()>(vec![1, 2, 3])
                        })
                        .unwrap();
                    assert_eq!(*data, vec![1, 2, 3]);
                });
            }
        });
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert!(cache.has(&id));
    }

    #[test]
    fn a_failed_load_is_not_cached_and_the_next_reader_loads_again() {
        let cache = ChunkCache::new(1 << 20);
        let id = ChunkId([9; 32]);
        let failed = cache.get_or_load(&id, || Err::<Vec<u8>, _>("damaged"));
        assert_eq!(failed, Err("damaged"));
        assert!(!cache.has(&id));
        let data = cache.get_or_load(&id, || Ok::<_, &str>(vec![4])).unwrap();
        assert_eq!(*data, vec![4]);
    }
}
