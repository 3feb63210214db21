//! `strata prune`: frees chunks no restore point references.
//!
//! Mark: every restore point's trees, VM descriptions, disk map pages and
//! data chunks are entered into a Bloom filter sized from the number of
//! chunk records (about 10 bits, 1.2 bytes, per chunk: 120 MB for 100
//! million chunks). A false positive only keeps a dead chunk until a later
//! prune, so the filter is safe; metadata chunks already visited are
//! remembered exactly so that shared trees are walked once.
//!
//! Sweep: each pack's trailer is compared with the index. A pack with no
//! live chunk is dropped from the index, then deleted. A pack whose live
//! bytes fall below the repack threshold has its live chunks copied (as
//! stored, not recompressed) into new packs; the old pack is deleted only
//! after the new one is durable and indexed. A crash at any step leaves
//! every live chunk readable from at least one indexed pack; leftovers (an
//! unindexed pack file) are removed by the next prune.
//!
//! Prune holds the writer lock, so no backup runs at the same time and none
//! can lose a chunk it relies on.

use std::collections::{HashMap, HashSet};

use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use crate::id::{ChunkId, PackId};
use crate::index::{PackRecord, Tier};
use crate::pack::{self, CompressedChunk, PackEntry};
use crate::packs::OpenPack;
use crate::progress::Progress;
use crate::reachability::{for_each_chunk, read_manifests};
pub use crate::reachability::ChunkFilter;
use crate::repository::{Exclusive, Repository};

pub struct PruneOptions {
    /// Packs whose live bytes are below this fraction of their bytes are
    /// rewritten.
    pub repack_below: f64,
    /// Also rewrite cold packs (reading the archival tier). Thawed cold
    /// packs are never rewritten: that would cancel their thaw.
    pub repack_cold: bool,
    pub dry_run: bool,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct PruneReport {
    pub restore_points: u64,
    pub packs_before: u64,
    pub packs_deleted: u64,
    pub packs_repacked: u64,
    pub packs_written: u64,
    pub chunks_removed: u64,
    pub bytes_before: u64,
    pub bytes_freed: u64,
    /// Bytes of new packs written by repacking (already netted out of
    /// `bytes_freed`).
    pub bytes_rewritten: u64,
    /// Size of the mark filter, the one structure that grows with the
    /// repository.
    pub mark_filter_bytes: u64,
    /// Packs left as they are because they cannot be read, with the cause.
    pub skipped: Vec<String>,
    /// Restore points that reference chunks the repository lacks.
    pub warnings: Vec<String>,
}

/// Marks every chunk the manifests reference. The manifest objects are
/// read themselves, not the catalog: one that cannot be decoded would make
/// everything only it references look unused, so prune refuses to run.
fn mark(
    repo: &Repository<Exclusive>,
    report: &mut PruneReport,
    cancel: &CancelToken,
) -> Result<ChunkFilter> {
    let manifests = read_manifests(repo.store(), repo.protection(), cancel)?;
    if let Some((name, cause)) = manifests.damaged.first() {
        return Err(Error::corrupt(
            format!("manifest {name}"),
            format!(
                "{cause}; prune does not run while a manifest cannot be read, since the data \
                 only it references would look unused (`strata repair index` sets it aside)"
            ),
        ));
    }
    let records = repo.chunk_index().chunks().count() as u64;
    let mut filter = ChunkFilter::with_capacity(records);
    let mut visited: HashSet<ChunkId> = HashSet::new();
    for (rp, _) in manifests.readable {
        report.restore_points += 1;
        cancel.check()?;
        let mut missing = 0u64;
        // A referenced chunk that is not indexed is marked all the same:
        // an unindexed pack file holding it is then kept for `repair`.
        for_each_chunk(repo, &rp, &mut visited, cancel, &mut |id, _| {
            if !repo.chunk_index().has_chunk(id)? {
                missing += 1;
            }
            filter.insert(id);
            Ok(())
        })?;
        if missing > 0 {
            tracing::warn!(restore_point = %rp.id.short(), missing, "restore point references chunks that are not in the repository");
            report.warnings.push(format!(
                "restore point {} references {missing} chunks that are not in the repository (`strata check` names the files)",
                rp.id.short()
            ));
        }
    }
    report.mark_filter_bytes = filter.bytes();
    Ok(filter)
}

/// A pack's entries that the index points at, and which of them are live.
struct PackState {
    entries: Vec<PackEntry>,
    indexed: Vec<bool>,
    live: Vec<bool>,
}

fn inspect(
    repo: &Repository<Exclusive>,
    tier: Tier,
    id: &PackId,
    filter: &ChunkFilter,
) -> Result<PackState> {
    let entries = repo.packs().trailer(tier, id)?;
    let mut indexed = Vec::with_capacity(entries.len());
    let mut live = Vec::with_capacity(entries.len());
    for entry in &entries {
        let here = repo
            .chunk_index()
            .chunk(&entry.id)?
            .is_some_and(|loc| loc.pack == *id && loc.entry.offset == entry.offset);
        indexed.push(here);
        live.push(here && filter.contains(&entry.id));
    }
    Ok(PackState {
        entries,
        indexed,
        live,
    })
}

/// An old pack and the chunk records in it that no restore point uses.
type DeadPack = (PackId, Vec<ChunkId>);

impl PackState {
    /// Chunk records pointing into this pack that nothing references.
    fn dead_ids(&self) -> Vec<ChunkId> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(i, _)| self.indexed[*i] && !self.live[*i])
            .map(|(_, e)| e.id)
            .collect()
    }
}

