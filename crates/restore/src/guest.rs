//! Restores files from inside a VM disk of a restore point (`strata
//! restore files VM_RP <disk>/<volume>/<path>… --to DIR`): each selected
//! guest path is recreated under the target by its path inside the
//! volume (`web01/p2/etc/nginx` → `DIR/etc/nginx`), with the guest file
//! system's metadata: mode, owner (as root), times, extended attributes
//! and ACLs, symlinks, device nodes and FIFOs (as root), hard links as
//! hard links.
//!
//! As a file-tree restore does, it first walks what was selected to check
//! every name and to size the data against the target's free space (a
//! refused restore writes nothing), and a directory that contains itself
//! (a loop in a damaged file system) is refused by name. Files are
//! written under a temporary name and renamed into place only when every
//! byte was read (a damaged chunk is an error, never wrong bytes); entries
//! are created through directory descriptors, never followed symlinks.
//! Holes (runs of zeros) are left unwritten, so sparse files stay sparse.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::sys::time::TimeSpec;
use strata_guest::fs::{FileKind, GuestFs, NodeId, Stat, Time};
use strata_guest::vm::GuestView;

use crate::cancel::CancelToken;
use crate::error::{Error, IoContext, Result};
use crate::files::metadata::{apply, EntryMetadata};
use crate::files::RestoreSummary;
use crate::fsops;
use crate::progress::Progress;

pub struct GuestRestore {
    /// `<disk>/<volume>/<path inside>` each.
    pub paths: Vec<String>,
    pub target: PathBuf,
}

/// Bytes copied per read from the guest.
const PIECE: usize = 1 << 20;

fn guest_error(path: &str, e: strata_guest::Error) -> Error {
    Error::InvalidInput(format!("guest path {path}: {e}"))
}

fn timespec(t: Time) -> TimeSpec {
    TimeSpec::new(t.sec, i64::from(t.nsec))
}

pub fn restore_guest_files(
    view: &GuestView,
    request: &GuestRestore,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<RestoreSummary> {
    let started = Instant::now();
    let _span = tracing::info_span!("restore_guest_files", target = %request.target.display()).entered();
    if request.paths.is_empty() {
        return Err(Error::InvalidInput(
            "name the guest paths to restore: <disk>/<volume>/<path inside>, e.g. web01/p2/etc/nginx".into(),
        ));
    }
    let target = super::plan_target(None, &request.target)?;
    let mut selected = Vec::new();
    let mut needed = 0u64;
    for path in &request.paths {
        let (fs, node, inside) = view.resolve(path).map_err(|e| guest_error(path, e))?;
        needed = needed.saturating_add(measure(fs.as_ref(), node, path, &mut Measured::default(), cancel)?);
        selected.push((fs, node, inside, path.clone()));
    }
    target.check_space(needed)?;
    let target = target.create()?;
    progress.add_total(needed);
    let mut restorer = Restorer {
        summary: RestoreSummary::default(),
        is_root: nix::unistd::geteuid().is_root(),
        progress,
        cancel,
        links: HashMap::new(),
    };
    let root = fsops::open_dir(None, target.as_os_str(), &target)?;
    for (fs, node, inside, shown_path) in &selected {
        restorer.links.clear();
        restorer.restore_path(fs.as_ref(), *node, inside, &root, &target).map_err(|e| match e {
            Error::InvalidInput(why) => Error::InvalidInput(format!("{shown_path}: {why}")),
            other => other,
        })?;
    }
    let mut summary = restorer.summary;
    summary.duration_ms = started.elapsed().as_millis() as u64;
    progress.finish();
    Ok(summary)
}

/// What measuring a guest tree keeps: the directories above the one
/// measured (a loop is refused), and the hard-linked files counted (a
/// second name is a link, not a second copy).
#[derive(Default)]
struct Measured {
    dirs: HashSet<NodeId>,
    linked: HashSet<NodeId>,
}

/// Bytes of regular files under `node`, checking every name and refusing
/// a directory that contains itself. What cannot be read counts nothing:
/// the restore records it as failed and goes on with the rest.
fn measure(fs: &dyn GuestFs, node: NodeId, shown: &str, seen: &mut Measured, cancel: &CancelToken) -> Result<u64> {
    cancel.check()?;
    let Ok(stat) = fs.stat(node) else { return Ok(0) };
    match stat.kind {
        FileKind::File if stat.nlink > 1 && !seen.linked.insert(node) => Ok(0),
        FileKind::File => Ok(stat.size),
        FileKind::Dir => {
            if !seen.dirs.insert(node) {
                return Err(Error::InvalidInput(format!(
                    "guest path {shown}: the directory contains itself (the file system is damaged: a directory loop)"
                )));
            }
            let mut total = 0u64;
            let entries = fs.read_dir(node).unwrap_or_default();
            for entry in entries {
                let name = String::from_utf8_lossy(&entry.name);
                // Every name is checked before anything is written: a
                // guest's "..", "." or "a/b" must never reach the target's
                // directory calls.
                crate::tree::validate_name(&entry.name, "a guest file system")
                    .map_err(|e| Error::InvalidInput(format!("guest path {shown}: {e}")))?;
                total = total.saturating_add(measure(fs, entry.node, &format!("{shown}/{name}"), seen, cancel)?);
            }
            seen.dirs.remove(&node);
            Ok(total)
        }
        _ => Ok(0),
    }
}

struct Restorer<'a> {
    summary: RestoreSummary,
    is_root: bool,
    progress: &'a dyn Progress,
    cancel: &'a CancelToken,
    /// The first restored name of each node with several links, and how
    /// many of its names are still to come: the descriptor is closed once
    /// all have been linked, so a guest of many hard-linked files does not
    /// run the restore out of descriptors.
    links: HashMap<NodeId, (OwnedFd, PathBuf, u32)>,
}

