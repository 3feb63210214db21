//! A quick count of the selected bytes, run beside the backup so the
//! progress bar can show an ETA before the walker gets there.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use super::selection::Selection;
use crate::progress::Progress;

/// Sums file sizes ahead of the backup so the progress bar can show an ETA.
pub(super) fn scan_sizes(
    dir: &Path,
    selection: &Selection,
    stop: &AtomicBool,
    progress: &dyn Progress,
) {
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
    for name in names {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let path = dir.join(&name);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let child = selection.child(&name);
        if meta.is_dir() {
            scan_sizes(&path, child, stop, progress);
        } else if meta.is_file() {
            progress.add_total(meta.size());
        }
    }
}
