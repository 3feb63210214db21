//! Which extended-attribute names any file of the mount has.
//!
//! GNU `ls -l` asks every file for `security.selinux` and
//! `system.posix_acl_access`, each a round trip to this process (two of
//! every three requests of `ls -lR`), and stops asking for the rest of its
//! run once one answers EOPNOTSUPP. That answer is only true of a name
//! that no file of the mount has, so a background thread reads every tree
//! of every file-tree restore point (each distinct tree once: unchanged
//! directories are shared between restore points) and collects the names.
//! Until it has covered every restore point the catalog lists, a missing
//! attribute is ENODATA, as before; when the catalog gains a restore point
//! it goes back to that until the new one is covered too. A tree that
//! cannot be read stops the scan for good: the mount then never claims a
//! name is absent everywhere.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::error::Result;
use crate::id::{ChunkId, RestorePointId};
use crate::repository::Repository;
use crate::restore_point::{RestorePoint, RestorePointKind};
use crate::tree::NodeKind;

const POSIX_ACL: &[u8] = b"system.posix_acl_";

pub struct XattrNames {
    state: Mutex<State>,
    /// Every restore point of the last catalog has been scanned.
    complete: AtomicBool,
    wake: Sender<()>,
}

#[derive(Default)]
struct State {
    /// File-tree restore points of the last catalog, with their root trees.
    wanted: Vec<(RestorePointId, ChunkId)>,
    covered: HashSet<RestorePointId>,
    trees: HashSet<ChunkId>,
    names: HashSet<Vec<u8>>,
    failed: bool,
}

impl XattrNames {
    /// Starts the scanning thread; it ends when this is dropped.
    pub fn start<M: Send + Sync + 'static>(repo: Arc<Repository<M>>) -> Arc<Self> {
        let (wake, woken) = bounded(1);
        let names = Arc::new(XattrNames {
            state: Mutex::new(State::default()),
            complete: AtomicBool::new(false),
            wake,
        });
        let weak = Arc::downgrade(&names);
        let spawned = std::thread::Builder::new()
            .name("xattr-names".into())
            .spawn(move || scan_when_woken(&repo, &weak, &woken));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no thread to scan xattr names; missing xattrs stay ENODATA");
        }
        names
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("xattr names")
    }

    /// Whether no file of the mount has an attribute called `name`: false
    /// until every restore point listed has been scanned. The POSIX ACL
    /// names go together: `ls` asks a directory for both and takes
    /// EOPNOTSUPP for either as "no ACLs on this file system".
    pub fn absent_everywhere(&self, name: &[u8]) -> bool {
        if !self.complete.load(Ordering::Acquire) {
            return false;
        }
        let s = self.state();
        if name.starts_with(POSIX_ACL) {
            !s.names.iter().any(|n| n.starts_with(POSIX_ACL))
        } else {
            !s.names.contains(name)
        }
    }

    /// The catalog now lists `points`. Called before any of them can be
    /// reached through the mount, so a restore point not yet scanned turns
    /// `absent_everywhere` off before its files can be asked.
    pub fn cover(&self, points: &[Arc<RestorePoint>]) {
        let mut s = self.state();
        s.wanted = points
            .iter()
            .filter(|rp| rp.manifest.kind == RestorePointKind::Files)
            .map(|rp| (rp.id, rp.manifest.root))
            .collect();
        if s.wanted.iter().all(|(id, _)| s.covered.contains(id)) {
            return;
        }
        self.complete.store(false, Ordering::Release);
        if !s.failed {
            let _ = self.wake.try_send(());
        }
    }

    /// Scans every wanted restore point not covered yet, then marks the
    /// set complete (unless the catalog changed meanwhile: `cover` wakes
    /// the thread again).
    fn scan<M: Send + Sync>(&self, repo: &Repository<M>) {
        loop {
            let (next, mut trees) = {
                let mut s = self.state();
                let next = s
                    .wanted
                    .iter()
                    .find(|(id, _)| !s.covered.contains(id))
                    .copied();
                match next {
                    Some(next) => (next, std::mem::take(&mut s.trees)),
                    None => {
                        self.complete.store(!s.failed, Ordering::Release);
                        return;
                    }
                }
            };
            let (rp, root) = next;
            let mut found = HashSet::new();
            let result = collect(repo, root, &mut trees, &mut found);
            let mut s = self.state();
            s.trees = trees;
            s.names.extend(found);
            if let Err(e) = result {
                tracing::warn!(restore_point = %rp.short(), error = %e, "cannot list the xattr names of a restore point; missing xattrs stay ENODATA");
                s.failed = true;
                return;
            }
            s.covered.insert(rp);
        }
    }
}

fn scan_when_woken<M: Send + Sync>(
    repo: &Repository<M>,
    names: &Weak<XattrNames>,
    woken: &Receiver<()>,
) {
    while woken.recv().is_ok() {
        match names.upgrade() {
            Some(names) => names.scan(repo),
            None => return,
        }
    }
}

/// Adds the xattr names of every node below tree `root` to `names`,
/// reading only trees not in `seen`.
fn collect<M: Send + Sync>(
    repo: &Repository<M>,
    root: ChunkId,
    seen: &mut HashSet<ChunkId>,
    names: &mut HashSet<Vec<u8>>,
) -> Result<()> {
    let mut pending = Vec::new();
    if seen.insert(root) {
        pending.push(root);
    }
    while let Some(id) = pending.pop() {
        for node in repo.load_tree(&id)?.nodes {
            for (name, _) in node.xattrs {
                names.insert(name);
            }
            if let NodeKind::Directory { subtree } = node.kind {
                if seen.insert(subtree) {
                    pending.push(subtree);
                }
            }
        }
    }
    Ok(())
}
