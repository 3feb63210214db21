//! The half of `strata check` that needs the key, through any
//! [`RepositoryReader`]: every restore point's manifest opens, every tree
//! it references reads and verifies, and every chunk it references is
//! stored; with `read_data`, every data chunk is also read and verified
//! against its id. A repository server, which lacks the key, checks the
//! other half ([`crate::check::check_stored`]); its admin client runs this
//! one.
//!
//! Questions go in batches (a round trip each through a server). Memory:
//! the visited trees and map pages, one batch, the ids of the data chunks
//! verified (with `read_data`), and the damaged chunks.

use std::collections::{HashMap, HashSet};

use crate::cancel::CancelToken;
use crate::check::{CheckReport, DamagedChunk};
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::progress::Progress;
use crate::reader::RepositoryReader;
use crate::restore_point::{RestorePoint, RestorePointKind};
use crate::selector::format_time_exact;
use crate::walk::{walk, Place, ReaderLoader, Visitor};

/// Chunks asked about (and with `read_data` read) per batch.
const BATCH: usize = 1024;

/// Adds to `report` what the restore points `reader` sees reference.
pub fn check_references(
    reader: &dyn RepositoryReader,
    read_data: bool,
    report: &mut CheckReport,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<()> {
    let _span = tracing::info_span!("check_references", read_data).entered();
    let points = reader.restore_points()?;
    report.restore_points = points.len() as u64;
    let loader = ReaderLoader(reader);
    let mut checker = Checker {
        reader,
        read_data,
        label: String::new(),
        visited: HashSet::new(),
        verified: HashSet::new(),
        pending: Vec::with_capacity(BATCH),
        damaged: HashMap::new(),
        report,
        progress,
        walk_error: None,
    };
    for rp in &points {
        cancel.check()?;
        checker.label = label(rp);
        let walked = walk(&loader, rp, &mut checker, cancel);
        // Leftovers of the walk are checked before its outcome is read, so
        // a VM whose walk ended early still has what it reached checked.
        checker.flush()?;
        if let Some(error) = checker.walk_error.take() {
            return Err(error);
        }
        match walked {
            Ok(()) => {}
            // What cannot be read of a VM is reported, and the other
            // restore points are still checked.
            Err(e) if rp.manifest.kind == RestorePointKind::Vm && !matches!(e, Error::Interrupted(_)) => {
                checker.report.errors.push(format!("restore point {}: {e}", rp.id.short()));
            }
            Err(e) => return Err(e),
        }
    }
    let mut damaged: Vec<DamagedChunk> = checker.damaged.into_values().collect();
    damaged.sort_by(|a, b| a.chunk.cmp(&b.chunk));
    report.damaged.extend(damaged);
    Ok(())
}

/// Whether `error` says a chunk is damaged or gone (reported, and the
/// check goes on), rather than that the check itself cannot go on.
fn is_damage(error: &Error) -> bool {
    matches!(
        error,
        Error::Corrupt { .. } | Error::ChunkDamaged { .. } | Error::ChunkMissing { .. }
    )
}

fn label(rp: &RestorePoint) -> String {
    format!(
        "restore point {} ({} at {})",
        rp.id.short(),
        rp.manifest.source,
        format_time_exact(rp.manifest.time)
    )
}

/// A referenced chunk waiting for its batch: its id, where it is used
/// (for the report) and whether it is file or disk data.
struct Pending {
    id: ChunkId,
    place: String,
    is_data: bool,
}

struct Checker<'a> {
    reader: &'a dyn RepositoryReader,
    read_data: bool,
    /// The restore point being walked, as reports name it.
    label: String,
    /// Trees and map pages descended into already.
    visited: HashSet<ChunkId>,
    /// Data chunks read and verified (or found damaged) already.
    verified: HashSet<ChunkId>,
    pending: Vec<Pending>,
    damaged: HashMap<ChunkId, DamagedChunk>,
    report: &'a mut CheckReport,
    progress: &'a dyn Progress,
    /// An error of a batch, raised once the walk returns (a visitor can
    /// only stop the walk by failing, which would read as the tree's).
    walk_error: Option<Error>,
}

impl Checker<'_> {
    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        let ids: Vec<ChunkId> = batch.iter().map(|p| p.id).collect();
        let readable = self.reader.readable_chunks(&ids)?;
        let mut to_read = Vec::new();
        for (item, state) in batch.iter().zip(readable) {
            match state {
                None => self.report.errors.push(format!(
                    "{}: {} needs chunk {}, which is not in the repository",
                    self.label, item.place, item.id
                )),
                Some(true) if self.read_data && item.is_data && self.verified.insert(item.id) => {
                    to_read.push(item);
                }
                // Cold chunks are not read: reading the archival tier is
                // what thaw is for.
                Some(_) => {}
            }
        }
        if to_read.is_empty() {
            return Ok(());
        }
        let ids: Vec<ChunkId> = to_read.iter().map(|p| p.id).collect();
        self.reader.prefetch(&ids);
        for item in to_read {
            match self.reader.read_chunk(&item.id) {
                Ok(plain) => {
                    self.report.bytes_verified += plain.len() as u64;
                    self.progress.advance(plain.len() as u64);
                }
                Err(e) if is_damage(&e) => self.note_damaged(&item.id, &item.place, e.to_string()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn note_damaged(&mut self, id: &ChunkId, place: &str, detail: String) {
        let affected = format!("{}: {place}", self.label);
        self.damaged
            .entry(*id)
            .or_insert_with(|| DamagedChunk {
                chunk: id.to_string(),
                pack: String::new(),
                detail,
                affected: Vec::new(),
            })
            .affected
            .push(affected);
    }
}

impl Visitor for Checker<'_> {
    fn chunk(&mut self, id: &ChunkId, place: &Place) -> Result<bool> {
        let descend = match place {
            // A tree is read by the walk itself, which verifies it.
            Place::Tree { .. } => return Ok(self.visited.insert(*id)),
            Place::DiskMapPage { .. } => self.visited.insert(*id),
            _ => true,
        };
        if place.is_data() && self.damaged.contains_key(id) {
            // Damaged, found in an earlier batch: one more user of it.
            self.note_damaged(id, &place.to_string(), String::new());
        } else if !place.is_data() || !self.verified.contains(id) {
            self.pending.push(Pending {
                id: *id,
                place: place.to_string(),
                is_data: place.is_data(),
            });
        }
        if self.pending.len() >= BATCH {
            if let Err(e) = self.flush() {
                self.walk_error = Some(e);
                return Err(Error::Interrupted("a batch of the check failed".into()));
            }
        }
        Ok(descend)
    }

    fn unreadable(&mut self, id: &ChunkId, place: &Place, error: Error) -> Result<()> {
        match place {
            Place::Tree { .. } | Place::VmDescription | Place::DiskMapPage { .. } if is_damage(&error) => {
                let place = place.to_string();
                self.note_damaged(id, &place, error.to_string());
                Ok(())
            }
            _ => Err(error),
        }
    }
}
