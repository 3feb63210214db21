//! Data movers: turn sources into restore points.
//!
//! [`files`] backs up file trees and [`vm`] VM folders and disk images.
//! Both talk to the repository only through a
//! [`BackupSession`](crate::session::BackupSession), and keep their own
//! memory of what they read in a [`file_cache::FileCache`].

// The engine's modules (and the formats it re-exports) under their usual
// names, so that paths read `crate::tree`, `crate::repository`, ….
#[allow(unused_imports)]
use strata_engine::*;
#[allow(unused_imports)]
use strata_vmdk as vmdk;

pub mod chunker;


pub mod file_cache;
pub mod files;
pub mod metadata;
pub mod reader;
pub mod vm;
