//! Directories whose trees are not stored yet, and the storing of each
//! once it is complete: a directory is encoded and stored once it is
//! listed and its last child is done, then its id is written into its
//! parent's node, so trees are finished bottom-up while reading goes on.
//!
//! A directory whose listing matched its record (`reused`) has no nodes:
//! its subdirectories report into `subtrees`, and when they all come back
//! as recorded, the recorded tree is the directory's tree. If one changed,
//! the recorded tree is loaded and only its subtree ids are replaced.

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::listing::subtrees_digest;
use super::Walker;
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::index::records::DirCacheRecord;
use crate::pack::{ChunkKind, MAX_CHUNK_LEN};
use crate::tree::{Extent, Node, NodeKind, Tree};

/// A directory whose tree is not stored yet.
pub(super) struct PendingDir {
    pub(super) path: PathBuf,
    pub(super) nodes: Vec<Node>,
    pub(super) missed: Vec<bool>,
    /// Children (files being read, subdirectories being walked) not done.
    pub(super) pending: usize,
    pub(super) listed: bool,
    /// Where this directory's node sits in its parent.
    pub(super) parent: Option<(usize, usize)>,
    /// The listing's digest, if the directory may be recorded.
    listing: Option<[u8; 32]>,
    /// The record whose tree this unchanged directory reuses.
    reused: Option<DirCacheRecord>,
    /// A reused directory's subtrees, in name order; `None` while being
    /// walked, or for a subdirectory missed.
    pub(super) subtrees: Vec<Option<ChunkId>>,
}

impl PendingDir {
    pub(super) fn new(
        path: PathBuf,
        parent: Option<(usize, usize)>,
        listing: Option<[u8; 32]>,
        reused: Option<DirCacheRecord>,
    ) -> Self {
        PendingDir {
            path,
            nodes: Vec::new(),
            missed: Vec::new(),
            pending: 0,
            listed: false,
            parent,
            listing,
            reused,
            subtrees: Vec::new(),
        }
    }

    pub(super) fn reused(&self) -> bool {
        self.reused.is_some()
    }
}

impl Walker<'_> {
    pub(super) fn alloc(&mut self, dir: PendingDir) -> usize {
        match self.free.pop() {
            Some(idx) => {
                self.dirs[idx] = Some(dir);
                idx
            }
            None => {
                self.dirs.push(Some(dir));
                self.dirs.len() - 1
            }
        }
    }

    fn pending_mut(&mut self, dir: usize) -> &mut PendingDir {
        self.dirs[dir].as_mut().expect("pending directory")
    }

    pub(super) fn set_extents(&mut self, dir: usize, slot: usize, extents: Vec<Extent>) {
        // The size is what was read: a file that grew or shrank between its
        // stat and its read (or between two names of a hard link) must
        // still have extents that add up to its size.
        let node = &mut self.pending_mut(dir).nodes[slot];
        node.size = extents.iter().map(Extent::len).sum();
        node.kind = NodeKind::File { extents };
    }

    pub(super) fn mark_missed(&mut self, dir: usize, slot: usize) -> Result<()> {
        let pending = self.pending_mut(dir);
        // A reused directory's missed subdirectory stays `None`.
        if !pending.reused() {
            pending.missed[slot] = true;
        }
        pending.pending -= 1;
        self.try_finish_dir(dir)
    }

    /// Stores every directory that is complete, from `idx` up.
    pub(super) fn try_finish_dir(&mut self, mut idx: usize) -> Result<()> {
        loop {
            let ready = self.dirs[idx]
                .as_ref()
                .is_some_and(|d| d.listed && d.pending == 0);
            if !ready {
                return Ok(());
            }
            let dir = self.dirs[idx].take().expect("checked above");
            self.free.push(idx);
            let parent = dir.parent;
            let id = self.store_tree(dir)?;
            match parent {
                None => {
                    self.root = Some(id);
                    return Ok(());
                }
                Some((parent, slot)) => {
                    let pending = self.pending_mut(parent);
                    if pending.reused() {
                        pending.subtrees[slot] = Some(id);
                    } else {
                        pending.nodes[slot].kind = NodeKind::Directory { subtree: id };
                    }
                    pending.pending -= 1;
                    idx = parent;
                }
            }
        }
    }

    /// Stores a complete directory's tree (unless it is the recorded one),
    /// records it, and returns its id.
    fn store_tree(&mut self, mut dir: PendingDir) -> Result<ChunkId> {
        let (nodes, subtrees) = match dir.reused {
            Some(ref record) => {
                let subtrees: Option<Vec<ChunkId>> = dir.subtrees.iter().copied().collect();
                if let Some(subtrees) = &subtrees {
                    if subtrees_digest(subtrees.iter()) == record.subtrees {
                        let tree = record.tree;
                        self.record_dir(&dir, record.subtrees, tree)?;
                        return Ok(tree);
                    }
                }
                (self.patched_nodes(&dir, record)?, subtrees)
            }
            None => {
                let complete = !dir.missed.iter().any(|m| *m);
                let nodes: Vec<Node> = std::mem::take(&mut dir.nodes)
                    .into_iter()
                    .zip(&dir.missed)
                    .filter(|(_, missed)| !**missed)
                    .map(|(n, _)| n)
                    .collect();
                let subtrees = complete.then(|| {
                    nodes
                        .iter()
                        .filter_map(|n| match &n.kind {
                            NodeKind::Directory { subtree } => Some(*subtree),
                            _ => None,
                        })
                        .collect()
                });
                (nodes, subtrees)
            }
        };
        let bytes = Tree { nodes }.encode();
        if bytes.len() > MAX_CHUNK_LEN as usize {
            return Err(Error::InvalidInput(format!(
                "directory {} has too many entries to store as one tree ({} bytes)",
                dir.path.display(),
                bytes.len()
            )));
        }
        let id = self.session.chunk_id(&bytes);
        self.session.store_chunk(id, ChunkKind::Tree, &bytes)?;
        if let Some(subtrees) = subtrees {
            self.record_dir(&dir, subtrees_digest(subtrees.iter()), id)?;
        }
        Ok(id)
    }

    /// The recorded tree's nodes with this walk's subtrees: a reused
    /// directory whose own entries are unchanged but a subdirectory is not.
    fn patched_nodes(&self, dir: &PendingDir, record: &DirCacheRecord) -> Result<Vec<Node>> {
        let mismatch = || {
            Error::Interrupted(format!(
                "the file cache's record of {} does not match its tree {}; \
                 remove the file cache to back up from scratch",
                dir.path.display(),
                record.tree.short()
            ))
        };
        let tree = self.session.load_tree(&record.tree)?;
        let mut subtrees = dir.subtrees.iter();
        let mut nodes = Vec::with_capacity(tree.nodes.len());
        for mut node in tree.nodes {
            if let NodeKind::Directory { subtree } = &mut node.kind {
                match subtrees.next().ok_or_else(mismatch)? {
                    Some(id) => *subtree = *id,
                    None => continue, // missed this time
                }
            }
            nodes.push(node);
        }
        if subtrees.next().is_some() {
            return Err(mismatch());
        }
        Ok(nodes)
    }

    fn record_dir(&mut self, dir: &PendingDir, subtrees: [u8; 32], tree: ChunkId) -> Result<()> {
        let Some(listing) = dir.listing else {
            return Ok(());
        };
        let record = DirCacheRecord {
            run: self.run,
            listing,
            subtrees,
            tree,
        };
        self.cache
            .put_dir(self.source, dir.path.as_os_str().as_bytes(), &record)
    }
}
