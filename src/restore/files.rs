//! Restores a file-tree restore point, or selected paths of it, into a
//! target directory.
//!
//! A first pass walks the selected trees to validate every name and to size
//! the data, which is checked against the target's free space: a refused
//! restore writes nothing, not even the target directory. The second pass
//! creates entries in tree order through directory descriptors. Files are
//! created under a temporary name by the walker and filled by worker
//! threads (chunk reads, decompression and writes run in parallel; holes
//! are left unwritten); only a file whose every chunk verified is renamed
//! over its final name, so a failure leaves an existing file as it was and
//! never a truncated one under the restored name. Every entry gets its
//! metadata back through a descriptor of its own. A directory's metadata
//! is set once everything below it is done, so its mtime is the backed-up
//! one.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use crossbeam_channel::bounded;
use nix::sys::stat::Mode;
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use super::fsops::{self, os, SpecialKind};
use crate::cancel::CancelToken;
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
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<RestoreSummary> {
    let started = Instant::now();
    let span = tracing::info_span!("restore_files", restore_point = %rp.id.short(), target = %request.target.display());
    let _entered = span.enter();
    // Everything that can refuse the restore runs before anything is
    // created: the target, every name, cold data, free space.
    let target = super::plan_target(repo.root(), &request.target)?;
    let selected = select(repo, rp, &request.paths)?;
    let mut needed = 0u64;
    for sel in &selected {
        needed += match &sel.node {
            None => measure_tree(repo, rp, &rp.manifest.root)?,
            Some(node) => measure_node(repo, rp, node)?,
        };
    }
    target.check_space(needed)?;
    let target = target.create()?;
    progress.add_total(needed);

    let root_fd = fsops::open_dir(None, target.as_os_str(), &target)?;
    let outcome = Outcome {
        summary: Mutex::new(RestoreSummary::default()),
        written: AtomicU64::new(0),
        is_root: nix::unistd::geteuid().is_root(),
    };
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .max(2);
    let (jobs, job_rx) = bounded::<Job>(threads * 4);
    let replacements = Replacements {
        pending: Mutex::new(Vec::new()),
    };

    let walked = std::thread::scope(|scope| -> Result<()> {
        for _ in 0..threads {
            let rx = job_rx.clone();
            let (outcome, replacements) = (&outcome, &replacements);
            scope.spawn(move || {
                for job in rx {
                    run_job(repo, job, outcome, replacements, progress, cancel);
                }
            });
        }
        drop(job_rx);
        let mut walker = RestoreWalker {
            repo,
            cancel,
            jobs,
            outcome: &outcome,
            links: HashMap::new(),
            root: Arc::new(OpenDir {
                fd: root_fd
                    .try_clone()
                    .at("duplicating descriptor of", &target)?,
                node: None,
                shown: target.clone(),
                _parent: None,
                outcome: &outcome,
            }),
            root_tree: rp.manifest.root,
        };
        for sel in &selected {
            walker.restore_selected(sel)?;
        }
        Ok(())
    });
    replacements.finish(&outcome);
    drop(replacements);
    walked?;

    let mut summary = outcome.summary.into_inner().expect("summary lock");
    summary.bytes_written = outcome.written.load(Ordering::Relaxed);
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
            // Cold data is refused before anything is written. A chunk the
            // index lacks (lost to damage) fails its own file when it is
            // restored, not the whole restore.
            for extent in extents {
                if let Extent::Data { id, .. } = extent {
                    match repo.is_readable(id) {
                        Ok(true) | Err(Error::ChunkMissing { .. }) => {}
                        Ok(false) => {
                            return Err(Error::RestorePointCold {
                                restore_point: rp.id.short(),
                            })
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            file_data_bytes(node)
        }
        _ => file_data_bytes(node),
    }
}

/// What the walker and the workers report, shared by both.
struct Outcome {
    summary: Mutex<RestoreSummary>,
    written: AtomicU64,
    is_root: bool,
}

impl Outcome {
    fn record(&self, update: impl FnOnce(&mut RestoreSummary)) {
        update(&mut self.summary.lock().expect("summary lock"));
    }

    fn fail(&self, shown: &Path, error: &Error) {
        tracing::error!(path = %shown.display(), error = %error, "restore failed");
        self.record(|s| {
            s.failed
                .push((shown.display().to_string(), error.to_string()))
        });
    }

    fn warn(&self, message: String) {
        tracing::warn!("{message}");
        self.record(|s| s.warnings.push(message));
    }
}

/// A directory being restored. Its metadata is set when the last entry
/// below it is done, i.e. when the last `Arc` to it is dropped: workers
/// finish files (and rename them into place) after the walker has moved
/// on, and each of those would move the directory's times.
struct OpenDir<'a> {
    fd: OwnedFd,
    /// `None` for the target itself, whose metadata stays as it is.
    node: Option<Node>,
    shown: PathBuf,
    /// Keeps the parent open, and its metadata pending, until this is done.
    _parent: Option<Arc<OpenDir<'a>>>,
    outcome: &'a Outcome,
}

impl Drop for OpenDir<'_> {
    fn drop(&mut self) {
        if let Some(node) = &self.node {
            if let Err(e) = apply_metadata(self.fd.as_fd(), node, &self.shown, self.outcome.is_root)
            {
                self.outcome.fail(&self.shown, &e);
            }
        }
    }
}

