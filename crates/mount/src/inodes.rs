//! The inode table of the mount: which inode number is which object, with
//! the kernel's lookup count of each.
//!
//! The kernel holds an inode for as long as its lookup count (one per
//! `lookup` reply and per `readdirplus` entry other than `.` and `..`) has
//! not been given back by `forget`; at zero the inode is dropped, so the
//! table holds what the kernel caches, not everything ever browsed.
//! An inode made for an entry the kernel did not take (the one that did not
//! fit a `readdirplus` reply) waits in a bounded queue and is dropped when
//! it overflows, unless the kernel has looked it up by then.
//!
//! Numbers are never reused during a mount. A name is bound to one object:
//! when a name comes to stand for another object (`latest` moved, a
//! restore point's name now names another one), it gets a new inode, so
//! the kernel's cached entry fails revalidation instead of serving the
//! old object. All names of a hard-linked file share one inode while any
//! of them is held.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::namespace::{new_inode, Child, Inode, Kind, ROOT};
use crate::id::RestorePointId;

/// Listed-but-never-looked-up entries kept for `readdir`'s numbers.
const UNREFERENCED_MAX: usize = 1024;

type NameKey = (u64, Vec<u8>);
/// A hard-linked file: its restore point, the guest volume it is in (empty
/// for a file tree), and its link id or guest inode number.
type LinkKey = (RestorePointId, Arc<str>, u64);

struct Slot {
    inode: Arc<Inode>,
    lookups: u64,
    /// Every name that was bound to this inode (some may since be rebound).
    names: Vec<NameKey>,
}

struct Table {
    slots: HashMap<u64, Slot>,
    names: HashMap<NameKey, u64>,
    links: HashMap<LinkKey, u64>,
    next_ino: u64,
    unreferenced: VecDeque<u64>,
}

pub struct InodeTable {
    table: Mutex<Table>,
}

/// Whether an inode made for `existing` still stands for the object
/// `wanted` describes. Below a restore point nothing changes; above it the
/// catalog does.
fn same_object(existing: &Kind, wanted: &Kind) -> bool {
    match (existing, wanted) {
        (Kind::Latest(a), Kind::Latest(b)) => a == b,
        (Kind::FilesPoint(a), Kind::FilesPoint(b)) | (Kind::VmPoint(a), Kind::VmPoint(b)) => {
            a.id == b.id
        }
        (Kind::Source(a), Kind::Source(b)) | (Kind::Vm(a), Kind::Vm(b)) => a == b,
        _ => std::mem::discriminant(existing) == std::mem::discriminant(wanted),
    }
}

fn link_key(kind: &Kind) -> Option<LinkKey> {
    match kind {
        Kind::Entry { rp, node, .. } if node.link_id != 0 => Some((rp.id, Arc::from(""), node.link_id)),
        // A guest directory too: a second name of one (a loop of a
        // damaged file system) is then the same inode, which the kernel
        // refuses to place below itself instead of descending forever.
        // Keyed by the open file system too: FAT numbers its nodes as it
        // lists them, so another instance of one volume numbers anew.
        Kind::GuestNode { rp, fs, stat, volume, .. }
            if stat.nlink > 1 || stat.kind == strata_guest::fs::FileKind::Dir =>
        {
            let instance = Arc::as_ptr(fs) as *const () as usize;
            Some((rp.id, Arc::from(format!("{volume}#{instance:x}")), stat.node))
        }
        _ => None,
    }
}

impl Table {
    fn remove(&mut self, ino: u64) {
        if ino == ROOT {
            return;
        }
        let Some(slot) = self.slots.remove(&ino) else {
            return;
        };
        for key in slot.names {
            if self.names.get(&key) == Some(&ino) {
                self.names.remove(&key);
            }
        }
        if let Some(link) = link_key(&slot.inode.kind) {
            if self.links.get(&link) == Some(&ino) {
                self.links.remove(&link);
            }
        }
    }

    fn bind(&mut self, key: NameKey, ino: u64) -> Arc<Inode> {
        self.names.insert(key.clone(), ino);
        let slot = self.slots.get_mut(&ino).expect("bound inode exists");
        if !slot.names.contains(&key) {
            slot.names.push(key);
        }
        slot.inode.clone()
    }
}

impl Default for InodeTable {
    fn default() -> Self {
        Self::new()
    }
}

