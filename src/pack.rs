//! Pack files: many compressed chunks in one self-describing file.
//!
//! Layout (details and byte offsets in `docs/FORMAT.md`):
//! `header | chunk bytes … | trailer entries | footer`. The trailer lists
//! every chunk's id, offset, stored and raw length, kind and compression,
//! and the footer carries the entry count and a BLAKE3 of the trailer, so a
//! pack can be indexed from its own bytes alone (`strata repair index`).
//! Each chunk is compressed on its own, so any chunk can be read without
//! its neighbours.

pub mod reader;
pub mod writer;

use std::cell::RefCell;

use crate::error::{Error, Result};
use crate::id::{ChunkId, PackId};

pub use reader::read_trailer;
pub use writer::PackWriter;

/// Upper bound on a chunk's raw or stored size. Data chunks are at most the
/// chunker's maximum (16 MiB); trees of huge directories may be larger.
pub const MAX_CHUNK_LEN: u32 = 256 * 1024 * 1024;

/// What a chunk holds. Metadata kinds stay on the warm tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ChunkKind {
    /// File or disk content.
    Data = 0,
    /// An encoded directory (see `tree`).
    Tree = 1,
    /// A VM's description: configuration and disk records.
    VmDescription = 2,
    /// A page of a disk map.
    DiskMapPage = 3,
}

impl ChunkKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(ChunkKind::Data),
            1 => Some(ChunkKind::Tree),
            2 => Some(ChunkKind::VmDescription),
            3 => Some(ChunkKind::DiskMapPage),
            _ => None,
        }
    }

    pub fn is_metadata(self) -> bool {
        self != ChunkKind::Data
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Compression {
    /// Stored as is: compression would not have made it smaller.
    None = 0,
    Zstd = 1,
}

impl Compression {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Compression::None),
            1 => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// One chunk's place in a pack, as listed in the pack's trailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    pub id: ChunkId,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub kind: ChunkKind,
    pub compression: Compression,
}

/// Object name of a pack: `packs/<first two hex digits>/<id>.pack`.
pub fn object_name(id: &PackId) -> String {
    let hex = id.to_string();
    format!("packs/{}/{}.pack", &hex[..2], hex)
}

/// The pack id in an object name made by [`object_name`].
pub fn id_from_object_name(name: &str) -> Option<PackId> {
    let file = name.strip_prefix("packs/")?.rsplit('/').next()?;
    file.strip_suffix(".pack")?.parse().ok()
}

/// A chunk ready to be appended to a pack.
pub struct CompressedChunk {
    pub id: ChunkId,
    pub kind: ChunkKind,
    pub raw_len: u32,
    pub compression: Compression,
    pub bytes: Vec<u8>,
}

/// Compresses chunks with one reusable zstd context; one per thread.
pub struct ChunkCompressor {
    zstd: zstd::bulk::Compressor<'static>,
    scratch: Vec<u8>,
}

impl ChunkCompressor {
    pub fn new(level: i32) -> Result<Self> {
        let zstd = zstd::bulk::Compressor::new(level)
            .map_err(|e| Error::InvalidInput(format!("zstd level {level}: {e}")))?;
        Ok(ChunkCompressor {
            zstd,
            scratch: Vec::new(),
        })
    }

    /// Compresses `data`, falling back to storing it raw when compression
    /// does not shrink it (already-compressed or random data).
    pub fn compress(&mut self, id: ChunkId, kind: ChunkKind, data: Vec<u8>) -> CompressedChunk {
        let raw_len = data.len() as u32;
        self.scratch.clear();
        self.scratch
            .reserve(zstd::zstd_safe::compress_bound(data.len()));
        match self.zstd.compress_to_buffer(&data, &mut self.scratch) {
            Ok(n) if n < data.len() => CompressedChunk {
                id,
                kind,
                raw_len,
                compression: Compression::Zstd,
                bytes: self.scratch[..n].to_vec(),
            },
            _ => CompressedChunk {
                id,
                kind,
                raw_len,
                compression: Compression::None,
                bytes: data,
            },
        }
    }
}

thread_local! {
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Turns a chunk's stored bytes back into its plaintext and verifies that
/// the plaintext hashes to the chunk's id; damage never yields wrong bytes.
pub fn decode_chunk(entry: &PackEntry, pack: &PackId, stored: &[u8]) -> Result<Vec<u8>> {
    let damaged = |detail: String| Error::ChunkDamaged {
        id: entry.id,
        pack: *pack,
        detail,
    };
    if entry.raw_len > MAX_CHUNK_LEN {
        return Err(damaged(format!(
            "raw length {} exceeds the limit",
            entry.raw_len
        )));
    }
    let plain = match entry.compression {
        Compression::None => stored.to_vec(),
        Compression::Zstd => DECOMPRESSOR.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                *slot = Some(
                    zstd::bulk::Decompressor::new()
                        .map_err(|e| damaged(format!("zstd context: {e}")))?,
                );
            }
            let decompressor = slot.as_mut().expect("just set");
            decompressor
                .decompress(stored, entry.raw_len as usize)
                .map_err(|e| damaged(format!("zstd: {e}")))
        })?,
    };
    if plain.len() != entry.raw_len as usize {
        return Err(damaged(format!(
            "decompressed to {} bytes, expected {}",
            plain.len(),
            entry.raw_len
        )));
    }
    if ChunkId::of(&plain) != entry.id {
        return Err(damaged("content does not match its BLAKE3 id".into()));
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incompressible_chunks_are_stored_raw() {
        let mut c = ChunkCompressor::new(3).unwrap();
        let random: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let zeros = vec![0u8; 4096];
        assert_eq!(
            c.compress(ChunkId::of(&zeros), ChunkKind::Data, zeros)
                .compression,
            Compression::Zstd
        );
        let stored = c.compress(ChunkId::of(&random), ChunkKind::Data, random.clone());
        if stored.compression == Compression::None {
            assert_eq!(stored.bytes, random);
        }
    }

    #[test]
    fn object_names_round_trip() {
        let id = PackId([0xab; 16]);
        let name = object_name(&id);
        assert!(name.starts_with("packs/ab/"));
        assert_eq!(id_from_object_name(&name), Some(id));
        assert_eq!(id_from_object_name("packs/ab/nothex.pack"), None);
    }
}
