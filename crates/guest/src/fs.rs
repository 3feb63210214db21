//! What every guest file system reader gives the mount and the restore:
//! nodes by a stable number (the file system's inode number where it has
//! one, so hard links share it), their metadata, directory listings,
//! symlink targets, extended attributes, and reads at an offset. Readers
//! are `Sync`: the mount's threads call them at once.

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
}

/// Opens the file system on `device`, which [`crate::probe`] found to
/// hold `content`; `name` names the volume in messages.
pub fn open(content: Content, device: Window, name: &str) -> Result<Box<dyn GuestFs>> {
    match content {
        Content::Ext => Ok(Box::new(crate::ext4::Ext4::open(device, name)?)),
        Content::Fat => Ok(Box::new(crate::fat::Fat::open(device, name)?)),
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
