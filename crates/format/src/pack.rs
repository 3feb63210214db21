//! Pack files: many compressed chunks in one self-describing file.
//!
//! Layout (details and byte offsets in `docs/FORMAT.md`):
//! `header | chunk bytes … | trailer entries | footer`. The trailer lists
//! every chunk's id, offset, stored and raw length, kind and compression,
//! and the footer carries the entry count and a BLAKE3 of the trailer, so a
//! pack can be indexed from its own bytes alone (`strata repair index`).
//! Each chunk is compressed on its own, so any chunk can be read without
//! its neighbours.

pub mod codec;
pub mod reader;
pub mod writer;

use crate::id::{ChunkId, PackId};

pub use codec::{ChunkCodec, ChunkEncoder, CompressedChunk};
pub use reader::trailer_of;
pub use writer::{FinishedPack, PackWriter};

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

/// Where the warm tier keeps the tail (trailer and footer) of cold pack
/// `id`: `cold-tails/<xx>/<pack id>.tail`.
pub fn cold_tail_name(id: &PackId) -> String {
    let hex = id.to_string();
    format!("cold-tails/{}/{}.tail", &hex[..2], hex)
}

/// The pack id in an object name made by [`cold_tail_name`].
pub fn id_from_cold_tail_name(name: &str) -> Option<PackId> {
    let file = name.strip_prefix("cold-tails/")?.rsplit('/').next()?;
    file.strip_suffix(".tail")?.parse().ok()
}

/// The pack id in an object name made by [`object_name`].
pub fn id_from_object_name(name: &str) -> Option<PackId> {
    let file = name.strip_prefix("packs/")?.rsplit('/').next()?;
    file.strip_suffix(".pack")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_round_trip() {
        let id = PackId([0xab; 16]);
        assert_eq!(id_from_cold_tail_name(&cold_tail_name(&id)), Some(id));
        assert_eq!(id_from_cold_tail_name(&object_name(&id)), None);
        let name = object_name(&id);
        assert!(name.starts_with("packs/ab/"));
        assert_eq!(id_from_object_name(&name), Some(id));
        assert_eq!(id_from_object_name("packs/ab/nothex.pack"), None);
    }
}
