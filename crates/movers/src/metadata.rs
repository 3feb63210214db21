//! Reads what a file system holds about an entry, for a tree node.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
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

/// What `lstat` says about a directory entry: the fields a tree node, a
/// file fingerprint and a directory listing digest are made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryStat {
    /// File type and permission bits, as `st_mode`.
    pub mode: u32,
    pub ino: u64,
    pub dev: u64,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub atime: Timestamp,
}

fn timestamp(sec: i64, nsec: i64) -> Timestamp {
    Timestamp {
        sec,
        // The kernel keeps nanoseconds below 10^9.
        nsec: u32::try_from(nsec).unwrap_or(0),
    }
}

impl EntryStat {
    /// `name` in the directory open as `dir`, symlinks not followed: no
    /// walk of the path from the root, and no race with a directory
    /// renamed or replaced above it.
    pub fn at(dir: &impl AsRawFd, name: &OsStr) -> std::io::Result<Self> {
        let st = nix::sys::stat::fstatat(
            Some(dir.as_raw_fd()),
            name,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
        Ok(EntryStat {
            mode: st.st_mode,
            ino: st.st_ino,
            dev: st.st_dev,
            nlink: st.st_nlink,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev,
            size: u64::try_from(st.st_size).unwrap_or(0),
            mtime: timestamp(st.st_mtime, st.st_mtime_nsec),
            ctime: timestamp(st.st_ctime, st.st_ctime_nsec),
            atime: timestamp(st.st_atime, st.st_atime_nsec),
        })
    }

    fn file_type(&self) -> u32 {
        self.mode & libc::S_IFMT
    }

    pub fn is_dir(&self) -> bool {
        self.file_type() == libc::S_IFDIR
    }

    pub fn is_file(&self) -> bool {
        self.file_type() == libc::S_IFREG
    }

    pub fn is_symlink(&self) -> bool {
        self.file_type() == libc::S_IFLNK
    }

    /// Everything about the entry that a backup records, in a fixed
    /// order, for a directory listing's digest. The ctime is what makes
    /// this complete: writing data, changing an extended attribute, a
    /// mode or an owner all set it. A symlink's access time is left out:
    /// reading its target (which the backup must do, and no flag prevents)
    /// sets it, so it would differ on every run that looked closely.
    pub fn hash_into(&self, hasher: &mut blake3::Hasher) {
        for v in [self.ino, self.dev, self.nlink, self.rdev, self.size] {
            hasher.update(&v.to_le_bytes());
        }
        for v in [self.mode, self.uid, self.gid] {
            hasher.update(&v.to_le_bytes());
        }
        let times: &[Timestamp] = if self.is_symlink() {
            &[self.mtime, self.ctime]
        } else {
            &[self.mtime, self.ctime, self.atime]
        };
        for t in times {
            hasher.update(&t.sec.to_le_bytes());
            hasher.update(&t.nsec.to_le_bytes());
        }
    }
}

fn nanos(t: Timestamp) -> i128 {
    i128::from(t.sec) * 1_000_000_000 + i128::from(t.nsec)
}

pub fn fingerprint(stat: &EntryStat) -> FileFingerprint {
    FileFingerprint {
        size: stat.size,
        mtime_ns: nanos(stat.mtime),
        ctime_ns: nanos(stat.ctime),
        inode: stat.ino,
        device: stat.dev,
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
pub fn link_id(stat: &EntryStat) -> u64 {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&stat.dev.to_le_bytes());
    bytes[8..].copy_from_slice(&stat.ino.to_le_bytes());
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
    stat: &EntryStat,
    owners: &mut OwnerNames,
) -> std::io::Result<Node> {
    let is_dir = stat.is_dir();
    let kind = match stat.file_type() {
        libc::S_IFREG => NodeKind::File {
            extents: Vec::new(),
        },
        libc::S_IFDIR => NodeKind::Directory {
            subtree: ChunkId([0; 32]),
        },
        libc::S_IFLNK => NodeKind::Symlink {
            target: std::fs::read_link(path)?.as_os_str().as_bytes().to_vec(),
        },
        libc::S_IFIFO => NodeKind::Fifo,
        libc::S_IFCHR => NodeKind::CharDevice { rdev: stat.rdev },
        libc::S_IFBLK => NodeKind::BlockDevice { rdev: stat.rdev },
        _ => NodeKind::Socket,
    };
    let hard_linked = !is_dir && stat.nlink > 1;
    Ok(Node {
        name: name.to_vec(),
        size: if is_dir { 0 } else { stat.size },
        kind,
        mode: stat.mode & 0o7777,
        uid: stat.uid,
        gid: stat.gid,
        user: owners.user(stat.uid),
        group: owners.group(stat.gid),
        mtime: stat.mtime,
        atime: stat.atime,
        nlink: if is_dir {
            1
        } else {
            u32::try_from(stat.nlink).unwrap_or(u32::MAX)
        },
        link_id: if hard_linked { link_id(stat) } else { 0 },
        xattrs: read_xattrs(path),
    })
}
