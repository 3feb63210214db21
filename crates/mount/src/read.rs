//! The read path of the mount: which chunks hold a byte range of a file
//! or disk, reading them through the shared cache, and where data and
//! holes lie (SEEK_DATA/SEEK_HOLE) by the stored layout alone.

use std::sync::Arc;

use crate::chunk_cache::ChunkCache;
use super::namespace::{FileContent, Inode, Kind, Namespace};
use crate::disk_reader::DiskMapReader;
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::tree::Extent;

/// Bytes read ahead of a sequential reader (at most a quarter of the
/// chunk cache): enough chunks in flight at once to keep the disk and
/// every core busy, as `restore` does.
pub const READ_AHEAD_BYTES: u64 = 32 << 20;

/// Reads one chunk through the cache (waiting for a load of it already
/// under way).
pub fn load_chunk(ns: &Namespace, cache: &ChunkCache, id: &ChunkId) -> Result<Arc<Vec<u8>>> {
    cache.get_or_load(id, || ns.repo.read_chunk(id))
}

/// Where a read of a regular file finds its bytes.
pub enum Source {
    Extents(Arc<FileContent>),
    Disk,
    Blob(Arc<Vec<u8>>),
    /// A file inside a VM disk, read by its guest file system (through
    /// the same chunk cache and verification as the disk).
    Guest {
        fs: Arc<dyn strata_guest::fs::GuestFs>,
        node: strata_guest::fs::NodeId,
    },
}

/// The chunks covering `[offset, offset + len)` of a disk, with offsets.
pub fn disk_chunks(
    ns: &Namespace,
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
    let map = DiskMapReader::new(ns.repo.as_ref(), &disk.pages, &inode.pages);
    let mut index = offset / chunk;
    while index * chunk < end {
        let id = map.chunk_at(index)?;
        out.push((index * chunk, disk.chunk_len(index), id));
        index += 1;
    }
    Ok(out)
}

/// Bytes read for one request: a slice of one cached chunk (most
/// requests: the kernel asks for 128 KiB, chunks are larger), or a copy.
pub enum Bytes {
    Shared(Arc<Vec<u8>>, std::ops::Range<usize>),
    Owned(Vec<u8>),
}

impl Bytes {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Shared(chunk, range) => &chunk[range.clone()],
            Bytes::Owned(bytes) => bytes,
        }
    }
}

/// The bytes `[offset, offset + size)` of a file.
pub fn read_range(
    ns: &Namespace,
    cache: &ChunkCache,
    inode: &Inode,
    source: &Source,
    offset: u64,
    size: u32,
) -> Result<Bytes> {
    let want_end = offset + size as u64;
    let pieces = match source {
        Source::Blob(data) => {
            let start = (offset as usize).min(data.len());
            let end = (want_end as usize).min(data.len());
            return Ok(Bytes::Shared(data.clone(), start..end));
        }
        Source::Extents(content) => extent_pieces(content, offset, want_end),
        Source::Disk => disk_chunks(ns, inode, offset, size as u64)?,
        Source::Guest { fs, node } => {
            let mut out = vec![0u8; size as usize];
            let mut done = 0;
            while done < out.len() {
                let n = fs
                    .read_at(*node, offset + done as u64, &mut out[done..])
                    .map_err(|e| Error::corrupt("a guest file", e))?;
                if n == 0 {
                    break;
                }
                done += n;
            }
            out.truncate(done);
            return Ok(Bytes::Owned(out));
        }
    };
    // Each piece: a chunk (None for a hole) and the range of it wanted.
    let mut parts = Vec::with_capacity(pieces.len());
    for (start, len, id) in pieces {
        let from = offset.max(start);
        let to = want_end.min(start + len);
        if from >= to {
            continue;
        }
        let range = (from - start) as usize..(to - start) as usize;
        let Some(id) = id else {
            parts.push((None, range));
            continue;
        };
        let data =
            load_chunk(ns, cache, &id).map_err(|e| Error::corrupt(format!("chunk {id}"), e))?;
        if range.end > data.len() {
            return Err(Error::corrupt(
                format!("chunk {id}"),
                format!("holds {} bytes, the map expects {len}", data.len()),
            ));
        }
        parts.push((Some(data), range));
    }
    if let [(Some(chunk), range)] = parts.as_slice() {
        return Ok(Bytes::Shared(chunk.clone(), range.clone()));
    }
    let mut out = Vec::with_capacity(size as usize);
    for (chunk, range) in parts {
        match chunk {
            Some(chunk) => out.extend_from_slice(&chunk[range]),
            None => out.resize(out.len() + range.len(), 0),
        }
    }
    Ok(Bytes::Owned(out))
}

/// The extents of a file that overlap `[from, to)`, with their offsets.
fn extent_pieces(content: &FileContent, from: u64, to: u64) -> Vec<(u64, u64, Option<ChunkId>)> {
    let first = content.extent_at(from);
    (first..content.extents.len())
        .take_while(|&i| content.starts[i] < to)
        .map(|i| {
            let id = match &content.extents[i] {
                Extent::Data { id, .. } => Some(*id),
                Extent::Hole { .. } => None,
            };
            (content.starts[i], content.extents[i].len(), id)
        })
        .collect()
}

/// The chunks that start in `[from, to)` of a file or disk, in order: what
/// a sequential reader will want next.
pub fn chunks_starting_in(
    ns: &Namespace,
    inode: &Inode,
    source: &Source,
    from: u64,
    to: u64,
) -> Result<Vec<ChunkId>> {
    let pieces = match source {
        // A guest file's blocks are found by its file system as it reads.
        Source::Blob(_) | Source::Guest { .. } => Vec::new(),
        Source::Extents(content) => extent_pieces(content, from, to),
        Source::Disk => disk_chunks(ns, inode, from, to.saturating_sub(from))?,
    };
    Ok(pieces
        .into_iter()
        .filter(|&(start, _, _)| start >= from)
        .filter_map(|(_, _, id)| id)
        .collect())
}

/// The first offset at or after `offset` that is data (or a hole), by the
/// stored layout: holes of files and disks are known without reading.
pub fn seek(
    ns: &Namespace,
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
