//! Integration tests: the `strata` binary and library against real RocksDB
//! in temporary directories, real file systems, and kill -9.

mod util;

mod backup_restore;
mod faults;
mod incremental;
mod repair;
mod mount;
mod retention;
mod tiering;
mod vm;
