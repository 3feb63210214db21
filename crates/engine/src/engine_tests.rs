//! The engine's unit tests, run against in-memory stores: a repository is
//! a `Repository::create_on` over [`crate::storage::MemoryStore`]s with
//! its RocksDB index in a temporary directory, filled with restore points
//! built by hand (trees, data chunks and manifests, stored through the real
//! backup pipeline). Each submodule takes one engine job and asserts what
//! it must do to packs, index and catalog.

mod fixture;
mod import;
mod packs;
mod prune;
mod rebuild;
mod session;
mod tier;
mod walk;