/// Copies live chunks into new packs and deletes the packs they came from
/// once the copies are durable and indexed.
struct Repacker<'r> {
    repo: &'r Repository<Exclusive>,
    /// Open output packs per (tier, metadata class).
    writers: HashMap<(Tier, bool), OpenPack>,
    /// Old packs (with their dead indexed ids) waiting for their live
    /// chunks' new pack to be sealed.
    waiting: HashMap<(Tier, bool), Vec<DeadPack>>,
}

impl Repacker<'_> {
    fn add(
        &mut self,
        old: PackId,
        record: &PackRecord,
        state: &PackState,
        report: &mut PruneReport,
    ) -> Result<()> {
        let class = (record.tier, record.metadata);
        let packs = self.repo.packs();
        for (i, entry) in state.entries.iter().enumerate() {
            if !state.live[i] {
                continue;
            }
            let bytes = packs.read_stored(record.tier, &old, entry)?;
            // Verify before copying: never spread damage into a new pack.
            // Without the key (a repository server) a sealed chunk cannot
            // be verified; it is copied as it is, and its readers still
            // refuse it if it is damaged.
            if !packs.codec().protection().is_withheld() {
                packs.codec().decode(entry, &old, &bytes)?;
            }
            let writer = match self.writers.get_mut(&class) {
                Some(w) => w,
                None => self
                    .writers
                    .entry(class)
                    .or_insert(packs.open(class.0, class.1)?),
            };
            writer.append(&CompressedChunk {
                id: entry.id,
                kind: entry.kind,
                raw_len: entry.raw_len,
                compression: entry.compression,
                bytes,
            })?;
        }
        let dead = state.dead_ids();
        self.waiting.entry(class).or_default().push((old, dead));
        report.packs_repacked += 1;
        if self.writers.get(&class).is_some_and(OpenPack::is_full) {
            self.seal(class, report)?;
        }
        Ok(())
    }

    fn seal(&mut self, class: (Tier, bool), report: &mut PruneReport) -> Result<()> {
        if let Some(writer) = self.writers.remove(&class) {
            if !writer.is_empty() {
                let sealed = self.repo.seal_pack(writer)?;
                report.packs_written += 1;
                report.bytes_rewritten += sealed.len;
            }
        }
        for (old, dead) in self.waiting.remove(&class).unwrap_or_default() {
            drop_pack(self.repo, class.0, &old, &dead, report)?;
        }
        Ok(())
    }

    fn finish(mut self, report: &mut PruneReport) -> Result<()> {
        let classes: Vec<(Tier, bool)> = self
            .writers
            .keys()
            .chain(self.waiting.keys())
            .copied()
            .collect();
        for class in classes {
            self.seal(class, report)?;
        }
        Ok(())
    }
}

