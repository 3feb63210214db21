//! The mounted tree: which inode is what, built lazily as the kernel looks
//! names up.
//!
//! ```text
//! /files/<source>/<time>/<absolute paths…>   file-tree restore points
//! /files/<source>/latest -> <time>
//! /vms/<vm>/<time>/<vm>.vmx                  the .vmx as backed up
//! /vms/<vm>/<time>/<disk>.vmdk               monolithicFlat descriptor
//! /vms/<vm>/<time>/<disk>-flat.vmdk          the raw disk, holes included
//! /vms/<vm>/latest -> <time>
//! ```
//! Restore points that share a printed time are named `<time>-<id>`. The
//! restore-point catalog is re-read at most once a second, so restore
//! points made after mounting appear, and forgotten ones disappear,
//! without remounting; [`super::inodes`] keeps a name from reaching the
//! object it named before.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType};

use super::inodes::InodeTable;
use crate::disk_reader::PageCache;
use crate::error::{Error, Result};
use crate::id::{ChunkId, RestorePointId};
use crate::repository::Repository;
use crate::restore_point::{RestorePoint, RestorePointKind};
use crate::selector::{format_time, time_labels};
use crate::tree::{Extent, Node, NodeKind, Timestamp};
use crate::vm::description::{FileOwner, VmDescription};

pub const ROOT: u64 = 1;
const CATALOG_MAX_AGE: Duration = Duration::from_secs(1);

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
}

/// Restore points as last read, with the times `list` shows for them.
#[derive(Default)]
struct Catalog {
    points: Vec<Arc<RestorePoint>>,
    labels: HashMap<RestorePointId, String>,
}

/// The catalog as last read, and when.
type CatalogSnapshot = (Option<Instant>, Arc<Catalog>);

pub struct Namespace<M> {
    pub repo: Arc<Repository<M>>,
    pub inodes: InodeTable,
    catalog: Mutex<CatalogSnapshot>,
    descriptions: Mutex<HashMap<RestorePointId, Arc<VmDescription>>>,
    mounted_at: SystemTime,
    uid: u32,
    gid: u32,
    /// Owner of the VM files, whose own owners and modes are not recorded.
    vm_owner: (u32, u32),
    /// The ACLs are hidden from the kernel (`--no-xattrs`), so it cannot
    /// enforce them: entries with an ACL show their owner's bits only.
    acls_hidden: bool,
}

/// Mode of a VM's `.vmx`, descriptors and disks in the mount when the
/// restore point did not record their own (made before version 2 of the
/// VM description): disks usually hold whole systems, so only the
/// repository's owner (and root) may read them.
const VM_FILE_MODE: u16 = 0o400;

/// The xattr in which Linux keeps a file's access ACL.
const ACL_ACCESS: &[u8] = b"system.posix_acl_access";

fn to_system_time(t: Timestamp) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs()) + Duration::from_nanos(t.nsec as u64)
    }
}

/// Kernel encoding of a device number.
fn encode_rdev(rdev: u64) -> u32 {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
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
    })
}

/// The disk's base name as shown in the mount.
pub fn disk_stem(description: &VmDescription, index: usize) -> String {
    let disk = &description.disks[index];
    let stem = disk.stem().to_string();
    let clash = description
        .disks
        .iter()
        .enumerate()
        .any(|(i, d)| i != index && d.stem() == stem);
    if clash {
        format!("{stem}-{}", disk.slot.replace(':', "-"))
    } else {
        stem
    }
}

impl<M: Sync + Send> Namespace<M> {
    pub fn new(repo: Arc<Repository<M>>, acls_hidden: bool) -> Self {
        let vm_owner = std::fs::metadata(repo.root())
            .map(|m| (m.uid(), m.gid()))
            .unwrap_or((0, 0));
        Namespace {
            repo,
            inodes: InodeTable::new(),
            catalog: Mutex::new((None, Arc::new(Catalog::default()))),
            descriptions: Mutex::new(HashMap::new()),
            mounted_at: SystemTime::now(),
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            vm_owner,
            acls_hidden,
        }
    }

    pub fn get(&self, ino: u64) -> Option<Arc<Inode>> {
        self.inodes.get(ino)
    }

    fn catalog(&self) -> Result<Arc<Catalog>> {
        let mut catalog = self.catalog.lock().expect("catalog");
        if catalog.0.is_none_or(|at| at.elapsed() > CATALOG_MAX_AGE) {
            self.repo.catch_up()?;
            let points = self.repo.restore_points()?;
            let labels = time_labels(&points);
            let points = points.into_iter().map(Arc::new).collect();
            *catalog = (Some(Instant::now()), Arc::new(Catalog { points, labels }));
        }
        Ok(catalog.1.clone())
    }

