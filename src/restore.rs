//! Bringing restore points back: file trees (whole or selected paths),
//! whole VMs, single disks.

pub mod files;
pub mod fsops;
pub mod vm;

use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// Validates a restore destination: it exists or can be created, is a
/// writable directory, and is not inside the repository. Returns its
/// canonical path.
pub fn prepare_target(repo_root: &Path, target: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(target).map_err(|e| {
        Error::InvalidInput(format!(
            "cannot use {} as restore target: {e}",
            target.display()
        ))
    })?;
    let target = std::fs::canonicalize(target).at("resolving", target)?;
    if !target.is_dir() {
        return Err(Error::InvalidInput(format!(
            "restore target {} is not a directory",
            target.display()
        )));
    }
    nix::unistd::access(&target, nix::unistd::AccessFlags::W_OK).map_err(|e| {
        Error::InvalidInput(format!(
            "restore target {} is not writable: {e}",
            target.display()
        ))
    })?;
    let repo_root = std::fs::canonicalize(repo_root).at("resolving", repo_root)?;
    if target.starts_with(&repo_root) {
        return Err(Error::InvalidInput(format!(
            "restore target {} is inside the repository {}",
            target.display(),
            repo_root.display()
        )));
    }
    Ok(target)
}

/// Refuses a restore that would not fit, before anything is written.
pub fn check_space(target: &Path, needed: u64) -> Result<()> {
    let stat = nix::sys::statvfs::statvfs(target).at("checking free space of", target)?;
    let available = stat.blocks_available() as u64 * stat.fragment_size() as u64;
    if needed > available {
        return Err(Error::NoSpace {
            path: target.to_path_buf(),
            needed,
            available,
        });
    }
    Ok(())
}
