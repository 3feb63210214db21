//! The mounted tree: which inode is what, built lazily as the kernel looks
//! names up.
//!
//! ```text
//! /files/<source>/<time>/<absolute paths…>   file-tree restore points
//! /files/<source>/latest -> <time>
//! /vms/<vm>/<time>/<vm>.vmx                  the .vmx as backed up
//! /vms/<vm>/<time>/<disk>.vmdk               monolithicFlat descriptor
//! /vms/<vm>/<time>/<disk>-flat.vmdk          the raw disk, holes included
//! /vms/<vm>/<time>/guest/<disk>/<volume>/…    the guest's files (strata-guest)
//! /vms/<vm>/latest -> <time>
//! ```
//! Restore points that share a printed time are named `<time>-<id>`. The
//! restore-point catalog is re-read at most once a second, so restore
//! points made after mounting appear, and forgotten ones disappear,
//! without remounting; [`super::inodes`] keeps a name from reaching the
//! object it named before.

//!
//! `catalog` keeps the restore points the dynamic directories list,
//! `listing` lists directories, and `attr` gives each inode its attributes.

mod attr;
mod catalog;
mod listing;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use fuser::FileType;
use strata_guest::fs::{FileKind as GuestKind, GuestFs, Stat};
use strata_guest::vm::GuestView;

use self::catalog::{Catalog, CatalogSnapshot};
use super::inodes::InodeTable;
use super::xattr_names::XattrNames;
use crate::chunk_cache::ChunkCache;
use crate::disk_reader::PageCache;
use crate::error::Result;
use crate::id::{ChunkId, RestorePointId};
use crate::reader::RepositoryReader;
use crate::restore_point::RestorePoint;
use crate::tree::{Extent, Node, NodeKind, Timestamp};
use crate::vm::description::{FileOwner, VmDescription};

pub const ROOT: u64 = 1;

/// VM restore points whose guest views are kept at once.
const GUEST_VIEWS: usize = 16;

#[derive(Clone)]
pub enum Kind {
    Root,
    FilesRoot,
    VmsRoot,
    Source(String),
    Vm(String),
    Latest(Vec<u8>),
    /// The root directory of a file-tree restore point.
    FilesPoint(Arc<RestorePoint>),
    Dir {
        rp: Arc<RestorePoint>,
        tree: ChunkId,
        node: Arc<Node>,
        path: String,
    },
    Entry {
        rp: Arc<RestorePoint>,
        node: Arc<Node>,
        path: String,
    },
    VmPoint(Arc<RestorePoint>),
    /// Small generated or stored files: the `.vmx` and disk descriptors.
    Blob {
        time: Timestamp,
        data: Arc<Vec<u8>>,
        /// The backed-up file's mode and owner, when the record has them.
        owner: Option<FileOwner>,
    },
    FlatDisk {
        rp: Arc<RestorePoint>,
        description: Arc<VmDescription>,
        disk: usize,
        path: String,
    },
    /// `guest/` of a VM restore point: a folder per disk.
    GuestRoot(Arc<RestorePoint>),
    /// A disk's folder of volumes.
    GuestDisk {
        rp: Arc<RestorePoint>,
        disk: usize,
    },
    /// A volume that shows no files, and why (logged when listed).
    GuestEmpty {
        rp: Arc<RestorePoint>,
        why: Arc<str>,
    },
    /// A node of a guest file system; a volume's folder is its root.
    GuestNode {
        rp: Arc<RestorePoint>,
        fs: Arc<dyn GuestFs>,
        stat: Arc<Stat>,
        /// `<disk>/<volume>/<path>`, for messages and hard links.
        path: Arc<str>,
        /// `<disk>/<volume>`: hard links are within one volume.
        volume: Arc<str>,
    },
}

impl Kind {
    pub fn is_dynamic(&self) -> bool {
        matches!(
            self,
            Kind::Root | Kind::FilesRoot | Kind::VmsRoot | Kind::Source(_) | Kind::Vm(_)
        )
    }

    pub fn file_type(&self) -> FileType {
        match self {
            Kind::Latest(_) => FileType::Symlink,
            Kind::Blob { .. } | Kind::FlatDisk { .. } => FileType::RegularFile,
            Kind::GuestNode { stat, .. } => match stat.kind {
                GuestKind::File => FileType::RegularFile,
                GuestKind::Dir => FileType::Directory,
                GuestKind::Symlink => FileType::Symlink,
                GuestKind::Fifo => FileType::NamedPipe,
                GuestKind::CharDevice => FileType::CharDevice,
                GuestKind::BlockDevice => FileType::BlockDevice,
                GuestKind::Socket => FileType::Socket,
            },
            Kind::Entry { node, .. } => match node.kind {
                NodeKind::File { .. } => FileType::RegularFile,
                NodeKind::Directory { .. } => FileType::Directory,
                NodeKind::Symlink { .. } => FileType::Symlink,
                NodeKind::Fifo => FileType::NamedPipe,
                NodeKind::CharDevice { .. } => FileType::CharDevice,
                NodeKind::BlockDevice { .. } => FileType::BlockDevice,
                NodeKind::Socket => FileType::Socket,
            },
            _ => FileType::Directory,
        }
    }
}

pub struct Child {
    pub name: Vec<u8>,
    pub kind: Kind,
}

/// A file's extents with their starting offsets, for O(log n) seeks.
pub struct FileContent {
    pub starts: Vec<u64>,
    pub extents: Vec<Extent>,
}

