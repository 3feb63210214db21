//! Files that replace existing ones are made durable in batches before
//! they are renamed over the old ones.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::walker::OpenDir;
use super::Outcome;
use crate::error::IoContext;
use crate::fsops;

/// Files that replace existing ones, complete and waiting for their
/// rename. One `syncfs` per batch makes their data durable: an fsync per
/// file made in-place restores about four times slower.
pub(super) struct Replacements<'a> {
    pending: Mutex<Vec<Replacement<'a>>>,
}

pub(super) struct Replacement<'a> {
    pub(super) dir: Arc<OpenDir<'a>>,
    pub(super) partial: OsString,
    pub(super) name: OsString,
    pub(super) shown: PathBuf,
    pub(super) file: std::fs::File,
}

const REPLACEMENT_BATCH: usize = 256;

impl<'a> Replacements<'a> {
    pub(super) fn new() -> Self {
        Replacements {
            pending: Mutex::new(Vec::new()),
        }
    }

    pub(super) fn add(&self, replacement: Replacement<'a>, outcome: &Outcome) {
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

    pub(super) fn finish(&self, outcome: &Outcome) {
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
