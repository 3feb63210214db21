//! Thawing a cold restore point: its cold packs copied into the warm
//! store's thaw area (`thaw/…`) and indexed with an expiry, so restores and
//! mounts read them there.
//!
//! A cold tier in an archive class (S3 Glacier, Azure Archive) holds packs
//! nobody can read until the provider restores them, which takes minutes
//! to hours. One thaw run asks the provider to restore each archived pack
//! the restore point needs, copies every pack that is readable, and says
//! how many the provider is still restoring; it never waits while holding
//! the repository's lock. Running it again (the command line does, after
//! a pause, unless told not to wait) copies what has become readable, so
//! a thaw resumes across runs and machines: the provider keeps the state
//! of its restores, the warm tier the copies already made.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::cancel::CancelToken;
use crate::clock::now;
use crate::error::Result;
use crate::id::{ChunkId, PackId, RestorePointId};
use crate::index::Tier;
use crate::pack;
use crate::progress::Progress;
use crate::reachability::for_each_chunk;
use crate::repository::{Exclusive, Repository};
use crate::restore_point::RestorePoint;
use crate::selector::format_time;
use crate::storage::{Availability, RestorePriority};
use crate::thaw_record::{
    pack_thaw_record_name, restore_point_thaw_record_name, seal_thaw_record, thaw_object_name,
};
use crate::tier::record_pack_thaw;

const DAY: i64 = 86_400;

/// Days the provider keeps a restored copy of an archived pack (S3; Azure
/// rehydrates the object itself). The copy only has to outlive its copy
/// into the warm tier, which the next thaw run makes; two days leave room
/// for a run that waits for many packs, at little cost.
const RESTORED_COPY_DAYS: u32 = 2;

#[derive(Debug, Clone, Copy)]
pub struct ThawOptions {
    /// Days the thawed copies are kept.
    pub days: u32,
    /// Only say what a thaw would fetch and request.
    pub plan: bool,
    /// How soon archived packs should be restored.
    pub priority: RestorePriority,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ThawReport {
    pub restore_point: String,
    pub until: String,
    /// Cold packs the restore point needs, with their sizes.
    pub packs: BTreeMap<String, u64>,
    pub bytes: u64,
    pub packs_fetched: u64,
    pub bytes_fetched: u64,
    pub packs_already_thawed: u64,
    /// Archived packs whose restore this run requested from the provider
    /// (with a plan: would request).
    pub restore_requests: u64,
    pub restore_request_bytes: u64,
    /// Packs the provider is still restoring: a later run copies them.
    pub restoring_packs: u64,
    pub restoring_bytes: u64,
    /// Whether every pack is thawed: the restore point can be read.
    pub complete: bool,
}

/// The sealed thaw records a thaw writes beside its copies: sealed here
/// with the repository's key, or, by a server that lacks it, taken from
/// those its admin client sealed for the packs a planning round named.
pub enum ThawRecords {
    /// Seal with the repository's own protection, keeping copies until
    /// `days` from now.
    Sealed { days: u32 },
    /// Records sealed elsewhere, by object name, all keeping copies until
    /// `until` (Unix seconds).
    Given { until: i64, records: HashMap<String, Vec<u8>> },
}

impl ThawRecords {
    fn until(&self) -> i64 {
        match self {
            ThawRecords::Sealed { days } => now().sec + *days as i64 * DAY,
            ThawRecords::Given { until, .. } => *until,
        }
    }

