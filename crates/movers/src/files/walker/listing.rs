//! Listing directories ahead of the walker, on a pool of threads.
//!
//! A listing reads a directory's names, `lstat`s each entry relative to
//! the open directory and digests what it found. If the digest matches
//! the directory's record in the file cache, from a run known to have
//! committed a restore point still kept warm, the directory is unchanged
//! and the walker reuses its tree without looking at a single file.
//! Otherwise the listing also builds each entry's node (extended
//! attributes, symlink targets, owner names) and asks the file cache and
//! the session, one batch per directory, which files are unchanged.
//!
//! The walker consumes directories depth first, one at a time, but asks
//! for the next few in advance, so the system calls of several directories
//! are in flight at once: on a cold cache most of their time is waiting
//! for the disk.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crossbeam_channel::{Receiver, Sender};
use nix::dir::Dir;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::error::Result;
use crate::file_cache::{FileCache, RunId};
use crate::id::ChunkId;
use crate::index::records::DirCacheRecord;
use crate::metadata::{fingerprint, node_for, EntryStat, OwnerNames};
use crate::reader::Missed;
use crate::session::BackupSession;
use crate::tree::{Extent, Node};

/// What every lister thread shares.
pub(super) struct ListContext<'a> {
    pub(super) session: &'a dyn BackupSession,
    pub(super) file_cache: &'a FileCache,
    pub(super) source: &'a str,
    /// The repository's own directory, never backed up into itself.
    pub(super) repo_root: Option<(u64, u64)>,
    /// Runs whose directory records may be trusted.
    pub(super) trusted_runs: HashSet<RunId>,
}

pub(super) struct ListJob {
    pub(super) path: PathBuf,
    /// The names to list when only some entries are selected; `None` for
    /// the whole directory.
    pub(super) names: Option<Vec<OsString>>,
    /// The listing, the reason the directory is missed, or the session's
    /// error, which stops the backup.
    pub(super) reply: Sender<Result<Result<ListedDir, Missed>>>,
}

pub(super) struct ListedDir {
    /// In name order.
    pub(super) entries: Vec<ListedEntry>,
    /// Entries that could not be examined, with why.
    pub(super) missed: Vec<(PathBuf, Missed)>,
    /// The listing's digest, when the directory may be recorded: every
    /// entry examined.
    pub(super) digest: Option<[u8; 32]>,
    /// The record of an unchanged directory, whose tree is reused; the
    /// entries then carry no nodes.
    pub(super) unchanged: Option<DirCacheRecord>,
}

pub(super) struct ListedEntry {
    pub(super) path: PathBuf,
    pub(super) stat: EntryStat,
    /// The entry's node, unless the directory is unchanged; `Err` when it
    /// could not be read (the entry is then missed).
    pub(super) node: Option<Result<Node, Missed>>,
    /// An unchanged file's chunk list, from the file cache.
    pub(super) cached: Option<Vec<Extent>>,
}

/// Runs lister jobs until the job queue closes.
pub(super) fn serve(context: &ListContext<'_>, jobs: Receiver<ListJob>) {
    let _span = tracing::debug_span!("list").entered();
    let mut owners = OwnerNames::default();
    for job in jobs {
        let listed = list(context, &job.path, job.names, &mut owners);
        // The walker may have stopped on an error; nobody then waits.
        let _ = job.reply.send(listed);
    }
}

fn open_dir(path: &Path) -> nix::Result<Dir> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    // O_NOATIME keeps a backup from changing the directory's access time,
    // which would make its parent's listing differ next time. Only the
    // owner (or root) may use it.
    match Dir::open(path, flags | OFlag::O_NOATIME, Mode::empty()) {
        Err(nix::errno::Errno::EPERM) => Dir::open(path, flags, Mode::empty()),
        other => other,
    }
}

fn missed(e: nix::errno::Errno) -> Missed {
    Missed::from_io(&std::io::Error::from(e))
}

