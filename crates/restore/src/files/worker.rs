//! The workers: each job fills one file (or links one more name of a
//! hard-linked file) and renames it into place.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::links::{LinkState, LinkTarget};
use super::metadata::apply_metadata;
use super::replace::{Replacement, Replacements};
use super::walker::OpenDir;
use super::Outcome;
use crate::cancel::CancelToken;
use crate::error::{Error, IoContext, Result};
use crate::progress::Progress;
use crate::reader::RepositoryReader;
use crate::fsops::{self, os};
use crate::tree::{Extent, Node, NodeKind};

pub(super) enum Job<'a> {
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

/// Runs one job; a failure is the entry's own and is reported, the rest of
/// the restore goes on.
pub(super) fn run_job<'a>(
    repo: &dyn RepositoryReader,
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
fn fill_file(
    repo: &dyn RepositoryReader,
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