/// The first name of a hard-linked file. Later names are linked to the
/// file it names once that is complete (through a descriptor of the file,
/// not its name), and fail with it if it fails.
struct LinkTarget {
    /// Relative to the restore target, for messages.
    rel: PathBuf,
    state: Mutex<LinkState>,
    finished: Condvar,
}

enum LinkState {
    Pending,
    Restored(Arc<OwnedFd>),
    Failed,
}

impl LinkTarget {
    fn finish(&self, state: LinkState) {
        *self.state.lock().expect("link lock") = state;
        self.finished.notify_all();
    }

    /// The first name's file, once restored. Its job was queued before any
    /// job that waits here, so a worker is already on it.
    fn wait(&self) -> Option<Arc<OwnedFd>> {
        let mut state = self.state.lock().expect("link lock");
        loop {
            match &*state {
                LinkState::Restored(fd) => return Some(fd.clone()),
                LinkState::Failed => return None,
                LinkState::Pending => state = self.finished.wait(state).expect("link lock"),
            }
        }
    }
}

enum Job<'a> {
    /// Fill `partial` with the file's data and metadata, then rename it to
    /// the file's name.
    File {
        dir: Arc<OpenDir<'a>>,
        partial: OsString,
        file: std::fs::File,
        node: Box<Node>,
        shown: PathBuf,
        link: Option<Arc<LinkTarget>>,
    },
    /// Another name of a hard-linked file.
    Link {
        dir: Arc<OpenDir<'a>>,
        name: OsString,
        shown: PathBuf,
        first: Arc<LinkTarget>,
    },
}

struct RestoreWalker<'a, 'r, M> {
    repo: &'r Repository<M>,
    cancel: &'r CancelToken,
    jobs: crossbeam_channel::Sender<Job<'a>>,
    outcome: &'a Outcome,
    /// Hard-linked files by link id, with how many more names the backup
    /// said they have; an entry (and the descriptor it keeps open) goes
    /// once all are queued.
    links: HashMap<u64, (Arc<LinkTarget>, u32)>,
    root: Arc<OpenDir<'a>>,
    root_tree: ChunkId,
}

