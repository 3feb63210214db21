//! `strata check`: verifies that the repository is whole.
//!
//! Structure: every pack's trailer is valid and agrees with the index,
//! every indexed chunk lies in an existing pack, and every tree and chunk
//! that a restore point references is indexed. With `read_data`, every
//! chunk is also read, decompressed and re-hashed, and each damaged chunk
//! is traced to the restore points and files that use it.
//! Memory: a set of pack ids, a set of visited tree ids, and the damaged
//! chunks; nothing proportional to the number of data chunks.

use std::collections::{HashMap, HashSet};

use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use crate::id::{ChunkId, PackId};
use crate::pack::{self, PackEntry};
use crate::progress::Progress;
use crate::reachability::read_manifests;
use crate::repository::Repository;
use crate::restore_point::{RestorePoint, RestorePointKind};
use crate::selector::format_time_exact;
use crate::walk::{walk, Place, Visitor};

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct CheckReport {
    pub packs: u64,
    pub chunks: u64,
    pub restore_points: u64,
    pub bytes_verified: u64,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    pub damaged: Vec<DamagedChunk>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct DamagedChunk {
    pub chunk: String,
    pub pack: String,
    pub detail: String,
    /// "restore point <id> (<source> at <time>): <path>" for each user.
    pub affected: Vec<String>,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty() && self.damaged.is_empty()
    }
}

/// What the pack steps found, for the steps after them.
#[derive(Default)]
struct PackTally {
    /// Packs listed on either tier (less those deleted since).
    listed: HashSet<PackId>,
    /// Index records that agree with the trailer of their pack.
    matched: u64,
    damaged: HashMap<ChunkId, (PackId, String)>,
}