    pub fn description(&self, rp: &RestorePoint) -> Result<Arc<VmDescription>> {
        if let Some(d) = self.descriptions.lock().expect("descriptions").get(&rp.id) {
            return Ok(d.clone());
        }
        let d = Arc::new(VmDescription::decode(
            &rp.manifest.root,
            &self.repo.read_chunk(&rp.manifest.root)?,
        )?);
        self.descriptions
            .lock()
            .expect("descriptions")
            .insert(rp.id, d.clone());
        Ok(d)
    }

    /// Restore points of one source and kind, named by time as `list`
    /// shows it (with as many fractional digits as it takes). Restore
    /// points that still share a time all get their id appended, so a
    /// name never passes from one restore point to another while both
    /// exist, and a plain time never names one of several.
    fn points_of(
        &self,
        kind: RestorePointKind,
        source: &str,
    ) -> Result<Vec<(String, Arc<RestorePoint>)>> {
        let catalog = self.catalog()?;
        let points: Vec<(String, Arc<RestorePoint>)> = catalog
            .points
            .iter()
            .filter(|rp| rp.manifest.kind == kind && rp.manifest.source == source)
            .map(|rp| {
                let label = catalog.labels.get(&rp.id).cloned();
                (
                    label.unwrap_or_else(|| format_time(rp.manifest.time)),
                    rp.clone(),
                )
            })
            .collect();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (name, _) in &points {
            *seen.entry(name.as_str()).or_default() += 1;
        }
        let shared: Vec<bool> = points
            .iter()
            .map(|(name, _)| seen[name.as_str()] > 1)
            .collect();
        Ok(points
            .into_iter()
            .zip(shared)
            .map(|((name, rp), shared)| {
                if shared {
                    (format!("{name}-{}", rp.id.short()), rp)
                } else {
                    (name, rp)
                }
            })
            .collect())
    }

    fn compute_children(&self, inode: &Inode) -> Result<Vec<Child>> {
        let mut children: Vec<Child> = match &inode.kind {
            Kind::Root => vec![
                Child {
                    name: b"files".to_vec(),
                    kind: Kind::FilesRoot,
                },
                Child {
                    name: b"vms".to_vec(),
                    kind: Kind::VmsRoot,
                },
            ],
            Kind::FilesRoot | Kind::VmsRoot => {
                let kind = if matches!(inode.kind, Kind::FilesRoot) {
                    RestorePointKind::Files
                } else {
                    RestorePointKind::Vm
                };
                let mut names: Vec<String> = self
                    .catalog()?
                    .points
                    .iter()
                    .filter(|rp| rp.manifest.kind == kind)
                    .map(|rp| rp.manifest.source.clone())
                    .collect();
                names.sort();
                names.dedup();
                names
                    .into_iter()
                    .map(|n| Child {
                        name: n.as_bytes().to_vec(),
                        kind: if kind == RestorePointKind::Files {
                            Kind::Source(n)
                        } else {
                            Kind::Vm(n)
                        },
                    })
                    .collect()
            }
            Kind::Source(source) | Kind::Vm(source) => {
                let kind = if matches!(inode.kind, Kind::Source(_)) {
                    RestorePointKind::Files
                } else {
                    RestorePointKind::Vm
                };
                let points = self.points_of(kind, source)?;
                let mut c: Vec<Child> = Vec::new();
                if let Some((latest, _)) = points.last() {
                    c.push(Child {
                        name: b"latest".to_vec(),
                        kind: Kind::Latest(latest.as_bytes().to_vec()),
                    });
                }
                for (name, rp) in points {
                    let kind = if kind == RestorePointKind::Files {
                        Kind::FilesPoint(rp)
                    } else {
                        Kind::VmPoint(rp)
                    };
                    c.push(Child {
                        name: name.into_bytes(),
                        kind,
                    });
                }
                c
            }
            Kind::FilesPoint(rp) => self.tree_children(rp, &rp.manifest.root, "")?,
            Kind::Dir { rp, tree, path, .. } => self.tree_children(rp, tree, path)?,
            Kind::VmPoint(rp) => {
                let d = self.description(rp)?;
                let mut c = Vec::new();
                if !d.vmx.is_empty() {
                    c.push(Child {
                        name: format!("{}.vmx", d.name).into_bytes(),
                        kind: Kind::Blob {
                            time: rp.manifest.time,
                            data: Arc::new(d.vmx.clone()),
                            owner: d.vmx_owner,
                        },
                    });
                }
                for (i, disk) in d.disks.iter().enumerate() {
                    let stem = disk_stem(&d, i);
                    let flat = format!("{stem}-flat.vmdk");
                    let text = crate::vmdk::writer::flat_descriptor_text(
                        &flat,
                        disk.capacity,
                        &disk.adapter_type,
                    );
                    c.push(Child {
                        name: format!("{stem}.vmdk").into_bytes(),
                        kind: Kind::Blob {
                            time: rp.manifest.time,
                            data: Arc::new(text.into_bytes()),
                            owner: disk.owner,
                        },
                    });
                    c.push(Child {
                        name: flat.clone().into_bytes(),
                        kind: Kind::FlatDisk {
                            rp: rp.clone(),
                            description: d.clone(),
                            disk: i,
                            path: format!(
                                "vms/{}/{}/{flat}",
                                rp.manifest.source,
                                format_time(rp.manifest.time)
                            ),
                        },
                    });
                }
                c
            }
            _ => return Err(Error::InvalidInput("not a directory".into())),
        };
        children.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(children)
    }