/// Removes a pack: first from the index (with its dead chunk records), then
/// the file.
fn drop_pack(
    repo: &Repository<Exclusive>,
    tier: Tier,
    id: &PackId,
    dead: &[ChunkId],
    report: &mut PruneReport,
) -> Result<()> {
    repo.pack_table().remove_pack(id, dead)?;
    let size = repo.packs().delete(tier, id)?;
    if tier == Tier::Cold && repo.thaw_table().pack_thawed_until(id)?.is_some() {
        crate::tier::remove_pack_thaw(repo, id)?;
    }
    report.packs_deleted += 1;
    report.chunks_removed += dead.len() as u64;
    report.bytes_freed += size;
    tracing::debug!(pack = %id, chunks = dead.len(), "pack deleted");
    Ok(())
}

/// Leaves a pack that cannot be read as it is: it may hold live chunks
/// that `strata repair index` can still salvage.
fn skip_pack(id: &PackId, error: &Error, report: &mut PruneReport) {
    tracing::warn!(pack = %id, error = %error, "left an unreadable pack as it is; `strata repair index` salvages what it holds");
    report.skipped.push(format!(
        "pack {id} left as it is: {error} (`strata repair index` salvages what it holds)"
    ));
}

/// Whether cold pack `id` can be read now (not in an archive class).
fn cold_pack_readable(repo: &Repository<Exclusive>, id: &PackId) -> Result<bool> {
    let availability = repo.cold_store()?.availability(&pack::object_name(id))?;
    Ok(availability == crate::storage::Availability::Readable)
}

/// Removes the tails of cold packs that were never committed (a run
/// stopped between writing a tail and its pack): unindexed, with no pack.
fn remove_orphan_cold_tails(
    repo: &Repository<Exclusive>,
    indexed: &HashSet<PackId>,
    cancel: &CancelToken,
) -> Result<()> {
    for name in repo.store().list("cold-tails/") {
        let name = name?;
        cancel.check()?;
        let Some(id) = pack::id_from_cold_tail_name(&name) else {
            continue;
        };
        if indexed.contains(&id) {
            continue;
        }
        // Without a cold tier no tail has a pack.
        let pack_exists = match repo.config().tiers.cold_dir {
            None => false,
            Some(_) => match repo.cold_store()?.size(&pack::object_name(&id)) {
                Ok(_) => true,
                Err(e) if e.is_not_found() => false,
                Err(e) => return Err(e),
            },
        };
        if !pack_exists {
            repo.store().delete(&name)?;
        }
    }
    Ok(())
}

