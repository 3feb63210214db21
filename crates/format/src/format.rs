//! Every magic number and format version Strata writes to disk, in one place.
//!
//! DO NOT MODIFY existing values: repositories in the field carry them. A new
//! layout gets a new version number, a reader that accepts it, and an entry in
//! `docs/FORMAT.md`. Readers refuse versions they do not know, naming them.

/// Version of the repository layout recorded in `config.json`: 1 for
/// unencrypted repositories, 2 for encrypted ones (sealed objects, keyed
/// ids, key slots). Both are read.
pub const REPOSITORY_FORMAT_VERSION: u32 = 1;
pub const ENCRYPTED_REPOSITORY_FORMAT_VERSION: u32 = 2;

/// First bytes of every pack file, followed by a little-endian `u32` version.
pub const PACK_MAGIC: [u8; 8] = *b"STRATAPK";
/// Last bytes of every pack file; the footer ends with them.
pub const PACK_FOOTER_MAGIC: [u8; 8] = *b"STRPKEND";
pub const PACK_VERSION: u32 = 1;
/// A pack of an encrypted repository: the same layout, every chunk's
/// stored bytes sealed.
pub const SEALED_PACK_VERSION: u32 = 2;
/// Size of the pack header: magic, version, reserved `u32`.
pub const PACK_HEADER_LEN: usize = 16;
/// Size of one trailer entry: id, offset, stored and raw length, kind,
/// compression, six reserved bytes.
pub const PACK_ENTRY_LEN: usize = 56;
/// Size of the footer: entry count, reserved `u32`, BLAKE3 of the trailer
/// entries, footer magic.
pub const PACK_FOOTER_LEN: usize = 48;

/// First bytes of an encoded directory (tree) object.
pub const TREE_MAGIC: [u8; 4] = *b"STRT";
pub const TREE_VERSION: u16 = 1;

/// First bytes of a restore-point manifest object.
pub const MANIFEST_MAGIC: [u8; 4] = *b"STRM";
pub const MANIFEST_VERSION: u16 = 1;

/// Version byte leading every value in the RocksDB index; lets a later
/// release migrate records lazily.
pub const INDEX_RECORD_VERSION: u8 = 1;

/// Schema version of the RocksDB index as a whole, kept under a fixed key.
pub const INDEX_SCHEMA_VERSION: u32 = 1;

/// First bytes of a disk map page (see `disk_map`).
pub const DISK_MAP_PAGE_MAGIC: [u8; 4] = *b"STRD";
pub const DISK_MAP_PAGE_VERSION: u16 = 1;

/// First bytes of a VM description (see `vm::description`).
pub const VM_DESCRIPTION_MAGIC: [u8; 4] = *b"STRV";
/// Version 2 added each disk's adapter type and the mode and owner of
/// the `.vmx` and disk files; version 1 is still read.
pub const VM_DESCRIPTION_VERSION: u16 = 2;
pub const VM_DESCRIPTION_VERSION_1: u16 = 1;
/// Version 2 with each disk's tracking bitmap; written only when a disk
/// has one.
pub const VM_DESCRIPTION_VERSION_3: u16 = 3;

/// First bytes of a thaw record (`thaw/…/<id>.until`): when a thaw expires,
/// kept beside the thawed copy so that `repair index` can restore it.
pub const THAW_RECORD_MAGIC: [u8; 4] = *b"STRH";
pub const THAW_RECORD_VERSION: u16 = 1;

/// First bytes of a key slot (`keys/<id>`): the master key wrapped by a
/// password's key.
pub const KEY_SLOT_MAGIC: [u8; 4] = *b"STRK";
pub const KEY_SLOT_VERSION: u16 = 1;
