//! Strata: a deduplicating backup repository whose restore points can be
//! restored or mounted.
//!
//! The data path, module by module:
//!
//! ```text
//! sources ─▶ backup (data movers) ─▶ chunker ─▶ backup::pipeline ─▶ pack ─▶ storage
//!                                     (FastCDC)  (BLAKE3, dedup,   (pack files)
//!                                                 zstd)              │
//!                                   index (RocksDB: chunks, packs, ◀─┘
//!                                          catalog, file cache)
//! tree + restore_point (Merkle trees, manifests) ─▶ restore / check / repair
//! ```
//!
//! On-disk formats are described in `docs/FORMAT.md`; every magic number
//! and version lives in [`format`].

pub mod backup;
pub mod cancel;
pub mod check;
pub mod chunker;
pub mod clock;
pub mod codec;
pub mod config;
pub mod config_file;
pub mod disk_format;
pub mod disk_map;
pub mod disk_reader;
pub mod error;
pub mod forget;
pub mod format;
pub mod id;
pub mod index;
pub mod listing;
pub mod lock;
pub mod mount;
pub mod notify;
pub mod pack;
pub mod packs;
pub mod progress;
pub mod prune;
pub mod reachability;
pub mod repair;
pub mod repository;
pub mod restore;
pub mod restore_point;
pub mod selector;
pub mod session;
pub mod stats;
pub mod storage;
pub mod tier;
pub mod tree;
pub mod vm;
pub mod vmdk;
pub mod walk;
#[cfg(test)] mod engine_tests;

pub use error::{Error, Result};
