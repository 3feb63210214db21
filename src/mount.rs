//! `strata mount`: the repository as a read-only FUSE file system.
//!
//! [`namespace`] decides what the tree looks like, [`fs`] answers the
//! kernel, [`cache`] keeps decompressed chunks. Mounting goes through the
//! mount syscall when run as root (fuser without libfuse) and through
//! fusermount3 otherwise.

pub mod cache;
pub mod fs;
pub mod namespace;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fuser::MountOption;

use crate::error::{Error, Result};
use crate::repository::Repository;

pub struct MountOptions {
    pub allow_other: bool,
    /// Bytes of decompressed chunks kept in memory.
    pub cache_size: u64,
    /// Hide extended attributes. `ls -l` asks for two attributes of every
    /// file, each a round trip to this process; without xattrs the kernel
    /// learns once that there are none.
    pub no_xattrs: bool,
}

/// Refuses a mount point left behind by a killed mount, with the command
/// that clears it.
pub fn check_mountpoint(mountpoint: &Path) -> Result<()> {
    match std::fs::metadata(mountpoint) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(Error::InvalidInput(format!("mount point {} is not a directory", mountpoint.display()))),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Err(Error::InvalidInput(format!(
            "{} is a stale mount of a process that is gone; clear it with `strata umount {0}` (or `umount -l {0}`)",
            mountpoint.display()
        ))),
        Err(e) => Err(Error::InvalidInput(format!("mount point {}: {e}", mountpoint.display()))),
    }
}

/// Mounts and serves until unmounted (`strata umount`, `umount`) or until
/// SIGINT/SIGTERM, then unmounts. `on_mounted` is called once mounted.
pub fn mount<M: Send + Sync + 'static>(
    repo: Repository<M>,
    mountpoint: &Path,
    options: &MountOptions,
    on_mounted: impl FnOnce(),
) -> Result<()> {
    check_mountpoint(mountpoint)?;
    let ns = Arc::new(namespace::Namespace::new(Arc::new(repo)));
    let fs = fs::StrataFs::new(ns, options.cache_size, options.no_xattrs);
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
    while !crate::interrupt::requested() && !session.guard.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(session);
    tracing::info!(mountpoint = %mountpoint.display(), "unmounted");
    Ok(())
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
