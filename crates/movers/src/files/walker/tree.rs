//! Directories whose trees are not stored yet, and the storing of each
//! once it is complete: a directory is encoded and stored once it is
//! listed and its last child is done, then its id is written into its
//! parent's node, so trees are finished bottom-up while reading goes on.

use std::path::PathBuf;

use super::Walker;
use crate::error::{Error, Result};
use crate::id::ChunkId;
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

    fn node_mut(&mut self, dir: usize, slot: usize) -> &mut Node {
        &mut self.dirs[dir].as_mut().expect("pending directory").nodes[slot]
    }

    pub(super) fn set_extents(&mut self, dir: usize, slot: usize, extents: Vec<Extent>) {
        // The size is what was read: a file that grew or shrank between its
        // stat and its read (or between two names of a hard link) must
        // still have extents that add up to its size.
        let node = self.node_mut(dir, slot);
        node.size = extents.iter().map(Extent::len).sum();
        node.kind = NodeKind::File { extents };
    }

    pub(super) fn mark_missed(&mut self, dir: usize, slot: usize) -> Result<()> {
        let pending = self.dirs[dir].as_mut().expect("pending directory");
        pending.missed[slot] = true;
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
            let nodes = dir
                .nodes
                .into_iter()
                .zip(dir.missed)
                .filter(|(_, missed)| !missed)
                .map(|(n, _)| n)
                .collect();
            let bytes = Tree { nodes }.encode();
            if bytes.len() > MAX_CHUNK_LEN as usize {
                return Err(Error::InvalidInput(format!(
                    "directory {} has too many entries to store as one tree ({} bytes)",
                    dir.path.display(),
                    bytes.len()
                )));
            }
            let id = ChunkId::of(&bytes);
            self.session.store_chunk(id, ChunkKind::Tree, &bytes)?;
            match dir.parent {
                None => {
                    self.root = Some(id);
                    return Ok(());
                }
                Some((parent, slot)) => {
                    self.node_mut(parent, slot).kind = NodeKind::Directory { subtree: id };
                    self.dirs[parent]
                        .as_mut()
                        .expect("pending directory")
                        .pending -= 1;
                    idx = parent;
                }
            }
        }
    }
}
