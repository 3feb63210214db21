//! Strata's formats: every byte layout the repository stores or reads —
//! packs and the chunk codec, directory trees, restore-point manifests,
//! VM descriptions, disk maps, the configuration and index records — with
//! the ids, the bounds-checked encoder and the error type they share.
//!
//! Nothing here does I/O or knows a repository: bytes in, values or a
//! named error out, never a panic on hostile input. The layouts are
//! described in `docs/FORMAT.md` and pinned by the golden files in
//! `tests/golden/`; every magic number and version lives in [`format`].

// Lengths and offsets come from hostile bytes: a cast that could
// truncate one must be a checked conversion instead.
#![deny(clippy::cast_possible_truncation)]

pub mod codec;
pub mod config;
pub mod crypto;
pub mod disk_format;
pub mod disk_map;
pub mod error;
pub mod format;
pub mod id;
pub mod index_records;
pub mod key_slot;
pub mod pack;
pub mod restore_point;
pub mod selector;
pub mod thaw_record;
pub mod tree;
pub mod vm;

pub use error::{Error, Result};