impl FileContent {
    fn new(extents: &[Extent]) -> Self {
        let mut starts = Vec::with_capacity(extents.len());
        let mut at = 0;
        for e in extents {
            starts.push(at);
            at += e.len();
        }
        FileContent {
            starts,
            extents: extents.to_vec(),
        }
    }

    /// Index of the extent holding byte `offset`.
    pub fn extent_at(&self, offset: u64) -> usize {
        self.starts
            .partition_point(|s| *s <= offset)
            .saturating_sub(1)
    }
}

pub struct Inode {
    pub ino: u64,
    pub parent: u64,
    pub kind: Kind,
    children: OnceLock<Arc<Vec<Child>>>,
    pub content: OnceLock<Arc<FileContent>>,
    /// Disk map pages of a disk, read once for the inode's life.
    pub pages: PageCache,
    /// Where the last read ended, to detect sequential readers.
    pub last_end: AtomicU64,
    /// Where the current sequential run of reads began.
    pub run_start: AtomicU64,
    /// How far ahead of a sequential reader chunks have been asked for.
    pub read_ahead_to: AtomicU64,
}

pub struct Namespace {
    pub repo: Arc<dyn RepositoryReader>,
    pub inodes: InodeTable,
    catalog: Mutex<CatalogSnapshot>,
    descriptions: Mutex<HashMap<RestorePointId, Arc<VmDescription>>>,
    /// Guests of the VM restore points browsed lately (their disks' page
    /// caches and open file systems); inodes keep what they use.
    guests: Mutex<HashMap<RestorePointId, Arc<GuestView>>>,
    /// Decompressed chunks, shared by every reader of the mount.
    pub cache: Arc<ChunkCache>,
    mounted_at: SystemTime,
    uid: u32,
    gid: u32,
    /// Owner of the VM files, whose own owners and modes are not recorded.
    vm_owner: (u32, u32),
    /// The ACLs are hidden from the kernel (`--no-xattrs`), so it cannot
    /// enforce them: entries with an ACL show their owner's bits only.
    acls_hidden: bool,
    /// Told of every catalog before its restore points can be reached.
    pub xattr_names: Arc<XattrNames>,
}

pub(super) fn new_inode(ino: u64, parent: u64, kind: Kind) -> Arc<Inode> {
    Arc::new(Inode {
        ino,
        parent,
        kind,
        children: OnceLock::new(),
        content: OnceLock::new(),
        pages: PageCache::unbounded(),
        last_end: AtomicU64::new(u64::MAX),
        run_start: AtomicU64::new(0),
        read_ahead_to: AtomicU64::new(0),
    })
}

impl Namespace {
    pub fn new(repo: Arc<dyn RepositoryReader>, acls_hidden: bool, cache: Arc<ChunkCache>) -> Self {
        // A repository behind a server has no local owner: its VM files
        // are shown as the mounting user's.
        let vm_owner = match repo.local_root() {
            Some(root) => std::fs::metadata(root)
                .map(|m| (m.uid(), m.gid()))
                .unwrap_or((0, 0)),
            None => (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw()),
        };
        let xattr_names = XattrNames::start(repo.clone(), Arc::clone(&cache));
        Namespace {
            inodes: InodeTable::new(),
            catalog: Mutex::new((None, Arc::new(Catalog::default()))),
            descriptions: Mutex::new(HashMap::new()),
            guests: Mutex::new(HashMap::new()),
            cache,
            mounted_at: SystemTime::now(),
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            vm_owner,
            acls_hidden,
            xattr_names,
            repo,
        }
    }
}

impl Namespace {

    /// The guest view of a VM restore point, made on first use.
    pub fn guest(&self, rp: &RestorePoint) -> Result<Arc<GuestView>> {
        if let Some(view) = self.guests.lock().expect("guest views").get(&rp.id) {
            return Ok(Arc::clone(view));
        }
        let description = self.description(rp)?;
        let view = Arc::new(GuestView::new(Arc::clone(&self.repo), &description, Arc::clone(&self.cache)));
        let mut guests = self.guests.lock().expect("guest views");
        if guests.len() >= GUEST_VIEWS {
            guests.clear();
        }
        guests.insert(rp.id, Arc::clone(&view));
        Ok(view)
    }

    pub fn get(&self, ino: u64) -> Option<Arc<Inode>> {
        self.inodes.get(ino)
    }

    /// A directory's entries, sorted by name; cached where they never change.
    pub fn children(&self, inode: &Inode) -> Result<Arc<Vec<Child>>> {
        if inode.kind.is_dynamic() {
            return Ok(Arc::new(self.compute_children(inode)?));
        }
        if let Some(c) = inode.children.get() {
            return Ok(c.clone());
        }
        let c = Arc::new(self.compute_children(inode)?);
        Ok(inode.children.get_or_init(|| c).clone())
    }

    pub fn lookup(&self, parent: &Inode, name: &[u8]) -> Result<Option<Arc<Inode>>> {
        let children = self.children(parent)?;
        match children.binary_search_by(|c| c.name.as_slice().cmp(name)) {
            Ok(i) => Ok(Some(self.intern(parent.ino, &children[i]))),
            Err(_) => Ok(None),
        }
    }

    /// The inode for a child, created on first use.
    pub fn intern(&self, parent: u64, child: &Child) -> Arc<Inode> {
        self.inodes.intern(parent, child)
    }

    pub fn file_content(&self, inode: &Inode) -> Option<Arc<FileContent>> {
        let Kind::Entry { node, .. } = &inode.kind else {
            return None;
        };
        let NodeKind::File { extents } = &node.kind else {
            return None;
        };
        Some(
            inode
                .content
                .get_or_init(|| Arc::new(FileContent::new(extents)))
                .clone(),
        )
    }
}
