//! The read path of the mount: which chunks hold a byte range of a file
//! or disk, reading them through the shared cache, and where data and
//! holes lie (SEEK_DATA/SEEK_HOLE) by the stored layout alone.

use std::sync::Arc;

use super::cache::ChunkCache;
use super::namespace::{FileContent, Inode, Kind, Namespace};
use crate::disk_reader::DiskMapReader;
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::tree::Extent;

/// Chunks read ahead for a sequential reader.
pub const PREFETCH_CHUNKS: usize = 2;

/// Reads one chunk through the cache.
pub fn load_chunk<M>(ns: &Namespace<M>, cache: &ChunkCache, id: &ChunkId) -> Result<Arc<Vec<u8>>> {
    if let Some(data) = cache.get(id) {
        return Ok(data);
    }
    let data = Arc::new(ns.repo.read_chunk(id)?);
    cache.insert(*id, data.clone());
    Ok(data)
}

/// Where a read of a regular file finds its bytes.
pub enum Source {
    Extents(Arc<FileContent>),
    Disk,
    Blob(Arc<Vec<u8>>),
}

/// The chunks covering `[offset, offset + len)` of a disk, with offsets.
pub fn disk_chunks<M: Send + Sync>(
    ns: &Namespace<M>,
    inode: &Inode,
    offset: u64,
    len: u64,
) -> Result<Vec<(u64, u64, Option<ChunkId>)>> {
    let Kind::FlatDisk {
        description, disk, ..
    } = &inode.kind
    else {
        return Ok(Vec::new());
    };
    let disk = &description.disks[*disk];
    let chunk = disk.chunk_size as u64;
    let mut out = Vec::new();
    let end = (offset + len).min(disk.capacity);
    let map = DiskMapReader::new(&ns.repo, &disk.pages, &inode.pages);
    let mut index = offset / chunk;
    while index * chunk < end {
        let id = map.chunk_at(index)?;
        out.push((index * chunk, disk.chunk_len(index), id));
        index += 1;
    }
    Ok(out)
}

/// The bytes `[offset, offset + size)` of a file; also returns the chunks
/// that follow, for prefetching.
pub fn read_range<M: Send + Sync>(
    ns: &Namespace<M>,
    cache: &ChunkCache,
    inode: &Inode,
    source: &Source,
    offset: u64,
    size: u32,
) -> Result<(Vec<u8>, Vec<ChunkId>)> {
    let mut out = Vec::with_capacity(size as usize);
    let mut upcoming = Vec::new();
    let want_end = offset + size as u64;
    let mut pieces: Vec<(u64, u64, Option<ChunkId>)> = Vec::new();
    match source {
        Source::Blob(data) => {
            let start = (offset as usize).min(data.len());
            let end = (want_end as usize).min(data.len());
            return Ok((data[start..end].to_vec(), upcoming));
        }
        Source::Extents(content) => {
            let mut i = content.extent_at(offset);
            while i < content.extents.len() {
                let start = content.starts[i];
                let extent = &content.extents[i];
                if start >= want_end {
                    if let Extent::Data { id, .. } = extent {
                        upcoming.push(*id);
                        if upcoming.len() >= PREFETCH_CHUNKS {
                            break;
                        }
                    }
                } else {
                    let id = match extent {
                        Extent::Data { id, .. } => Some(*id),
                        Extent::Hole { .. } => None,
                    };
                    pieces.push((start, extent.len(), id));
                }
                i += 1;
            }
        }
        Source::Disk => {
            pieces = disk_chunks(ns, inode, offset, size as u64)?;
            if let Some(&(start, len, _)) = pieces.last() {
                upcoming = disk_chunks(ns, inode, start + len, PREFETCH_CHUNKS as u64)?
                    .into_iter()
                    .filter_map(|(_, _, id)| id)
                    .collect();
            }
        }
    }
    for (start, len, id) in pieces {
        let from = offset.max(start);
        let to = want_end.min(start + len);
        if from >= to {
            continue;
        }
        match id {
            None => out.resize(out.len() + (to - from) as usize, 0),
            Some(id) => {
                let data = load_chunk(ns, cache, &id)
                    .map_err(|e| Error::corrupt(format!("chunk {id}"), e))?;
                let a = (from - start) as usize;
                let b = (to - start) as usize;
                if b > data.len() {
                    return Err(Error::corrupt(
                        format!("chunk {id}"),
                        format!("holds {} bytes, the map expects {len}", data.len()),
                    ));
                }
                out.extend_from_slice(&data[a..b]);
            }
        }
    }
    Ok((out, upcoming))
}

/// The first offset at or after `offset` that is data (or a hole), by the
/// stored layout: holes of files and disks are known without reading.
pub fn seek<M: Send + Sync>(
    ns: &Namespace<M>,
    inode: &Inode,
    offset: u64,
    size: u64,
    want_data: bool,
) -> Result<Option<u64>> {
    let segments: Box<dyn Iterator<Item = Result<(u64, u64, bool)>>> = match &inode.kind {
        Kind::Entry { .. } => {
            let Some(content) = ns.file_content(inode) else {
                return Ok(Some(offset));
            };
            let first = content.extent_at(offset);
            let items: Vec<_> = (first..content.extents.len())
                .map(|i| {
                    let e = &content.extents[i];
                    Ok((content.starts[i], e.len(), matches!(e, Extent::Data { .. })))
                })
                .collect();
            Box::new(items.into_iter())
        }
        Kind::FlatDisk {
            description, disk, ..
        } => {
            let chunk = description.disks[*disk].chunk_size as u64;
            let first = offset / chunk;
            Box::new((first..size.div_ceil(chunk)).map(move |index| {
                let pieces = disk_chunks(ns, inode, index * chunk, 1)?;
                let (start, len, id) = pieces.first().copied().unwrap_or((index * chunk, 0, None));
                Ok((start, len, id.is_some()))
            }))
        }
        _ => return Ok(if want_data { Some(offset) } else { Some(size) }),
    };
    for segment in segments {
        let (start, len, is_data) = segment?;
        if start + len <= offset {
            continue;
        }
        if is_data == want_data {
            return Ok(Some(start.max(offset)));
        }
    }
    Ok(if want_data { None } else { Some(size) })
}
