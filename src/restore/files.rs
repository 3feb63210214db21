//! Restores a file-tree restore point, or selected paths of it, into a
//! target directory.
//!
//! A first pass walks the selected trees to validate every name (nothing is
//! written if the restore point holds an unsafe one) and to size the data,
//! which is checked against the target's free space. The second pass
//! creates entries in tree order through directory descriptors: files are
//! created by the walker and filled by worker threads (chunk reads,
//! decompression and writes run in parallel), holes are left unwritten, and
//! every entry gets its metadata back. A directory's own metadata is set
//! once its entries exist, so its mtime is the backed-up one.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crossbeam_channel::bounded;
use nix::sys::stat::{fchmodat, FchmodatFlags, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use super::fsops::{self, os};
use crate::error::{Error, IoContext, Result};
use crate::id::ChunkId;
use crate::progress::Progress;
use crate::repository::Repository;
use crate::restore_point::RestorePoint;
use crate::tree::{validate_name, Extent, Node, NodeKind, Timestamp};

pub struct FilesRestore {
    /// Paths inside the restore point ("/etc/nginx"); empty means all.
    pub paths: Vec<String>,
    pub target: PathBuf,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct RestoreSummary {
    pub files: u64,
    pub directories: u64,
    pub other: u64,
    pub bytes_written: u64,
    pub duration_ms: u64,
    /// Entries that could not be restored, with the reason.
    pub failed: Vec<(String, String)>,
    /// Things restored incompletely (ownership without root, sockets).
    pub warnings: Vec<String>,
}

/// One selected subtree: where it sits and its node (`None`: the root).
struct Selected {
    ancestors: Vec<Node>,
    node: Option<Node>,
}

pub fn restore_files<M: Sync>(
    repo: &Repository<M>,
    rp: &RestorePoint,
    request: &FilesRestore,
    progress: &Progress,
) -> Result<RestoreSummary> {
    let started = Instant::now();
    let span = tracing::info_span!("restore_files", restore_point = %rp.id.short(), target = %request.target.display());
    let _entered = span.enter();
    let target = super::prepare_target(repo.root(), &request.target)?;
    let selected = select(repo, rp, &request.paths)?;

    let mut needed = 0u64;
    for sel in &selected {
        needed += match &sel.node {
            None => measure_tree(repo, rp, &rp.manifest.root)?,
            Some(node) => measure_node(repo, rp, node)?,
        };
    }
    super::check_space(&target, needed)?;
    progress.inc_length(needed);

    let root_fd = fsops::open_dir(None, target.as_os_str(), &target)?;
    let summary = Mutex::new(RestoreSummary::default());
    let written = AtomicU64::new(0);
    let is_root = nix::unistd::geteuid().is_root();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .max(2);
    let (jobs, job_rx) = bounded::<FileJob>(threads * 4);

    let walked = std::thread::scope(|scope| -> Result<()> {
        for _ in 0..threads {
            let rx = job_rx.clone();
            let (summary, written) = (&summary, &written);
            scope.spawn(move || {
                for job in rx {
                    if let Err(e) = fill_file(repo, &job, is_root, written, progress) {
                        tracing::error!(path = %job.shown.display(), error = %e, "restore failed");
                        summary
                            .lock()
                            .expect("summary")
                            .failed
                            .push((job.shown.display().to_string(), e.to_string()));
                    }
                }
            });
        }
        drop(job_rx);
        let mut walker = RestoreWalker {
            repo,
            jobs,
            summary: &summary,
            is_root,
            links: HashMap::new(),
            root: &root_fd,
            root_tree: rp.manifest.root,
        };
        for sel in &selected {
            walker.restore_selected(sel)?;
        }
        Ok(())
    });
    walked?;

    let mut summary = summary.into_inner().expect("summary");
    summary.bytes_written = written.load(Ordering::Relaxed);
    summary.duration_ms = started.elapsed().as_millis() as u64;
    progress.finish();
    Ok(summary)
}

fn select<M>(repo: &Repository<M>, rp: &RestorePoint, paths: &[String]) -> Result<Vec<Selected>> {
    if paths.is_empty() || paths.iter().any(|p| p.trim_matches('/').is_empty()) {
        return Ok(vec![Selected {
            ancestors: Vec::new(),
            node: None,
        }]);
    }
    let mut out = Vec::new();
    for path in paths {
        let components: Vec<Vec<u8>> = path
            .split('/')
            .filter(|p| !p.is_empty())
            .map(|p| p.as_bytes().to_vec())
            .collect();
        let mut ancestors = Vec::new();
        let mut prefix = String::new();
        for part in &components[..components.len() - 1] {
            prefix.push('/');
            prefix.push_str(&String::from_utf8_lossy(part));
            ancestors.push(
                repo.lookup_path(rp, &prefix)?
                    .expect("non-root path has a node"),
            );
        }
        let node = repo.lookup_path(rp, path)?;
        out.push(Selected { ancestors, node });
    }
    Ok(out)
}

fn file_data_bytes(node: &Node) -> Result<u64> {
    let NodeKind::File { extents } = &node.kind else {
        return Ok(0);
    };
    let total: u64 = extents.iter().map(Extent::len).sum();
    if total != node.size {
        return Err(Error::corrupt(
            format!("file {:?}", String::from_utf8_lossy(&node.name)),
            format!("extents cover {total} bytes but the size is {}", node.size),
        ));
    }
    Ok(extents
        .iter()
        .filter(|e| matches!(e, Extent::Data { .. }))
        .map(Extent::len)
        .sum())
}

/// Data bytes below a tree, validating every name on the way.
fn measure_tree<M>(repo: &Repository<M>, rp: &RestorePoint, id: &ChunkId) -> Result<u64> {
    let tree = repo.load_tree(id)?;
    let mut total = 0;
    for node in &tree.nodes {
        total += measure_node(repo, rp, node)?;
    }
    Ok(total)
}

fn measure_node<M>(repo: &Repository<M>, rp: &RestorePoint, node: &Node) -> Result<u64> {
    validate_name(&node.name, "restore point")?;
    match &node.kind {
        NodeKind::Directory { subtree } => measure_tree(repo, rp, subtree),
        NodeKind::File { extents } => {
            // Cold data is refused before anything is written.
            for extent in extents {
                if let Extent::Data { id, .. } = extent {
                    if !repo.is_readable(id)? {
                        return Err(Error::RestorePointCold {
                            restore_point: rp.id.short(),
                        });
                    }
                }
            }
            file_data_bytes(node)
        }
        _ => file_data_bytes(node),
    }
}

struct FileJob {
    file: std::fs::File,
    node: Node,
    shown: PathBuf,
}

struct RestoreWalker<'a, M> {
    repo: &'a Repository<M>,
    jobs: crossbeam_channel::Sender<FileJob>,
    summary: &'a Mutex<RestoreSummary>,
    is_root: bool,
    /// First restored name of each hard-linked file, relative to the root.
    links: HashMap<u64, PathBuf>,
    root: &'a OwnedFd,
    root_tree: ChunkId,
}

impl<M> RestoreWalker<'_, M> {
    fn restore_selected(&mut self, sel: &Selected) -> Result<()> {
        let Some(node) = &sel.node else {
            let tree = self.repo.load_tree(&self.root_tree)?;
            let root = self
                .root
                .try_clone()
                .at("duplicating descriptor of", "restore target")?;
            for child in &tree.nodes {
                self.restore_node(&root, PathBuf::new(), child)?;
            }
            return Ok(());
        };
        // Create the ancestors, restore the node, then give the ancestors
        // their metadata (their mtimes change while we create entries).
        let mut fds = vec![self
            .root
            .try_clone()
            .at("duplicating descriptor of", "restore target")?];
        let mut rel = PathBuf::new();
        for ancestor in &sel.ancestors {
            validate_name(&ancestor.name, "restore point")?;
            rel.push(os(&ancestor.name));
            let fd = fsops::make_dir(fds.last().expect("root"), os(&ancestor.name), &rel)?;
            fds.push(fd);
        }
        self.restore_node(fds.last().expect("root"), rel.clone(), node)?;
        for (ancestor, fd) in sel.ancestors.iter().zip(fds.iter().skip(1)).rev() {
            self.apply_fd_metadata(fd, ancestor, &rel)?;
        }
        Ok(())
    }

    fn restore_node(&mut self, parent: &OwnedFd, parent_rel: PathBuf, node: &Node) -> Result<()> {
        crate::interrupt::check()?;
        validate_name(&node.name, "restore point")?;
        let name = os(&node.name);
        let rel = parent_rel.join(name);
        match &node.kind {
            NodeKind::Directory { subtree } => {
                let fd = fsops::make_dir(parent, name, &rel)?;
                let tree = self.repo.load_tree(subtree)?;
                for child in &tree.nodes {
                    self.restore_node(&fd, rel.clone(), child)?;
                }
                self.apply_fd_metadata(&fd, node, &rel)?;
                self.summary.lock().expect("summary").directories += 1;
            }
            NodeKind::File { .. } => {
                if node.link_id != 0 {
                    if let Some(first) = self.links.get(&node.link_id) {
                        fsops::clear_entry(parent, name, &rel)?;
                        nix::unistd::linkat(
                            Some(self.root.as_raw_fd()),
                            first.as_os_str(),
                            Some(parent.as_raw_fd()),
                            name,
                            nix::fcntl::AtFlags::empty(),
                        )
                        .at("hard-linking", &rel)?;
                        self.summary.lock().expect("summary").files += 1;
                        return Ok(());
                    }
                    self.links.insert(node.link_id, rel.clone());
                }
                let file = fsops::create_file(parent, name, &rel)?;
                self.summary.lock().expect("summary").files += 1;
                self.jobs
                    .send(FileJob {
                        file,
                        node: node.clone(),
                        shown: rel,
                    })
                    .map_err(|_| Error::Interrupted("restore workers stopped".into()))?;
            }
            NodeKind::Symlink { target } => {
                fsops::clear_entry(parent, name, &rel)?;
                nix::unistd::symlinkat(os(target), Some(parent.as_raw_fd()), name)
                    .at("creating symlink", &rel)?;
                self.apply_at_metadata(parent, node, &rel, false)?;
            }
            NodeKind::Fifo | NodeKind::CharDevice { .. } | NodeKind::BlockDevice { .. } => {
                let (kind, rdev) = match node.kind {
                    NodeKind::Fifo => (SFlag::S_IFIFO, 0),
                    NodeKind::CharDevice { rdev } => (SFlag::S_IFCHR, rdev),
                    NodeKind::BlockDevice { rdev } => (SFlag::S_IFBLK, rdev),
                    _ => unreachable!(),
                };
                fsops::clear_entry(parent, name, &rel)?;
                match nix::sys::stat::mknodat(
                    Some(parent.as_raw_fd()),
                    name,
                    kind,
                    Mode::from_bits_truncate(0o600),
                    rdev,
                ) {
                    Ok(()) => self.apply_at_metadata(parent, node, &rel, true)?,
                    Err(nix::errno::Errno::EPERM) => {
                        self.warn(format!(
                            "{}: device nodes can only be created by root",
                            rel.display()
                        ));
                        return Ok(());
                    }
                    Err(e) => return Err(e).at("creating", &rel),
                }
            }
            NodeKind::Socket => {
                self.warn(format!("{}: sockets are not restored", rel.display()));
                return Ok(());
            }
        }
        if !matches!(
            node.kind,
            NodeKind::Directory { .. } | NodeKind::File { .. }
        ) {
            self.summary.lock().expect("summary").other += 1;
        }
        Ok(())
    }

    fn warn(&self, message: String) {
        tracing::warn!("{message}");
        self.summary.lock().expect("summary").warnings.push(message);
    }

    fn apply_fd_metadata(&self, fd: &OwnedFd, node: &Node, shown: &Path) -> Result<()> {
        apply_metadata(fd.as_fd(), node, shown, self.is_root)
    }

    /// Metadata of entries that cannot be opened (symlinks, devices, FIFOs).
    fn apply_at_metadata(
        &self,
        parent: &OwnedFd,
        node: &Node,
        shown: &Path,
        chmod: bool,
    ) -> Result<()> {
        let name = os(&node.name);
        if self.is_root {
            nix::unistd::fchownat(
                Some(parent.as_raw_fd()),
                name,
                Some(Uid::from_raw(node.uid)),
                Some(Gid::from_raw(node.gid)),
                fsops::no_follow(),
            )
            .at("setting owner of", shown)?;
        }
        if chmod {
            fchmodat(
                Some(parent.as_raw_fd()),
                name,
                Mode::from_bits_truncate(node.mode),
                FchmodatFlags::FollowSymlink,
            )
            .at("setting mode of", shown)?;
        }
        nix::sys::stat::utimensat(
            Some(parent.as_raw_fd()),
            name,
            &timespec(node.atime),
            &timespec(node.mtime),
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .at("setting times of", shown)
    }
}

fn timespec(t: Timestamp) -> TimeSpec {
    TimeSpec::new(t.sec, t.nsec as i64)
}

/// Owner, mode, xattrs and times, in that order: chown clears setuid bits,
/// and every later change would move the times.
fn apply_metadata(
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

fn fill_file<M>(
    repo: &Repository<M>,
    job: &FileJob,
    is_root: bool,
    written: &AtomicU64,
    progress: &Progress,
) -> Result<()> {
    let NodeKind::File { extents } = &job.node.kind else {
        return Ok(());
    };
    let mut offset = 0u64;
    for extent in extents {
        if let Extent::Data { id, len } = extent {
            let data = repo.read_chunk(id).map_err(|e| match e {
                Error::ChunkMissing { .. } | Error::ChunkDamaged { .. } | Error::Corrupt { .. } => {
                    Error::corrupt(
                        format!("file {}", job.shown.display()),
                        format!("at byte {offset}: {e}"),
                    )
                }
                other => other,
            })?;
            if data.len() != *len as usize {
                return Err(Error::corrupt(
                    format!("file {}", job.shown.display()),
                    format!(
                        "chunk {id} holds {} bytes, the file expects {len}",
                        data.len()
                    ),
                ));
            }
            job.file
                .write_all_at(&data, offset)
                .at("writing", &job.shown)?;
            written.fetch_add(data.len() as u64, Ordering::Relaxed);
            progress.inc(data.len() as u64);
        }
        offset += extent.len();
    }
    // Sets the size and recreates a trailing hole.
    job.file
        .set_len(job.node.size)
        .at("setting size of", &job.shown)?;
    apply_metadata(job.file.as_fd(), &job.node, &job.shown, is_root)
}
