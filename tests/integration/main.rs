//! Integration tests: the `strata` binary and library against real RocksDB
//! in temporary directories, real file systems, and kill -9.

mod util;
/// The test servers, shared with the store's own tests.
#[path = "../../crates/store/tests/common/mod.rs"]
mod servers;

mod archive_tier;
mod backup_restore;
mod cli_output;
mod coordinator;
mod encryption;
mod encryption_keys;
mod encryption_tamper;
mod faults;
mod guest;
/// Certificates for the TLS tests, shared with the NBD client's own tests.
#[path = "../../crates/nbd/tests/common/pki.rs"]
mod pki;
mod nbd;
mod incremental;
mod mount;
mod mount_lifecycle;
mod mount_read_ahead;
mod mount_security;
mod mount_xattr_probes;
mod object_storage;
mod object_storage_servers;
mod remote;
mod repair;
mod restore_safety;
mod retention;
mod tiering;
mod unchanged_dirs;
mod vm;
mod vm_images;
mod vm_restores;
