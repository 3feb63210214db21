//! Bringing restore points back: file trees (whole or selected paths),
//! whole VMs, single disks.

pub mod files;
pub mod fsops;
pub mod vm;
