//! `strata repair index`: rebuilds the RocksDB index from the packs,
//! manifests and thaw records alone. The file cache starts empty, so the
//! next backup of each source reads its files again (storing nothing new).
//!
//! Nothing that still verifies is thrown away:
//! - a pack whose trailer is damaged or cut short is salvaged: every chunk
//!   whose bytes still decode to its id (found through the trailer's
//!   entries, what the old index said about the pack, and a scan of the
//!   data area) is copied into a new, whole pack, and only then is the
//!   damaged pack moved to `damaged/packs/…`;
//! - a manifest that cannot be decoded is moved to `damaged/manifests/…`,
//!   so every other restore point keeps working;
//! - a chunk in both a warm and a cold pack is indexed warm, and thawed
//!   copies are registered again with the expiry kept beside them.
//!
//! The report names what was salvaged, what was lost and which restore
//! points lost data. Until the rebuild is complete the index is marked as
//! being rebuilt, so that an interrupted repair leaves an index every
//! command refuses, asking for `repair index` again.

use std::collections::{HashMap, HashSet};

use crate::cancel::CancelToken;
use crate::clock::now;
use crate::error::{Error, Result};
use crate::id::{ChunkId, PackId, RestorePointId};
use crate::index::{PackRecord, ThawTarget, Tier};
use crate::pack::{self, ChunkKind, CompressedChunk, PackEntry};
use crate::progress::Progress;
use crate::reachability::{for_each_chunk, read_manifests};
use crate::repository::{Exclusive, Repository};
use crate::thaw_record::{self, thaw_object_name};
use crate::restore_point::RestorePoint;
use crate::selector::format_time;
use crate::storage::ObjectStore;

/// Where damaged objects are set aside, in the store that held them.
pub const DAMAGED_PREFIX: &str = "damaged/";

#[derive(Debug, Default, serde::Serialize)]
pub struct RepairReport {
    pub packs: u64,
    pub chunks: u64,
    pub restore_points: u64,
    /// Thawed copies of cold packs registered again.
    pub thawed_packs: u64,
    /// Objects that could not be read at all and were left as they are,
    /// with the reason.
    pub skipped: Vec<String>,
    /// Damaged packs: what was recovered from each and what was lost.
    pub salvaged: Vec<SalvagedPack>,
    /// Restore points whose manifest could not be decoded, set aside.
    pub damaged_manifests: Vec<SetAside>,
    /// Restore points that reference chunks no longer in the repository.
    pub affected: Vec<String>,
    /// Other things worth knowing (thaws with an unknown expiry).
    pub notes: Vec<String>,
}

#[derive(Debug, serde::Serialize)]
pub struct SalvagedPack {
    pub pack: String,
    pub tier: String,
    pub cause: String,
    pub chunks_salvaged: u64,
    pub bytes_salvaged: u64,
    /// Entries of the pack (or of the old index) whose bytes no longer
    /// verify: "id: reason". An entry whose id itself was damaged is among
    /// them although its bytes were salvaged; `affected` says what is
    /// really missing.
    pub chunks_lost: Vec<String>,
    /// Bytes of the data area no verified chunk covers (chunks the trailer
    /// no longer names may have been there).
    pub bytes_unaccounted: u64,
    /// The whole pack now holding the salvaged chunks.
    pub new_pack: Option<String>,
    pub moved_to: String,
}

#[derive(Debug, serde::Serialize)]
pub struct SetAside {
    pub object: String,
    pub cause: String,
    pub moved_to: String,
}

impl RepairReport {
    /// True when no restore point lost data and nothing was skipped or
    /// set aside.
    pub fn is_complete(&self) -> bool {
        self.skipped.is_empty() && self.damaged_manifests.is_empty() && self.affected.is_empty()
    }

