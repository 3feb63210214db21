//! File-system operations relative to directory descriptors, so that a
//! restore never follows a symlink that already exists in the target and
//! never writes outside it. Names are validated before they get here.
//!
//! Every entry other than a directory is built under a temporary name
//! beside its final one and renamed over it only once it is complete: an
//! existing file is never lost to a restore that fails half way, and a
//! name never shows a half-written file. Metadata is always set through a
//! descriptor of the entry itself, never through a path that the owner of
//! the directory could swap for a symlink between two calls.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstat, mkdirat, Mode, SFlag};
use nix::unistd::{unlinkat, Gid, Uid, UnlinkatFlags};

use crate::error::{Error, IoContext, Result};

/// Temporary names start with this, so that what a killed restore leaves
/// behind says what it is.
pub const PARTIAL_PREFIX: &str = ".strata-partial-";

pub fn os(name: &[u8]) -> &OsStr {
    OsStr::from_bytes(name)
}

/// A fresh temporary name, unique within this process and short enough for
/// any directory (it does not embed the final name, which may already use
/// the whole 255 bytes).
pub fn partial_name() -> OsString {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    OsString::from(format!(
        "{PARTIAL_PREFIX}{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: callers pass a descriptor that openat just returned and that
    // nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

pub fn open_dir(parent: Option<RawFd>, name: &OsStr, shown: &Path) -> Result<OwnedFd> {
    let fd = openat(
        parent,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .at("opening directory", shown)?;
    Ok(owned(fd))
}

/// Removes whatever non-directory sits at `name`; a directory in the way is
/// an error rather than something to delete recursively.
pub fn clear_entry(parent: &OwnedFd, name: &OsStr, shown: &Path) -> Result<()> {
    match unlinkat(Some(parent.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::EISDIR) => Err(directory_in_the_way(shown)),
        Err(e) => Err(e).at("removing existing", shown),
    }
}

fn directory_in_the_way(shown: &Path) -> Error {
    Error::InvalidInput(format!(
        "{} is a directory in the target, where the restore point has a file",
        shown.display()
    ))
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

/// Creates a new, empty file under the temporary name `partial`.
pub fn create_partial_file(
    parent: &OwnedFd,
    partial: &OsStr,
    shown: &Path,
) -> Result<std::fs::File> {
    let fd = openat(
        Some(parent.as_raw_fd()),
        partial,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .at("creating", shown)?;
    Ok(std::fs::File::from(owned(fd)))
}

/// Puts the finished entry `partial` in place of `name`, atomically
/// replacing whatever non-directory was there.
pub fn commit_partial(parent: &OwnedFd, partial: &OsStr, name: &OsStr, shown: &Path) -> Result<()> {
    let fd = Some(parent.as_raw_fd());
    match nix::fcntl::renameat(fd, partial, fd, name) {
        Ok(()) => Ok(()),
        Err(Errno::EISDIR | Errno::ENOTEMPTY | Errno::EEXIST) => Err(directory_in_the_way(shown)),
        Err(e) => Err(e).at("putting in place", shown),
    }
}

/// Removes a temporary entry after a failure; the failure itself is what
/// gets reported.
pub fn discard_partial(parent: &OwnedFd, partial: &OsStr) {
    let _ = unlinkat(
        Some(parent.as_raw_fd()),
        partial,
        UnlinkatFlags::NoRemoveDir,
    );
}

/// The kinds of entry made by `mknod`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecialKind {
    Fifo,
    CharDevice,
    BlockDevice,
}

impl SpecialKind {
    fn flag(self) -> SFlag {
        match self {
            SpecialKind::Fifo => SFlag::S_IFIFO,
            SpecialKind::CharDevice => SFlag::S_IFCHR,
            SpecialKind::BlockDevice => SFlag::S_IFBLK,
        }
    }
}

/// Makes a FIFO or device node under the temporary name `partial` and
/// returns an `O_PATH` descriptor of it. Such entries cannot be opened for
/// I/O without side effects (a FIFO blocks, a tape rewinds), so their
/// metadata is set through this descriptor; see [`open_created`].
pub fn make_special(
    parent: &OwnedFd,
    partial: &OsStr,
    kind: SpecialKind,
    rdev: u64,
    shown: &Path,
) -> Result<OwnedFd> {
    nix::sys::stat::mknodat(
        Some(parent.as_raw_fd()),
        partial,
        kind.flag(),
        Mode::from_bits_truncate(0o600),
        rdev,
    )
    .at("creating", shown)?;
    open_created(parent, partial, kind.flag(), shown)
}

/// Makes a symlink under the temporary name `partial` and returns an
/// `O_PATH` descriptor of the link itself.
pub fn make_symlink(
    parent: &OwnedFd,
    partial: &OsStr,
    target: &OsStr,
    shown: &Path,
) -> Result<OwnedFd> {
    nix::unistd::symlinkat(target, Some(parent.as_raw_fd()), partial)
        .at("creating symlink", shown)?;
    open_created(parent, partial, SFlag::S_IFLNK, shown)
}

/// Opens the entry just made at `name` without following it, and checks
/// that it is what was made: of file type `kind`, owned by this process,
/// with one link. If the directory's owner swapped in a symlink or a hard
/// link to another file between the two calls, nothing is changed through
/// it.
pub fn open_created(parent: &OwnedFd, name: &OsStr, kind: SFlag, shown: &Path) -> Result<OwnedFd> {
    let fd = owned(
        openat(
            Some(parent.as_raw_fd()),
            name,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .at("opening", shown)?,
    );
    let stat = fstat(fd.as_raw_fd()).at("inspecting", shown)?;
    let is_kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == kind;
    if !is_kind || stat.st_uid != nix::unistd::geteuid().as_raw() || stat.st_nlink != 1 {
        return Err(Error::InvalidInput(format!(
            "{} was replaced while being restored; leaving it alone",
            shown.display()
        )));
    }
    Ok(fd)
}

/// Owner (when given) and times of a symlink, through an `O_PATH`
/// descriptor of the link itself (never through its name, never followed).
pub fn set_symlink_metadata(
    fd: &OwnedFd,
    owner: Option<(u32, u32)>,
    times: (&nix::sys::time::TimeSpec, &nix::sys::time::TimeSpec),
    shown: &Path,
) -> Result<()> {
    chown_entry(fd, owner, shown)?;
    set_entry_times(fd, times, shown)
}

/// Changes the owner of the entry an `O_PATH` descriptor holds.
fn chown_entry(fd: &OwnedFd, owner: Option<(u32, u32)>, shown: &Path) -> Result<()> {
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    nix::unistd::fchownat(
        Some(fd.as_raw_fd()),
        "",
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        AtFlags::AT_EMPTY_PATH | AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .at("setting owner of", shown)
}

/// Sets the times of the entry an `O_PATH` descriptor holds (a symlink's
/// own, not its target's).
fn set_entry_times(
    fd: &OwnedFd,
    times: (&nix::sys::time::TimeSpec, &nix::sys::time::TimeSpec),
    shown: &Path,
) -> Result<()> {
    let times = [*times.0.as_ref(), *times.1.as_ref()];
    // SAFETY: a valid descriptor, a NUL-terminated empty path and two
    // timespecs; utimensat reads nothing else.
    let rc = unsafe {
        libc::utimensat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            times.as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).at("setting times of", shown);
    }
    Ok(())
}

/// Hard-links `name` in `parent` to the file open as `first` (through its
/// `/proc/self/fd` name, so the link reaches exactly that inode even if
/// the first name was swapped since), via a temporary name so that an
/// existing file is replaced atomically.
pub fn link_in_place(first: &OwnedFd, parent: &OwnedFd, name: &OsStr, shown: &Path) -> Result<()> {
    let partial = partial_name();
    nix::unistd::linkat(
        None,
        proc_path(first.as_fd()).as_os_str(),
        Some(parent.as_raw_fd()),
        partial.as_os_str(),
        AtFlags::AT_SYMLINK_FOLLOW,
    )
    .at("hard-linking", shown)?;
    commit_partial(parent, &partial, name, shown).inspect_err(|_| discard_partial(parent, &partial))
}

/// Whether something exists at `name` (not followed).
pub fn exists_at(parent: &OwnedFd, name: &OsStr) -> bool {
    nix::sys::stat::fstatat(Some(parent.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok()
}

/// The `/proc/self/fd` name of an `O_PATH` descriptor: calls through it
/// reach exactly the inode the descriptor holds (the kernel resolves the
/// magic link to it, not to a path), which is how `chmod` and `linkat`
/// act on such a descriptor.
fn proc_path(fd: BorrowedFd) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Owner (when `chown`), mode and times of a node opened by
/// [`open_created`], in that order: chown clears setuid bits, and every
/// change moves the times.
pub fn set_special_metadata(
    fd: &OwnedFd,
    owner: Option<(u32, u32)>,
    mode: u32,
    times: (&nix::sys::time::TimeSpec, &nix::sys::time::TimeSpec),
    shown: &Path,
) -> Result<()> {
    chown_entry(fd, owner, shown)?;
    nix::sys::stat::fchmodat(
        None,
        &proc_path(fd.as_fd()),
        Mode::from_bits_truncate(mode),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .at("setting mode of", shown)?;
    set_entry_times(fd, times, shown)
}

pub fn no_follow() -> AtFlags {
    AtFlags::AT_SYMLINK_NOFOLLOW
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The race of issue 9: the owner of a directory being restored swaps
    /// the FIFO just made for a symlink to a file of someone else's before
    /// its mode is set. The mode must not reach the symlink's target.
    #[test]
    fn a_node_swapped_for_a_symlink_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"secret").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let parent = open_dir(None, dir.path().as_os_str(), dir.path()).unwrap();
        let partial = partial_name();
        let shown = Path::new("fifo");
        nix::sys::stat::mknodat(
            Some(parent.as_raw_fd()),
            partial.as_os_str(),
            SFlag::S_IFIFO,
            Mode::from_bits_truncate(0o600),
            0,
        )
        .unwrap();
        // The swap, between creating the node and setting its metadata.
        std::fs::remove_file(dir.path().join(&partial)).unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join(&partial)).unwrap();

        let opened = open_created(&parent, &partial, SFlag::S_IFIFO, shown);
        assert!(opened.is_err(), "a swapped-in symlink was accepted");
        let mode = std::fs::metadata(&victim).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
    }

    /// The same race for a symlink, with a hard link to someone else's
    /// file swapped in: its owner must not change.
    #[test]
    fn a_symlink_swapped_for_a_hard_link_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"secret").unwrap();
        let parent = open_dir(None, dir.path().as_os_str(), dir.path()).unwrap();
        let partial = partial_name();
        let shown = Path::new("link");
        nix::unistd::symlinkat("target", Some(parent.as_raw_fd()), partial.as_os_str()).unwrap();
        std::fs::remove_file(dir.path().join(&partial)).unwrap();
        std::fs::hard_link(&victim, dir.path().join(&partial)).unwrap();
        assert!(open_created(&parent, &partial, SFlag::S_IFLNK, shown).is_err());

        // Unswapped, the link itself gets its times; its target is untouched.
        let partial = partial_name();
        let fd = make_symlink(&parent, &partial, OsStr::new("victim"), shown).unwrap();
        let t = nix::sys::time::TimeSpec::new(1_000_000_000, 7);
        set_symlink_metadata(&fd, None, (&t, &t), shown).unwrap();
        let link = std::fs::symlink_metadata(dir.path().join(&partial)).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::mtime(&link), 1_000_000_000);
        let target = std::fs::metadata(&victim).unwrap();
        assert_ne!(
            std::os::unix::fs::MetadataExt::mtime(&target),
            1_000_000_000
        );
    }

    #[test]
    fn special_metadata_is_set_through_the_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let parent = open_dir(None, dir.path().as_os_str(), dir.path()).unwrap();
        let partial = partial_name();
        let shown = Path::new("fifo");
        let fd = make_special(&parent, &partial, SpecialKind::Fifo, 0, shown).unwrap();
        let t = nix::sys::time::TimeSpec::new(1_000_000_000, 5);
        set_special_metadata(&fd, None, 0o640, (&t, &t), shown).unwrap();
        commit_partial(&parent, &partial, OsStr::new("fifo"), shown).unwrap();
        let meta = std::fs::symlink_metadata(dir.path().join("fifo")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        assert!(std::os::unix::fs::FileTypeExt::is_fifo(&meta.file_type()));
        assert_eq!(std::os::unix::fs::MetadataExt::mtime(&meta), 1_000_000_000);
    }
}
