//! File-system operations relative to directory descriptors, so that a
//! restore never follows a symlink that already exists in the target and
//! never writes outside it. Names are validated before they get here.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{mkdirat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};

use crate::error::{Error, IoContext, Result};

pub fn os(name: &[u8]) -> &OsStr {
    OsStr::from_bytes(name)
}

pub fn open_dir(parent: Option<RawFd>, name: &OsStr, shown: &Path) -> Result<OwnedFd> {
    let fd = openat(
        parent,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .at("opening directory", shown)?;
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Removes whatever non-directory sits at `name`; a directory in the way is
/// an error rather than something to delete recursively.
pub fn clear_entry(parent: &OwnedFd, name: &OsStr, shown: &Path) -> Result<()> {
    match unlinkat(Some(parent.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::EISDIR) => Err(Error::InvalidInput(format!(
            "{} is a directory in the target, where the restore point has a file",
            shown.display()
        ))),
        Err(e) => Err(e).at("removing existing", shown),
    }
}

/// Opens directory `name` in `parent`, creating it if needed; an existing
/// symlink or file of that name is replaced, never followed.
pub fn make_dir(parent: &OwnedFd, name: &OsStr, shown: &Path) -> Result<OwnedFd> {
    match mkdirat(
        Some(parent.as_raw_fd()),
        name,
        Mode::from_bits_truncate(0o700),
    ) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(e).at("creating directory", shown),
    }
    match open_dir(Some(parent.as_raw_fd()), name, shown) {
        Ok(fd) => Ok(fd),
        Err(Error::Io { source, .. })
            if matches!(
                source.raw_os_error(),
                Some(libc::ENOTDIR) | Some(libc::ELOOP)
            ) =>
        {
            clear_entry(parent, name, shown)?;
            mkdirat(
                Some(parent.as_raw_fd()),
                name,
                Mode::from_bits_truncate(0o700),
            )
            .at("creating directory", shown)?;
            open_dir(Some(parent.as_raw_fd()), name, shown)
        }
        Err(e) => Err(e),
    }
}

pub fn create_file(parent: &OwnedFd, name: &OsStr, shown: &Path) -> Result<std::fs::File> {
    clear_entry(parent, name, shown)?;
    let fd = openat(
        Some(parent.as_raw_fd()),
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .at("creating", shown)?;
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

pub fn no_follow() -> AtFlags {
    AtFlags::AT_SYMLINK_NOFOLLOW
}
