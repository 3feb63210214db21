//! Data movers: turn sources into restore points.
//!
//! [`files`] backs up file trees and [`vm`] VM folders and disk images;
//! both feed chunks through the shared storing [`pipeline`].

pub mod files;
pub mod metadata;
pub mod pipeline;
pub mod reader;
pub mod vm;
