//! A restore point's file tree as a person browses it (`strata ls`): the
//! entries of one directory, or of a whole subtree depth first, in the
//! order the trees store them. Subtrees are read only as the walk reaches
//! them, so a listing starts at once and stops early at no cost.

use crate::error::Result;
use crate::id::ChunkId;
use crate::reader::RepositoryReader;
use crate::tree::{Node, NodeKind};

/// Yields each entry with its path relative to the listed directory:
/// names joined by `/`, as raw bytes (names need not be UTF-8).
pub struct TreeListing<'r> {
    repo: &'r dyn RepositoryReader,
    recursive: bool,
    /// Directories being listed, innermost last, with their paths.
    open: Vec<(Vec<u8>, std::vec::IntoIter<Node>)>,
    /// The directory yielded last, entered on the next step so that an
    /// unreadable subtree fails after its directory was yielded.
    enter: Option<(Vec<u8>, ChunkId)>,
    root: Option<ChunkId>,
}

impl TreeListing<'_> {
    fn step(&mut self) -> Result<Option<(Vec<u8>, Node)>> {
        if let Some(root) = self.root.take() {
            self.open
                .push((Vec::new(), self.repo.load_tree(&root)?.nodes.into_iter()));
        }
        if let Some((path, subtree)) = self.enter.take() {
            self.open
                .push((path, self.repo.load_tree(&subtree)?.nodes.into_iter()));
        }
        while let Some((prefix, nodes)) = self.open.last_mut() {
            let Some(node) = nodes.next() else {
                self.open.pop();
                continue;
            };
            let mut path = prefix.clone();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(&node.name);
            if let (true, NodeKind::Directory { subtree }) = (self.recursive, &node.kind) {
                self.enter = Some((path.clone(), *subtree));
            }
            return Ok(Some((path, node)));
        }
        Ok(None)
    }
}

impl Iterator for TreeListing<'_> {
    type Item = Result<(Vec<u8>, Node)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.step().transpose()
    }
}

/// The entries of the directory whose tree is `tree`; with `recursive`,
/// those of its subdirectories too, each right after its directory.
pub fn list_tree(repo: &dyn RepositoryReader, tree: ChunkId, recursive: bool) -> TreeListing<'_> {
    TreeListing {
        repo,
        recursive,
        open: Vec::new(),
        enter: None,
        root: Some(tree),
    }
}
