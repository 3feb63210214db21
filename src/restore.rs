//! Bringing restore points back: whole trees or selected paths.

pub mod files;
pub mod fsops;
