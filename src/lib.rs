//! Strata: a deduplicating backup repository whose restore points can be
//! restored or mounted.
//!
//! This crate is the `strata` command line (`src/cli/`); the library is a
//! workspace of crates, one per layer (see `docs/ARCHITECTURE.md`):
//!
//! ```text
//! strata-format ◀─ strata-store, strata-vmdk ◀─ strata-engine ◀─ strata-guest
//!               ◀─ strata-movers, strata-restore, strata-mount ◀─ strata (CLI)
//! ```
//!
//! They are re-exported here under the paths the integration tests,
//! examples and benchmarks use.

pub use strata_engine::*;
pub use strata_coordinator as coordinator;
pub use strata_guest as guest;
pub use strata_mount as mount;
pub use strata_nbd as nbd;
pub use strata_remote as remote;
pub use strata_movers as backup;
pub use strata_movers::chunker;
pub use strata_restore as restore;
pub use strata_vmdk as vmdk;