impl<'a, M> RestoreWalker<'a, '_, M> {
    fn restore_selected(&mut self, sel: &Selected) -> Result<()> {
        let Some(node) = &sel.node else {
            let tree = self.repo.load_tree(&self.root_tree)?;
            let root = self.root.clone();
            for child in &tree.nodes {
                self.restore_node(&root, PathBuf::new(), child)?;
            }
            return Ok(());
        };
        // The ancestors get their metadata once the node below is done.
        let mut dir = self.root.clone();
        let mut rel = PathBuf::new();
        for ancestor in &sel.ancestors {
            validate_name(&ancestor.name, "restore point")?;
            rel.push(os(&ancestor.name));
            dir = Arc::new(OpenDir {
                fd: fsops::make_dir(&dir.fd, os(&ancestor.name), &rel)?,
                node: Some(ancestor.clone()),
                shown: rel.clone(),
                _parent: Some(dir),
                outcome: self.outcome,
            });
        }
        self.restore_node(&dir, rel, node)
    }

    fn restore_node(
        &mut self,
        parent: &Arc<OpenDir<'a>>,
        parent_rel: PathBuf,
        node: &Node,
    ) -> Result<()> {
        self.cancel.check()?;
        validate_name(&node.name, "restore point")?;
        let name = os(&node.name);
        let rel = parent_rel.join(name);
        match &node.kind {
            NodeKind::Directory { subtree } => {
                let dir = Arc::new(OpenDir {
                    fd: fsops::make_dir(&parent.fd, name, &rel)?,
                    node: Some(node.clone()),
                    shown: rel.clone(),
                    _parent: Some(parent.clone()),
                    outcome: self.outcome,
                });
                let tree = self.repo.load_tree(subtree)?;
                for child in &tree.nodes {
                    self.restore_node(&dir, rel.clone(), child)?;
                }
                self.outcome.record(|s| s.directories += 1);
            }
            NodeKind::File { .. } => self.queue_file(parent, rel, node)?,
            NodeKind::Symlink { target } => {
                let owner = self.outcome.is_root.then_some((node.uid, node.gid));
                let times = (&timespec(node.atime), &timespec(node.mtime));
                self.in_place(parent, &rel, |partial| {
                    let fd = fsops::make_symlink(&parent.fd, partial, os(target), &rel)?;
                    fsops::set_symlink_metadata(&fd, owner, times, &rel).map(|()| true)
                })?;
            }
            NodeKind::Fifo | NodeKind::CharDevice { .. } | NodeKind::BlockDevice { .. } => {
                let (kind, rdev) = match node.kind {
                    NodeKind::CharDevice { rdev } => (SpecialKind::CharDevice, rdev),
                    NodeKind::BlockDevice { rdev } => (SpecialKind::BlockDevice, rdev),
                    _ => (SpecialKind::Fifo, 0),
                };
                let owner = self.outcome.is_root.then_some((node.uid, node.gid));
                let times = (&timespec(node.atime), &timespec(node.mtime));
                self.in_place(parent, &rel, |partial| {
                    match fsops::make_special(&parent.fd, partial, kind, rdev, &rel) {
                        Ok(fd) => fsops::set_special_metadata(&fd, owner, node.mode, times, &rel)
                            .map(|()| true),
                        Err(Error::Io { source, .. })
                            if source.raw_os_error() == Some(libc::EPERM)
                                && kind != SpecialKind::Fifo =>
                        {
                            self.outcome.warn(format!(
                                "{}: device nodes can only be created by root",
                                rel.display()
                            ));
                            Ok(false)
                        }
                        Err(e) => Err(e),
                    }
                })?;
            }
            NodeKind::Socket => {
                self.outcome
                    .warn(format!("{}: sockets are not restored", rel.display()));
            }
        }
        Ok(())
    }

    /// Makes an entry under a temporary name with `make` and renames it
    /// into place. A failure is that entry's own: it is reported, the
    /// partial entry removed, and the restore goes on (unless interrupted).
    /// `make` returns false when it skipped the entry (with a warning).
    fn in_place(
        &self,
        parent: &OpenDir,
        rel: &Path,
        make: impl FnOnce(&OsStr) -> Result<bool>,
    ) -> Result<()> {
        let name = rel.file_name().expect("restored entries have a name");
        let partial = fsops::partial_name();
        let partial = partial.as_os_str();
        let made = make(partial).and_then(|made| {
            if made {
                fsops::commit_partial(&parent.fd, partial, name, rel)?;
            }
            Ok(made)
        });
        match made {
            Ok(true) => self.outcome.record(|s| s.other += 1),
            Ok(false) => {}
            Err(e @ Error::Interrupted(_)) => {
                fsops::discard_partial(&parent.fd, partial);
                return Err(e);
            }
            Err(e) => {
                fsops::discard_partial(&parent.fd, partial);
                self.outcome.fail(rel, &e);
            }
        }
        Ok(())
    }

    fn queue_file(&mut self, parent: &Arc<OpenDir<'a>>, rel: PathBuf, node: &Node) -> Result<()> {
        let mut link = None;
        if node.link_id != 0 {
            if let Some((first, remaining)) = self.links.get_mut(&node.link_id) {
                let job = Job::Link {
                    dir: parent.clone(),
                    name: os(&node.name).to_os_string(),
                    shown: rel,
                    first: first.clone(),
                };
                *remaining = remaining.saturating_sub(1);
                if *remaining == 0 {
                    self.links.remove(&node.link_id);
                }
                return self.send(job);
            }
            let first = Arc::new(LinkTarget {
                rel: rel.clone(),
                state: Mutex::new(LinkState::Pending),
                finished: Condvar::new(),
            });
            if node.nlink > 1 {
                self.links
                    .insert(node.link_id, (first.clone(), node.nlink - 1));
            }
            link = Some(first);
        }
        let partial = fsops::partial_name();
        let file = match fsops::create_partial_file(&parent.fd, &partial, &rel) {
            Ok(file) => file,
            Err(e) => {
                if let Some(link) = &link {
                    link.finish(LinkState::Failed);
                }
                return Err(e);
            }
        };
        self.send(Job::File {
            dir: parent.clone(),
            partial,
            file,
            node: Box::new(node.clone()),
            shown: rel,
            link,
        })
    }

    fn send(&self, job: Job<'a>) -> Result<()> {
        self.jobs
            .send(job)
            .map_err(|_| Error::Interrupted("restore workers stopped".into()))
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

/// Files that replace existing ones, complete and waiting for their
/// rename. One `syncfs` per batch makes their data durable: an fsync per
/// file made in-place restores about four times slower.
struct Replacements<'a> {
    pending: Mutex<Vec<Replacement<'a>>>,
}