    fn record(&self, repo: &Repository<Exclusive>, name: &str, until: i64) -> Result<Vec<u8>> {
        match self {
            ThawRecords::Sealed { .. } => seal_thaw_record(repo.protection(), name, until),
            ThawRecords::Given { records, .. } => records.get(name).cloned().ok_or_else(|| {
                crate::error::Error::InvalidInput(format!(
                    "no sealed thaw record {name} was given: the restore point's cold packs changed since the plan"
                ))
            }),
        }
    }
}

/// Sizes of the cold packs, to find those a restore point's chunks are in.
fn cold_pack_sizes(repo: &Repository<Exclusive>) -> Result<HashMap<PackId, u64>> {
    let mut sizes = HashMap::new();
    for pack in repo.pack_table().packs() {
        let (id, record) = pack?;
        if record.tier == Tier::Cold {
            sizes.insert(id, record.size);
        }
    }
    Ok(sizes)
}

/// Adds the cold pack holding data chunk `id` (if it is cold) to `packs`.
fn add_cold_pack(
    repo: &Repository<Exclusive>,
    sizes: &HashMap<PackId, u64>,
    id: &ChunkId,
    packs: &mut BTreeMap<PackId, u64>,
) -> Result<()> {
    if let Some(location) = repo.chunk_index().chunk(id)? {
        if location.tier == Tier::Cold {
            packs.insert(location.pack, sizes.get(&location.pack).copied().unwrap_or(0));
        }
    }
    Ok(())
}

/// Thaws what of `rp` can be thawed now; see the module's description.
/// With [`ThawOptions::plan`], changes nothing and requests nothing.
pub fn thaw(
    repo: &Repository<Exclusive>,
    rp: &RestorePoint,
    options: &ThawOptions,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<ThawReport> {
    let _span =
        tracing::info_span!("thaw", restore_point = %rp.id.short(), days = options.days).entered();
    let sizes = cold_pack_sizes(repo)?;
    let mut packs = BTreeMap::new();
    let mut visited = HashSet::new();
    for_each_chunk(repo, rp, &mut visited, cancel, &mut |id, is_data| {
        if is_data {
            add_cold_pack(repo, &sizes, id, &mut packs)?;
        }
        Ok(())
    })?;
    let records = ThawRecords::Sealed { days: options.days };
    thaw_packs(repo, &rp.id, packs, options, &records, progress, cancel)
}

/// [`thaw`] with the walk done elsewhere (by an admin client of a server,
/// which lacks the key to read trees): `data_chunks` are the data chunks
/// of restore point `rp`. A plan needs no records; a thaw of an encrypted
/// repository needs those sealed for the packs its plan named.
pub fn thaw_named(
    repo: &Repository<Exclusive>,
    rp: &RestorePointId,
    data_chunks: &[ChunkId],
    options: &ThawOptions,
    records: &ThawRecords,
    cancel: &CancelToken,
) -> Result<ThawReport> {
    let _span = tracing::info_span!("thaw", restore_point = %rp.short(), days = options.days, marked_elsewhere = true)
        .entered();
    let sizes = cold_pack_sizes(repo)?;
    let mut packs = BTreeMap::new();
    for id in data_chunks {
        cancel.check()?;
        add_cold_pack(repo, &sizes, id, &mut packs)?;
    }
    thaw_packs(repo, rp, packs, options, records, &crate::progress::NoProgress, cancel)
}

fn thaw_packs(
    repo: &Repository<Exclusive>,
    rp: &RestorePointId,
    packs: BTreeMap<PackId, u64>,
    options: &ThawOptions,
    records: &ThawRecords,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<ThawReport> {
    let until = records.until();
    let mut report = ThawReport {
        restore_point: rp.to_string(),
        until: format_time(crate::tree::Timestamp {
            sec: until,
            nsec: 0,
        }),
        packs: packs
            .iter()
            .map(|(id, size)| (id.to_string(), *size))
            .collect(),
        bytes: packs.values().sum(),
        ..Default::default()
    };
    if !options.plan {
        progress.add_total(report.bytes);
    }
    let result = (|| -> Result<()> {
        for (pack, size) in &packs {
            cancel.check()?;
            if repo
                .store()
                .size(&thaw_object_name(pack))
                .is_ok_and(|s| s == *size)
            {
                // Copied by an earlier run: just extend it (and finish its
                // return to the archive, should that run have stopped
                // before it).
                if !options.plan {
                    let record = records.record(repo, &pack_thaw_record_name(pack), until)?;
                    record_pack_thaw(repo, pack, until, record)?;
                    return_to_archive(repo, pack);
                    progress.advance(*size);
                }
                report.packs_already_thawed += 1;
                continue;
            }
            if thaw_pack(repo, pack, *size, until, options, records, &mut report)? && !options.plan {
                progress.advance(*size);
            }
        }
        report.complete = report.restoring_packs == 0 && !options.plan;
        if report.complete {
            let name = restore_point_thaw_record_name(rp);
            repo.store().put(&name, &records.record(repo, &name, until)?)?;
            repo.thaw_table().set_restore_point_thawed(rp, until)?;
        }
        Ok(())
    })();
    progress.finish();
    result.map(|_| report)
}

/// Copies one cold pack into the thaw area if it can be read now, or asks
/// for (or waits on) its restore if it is archived. Returns whether it
/// was copied (with a plan: would be).
fn thaw_pack(
    repo: &Repository<Exclusive>,
    pack: &PackId,
    size: u64,
    until: i64,
    options: &ThawOptions,
    records: &ThawRecords,
    report: &mut ThawReport,
) -> Result<bool> {
    let cold = repo.cold_store()?;
    let name = pack::object_name(pack);
    let mut availability = cold.availability(&name)?;
    if availability == Availability::Archived {
        report.restore_requests += 1;
        report.restore_request_bytes += size;
        if options.plan {
            return Ok(false);
        }
        cold.request_restore(&name, RESTORED_COPY_DAYS, options.priority)?;
        tracing::info!(pack = %pack, size, "requested the restore of an archived pack");
        // Some restores finish at once (a provider's fastest tier, an
        // emulator); the rest are for a later run.
        availability = cold.availability(&name)?;
    }
    match availability {
        Availability::Readable if options.plan => Ok(true),
        Availability::Readable => {
            let record = records.record(repo, &pack_thaw_record_name(pack), until)?;
            let fetched = repo.packs().copy_to_thaw_area(pack)?;
            record_pack_thaw(repo, pack, until, record)?;
            report.packs_fetched += 1;
            report.bytes_fetched += fetched;
            return_to_archive(repo, pack);
            Ok(true)
        }
        Availability::Archived | Availability::Restoring => {
            report.restoring_packs += 1;
            report.restoring_bytes += size;
            Ok(false)
        }
    }
}

/// Sends a copied pack back to its archive class, and its price. A
/// failure costs money, not data: a warning, and the next thaw of a
/// restore point using the pack tries again.
fn return_to_archive(repo: &Repository<Exclusive>, pack: &PackId) {
    let returned = repo
        .cold_store()
        .and_then(|cold| cold.return_to_archive(&pack::object_name(pack)));
    if let Err(e) = returned {
        tracing::warn!(pack = %pack, "could not return the pack to its archive class: {e}");
    }
}
