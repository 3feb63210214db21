//! Restores a file-tree restore point, or selected paths of it, into a
//! target directory.
//!
//! A first pass (`plan`) walks the selected trees to validate every name
//! and to size the data, which is checked against the target's free
//! space: a refused restore writes nothing, not even the target
//! directory. The second pass (`walker`) creates entries in tree order
//! through directory descriptors. Files are created under a temporary
//! name by the walker and filled by `worker` threads (chunk reads,
//! decompression and writes run in parallel; holes are left unwritten);
//! only a file whose every chunk verified is renamed over its final name,
//! so a failure leaves an existing file as it was and never a truncated
//! one under the restored name. Every entry gets its metadata back
//! through a descriptor of its own (`metadata`). A directory's metadata
//! is set once everything below it is done, so its mtime is the backed-up
//! one.

mod links;
pub(crate) mod metadata;
mod plan;
mod replace;
mod walker;
mod worker;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::bounded;

use self::plan::{measure_node, measure_tree, select};
use self::replace::Replacements;
use self::walker::{OpenDir, RestoreWalker};
use self::worker::{run_job, Job};
use super::fsops;
use crate::cancel::CancelToken;
use crate::error::{Error, IoContext, Result};
use crate::progress::Progress;
use crate::reader::RepositoryReader;
use crate::restore_point::RestorePoint;

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

pub fn restore_files(
    repo: &dyn RepositoryReader,
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
    let target = super::plan_target(repo.local_root(), &request.target)?;
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
    let replacements = Replacements::new();

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
