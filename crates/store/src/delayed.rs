//! A layer that makes any store answer slowly, to rehearse an archival
//! backend (thaw plans, interrupted thaws) on local disks.

use std::sync::Arc;
use std::time::Duration;

use super::{ObjectStore, ObjectWriter};
use crate::error::Result;

pub struct DelayedStore {
    inner: Arc<dyn ObjectStore>,
    delay: Duration,
}

impl DelayedStore {
    /// Wraps `inner` so that every request waits `delay` first.
    pub fn new(inner: Arc<dyn ObjectStore>, delay: Duration) -> Self {
        DelayedStore { inner, delay }
    }

    fn wait(&self) {
        std::thread::sleep(self.delay);
    }
}

impl ObjectStore for DelayedStore {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        self.wait();
        self.inner.put(name, data)
    }

    fn writer(&self) -> Result<Box<dyn ObjectWriter>> {
        self.wait();
        self.inner.writer()
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        self.wait();
        self.inner.get(name)
    }

    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.wait();
        self.inner.read_at(name, offset, buf)
    }

    fn size(&self, name: &str) -> Result<u64> {
        self.wait();
        self.inner.size(name)
    }

    fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        self.wait();
        self.inner.list_page(prefix, start_after, limit)
    }

    fn delete(&self, name: &str) -> Result<()> {
        self.wait();
        self.inner.delete(name)
    }

    fn clear_staging(&self) -> Result<usize> {
        self.inner.clear_staging()
    }

    fn evict(&self, name: &str) {
        self.inner.evict(name)
    }

    fn availability(&self, name: &str) -> Result<crate::Availability> {
        self.wait();
        self.inner.availability(name)
    }

    fn request_restore(&self, name: &str, days: u32, priority: crate::RestorePriority) -> Result<()> {
        self.wait();
        self.inner.request_restore(name, days, priority)
    }

    fn return_to_archive(&self, name: &str) -> Result<()> {
        self.inner.return_to_archive(name)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::DelayedStore;
    use crate::{MemoryStore, ObjectStore};

    #[test]
    fn conforms() {
        let store = DelayedStore::new(Arc::new(MemoryStore::new()), Duration::ZERO);
        super::super::conformance::check_all(&store);
    }

    #[test]
    fn every_request_waits() {
        let store = DelayedStore::new(Arc::new(MemoryStore::new()), Duration::from_millis(20));
        let started = Instant::now();
        store.put("a/b", b"x").unwrap();
        store.get("a/b").unwrap();
        assert!(started.elapsed() >= Duration::from_millis(40));
    }
}
