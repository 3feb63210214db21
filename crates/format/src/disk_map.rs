//! Disk maps: which chunk holds each fixed-size, aligned piece of a disk.
//!
//! A disk of N chunks is described by pages of up to [`PAGE_ENTRIES`]
//! entries (512 MiB of disk at 1 MiB chunks), each stored as a metadata
//! chunk. An incremental backup rewrites only the pages its changed chunks
//! fall in and reuses the ids of all others, so its cost is O(changed
//! chunks); finding the chunk at an offset is two array indexings and at
//! most one page read.
//!
//! This module is the format only: encoding and decoding pages, and where
//! a chunk's entry lies. Reading pages from a repository is `disk_reader`.

use crate::codec::{DecodeError, Decoder, Encoder};
use crate::error::{Error, Result};
use crate::format::{DISK_MAP_PAGE_MAGIC, DISK_MAP_PAGE_VERSION};
use crate::id::ChunkId;

pub const PAGE_ENTRIES: usize = 512;

/// The page holding chunk `index` of a disk. A page number too large for
/// `usize` becomes `usize::MAX`, which no disk's page list reaches, so the
/// reader reports the page missing instead of reading another.
pub fn page_of(index: u64) -> usize {
    usize::try_from(index / PAGE_ENTRIES as u64).unwrap_or(usize::MAX)
}

/// One page: `None` is a hole (never written, or all zeros).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DiskMapPage {
    pub entries: Vec<Option<ChunkId>>,
}

impl DiskMapPage {
    /// The chunk holding chunk `index` of the disk (counted from the disk's
    /// start, in the page [`page_of`] names), `None` for a hole.
    pub fn chunk(&self, index: u64) -> Option<ChunkId> {
        // The remainder is below PAGE_ENTRIES, so the conversion holds.
        usize::try_from(index % PAGE_ENTRIES as u64)
            .ok()
            .and_then(|slot| self.entries.get(slot))
            .copied()
            .flatten()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        e.raw(&DISK_MAP_PAGE_MAGIC)
            .u16(DISK_MAP_PAGE_VERSION)
            .count(self.entries.len());
        for entry in &self.entries {
            match entry {
                None => e.u8(0),
                Some(id) => e.u8(1).raw(id.as_bytes()),
            };
        }
        e.into_bytes()
    }

    pub fn decode(id: &ChunkId, bytes: &[u8]) -> Result<Self> {
        let object = || format!("disk map page {id}");
        let mut d = Decoder::new(bytes, "disk map page");
        let parse = |d: &mut Decoder| -> std::result::Result<Result<Self>, DecodeError> {
            d.expect_magic(&DISK_MAP_PAGE_MAGIC)?;
            let version = d.u16()?;
            if version != DISK_MAP_PAGE_VERSION {
                return Ok(Err(Error::UnsupportedVersion {
                    what: object(),
                    found: version as u64,
                    supported: DISK_MAP_PAGE_VERSION as u64,
                }));
            }
            let n = d.count(1)?;
            if n > PAGE_ENTRIES {
                return Err(d.error(format!("{n} entries, more than {PAGE_ENTRIES}")));
            }
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                entries.push(match d.u8()? {
                    0 => None,
                    1 => Some(ChunkId(d.array()?)),
                    tag => return Err(d.error(format!("unknown entry tag {tag}"))),
                });
            }
            Ok(Ok(DiskMapPage { entries }))
        };
        let page = parse(&mut d).map_err(|e| Error::decode(object(), e))??;
        d.finish().map_err(|e| Error::decode(object(), e))?;
        Ok(page)
    }
}

/// A page reference in a disk's record: its id and how many of its
/// entries hold data (so sizes are known without reading pages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRef {
    pub id: ChunkId,
    pub data_chunks: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_golden() {
        let page = DiskMapPage {
            entries: vec![None, Some(ChunkId([7; 32])), None],
        };
        let bytes = page.encode();
        crate::codec::assert_golden("disk_map_page_v1.bin", &bytes);
        assert_eq!(
            DiskMapPage::decode(&ChunkId::of(&bytes), &bytes).unwrap(),
            page
        );
        for len in 0..bytes.len() {
            assert!(DiskMapPage::decode(&ChunkId([0; 32]), &bytes[..len]).is_err());
        }
    }
}