    /// The report as lines for a person.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "rebuilt index: {} packs, {} chunks, {} restore points, {} thawed packs",
            self.packs, self.chunks, self.restore_points, self.thawed_packs
        )];
        for p in &self.salvaged {
            out.push(format!(
                "damaged {} pack {} ({}): salvaged {} chunks ({} bytes){}; {} entries did not verify, {} bytes unaccounted; moved to {}",
                p.tier,
                p.pack,
                p.cause,
                p.chunks_salvaged,
                p.bytes_salvaged,
                p.new_pack
                    .as_ref()
                    .map(|n| format!(" into pack {n}"))
                    .unwrap_or_default(),
                p.chunks_lost.len(),
                p.bytes_unaccounted,
                p.moved_to
            ));
            for lost in &p.chunks_lost {
                out.push(format!("  unverified entry {lost}"));
            }
        }
        for m in &self.damaged_manifests {
            out.push(format!(
                "damaged manifest {} ({}): restore point set aside, moved to {}",
                m.object, m.cause, m.moved_to
            ));
        }
        for a in &self.affected {
            out.push(format!("lost data: {a}"));
        }
        if !self.salvaged.is_empty() && self.affected.is_empty() {
            out.push("no restore point lost data".into());
        }
        out.extend(self.skipped.iter().map(|s| format!("skipped: {s}")));
        out.extend(self.notes.iter().map(|n| format!("note: {n}")));
        out
    }
}

/// A pack object and the tier it is on.
struct PackObject {
    name: String,
    id: PackId,
    tier: Tier,
}

fn tier_name(tier: Tier) -> String {
    match tier {
        Tier::Warm => "warm".into(),
        Tier::Cold => "cold".into(),
    }
}