    fn tree_children(
        &self,
        rp: &Arc<RestorePoint>,
        tree: &ChunkId,
        path: &str,
    ) -> Result<Vec<Child>> {
        let tree = self.repo.load_tree(tree)?;
        let mut out = Vec::with_capacity(tree.nodes.len());
        for node in tree.nodes {
            if crate::tree::validate_name(&node.name, "mount").is_err() {
                tracing::error!(restore_point = %rp.id.short(), path, name = %String::from_utf8_lossy(&node.name), "unsafe name hidden");
                continue;
            }
            let child_path = format!("{path}/{}", String::from_utf8_lossy(&node.name));
            let name = node.name.clone();
            let kind = match &node.kind {
                NodeKind::Directory { subtree } => Kind::Dir {
                    rp: rp.clone(),
                    tree: *subtree,
                    node: Arc::new(node),
                    path: child_path,
                },
                _ => Kind::Entry {
                    rp: rp.clone(),
                    node: Arc::new(node),
                    path: child_path,
                },
            };
            out.push(Child { name, kind });
        }
        Ok(out)
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

    /// Permission bits and owner of a VM file: as backed up, or the
    /// restrictive default for records that did not keep them. Write bits
    /// are dropped: the mount is read-only.
    fn vm_file_owner(&self, owner: Option<&FileOwner>) -> (u16, u32, u32) {
        match owner {
            Some(o) => ((o.mode & 0o7555) as u16, o.uid, o.gid),
            None => (VM_FILE_MODE, self.vm_owner.0, self.vm_owner.1),
        }
    }

    pub fn attr(&self, inode: &Inode) -> FileAttr {
        let dir = |time: SystemTime| FileAttr {
            ino: inode.ino,
            size: 0,
            blocks: 0,
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            kind: FileType::Directory,
            perm: 0o555,
            nlink: 2,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 128 * 1024,
            flags: 0,
        };
        match &inode.kind {
            Kind::FilesPoint(rp) | Kind::VmPoint(rp) => dir(to_system_time(rp.manifest.time)),
            Kind::Latest(target) => FileAttr {
                kind: FileType::Symlink,
                perm: 0o777,
                size: target.len() as u64,
                nlink: 1,
                ..dir(self.mounted_at)
            },
            Kind::Blob { time, data, owner } => {
                let (perm, uid, gid) = self.vm_file_owner(owner.as_ref());
                FileAttr {
                    kind: FileType::RegularFile,
                    perm,
                    size: data.len() as u64,
                    blocks: (data.len() as u64).div_ceil(512),
                    nlink: 1,
                    uid,
                    gid,
                    ..dir(to_system_time(*time))
                }
            }
            Kind::FlatDisk {
                rp,
                description,
                disk,
                ..
            } => {
                let d = &description.disks[*disk];
                let (perm, uid, gid) = self.vm_file_owner(d.owner.as_ref());
                FileAttr {
                    kind: FileType::RegularFile,
                    perm,
                    size: d.capacity,
                    blocks: d.allocated_bytes() / 512,
                    nlink: 1,
                    uid,
                    gid,
                    ..dir(to_system_time(rp.manifest.time))
                }
            }
            Kind::Dir { node, .. } | Kind::Entry { node, .. } => {
                let data_bytes: u64 = match &node.kind {
                    NodeKind::File { extents } => extents
                        .iter()
                        .filter(|e| matches!(e, Extent::Data { .. }))
                        .map(Extent::len)
                        .sum(),
                    _ => 0,
                };
                let rdev = match node.kind {
                    NodeKind::CharDevice { rdev } | NodeKind::BlockDevice { rdev } => {
                        encode_rdev(rdev)
                    }
                    _ => 0,
                };
                let mtime = to_system_time(node.mtime);
                let mut perm = (node.mode & 0o7777) as u16;
                if self.acls_hidden && node.xattrs.iter().any(|(n, _)| n == ACL_ACCESS) {
                    // Never grant more than the ACL would: no group or others.
                    perm &= !0o077;
                }
                FileAttr {
                    ino: inode.ino,
                    size: node.size,
                    blocks: data_bytes.div_ceil(512),
                    atime: to_system_time(node.atime),
                    mtime,
                    ctime: mtime,
                    crtime: mtime,
                    kind: inode.kind.file_type(),
                    perm,
                    nlink: if matches!(inode.kind, Kind::Dir { .. }) {
                        2
                    } else {
                        node.nlink.max(1)
                    },
                    uid: node.uid,
                    gid: node.gid,
                    rdev,
                    blksize: 128 * 1024,
                    flags: 0,
                }
            }
            _ => dir(self.mounted_at),
        }
    }
}
