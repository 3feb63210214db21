//! Warm and cold tiers.
//!
//! `tier run` makes restore points older than the policy age cold: data
//! chunks that only such restore points reference are recompressed (zstd
//! level 12 where that shrinks them) into packs on the cold tier, and their
//! warm copies are then reclaimed by the prune sweep. Chunks that any warm
//! restore point also uses stay warm, and metadata (trees, VM descriptions,
//! disk maps) always stays warm, so listing and browsing a cold restore
//! point need no thaw. A chunk's old copy is deleted only after its new
//! copy is durable and indexed, so kill -9 at any moment loses nothing.
//!
//! Thawing a cold restore point is [`crate::thaw`]'s; its expired copies
//! are removed by the next `tier run`.

use std::collections::HashSet;

use crate::cancel::CancelToken;
use crate::clock::now;
use crate::error::Result;
use crate::id::{ChunkId, PackId};
use crate::index::{ThawMark, ThawTarget, Tier};
use crate::pack::{ChunkEncoder, CompressedChunk, Compression};
use crate::packs::OpenPack;
use crate::progress::{NoProgress, Progress};
use crate::prune::Marked;
use crate::reachability::{for_each_chunk, ChunkFilter};
use crate::walk::Loader;
use crate::repository::{Exclusive, Repository};
use crate::thaw_record::{pack_thaw_record_name, restore_point_thaw_record_name, thaw_object_name};
use crate::restore_point::RestorePoint;
use crate::selector::format_time;

/// Higher than the default 3: cold data is written once and rarely read.
/// Level 19 ran at 5 MB/s a core here; 12 keeps most of its gain.
const COLD_COMPRESSION_LEVEL: i32 = 12;
const DAY: i64 = 86_400;

/// Records a pack's thaw: durably beside the copy first (the truth, which
/// `repair index` reads), then in the index. `record` is the sealed thaw
/// record, from [`crate::thaw::ThawRecords`].
pub(crate) fn record_pack_thaw(repo: &Repository<Exclusive>, pack: &PackId, until: i64, record: Vec<u8>) -> Result<()> {
    repo.store().put(&pack_thaw_record_name(pack), &record)?;
    repo.thaw_table().set_pack_thawed(pack, until)
}

