//! `strata mount` and `strata umount`.

use std::io::Write as _;
use std::path::Path;

use anyhow::Result;
use strata::cancel::CancelToken;
use strata::mount::MountOptions;

use super::Status;

/// Serves until unmounted or cancelled (Ctrl-C, SIGTERM).
pub fn run(
    path: &Path,
    mountpoint: &Path,
    options: &MountOptions,
    cancel: &CancelToken,
) -> Result<Status> {
    let repo = super::remote::open_reader(path)?;
    let shown = mountpoint.display().to_string();
    strata::mount::mount(repo, mountpoint, options, cancel, || {
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