struct Replacement<'a> {
    dir: Arc<OpenDir<'a>>,
    partial: OsString,
    name: OsString,
    shown: PathBuf,
    file: std::fs::File,
}

const REPLACEMENT_BATCH: usize = 256;

impl<'a> Replacements<'a> {
    fn add(&self, replacement: Replacement<'a>, outcome: &Outcome) {
        let batch = {
            let mut pending = self.pending.lock().expect("replacements lock");
            pending.push(replacement);
            if pending.len() < REPLACEMENT_BATCH {
                return;
            }
            std::mem::take(&mut *pending)
        };
        commit_replacements(batch, outcome);
    }

    fn finish(&self, outcome: &Outcome) {
        let batch = std::mem::take(&mut *self.pending.lock().expect("replacements lock"));
        commit_replacements(batch, outcome);
    }
}

/// Syncs each file system the batch is on once, then renames every file
/// over the one it replaces.
fn commit_replacements(batch: Vec<Replacement>, outcome: &Outcome) {
    let mut synced: HashMap<u64, nix::Result<()>> = HashMap::new();
    for r in batch {
        let device = nix::sys::stat::fstat(r.file.as_raw_fd()).map(|st| st.st_dev);
        let sync = match device {
            Ok(dev) => *synced
                .entry(dev)
                .or_insert_with(|| nix::unistd::syncfs(r.file.as_raw_fd())),
            Err(e) => Err(e),
        };
        let result = sync
            .at("syncing", &r.shown)
            .and_then(|()| fsops::commit_partial(&r.dir.fd, &r.partial, &r.name, &r.shown));
        match result {
            Ok(()) => outcome.record(|s| s.files += 1),
            Err(e) => {
                fsops::discard_partial(&r.dir.fd, &r.partial);
                outcome.fail(&r.shown, &e);
            }
        }
    }
}

