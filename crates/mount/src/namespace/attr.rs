//! The attributes the kernel sees: times, sizes, owners and modes of
//! every kind of inode in the mount.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType};

use super::{Inode, Kind, Namespace};
use crate::tree::{Extent, NodeKind, Timestamp};
use crate::vm::description::FileOwner;

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

impl Namespace {
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
            Kind::FilesPoint(rp) | Kind::VmPoint(rp) | Kind::GuestRoot(rp) | Kind::GuestEmpty { rp, .. } => {
                dir(to_system_time(rp.manifest.time))
            }
            // The gate to a disk's guest files: no one enters who may not
            // read the disk itself (its flat file's mode and owner, read
            // bits made read-and-search), whatever modes the guest's own
            // files have. With --allow-other the kernel checks it.
            Kind::GuestDisk { rp, disk } => {
                let (perm, uid, gid) = match self.description(rp) {
                    Ok(d) => d.disks.get(*disk).map_or((0o500, self.vm_owner.0, self.vm_owner.1), |d| {
                        let (perm, uid, gid) = self.vm_file_owner(d.owner.as_ref());
                        let read = perm & 0o444;
                        (read | (read >> 2), uid, gid)
                    }),
                    Err(_) => (0o500, self.vm_owner.0, self.vm_owner.1),
                };
                FileAttr {
                    perm,
                    uid,
                    gid,
                    ..dir(to_system_time(rp.manifest.time))
                }
            }
            Kind::GuestNode { stat, .. } => {
                let time = |t: strata_guest::fs::Time| to_system_time(Timestamp { sec: t.sec, nsec: t.nsec });
                FileAttr {
                    ino: inode.ino,
                    size: stat.size,
                    blocks: stat.size.div_ceil(512),
                    atime: time(stat.atime),
                    mtime: time(stat.mtime),
                    ctime: time(stat.ctime),
                    crtime: time(stat.mtime),
                    kind: inode.kind.file_type(),
                    perm: (stat.mode & 0o7777) as u16,
                    nlink: stat.nlink.max(1),
                    uid: stat.uid,
                    gid: stat.gid,
                    rdev: if matches!(inode.kind.file_type(), FileType::CharDevice | FileType::BlockDevice) {
                        encode_rdev(stat.rdev)
                    } else {
                        0
                    },
                    blksize: 128 * 1024,
                    flags: 0,
                }
            }
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
