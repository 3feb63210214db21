//! What every guest file system reader gives the mount and the restore:
//! nodes by a stable number (the file system's inode number where it has
//! one, so hard links share it), their metadata, directory listings,
//! symlink targets, extended attributes, and reads at an offset. Readers
//! are `Sync`: the mount's threads call them at once.

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::probe::Content;
use crate::source::Window;

/// A node of a guest file system.
pub type NodeId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

impl FileKind {
    /// The kind a Unix mode's type bits (`S_IFMT`) name, as ext and XFS
    /// store them.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        Some(match mode & 0xF000 {
            0x4000 => FileKind::Dir,
            0x8000 => FileKind::File,
            0xA000 => FileKind::Symlink,
            0x2000 => FileKind::CharDevice,
            0x6000 => FileKind::BlockDevice,
            0x1000 => FileKind::Fifo,
            0xC000 => FileKind::Socket,
            _ => return None,
        })
    }
}

/// A time as the file system keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Time {
    pub sec: i64,
    pub nsec: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub node: NodeId,
    pub kind: FileKind,
    pub size: u64,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Names the node has (hard links).
    pub nlink: u32,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    /// A device node's number, as `makedev` makes it.
    pub rdev: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub node: NodeId,
}

/// A guest file system, read-only.
pub trait GuestFs: Send + Sync {
    /// The file system's kind and label, as `strata show` prints them.
    fn describe(&self) -> (Content, Option<String>);
    fn root(&self) -> NodeId;
    fn stat(&self, node: NodeId) -> Result<Stat>;
    /// The entries of a directory, without `.` and `..`.
    fn read_dir(&self, node: NodeId) -> Result<Vec<DirEntry>>;
    fn read_link(&self, node: NodeId) -> Result<Vec<u8>>;
    /// Extended attributes, full names (`user.x`, `security.selinux`,
    /// `system.posix_acl_access` in the kernel's format).
    fn xattrs(&self, node: NodeId) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Bytes of a regular file at `offset`; fewer only at its end.
    fn read_at(&self, node: NodeId, offset: u64, buf: &mut [u8]) -> Result<usize>;

    /// Whether any node can have extended attributes (FAT's cannot).
    fn has_xattrs(&self) -> bool {
        true
    }
}

/// Every extended attribute name some node of `fs` has, by a walk of its
/// tree from the root (each node once, so a directory loop ends), or
/// `None` if `stop` said so first. A node that cannot be read adds
/// nothing: the mount answers for it with no attributes either.
pub fn xattr_names(fs: &dyn GuestFs, stop: &dyn Fn() -> bool) -> Option<HashSet<Vec<u8>>> {
    let mut names = HashSet::new();
    if !fs.has_xattrs() {
        return Some(names);
    }
    let root = fs.root();
    let mut seen = HashSet::from([root]);
    let mut pending = vec![root];
    let mut add = |node| {
        if let Ok(xattrs) = fs.xattrs(node) {
            names.extend(xattrs.into_iter().map(|(name, _)| name));
        }
    };
    add(root);
    while let Some(dir) = pending.pop() {
        if stop() {
            return None;
        }
        let Ok(entries) = fs.read_dir(dir) else { continue };
        for entry in entries {
            if !seen.insert(entry.node) {
                continue;
            }
            add(entry.node);
            if fs.stat(entry.node).is_ok_and(|s| s.kind == FileKind::Dir) {
                pending.push(entry.node);
            }
        }
    }
    Some(names)
}

/// A device number from its major and minor, as glibc's `makedev`
/// makes it (what [`Stat::rdev`] holds).
pub fn makedev(major: u32, minor: u32) -> u64 {
    let (major, minor) = (u64::from(major), u64::from(minor));
    ((major & 0xffff_f000) << 32) | ((major & 0xfff) << 8) | ((minor & 0xffff_ff00) << 12) | (minor & 0xff)
}

/// An ACL in the kernel's `system.posix_acl_*` value format (version 2,
/// then entries of tag, permissions and id, little-endian), which the
/// file systems that store ACLs their own way convert to.
pub(crate) struct KernelAcl(Vec<u8>);

impl KernelAcl {
    pub fn new() -> KernelAcl {
        KernelAcl(2u32.to_le_bytes().to_vec())
    }

    /// Whether entries of `tag` name a user or group by id (`ACL_USER`,
    /// `ACL_GROUP`) or not (the owner, owning group, mask and others);
    /// `None` for a tag no ACL has.
    pub fn tag_has_id(tag: u16) -> Option<bool> {
        match tag {
            0x02 | 0x08 => Some(true),
            0x01 | 0x04 | 0x10 | 0x20 => Some(false),
            _ => None,
        }
    }

    /// Adds an entry; `id` is asked for only where the tag has one.
    /// `None` for an unknown tag or a missing id.
    pub fn push(&mut self, tag: u16, perm: u16, id: impl FnOnce() -> Option<u32>) -> Option<()> {
        let id = if Self::tag_has_id(tag)? { id()? } else { u32::MAX };
        self.0.extend_from_slice(&tag.to_le_bytes());
        self.0.extend_from_slice(&perm.to_le_bytes());
        self.0.extend_from_slice(&id.to_le_bytes());
        Some(())
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm), for the file systems that store dates (FAT, exFAT).
pub(crate) fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let month_index = (month + 9) % 12;
    let doy = (153 * month_index + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Opens the file system on `device`, which [`crate::probe`] found to
/// hold `content`; `name` names the volume in messages.
pub fn open(content: Content, device: Window, name: &str) -> Result<Box<dyn GuestFs>> {
    match content {
        Content::Ext => Ok(Box::new(crate::ext4::Ext4::open(device, name)?)),
        Content::Fat => Ok(Box::new(crate::fat::Fat::open(device, name)?)),
        Content::Exfat => crate::exfat::open(device, name),
        Content::Ntfs => Ok(Box::new(crate::ntfs::Ntfs::open(device, name)?)),
        Content::Xfs => crate::xfs::open(device, name),
        other => Err(Error::unsupported(
            format!("volume {name}"),
            format!("its {} file system is not read yet", other.name()),
        )),
    }
}

/// The node at `path` (components separated by `/`, no `.` or `..`),
/// not following symlinks: a symlink met on the way is not a directory.
pub fn lookup(fs: &dyn GuestFs, path: &str) -> Result<NodeId> {
    let mut node = fs.root();
    let mut walked = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if part == "." || part == ".." {
            return Err(Error::NotFound(format!("{path} (no . or .. in a guest path)")));
        }
        walked.push('/');
        walked.push_str(part);
        if fs.stat(node)?.kind != FileKind::Dir {
            return Err(Error::NotADirectory(walked));
        }
        node = lookup_child(fs, node, part.as_bytes()).map_err(|e| match e {
            Error::NotFound(_) => Error::NotFound(walked.clone()),
            other => other,
        })?;
    }
    Ok(node)
}

/// The entry `name` of directory `dir`.
pub fn lookup_child(fs: &dyn GuestFs, dir: NodeId, name: &[u8]) -> Result<NodeId> {
    fs.read_dir(dir)?
        .into_iter()
        .find(|e| e.name == name)
        .map(|e| e.node)
        .ok_or_else(|| Error::NotFound(String::from_utf8_lossy(name).into_owned()))
}