impl Restorer<'_> {
    /// Creates the directories of `inside` down to its parent (with the
    /// guest's metadata, set once their content is done), then the entry.
    fn restore_path(&mut self, fs: &dyn GuestFs, node: NodeId, inside: &str, root: &OwnedFd, target: &Path) -> Result<()> {
        let parts: Vec<&str> = inside.split('/').filter(|p| !p.is_empty()).collect();
        let mut dir = root.try_clone().at("duplicating descriptor of", target)?;
        let mut shown = target.to_path_buf();
        let mut parents = Vec::new();
        let mut at = fs.root();
        for part in &parts {
            crate::tree::validate_name(part.as_bytes(), "a guest path")
                .map_err(|e| Error::InvalidInput(format!("guest path {inside}: {e}")))?;
        }
        for part in parts.iter().take(parts.len().saturating_sub(1)) {
            shown.push(part);
            at = strata_guest::fs::lookup_child(fs, at, part.as_bytes()).map_err(|e| guest_error(inside, e))?;
            dir = fsops::make_dir(&dir, fsops::os(part.as_bytes()), &shown)?;
            parents.push((dir.try_clone().at("duplicating descriptor of", &shown)?, at, shown.clone()));
        }
        match parts.last() {
            None => self.restore_children(fs, node, &dir, target)?,
            Some(name) => {
                shown.push(name);
                self.restore_entry(fs, node, &dir, name.as_bytes(), &shown)?;
            }
        }
        // The parents' times last: creating entries in them moved them.
        for (fd, node, shown) in parents.iter().rev() {
            let stat = fs.stat(*node).map_err(|e| guest_error(inside, e))?;
            self.set_metadata(fs, fd, &stat, shown);
        }
        if parts.is_empty() {
            let stat = fs.stat(node).map_err(|e| guest_error(inside, e))?;
            self.set_metadata(fs, root, &stat, target);
        }
        Ok(())
    }

    /// A directory's entries; one that cannot be listed (damaged) is
    /// recorded as failed and the rest of the restore goes on.
    fn restore_children(&mut self, fs: &dyn GuestFs, dir_node: NodeId, dir: &OwnedFd, shown: &Path) -> Result<()> {
        let entries = match fs.read_dir(dir_node) {
            Ok(entries) => entries,
            Err(e) => {
                self.fail(shown, &e.to_string());
                return Ok(());
            }
        };
        for entry in entries {
            self.cancel.check()?;
            let child = shown.join(fsops::os(&entry.name));
            // Checked by the plan already; checked again where it matters.
            if let Err(e) = crate::tree::validate_name(&entry.name, "a guest file system") {
                self.fail(&child, &e.to_string());
                continue;
            }
            self.restore_entry(fs, entry.node, dir, &entry.name, &child)?;
        }
        Ok(())
    }

    /// One entry; a failure of a file is recorded and the rest goes on.
    fn restore_entry(&mut self, fs: &dyn GuestFs, node: NodeId, parent: &OwnedFd, name: &[u8], shown: &Path) -> Result<()> {
        let stat = match fs.stat(node) {
            Ok(stat) => stat,
            Err(e) => {
                self.fail(shown, &e.to_string());
                return Ok(());
            }
        };
        let os_name = fsops::os(name);
        match stat.kind {
            FileKind::Dir => {
                let dir = fsops::make_dir(parent, os_name, shown)?;
                self.restore_children(fs, node, &dir, shown)?;
                self.set_metadata(fs, &dir, &stat, shown);
                self.summary.directories += 1;
            }
            FileKind::File => {
                if stat.nlink > 1 {
                    if let Some((first, first_shown, to_come)) = self.links.get_mut(&node) {
                        fsops::link_in_place(first, parent, os_name, shown)
                            .map_err(|e| Error::InvalidInput(format!("linking {} to {}: {e}", shown.display(), first_shown.display())))?;
                        *to_come -= 1;
                        if *to_come == 0 {
                            self.links.remove(&node);
                        }
                        self.summary.files += 1;
                        return Ok(());
                    }
                }
                match self.restore_file(fs, node, &stat, parent, os_name, shown) {
                    Ok(fd) => {
                        self.summary.files += 1;
                        if stat.nlink > 1 {
                            self.links.insert(node, (fd, shown.to_path_buf(), stat.nlink - 1));
                        }
                    }
                    Err(e @ Error::Interrupted(_)) => return Err(e),
                    Err(e) => self.fail(shown, &e.to_string()),
                }
            }
            FileKind::Symlink => {
                let result = fs
                    .read_link(node)
                    .map_err(|e| Error::InvalidInput(e.to_string()))
                    .and_then(|target| self.restore_symlink(&target, &stat, parent, os_name, shown));
                match result {
                    Ok(()) => self.summary.other += 1,
                    Err(e) => self.fail(shown, &e.to_string()),
                }
            }
            FileKind::Fifo | FileKind::CharDevice | FileKind::BlockDevice => {
                let kind = match stat.kind {
                    FileKind::Fifo => fsops::SpecialKind::Fifo,
                    FileKind::CharDevice => fsops::SpecialKind::CharDevice,
                    _ => fsops::SpecialKind::BlockDevice,
                };
                if kind != fsops::SpecialKind::Fifo && !self.is_root {
                    self.summary.warnings.push(format!("{}: a device node needs root; not restored", shown.display()));
                    return Ok(());
                }
                let partial = fsops::partial_name();
                let made = fsops::make_special(parent, &partial, kind, stat.rdev, shown).and_then(|fd| {
                    fsops::set_special_metadata(&fd, self.owner(&stat), u32::from(stat.mode as u16), (&timespec(stat.atime), &timespec(stat.mtime)), shown)?;
                    fsops::commit_partial(parent, &partial, os_name, shown)
                });
                match made {
                    Ok(()) => self.summary.other += 1,
                    Err(e) => {
                        fsops::discard_partial(parent, &partial);
                        self.fail(shown, &e.to_string());
                    }
                }
            }
            FileKind::Socket => {
                self.summary.warnings.push(format!("{}: a socket is not restored (it means nothing without its process)", shown.display()));
            }
        }
        Ok(())
    }

    fn owner(&self, stat: &Stat) -> Option<(u32, u32)> {
        self.is_root.then_some((stat.uid, stat.gid))
    }

    /// Copies a file under a temporary name, then renames it into place;
    /// returns a descriptor of it for its hard links.
    fn restore_file(
        &mut self,
        fs: &dyn GuestFs,
        node: NodeId,
        stat: &Stat,
        parent: &OwnedFd,
        name: &std::ffi::OsStr,
        shown: &Path,
    ) -> Result<OwnedFd> {
        let partial = fsops::partial_name();
        let mut file = fsops::create_partial_file(parent, &partial, shown)?;
        let copied = (|| -> Result<()> {
            let mut buf = vec![0u8; PIECE];
            let mut offset = 0u64;
            while offset < stat.size {
                self.cancel.check()?;
                let want = (stat.size - offset).min(PIECE as u64) as usize;
                let n = fs.read_at(node, offset, &mut buf[..want]).map_err(|e| Error::InvalidInput(e.to_string()))?;
                if n == 0 {
                    return Err(Error::InvalidInput(format!("the guest file ended at {offset} of its {} bytes", stat.size)));
                }
                let piece = &buf[..n];
                if piece.iter().all(|&b| b == 0) {
                    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(offset + n as u64)).at("writing", shown)?;
                } else {
                    file.write_all(piece).at("writing", shown)?;
                    self.summary.bytes_written += n as u64;
                }
                self.progress.advance(n as u64);
                offset += n as u64;
            }
            file.set_len(stat.size).at("writing", shown)?;
            let xattrs = fs.xattrs(node).map_err(|e| Error::InvalidInput(e.to_string()))?;
            apply(file.as_fd(), &self.entry_metadata(stat, &xattrs), shown, self.is_root)?;
            fsops::commit_partial(parent, &partial, name, shown)
        })();
        if let Err(e) = copied {
            fsops::discard_partial(parent, &partial);
            return Err(e);
        }
        Ok(OwnedFd::from(file))
    }

    fn restore_symlink(&mut self, target: &[u8], stat: &Stat, parent: &OwnedFd, name: &std::ffi::OsStr, shown: &Path) -> Result<()> {
        let partial = fsops::partial_name();
        let made = fsops::make_symlink(parent, &partial, fsops::os(target), shown).and_then(|fd| {
            fsops::set_symlink_metadata(&fd, self.owner(stat), (&timespec(stat.atime), &timespec(stat.mtime)), shown)?;
            fsops::commit_partial(parent, &partial, name, shown)
        });
        if made.is_err() {
            fsops::discard_partial(parent, &partial);
        }
        made
    }

    fn entry_metadata<'x>(&self, stat: &Stat, xattrs: &'x [(Vec<u8>, Vec<u8>)]) -> EntryMetadata<'x> {
        EntryMetadata {
            uid: stat.uid,
            gid: stat.gid,
            mode: stat.mode,
            xattrs,
            atime: timespec(stat.atime),
            mtime: timespec(stat.mtime),
        }
    }

    /// A directory's metadata, once its content is in place.
    fn set_metadata(&mut self, fs: &dyn GuestFs, fd: &OwnedFd, stat: &Stat, shown: &Path) {
        let xattrs = match fs.xattrs(stat.node) {
            Ok(x) => x,
            Err(e) => {
                self.summary.warnings.push(format!("{}: extended attributes not read: {e}", shown.display()));
                Vec::new()
            }
        };
        if let Err(e) = apply(fd.as_fd(), &self.entry_metadata(stat, &xattrs), shown, self.is_root) {
            self.fail(shown, &e.to_string());
        }
    }

    fn fail(&mut self, shown: &Path, why: &str) {
        tracing::error!(path = %shown.display(), error = why, "restore failed");
        self.summary.failed.push((shown.display().to_string(), why.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_guest::fs::DirEntry;
    use strata_guest::probe::Content;

    /// A guest directory that names its parent as an entry, as a damaged
    /// or hostile file system may.
    struct Hostile;

    impl GuestFs for Hostile {
        fn describe(&self) -> (Content, Option<String>) {
            (Content::Ext, None)
        }
        fn root(&self) -> NodeId {
            1
        }
        fn stat(&self, node: NodeId) -> strata_guest::Result<Stat> {
            Ok(Stat {
                node,
                kind: if node == 1 { FileKind::Dir } else { FileKind::File },
                size: 3,
                mode: 0o644,
                uid: 0,
                gid: 0,
                nlink: 1,
                atime: Time::default(),
                mtime: Time::default(),
                ctime: Time::default(),
                rdev: 0,
            })
        }
        fn read_dir(&self, _: NodeId) -> strata_guest::Result<Vec<DirEntry>> {
            Ok(vec![
                DirEntry { name: b"ok".to_vec(), node: 2 },
                DirEntry { name: b"..".to_vec(), node: 3 },
            ])
        }
        fn read_link(&self, _: NodeId) -> strata_guest::Result<Vec<u8>> {
            Ok(Vec::new())
        }
        fn xattrs(&self, _: NodeId) -> strata_guest::Result<Vec<(Vec<u8>, Vec<u8>)>> {
            Ok(Vec::new())
        }
        fn read_at(&self, _: NodeId, _: u64, _: &mut [u8]) -> strata_guest::Result<usize> {
            Ok(0)
        }
    }

    /// A root with a readable file and a directory that cannot be listed.
    struct HalfDamaged;

    impl GuestFs for HalfDamaged {
        fn describe(&self) -> (Content, Option<String>) {
            (Content::Ext, None)
        }
        fn root(&self) -> NodeId {
            1
        }
        fn stat(&self, node: NodeId) -> strata_guest::Result<Stat> {
            let dir = node != 2;
            Hostile.stat(node).map(|s| Stat { kind: if dir { FileKind::Dir } else { FileKind::File }, mode: if dir { 0o755 } else { 0o644 }, ..s })
        }
        fn read_dir(&self, node: NodeId) -> strata_guest::Result<Vec<DirEntry>> {
            match node {
                1 => Ok(vec![DirEntry { name: b"good".to_vec(), node: 2 }, DirEntry { name: b"bad".to_vec(), node: 3 }]),
                _ => Err(strata_guest::Error::damaged("directory 3", "its block fails its checksum")),
            }
        }
        fn read_link(&self, _: NodeId) -> strata_guest::Result<Vec<u8>> {
            Ok(Vec::new())
        }
        fn xattrs(&self, _: NodeId) -> strata_guest::Result<Vec<(Vec<u8>, Vec<u8>)>> {
            Ok(Vec::new())
        }
        fn read_at(&self, _: NodeId, offset: u64, buf: &mut [u8]) -> strata_guest::Result<usize> {
            let data = b"ok\n".get(offset as usize..).unwrap_or_default();
            let n = data.len().min(buf.len());
            buf[..n].copy_from_slice(&data[..n]);
            Ok(n)
        }
    }

    #[test]
    fn an_unreadable_guest_directory_is_recorded_and_the_rest_restored() {
        assert_eq!(measure(&HalfDamaged, 1, "vm/p1/", &mut Measured::default(), &CancelToken::new()).unwrap(), 3);
        let target = std::env::temp_dir().join(format!("strata-guest-half-{}", std::process::id()));
        std::fs::create_dir_all(&target).unwrap();
        let root = fsops::open_dir(None, target.as_os_str(), &target).unwrap();
        let (progress, cancel) = (crate::progress::NoProgress, CancelToken::new());
        let mut restorer = Restorer {
            summary: RestoreSummary::default(),
            is_root: false,
            progress: &progress,
            cancel: &cancel,
            links: HashMap::new(),
        };
        restorer.restore_path(&HalfDamaged, 1, "/", &root, &target).unwrap();
        let good = std::fs::read(target.join("good"));
        let failed = restorer.summary.failed.clone();
        let _ = std::fs::remove_dir_all(&target);
        assert_eq!(good.unwrap(), b"ok\n");
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(failed[0].0.ends_with("bad") && failed[0].1.contains("checksum"), "{failed:?}");
    }

    /// A root with two names of one file of two links.
    struct Linked;

    impl GuestFs for Linked {
        fn describe(&self) -> (Content, Option<String>) {
            (Content::Ext, None)
        }
        fn root(&self) -> NodeId {
            1
        }
        fn stat(&self, node: NodeId) -> strata_guest::Result<Stat> {
            HalfDamaged.stat(node).map(|s| Stat { nlink: if node == 2 { 2 } else { 1 }, ..s })
        }
        fn read_dir(&self, _: NodeId) -> strata_guest::Result<Vec<DirEntry>> {
            Ok(vec![DirEntry { name: b"a".to_vec(), node: 2 }, DirEntry { name: b"b".to_vec(), node: 2 }])
        }
        fn read_link(&self, _: NodeId) -> strata_guest::Result<Vec<u8>> {
            Ok(Vec::new())
        }
        fn xattrs(&self, _: NodeId) -> strata_guest::Result<Vec<(Vec<u8>, Vec<u8>)>> {
            Ok(Vec::new())
        }
        fn read_at(&self, node: NodeId, offset: u64, buf: &mut [u8]) -> strata_guest::Result<usize> {
            HalfDamaged.read_at(node, offset, buf)
        }
    }

    #[test]
    fn a_hard_linked_file_needs_its_space_once() {
        assert_eq!(measure(&Linked, 1, "vm/p1/", &mut Measured::default(), &CancelToken::new()).unwrap(), 3);
    }

    #[test]
    fn a_guest_entry_named_dotdot_refuses_the_restore_before_anything_is_written() {
        let err = measure(&Hostile, 1, "vm/p1/", &mut Measured::default(), &CancelToken::new()).unwrap_err();
        assert!(err.to_string().contains(".."), "{err}");
    }
}