/// Forgets a pack's thaw: unindexed first (a reader then gets the "thaw
/// first" error, never a missing file), then its copy and its record.
pub fn remove_pack_thaw(repo: &Repository<Exclusive>, pack: &PackId) -> Result<()> {
    repo.thaw_table().remove_thaw(&ThawTarget::Pack(*pack))?;
    repo.store().delete(&thaw_object_name(pack))?;
    repo.store().delete(&pack_thaw_record_name(pack))
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct TierReport {
    pub warm_days: u32,
    pub restore_points_cold: u64,
    pub restore_points_warm: u64,
    pub chunks_moved: u64,
    pub bytes_moved: u64,
    pub cold_bytes_written: u64,
    pub cold_packs_written: u64,
    pub warm_bytes_freed: u64,
    pub thaw_copies_expired: u64,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct TierStatus {
    pub warm_days: u32,
    pub cold_dir: Option<String>,
    /// The storage class of cold packs in a bucket, if one was chosen.
    pub cold_storage_class: Option<String>,
    pub warm_packs: u64,
    pub warm_bytes: u64,
    pub cold_packs: u64,
    pub cold_bytes: u64,
    pub thawed_packs: u64,
    pub restore_points_warm: u64,
    pub restore_points_cold: u64,
    /// Thawed restore points with the time their thaw expires.
    pub thawed: Vec<(String, String)>,
}

fn is_cold(rp: &RestorePoint, cutoff: i64) -> bool {
    rp.manifest.time.sec < cutoff
}

pub fn status<M>(repo: &Repository<M>) -> Result<TierStatus> {
    let mut status = stored_status(repo)?;
    count_restore_points(&mut status, &repo.restore_points()?);
    Ok(status)
}

/// [`status`] but for the restore point counts: what a server (without
/// the key) says; its client adds them with [`count_restore_points`].
pub fn stored_status<M>(repo: &Repository<M>) -> Result<TierStatus> {
    let config = &repo.config().tiers;
    let mut status = TierStatus {
        warm_days: config.warm_days,
        cold_dir: config.cold_dir.as_ref().map(|d| d.display().to_string()),
        cold_storage_class: config.cold_storage_class.clone(),
        ..Default::default()
    };
    for pack in repo.pack_table().packs() {
        let (_, record) = pack?;
        match record.tier {
            Tier::Warm => {
                status.warm_packs += 1;
                status.warm_bytes += record.size;
            }
            Tier::Cold => {
                status.cold_packs += 1;
                status.cold_bytes += record.size;
            }
        }
    }
    let current = now().sec;
    for ThawMark { target, until } in repo.thaw_table().thaws()? {
        if until <= current {
            continue;
        }
        match target {
            ThawTarget::Pack(_) => status.thawed_packs += 1,
            ThawTarget::RestorePoint(id) => status.thawed.push((
                id.short(),
                format_time(crate::tree::Timestamp {
                    sec: until,
                    nsec: 0,
                }),
            )),
        }
    }
    Ok(status)
}

/// Counts `points` as warm or cold by the policy age in `status`.
pub fn count_restore_points(status: &mut TierStatus, points: &[RestorePoint]) {
    let cutoff = now().sec - status.warm_days as i64 * DAY;
    for rp in points {
        if is_cold(rp, cutoff) {
            status.restore_points_cold += 1;
        } else {
            status.restore_points_warm += 1;
        }
    }
}

/// Moves chunks into cold packs, one open pack at a time.
struct ColdPacker<'r> {
    repo: &'r Repository<Exclusive>,
    encoder: ChunkEncoder,
    writer: Option<OpenPack>,
    /// Chunks in the open pack, not yet indexed as cold.
    pending: HashSet<ChunkId>,
    report: &'r mut TierReport,
}

impl<'r> ColdPacker<'r> {
    fn new(repo: &'r Repository<Exclusive>, report: &'r mut TierReport) -> Result<Self> {
        Ok(ColdPacker {
            repo,
            encoder: repo.codec().encoder_at(COLD_COMPRESSION_LEVEL)?,
            writer: None,
            pending: HashSet::new(),
            report,
        })
    }

    fn move_chunk(&mut self, id: &ChunkId, cancel: &CancelToken) -> Result<()> {
        cancel.check()?;
        if self.pending.contains(id) {
            return Ok(());
        }
        let Some(location) = self.repo.chunk_index().chunk(id)? else {
            return Ok(());
        };
        if location.tier != Tier::Warm {
            return Ok(());
        }
        let packs = self.repo.packs();
        let stored = packs.read_stored(Tier::Warm, &location.pack, &location.entry)?;
        // A chunk stored raw did not compress at level 3; it will not at a
        // higher level either. Without the key (a server) it moves as
        // stored: opening it is what the key is withheld for.
        let recompressed = match location.entry.compression {
            _ if self.repo.protection().is_withheld() => None,
            Compression::None => None,
            Compression::Zstd => {
                let plain = packs.codec().decode(&location.entry, &location.pack, &stored)?;
                Some(self.encoder.encode(*id, location.entry.kind, &plain)?)
            }
        };
        let chunk =
            if let Some(recompressed) = recompressed.filter(|r| r.bytes.len() < stored.len()) {
                recompressed
            } else {
                CompressedChunk {
                    id: *id,
                    kind: location.entry.kind,
                    raw_len: location.entry.raw_len,
                    compression: location.entry.compression,
                    bytes: stored,
                }
            };
        let writer = match &mut self.writer {
            Some(w) => w,
            None => self.writer.insert(packs.open(Tier::Cold, false)?),
        };
        writer.append(&chunk)?;
        self.pending.insert(*id);
        self.report.chunks_moved += 1;
        self.report.bytes_moved += chunk.raw_len as u64;
        if writer.is_full() {
            self.seal()?;
        }
        Ok(())
    }

    /// Makes the cold pack durable on the cold tier, then points the index
    /// at it.
    fn seal(&mut self) -> Result<()> {
        let Some(writer) = self.writer.take() else {
            return Ok(());
        };
        let (sealed, before) = self.repo.seal_pack_over(writer)?;
        self.report.cold_packs_written += 1;
        self.report.cold_bytes_written += sealed.len;
        self.pending.clear();
        // A warm pack whose chunks all moved unchanged and in order has
        // the same bytes, so the same id, as the cold pack just indexed in
        // its place: its warm copy is now unindexed, and prune would never
        // reclaim it (it knows the id). Every chunk it holds is in the
        // cold copy, so it goes now. Only a pack the index had as warm: a
        // name is not proof that the warm copy is another object.
        if before.is_some_and(|record| record.tier == Tier::Warm) {
            self.report.warm_bytes_freed += self.repo.packs().delete(Tier::Warm, &sealed.id)?;
        }
        Ok(())
    }
}

/// Splits restore points into cold ones (older than `warm_days`, by their
/// own time, and of `only_sources` when it names any: a policy tiers its
/// own sources) and warm ones. A restore point of another source counts
/// as warm, so the data it shares with a cold one stays warm.
pub fn split_by_age(
    points: Vec<RestorePoint>,
    warm_days: u32,
    only_sources: &[String],
) -> (Vec<RestorePoint>, Vec<RestorePoint>) {
    let cutoff = now().sec - warm_days as i64 * DAY;
    points.into_iter().partition(|rp| {
        is_cold(rp, cutoff) && (only_sources.is_empty() || only_sources.contains(&rp.manifest.source))
    })
}

/// The walk of a tier run, the part that needs the key: calls `to_move`
/// for each data chunk that only cold restore points use (a chunk used
/// twice comes twice: the mover skips what it moved already), and
/// `referenced` for every chunk any restore point uses (what the sweep
/// after the move must keep).
pub fn mark(
    loader: &impl Loader,
    cold: &[RestorePoint],
    warm: &[RestorePoint],
    filter_capacity: u64,
    cancel: &CancelToken,
    to_move: &mut dyn FnMut(&ChunkId) -> Result<()>,
    referenced: &mut dyn FnMut(&ChunkId) -> Result<()>,
) -> Result<()> {
    // Chunks any warm restore point uses stay warm (a filter false
    // positive only leaves a chunk warm).
    let mut keep_warm = ChunkFilter::with_capacity(filter_capacity);
    let mut visited = HashSet::new();
    for rp in warm {
        for_each_chunk(loader, rp, &mut visited, cancel, &mut |id, is_data| {
            if is_data {
                keep_warm.insert(id);
            }
            referenced(id)
        })?;
    }
    let mut visited = HashSet::new();
    for rp in cold {
        cancel.check()?;
        for_each_chunk(loader, rp, &mut visited, cancel, &mut |id, is_data| {
            if is_data && !keep_warm.contains(id) {
                to_move(id)?;
            }
            referenced(id)
        })?;
    }
    Ok(())
}

pub fn run(
    repo: &Repository<Exclusive>,
    warm_days: Option<u32>,
    only_sources: &[String],
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<TierReport> {
    let days = warm_days.unwrap_or(repo.config().tiers.warm_days);
    let _span = tracing::info_span!("tier_run", warm_days = days).entered();
    repo.cold_store()?;
    let (cold, warm) = split_by_age(repo.restore_points()?, days, only_sources);
    let mut report = TierReport {
        warm_days: days,
        restore_points_cold: cold.len() as u64,
        restore_points_warm: warm.len() as u64,
        ..Default::default()
    };
    let capacity = repo.chunk_index().chunks().count() as u64;
    let mut live = ChunkFilter::with_capacity(capacity);
    let mut packer = ColdPacker::new(repo, &mut report)?;
    let moved = (|| -> Result<()> {
        mark(
            repo,
            &cold,
            &warm,
            capacity,
            cancel,
            &mut |id| {
                progress.advance(1);
                packer.move_chunk(id, cancel)
            },
            &mut |id| {
                live.insert(id);
                Ok(())
            },
        )?;
        packer.seal()
    })();
    // An open pack dropped on an error leaves nothing behind.
    moved?;
    let restore_points = (cold.len() + warm.len()) as u64;
    finish(repo, &mut report, Marked { live, restore_points }, cancel)?;
    progress.finish();
    Ok(report)
}

/// A tier run whose walk was done elsewhere ([`mark`], by an admin client
/// of a server that lacks the key): moves the chunks `to_move` names, then
/// sweeps keeping what `marked` holds live. Without the key, chunks move
/// as stored rather than recompressed.
pub fn run_marked(
    repo: &Repository<Exclusive>,
    mut report: TierReport,
    to_move: &[ChunkId],
    marked: Marked,
    cancel: &CancelToken,
) -> Result<TierReport> {
    let _span = tracing::info_span!("tier_run", warm_days = report.warm_days, marked_elsewhere = true).entered();
    repo.cold_store()?;
    let mut packer = ColdPacker::new(repo, &mut report)?;
    let moved = (|| -> Result<()> {
        for id in to_move {
            packer.move_chunk(id, cancel)?;
        }
        packer.seal()
    })();
    moved?;
    finish(repo, &mut report, marked, cancel)?;
    Ok(report)
}

/// After the move: the warm copies of moved chunks are now unindexed, so
/// the sweep reclaims them. Packs left mostly dead by the move are
/// rewritten, so moving data really frees warm space. Then expired thaws
/// go.
fn finish(
    repo: &Repository<Exclusive>,
    report: &mut TierReport,
    marked: Marked,
    cancel: &CancelToken,
) -> Result<()> {
    let swept = crate::prune::prune_marked(
        repo,
        &crate::prune::PruneOptions {
            repack_below: 0.8,
            // Cold packs are only dropped when empty: rewriting them would
            // read the archival tier and cancel thaws.
            repack_cold: false,
            dry_run: false,
        },
        marked,
        &NoProgress,
        cancel,
    )?;
    report.warm_bytes_freed += swept.bytes_freed;
    report.thaw_copies_expired = expire_thaws(repo)?;
    Ok(())
}

/// Removes thaw copies and marks whose time has passed.
fn expire_thaws(repo: &Repository<Exclusive>) -> Result<u64> {
    let current = now().sec;
    let mut expired = 0;
    for ThawMark { target, until } in repo.thaw_table().thaws()? {
        if until > current {
            continue;
        }
        match target {
            ThawTarget::Pack(pack) => {
                remove_pack_thaw(repo, &pack)?;
                expired += 1;
            }
            ThawTarget::RestorePoint(rp) => {
                repo.thaw_table().remove_thaw(&target)?;
                repo.store().delete(&restore_point_thaw_record_name(&rp))?;
            }
        }
    }
    Ok(expired)
}
