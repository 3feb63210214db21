//! One walk over everything a restore point references: the trees of a
//! file restore point and the data chunks of their files, or the VM
//! description of a VM restore point, its disk map pages and their data
//! chunks.
//!
//! Check, repair, prune and tiering walk the same way and differ only in
//! what they do with each chunk, in which metadata chunks they descend into
//! (a "seen" set so shared subtrees cost once, chunks known damaged), and
//! in whether an unreadable tree ends the walk. Those choices belong to a
//! [`Visitor`]; where objects come from belongs to a [`Loader`].

use std::fmt;

use crate::cancel::CancelToken;
use crate::disk_map::{DiskMapPage, PAGE_ENTRIES};
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::repository::Repository;
use crate::restore_point::{RestorePoint, RestorePointKind};
use crate::tree::{Extent, NodeKind, Tree};
use crate::vm::description::{DiskRecord, VmDescription};

/// Where a chunk is used; shown as people read it in check's reports.
#[derive(Debug, Clone, Copy)]
pub enum Place<'a> {
    /// The tree of directory `dir` (`""` for the root, else `/a/b`).
    Tree {
        dir: &'a str,
    },
    /// A data chunk of the file `name` in directory `dir`.
    File {
        dir: &'a str,
        name: &'a [u8],
    },
    VmDescription,
    DiskMapPage {
        disk: &'a DiskRecord,
        page: usize,
    },
    /// The data chunk at byte `offset` of a disk.
    DiskData {
        disk: &'a DiskRecord,
        offset: u64,
    },
}

impl Place<'_> {
    pub fn is_data(&self) -> bool {
        matches!(self, Place::File { .. } | Place::DiskData { .. })
    }
}

impl fmt::Display for Place<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Tree { dir } => write!(f, "directory {dir}/"),
            Place::File { dir, name } => write!(f, "{dir}/{}", String::from_utf8_lossy(name)),
            Place::VmDescription => f.write_str("VM description"),
            Place::DiskMapPage { disk, page } => {
                write!(f, "disk {} ({}) map page {page}", disk.slot, disk.file_name)
            }
            Place::DiskData { disk, offset } => {
                write!(
                    f,
                    "disk {} ({}) at byte {offset}",
                    disk.slot, disk.file_name
                )
            }
        }
    }
}

/// Where the walk reads the metadata objects it descends into.
pub trait Loader {
    fn tree(&self, id: &ChunkId) -> Result<Tree>;
    fn vm_description(&self, id: &ChunkId) -> Result<VmDescription>;
    fn disk_map_page(&self, id: &ChunkId) -> Result<DiskMapPage>;
}

impl<M> Loader for Repository<M> {
    fn tree(&self, id: &ChunkId) -> Result<Tree> {
        self.load_tree(id)
    }

    fn vm_description(&self, id: &ChunkId) -> Result<VmDescription> {
        VmDescription::decode(id, &self.read_chunk(id)?)
    }

    fn disk_map_page(&self, id: &ChunkId) -> Result<DiskMapPage> {
        DiskMapPage::decode(id, &self.read_chunk(id)?)
    }
}

/// A [`Loader`] over any [`crate::reader::RepositoryReader`]: walks a
/// restore point of a repository behind a server, whose client holds the
/// key (prune through a server marks what it walks here).
pub struct ReaderLoader<'r>(pub &'r dyn crate::reader::RepositoryReader);

impl Loader for ReaderLoader<'_> {
    fn tree(&self, id: &ChunkId) -> Result<Tree> {
        self.0.load_tree(id)
    }

    fn vm_description(&self, id: &ChunkId) -> Result<VmDescription> {
        VmDescription::decode(id, &self.0.read_chunk(id)?)
    }

    fn disk_map_page(&self, id: &ChunkId) -> Result<DiskMapPage> {
        DiskMapPage::decode(id, &self.0.read_chunk(id)?)
    }
}

