//! Data movers: turn sources into restore points.
//!
//! [`files`] backs up file trees. Both it and later movers (VM disks) feed
//! chunks through the shared storing [`pipeline`].

pub mod files;
pub mod metadata;
pub mod pipeline;
pub mod reader;
