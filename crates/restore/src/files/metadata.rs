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

/// What an entry gets back: from a tree node, or from a guest file
/// system's stat.
pub(crate) struct EntryMetadata<'a> {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub xattrs: &'a [(Vec<u8>, Vec<u8>)],
    pub atime: TimeSpec,
    pub mtime: TimeSpec,
}

pub(super) fn apply_metadata(
    fd: std::os::fd::BorrowedFd,
    node: &Node,
    shown: &Path,
    is_root: bool,
) -> Result<()> {
    let metadata = EntryMetadata {
        uid: node.uid,
        gid: node.gid,
        mode: node.mode,
        xattrs: &node.xattrs,
        atime: timespec(node.atime),
        mtime: timespec(node.mtime),
    };
    apply(fd, &metadata, shown, is_root)
}

/// Owner, mode, xattrs and times, in that order: chown clears setuid bits,
/// and every later change would move the times.
pub(crate) fn apply(
    fd: std::os::fd::BorrowedFd,
    metadata: &EntryMetadata,
    shown: &Path,
    is_root: bool,
) -> Result<()> {
    let raw = fd.as_raw_fd();
    if is_root {
        nix::unistd::fchown(
            raw,
            Some(Uid::from_raw(metadata.uid)),
            Some(Gid::from_raw(metadata.gid)),
        )
        .at("setting owner of", shown)?;
    }
    nix::sys::stat::fchmod(raw, Mode::from_bits_truncate(metadata.mode))
        .at("setting mode of", shown)?;
    if !metadata.xattrs.is_empty() {
        let file = std::fs::File::from(
            fd.try_clone_to_owned()
                .at("duplicating descriptor of", shown)?,
        );
        for (name, value) in metadata.xattrs {
            use xattr::FileExt;
            if let Err(e) = file.set_xattr(os(name), value) {
                // Some file systems or namespaces refuse some attributes
                // (e.g. security.* without privileges); not fatal.
                tracing::warn!(path = %shown.display(), xattr = %String::from_utf8_lossy(name), error = %e, "xattr not restored");
            }
        }
    }
    nix::sys::stat::futimens(raw, &metadata.atime, &metadata.mtime)
        .at("setting times of", shown)
}
