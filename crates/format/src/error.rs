//! The library's error type.
//!
//! Policy: every error names the object it concerns (a path, a pack, a chunk,
//! a restore point) and the cause, so that its one-line `Display` is a
//! complete message for a person. Library code returns [`Error`]; only the
//! binary wraps errors with `anyhow` for context. Input read from disk never
//! causes a panic: decoding problems become [`Error::Corrupt`].

use std::io;
use std::path::PathBuf;

use crate::codec::DecodeError;
use crate::id::{ChunkId, PackId};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    #[error("{path} is not a Strata repository: {reason}")]
    NotARepository { path: PathBuf, reason: String },

    #[error("{what} has format version {found}, but this build of Strata reads only version {supported}")]
    UnsupportedVersion {
        what: String,
        found: u64,
        supported: u64,
    },

    #[error("{object} is damaged: {detail}")]
    Corrupt { object: String, detail: String },

    #[error("repository is busy: {holder}")]
    Busy { holder: String },

    /// The index's own failure, as text: the database behind the index is
    /// an implementation detail the error type does not expose.
    #[error("repository index (RocksDB at {path}): {detail}")]
    Index { path: PathBuf, detail: String },

    #[error("chunk {id} is not in the repository index")]
    ChunkMissing { id: ChunkId },

    #[error("chunk {id} in pack {pack} is damaged: {detail}")]
    ChunkDamaged {
        id: ChunkId,
        pack: PackId,
        detail: String,
    },

    #[error("chunk {chunk} is in cold pack {pack}, which must be thawed first (`strata thaw RP`)")]
    Cold { chunk: ChunkId, pack: PackId },

    #[error("restore point {restore_point} is on the cold tier; make it readable with `strata thaw {restore_point}`")]
    RestorePointCold { restore_point: String },

    #[error("no restore point matches {selector:?}")]
    RestorePointNotFound { selector: String },

    #[error("{selector:?} matches several restore points: {candidates}")]
    AmbiguousRestorePoint {
        selector: String,
        candidates: String,
    },

    #[error("{path} does not exist in restore point {restore_point}")]
    PathNotInRestorePoint { path: String, restore_point: String },

    #[error("not enough space at {path}: {needed} bytes needed, {available} available")]
    NoSpace {
        path: PathBuf,
        needed: u64,
        available: u64,
    },

    #[error("refusing unsafe name {name:?} in {context}: names may not be empty, '.', '..' or contain '/' or NUL")]
    UnsafeName { name: String, context: String },

    #[error("wrong password for repository {repository}: {detail}")]
    WrongPassword { repository: String, detail: String },

    #[error("repository {repository} is encrypted: {detail}")]
    PasswordRequired { repository: String, detail: String },

    #[error("{0}")]
    InvalidInput(String),

    #[error("interrupted: {0}")]
    Interrupted(String),
}

impl Error {
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub fn corrupt(object: impl Into<String>, detail: impl ToString) -> Self {
        Error::Corrupt {
            object: object.into(),
            detail: detail.to_string(),
        }
    }

    pub fn decode(object: impl Into<String>, err: DecodeError) -> Self {
        Error::corrupt(object, err)
    }

    /// True when an object or file the operation needed does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }

    /// True when the underlying cause is a full file system.
    pub fn is_no_space(&self) -> bool {
        match self {
            Error::NoSpace { .. } => true,
            Error::Io { source, .. } => source.raw_os_error() == Some(libc::ENOSPC),
            _ => false,
        }
    }
}

/// Adds the action and path to an `io::Result`.
pub trait IoContext<T> {
    fn at(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(action, path, e))
    }
}

impl<T> IoContext<T> for nix::Result<T> {
    fn at(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(action, path, io::Error::from(e)))
    }
}