pub fn prune(
    repo: &Repository<Exclusive>,
    options: &PruneOptions,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<PruneReport> {
    let _span = tracing::info_span!("prune", dry_run = options.dry_run).entered();
    let mut report = PruneReport::default();
    let filter = mark(repo, &mut report, cancel)?;
    sweep(repo, options, filter, report, progress, cancel)
}

/// What was marked elsewhere: by a client that holds the key and walked
/// every restore point of a repository whose server does not (the server
/// checks the client walked exactly the restore points there are).
pub struct Marked {
    pub live: ChunkFilter,
    pub restore_points: u64,
}

/// [`prune`] with the mark done elsewhere ([`Marked`]): the sweep, which
/// needs no key (repacking copies chunks as stored).
pub fn prune_marked(
    repo: &Repository<Exclusive>,
    options: &PruneOptions,
    marked: Marked,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<PruneReport> {
    let _span = tracing::info_span!("prune", dry_run = options.dry_run, marked_elsewhere = true).entered();
    let report = PruneReport {
        restore_points: marked.restore_points,
        mark_filter_bytes: marked.live.bytes(),
        ..PruneReport::default()
    };
    sweep(repo, options, marked.live, report, progress, cancel)
}

fn sweep(
    repo: &Repository<Exclusive>,
    options: &PruneOptions,
    filter: ChunkFilter,
    mut report: PruneReport,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<PruneReport> {
    let packs: Vec<(PackId, PackRecord)> = repo.pack_table().packs().collect::<Result<_>>()?;
    report.packs_before = packs.len() as u64;
    report.bytes_before = packs.iter().map(|(_, r)| r.size).sum();
    progress.add_total(report.bytes_before);
    let known: HashSet<PackId> = packs.iter().map(|(id, _)| *id).collect();
    let mut repacker = Repacker {
        repo,
        writers: HashMap::new(),
        waiting: HashMap::new(),
    };
    for (id, record) in &packs {
        cancel.check()?;
        progress.advance(record.size);
        let state = match inspect(repo, record.tier, id, &filter) {
            Ok(state) => state,
            Err(e) => {
                skip_pack(id, &e, &mut report);
                continue;
            }
        };
        let total: u64 = state.entries.iter().map(|e| e.stored_len as u64).sum();
        let live: u64 = state
            .entries
            .iter()
            .zip(&state.live)
            .filter(|(_, l)| **l)
            .map(|(e, _)| e.stored_len as u64)
            .sum();
        let dead = state.dead_ids();
        let may_repack = match record.tier {
            Tier::Warm => true,
            Tier::Cold => options.repack_cold && repo.thaw_table().pack_thawed_until(id)?.is_none(),
        };
        let mut repack = may_repack && (live as f64) < options.repack_below * total as f64;
        if repack && record.tier == Tier::Cold && !cold_pack_readable(repo, id)? {
            // An archived pack is read only by a thaw: rewriting it would
            // need a restore. It goes once wholly dead.
            repack = false;
        }
        if options.dry_run {
            if live == 0 {
                report.packs_deleted += 1;
                report.bytes_freed += record.size;
            } else if repack {
                report.packs_repacked += 1;
                report.bytes_freed += total - live;
            }
            continue;
        }
        if live == 0 {
            drop_pack(repo, record.tier, id, &dead, &mut report)?;
        } else if repack {
            repacker.add(*id, record, &state, &mut report)?;
        }
    }
    if !options.dry_run {
        repacker.finish(&mut report)?;
        // Pack files no index record names: leftovers of interrupted runs.
        let indexed: HashSet<PackId> = repo
            .pack_table()
            .packs()
            .map(|p| p.map(|(id, _)| id))
            .collect::<Result<_>>()?;
        for name in repo.store().list("packs/") {
            let name = name?;
            cancel.check()?;
            let Some(id) = pack::id_from_object_name(&name) else {
                continue;
            };
            if known.contains(&id) || indexed.contains(&id) {
                continue;
            }
            let state = match inspect(repo, Tier::Warm, &id, &filter) {
                Ok(state) => state,
                Err(e) => {
                    skip_pack(&id, &e, &mut report);
                    continue;
                }
            };
            let needed = state.entries.iter().any(|e| {
                filter.contains(&e.id) && repo.chunk_index().chunk(&e.id).ok().flatten().is_none()
            });
            if needed {
                tracing::warn!(pack = %id, "unindexed pack holds referenced chunks; run `strata repair index`");
                continue;
            }
            drop_pack(repo, Tier::Warm, &id, &[], &mut report)?;
        }
        remove_orphan_cold_tails(repo, &indexed, cancel)?;
    }
    report.bytes_freed = report.bytes_freed.saturating_sub(report.bytes_rewritten);
    progress.finish();
    Ok(report)
}
