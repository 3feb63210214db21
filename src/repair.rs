//! `strata repair index`: rebuilds the RocksDB index from the packs and
//! manifests alone. The file cache starts empty, so the next backup of each
//! source reads its files again (storing nothing new).

use crate::error::Result;
use crate::index::{PackRecord, Tier};
use crate::pack;
use crate::progress::Progress;
use crate::repository::{Exclusive, Repository};
use crate::restore_point::{self, Manifest};
use crate::storage::ObjectStore;

#[derive(Debug, Default, serde::Serialize)]
pub struct RepairReport {
    pub packs: u64,
    pub chunks: u64,
    pub restore_points: u64,
    /// Packs or manifests that could not be read, with the reason.
    pub skipped: Vec<String>,
}

pub fn repair_index(repo: &mut Repository<Exclusive>, progress: &Progress) -> Result<RepairReport> {
    let _span = tracing::info_span!("repair_index").entered();
    repo.recreate_index()?;
    let mut report = RepairReport::default();
    let mut names: Vec<(String, Tier)> = repo
        .store()
        .list("packs/")?
        .into_iter()
        .map(|n| (n, Tier::Warm))
        .collect();
    if let Ok(cold) = repo.cold_store() {
        names.extend(cold.list("packs/")?.into_iter().map(|n| (n, Tier::Cold)));
    }
    progress.inc_length(names.len() as u64);
    for (name, tier) in names {
        progress.inc(1);
        let Some(id) = pack::id_from_object_name(&name) else {
            continue;
        };
        let store: &dyn ObjectStore = match tier {
            Tier::Warm => repo.store(),
            Tier::Cold => repo.cold_store()?,
        };
        let entries = match pack::read_trailer(store, &name) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(pack = %name, error = %e, "skipping unreadable pack");
                report.skipped.push(e.to_string());
                continue;
            }
        };
        let record = PackRecord {
            tier,
            metadata: !entries.is_empty() && entries.iter().all(|e| e.kind.is_metadata()),
            size: store.size(&name)?,
            chunk_count: entries.len() as u32,
            live_bytes: entries.iter().map(|e| e.stored_len as u64).sum(),
            created: crate::restore_point::now().sec,
        };
        repo.index().add_pack(id, &record, &entries)?;
        report.packs += 1;
        report.chunks += entries.len() as u64;
    }
    for name in repo.store().list("manifests/")? {
        let Some(id) = restore_point::id_from_object_name(&name) else {
            continue;
        };
        let bytes = repo.store().get(&name)?;
        match Manifest::decode(&id, &bytes) {
            Ok(_) => {
                repo.index().add_restore_point(&id, &bytes)?;
                report.restore_points += 1;
            }
            Err(e) => report.skipped.push(e.to_string()),
        }
    }
    progress.finish();
    Ok(report)
}
