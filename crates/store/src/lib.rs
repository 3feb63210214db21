//! Where repository objects live: packs, manifests and records, addressed
//! by name.
//!
//! The seam is deliberately narrow — atomic puts (whole or streamed),
//! ranged reads, paged listing and delete of named objects — and holds no
//! local paths, so that a bucket can sit behind it as well as a directory.
//! Names are relative, `/`-separated paths such as `packs/3f/3f2a….pack`.
//! Every put is durable when it returns, and a crash part-way through
//! leaves the name absent, never partial.
//!
//! Behaviour that cuts across backends (a delay to rehearse archival
//! storage; later retries, caching, encryption) is a layer: a store that
//! wraps another store, never a switch inside the engine.
//!
//! ```text
//!   engine ──▶ Arc<dyn ObjectStore> ──▶ DelayedStore ──▶ LocalStore | MemoryStore
//!                                    └─▶ CachedStore ──▶ BucketStore
//! ```

pub mod archive;
pub mod bucket;
pub mod cache;
pub mod conformance;
pub mod delayed;
pub mod faults;
pub mod local;
pub mod memory;

use std::io::Write;

use strata_format::error;

use crate::error::{Error, Result};

pub use archive::{Availability, RestorePriority, StorageClass};
pub use bucket::{Access, BucketOptions, BucketStore, Location, Retry};
pub use cache::CachedStore;
pub use delayed::DelayedStore;
pub use faults::Faults;
pub use local::LocalStore;
pub use memory::MemoryStore;

/// How many names one listing request returns at most.
pub const LIST_PAGE: usize = 1000;

pub trait ObjectStore: Send + Sync {
    /// Human-readable location, for messages.
    fn location(&self) -> String;

    /// Stores `data` under `name`, replacing any object of that name.
    fn put(&self, name: &str, data: &[u8]) -> Result<()>;

    /// Starts an object that is written piece by piece and named only when
    /// complete (a pack's name is the hash of its bytes). Nothing is
    /// visible until [`ObjectWriter::commit`].
    fn writer(&self) -> Result<Box<dyn ObjectWriter>>;

    fn get(&self, name: &str) -> Result<Vec<u8>>;

    /// Fills `buf` from `offset` of the object; a short object is an error.
    fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<()>;

    fn size(&self, name: &str) -> Result<u64>;

    /// Up to `limit` names below `prefix` (a directory-like prefix such as
    /// `packs/`) that sort after `start_after`, in byte order. Fewer than
    /// `limit` means the listing is complete.
    fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>>;

    /// Removes the object; removing an absent one is not an error.
    fn delete(&self, name: &str) -> Result<()>;

    /// Removes what interrupted writers left in this store's staging
    /// area; returns how many leftovers there were. Called by a writer
    /// that holds the repository's lock, so no live writer's staging goes.
    fn clear_staging(&self) -> Result<usize> {
        Ok(0)
    }

    /// Drops any copy of `name` kept on this machine, so that the next
    /// read goes to the object itself (after a cached copy failed its
    /// verification).
    fn evict(&self, _name: &str) {}

    /// Whether `name` can be read now. Objects in an archive class must
    /// first be restored ([`request_restore`](Self::request_restore));
    /// everywhere else an object that exists is readable.
    fn availability(&self, name: &str) -> Result<Availability> {
        self.size(name).map(|_| Availability::Readable)
    }

    /// Asks the provider to make archived `name` readable, for `days`
    /// days where the provider keeps a temporary copy. Requesting an
    /// object already being restored is not an error.
    fn request_restore(&self, _name: &str, _days: u32, _priority: RestorePriority) -> Result<()> {
        Ok(())
    }

    /// Puts `name` back in its archive class once its restored copy has
    /// been read: Azure leaves a rehydrated blob in the tier it rose to
    /// (S3's restored copy expires by itself).
    fn return_to_archive(&self, _name: &str) -> Result<()> {
        Ok(())
    }
}

/// An object being written; dropped without [`commit`](Self::commit), it
/// leaves nothing behind (or, after a crash, only staging that the store
/// clears when a writer next opens the repository).
pub trait ObjectWriter: Write + Send {
    /// Makes the bytes written so far durable and visible under `name`.
    fn commit(self: Box<Self>, name: &str) -> Result<()>;
}

impl dyn ObjectStore + '_ {
    /// Every name below `prefix`, fetched a page at a time.
    pub fn list(&self, prefix: &str) -> Listing<'_> {
        self.list_in_pages(prefix, LIST_PAGE)
    }

    /// [`list`](Self::list) with requests of `page_size` names.
    pub fn list_in_pages(&self, prefix: &str, page_size: usize) -> Listing<'_> {
        Listing {
            store: self,
            prefix: prefix.to_string(),
            page_size: page_size.max(1),
            page: Vec::new().into_iter(),
            last: None,
            done: false,
        }
    }

    /// Every name below `prefix`, collected: for the callers that need
    /// them all at once (sets of manifests, packs to check).
    pub fn list_all(&self, prefix: &str) -> Result<Vec<String>> {
        self.list(prefix).collect()
    }
}

/// Iterator over a paged listing; see [`ObjectStore::list_page`].
pub struct Listing<'s> {
    store: &'s dyn ObjectStore,
    prefix: String,
    page_size: usize,
    page: std::vec::IntoIter<String>,
    last: Option<String>,
    done: bool,
}

impl Iterator for Listing<'_> {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Result<String>> {
        loop {
            if let Some(name) = self.page.next() {
                self.last = Some(name.clone());
                return Some(Ok(name));
            }
            if self.done {
                return None;
            }
            match self
                .store
                .list_page(&self.prefix, self.last.as_deref(), self.page_size)
            {
                Ok(page) => {
                    self.done = page.len() < self.page_size;
                    self.page = page.into_iter();
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// `prefix` as listings take it: empty (everything), or a directory-like
/// prefix ending in one `/` (`packs` and `packs/` both become `packs/`).
pub fn directory_prefix(prefix: &str) -> String {
    match prefix.trim_end_matches('/') {
        "" => String::new(),
        trimmed => format!("{trimmed}/"),
    }
}

/// Checks that `name` is a relative object name with no empty, `.` or
/// `..` component, so that no backend can be led outside its root.
pub fn validate_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && !name.starts_with('/')
        && name
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!("invalid object name {name:?}")))
    }
}

/// The error for a missing object, shaped like the local file system's so
/// that [`Error::is_not_found`] holds for every backend.
pub fn not_found(location: &str, name: &str) -> Error {
    Error::io(
        "reading",
        format!("{location}/{name}"),
        std::io::Error::new(std::io::ErrorKind::NotFound, "no such object"),
    )
}

/// The error for a read past an object's end.
pub fn short_object(location: &str, name: &str, end: u64) -> Error {
    Error::io(
        "reading",
        format!("{location}/{name}"),
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("object ends before byte {end}"),
        ),
    )
}
