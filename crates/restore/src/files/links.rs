//! Hard links: the first name of a hard-linked file is restored as a
//! file, and later names wait for it, then link to it.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

/// The first name of a hard-linked file. Later names are linked to the
/// file it names once that is complete (through a descriptor of the file,
/// not its name), and fail with it if it fails.
pub(super) struct LinkTarget {
    /// Relative to the restore target, for messages.
    pub(super) rel: PathBuf,
    state: Mutex<LinkState>,
    finished: Condvar,
}

pub(super) enum LinkState {
    Pending,
    Restored(Arc<OwnedFd>),
    Failed,
}

impl LinkTarget {
    pub(super) fn new(rel: PathBuf) -> Self {
        LinkTarget {
            rel,
            state: Mutex::new(LinkState::Pending),
            finished: Condvar::new(),
        }
    }

    pub(super) fn finish(&self, state: LinkState) {
        *self.state.lock().expect("link lock") = state;
        self.finished.notify_all();
    }

    /// The first name's file, once restored. Its job was queued before any
    /// job that waits here, so a worker is already on it.
    pub(super) fn wait(&self) -> Option<Arc<OwnedFd>> {
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