fn list(
    context: &ListContext<'_>,
    path: &Path,
    selected: Option<Vec<OsString>>,
    owners: &mut OwnerNames,
) -> Result<Result<ListedDir, Missed>> {
    let mut dir = match open_dir(path) {
        Ok(dir) => dir,
        Err(e) => return Ok(Err(missed(e))),
    };
    // Names with their inode numbers, as the directory gives them.
    let mut names: Vec<(OsString, u64)> = match selected {
        Some(names) => names.into_iter().map(|name| (name, 0)).collect(),
        None => {
            let mut names = Vec::new();
            for entry in dir.iter() {
                let entry = match entry {
                    Ok(entry) => entry,
                    Err(e) => return Ok(Err(missed(e))),
                };
                let name = entry.file_name().to_bytes();
                if name != b"." && name != b".." {
                    names.push((OsString::from_vec(name.to_vec()), entry.ino()));
                }
            }
            names
        }
    };
    // In inode order, the inodes a cold cache must read come from the
    // inode table front to back rather than at random.
    names.sort_unstable_by_key(|(_, ino)| *ino);
    let mut stats = Vec::with_capacity(names.len());
    for (name, _) in names {
        let stat = EntryStat::at(&dir, &name);
        stats.push((name, stat));
    }
    stats.sort_unstable_by(|(a, _), (b, _)| a.as_bytes().cmp(b.as_bytes()));

    let mut listed = ListedDir {
        entries: Vec::with_capacity(stats.len()),
        missed: Vec::new(),
        digest: None,
        unchanged: None,
    };
    let mut hasher = context.file_cache.listing_hasher();
    hasher.update(b"strata directory listing v1");
    for (name, stat) in stats {
        let child = path.join(&name);
        let stat = match stat {
            Ok(stat) => stat,
            Err(e) => {
                listed.missed.push((child, Missed::from_io(&e)));
                continue;
            }
        };
        if stat.is_dir() && Some((stat.dev, stat.ino)) == context.repo_root {
            tracing::info!(path = %child.display(), "skipping the repository itself");
            continue;
        }
        hash_entry(&mut hasher, &name, &stat);
        listed.entries.push(ListedEntry {
            path: child,
            stat,
            node: None,
            cached: None,
        });
    }
    // A listing of selected names only is recorded too: the names are in
    // the digest, so another selection never matches it.
    if listed.missed.is_empty() {
        let digest = *hasher.finalize().as_bytes();
        listed.digest = Some(digest);
        listed.unchanged = unchanged_record(context, path, &digest);
    }
    if listed.unchanged.is_none() {
        for entry in &mut listed.entries {
            let name = entry.path.file_name().unwrap_or(OsStr::new("")).as_bytes();
            entry.node = Some(
                node_for(name, &entry.path, &entry.stat, owners).map_err(|e| Missed::from_io(&e)),
            );
        }
        cached_extents(context, &mut listed.entries)?;
    }
    Ok(Ok(listed))
}

fn hash_entry(hasher: &mut blake3::Hasher, name: &OsStr, stat: &EntryStat) {
    let name = name.as_bytes();
    hasher.update(&(name.len() as u64).to_le_bytes());
    hasher.update(name);
    stat.hash_into(hasher);
}

/// The directory's record, if it is trusted and says the directory looked
/// exactly like this when its tree was stored.
fn unchanged_record(
    context: &ListContext<'_>,
    path: &Path,
    digest: &[u8; 32],
) -> Option<DirCacheRecord> {
    // A record that cannot be read only costs a closer look.
    let record = context
        .file_cache
        .get_dir(context.source, path.as_os_str().as_bytes())
        .ok()
        .flatten()?;
    (record.listing == *digest && context.trusted_runs.contains(&record.run)).then_some(record)
}

/// Fills in the chunk lists of the files the file cache proves unchanged
/// (same size, times, inode and device, and every chunk still stored
/// warm): one file cache lookup and one chunk lookup for the directory.
fn cached_extents(context: &ListContext<'_>, entries: &mut [ListedEntry]) -> Result<()> {
    let files: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].stat.is_file())
        .collect();
    if files.is_empty() {
        return Ok(());
    }
    let paths: Vec<&[u8]> = files
        .iter()
        .map(|&i| entries[i].path.as_os_str().as_bytes())
        .collect();
    let records = context.file_cache.get_files(context.source, &paths)?;
    let mut candidates = Vec::new();
    let mut ids: Vec<ChunkId> = Vec::new();
    for (&i, record) in files.iter().zip(records) {
        let Some(record) = record else { continue };
        if record.fingerprint != fingerprint(&entries[i].stat) {
            continue;
        }
        let first = ids.len();
        ids.extend(record.extents.iter().filter_map(|e| match e {
            Extent::Data { id, .. } => Some(*id),
            Extent::Hole { .. } => None,
        }));
        candidates.push((i, first..ids.len(), record.extents));
    }
    // Chunks of a run that never committed may be missing, and chunks
    // moved to the cold tier must be stored warm again.
    let stored = context.session.stored_chunks(&ids)?;
    for (i, range, extents) in candidates {
        if stored.get(range).is_some_and(|s| s.iter().all(|s| *s)) {
            entries[i].cached = Some(extents);
        }
    }
    Ok(())
}

/// The digest of a directory's subtrees, in name order: with the listing
/// digest, what makes its tree the same as last time.
pub(super) fn subtrees_digest<'a>(subtrees: impl Iterator<Item = &'a ChunkId>) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"strata subtrees v1");
    for id in subtrees {
        hasher.update(id.as_bytes());
    }
    *hasher.finalize().as_bytes()
}
