//! A disk of a VM restore point as a [`ByteSource`]: its disk map read
//! through a page cache, its chunks through the repository's verifying
//! read and a byte-bounded chunk cache (the mount shares its own). Holes
//! read as zeros; a chunk that fails verification is an error, so a guest
//! file system above never sees wrong bytes.

use std::io;
use std::sync::Arc;

use strata_engine::chunk_cache::ChunkCache;
use strata_engine::disk_reader::{DiskMapReader, PageCache};
use strata_engine::reader::RepositoryReader;
use strata_engine::vm::description::DiskRecord;

use crate::source::ByteSource;

pub struct StoredDisk {
    repo: Arc<dyn RepositoryReader>,
    disk: DiskRecord,
    pages: PageCache,
    cache: Arc<ChunkCache>,
}

impl StoredDisk {
    pub fn new(repo: Arc<dyn RepositoryReader>, disk: DiskRecord, cache: Arc<ChunkCache>) -> StoredDisk {
        StoredDisk {
            repo,
            disk,
            pages: PageCache::unbounded(),
            cache,
        }
    }
}

impl ByteSource for StoredDisk {
    fn len(&self) -> u64 {
        self.disk.capacity
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64).filter(|&end| end <= self.disk.capacity);
        if end.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} bytes at {offset} lie past the end of disk {}", buf.len(), self.disk.file_name),
            ));
        }
        let chunk = u64::from(self.disk.chunk_size);
        let map = DiskMapReader::new(self.repo.as_ref(), &self.disk.pages, &self.pages);
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let index = at / chunk;
            let within = (at % chunk) as usize;
            let n = ((chunk - within as u64) as usize).min(buf.len() - done);
            match map.chunk_at(index).map_err(io::Error::other)? {
                None => buf[done..done + n].fill(0),
                Some(id) => {
                    let data = self.cache.get_or_load(&id, || self.repo.read_chunk(&id)).map_err(io::Error::other)?;
                    let bytes = data.get(within..within + n).ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("chunk {index} of disk {} is shorter than the disk map says", self.disk.file_name),
                        )
                    })?;
                    buf[done..done + n].copy_from_slice(bytes);
                }
            }
            done += n;
        }
        Ok(())
    }
}
