//! Bringing restore points back: file trees (whole or selected paths),
//! whole VMs, single disks.

// The engine's modules (and the formats it re-exports) under their usual
// names, so that paths read `crate::tree`, `crate::repository`, ….
#[allow(unused_imports)]
use strata_engine::*;
#[allow(unused_imports)]
use strata_vmdk as vmdk;


pub mod files;
pub mod fsops;
pub mod guest;
pub mod vm;

use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// A restore destination that has been validated but not yet created: a
/// refused restore must leave the file system as it was.
#[derive(Debug, Clone)]
pub struct RestoreTarget {
    /// Absolute, with every existing component resolved.
    path: PathBuf,
    /// The deepest part of `path` that exists now (where free space is
    /// measured).
    existing: PathBuf,
}

/// Validates a restore destination without touching it: it exists or its
/// nearest existing ancestor is a writable directory, it is a directory,
/// and it is not inside the repository.
/// `repo_root` is the repository's directory on this machine, if any: a
/// restore never writes into it.
pub fn plan_target(repo_root: Option<&Path>, target: &Path) -> Result<RestoreTarget> {
    let refuse = |why: String| {
        Error::InvalidInput(format!(
            "cannot use {} as restore target: {why}",
            target.display()
        ))
    };
    let absolute = if target.is_absolute() {
        target.to_path_buf()
    } else {
        std::env::current_dir()
            .at("resolving the current directory for", target)?
            .join(target)
    };
    // Walk up to what exists; below it nothing exists, so nothing there can
    // be a symlink and the rest of the path is resolved by its text alone.
    let mut existing = absolute.as_path();
    let mut missing = Vec::new();
    loop {
        match std::fs::symlink_metadata(existing) {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                missing.push(existing.file_name());
                existing = existing
                    .parent()
                    .ok_or_else(|| refuse("no part of it exists".into()))?;
            }
            Err(e) => return Err(refuse(e.to_string())),
        }
    }
    let existing = std::fs::canonicalize(existing).map_err(|e| refuse(e.to_string()))?;
    if !existing.is_dir() {
        return Err(refuse(format!("{} is not a directory", existing.display())));
    }
    let mut path = existing.clone();
    for component in missing.into_iter().rev() {
        match component {
            Some(name) => path.push(name),
            // `..` below a missing directory.
            None => {
                path.pop();
            }
        }
    }
    nix::unistd::access(&existing, nix::unistd::AccessFlags::W_OK)
        .map_err(|e| refuse(format!("{} is not writable: {e}", existing.display())))?;
    if let Some(repo_root) = repo_root {
        let repo_root = std::fs::canonicalize(repo_root).at("resolving", repo_root)?;
        if path.starts_with(&repo_root) {
            return Err(refuse(format!(
                "it is inside the repository {}",
                repo_root.display()
            )));
        }
    }
    Ok(RestoreTarget { path, existing })
}

impl RestoreTarget {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Refuses a restore that would not fit, before anything is written.
    pub fn check_space(&self, needed: u64) -> Result<()> {
        check_space(&self.existing, needed)
    }

    /// Creates the directory once the restore is known to go ahead.
    pub fn create(&self) -> Result<PathBuf> {
        std::fs::create_dir_all(&self.path).map_err(|e| {
            Error::InvalidInput(format!(
                "cannot use {} as restore target: {e}",
                self.path.display()
            ))
        })?;
        Ok(self.path.clone())
    }
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