pub fn repair_index(
    repo: &mut Repository<Exclusive>,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<RepairReport> {
    let _span = tracing::info_span!("repair_index").entered();
    let mut report = RepairReport::default();
    let packs = list_packs(repo, &mut report)?;
    progress.add_total(packs.len() as u64 * 2);
    // Before the old index goes: which packs are damaged, and what the old
    // index knew about them and about thaws.
    let mut damaged = HashMap::new();
    for object in &packs {
        cancel.check()?;
        progress.advance(1);
        if let Err(e) = repo.packs().trailer(object.tier, &object.id) {
            damaged.insert(object.id, e);
        }
    }
    let before = Before {
        hints: old_records(repo, &damaged),
        thaws: old_pack_thaws(repo),
        damaged,
    };
    repo.recreate_index()?;
    rebuild(repo, &packs, before, &mut report, progress, cancel).map_err(|e| match e {
        Error::Interrupted(_) => Error::Interrupted(
            "stopped by a signal before the index was whole; run `strata repair index` again"
                .into(),
        ),
        other => other,
    })?;
    repo.mark_index_rebuilt()?;
    progress.finish();
    Ok(report)
}

/// What is known before the old index is replaced.
struct Before {
    /// Packs whose trailer cannot be read, with the reason.
    damaged: HashMap<PackId, Error>,
    /// The old index's records of the damaged packs' chunks.
    hints: HashMap<PackId, Vec<PackEntry>>,
    /// The old index's thaw expiries.
    thaws: HashMap<PackId, i64>,
}

fn rebuild(
    repo: &Repository<Exclusive>,
    packs: &[PackObject],
    mut before: Before,
    report: &mut RepairReport,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<()> {
    let mut cold_packs = HashSet::new();
    for object in packs {
        cancel.check()?;
        progress.advance(1);
        let store = repo.packs().store(object.tier)?;
        match before.damaged.remove(&object.id) {
            None => match repo.packs().trailer(object.tier, &object.id) {
                Ok(entries) => {
                    let size = store.size(&object.name)?;
                    index_pack(repo, object.id, object.tier, size, &entries)?;
                    report.packs += 1;
                    report.chunks += entries.len() as u64;
                }
                Err(e) => report.skipped.push(e.to_string()),
            },
            Some(Error::Corrupt { detail, .. }) => {
                let hints = before.hints.get(&object.id).map(Vec::as_slice);
                salvage_pack(repo, object, detail, hints.unwrap_or(&[]), report)?;
            }
            // Unreadable (an I/O error) or from a newer release: left as
            // it is, for a person to look at.
            Some(e) => report.skipped.push(e.to_string()),
        }
        if object.tier == Tier::Cold {
            cold_packs.insert(object.id);
        }
    }
    let restore_points = rebuild_catalog(repo, report, cancel)?;
    register_thaws(repo, &cold_packs, &before.thaws, report, cancel)?;
    // What a damaged pack held is known for sure only from what the
    // restore points reference.
    if !report.salvaged.is_empty() || !report.skipped.is_empty() {
        report.affected = affected_restore_points(repo, &restore_points, cancel)?;
    }
    Ok(())
}

fn list_packs(repo: &Repository<Exclusive>, report: &mut RepairReport) -> Result<Vec<PackObject>> {
    // Warm packs first: a chunk also in a cold pack then stays warm (see
    // `index_pack`).
    let mut names: Vec<(String, Tier)> = repo
        .store()
        .list_all("packs/")?
        .into_iter()
        .map(|n| (n, Tier::Warm))
        .collect();
    if let Ok(cold) = repo.cold_store() {
        names.extend(
            cold.list_all("packs/")?
                .into_iter()
                .map(|n| (n, Tier::Cold)),
        );
    }
    let mut out = Vec::with_capacity(names.len());
    for (name, tier) in names {
        match pack::id_from_object_name(&name) {
            Some(id) => out.push(PackObject { name, id, tier }),
            None => report
                .notes
                .push(format!("{name} is not named like a pack; left as it is")),
        }
    }
    Ok(out)
}

/// What the old index said about the damaged packs' chunks. An index that
/// cannot be read simply gives no hints.
fn old_records(
    repo: &Repository<Exclusive>,
    damaged: &HashMap<PackId, Error>,
) -> HashMap<PackId, Vec<PackEntry>> {
    let mut hints: HashMap<PackId, Vec<PackEntry>> = HashMap::new();
    if damaged.is_empty() {
        return hints;
    }
    for location in repo.chunk_index().chunks().map_while(Result::ok) {
        if damaged.contains_key(&location.pack) {
            hints.entry(location.pack).or_default().push(location.entry);
        }
    }
    hints
}

/// Thaw expiries the old index held, for thaws made before thaw records
/// were kept beside the copies.
fn old_pack_thaws(repo: &Repository<Exclusive>) -> HashMap<PackId, i64> {
    let thaws = repo.thaw_table().thaws().unwrap_or_default();
    thaws
        .into_iter()
        .filter_map(|mark| match mark.target {
            ThawTarget::Pack(pack) => Some((pack, mark.until)),
            ThawTarget::RestorePoint(_) => None,
        })
        .collect()
}

/// Indexes a pack. A cold copy never replaces a warm one: a restore point
/// that reads warm data must not need a thaw after a repair.
fn index_pack(
    repo: &Repository<Exclusive>,
    id: PackId,
    tier: Tier,
    size: u64,
    entries: &[PackEntry],
) -> Result<()> {
    let mut indexed = Vec::with_capacity(entries.len());
    for entry in entries {
        if tier == Tier::Warm || !repo.chunk_index().has_warm_chunk(&entry.id)? {
            indexed.push(*entry);
        }
    }
    let record = PackRecord {
        tier,
        metadata: !entries.is_empty() && entries.iter().all(|e| e.kind.is_metadata()),
        size,
        chunk_count: entries.len() as u32,
        // Only what the index points at here is live.
        live_bytes: indexed.iter().map(|e| e.stored_len as u64).sum(),
        created: now().sec,
    };
    repo.pack_table().add_pack(id, &record, &indexed)
}

/// Tells a recovered chunk's kind from its plaintext. Kinds matter only
/// for tiering (metadata stays warm), and a data chunk is taken for
/// metadata only if it is a whole, valid encoding of it.
fn classify(plain: &[u8]) -> ChunkKind {
    let id = ChunkId::of(plain);
    if crate::tree::Tree::decode(&id, plain).is_ok() {
        ChunkKind::Tree
    } else if crate::vm::description::VmDescription::decode(&id, plain).is_ok() {
        ChunkKind::VmDescription
    } else if crate::disk_map::DiskMapPage::decode(&id, plain).is_ok() {
        ChunkKind::DiskMapPage
    } else {
        ChunkKind::Data
    }
}

/// Copies every chunk of a damaged pack that still verifies into a new
/// pack on the same tier, indexes it, and only then moves the damaged pack
/// aside.
fn salvage_pack(
    repo: &Repository<Exclusive>,
    object: &PackObject,
    cause: String,
    hints: &[PackEntry],
    report: &mut RepairReport,
) -> Result<()> {
    let store = repo.packs().store(object.tier)?;
    let bytes = match store.get(&object.name) {
        Ok(bytes) => bytes,
        Err(e) => {
            report.skipped.push(e.to_string());
            return Ok(());
        }
    };
    let salvaged = pack::reader::salvage(&bytes, &object.id, hints, repo.codec(), &classify);
    let mut new_pack = None;
    if !salvaged.entries.is_empty() {
        let mut writer = repo.packs().open(object.tier, false)?;
        for entry in &salvaged.entries {
            let start = entry.offset as usize;
            writer.append(&CompressedChunk {
                id: entry.id,
                kind: entry.kind,
                raw_len: entry.raw_len,
                compression: entry.compression,
                bytes: bytes[start..start + entry.stored_len as usize].to_vec(),
            })?;
        }
        // Indexed by the rules of a rebuild, not as a fresh pack.
        let sealed = repo.packs().seal(writer)?;
        index_pack(repo, sealed.id, object.tier, sealed.len, &sealed.entries)?;
        report.packs += 1;
        report.chunks += sealed.entries.len() as u64;
        new_pack = Some(sealed.id);
    }
    let moved_to = format!("{}/{DAMAGED_PREFIX}{}", store.location(), object.name);
    if new_pack == Some(object.id) {
        // Every chunk was recovered as it was: the new pack is the original
        // one, rewritten whole under its own name. Keep the damaged bytes.
        store.put(&format!("{DAMAGED_PREFIX}{}", object.name), &bytes)?;
    } else {
        set_aside(store, &object.name, &bytes)?;
    }
    tracing::warn!(pack = %object.id, salvaged = salvaged.entries.len(), lost = salvaged.lost.len(), "salvaged a damaged pack");
    report.salvaged.push(SalvagedPack {
        pack: object.id.to_string(),
        tier: tier_name(object.tier),
        cause,
        chunks_salvaged: salvaged.entries.len() as u64,
        bytes_salvaged: salvaged.entries.iter().map(|e| e.raw_len as u64).sum(),
        chunks_lost: salvaged
            .lost
            .iter()
            .map(|(id, why)| format!("{id}: {why}"))
            .collect(),
        bytes_unaccounted: salvaged.unaccounted_bytes,
        new_pack: new_pack.map(|id| id.to_string()),
        moved_to,
    });
    Ok(())
}

/// Moves an object to the damaged area of its store, durably, before
/// removing it from where readers look.
fn set_aside(store: &dyn ObjectStore, name: &str, bytes: &[u8]) -> Result<()> {
    store.put(&format!("{DAMAGED_PREFIX}{name}"), bytes)?;
    store.delete(name)
}

/// Catalogues every readable manifest and sets the others aside.
fn rebuild_catalog(
    repo: &Repository<Exclusive>,
    report: &mut RepairReport,
    cancel: &CancelToken,
) -> Result<Vec<RestorePoint>> {
    let manifests = read_manifests(repo.store(), repo.protection(), cancel)?;
    for (name, cause) in manifests.damaged {
        let moved = repo
            .store()
            .get(&name)
            .and_then(|bytes| set_aside(repo.store(), &name, &bytes));
        match moved {
            Ok(()) => report.damaged_manifests.push(SetAside {
                moved_to: format!("{}/{DAMAGED_PREFIX}{name}", repo.store().location()),
                object: name,
                cause,
            }),
            Err(e) => report.skipped.push(format!("{name}: {cause}; {e}")),
        }
    }
    let mut restore_points = Vec::with_capacity(manifests.readable.len());
    for (rp, bytes) in manifests.readable {
        repo.catalog().add_restore_point(&rp.id, &bytes)?;
        report.restore_points += 1;
        restore_points.push(rp);
    }
    Ok(restore_points)
}

/// Registers every thawed copy of an existing cold pack that verifies
/// against its name, with the expiry recorded beside it.
fn register_thaws(
    repo: &Repository<Exclusive>,
    cold_packs: &HashSet<PackId>,
    old_thaws: &HashMap<PackId, i64>,
    report: &mut RepairReport,
    cancel: &CancelToken,
) -> Result<()> {
    for name in repo.store().list_all("thaw/")? {
        cancel.check()?;
        if let Some(rp) = restore_point_of_record(&name) {
            match repo
                .store()
                .get(&name)
                .and_then(|bytes| thaw_record::open_thaw_record(repo.protection(), &name, &bytes))
            {
                Ok(until) => repo.thaw_table().set_restore_point_thawed(&rp, until)?,
                Err(e) => report.notes.push(format!("{e}; thaw mark not restored")),
            }
            continue;
        }
        let Some(pack) = pack::id_from_object_name(&format!("packs/{}", &name["thaw/".len()..]))
        else {
            continue; // a thaw record; read with its copy
        };
        if !cold_packs.contains(&pack) || name != thaw_object_name(&pack) {
            continue; // its cold pack is gone: prune removes the copy
        }
        let bytes = repo.store().get(&name)?;
        if blake3::hash(&bytes).as_bytes()[..16] != pack.0 {
            report.notes.push(format!(
                "thawed copy {name} does not match its name; not used (thaw again)"
            ));
            continue;
        }
        let record = thaw_record::pack_thaw_record_name(&pack);
        let recorded = repo
            .store()
            .get(&record)
            .and_then(|bytes| thaw_record::open_thaw_record(repo.protection(), &record, &bytes));
        let until = match recorded {
            Ok(until) => until,
            Err(_) => match old_thaws.get(&pack) {
                Some(until) => *until,
                None => {
                    let until = now().sec + 86_400;
                    report.notes.push(format!(
                        "thawed copy {name} has no thaw record; kept for one day, until {}",
                        format_time(crate::tree::Timestamp {
                            sec: until,
                            nsec: 0
                        })
                    ));
                    until
                }
            },
        };
        repo.thaw_table().set_pack_thawed(&pack, until)?;
        report.thawed_packs += 1;
    }
    Ok(())
}

fn restore_point_of_record(name: &str) -> Option<RestorePointId> {
    name.strip_prefix("thaw/restore-points/")?
        .strip_suffix(".until")?
        .parse()
        .ok()
}

/// Names each restore point that references a chunk the repository no
/// longer holds, with how many.
fn affected_restore_points(
    repo: &Repository<Exclusive>,
    restore_points: &[RestorePoint],
    cancel: &CancelToken,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for rp in restore_points {
        let label = format!(
            "restore point {} ({} at {})",
            rp.id.short(),
            rp.manifest.source,
            format_time(rp.manifest.time)
        );
        let mut missing = 0u64;
        let mut visited = HashSet::new();
        let walked = for_each_chunk(repo, rp, &mut visited, cancel, &mut |id, _| {
            if !repo.chunk_index().has_chunk(id)? {
                missing += 1;
            }
            Ok(())
        });
        match walked {
            Err(e @ Error::Interrupted(_)) => return Err(e),
            Err(e) => out.push(format!("{label}: cannot be read whole: {e}")),
            Ok(()) if missing > 0 => out.push(format!(
                "{label}: {missing} chunks lost (`strata check` names the files)"
            )),
            Ok(()) => {}
        }
    }
    Ok(out)
}
