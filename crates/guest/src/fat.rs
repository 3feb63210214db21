//! FAT12, FAT16 and FAT32 (EFI system partitions, boot volumes, small
//! data disks) through the `fatfs` crate (0.3, MIT; FAT12/16/32 with long
//! names, tried on images from `mkfs.vfat` and `mcopy` and under 2,700
//! byte-flip runs without a panic). It wants `Read + Write + Seek` even to
//! read: the device below refuses every write. Its file system is neither
//! `Send` nor `Sync`, so one thread per volume owns it and answers
//! requests in turn; the mount's threads wait for their answer.
//!
//! FAT has no inode numbers, owners or permissions: nodes are numbered as
//! they are first listed (by path), files show mode 0644 (0444 when
//! read-only) and directories 0755, owned by root; times are the stored
//! local times read as UTC (FAT keeps no zone), modification times to 2
//! seconds. What `fatfs` does not check is checked here: a directory
//! nested deeper than [`MAX_DEPTH`] (a loop of a damaged volume) is an
//! error, and a file whose cluster chain ends before its size is an
//! error, not a short file.

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::mpsc::{channel, Sender};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::fs::{days_from_civil, DirEntry, FileKind, GuestFs, NodeId, Stat, Time};
use crate::probe::Content;
use crate::source::{Cursor, Window};

/// Deepest directory nesting read.
pub const MAX_DEPTH: usize = 64;
/// Most entries of one directory (FAT's own limit).
const MAX_ENTRIES: usize = 65_536;
const ROOT: NodeId = 1;

/// `fatfs` wants `Write` even to read: every write fails.
impl io::Write for Cursor {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(io::ErrorKind::PermissionDenied, "a guest volume is read-only"))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Clone)]
struct Node {
    /// Components from the root.
    path: Vec<String>,
    stat: Stat,
}

enum Request {
    ReadDir(NodeId, Sender<Result<Vec<DirEntry>>>),
    Stat(NodeId, Sender<Result<Stat>>),
    Read(NodeId, u64, usize, Sender<Result<Vec<u8>>>),
}

pub struct Fat {
    requests: Mutex<Sender<Request>>,
    name: String,
    label: Option<String>,
}

impl Fat {
    pub fn open(device: Window, name: &str) -> Result<Fat> {
        let (requests, incoming) = channel::<Request>();
        let (ready_tx, ready) = channel::<Result<Option<String>>>();
        let volume = name.to_string();
        std::thread::Builder::new()
            .name(format!("fat {name}"))
            .spawn(move || {
                let storage = Cursor::new(device, u64::MAX);
                let fs = match fatfs::FileSystem::new(storage, fatfs::FsOptions::new()) {
                    Ok(fs) => fs,
                    Err(e) => {
                        let _ = ready_tx.send(Err(Error::damaged(format!("the FAT file system of {volume}"), e.to_string())));
                        return;
                    }
                };
                let label = fs.volume_label().trim().to_string();
                let _ = ready_tx.send(Ok(Some(label).filter(|l| !l.is_empty() && l != "NO NAME")));
                serve(&fs, &volume, incoming);
            })
            .map_err(|e| Error::io(format!("starting the reader of {name}"), e))?;
        let label = ready
            .recv()
            .map_err(|_| Error::damaged(format!("the FAT file system of {name}"), "its reader ended while opening it"))??;
        Ok(Fat {
            requests: Mutex::new(requests),
            name: name.to_string(),
            label,
        })
    }

    fn ask<T>(&self, make: impl FnOnce(Sender<Result<T>>) -> Request) -> Result<T> {
        let (reply, answer) = channel();
        self.requests
            .lock()
            .expect("FAT requests")
            .send(make(reply))
            .map_err(|_| self.gone())?;
        answer.recv().map_err(|_| self.gone())?
    }

    fn gone(&self) -> Error {
        Error::damaged(format!("the FAT file system of {}", self.name), "its reader stopped")
    }
}

