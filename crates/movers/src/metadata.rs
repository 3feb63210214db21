//! Reads what a file system holds about an entry, for a tree node.

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::id::ChunkId;
use crate::index::FileFingerprint;
use crate::tree::{Node, NodeKind, Timestamp};

/// Resolves uids and gids to names once each.
#[derive(Default)]
pub struct OwnerNames {
    users: HashMap<u32, Vec<u8>>,
    groups: HashMap<u32, Vec<u8>>,
}

impl OwnerNames {
    pub fn user(&mut self, uid: u32) -> Vec<u8> {
        self.users
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(uid.into())
                    .ok()
                    .flatten()
                    .map(|u| u.name.into_bytes())
                    .unwrap_or_default()
            })
            .clone()
    }

    pub fn group(&mut self, gid: u32) -> Vec<u8> {
        self.groups
            .entry(gid)
            .or_insert_with(|| {
                nix::unistd::Group::from_gid(gid.into())
                    .ok()
                    .flatten()
                    .map(|g| g.name.into_bytes())
                    .unwrap_or_default()
            })
            .clone()
    }
}

pub fn fingerprint(meta: &Metadata) -> FileFingerprint {
    FileFingerprint {
        size: meta.size(),
        mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
        inode: meta.ino(),
        device: meta.dev(),
    }
}

/// Extended attributes of `path` itself (symlinks are not followed).
/// File systems without xattr support simply have none. Most files have
/// none, so the first call only asks for the size and allocates nothing.
pub fn read_xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return Vec::new();
    };
    // SAFETY: a NULL buffer with size 0 asks only for the list's length.
    let len = unsafe { libc::llistxattr(c_path.as_ptr(), std::ptr::null_mut(), 0) };
    if len <= 0 {
        return Vec::new();
    }
    let Ok(names) = xattr::list(path) else {
        return Vec::new();
    };
    let mut out: Vec<_> = names
        .filter_map(|name| {
            let value = xattr::get(path, &name).ok().flatten()?;
            Some((name.as_bytes().to_vec(), value))
        })
        .collect();
    out.sort();
    out
}

/// Stable id shared by every name of a hard-linked file.
pub fn link_id(meta: &Metadata) -> u64 {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&meta.dev().to_le_bytes());
    bytes[8..].copy_from_slice(&meta.ino().to_le_bytes());
    let id = u64::from_le_bytes(
        blake3::hash(&bytes).as_bytes()[..8]
            .try_into()
            .expect("8 bytes"),
    );
    id.max(1)
}

/// A node for `path` with its metadata; file extents and subtree ids are
/// filled in later by the walker.
pub fn node_for(
    name: &[u8],
    path: &Path,
    meta: &Metadata,
    owners: &mut OwnerNames,
) -> std::io::Result<Node> {
    let ft = meta.file_type();
    let kind = if ft.is_file() {
        NodeKind::File {
            extents: Vec::new(),
        }
    } else if ft.is_dir() {
        NodeKind::Directory {
            subtree: ChunkId([0; 32]),
        }
    } else if ft.is_symlink() {
        NodeKind::Symlink {
            target: std::fs::read_link(path)?.as_os_str().as_bytes().to_vec(),
        }
    } else if ft.is_fifo() {
        NodeKind::Fifo
    } else if ft.is_char_device() {
        NodeKind::CharDevice { rdev: meta.rdev() }
    } else if ft.is_block_device() {
        NodeKind::BlockDevice { rdev: meta.rdev() }
    } else {
        NodeKind::Socket
    };
    let hard_linked = !ft.is_dir() && meta.nlink() > 1;
    Ok(Node {
        name: name.to_vec(),
        size: if ft.is_dir() { 0 } else { meta.size() },
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        user: owners.user(meta.uid()),
        group: owners.group(meta.gid()),
        mtime: Timestamp {
            sec: meta.mtime(),
            nsec: meta.mtime_nsec() as u32,
        },
        atime: Timestamp {
            sec: meta.atime(),
            nsec: meta.atime_nsec() as u32,
        },
        nlink: if ft.is_dir() { 1 } else { meta.nlink() as u32 },
        link_id: if hard_linked { link_id(meta) } else { 0 },
        xattrs: read_xattrs(path),
    })
}
