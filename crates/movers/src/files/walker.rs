//! The walker: takes the selected directories depth first in name order
//! from lister threads, turns entries into tree nodes, hands files to
//! reader threads, and stores each directory's tree once everything below
//! it is done.
//!
//! A directory whose listing is exactly as recorded reuses its tree (see
//! `listing`). In any other, files that the file cache proves unchanged
//! (same size, mtime, ctime, inode and device, and chunks still indexed)
//! reuse their chunk list; others become jobs for reader threads. At most
//! `MAX_IN_FLIGHT` files are queued and `LIST_AHEAD` directories listed
//! ahead, which bounds memory whatever the tree's size.

mod links;
mod listing;
mod tree;

use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use self::links::LinkState;
use self::listing::{ListContext, ListJob, ListedDir};
use self::tree::PendingDir;
use super::selection::Selection;
use crate::cancel::CancelToken;
use crate::chunker::StreamChunker;
use crate::error::{Error, Result};
use crate::file_cache::{FileCache, FileCacheBatch, RunId};
use crate::id::ChunkId;
use crate::index::{FileCacheRecord, FileFingerprint};
use crate::metadata::{fingerprint, EntryStat};
use crate::progress::Progress;
use crate::reader::{read_file, FileContent, Missed, ReadFailure};
use crate::restore_point::MissedFile;
use crate::session::BackupSession;
use crate::tree::Extent;

const MAX_IN_FLIGHT: usize = 256;
/// Directories listed ahead of the walker.
const LIST_AHEAD: usize = 64;
/// Lister threads: mostly waiting for the disk when the cache is cold
/// (an unchanged backup of the benchmark tree, cold, took 2.1 s with 8
/// and 1.6 s with 16, medians of 5 in one run on the 2-core machine).
const LISTERS: usize = 16;

/// What the walk found and stored.
pub(super) struct Walked {
    pub(super) root: ChunkId,
    pub(super) files: u64,
    pub(super) directories: u64,
    /// Directories whose recorded tree was reused, nothing below looked at.
    pub(super) directories_unchanged: u64,
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
            directories_unchanged: 0,
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

/// A directory still to be walked, and where its node sits in its parent.
struct DirWork<'sel> {
    path: PathBuf,
    selection: &'sel Selection,
    place: Option<(usize, usize)>,
    /// Where its listing arrives, once asked for.
    listing: Option<Receiver<ListReply>>,
}

type ListReply = Result<std::result::Result<ListedDir, Missed>>;

/// What identifies this run's directory records, and which earlier runs'
/// records may be trusted.
pub(super) struct RunRecords {
    pub(super) run: RunId,
    pub(super) trusted: HashSet<RunId>,
}

struct Walker<'a> {
    session: &'a dyn BackupSession,
    source: &'a str,
    run: RunId,
    progress: &'a dyn Progress,
    cancel: &'a CancelToken,
    listers: Sender<ListJob>,
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

/// Readers per core. Reading many small files from a cold cache is
/// mostly waiting for the disk, and a disk (virtio, NVMe, a SAN LUN)
/// answers several requests at once: on this project's 2-core test
/// machine, reading the benchmark tree cold took 12.9 s with 2 readers,
/// 7.2 s with 8 and 5.7 s with 16, and a cold first backup 9.1 s with 8
/// readers and 8.0 s with 16. Chunking, hashing and compressing still get
/// every core.
const READERS_PER_CORE: usize = 8;
const MAX_READERS: usize = 16;

