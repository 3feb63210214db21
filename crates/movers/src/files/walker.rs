//! The walker: lists the selected directories depth first in name order,
//! turns entries into tree nodes, hands files to reader threads, and
//! stores each directory's tree once everything below it is done.
//!
//! Files that the file cache proves unchanged (same size, mtime, ctime,
//! inode and device, and chunks still indexed) reuse their chunk list;
//! others become jobs for reader threads. At most `MAX_IN_FLIGHT` files
//! are queued, which bounds memory whatever the tree's size.

mod links;
mod tree;

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crossbeam_channel::{bounded, Receiver, Sender};

use self::links::LinkState;
use self::tree::PendingDir;
use super::selection::Selection;
use crate::file_cache::{FileCache, FileCacheBatch};
use crate::metadata::{fingerprint, node_for, OwnerNames};
use crate::reader::{read_file, FileContent, ReadFailure};
use crate::cancel::CancelToken;
use crate::chunker::StreamChunker;
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::index::{FileCacheRecord, FileFingerprint};
use crate::progress::Progress;
use crate::restore_point::MissedFile;
use crate::session::BackupSession;
use crate::tree::Extent;

const MAX_IN_FLIGHT: usize = 256;

/// What the walk found and stored.
pub(super) struct Walked {
    pub(super) root: ChunkId,
    pub(super) files: u64,
    pub(super) directories: u64,
    pub(super) bytes_total: u64,
    pub(super) bytes_read: u64,
    pub(super) missed: Vec<MissedFile>,
}

impl Walked {
    fn empty() -> Self {
        Walked {
            root: ChunkId([0; 32]),
            files: 0,
            directories: 0,
            bytes_total: 0,
            bytes_read: 0,
            missed: Vec::new(),
        }
    }
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

struct Walker<'a> {
    session: &'a dyn BackupSession,
    file_cache: &'a FileCache,
    source: &'a str,
    /// The repository's own directory, never backed up into itself.
    repo_root: Option<(u64, u64)>,
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

pub(super) fn walk(
    session: &dyn BackupSession,
    file_cache: &FileCache,
    source: &str,
    selection: &Selection,
    repo_root: Option<(u64, u64)>,
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
            let params = session.settings().chunker;
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
                                session,
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
            session,
            file_cache,
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
            cache: file_cache.batch(),
            root: None,
            walked: Walked::empty(),
        };
        let result = walker.run(selection);
        // Closing the job queue lets the readers finish.
        let Walker { jobs, .. } = walker;
        drop(jobs);
        result
    })
}

impl<'a> Walker<'a> {
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
        Ok(std::mem::replace(&mut self.walked, Walked::empty()))
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
        let mut names: Vec<OsString> = if selection.whole {
            match std::fs::read_dir(&path)
                .and_then(|entries| entries.map(|e| e.map(|e| e.file_name())).collect())
            {
                Ok(names) => names,
                Err(e) => {
                    self.miss(&path, crate::reader::Missed::from_io(&e).0);
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
                    self.miss(&child, crate::reader::Missed::from_io(&e).0);
                    continue;
                }
            };
            if meta.is_dir() && Some((meta.dev(), meta.ino())) == self.repo_root {
                tracing::info!(path = %child.display(), "skipping the repository itself");
                continue;
            }
            let node = match node_for(name.as_bytes(), &child, &meta, &mut self.owners) {
                Ok(node) => node,
                Err(e) => {
                    self.miss(&child, crate::reader::Missed::from_io(&e).0);
                    continue;
                }
            };
            let dir = self.dirs[idx].as_mut().expect("allocated above");
            dir.nodes.push(node);
            dir.missed.push(false);
            let slot = dir.nodes.len() - 1;
            if meta.is_dir() {
                dir.pending += 1;
                subdirs.push(DirWork {
                    path: child,
                    selection: selection.child(&name),
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

    fn add_file(
        &mut self,
        dir: usize,
        slot: usize,
        path: PathBuf,
        meta: &std::fs::Metadata,
    ) -> Result<()> {
        let fingerprint = fingerprint(meta);
        if meta.nlink() > 1 && self.follow_link(dir, slot, &path, meta) {
            return Ok(());
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
            .file_cache
            .get(self.source, path.as_os_str().as_bytes())?
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
        if !self
            .session
            .stored_chunks(&ids)?
            .iter()
            .all(|stored| *stored)
        {
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
}
