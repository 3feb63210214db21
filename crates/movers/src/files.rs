//! The file-tree data mover: takes a backup request, walks the selected
//! paths and builds the restore point's Merkle tree while readers chunk
//! file contents, then commits the manifest.
//!
//! `selection` turns the request's paths into what the walk covers,
//! `walker` lists directories, reads files and stores trees, and
//! `scan` sizes the selection beside it for the progress bar.

mod scan;
mod selection;
mod walker;

use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use self::scan::scan_sizes;
use self::selection::{normalize, Selection};
use self::walker::{walk, RunRecords};
use super::file_cache::FileCache;
use crate::cancel::CancelToken;
use crate::error::{Error, IoContext, Result};
use crate::id::RestorePointId;
use crate::progress::Progress;
use crate::restore_point::{Manifest, RestorePoint, RestorePointKind};
use crate::session::BackupSession;
use crate::tree::Timestamp;

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
    /// How each disk of a VM backup was read (empty for file trees).
    pub disks: Vec<crate::vm::DiskRead>,
}

pub fn default_source() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Backs up the paths `request` names through `session`; `file_cache` is
/// this mover's memory of what it read before.
pub fn backup_files(
    session: &dyn BackupSession,
    file_cache: &FileCache,
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

    let restore_points: Vec<_> = session
        .restore_points()?
        .into_iter()
        .filter(|rp| rp.manifest.source == source)
        .collect();
    let parent = restore_points
        .iter()
        .max_by_key(|rp| rp.manifest.time.as_nanos())
        .map(|rp| rp.id);
    let runs = run_records(session, file_cache, &source, &restore_points)?;
    let run = runs.run;
    let repo_root = match session.local_root() {
        Some(root) => {
            let meta = std::fs::metadata(root).at("reading metadata of", root)?;
            Some((meta.dev(), meta.ino()))
        }
        None => None,
    };

    let stop_scan = AtomicBool::new(false);
    let walked = std::thread::scope(|scope| {
        if progress.is_visible() {
            let (selection, stop) = (&selection, &stop_scan);
            scope.spawn(move || scan_sizes(Path::new("/"), selection, stop, progress));
        }
        let result = walk(
            session, file_cache, &source, &selection, repo_root, runs, progress, cancel,
        );
        stop_scan.store(true, Ordering::Relaxed);
        result
    })?;
    progress.finish();
    tracing::info!(
        files = walked.files,
        directories = walked.directories,
        directories_unchanged = walked.directories_unchanged,
        bytes_read = walked.bytes_read,
        "walked"
    );

    // Every chunk durable, so the counters below are final.
    session.flush()?;
    let stats = session.counters().stats(
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
    // The last moment to stop: a backup stopped while its chunks were
    // still being stored (a data mover losing its task) commits nothing.
    cancel.check()?;
    let id = session.commit(&manifest)?;
    // Only now may the next run trust the directory records of this one.
    file_cache.record_run(&manifest.source, &run, &id)?;
    tracing::info!(restore_point = %id, files = manifest.stats.files, bytes_new = manifest.stats.bytes_new, "committed");
    Ok(BackupOutcome { id, manifest, disks: Vec::new() })
}

/// A new run's id, and the earlier runs of `source` whose directory
/// records may be trusted: those that committed a restore point that is
/// still kept and young enough to be all warm (as an incremental VM
/// backup requires of its parent). Anything else is read afresh.
fn run_records(
    session: &dyn BackupSession,
    file_cache: &FileCache,
    source: &str,
    restore_points: &[RestorePoint],
) -> Result<RunRecords> {
    let settings = session.settings();
    let warm: HashSet<RestorePointId> = restore_points
        .iter()
        .filter(|rp| settings.is_warm(&rp.manifest.time))
        .map(|rp| rp.id)
        .collect();
    let trusted = file_cache.trusted_runs(source, |id| warm.contains(id))?;
    Ok(RunRecords {
        run: rand::random(),
        trusted,
    })
}
