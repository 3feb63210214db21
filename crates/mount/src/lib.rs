//! `strata mount`: the repository as a read-only FUSE file system.
//!
//! [`namespace`] decides what the tree looks like, [`inodes`] which inode
//! is what while the kernel holds it, [`fs`] answers the kernel, [`read`]
//! finds and reads the bytes, [`read_ahead`] loads them ahead of sequential
//! readers through the engine's chunk cache, [`xattr_names`] knows
//! which xattr names no file has.
//! Mounting goes through the mount syscall when run as root (fuser without
//! libfuse) and through fusermount3 otherwise.

// The engine's modules (and the formats it re-exports) under their usual
// names, so that paths read `crate::tree`, `crate::repository`, ….
#[allow(unused_imports)]
use strata_engine::*;
#[allow(unused_imports)]
use strata_vmdk as vmdk;


pub mod fs;
pub mod inodes;
pub mod namespace;
pub mod read;
pub mod read_ahead;
pub mod xattr_names;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fuser::MountOption;

use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use crate::reader::RepositoryReader;

pub struct MountOptions {
    pub allow_other: bool,
    /// Bytes of decompressed chunks kept in memory.
    pub cache_size: u64,
    /// Hide extended attributes: the kernel learns once that there are
    /// none. Without it, names no file has are answered EOPNOTSUPP, which
    /// stops `ls -l` asking every file (see [`xattr_names`]).
    pub no_xattrs: bool,
}

/// Refuses a mount point left behind by a killed mount, with the command
/// that clears it, and one where a FUSE file system is mounted already
/// (stacking a second mount would hide the first).
pub fn check_mountpoint(mountpoint: &Path) -> Result<()> {
    match std::fs::metadata(mountpoint) {
        Ok(meta) if meta.is_dir() => match fuse_mount_at(mountpoint) {
            Some(fstype) => Err(Error::InvalidInput(format!(
                "{} is already mounted ({fstype}); unmount it first with `strata umount {0}`",
                mountpoint.display()
            ))),
            None => Ok(()),
        },
        Ok(_) => Err(Error::InvalidInput(format!("mount point {} is not a directory", mountpoint.display()))),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Err(Error::InvalidInput(format!(
            "{} is a stale mount of a process that is gone; clear it with `strata umount {0}` (or `umount -l {0}`)",
            mountpoint.display()
        ))),
        Err(e) => Err(Error::InvalidInput(format!("mount point {}: {e}", mountpoint.display()))),
    }
}

/// The type of the FUSE file system mounted at `path`, if there is one,
/// from `/proc/self/mountinfo`.
fn fuse_mount_at(path: &Path) -> Option<String> {
    let path = std::fs::canonicalize(path).ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        // `id parent dev root mountpoint options [optional…] - fstype source …`
        let mut fields = line.split(' ');
        let at = fields.nth(4)?;
        let fstype = fields.skip_while(|f| *f != "-").nth(1)?;
        let is_fuse = fstype == "fuse" || fstype.starts_with("fuse.");
        (is_fuse && Path::new(&unescape_mountinfo(at)) == path).then(|| fstype.to_string())
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space and so on).
fn unescape_mountinfo(field: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    std::ffi::OsString::from_vec(out)
}

/// Mounts and serves until unmounted (`strata umount`, `umount`) or until
/// `cancel` is cancelled, then unmounts. `on_mounted` is called once mounted.
pub fn mount(
    repo: Arc<dyn RepositoryReader>,
    mountpoint: &Path,
    options: &MountOptions,
    cancel: &CancelToken,
    on_mounted: impl FnOnce(),
) -> Result<()> {
    check_mountpoint(mountpoint)?;
    keep_freed_buffers();
    // ACLs only matter to other users; the kernel enforces them when it
    // may read them as xattrs.
    let acls_hidden = options.allow_other && options.no_xattrs;
    let kernel_acls = options.allow_other && !options.no_xattrs;
    let cache = Arc::new(crate::chunk_cache::ChunkCache::new(options.cache_size));
    let ns = Arc::new(namespace::Namespace::new(repo, acls_hidden, cache));
    let fs = fs::StrataFs::new(ns, options.cache_size, options.no_xattrs, kernel_acls);
    let mut mount_options = vec![
        MountOption::RO,
        MountOption::FSName("strata".into()),
        MountOption::Subtype("strata".into()),
        MountOption::NoAtime,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    if options.allow_other {
        mount_options.push(MountOption::AllowOther);
        mount_options.push(MountOption::DefaultPermissions);
    }
    let session = fuser::spawn_mount2(fs, mountpoint, &mount_options)
        .map_err(|e| Error::io("mounting at", mountpoint, e))?;
    tracing::info!(mountpoint = %mountpoint.display(), "mounted");
    on_mounted();
    while !cancel.is_cancelled() && !session.guard.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(session);
    tracing::info!(mountpoint = %mountpoint.display(), "unmounted");
    Ok(())
}

/// Every chunk read allocates buffers of hundreds of KiB, which glibc
/// serves with fresh mmaps (or returns to the system when freed): half the
/// CPU time of a sequential read went to faulting in and zeroing pages.
/// The mount process keeps freed memory for the next chunk instead; what
/// it holds stays bounded by the chunk cache and the reads in flight.
fn keep_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before the
    // mount's threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}

/// Unmounts a Strata mount (also a stale one).
pub fn unmount(mountpoint: &Path) -> Result<()> {
    match nix::mount::umount2(mountpoint, nix::mount::MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EPERM) => {
            let status = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg(mountpoint)
                .status()
                .map_err(|e| Error::io("running fusermount3 for", mountpoint, e))?;
            if status.success() {
                Ok(())
            } else {
                Err(Error::InvalidInput(format!(
                    "fusermount3 -u {} failed",
                    mountpoint.display()
                )))
            }
        }
        Err(nix::errno::Errno::EBUSY) => Err(Error::InvalidInput(format!(
            "{} is busy (a process is using it); close it or use `umount -l {0}`",
            mountpoint.display()
        ))),
        Err(nix::errno::Errno::EINVAL) => Err(Error::InvalidInput(format!(
            "{} is not mounted",
            mountpoint.display()
        ))),
        Err(e) => Err(Error::io("unmounting", mountpoint, e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo("/mnt/a\\040b\\134c"), "/mnt/a b\\c");
        assert_eq!(unescape_mountinfo("/plain\\9"), "/plain\\9");
    }
}
