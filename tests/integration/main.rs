//! Integration tests: the `strata` binary and library against real RocksDB
//! in temporary directories, real file systems, and kill -9.

mod util;

mod backup_restore;
mod faults;
mod incremental;
mod mount;
mod repair;
mod retention;
mod tiering;
mod vm;
