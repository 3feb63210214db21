//! The file-tree data mover: walks the selected paths and builds the
//! restore point's Merkle tree while readers chunk file contents.
//!
//! The walker (this thread) lists directories depth first in name order
//! and turns entries into tree nodes. Files that the file cache proves
//! unchanged (same size, mtime, ctime, inode and device, and chunks still
//! indexed) reuse their chunk list; others become jobs for reader threads.
//! A directory is encoded and stored once it is listed and its last file
//! is read, then its id is written into its parent's node, so trees are
//! finished bottom-up while reading goes on. At most `MAX_IN_FLIGHT` files
//! are queued, which bounds memory whatever the tree's size.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender};

use super::metadata::{fingerprint, node_for, OwnerNames};
use super::pipeline::{with_chunk_sink, ChunkSink, StoreCounters};
use super::reader::{read_file, FileContent, ReadFailure};
use crate::cancel::CancelToken;
use crate::chunker::StreamChunker;
use crate::error::{Error, IoContext, Result};
use crate::id::{ChunkId, RestorePointId};
use crate::index::{FileCacheBatch, FileCacheRecord, FileFingerprint};
use crate::pack::{ChunkKind, MAX_CHUNK_LEN};
use crate::progress::Progress;
use crate::repository::{Exclusive, Repository};
use crate::restore_point::{Manifest, MissedFile, RestorePointKind};
use crate::tree::{Extent, Node, NodeKind, Timestamp, Tree};

const MAX_IN_FLIGHT: usize = 256;

/// What to back up.
pub struct FilesBackup {
    pub paths: Vec<PathBuf>,
    /// Name of the source; restore points of one source form a chain of
    /// incrementals. Defaults to the host name.
    pub source: Option<String>,
    pub tags: Vec<String>,
    /// Time to record instead of now (importing older backups).
    pub time: Option<Timestamp>,
}

pub struct BackupOutcome {
    pub id: RestorePointId,
    pub manifest: Manifest,
}

/// Which parts of the file system are selected: a whole subtree, or only
/// some children (the ancestors of the selected paths).
#[derive(Default)]
struct Selection {
    whole: bool,
    children: BTreeMap<OsString, Selection>,
}

impl Selection {
    fn add(&mut self, path: &Path) {
        let mut node = self;
        for part in path.components().skip(1) {
            if node.whole {
                return;
            }
            node = node
                .children
                .entry(part.as_os_str().to_os_string())
                .or_default();
        }
        node.whole = true;
        node.children.clear();
    }
}

/// Absolute form of a path to back up. The last component is kept as is,
/// so a symlink given on the command line is stored as a symlink.
fn normalize(path: &Path) -> Result<PathBuf> {
    std::fs::symlink_metadata(path)
        .map_err(|e| Error::InvalidInput(format!("cannot back up {}: {e}", path.display())))?;
    let absolute = match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            std::fs::canonicalize(parent)
                .at("resolving", parent)?
                .join(name)
        }
        _ => std::fs::canonicalize(path).at("resolving", path)?,
    };
    Ok(absolute)
}

pub fn default_source() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

