//! What restores and mounts need from a repository: restore points and
//! verified chunks, whether the repository is in this process
//! ([`Repository`]) or behind a repository server (the remote client).
//!
//! ```text
//!  restore, mount, ls, show ──▶ dyn RepositoryReader ──▶ Repository (index + packs here)
//!                                                    └──▶ remote client (chunks by id over HTTPS)
//! ```

use std::path::Path;

use crate::config::RepoConfig;
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::packs::ChunkBuffers;
use crate::repository::Repository;
use crate::restore_point::RestorePoint;
use crate::tree::{Node, NodeKind, Tree};

pub trait RepositoryReader: Send + Sync {
    fn config(&self) -> &RepoConfig;

    /// Every committed restore point, oldest first.
    fn restore_points(&self) -> Result<Vec<RestorePoint>>;

    /// Reads, decompresses and verifies one chunk; the plaintext is left
    /// in `buffers.plain`.
    fn read_chunk_into(&self, id: &ChunkId, buffers: &mut ChunkBuffers) -> Result<()>;

    /// Whether a chunk can be read now: warm, or cold with a live thawed
    /// copy.
    fn is_readable(&self, id: &ChunkId) -> Result<bool>;

    /// [`Self::is_readable`] for many chunks at once (`None`: not in the
    /// repository); a repository behind a server answers in one request.
    fn readable_chunks(&self, ids: &[ChunkId]) -> Result<Vec<Option<bool>>> {
        ids.iter()
            .map(|id| match self.is_readable(id) {
                Ok(readable) => Ok(Some(readable)),
                Err(Error::ChunkMissing { .. }) => Ok(None),
                Err(e) => Err(e),
            })
            .collect()
    }

    /// Sees what a writer committed since this reader was opened.
    fn catch_up(&self) -> Result<()>;

    /// A hint that these chunks will be read soon, about in this order: a
    /// repository behind a server fetches them many per request. A
    /// repository in this process has nothing to gain.
    fn prefetch(&self, _ids: &[ChunkId]) {}

    /// A hint that the caller will read the whole directory tree `root`:
    /// its trees and files, depth first in tree order (as a restore
    /// does). A repository behind a server reads ahead of it.
    fn prefetch_tree(&self, _root: &ChunkId) {}

    /// The repository's directory on this machine, if it has one: a
    /// restore never writes into it, and a mount shows VM files as owned
    /// by its owner.
    fn local_root(&self) -> Option<&Path>;

    fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let mut buffers = ChunkBuffers::default();
        self.read_chunk_into(id, &mut buffers)?;
        Ok(buffers.plain)
    }

    fn load_tree(&self, id: &ChunkId) -> Result<Tree> {
        Tree::decode(id, &self.read_chunk(id)?)
    }

    fn resolve(&self, selector: &str) -> Result<RestorePoint> {
        let all = self.restore_points()?;
        crate::selector::select(&all, selector).cloned()
    }

    /// Finds the node at `path` ("/etc/hosts") in a restore point; `/` or
    /// an empty path is the root, returned as `None`.
    fn lookup_path(&self, rp: &RestorePoint, path: &str) -> Result<Option<Node>> {
        let not_found = || Error::PathNotInRestorePoint {
            path: path.to_string(),
            restore_point: rp.id.short(),
        };
        let mut current: Option<Node> = None;
        let mut tree_id = Some(rp.manifest.root);
        for part in path.split('/').filter(|p| !p.is_empty()) {
            let tree = self.load_tree(&tree_id.ok_or_else(not_found)?)?;
            let node = tree.find(part.as_bytes()).cloned().ok_or_else(not_found)?;
            tree_id = match &node.kind {
                NodeKind::Directory { subtree } => Some(*subtree),
                _ => None,
            };
            current = Some(node);
        }
        Ok(current)
    }
}

impl<M: Send + Sync> RepositoryReader for Repository<M> {
    fn config(&self) -> &RepoConfig {
        Repository::config(self)
    }

    fn restore_points(&self) -> Result<Vec<RestorePoint>> {
        Repository::restore_points(self)
    }

    fn read_chunk_into(&self, id: &ChunkId, buffers: &mut ChunkBuffers) -> Result<()> {
        Repository::read_chunk_into(self, id, buffers)
    }

    fn is_readable(&self, id: &ChunkId) -> Result<bool> {
        Repository::is_readable(self, id)
    }

    fn catch_up(&self) -> Result<()> {
        Repository::catch_up(self)
    }

    fn local_root(&self) -> Option<&Path> {
        Some(self.root())
    }
}

/// The reader's lookups on a repository in this process, callable without
/// the trait in scope.
impl<M: Send + Sync> Repository<M> {
    pub fn resolve(&self, selector: &str) -> Result<RestorePoint> {
        RepositoryReader::resolve(self, selector)
    }

    pub fn lookup_path(&self, rp: &RestorePoint, path: &str) -> Result<Option<Node>> {
        RepositoryReader::lookup_path(self, rp, path)
    }
}
