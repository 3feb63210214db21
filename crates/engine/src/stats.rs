//! Repository-wide statistics: how much the restore points hold, how much
//! of it is unique after deduplication, and what that costs on disk after
//! compression.

use serde::Serialize;

use crate::error::Result;
use crate::repository::Repository;
use crate::restore_point::RestorePoint;

/// Field names are those of `strata stats --json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RepoStats {
    /// 1 (unencrypted) or 2 (encrypted).
    pub format_version: u32,
    /// `aes-256-gcm` or `none`.
    pub encryption: String,
    pub restore_points: usize,
    pub packs: u64,
    pub pack_bytes: u64,
    pub chunks: u64,
    /// Bytes of the distinct chunks, before compression.
    pub unique_bytes: u64,
    /// Bytes of the distinct chunks as stored.
    pub stored_bytes: u64,
    /// Bytes the restore points hold, counting each one whole.
    pub logical_bytes: u64,
    /// `logical_bytes / unique_bytes`, 1 for an empty repository.
    pub dedup_ratio: f64,
    /// `unique_bytes / stored_bytes`, 1 for an empty repository.
    pub compression_ratio: f64,
}

/// What the index says is stored: the part of [`RepoStats`] that needs no
/// key (a server computes it; its admin client adds the restore points).
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct StoredTotals {
    pub packs: u64,
    pub pack_bytes: u64,
    pub chunks: u64,
    pub unique_bytes: u64,
    pub stored_bytes: u64,
}

pub fn stored_totals<M>(repo: &Repository<M>) -> Result<StoredTotals> {
    let mut totals = StoredTotals::default();
    for pack in repo.pack_table().packs() {
        let (_, record) = pack?;
        totals.packs += 1;
        totals.pack_bytes += record.size;
    }
    for chunk in repo.chunk_index().chunks() {
        let chunk = chunk?;
        totals.chunks += 1;
        totals.unique_bytes += chunk.entry.raw_len as u64;
        totals.stored_bytes += chunk.entry.stored_len as u64;
    }
    Ok(totals)
}

pub fn stats<M>(repo: &Repository<M>) -> Result<RepoStats> {
    Ok(combine(repo.config(), stored_totals(repo)?, &repo.restore_points()?))
}

/// The statistics of a repository with `config`, given what it stores and
/// its restore points.
pub fn combine(config: &crate::config::RepoConfig, totals: StoredTotals, points: &[RestorePoint]) -> RepoStats {
    let logical_bytes: u64 = points.iter().map(|rp| rp.manifest.stats.bytes_total).sum();
    RepoStats {
        format_version: config.format_version,
        encryption: encryption_name(config),
        restore_points: points.len(),
        packs: totals.packs,
        pack_bytes: totals.pack_bytes,
        chunks: totals.chunks,
        unique_bytes: totals.unique_bytes,
        stored_bytes: totals.stored_bytes,
        logical_bytes,
        dedup_ratio: ratio(logical_bytes, totals.unique_bytes),
        compression_ratio: ratio(totals.unique_bytes, totals.stored_bytes),
    }
}

/// How a repository's objects are protected, as commands name it.
pub fn encryption_name(config: &crate::config::RepoConfig) -> String {
    config
        .encryption
        .as_ref()
        .map_or_else(|| "none".to_string(), |e| e.cipher.clone())
}

fn ratio(numerator: u64, denominator: u64) -> f64 {
    if denominator == 0 {
        1.0
    } else {
        numerator as f64 / denominator as f64
    }
}