impl InodeTable {
    pub fn new() -> Self {
        let mut slots = HashMap::new();
        slots.insert(
            ROOT,
            Slot {
                inode: new_inode(ROOT, ROOT, Kind::Root),
                lookups: 1,
                names: Vec::new(),
            },
        );
        InodeTable {
            table: Mutex::new(Table {
                slots,
                names: HashMap::new(),
                links: HashMap::new(),
                next_ino: ROOT + 1,
                unreferenced: VecDeque::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().expect("inode table")
    }

    pub fn get(&self, ino: u64) -> Option<Arc<Inode>> {
        self.lock().slots.get(&ino).map(|s| s.inode.clone())
    }

    /// Inodes held now.
    pub fn held(&self) -> usize {
        self.lock().slots.len()
    }

    /// The inode for `child` of `parent`: the one its name is bound to if
    /// that still stands for the same object, else a hard-link sibling,
    /// else a new one. The caller counts a lookup if it hands the inode
    /// to the kernel as an entry.
    pub fn intern(&self, parent: u64, child: &Child) -> Arc<Inode> {
        let key = (parent, child.name.clone());
        let mut t = self.lock();
        if let Some(&ino) = t.names.get(&key) {
            if let Some(slot) = t.slots.get(&ino) {
                if same_object(&slot.inode.kind, &child.kind) {
                    return slot.inode.clone();
                }
            }
        }
        let link = link_key(&child.kind);
        if let Some(ino) = link.as_ref().and_then(|l| t.links.get(l).copied()) {
            return t.bind(key, ino);
        }
        let ino = t.next_ino;
        t.next_ino += 1;
        t.slots.insert(
            ino,
            Slot {
                inode: new_inode(ino, parent, child.kind.clone()),
                lookups: 0,
                names: Vec::new(),
            },
        );
        if let Some(link) = link {
            t.links.insert(link, ino);
        }
        t.unreferenced.push_back(ino);
        while t.unreferenced.len() > UNREFERENCED_MAX {
            let old = t.unreferenced.pop_front().expect("queue not empty");
            if t.slots.get(&old).is_some_and(|s| s.lookups == 0) {
                t.remove(old);
            }
        }
        t.bind(key, ino)
    }

    /// The inode `child`'s name is bound to now, if it is still that object.
    pub fn bound(&self, parent: u64, child: &Child) -> Option<u64> {
        let t = self.lock();
        let ino = *t.names.get(&(parent, child.name.clone()))?;
        let slot = t.slots.get(&ino)?;
        same_object(&slot.inode.kind, &child.kind).then_some(ino)
    }

    /// The kernel took one more reference to `ino`.
    pub fn looked_up(&self, ino: u64) {
        if let Some(slot) = self.lock().slots.get_mut(&ino) {
            slot.lookups += 1;
        }
    }

    /// The kernel gave back `count` references to `ino`.
    pub fn forget(&self, ino: u64, count: u64) {
        let mut t = self.lock();
        let Some(slot) = t.slots.get_mut(&ino) else {
            return;
        };
        slot.lookups = slot.lookups.saturating_sub(count);
        if slot.lookups == 0 {
            t.remove(ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latest(target: &str) -> Child {
        Child {
            name: b"latest".to_vec(),
            kind: Kind::Latest(target.as_bytes().to_vec()),
        }
    }

    #[test]
    fn a_name_that_names_another_object_gets_a_new_inode() {
        let table = InodeTable::new();
        let a = table.intern(ROOT, &latest("t1"));
        assert_eq!(table.intern(ROOT, &latest("t1")).ino, a.ino);
        let b = table.intern(ROOT, &latest("t2"));
        assert_ne!(a.ino, b.ino);
        assert!(matches!(&table.get(b.ino).unwrap().kind, Kind::Latest(t) if t == b"t2"));
    }

    #[test]
    fn forgotten_inodes_are_dropped_and_numbers_not_reused() {
        let table = InodeTable::new();
        let a = table.intern(ROOT, &latest("t1"));
        table.looked_up(a.ino);
        table.looked_up(a.ino);
        table.forget(a.ino, 1);
        assert!(table.get(a.ino).is_some());
        table.forget(a.ino, 1);
        assert!(table.get(a.ino).is_none());
        assert_eq!(table.held(), 1);
        let again = table.intern(ROOT, &latest("t1"));
        assert!(again.ino > a.ino);
        table.forget(ROOT, 5);
        assert!(table.get(ROOT).is_some());
    }

    #[test]
    fn never_looked_up_entries_are_bounded() {
        let table = InodeTable::new();
        for i in 0..UNREFERENCED_MAX * 2 {
            table.intern(
                ROOT,
                &Child {
                    name: format!("n{i}").into_bytes(),
                    kind: Kind::Source(format!("n{i}")),
                },
            );
        }
        assert!(table.held() <= UNREFERENCED_MAX + 1);
    }
}
