//! Random access to a stored disk's chunks: disk map pages read through
//! the repository and kept in a [`PageCache`]. Restore streams a disk in
//! order and keeps only the page it is in; the mount keeps every page a
//! reader touched, for as long as the disk's inode lives.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::disk_map::{page_of, DiskMapPage, PageRef};
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::reader::RepositoryReader;

/// Reads and decodes one disk map page.
pub fn read_page(repo: &dyn RepositoryReader, id: &ChunkId) -> Result<DiskMapPage> {
    DiskMapPage::decode(id, &repo.read_chunk(id)?)
}

/// Decoded pages of one disk by page index. The lock is held only to look
/// up or insert, never while a page is read.
pub struct PageCache {
    pages: Mutex<HashMap<usize, Arc<DiskMapPage>>>,
    keep: usize,
}

impl PageCache {
    /// Keeps at most `keep` pages, forgetting all of them when full: a
    /// reader moving forward through a disk needs only the page it is in.
    pub fn keeping(keep: usize) -> Self {
        PageCache {
            pages: Mutex::new(HashMap::new()),
            keep: keep.max(1),
        }
    }

    pub fn unbounded() -> Self {
        Self::keeping(usize::MAX)
    }

    fn get(&self, index: usize) -> Option<Arc<DiskMapPage>> {
        self.pages.lock().expect("page cache").get(&index).cloned()
    }

    fn insert(&self, index: usize, page: Arc<DiskMapPage>) {
        let mut pages = self.pages.lock().expect("page cache");
        if pages.len() >= self.keep && !pages.contains_key(&index) {
            pages.clear();
        }
        pages.insert(index, page);
    }
}

/// A stored disk's map, read through a cache.
pub struct DiskMapReader<'r> {
    repo: &'r dyn RepositoryReader,
    pages: &'r [PageRef],
    cache: &'r PageCache,
}

impl<'r> DiskMapReader<'r> {
    pub fn new(repo: &'r dyn RepositoryReader, pages: &'r [PageRef], cache: &'r PageCache) -> Self {
        DiskMapReader { repo, pages, cache }
    }

    pub fn page(&self, index: usize) -> Result<Arc<DiskMapPage>> {
        if let Some(page) = self.cache.get(index) {
            return Ok(page);
        }
        let page_ref = self
            .pages
            .get(index)
            .ok_or_else(|| Error::corrupt("disk map", format!("page {index} does not exist")))?;
        let page = Arc::new(read_page(self.repo, &page_ref.id)?);
        self.cache.insert(index, page.clone());
        Ok(page)
    }

    /// The chunk holding chunk `index` of the disk, `None` for a hole.
    pub fn chunk_at(&self, index: u64) -> Result<Option<ChunkId>> {
        Ok(self.page(page_of(index))?.chunk(index))
    }
}
