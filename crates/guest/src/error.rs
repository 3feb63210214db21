//! Errors name what was being read (a partition table, a volume, a path
//! in a guest file system) and why it failed. Every byte of a disk is
//! hostile: a malformed structure is an error, never a panic.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the disk itself failed (a damaged chunk reads as EIO).
    #[error("reading {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// A structure on the disk is malformed.
    #[error("{what} is damaged: {why}")]
    Damaged { what: String, why: String },
    /// A structure this reader does not handle (an LVM RAID volume, an
    /// encrypted volume, a file system it does not know).
    #[error("{what}: {why}")]
    Unsupported { what: String, why: String },
    #[error("{0}: no such file or directory")]
    NotFound(String),
    #[error("{0}: not a directory")]
    NotADirectory(String),
}

impl Error {
    pub fn damaged(what: impl Into<String>, why: impl Into<String>) -> Self {
        Error::Damaged {
            what: what.into(),
            why: why.into(),
        }
    }

    pub fn unsupported(what: impl Into<String>, why: impl Into<String>) -> Self {
        Error::Unsupported {
            what: what.into(),
            why: why.into(),
        }
    }

    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
