//! `strata mount` and `strata umount`.

use std::io::Write as _;
use std::path::Path;

use anyhow::Result;
use strata::cancel::CancelToken;
use strata::mount::MountOptions;

use super::{open, Status};

/// Serves until unmounted or cancelled (Ctrl-C, SIGTERM).
pub fn run(
    path: &Path,
    mountpoint: &Path,
    options: &MountOptions,
    cancel: &CancelToken,
) -> Result<Status> {
    let repo = open(path)?;
    let shown = mountpoint.display().to_string();
    strata::mount::mount(std::sync::Arc::new(repo), mountpoint, options, cancel, || {
        let _ = writeln!(
            std::io::stdout(),
            "mounted {} at {shown}; unmount with Ctrl-C or `strata umount {shown}`",
            path.display()
        );
    })?;
    Ok(Status::Ok)
}

pub fn umount(mountpoint: &Path) -> Result<Status> {
    strata::mount::unmount(mountpoint)?;
    Ok(Status::Ok)
}