pub fn backup_files(
    repo: &Repository<Exclusive>,
    request: &FilesBackup,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<BackupOutcome> {
    let started = Instant::now();
    let source = request.source.clone().unwrap_or_else(default_source);
    if source.is_empty() || source.contains('@') || source.contains('/') {
        return Err(Error::InvalidInput(format!(
            "source name {source:?} may not be empty or contain '@' or '/'"
        )));
    }
    if request.paths.is_empty() {
        return Err(Error::InvalidInput(
            "nothing to back up: give at least one path".into(),
        ));
    }
    let mut paths = request
        .paths
        .iter()
        .map(|p| normalize(p))
        .collect::<Result<Vec<_>>>()?;
    paths.sort();
    paths.dedup();
    let mut selection = Selection::default();
    for path in &paths {
        selection.add(path);
    }
    let span = tracing::info_span!("backup_files", source = %source, paths = paths.len());
    let _entered = span.enter();

    let parent = repo
        .restore_points()?
        .into_iter()
        .filter(|rp| rp.manifest.source == source)
        .max_by_key(|rp| rp.manifest.time.as_nanos())
        .map(|rp| rp.id);
    let repo_root = std::fs::metadata(repo.root()).at("reading metadata of", repo.root())?;

    let counters = StoreCounters::default();
    let stop_scan = AtomicBool::new(false);
    let walked = std::thread::scope(|scope| {
        if progress.is_visible() {
            let (selection, stop) = (&selection, &stop_scan);
            scope.spawn(move || scan_sizes(Path::new("/"), selection, stop, progress));
        }
        let result = with_chunk_sink(repo, &counters, |sink| {
            walk(
                repo,
                sink,
                &source,
                &selection,
                (repo_root.dev(), repo_root.ino()),
                progress,
                cancel,
            )
        });
        stop_scan.store(true, Ordering::Relaxed);
        result
    })?;
    progress.finish();

    let stats = counters.stats(
        walked.files,
        walked.directories,
        walked.bytes_total,
        walked.bytes_read,
        started,
    );
    let manifest = Manifest {
        kind: RestorePointKind::Files,
        source,
        time: request.time.unwrap_or_else(crate::clock::now),
        hostname: default_source(),
        tags: request.tags.clone(),
        paths: paths
            .iter()
            .map(|p| p.as_os_str().as_bytes().to_vec())
            .collect(),
        root: walked.root,
        parent,
        stats,
        missed: walked.missed,
    };
    let id = repo.commit_restore_point(&manifest)?;
    tracing::info!(restore_point = %id, files = manifest.stats.files, bytes_new = manifest.stats.bytes_new, "committed");
    Ok(BackupOutcome { id, manifest })
}

/// Sums file sizes ahead of the backup so the progress bar can show an ETA.
fn scan_sizes(dir: &Path, selection: &Selection, stop: &AtomicBool, progress: &dyn Progress) {
    let names: Vec<OsString> = if selection.whole {
        match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.file_name()))
                .collect(),
            Err(_) => return,
        }
    } else {
        selection.children.keys().cloned().collect()
    };
    static WHOLE: Selection = Selection {
        whole: true,
        children: BTreeMap::new(),
    };
    for name in names {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let path = dir.join(&name);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let child = if selection.whole {
            &WHOLE
        } else {
            &selection.children[&name]
        };
        if meta.is_dir() {
            scan_sizes(&path, child, stop, progress);
        } else if meta.is_file() {
            progress.add_total(meta.size());
        }
    }
}

struct Walked {
    root: ChunkId,
    files: u64,
    directories: u64,
    bytes_total: u64,
    bytes_read: u64,
    missed: Vec<MissedFile>,
}

struct FileJob {
    dir: usize,
    slot: usize,
    path: PathBuf,
    fingerprint: FileFingerprint,
}

struct FileResult {
    dir: usize,
    slot: usize,
    path: PathBuf,
    fingerprint: FileFingerprint,
    outcome: Result<FileContent, ReadFailure>,
}

/// A directory still to be listed, and where its node sits in its parent.
struct DirWork<'sel> {
    path: PathBuf,
    selection: &'sel Selection,
    place: Option<(usize, usize)>,
}

/// A directory whose tree is not stored yet.
struct PendingDir {
    path: PathBuf,
    nodes: Vec<Node>,
    missed: Vec<bool>,
    /// Children (files being read, subdirectories being walked) not done.
    pending: usize,
    listed: bool,
    /// Where this directory's node sits in its parent.
    parent: Option<(usize, usize)>,
}

/// Hard-linked files are read once; later names wait for the first.
enum LinkState {
    Done(Result<Vec<Extent>, String>),
    Waiting(Vec<(usize, usize)>),
}

struct Walker<'a, 's> {
    repo: &'a Repository<Exclusive>,
    sink: &'a ChunkSink<'s>,
    source: &'a str,
    repo_root: (u64, u64),
    progress: &'a dyn Progress,
    cancel: &'a CancelToken,
    owners: OwnerNames,
    dirs: Vec<Option<PendingDir>>,
    free: Vec<usize>,
    jobs: Sender<FileJob>,
    results: Receiver<FileResult>,
    in_flight: usize,
    links: HashMap<(u64, u64), LinkState>,
    cache: FileCacheBatch<'a>,
    root: Option<ChunkId>,
    walked: Walked,
}

