//! Which extended-attribute names any file of the mount has.
//!
//! GNU `ls -l` asks every file for `security.selinux` and
//! `system.posix_acl_access`, each a round trip to this process (two of
//! every three requests of `ls -lR`), and stops asking for the rest of its
//! run once one answers EOPNOTSUPP. That answer is only true of a name
//! that no file of the mount has, so a background thread reads every tree
//! of every file-tree restore point (each distinct tree once: unchanged
//! directories are shared between restore points) and walks every guest
//! file system of every VM restore point (a guest's names are known only
//! once all of its inodes are read), and collects the names. Until it has
//! covered every restore point the catalog lists, a missing
//! attribute is ENODATA, as before; when the catalog gains a restore point
//! it goes back to that until the new one is covered too. A tree that
//! cannot be read stops the scan for good: the mount then never claims a
//! name is absent everywhere.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Sender};

use strata_guest::vm::GuestView;

use crate::chunk_cache::ChunkCache;
use crate::error::Result;
use crate::id::{ChunkId, RestorePointId};
use crate::reader::RepositoryReader;
use crate::restore_point::{RestorePoint, RestorePointKind};
use crate::tree::NodeKind;
use crate::vm::description::VmDescription;

const POSIX_ACL: &[u8] = b"system.posix_acl_";

pub struct XattrNames {
    state: Mutex<State>,
    /// Every restore point of the last catalog has been scanned.
    complete: AtomicBool,
    /// Wakes the scanning thread; taken on drop, which ends it.
    wake: Option<Sender<()>>,
    scanner: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct State {
    /// The restore points of the last catalog, file trees first (they
    /// are the cheaper to scan).
    wanted: Vec<Arc<RestorePoint>>,
    covered: HashSet<RestorePointId>,
    trees: HashSet<ChunkId>,
    names: HashSet<Vec<u8>>,
    failed: bool,
}

impl XattrNames {
    /// Starts the scanning thread; it ends when this is dropped. Guests
    /// are read through `cache`, the mount's own, so the inodes read are
    /// there when someone browses them.
    pub fn start(repo: Arc<dyn RepositoryReader>, cache: Arc<ChunkCache>) -> Arc<Self> {
        let (wake, woken) = bounded(1);
        let names = Arc::new(XattrNames {
            state: Mutex::new(State::default()),
            complete: AtomicBool::new(false),
            wake: Some(wake),
            scanner: Mutex::new(None),
        });
        let weak = Arc::downgrade(&names);
        let spawned = std::thread::Builder::new()
            .name("xattr-names".into())
            .spawn(move || {
                while woken.recv().is_ok() {
                    scan(&repo, &cache, &weak);
                }
            });
        match spawned {
            Ok(thread) => *names.scanner.lock().expect("xattr scanner") = Some(thread),
            Err(e) => {
                tracing::warn!(error = %e, "no thread to scan xattr names; missing xattrs stay ENODATA")
            }
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
        let mut wanted = points.to_vec();
        wanted.sort_by_key(|rp| rp.manifest.kind != RestorePointKind::Files);
        s.wanted = wanted;
        if s.wanted.iter().all(|rp| s.covered.contains(&rp.id)) {
            // Also an empty catalog, which no scan completes.
            self.complete.store(!s.failed, Ordering::Release);
            return;
        }
        self.complete.store(false, Ordering::Release);
        if let Some(wake) = self.wake.as_ref().filter(|_| !s.failed) {
            let _ = wake.try_send(());
        }
    }
}

/// Ends the scan (within one tree) and waits for its thread, so that the
/// repository is closed before the mount returns.
impl Drop for XattrNames {
    fn drop(&mut self) {
        self.wake = None;
        let scanner = self.scanner.get_mut().ok().and_then(Option::take);
        if let Some(scanner) = scanner {
            // The scanner itself may hold the last reference for a moment.
            if scanner.thread().id() != std::thread::current().id() {
                let _ = scanner.join();
            }
        }
    }
}

/// Scans every wanted restore point not covered yet, then marks the set
/// complete (unless the catalog changed meanwhile: `cover` wakes the
/// thread again). Holds `names` only to look at or record its state, and
/// stops once it is dropped.
fn scan(repo: &Arc<dyn RepositoryReader>, cache: &Arc<ChunkCache>, names: &Weak<XattrNames>) {
    loop {
        let Some(this) = names.upgrade() else { return };
        let (rp, mut trees) = {
            let mut s = this.state();
            let next = s.wanted.iter().find(|rp| !s.covered.contains(&rp.id)).cloned();
            match next {
                Some(next) => (next, std::mem::take(&mut s.trees)),
                None => {
                    this.complete.store(!s.failed, Ordering::Release);
                    return;
                }
            }
        };
        drop(this);
        let mut found = HashSet::new();
        let dropped = || names.strong_count() == 0;
        let result = match rp.manifest.kind {
            RestorePointKind::Files => collect(repo.as_ref(), rp.manifest.root, &mut trees, &mut found, &dropped),
            RestorePointKind::Vm => collect_guest(repo, cache, &rp, &mut found, &dropped),
        };
        let Some(this) = names.upgrade() else { return };
        let mut s = this.state();
        s.trees = trees;
        s.names.extend(found);
        match result {
            Ok(true) => {
                s.covered.insert(rp.id);
            }
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(restore_point = %rp.id.short(), error = %e, "cannot list the xattr names of a restore point; missing xattrs stay ENODATA");
                s.failed = true;
                return;
            }
        }
    }
}

/// Adds the xattr names of every node below tree `root` to `names`,
/// reading only trees not in `seen`. False if `stop` said so first.
fn collect(
    repo: &dyn RepositoryReader,
    root: ChunkId,
    seen: &mut HashSet<ChunkId>,
    names: &mut HashSet<Vec<u8>>,
    stop: &dyn Fn() -> bool,
) -> Result<bool> {
    let mut pending = Vec::new();
    if seen.insert(root) {
        pending.push(root);
    }
    while let Some(id) = pending.pop() {
        if stop() {
            return Ok(false);
        }
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
    Ok(true)
}

/// Adds the xattr names of every node of every guest file system of VM
/// restore point `rp` to `names`. A volume without a readable file system
/// shows no files, so it adds nothing. False if `stop` said so first.
fn collect_guest(
    repo: &Arc<dyn RepositoryReader>,
    cache: &Arc<ChunkCache>,
    rp: &RestorePoint,
    names: &mut HashSet<Vec<u8>>,
    stop: &dyn Fn() -> bool,
) -> Result<bool> {
    let _span = tracing::debug_span!("guest_xattr_names", restore_point = %rp.id.short()).entered();
    let description = VmDescription::decode(&rp.manifest.root, &repo.read_chunk(&rp.manifest.root)?)?;
    let view = GuestView::new(Arc::clone(repo), &description, Arc::clone(cache));
    for disk in &view.disks {
        for volume in disk.volumes() {
            let Ok(fs) = disk.open(&volume.name) else { continue };
            match strata_guest::fs::xattr_names(fs.as_ref(), stop) {
                Some(found) => names.extend(found),
                None => return Ok(false),
            }
        }
    }
    Ok(true)
}
