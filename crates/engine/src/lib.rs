//! The repository engine: a repository's stores, packs, index and
//! writer lock, and the operations on it.
//!
//! ```text
//! Repository<ReadOnly | Exclusive>
//!    ├── Packs: route to a tier, seal, read ──▶ Arc<dyn ObjectStore> + ChunkCodec
//!    ├── ChunkIndex, PackTable, Catalog, ThawTable ──▶ RocksIndex
//!    └── StateDir: index, lock, scratch (machine-local)
//! BackupSession ◀── LocalSession: what data movers talk to
//! check, repair, prune, tier, forget, walk, stats: operations
//! ```
//! Long jobs report through [`progress::Progress`] and stop through a
//! [`cancel::CancelToken`], both passed in. The lower layers are
//! re-exported under their usual names (`tree`, `pack`, `storage`, …).

pub use strata_format::{
    codec, config, crypto, disk_format, disk_map, error, format, id, key_slot, pack, restore_point, selector,
    thaw_record, tree, vm, Error, Result,
};
pub use strata_store as storage;

pub mod cancel;
pub mod check;
pub mod chunk_cache;
pub mod clock;
pub mod config_file;
pub mod disk_reader;
pub mod forget;
pub mod import;
pub mod index;
pub mod keys;
pub mod listing;
pub mod lock;
pub mod notify;
pub mod packs;
pub mod progress;
pub mod prune;
pub mod reader;
pub mod reachability;
pub mod reference_check;
pub mod repair;
pub mod repository;
pub mod session;
pub mod site;
pub mod stats;
pub mod thaw;
pub mod tier;
pub mod walk;

#[cfg(test)]
mod engine_tests;
