//! A byte-bounded cache of decompressed, verified chunks shared by all
//! reader threads. The lock is held only to look up or insert, never while
//! a chunk is read or decompressed.

use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::id::ChunkId;

pub struct ChunkCache {
    inner: Mutex<Inner>,
    budget: u64,
}

struct Inner {
    lru: LruCache<ChunkId, Arc<Vec<u8>>>,
    bytes: u64,
}

impl ChunkCache {
    pub fn new(budget: u64) -> Self {
        ChunkCache {
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
            budget,
        }
    }

    pub fn get(&self, id: &ChunkId) -> Option<Arc<Vec<u8>>> {
        self.inner.lock().expect("chunk cache").lru.get(id).cloned()
    }

    pub fn contains(&self, id: &ChunkId) -> bool {
        self.inner.lock().expect("chunk cache").lru.contains(id)
    }

    pub fn insert(&self, id: ChunkId, data: Arc<Vec<u8>>) {
        let mut inner = self.inner.lock().expect("chunk cache");
        let len = data.len() as u64;
        if len > self.budget {
            return;
        }
        if let Some(old) = inner.lru.put(id, data) {
            inner.bytes -= old.len() as u64;
        }
        inner.bytes += len;
        while inner.bytes > self.budget {
            match inner.lru.pop_lru() {
                Some((_, evicted)) => inner.bytes -= evicted.len() as u64,
                None => break,
            }
        }
    }
}