pub trait Visitor {
    /// Called for every chunk the walk meets, metadata before what it
    /// references. For a metadata chunk, `false` leaves it unread and
    /// skips everything below it; for a data chunk the answer is unused.
    fn chunk(&mut self, id: &ChunkId, place: &Place) -> Result<bool>;

    /// A metadata chunk that could not be read or decoded. `Ok` goes on
    /// with the rest of the restore point; by default the walk ends with
    /// the error.
    fn unreadable(&mut self, _id: &ChunkId, _place: &Place, error: Error) -> Result<()> {
        Err(error)
    }
}

/// Walks `rp`: trees depth first, children in reverse order of their
/// tree (a stack), or the VM's disks in order, page by page.
pub fn walk(
    loader: &impl Loader,
    rp: &RestorePoint,
    visitor: &mut impl Visitor,
    cancel: &CancelToken,
) -> Result<()> {
    match rp.manifest.kind {
        RestorePointKind::Files => walk_trees(loader, &rp.manifest.root, visitor, cancel),
        RestorePointKind::Vm => walk_vm(loader, &rp.manifest.root, visitor, cancel),
    }
}

fn walk_trees(
    loader: &impl Loader,
    root: &ChunkId,
    visitor: &mut impl Visitor,
    cancel: &CancelToken,
) -> Result<()> {
    let mut stack = vec![(*root, String::new())];
    while let Some((tree_id, dir)) = stack.pop() {
        cancel.check()?;
        let place = Place::Tree { dir: &dir };
        if !visitor.chunk(&tree_id, &place)? {
            continue;
        }
        let tree = match loader.tree(&tree_id) {
            Ok(tree) => tree,
            Err(e) => {
                visitor.unreadable(&tree_id, &place, e)?;
                continue;
            }
        };
        for node in &tree.nodes {
            match &node.kind {
                NodeKind::Directory { subtree } => stack.push((
                    *subtree,
                    format!("{dir}/{}", String::from_utf8_lossy(&node.name)),
                )),
                NodeKind::File { extents } => {
                    let place = Place::File {
                        dir: &dir,
                        name: &node.name,
                    };
                    for extent in extents {
                        if let Extent::Data { id, .. } = extent {
                            visitor.chunk(id, &place)?;
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn walk_vm(
    loader: &impl Loader,
    root: &ChunkId,
    visitor: &mut impl Visitor,
    cancel: &CancelToken,
) -> Result<()> {
    let place = Place::VmDescription;
    if !visitor.chunk(root, &place)? {
        return Ok(());
    }
    let description = match loader.vm_description(root) {
        Ok(description) => description,
        Err(e) => return visitor.unreadable(root, &place, e),
    };
    for disk in &description.disks {
        for (p, page_ref) in disk.pages.iter().enumerate() {
            cancel.check()?;
            let place = Place::DiskMapPage { disk, page: p };
            if !visitor.chunk(&page_ref.id, &place)? {
                continue;
            }
            let page = match loader.disk_map_page(&page_ref.id) {
                Ok(page) => page,
                Err(e) => {
                    visitor.unreadable(&page_ref.id, &place, e)?;
                    continue;
                }
            };
            for (i, entry) in page.entries.iter().enumerate() {
                if let Some(id) = entry {
                    let offset = (p * PAGE_ENTRIES + i) as u64 * disk.chunk_size as u64;
                    visitor.chunk(id, &Place::DiskData { disk, offset })?;
                }
            }
        }
    }
    Ok(())
}

/// A [`Visitor`] made of a closure over every chunk, for callers that
/// decide about descending by the chunk alone.
pub struct EachChunk<F>(pub F);

impl<F: FnMut(&ChunkId, &Place) -> Result<bool>> Visitor for EachChunk<F> {
    fn chunk(&mut self, id: &ChunkId, place: &Place) -> Result<bool> {
        (self.0)(id, place)
    }
}