/// Runs one job; a failure is the entry's own and is reported, the rest of
/// the restore goes on.
fn run_job<'a, M>(
    repo: &Repository<M>,
    job: Job<'a>,
    outcome: &Outcome,
    replacements: &Replacements<'a>,
    progress: &dyn Progress,
    cancel: &CancelToken,
) {
    match job {
        Job::File {
            dir,
            partial,
            file,
            node,
            shown,
            link,
        } => {
            let name = os(&node.name);
            let filled = cancel
                .check()
                .and_then(|()| fill_file(repo, &file, &node, &shown, outcome, progress));
            // Replacing an existing file: its data must be on disk before
            // the rename, or a crash could leave an empty file where the
            // good copy was. Such files are renamed in batches after one
            // sync (hard-linked ones at once: their links wait for them).
            let replacing = filled.is_ok() && fsops::exists_at(&dir.fd, name);
            if replacing && link.is_none() {
                replacements.add(
                    Replacement {
                        dir,
                        partial,
                        name: name.to_os_string(),
                        shown,
                        file,
                    },
                    outcome,
                );
                return;
            }
            let result = filled.and_then(|()| {
                if replacing {
                    file.sync_all().at("syncing", &shown)?;
                }
                fsops::commit_partial(&dir.fd, &partial, name, &shown)
            });
            match result {
                Ok(()) => {
                    outcome.record(|s| s.files += 1);
                    if let Some(link) = link {
                        link.finish(LinkState::Restored(Arc::new(OwnedFd::from(file))));
                    }
                }
                Err(e) => {
                    if let Some(link) = link {
                        link.finish(LinkState::Failed);
                    }
                    fsops::discard_partial(&dir.fd, &partial);
                    outcome.fail(&shown, &e);
                }
            }
        }
        Job::Link {
            dir,
            name,
            shown,
            first,
        } => {
            let result = match first.wait() {
                Some(file) => fsops::link_in_place(&file, &dir.fd, &name, &shown),
                None => Err(Error::InvalidInput(format!(
                    "not restored: it is a hard link of {}, which failed",
                    first.rel.display()
                ))),
            };
            match result {
                Ok(()) => outcome.record(|s| s.files += 1),
                Err(e) => outcome.fail(&shown, &e),
            }
        }
    }
}

/// Writes a file's data, chunk by chunk as each is verified, and its
/// metadata, into the partial file; the caller renames it into place.
fn fill_file<M>(
    repo: &Repository<M>,
    file: &std::fs::File,
    node: &Node,
    shown: &Path,
    outcome: &Outcome,
    progress: &dyn Progress,
) -> Result<()> {
    let NodeKind::File { extents } = &node.kind else {
        return Ok(());
    };
    let mut offset = 0u64;
    for extent in extents {
        if let Extent::Data { id, len } = extent {
            let data = repo.read_chunk(id).map_err(|e| match e {
                Error::ChunkMissing { .. } | Error::ChunkDamaged { .. } | Error::Corrupt { .. } => {
                    Error::corrupt(
                        format!("file {}", shown.display()),
                        format!("at byte {offset}: {e}"),
                    )
                }
                other => other,
            })?;
            if data.len() != *len as usize {
                return Err(Error::corrupt(
                    format!("file {}", shown.display()),
                    format!(
                        "chunk {id} holds {} bytes, the file expects {len}",
                        data.len()
                    ),
                ));
            }
            file.write_all_at(&data, offset).at("writing", shown)?;
            outcome
                .written
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            progress.advance(data.len() as u64);
        }
        offset += extent.len();
    }
    // Sets the size and recreates a trailing hole.
    file.set_len(node.size).at("setting size of", shown)?;
    apply_metadata(file.as_fd(), node, shown, outcome.is_root)
}
