//! Repository-wide statistics: how much the restore points hold, how much
//! of it is unique after deduplication, and what that costs on disk after
//! compression.

use serde::Serialize;

use crate::error::Result;
use crate::repository::Repository;

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

pub fn stats<M>(repo: &Repository<M>) -> Result<RepoStats> {
    let (mut packs, mut pack_bytes) = (0u64, 0u64);
    for pack in repo.pack_table().packs() {
        let (_, record) = pack?;
        packs += 1;
        pack_bytes += record.size;
    }
    let (mut chunks, mut unique_bytes, mut stored_bytes) = (0u64, 0u64, 0u64);
    for chunk in repo.chunk_index().chunks() {
        let chunk = chunk?;
        chunks += 1;
        unique_bytes += chunk.entry.raw_len as u64;
        stored_bytes += chunk.entry.stored_len as u64;
    }
    let points = repo.restore_points()?;
    let logical_bytes: u64 = points.iter().map(|rp| rp.manifest.stats.bytes_total).sum();
    Ok(RepoStats {
        format_version: repo.config().format_version,
        encryption: encryption_name(repo.config()),
        restore_points: points.len(),
        packs,
        pack_bytes,
        chunks,
        unique_bytes,
        stored_bytes,
        logical_bytes,
        dedup_ratio: ratio(logical_bytes, unique_bytes),
        compression_ratio: ratio(unique_bytes, stored_bytes),
    })
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