/// The entry at `path` (`None`: the root), each name matched exactly as
/// listed. `fatfs`'s own lookup by path ignores case and matches short
/// names too, so on a damaged or crafted volume it could open another
/// entry than the one listed under that name.
fn entry_at<'a, T: fatfs::ReadWriteSeek>(fs: &'a fatfs::FileSystem<T>, path: &[String]) -> io::Result<Option<fatfs::DirEntry<'a, T>>> {
    let mut found: Option<fatfs::DirEntry<'a, T>> = None;
    for name in path {
        let dir = match &found {
            None => fs.root_dir(),
            Some(entry) if entry.is_dir() => entry.to_dir(),
            Some(_) => return Err(io::Error::new(io::ErrorKind::InvalidData, "a file where a directory was listed")),
        };
        let mut next = None;
        for (count, entry) in dir.iter().enumerate() {
            if count >= MAX_ENTRIES {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("more than {MAX_ENTRIES} entries in a directory")));
            }
            let entry = entry?;
            if entry.file_name() == *name {
                next = Some(entry);
                break;
            }
        }
        found = Some(next.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{name}: no longer listed")))?);
    }
    Ok(found)
}

/// The owner thread: answers until every handle is dropped.
fn serve<T: fatfs::ReadWriteSeek>(fs: &fatfs::FileSystem<T>, volume: &str, incoming: std::sync::mpsc::Receiver<Request>) {
    let mut nodes: HashMap<NodeId, Node> = HashMap::new();
    let mut by_path: HashMap<Vec<String>, NodeId> = HashMap::new();
    nodes.insert(
        ROOT,
        Node {
            path: Vec::new(),
            stat: stat(ROOT, FileKind::Dir, 0, 0o755, Time::default(), Time::default()),
        },
    );
    // The file read last and where it stands: `fatfs` seeks by walking
    // the cluster chain from the start, so a sequential reader must not
    // seek.
    let mut open: Option<(NodeId, fatfs::File<'_, T>, u64)> = None;
    let what = |node: &Node| format!("{volume}/{}", node.path.join("/"));
    for request in incoming {
        match request {
            Request::Stat(id, reply) => {
                let _ = reply.send(nodes.get(&id).map(|n| n.stat.clone()).ok_or_else(|| Error::NotFound(format!("node {id}"))));
            }
            Request::ReadDir(id, reply) => {
                let result = (|| {
                    let node = nodes.get(&id).cloned().ok_or_else(|| Error::NotFound(format!("node {id}")))?;
                    if node.stat.kind != FileKind::Dir {
                        return Err(Error::NotADirectory(what(&node)));
                    }
                    if node.path.len() >= MAX_DEPTH {
                        return Err(Error::damaged(
                            what(&node),
                            format!("directories nested deeper than {MAX_DEPTH}: a loop of a damaged volume"),
                        ));
                    }
                    let dir = match entry_at(fs, &node.path).map_err(|e| Error::io(what(&node), e))? {
                        None => fs.root_dir(),
                        Some(entry) if entry.is_dir() => entry.to_dir(),
                        Some(_) => return Err(Error::NotADirectory(what(&node))),
                    };
                    let mut out = Vec::new();
                    let mut listed = std::collections::HashSet::new();
                    for (count, entry) in dir.iter().enumerate() {
                        // A directory's cluster chain may loop: FAT allows
                        // 65,536 entries.
                        if count >= MAX_ENTRIES {
                            return Err(Error::damaged(what(&node), format!("more than {MAX_ENTRIES} entries: a looping cluster chain")));
                        }
                        let entry = entry.map_err(|e| Error::io(what(&node), e))?;
                        let name = entry.file_name();
                        if name == "." || name == ".." || name.is_empty() || name.contains('/') || name.contains('\0') {
                            continue;
                        }
                        // A second entry of one name (a damaged volume):
                        // its path would lead to the first.
                        if !listed.insert(name.clone()) {
                            tracing::warn!(directory = %what(&node), name = %name, "a second FAT entry of one name is not shown");
                            continue;
                        }
                        let mut path = node.path.clone();
                        path.push(name.clone());
                        let next = nodes.len() as NodeId + 1;
                        let child = *by_path.entry(path.clone()).or_insert(next);
                        let kind = if entry.is_dir() { FileKind::Dir } else { FileKind::File };
                        let read_only = entry.attributes().contains(fatfs::FileAttributes::READ_ONLY);
                        let mode = match (kind, read_only) {
                            (FileKind::Dir, _) => 0o755,
                            (_, true) => 0o444,
                            _ => 0o644,
                        };
                        let size = if kind == FileKind::Dir { 0 } else { entry.len() };
                        let mtime = date_time(entry.modified());
                        let accessed = entry.accessed();
                        let atime = date_time(fatfs::DateTime {
                            date: accessed,
                            time: fatfs::Time { hour: 0, min: 0, sec: 0, millis: 0 },
                        });
                        nodes.entry(child).or_insert(Node {
                            path,
                            stat: stat(child, kind, size, mode, mtime, atime),
                        });
                        out.push(DirEntry {
                            name: name.into_bytes(),
                            node: child,
                        });
                    }
                    Ok(out)
                })();
                let _ = reply.send(result);
            }
            Request::Read(id, offset, len, reply) => {
                let result = (|| {
                    let node = nodes.get(&id).cloned().ok_or_else(|| Error::NotFound(format!("node {id}")))?;
                    if node.stat.kind != FileKind::File {
                        return Err(Error::unsupported(what(&node), "not a regular file"));
                    }
                    let want = (len as u64).min(node.stat.size.saturating_sub(offset)) as usize;
                    if open.as_ref().is_none_or(|(o, _, _)| *o != id) {
                        let entry = entry_at(fs, &node.path).map_err(|e| Error::io(what(&node), e))?;
                        let file = match entry {
                            Some(entry) if !entry.is_dir() => entry.to_file(),
                            _ => return Err(Error::unsupported(what(&node), "not a regular file")),
                        };
                        open = Some((id, file, 0));
                    }
                    let (_, file, position) = open.as_mut().expect("just opened");
                    if *position != offset {
                        file.seek(SeekFrom::Start(offset)).map_err(|e| Error::io(what(&node), e))?;
                        *position = offset;
                    }
                    let mut buf = vec![0u8; want];
                    let mut done = 0;
                    while done < want {
                        let n = file.read(&mut buf[done..]).map_err(|e| Error::io(what(&node), e))?;
                        if n == 0 {
                            return Err(Error::damaged(
                                what(&node),
                                format!("its cluster chain ends at byte {} of its {}", offset + done as u64, node.stat.size),
                            ));
                        }
                        done += n;
                        *position += n as u64;
                    }
                    Ok(buf)
                })();
                if result.is_err() {
                    open = None;
                }
                let _ = reply.send(result);
            }
        }
    }
}

fn stat(node: NodeId, kind: FileKind, size: u64, mode: u32, mtime: Time, atime: Time) -> Stat {
    Stat {
        node,
        kind,
        size,
        mode,
        uid: 0,
        gid: 0,
        nlink: 1,
        atime,
        mtime,
        ctime: mtime,
        rdev: 0,
    }
}

/// A FAT date and time (local, no zone) read as UTC.
fn date_time(t: fatfs::DateTime) -> Time {
    let days = days_from_civil(i64::from(t.date.year), i64::from(t.date.month), i64::from(t.date.day));
    Time {
        sec: days * 86_400 + i64::from(t.time.hour) * 3600 + i64::from(t.time.min) * 60 + i64::from(t.time.sec),
        nsec: u32::from(t.time.millis.min(999)) * 1_000_000,
    }
}

impl GuestFs for Fat {
    fn describe(&self) -> (Content, Option<String>) {
        (Content::Fat, self.label.clone())
    }

    fn has_xattrs(&self) -> bool {
        false
    }

    fn root(&self) -> NodeId {
        ROOT
    }

    fn stat(&self, node: NodeId) -> Result<Stat> {
        self.ask(|reply| Request::Stat(node, reply))
    }

    fn read_dir(&self, node: NodeId) -> Result<Vec<DirEntry>> {
        self.ask(|reply| Request::ReadDir(node, reply))
    }

    fn read_link(&self, node: NodeId) -> Result<Vec<u8>> {
        Err(Error::unsupported(format!("node {node} of {}", self.name), "FAT has no symbolic links"))
    }

    fn xattrs(&self, _node: NodeId) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(Vec::new())
    }

    fn read_at(&self, node: NodeId, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let bytes = self.ask(|reply| Request::Read(node, offset, buf.len(), reply))?;
        buf[..bytes.len()].copy_from_slice(&bytes);
        Ok(bytes.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_count_days_from_the_epoch() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2026, 11, 28), 20_785);
        assert_eq!(days_from_civil(1980, 1, 1), 3_652);
    }
}