fn reader_threads() -> usize {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    (cores * READERS_PER_CORE).clamp(2, MAX_READERS)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn walk(
    session: &dyn BackupSession,
    file_cache: &FileCache,
    source: &str,
    selection: &Selection,
    repo_root: Option<(u64, u64)>,
    runs: RunRecords,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<Walked> {
    let readers = reader_threads();
    let (job_tx, job_rx) = bounded::<FileJob>(MAX_IN_FLIGHT);
    let (result_tx, result_rx) = bounded::<FileResult>(MAX_IN_FLIGHT);
    let (list_tx, list_rx) = unbounded::<ListJob>();
    let context = ListContext {
        session,
        file_cache,
        source,
        repo_root,
        trusted_runs: runs.trusted,
    };
    std::thread::scope(|scope| {
        for n in 0..LISTERS {
            let (jobs, context) = (list_rx.clone(), &context);
            std::thread::Builder::new()
                .name(format!("list-{n}"))
                .spawn_scoped(scope, move || listing::serve(context, jobs))
                .expect("spawning a lister thread");
        }
        drop(list_rx);
        for n in 0..readers {
            let (jobs, results) = (job_rx.clone(), result_tx.clone());
            let settings = session.settings();
            std::thread::Builder::new()
                .name(format!("read-{n}"))
                .spawn_scoped(scope, move || {
                    let _span = tracing::debug_span!("read").entered();
                    let mut chunker = StreamChunker::with_seed(settings.chunker, settings.chunker_seed);
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
            source,
            run: runs.run,
            progress,
            cancel,
            listers: list_tx,
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
        // Closing the queues lets the readers and listers finish.
        let Walker { jobs, listers, .. } = walker;
        drop((jobs, listers));
        result
    })
}

impl<'a> Walker<'a> {
    fn run(&mut self, selection: &Selection) -> Result<Walked> {
        let mut stack = vec![DirWork {
            path: PathBuf::from("/"),
            selection,
            place: None,
            listing: None,
        }];
        while let Some(work) = self.next_dir(&mut stack)? {
            self.cancel.check()?;
            while let Ok(result) = self.results.try_recv() {
                self.finish_file(result)?;
            }
            let subdirs = self.enter_dir(work)?;
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

    /// Pops the next directory, asking the listers for it and the few
    /// after it if they have not been asked yet.
    fn next_dir<'sel>(&self, stack: &mut Vec<DirWork<'sel>>) -> Result<Option<DirWork<'sel>>> {
        for work in stack.iter_mut().rev().take(LIST_AHEAD) {
            if work.listing.is_none() {
                let (reply, listing) = bounded(1);
                let names = (!work.selection.whole)
                    .then(|| work.selection.children.keys().cloned().collect());
                self.listers
                    .send(ListJob {
                        path: work.path.clone(),
                        names,
                        reply,
                    })
                    .map_err(|_| Error::Interrupted("lister threads stopped".into()))?;
                work.listing = Some(listing);
            }
        }
        Ok(stack.pop())
    }

    /// Takes one directory's listing into a pending tree; returns its
    /// subdirectories to walk, with their selections and places in it.
    fn enter_dir<'sel>(&mut self, work: DirWork<'sel>) -> Result<Vec<DirWork<'sel>>> {
        let DirWork {
            path,
            selection,
            place: parent,
            listing,
        } = work;
        let listed = listing
            .and_then(|listing| listing.recv().ok())
            .ok_or_else(|| Error::Interrupted("lister threads stopped".into()))??;
        let listed = match listed {
            Ok(listed) => listed,
            Err(missed) => {
                self.miss(&path, missed.0);
                if let Some((dir, slot)) = parent {
                    self.mark_missed(dir, slot)?;
                }
                return Ok(Vec::new());
            }
        };
        for (child, missed) in listed.missed {
            self.miss(&child, missed.0);
        }
        let idx = self.alloc(PendingDir::new(
            path,
            parent,
            listed.digest,
            listed.unchanged,
        ));
        self.walked.directories += 1;
        let mut subdirs = Vec::new();
        let reused = self.dirs[idx].as_ref().is_some_and(PendingDir::reused);
        self.walked.directories_unchanged += u64::from(reused);
        for mut entry in listed.entries {
            if entry.stat.is_file() {
                self.walked.files += 1;
                self.walked.bytes_total += entry.stat.size;
                if reused {
                    self.progress.advance(entry.stat.size);
                    continue;
                }
            }
            let Some(slot) = self.add_entry(idx, &mut entry)? else {
                continue;
            };
            if entry.stat.is_dir() {
                let name = entry.path.file_name().unwrap_or_default().to_owned();
                subdirs.push(DirWork {
                    path: entry.path,
                    selection: selection.child(&name),
                    place: Some((idx, slot)),
                    listing: None,
                });
            } else if entry.stat.is_file() {
                self.add_file(idx, slot, entry.path, &entry.stat, entry.cached)?;
            }
        }
        if self.walked.directories.is_multiple_of(64) {
            self.progress
                .message(format!("{} files", self.walked.files));
        }
        self.dirs[idx].as_mut().expect("allocated above").listed = true;
        self.try_finish_dir(idx)?;
        Ok(subdirs)
    }

    /// Gives `entry` a slot in the pending directory `idx` (a node, or in
    /// a reused directory a subtree slot for a subdirectory); `None` if it
    /// has none (missed, or a reused directory's non-directory entry).
    fn add_entry(
        &mut self,
        idx: usize,
        entry: &mut listing::ListedEntry,
    ) -> Result<Option<usize>> {
        let dir = self.dirs[idx].as_mut().expect("pending directory");
        if dir.reused() {
            if !entry.stat.is_dir() {
                return Ok(None);
            }
            dir.subtrees.push(None);
            dir.pending += 1;
            return Ok(Some(dir.subtrees.len() - 1));
        }
        let node = match entry.node.take() {
            Some(Ok(node)) => node,
            Some(Err(missed)) => {
                self.miss(&entry.path, missed.0);
                return Ok(None);
            }
            None => {
                return Err(Error::Interrupted(format!(
                    "lister gave no node for {}",
                    entry.path.display()
                )))
            }
        };
        dir.nodes.push(node);
        dir.missed.push(false);
        if entry.stat.is_dir() {
            dir.pending += 1;
        }
        Ok(Some(dir.nodes.len() - 1))
    }

    fn add_file(
        &mut self,
        dir: usize,
        slot: usize,
        path: PathBuf,
        stat: &EntryStat,
        cached: Option<Vec<Extent>>,
    ) -> Result<()> {
        let fingerprint = fingerprint(stat);
        if stat.nlink > 1 && self.follow_link(dir, slot, &path, stat) {
            return Ok(());
        }
        if let Some(extents) = cached {
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
