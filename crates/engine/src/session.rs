//! What a data mover needs from a repository, and nothing more.
//!
//! A mover reads a source (a file tree, VM disks), cuts it into chunks and
//! asks the repository, through a [`BackupSession`], which chunks it
//! already holds, hands over the new ones, reads its parent restore point
//! and finally commits the new one. It never sees packs, the index or the
//! writer lock, so the same mover runs against the repository in this
//! process ([`LocalSession`]) or, later, against a repository server over
//! the network.
//!
//! ```text
//!  mover ──▶ dyn BackupSession ──▶ LocalSession ──▶ pipeline ──▶ Packs + index
//!                                  (network client, later)
//! ```

pub mod local;

use std::path::Path;

use crate::config::ChunkerParams;
use crate::error::Result;
use crate::crypto::NameKey;
use crate::id::{ChunkId, IdKey, RestorePointId};
use crate::pack::ChunkKind;
use crate::restore_point::{Manifest, RestorePoint};
use crate::tree::{Timestamp, Tree};

pub use local::{with_local_session, LocalSession, StoreCounters};

/// The repository settings a mover must follow so that its chunks
/// deduplicate against everything already stored.
#[derive(Debug, Clone, Copy)]
pub struct MoverSettings {
    pub chunker: ChunkerParams,
    /// Fixed chunk size for disks.
    pub disk_chunk_size: u32,
    /// Restore points older than this many days may have data on the cold
    /// tier: an incremental must not build on them.
    pub warm_days: u32,
    /// How chunk ids are computed: keyed in an encrypted repository.
    pub ids: IdKey,
    /// FastCDC's gear seed: secret in an encrypted repository, 0 otherwise.
    pub chunker_seed: u64,
    /// Hides names in the mover's file cache when the repository is
    /// encrypted.
    pub name_key: Option<NameKey>,
}

impl MoverSettings {
    /// The settings of a repository with `config`, protected by
    /// `protection`: the same for a mover in this process and one behind a
    /// server.
    pub fn of(config: &crate::config::RepoConfig, protection: &crate::crypto::Protection) -> Self {
        MoverSettings {
            chunker: config.chunker,
            disk_chunk_size: config.disk_chunk_size,
            warm_days: config.tiers.warm_days,
            ids: protection.ids(),
            chunker_seed: protection.chunker_seed(),
            name_key: protection.name_key(),
        }
    }

    /// Whether a restore point taken at `time` is younger than the warm
    /// days, so that none of its data can have gone cold: only such a
    /// restore point may be built on.
    pub fn is_warm(&self, time: &Timestamp) -> bool {
        time.sec >= crate::clock::now().sec - i64::from(self.warm_days) * 86_400
    }
}

pub trait BackupSession: Sync {
    fn settings(&self) -> MoverSettings;

    /// The repository's own directory when it is on this machine, so that
    /// a backup of `/` does not back up the repository into itself.
    fn local_root(&self) -> Option<&Path>;

    /// Every committed restore point, oldest first: a mover picks its
    /// parent among them.
    fn restore_points(&self) -> Result<Vec<RestorePoint>>;

    /// Reads a stored chunk (a parent's tree, VM description or disk map
    /// page), verified.
    fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>>;

    /// The id of a chunk with content `data` in this repository.
    fn chunk_id(&self, data: &[u8]) -> ChunkId {
        self.settings().ids.chunk_id(data)
    }

    fn load_tree(&self, id: &ChunkId) -> Result<Tree> {
        Tree::decode(id, &self.read_chunk(id)?)
    }

    /// For each id, whether the repository holds it readable without a
    /// thaw (on the warm tier): one question for many chunks.
    fn stored_chunks(&self, ids: &[ChunkId]) -> Result<Vec<bool>>;

    /// Stores `data` under `id` unless the repository already has it;
    /// returns whether it was new. The chunk is durable once
    /// [`commit`](Self::commit) returns.
    fn store_chunk(&self, id: ChunkId, kind: ChunkKind, data: &[u8]) -> Result<bool>;

    /// What this session has stored so far; final after
    /// [`flush`](Self::flush).
    fn counters(&self) -> &StoreCounters;

    /// Makes every stored chunk durable and indexed, and ends storing: a
    /// mover calls it once it has stored everything, before it reads the
    /// counters into the restore point's statistics.
    fn flush(&self) -> Result<()>;

    /// Makes every stored chunk durable (flushing if the mover has not),
    /// then the restore point visible. If the flush failed, this fails
    /// too, however often it is called: a restore point never references
    /// a chunk that is not stored.
    fn commit(&self, manifest: &Manifest) -> Result<RestorePointId>;
}