pub fn check<M>(
    repo: &Repository<M>,
    read_data: bool,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<CheckReport> {
    let _span = tracing::info_span!("check", read_data).entered();
    let mut report = CheckReport::default();
    let damaged = check_stored(repo, read_data, &mut report, progress, cancel)?;
    let restore_points = check_restore_points(repo, &damaged, &mut report, cancel)?;
    report_damaged(repo, &restore_points, damaged, &mut report, cancel)?;
    progress.finish();
    Ok(report)
}

/// The steps of [`check`] that need no key: packs against the index and
/// the index against the packs, and the key slots. With `read_data`, each
/// warm pack is read whole and checked against its name and, where the
/// key is at hand, chunk by chunk. Returns the damaged chunks found.
pub fn check_stored<M>(
    repo: &Repository<M>,
    read_data: bool,
    report: &mut CheckReport,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<HashMap<ChunkId, (PackId, String)>> {
    let mut packs = PackTally::default();
    let names = repo.store().list_all("packs/")?;
    if read_data {
        let total: u64 = names.iter().filter_map(|n| repo.store().size(n).ok()).sum();
        progress.add_total(total);
    }
    check_cold_packs(repo, &mut packs, report, cancel)?;
    check_warm_packs(repo, &names, read_data, &mut packs, report, progress, cancel)?;
    check_index_records(repo, &mut packs, report)?;
    check_key_slots(repo, report)?;
    Ok(packs.damaged)
}

/// Every key slot of an encrypted repository decodes (the one in use
/// opened, or this command would not run): a damaged slot is a password
/// that no longer opens the repository.
fn check_key_slots<M>(repo: &Repository<M>, report: &mut CheckReport) -> Result<()> {
    for name in crate::keys::slot_names(repo.store())? {
        let decoded = repo
            .store()
            .get(&name)
            .and_then(|bytes| crate::key_slot::KeySlot::decode(&name, &bytes));
        if let Err(e) = decoded {
            report.errors.push(e.to_string());
        }
    }
    Ok(())
}

/// Cold packs: their trailers are checked against the index; their data
/// is not read, since reading the archival tier is what thaw is for.
fn check_cold_packs<M>(
    repo: &Repository<M>,
    packs: &mut PackTally,
    report: &mut CheckReport,
    cancel: &CancelToken,
) -> Result<()> {
    if let Ok(cold) = repo.cold_store() {
        for name in cold.list_all("packs/")? {
            cancel.check()?;
            let Some(pack_id) = pack::id_from_object_name(&name) else {
                continue;
            };
            packs.listed.insert(pack_id);
            report.packs += 1;
            match repo.packs().trailer(crate::index::Tier::Cold, &pack_id) {
                Ok(entries) => {
                    for entry in &entries {
                        if let Some(loc) = repo.chunk_index().chunk(&entry.id)? {
                            if loc.pack == pack_id && loc.entry == *entry {
                                packs.matched += 1;
                            }
                        }
                    }
                }
                Err(e) if e.is_not_found() => {
                    report.packs -= 1;
                    packs.listed.remove(&pack_id);
                }
                Err(e) => report.errors.push(e.to_string()),
            }
        }
    }
    Ok(())
}

/// Warm packs: their trailers are checked against the index and, with
/// `read_data`, every chunk in them is verified.
fn check_warm_packs<M>(
    repo: &Repository<M>,
    names: &[String],
    read_data: bool,
    packs: &mut PackTally,
    report: &mut CheckReport,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<()> {
    for name in names {
        cancel.check()?;
        let Some(pack_id) = pack::id_from_object_name(name) else {
            report
                .warnings
                .push(format!("unexpected file {name} among packs"));
            continue;
        };
        packs.listed.insert(pack_id);
        report.packs += 1;
        // Reading data reads each pack once, whole and in order; the
        // trailer is then taken from the same bytes.
        let (entries, bytes) = if read_data {
            match repo.store().get(name) {
                Ok(bytes) => {
                    let object = format!("pack {}/{name}", repo.store().location());
                    (pack::reader::trailer_of(&bytes, &object), Some(bytes))
                }
                Err(e) => (Err(e), None),
            }
        } else {
            (crate::packs::read_trailer(repo.store(), name), None)
        };
        let entries = match entries {
            Ok(entries) => entries,
            // Deleted by a writer (prune, tier run) since it was listed.
            Err(e) if e.is_not_found() => {
                report.packs -= 1;
                packs.listed.remove(&pack_id);
                continue;
            }
            Err(e) => {
                report.errors.push(format!(
                    "{e} (`strata repair index` salvages the chunks that still verify)"
                ));
                continue;
            }
        };
        for entry in &entries {
            match repo.chunk_index().chunk(&entry.id)? {
                Some(loc) if loc.pack == pack_id => {
                    if loc.entry != *entry {
                        report.errors.push(format!(
                            "index entry of chunk {} disagrees with the trailer of pack {pack_id}",
                            entry.id
                        ));
                    } else {
                        packs.matched += 1;
                    }
                }
                Some(_) => {} // a duplicate copy; the index uses another
                None => report.warnings.push(format!(
                    "chunk {} in pack {pack_id} is not indexed (left by an interrupted run; `strata repair index` or prune resolves it)",
                    entry.id
                )),
            }
        }
        if let Some(bytes) = bytes {
            verify_pack_data(
                repo.codec(),
                &bytes,
                &pack_id,
                &entries,
                &mut packs.damaged,
                report,
                cancel,
            )?;
            progress.advance(bytes.len() as u64);
        }
    }
    Ok(())
}

/// Every index record names a pack that exists, and the records that the
/// trailers did not confirm are counted as errors.
fn check_index_records<M>(
    repo: &Repository<M>,
    packs: &mut PackTally,
    report: &mut CheckReport,
) -> Result<()> {
    let mut indexed = 0u64;
    let mut missing_packs = 0u64;
    let mut unlisted = Vec::new();
    for location in repo.chunk_index().chunks() {
        let location = location?;
        indexed += 1;
        if !packs.listed.contains(&location.pack) {
            unlisted.push(location);
        }
    }
    // A writer beside this check may have moved these chunks since the
    // packs were listed: look again before calling anything missing.
    if !unlisted.is_empty() {
        repo.catch_up()?;
    }
    for location in unlisted {
        let id = location.entry.id;
        match repo.chunk_index().chunk(&id)? {
            None => indexed -= 1,
            Some(now) if now.pack != location.pack && pack_exists(repo, &now) => packs.matched += 1,
            _ => {
                missing_packs += 1;
                report.errors.push(format!(
                    "chunk {id} is indexed in pack {}, which does not exist",
                    location.pack
                ));
            }
        }
    }
    report.chunks = indexed;
    if packs.matched + missing_packs < indexed {
        report.errors.push(format!(
            "{} indexed chunks are not where the index says in their packs",
            indexed - packs.matched - missing_packs
        ));
    }
    Ok(())
}

/// Reads every manifest and checks that everything its restore point
/// references is indexed; returns the restore points that could be read.
fn check_restore_points<M>(
    repo: &Repository<M>,
    damaged: &HashMap<ChunkId, (PackId, String)>,
    report: &mut CheckReport,
    cancel: &CancelToken,
) -> Result<Vec<RestorePoint>> {
    // The manifest objects themselves, not the catalog's copies: a damaged
    // one is named here, and the others are still checked.
    let manifests = read_manifests(repo.store(), repo.protection(), cancel)?;
    for (name, cause) in manifests.damaged {
        report.errors.push(format!(
            "manifest {name}: {cause} (`strata repair index` sets its restore point aside)"
        ));
    }
    let set_aside = repo.store().list_all(crate::repair::DAMAGED_PREFIX)?;
    if !set_aside.is_empty() {
        report.warnings.push(format!(
            "{} damaged objects set aside by `strata repair index` in {}/{}",
            set_aside.len(),
            repo.store().location(),
            crate::repair::DAMAGED_PREFIX
        ));
    }
    let restore_points: Vec<RestorePoint> =
        manifests.readable.into_iter().map(|(rp, _)| rp).collect();
    report.restore_points = restore_points.len() as u64;
    let mut visited = HashSet::new();
    for rp in &restore_points {
        cancel.check()?;
        walk_references(repo, rp, &mut visited, damaged, report, cancel)?;
    }
    Ok(restore_points)
}

/// Lists each damaged chunk with the restore points and files that use it.
fn report_damaged<M>(
    repo: &Repository<M>,
    restore_points: &[RestorePoint],
    damaged: HashMap<ChunkId, (PackId, String)>,
    report: &mut CheckReport,
    cancel: &CancelToken,
) -> Result<()> {
    let mut damaged_list: Vec<_> = damaged.into_iter().collect();
    damaged_list.sort_by_key(|(id, _)| *id);
    let mut affected = affected_files(repo, restore_points, &damaged_list, cancel)?;
    for (id, (pack, detail)) in damaged_list {
        report.damaged.push(DamagedChunk {
            chunk: id.to_string(),
            pack: pack.to_string(),
            detail,
            affected: affected.remove(&id).unwrap_or_default(),
        });
    }
    Ok(())
}

/// Whether the pack a chunk record names exists on its tier now.
fn pack_exists<M>(repo: &Repository<M>, location: &crate::index::ChunkLocation) -> bool {
    let name = pack::object_name(&location.pack);
    match location.tier {
        crate::index::Tier::Warm => repo.store().size(&name).is_ok(),
        crate::index::Tier::Cold => repo.cold_store().is_ok_and(|cold| cold.size(&name).is_ok()),
    }
}

fn verify_pack_data(
    codec: &crate::pack::ChunkCodec,
    bytes: &[u8],
    pack_id: &PackId,
    entries: &[PackEntry],
    damaged: &mut HashMap<ChunkId, (PackId, String)>,
    report: &mut CheckReport,
    cancel: &CancelToken,
) -> Result<()> {
    let whole = blake3::hash(bytes).as_bytes()[..16] == pack_id.0;
    if codec.protection().is_withheld() {
        // Without the key (a server) the pack's hash is all there is to
        // check; the client that reads the chunks says which are damaged.
        if !whole {
            report.warnings.push(format!(
                "pack {pack_id} does not hash to its name: some of its bytes are damaged"
            ));
        }
        return Ok(());
    }
    if !whole {
        report.warnings.push(format!(
            "pack {pack_id} does not hash to its name; checking its chunks one by one"
        ));
    }
    for entry in entries {
        cancel.check()?;
        let range = entry.offset as usize..(entry.offset + entry.stored_len as u64) as usize;
        let Some(stored) = bytes.get(range) else {
            damaged.insert(
                entry.id,
                (*pack_id, "pack is shorter than its trailer says".into()),
            );
            continue;
        };
        match codec.decode(entry, pack_id, stored) {
            Ok(plain) => report.bytes_verified += plain.len() as u64,
            Err(e) => {
                damaged.insert(entry.id, (*pack_id, e.to_string()));
            }
        }
    }
    Ok(())
}

/// Checks that everything a restore point references is indexed.
fn walk_references<M>(
    repo: &Repository<M>,
    rp: &RestorePoint,
    visited: &mut HashSet<ChunkId>,
    damaged: &HashMap<ChunkId, (PackId, String)>,
    report: &mut CheckReport,
    cancel: &CancelToken,
) -> Result<()> {
    let mut check = References {
        repo,
        rp,
        visited,
        damaged,
        errors: &mut report.errors,
    };
    let walked = walk(repo, rp, &mut check, cancel);
    if rp.manifest.kind == RestorePointKind::Vm {
        // A VM restore point that cannot be walked to its end is reported,
        // and the others are still checked.
        if let Err(e) = walked {
            report
                .errors
                .push(format!("restore point {}: {e}", rp.id.short()));
        }
        return Ok(());
    }
    walked
}

/// Reports each referenced chunk that is not indexed, and each tree that
/// cannot be read. Trees and map pages are read once per check; damaged
/// ones are not read (they are reported with their users).
struct References<'a, M> {
    repo: &'a Repository<M>,
    rp: &'a RestorePoint,
    visited: &'a mut HashSet<ChunkId>,
    damaged: &'a HashMap<ChunkId, (PackId, String)>,
    errors: &'a mut Vec<String>,
}

impl<M> Visitor for References<'_, M> {
    fn chunk(&mut self, id: &ChunkId, place: &Place) -> Result<bool> {
        if let Place::Tree { .. } = place {
            return Ok(self.visited.insert(*id) && !self.damaged.contains_key(id));
        }
        if !self.repo.chunk_index().has_chunk(id)? {
            self.errors.push(format!(
                "restore point {}: {place} needs chunk {id}, which is not in the repository",
                self.rp.id.short()
            ));
        }
        Ok(match place {
            Place::VmDescription => !self.damaged.contains_key(id),
            Place::DiskMapPage { .. } => !self.damaged.contains_key(id) && self.visited.insert(*id),
            _ => true,
        })
    }

    fn unreadable(&mut self, _id: &ChunkId, place: &Place, error: Error) -> Result<()> {
        if let Place::Tree { .. } = place {
            self.errors.push(format!(
                "restore point {}: {place}: {error}",
                self.rp.id.short()
            ));
            return Ok(());
        }
        Err(error)
    }
}

/// Maps each damaged chunk to the restore points and paths that use it.
fn affected_files<M>(
    repo: &Repository<M>,
    restore_points: &[RestorePoint],
    damaged: &[(ChunkId, (PackId, String))],
    cancel: &CancelToken,
) -> Result<HashMap<ChunkId, Vec<String>>> {
    let mut out: HashMap<ChunkId, Vec<String>> = HashMap::new();
    if damaged.is_empty() {
        return Ok(out);
    }
    let set: HashSet<ChunkId> = damaged.iter().map(|(id, _)| *id).collect();
    for rp in restore_points {
        let label = format!(
            "restore point {} ({} at {})",
            rp.id.short(),
            rp.manifest.source,
            format_time_exact(rp.manifest.time)
        );
        let mut users = Users {
            damaged: &set,
            label: &label,
            seen_pages: HashSet::new(),
            out: &mut out,
        };
        let walked = walk(repo, rp, &mut users, cancel);
        // What cannot be read of a VM was reported by the walk of check.
        if rp.manifest.kind == RestorePointKind::Files {
            walked?;
        }
    }
    Ok(out)
}

/// Records where each damaged chunk is used. A damaged tree is named, not
/// read; trees that cannot be read are passed over (check reported them).
struct Users<'a> {
    damaged: &'a HashSet<ChunkId>,
    label: &'a str,
    seen_pages: HashSet<ChunkId>,
    out: &'a mut HashMap<ChunkId, Vec<String>>,
}

impl Visitor for Users<'_> {
    fn chunk(&mut self, id: &ChunkId, place: &Place) -> Result<bool> {
        let damaged = self.damaged.contains(id);
        if damaged {
            self.out
                .entry(*id)
                .or_default()
                .push(format!("{}: {place}", self.label));
        }
        Ok(match place {
            Place::Tree { .. } => !damaged,
            Place::DiskMapPage { .. } => self.seen_pages.insert(*id),
            _ => true,
        })
    }

    fn unreadable(&mut self, _id: &ChunkId, place: &Place, error: Error) -> Result<()> {
        match place {
            Place::Tree { .. } => Ok(()),
            _ => Err(error),
        }
    }
}
