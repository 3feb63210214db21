//! Putting an entry's metadata back through its own descriptor.

use std::os::fd::AsRawFd;
use std::path::Path;

use nix::sys::stat::Mode;
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use crate::error::{IoContext, Result};
use crate::fsops::os;
use crate::tree::{Node, Timestamp};

pub(super) fn timespec(t: Timestamp) -> TimeSpec {
    TimeSpec::new(t.sec, t.nsec as i64)
}

/// Owner, mode, xattrs and times, in that order: chown clears setuid bits,
/// and every later change would move the times.
pub(super) fn apply_metadata(
    fd: std::os::fd::BorrowedFd,
    node: &Node,
    shown: &Path,
    is_root: bool,
) -> Result<()> {
    let raw = fd.as_raw_fd();
    if is_root {
        nix::unistd::fchown(
            raw,
            Some(Uid::from_raw(node.uid)),
            Some(Gid::from_raw(node.gid)),
        )
        .at("setting owner of", shown)?;
    }
    nix::sys::stat::fchmod(raw, Mode::from_bits_truncate(node.mode))
        .at("setting mode of", shown)?;
    if !node.xattrs.is_empty() {
        let file = std::fs::File::from(
            fd.try_clone_to_owned()
                .at("duplicating descriptor of", shown)?,
        );
        for (name, value) in &node.xattrs {
            use xattr::FileExt;
            if let Err(e) = file.set_xattr(os(name), value) {
                // Some file systems or namespaces refuse some attributes
                // (e.g. security.* without privileges); not fatal.
                tracing::warn!(path = %shown.display(), xattr = %String::from_utf8_lossy(name), error = %e, "xattr not restored");
            }
        }
    }
    nix::sys::stat::futimens(raw, &timespec(node.atime), &timespec(node.mtime))
        .at("setting times of", shown)
}