fn walk(
    repo: &Repository<Exclusive>,
    sink: &ChunkSink,
    source: &str,
    selection: &Selection,
    repo_root: (u64, u64),
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<Walked> {
    let readers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let (job_tx, job_rx) = bounded::<FileJob>(MAX_IN_FLIGHT);
    let (result_tx, result_rx) = bounded::<FileResult>(MAX_IN_FLIGHT);
    std::thread::scope(|scope| {
        for n in 0..readers {
            let (jobs, results) = (job_rx.clone(), result_tx.clone());
            let params = repo.config().chunker;
            std::thread::Builder::new()
                .name(format!("read-{n}"))
                .spawn_scoped(scope, move || {
                    let _span = tracing::debug_span!("read").entered();
                    let mut chunker = StreamChunker::new(params);
                    let on_progress = |n| progress.advance(n);
                    for job in jobs {
                        let outcome = if let Err(e) = cancel.check() {
                            Err(ReadFailure::Fatal(e))
                        } else {
                            read_file(
                                &job.path,
                                &job.fingerprint,
                                &mut chunker,
                                sink,
                                &on_progress,
                            )
                        };
                        let FileJob {
                            dir,
                            slot,
                            path,
                            fingerprint,
                        } = job;
                        // Capacity equals the walker's in-flight limit, so
                        // this never blocks.
                        let _ = results.send(FileResult {
                            dir,
                            slot,
                            path,
                            fingerprint,
                            outcome,
                        });
                    }
                })
                .expect("spawning a reader thread");
        }
        drop((job_rx, result_tx));
        let mut walker = Walker {
            repo,
            sink,
            source,
            repo_root,
            progress,
            cancel,
            owners: OwnerNames::default(),
            dirs: Vec::new(),
            free: Vec::new(),
            jobs: job_tx,
            results: result_rx,
            in_flight: 0,
            links: HashMap::new(),
            cache: repo.file_cache_index().file_cache_batch(),
            root: None,
            walked: Walked {
                root: ChunkId([0; 32]),
                files: 0,
                directories: 0,
                bytes_total: 0,
                bytes_read: 0,
                missed: Vec::new(),
            },
        };
        let result = walker.run(selection);
        // Closing the job queue lets the readers finish.
        let Walker { jobs, .. } = walker;
        drop(jobs);
        result
    })
}

impl<'a, 's> Walker<'a, 's> {
    fn run(&mut self, selection: &Selection) -> Result<Walked> {
        let mut stack = vec![DirWork {
            path: PathBuf::from("/"),
            selection,
            place: None,
        }];
        while let Some(DirWork {
            path,
            selection,
            place: parent,
        }) = stack.pop()
        {
            self.cancel.check()?;
            while let Ok(result) = self.results.try_recv() {
                self.finish_file(result)?;
            }
            let subdirs = self.list_dir(path, selection, parent)?;
            stack.extend(subdirs.into_iter().rev());
        }
        while self.in_flight > 0 {
            let result = self
                .results
                .recv()
                .map_err(|_| Error::Interrupted("reader threads stopped".into()))?;
            self.finish_file(result)?;
        }
        self.cache.flush()?;
        self.walked.root = self
            .root
            .ok_or_else(|| Error::Interrupted("the root directory was not stored".into()))?;
        Ok(std::mem::replace(
            &mut self.walked,
            Walked {
                root: ChunkId([0; 32]),
                files: 0,
                directories: 0,
                bytes_total: 0,
                bytes_read: 0,
                missed: Vec::new(),
            },
        ))
    }

    fn miss(&mut self, path: &Path, reason: String) {
        tracing::warn!(path = %path.display(), reason = %reason, "missed");
        self.walked.missed.push(MissedFile {
            path: path.as_os_str().as_bytes().to_vec(),
            reason,
        });
    }

    /// Lists one directory into a pending tree; returns its subdirectories
    /// to walk, with their selections and places in this directory.
    fn list_dir<'sel>(
        &mut self,
        path: PathBuf,
        selection: &'sel Selection,
        parent: Option<(usize, usize)>,
    ) -> Result<Vec<DirWork<'sel>>> {
        static WHOLE: Selection = Selection {
            whole: true,
            children: BTreeMap::new(),
        };
        let mut names: Vec<OsString> = if selection.whole {
            match std::fs::read_dir(&path)
                .and_then(|entries| entries.map(|e| e.map(|e| e.file_name())).collect())
            {
                Ok(names) => names,
                Err(e) => {
                    self.miss(&path, super::reader::Missed::from_io(&e).0);
                    if let Some((dir, slot)) = parent {
                        self.mark_missed(dir, slot)?;
                    }
                    return Ok(Vec::new());
                }
            }
        } else {
            selection.children.keys().cloned().collect()
        };
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));

        let idx = self.alloc(PendingDir {
            path: path.clone(),
            nodes: Vec::new(),
            missed: Vec::new(),
            pending: 0,
            listed: false,
            parent,
        });
        self.walked.directories += 1;
        let mut subdirs = Vec::new();
        for name in names {
            let child = path.join(&name);
            let meta = match std::fs::symlink_metadata(&child) {
                Ok(meta) => meta,
                Err(e) => {
                    self.miss(&child, super::reader::Missed::from_io(&e).0);
                    continue;
                }
            };
            if meta.is_dir() && (meta.dev(), meta.ino()) == self.repo_root {
                tracing::info!(path = %child.display(), "skipping the repository itself");
                continue;
            }
            let node = match node_for(name.as_bytes(), &child, &meta, &mut self.owners) {
                Ok(node) => node,
                Err(e) => {
                    self.miss(&child, super::reader::Missed::from_io(&e).0);
                    continue;
                }
            };
            let dir = self.dirs[idx].as_mut().expect("allocated above");
            dir.nodes.push(node);
            dir.missed.push(false);
            let slot = dir.nodes.len() - 1;
            if meta.is_dir() {
                dir.pending += 1;
                let child_selection = if selection.whole {
                    &WHOLE
                } else {
                    &selection.children[&name]
                };
                subdirs.push(DirWork {
                    path: child,
                    selection: child_selection,
                    place: Some((idx, slot)),
                });
            } else if meta.is_file() {
                self.walked.files += 1;
                self.walked.bytes_total += meta.size();
                self.add_file(idx, slot, child, &meta)?;
            }
        }
        if self.walked.directories % 64 == 0 {
            self.progress
                .message(format!("{} files", self.walked.files));
        }
        self.dirs[idx].as_mut().expect("allocated above").listed = true;
        self.try_finish_dir(idx)?;
        Ok(subdirs)
    }

    fn alloc(&mut self, dir: PendingDir) -> usize {
        match self.free.pop() {
            Some(idx) => {
                self.dirs[idx] = Some(dir);
                idx
            }
            None => {
                self.dirs.push(Some(dir));
                self.dirs.len() - 1
            }
        }
    }

    fn node_mut(&mut self, dir: usize, slot: usize) -> &mut Node {
        &mut self.dirs[dir].as_mut().expect("pending directory").nodes[slot]
    }

    fn set_extents(&mut self, dir: usize, slot: usize, extents: Vec<Extent>) {
        // The size is what was read: a file that grew or shrank between its
        // stat and its read (or between two names of a hard link) must
        // still have extents that add up to its size.
        let node = self.node_mut(dir, slot);
        node.size = extents.iter().map(Extent::len).sum();
        node.kind = NodeKind::File { extents };
    }

    fn mark_missed(&mut self, dir: usize, slot: usize) -> Result<()> {
        let pending = self.dirs[dir].as_mut().expect("pending directory");
        pending.missed[slot] = true;
        pending.pending -= 1;
        self.try_finish_dir(dir)
    }

    fn add_file(
        &mut self,
        dir: usize,
        slot: usize,
        path: PathBuf,
        meta: &std::fs::Metadata,
    ) -> Result<()> {
        let fingerprint = fingerprint(meta);
        if meta.nlink() > 1 {
            match self.links.get_mut(&(meta.dev(), meta.ino())) {
                Some(LinkState::Done(Ok(extents))) => {
                    let extents = extents.clone();
                    self.set_extents(dir, slot, extents);
                    return Ok(());
                }
                Some(LinkState::Done(Err(reason))) => {
                    let reason = reason.clone();
                    self.miss(&path, reason);
                    let d = self.dirs[dir].as_mut().expect("pending directory");
                    d.missed[slot] = true;
                    return Ok(());
                }
                Some(LinkState::Waiting(waiters)) => {
                    waiters.push((dir, slot));
                    self.dirs[dir].as_mut().expect("pending directory").pending += 1;
                    return Ok(());
                }
                None => {
                    self.links
                        .insert((meta.dev(), meta.ino()), LinkState::Waiting(Vec::new()));
                }
            }
        }
        if let Some(extents) = self.cached_extents(&path, &fingerprint)? {
            self.progress.advance(fingerprint.size);
            self.resolve_links(&fingerprint, Ok(extents.clone()))?;
            self.set_extents(dir, slot, extents);
            return Ok(());
        }
        self.dirs[dir].as_mut().expect("pending directory").pending += 1;
        while self.in_flight >= MAX_IN_FLIGHT {
            let result = self
                .results
                .recv()
                .map_err(|_| Error::Interrupted("reader threads stopped".into()))?;
            self.finish_file(result)?;
        }
        self.jobs
            .send(FileJob {
                dir,
                slot,
                path,
                fingerprint,
            })
            .map_err(|_| Error::Interrupted("reader threads stopped".into()))?;
        self.in_flight += 1;
        Ok(())
    }

    /// The chunk list of an unchanged file, if the cache can prove it.
    fn cached_extents(
        &self,
        path: &Path,
        fingerprint: &FileFingerprint,
    ) -> Result<Option<Vec<Extent>>> {
        let Some(record) = self
            .repo
            .file_cache_index()
            .cached_file(self.source, path.as_os_str().as_bytes())?
        else {
            return Ok(None);
        };
        if record.fingerprint != *fingerprint {
            return Ok(None);
        }
        // Chunks of a run that never committed may be missing, and chunks
        // moved to the cold tier must be stored warm again.
        let ids: Vec<ChunkId> = record
            .extents
            .iter()
            .filter_map(|e| match e {
                Extent::Data { id, .. } => Some(*id),
                Extent::Hole { .. } => None,
            })
            .collect();
        if !self.repo.chunk_index().has_all_warm_chunks(&ids)? {
            return Ok(None);
        }
        Ok(Some(record.extents))
    }

    fn finish_file(&mut self, result: FileResult) -> Result<()> {
        self.in_flight -= 1;
        let FileResult {
            dir,
            slot,
            path,
            fingerprint,
            outcome,
        } = result;
        let resolved = match outcome {
            Ok(content) => {
                self.walked.bytes_read += content.bytes_read;
                let record = FileCacheRecord {
                    fingerprint,
                    extents: content.extents,
                };
                self.cache
                    .put(self.source, path.as_os_str().as_bytes(), &record)?;
                self.set_extents(dir, slot, record.extents.clone());
                Ok(record.extents)
            }
            Err(ReadFailure::Fatal(e)) => return Err(e),
            Err(ReadFailure::Missed(missed)) => {
                self.miss(&path, missed.0.clone());
                self.dirs[dir].as_mut().expect("pending directory").missed[slot] = true;
                Err(missed.0)
            }
        };
        self.resolve_links(&fingerprint, resolved)?;
        let pending = self.dirs[dir].as_mut().expect("pending directory");
        pending.pending -= 1;
        self.try_finish_dir(dir)
    }

    /// Hands the first name's content to later names of a hard link.
    fn resolve_links(
        &mut self,
        fingerprint: &FileFingerprint,
        outcome: Result<Vec<Extent>, String>,
    ) -> Result<()> {
        let key = (fingerprint.device, fingerprint.inode);
        let Some(state) = self.links.get_mut(&key) else {
            return Ok(());
        };
        let LinkState::Waiting(waiters) =
            std::mem::replace(state, LinkState::Done(outcome.clone()))
        else {
            return Ok(());
        };
        for (dir, slot) in waiters {
            match &outcome {
                Ok(extents) => {
                    self.set_extents(dir, slot, extents.clone());
                    self.dirs[dir].as_mut().expect("pending directory").pending -= 1;
                    self.try_finish_dir(dir)?;
                }
                Err(reason) => {
                    let path = self.dirs[dir]
                        .as_ref()
                        .expect("pending directory")
                        .path
                        .join(OsString::from_vec(
                            self.dirs[dir].as_ref().expect("pending directory").nodes[slot]
                                .name
                                .clone(),
                        ));
                    self.miss(&path, reason.clone());
                    self.mark_missed(dir, slot)?;
                }
            }
        }
        Ok(())
    }

    /// Stores every directory that is complete, from `idx` up.
    fn try_finish_dir(&mut self, mut idx: usize) -> Result<()> {
        loop {
            let ready = self.dirs[idx]
                .as_ref()
                .is_some_and(|d| d.listed && d.pending == 0);
            if !ready {
                return Ok(());
            }
            let dir = self.dirs[idx].take().expect("checked above");
            self.free.push(idx);
            let nodes = dir
                .nodes
                .into_iter()
                .zip(dir.missed)
                .filter(|(_, missed)| !missed)
                .map(|(n, _)| n)
                .collect();
            let bytes = Tree { nodes }.encode();
            if bytes.len() > MAX_CHUNK_LEN as usize {
                return Err(Error::InvalidInput(format!(
                    "directory {} has too many entries to store as one tree ({} bytes)",
                    dir.path.display(),
                    bytes.len()
                )));
            }
            let id = ChunkId::of(&bytes);
            self.sink.submit(id, ChunkKind::Tree, &bytes)?;
            match dir.parent {
                None => {
                    self.root = Some(id);
                    return Ok(());
                }
                Some((parent, slot)) => {
                    self.node_mut(parent, slot).kind = NodeKind::Directory { subtree: id };
                    self.dirs[parent]
                        .as_mut()
                        .expect("pending directory")
                        .pending -= 1;
                    idx = parent;
                }
            }
        }
    }
}
