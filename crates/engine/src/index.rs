//! The index: where every chunk is, what every pack holds, which restore
//! points exist and which cold data is thawed.
//!
//! The index is derived data. Packs, manifests and thaw records are the
//! repository's truth, and `strata repair index` rebuilds the index from
//! them. Callers see it as four concerns, one trait each, so that a command
//! names what it depends on and a second implementation (an in-memory one
//! for tests, a remote one behind a repository session) needs nothing else:
//!
//! - [`ChunkIndex`]: chunk id → pack, tier and entry; what backups dedup
//!   against and every read starts from.
//! - [`PackTable`]: one record per indexed pack. Adding a pack indexes its
//!   chunks in the same atomic write, so no chunk record ever points at an
//!   unindexed pack.
//! - [`Catalog`]: committed restore points and their manifests, which saves
//!   reading every manifest to list them.
//! - [`ThawTable`]: until when a cold pack or a restore point is thawed.
//!
//! [`RocksIndex`] implements all four over one RocksDB database (its column
//! families are listed in `docs/FORMAT.md`). Only the repository holds it;
//! the rest of the engine reaches the concerns through the repository's
//! accessors. Every write is durable when it returns.

pub use strata_format::index_records as records;
pub mod rocks;

use crate::error::Result;
use crate::id::{ChunkId, PackId, RestorePointId};
use crate::pack::PackEntry;

pub use records::{ChunkLocation, FileCacheRecord, FileFingerprint, PackRecord, Tier};
pub use rocks::{IndexAccess, RocksIndex};

/// Chunk id → where the chunk is stored.
pub trait ChunkIndex: Send + Sync {
    fn chunk(&self, id: &ChunkId) -> Result<Option<ChunkLocation>>;

    fn has_chunk(&self, id: &ChunkId) -> Result<bool>;

    /// True when the chunk is indexed on the warm tier. New backups dedup
    /// only against warm chunks: a warm restore point must never depend on
    /// data that needs a thaw.
    fn has_warm_chunk(&self, id: &ChunkId) -> Result<bool>;

    /// [`has_warm_chunk`](Self::has_warm_chunk) for many ids in one
    /// batched lookup; the answers are in the order of `ids`.
    fn warm_chunks(&self, ids: &[ChunkId]) -> Result<Vec<bool>>;

    /// True when every id is indexed on the warm tier.
    fn has_all_warm_chunks(&self, ids: &[ChunkId]) -> Result<bool> {
        Ok(self.warm_chunks(ids)?.into_iter().all(|warm| warm))
    }

    /// Every chunk record, in id order.
    fn chunks(&self) -> Box<dyn Iterator<Item = Result<ChunkLocation>> + '_>;
}

/// Pack id → pack record, kept in step with the chunk records.
pub trait PackTable: Send + Sync {
    /// Indexes a durable pack: its record and every chunk in it, in one
    /// atomic, durable write.
    fn add_pack(&self, pack: PackId, record: &PackRecord, entries: &[PackEntry]) -> Result<()>;

    /// Removes a pack's record and those of the given chunks that still
    /// point into it (a chunk since indexed elsewhere keeps its record), in
    /// one atomic, durable write.
    fn remove_pack(&self, pack: &PackId, chunks: &[ChunkId]) -> Result<()>;

    /// One pack's record, if it is indexed.
    fn pack(&self, id: &PackId) -> Result<Option<PackRecord>>;

    /// Every pack record, in id order.
    fn packs(&self) -> Box<dyn Iterator<Item = Result<(PackId, PackRecord)>> + '_>;
}

/// The restore-point catalog: a copy of each committed manifest.
pub trait Catalog: Send + Sync {
    fn add_restore_point(&self, id: &RestorePointId, manifest: &[u8]) -> Result<()>;

    fn remove_restore_point(&self, id: &RestorePointId) -> Result<()>;

    /// Every catalogued restore point's id and encoded manifest.
    fn restore_points(&self) -> Result<Vec<(RestorePointId, Vec<u8>)>>;
}

/// What a thaw mark is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThawTarget {
    /// A cold pack whose copy in the warm thaw area is readable.
    Pack(PackId),
    /// A restore point thawed as a whole.
    RestorePoint(RestorePointId),
}

/// A thaw and its expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThawMark {
    pub target: ThawTarget,
    /// Unix seconds.
    pub until: i64,
}

/// Until when cold packs and restore points are thawed.
pub trait ThawTable: Send + Sync {
    /// Records that a cold pack's copy in the thaw area is usable until
    /// `until` (Unix seconds).
    fn set_pack_thawed(&self, pack: &PackId, until: i64) -> Result<()>;

    fn pack_thawed_until(&self, pack: &PackId) -> Result<Option<i64>>;

    fn set_restore_point_thawed(&self, id: &RestorePointId, until: i64) -> Result<()>;

    fn restore_point_thawed_until(&self, id: &RestorePointId) -> Result<Option<i64>>;

    /// Every thaw mark, expired or not.
    fn thaws(&self) -> Result<Vec<ThawMark>>;

    fn remove_thaw(&self, target: &ThawTarget) -> Result<()>;
}
