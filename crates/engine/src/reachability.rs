//! What restore points reference: reads the manifests, lists a restore
//! point's chunks (through [`crate::walk`]), and keeps a compact filter to
//! remember chunk ids. Shared by prune (what is live), tiering (what
//! only old restore points use), check and repair.

use std::collections::HashSet;

use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::restore_point::{self, Manifest, RestorePoint};
use crate::storage::ObjectStore;
use crate::walk::{walk, EachChunk, Place};

/// Every manifest object under `manifests/`, read from the objects
/// themselves (the truth) rather than from the catalog in the index.
#[derive(Default)]
pub struct Manifests {
    /// Restore points whose manifest decodes, with its bytes, oldest first.
    pub readable: Vec<(RestorePoint, Vec<u8>)>,
    /// Manifest objects that cannot be read or decoded: (name, cause).
    pub damaged: Vec<(String, String)>,
}

pub fn read_manifests(
    store: &dyn ObjectStore,
    protection: &crate::crypto::Protection,
    cancel: &CancelToken,
) -> Result<Manifests> {
    let mut out = Manifests::default();
    for name in store.list_all("manifests/")? {
        cancel.check()?;
        let Some(id) = restore_point::id_from_object_name(&name) else {
            continue;
        };
        match store
            .get(&name)
            .and_then(|bytes| Manifest::open(protection, &id, &bytes).map(|m| (m, bytes)))
        {
            Ok((manifest, bytes)) => out.readable.push((RestorePoint { id, manifest }, bytes)),
            // Damaged content; a manifest of a newer version or one that
            // cannot be read now is no reason to set a restore point aside.
            Err(e @ Error::Corrupt { .. }) => out.damaged.push((name, e.to_string())),
            Err(e) => return Err(e),
        }
    }
    out.readable
        .sort_by_key(|(rp, _)| (rp.manifest.time.as_nanos(), rp.id));
    Ok(out)
}

/// Calls `visit(id, is_data)` for every chunk `rp` references. Metadata
/// chunks in `visited` are not read again (and their chunks not visited
/// again), so shared trees cost once per walk.
pub fn for_each_chunk(
    repo: &impl crate::walk::Loader,
    rp: &RestorePoint,
    visited: &mut HashSet<ChunkId>,
    cancel: &CancelToken,
    visit: &mut dyn FnMut(&ChunkId, bool) -> Result<()>,
) -> Result<()> {
    walk(
        repo,
        rp,
        &mut EachChunk(|id: &ChunkId, place: &Place| {
            visit(id, place.is_data())?;
            // A VM description is read for each restore point using it, so
            // the pages it shares are still visited (if not descended into).
            Ok(match place {
                Place::Tree { .. } | Place::DiskMapPage { .. } => visited.insert(*id),
                _ => true,
            })
        }),
        cancel,
    )
}

/// A Bloom filter over chunk ids, about 10 bits per expected id (120 MB
/// for 100 million chunks). It never forgets an id; it may claim an id it
/// never saw (about 1 % of the time), so callers use it only where such a
/// mistake is harmless (keeping a chunk, leaving it warm). Ids are BLAKE3
/// hashes, so their own bytes serve as the hash values.
pub struct ChunkFilter {
    bits: Vec<u64>,
    mask: u64,
}

const FILTER_PROBES: u64 = 7;

impl ChunkFilter {
    pub fn with_capacity(items: u64) -> Self {
        let bits = (items.max(1024) * 10).next_power_of_two();
        ChunkFilter {
            bits: vec![0; (bits / 64) as usize],
            mask: bits - 1,
        }
    }

    fn probes(id: &ChunkId) -> impl Iterator<Item = u64> + '_ {
        let b = id.as_bytes();
        let h1 = u64::from_le_bytes(b[0..8].try_into().expect("8 bytes"));
        let h2 = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")) | 1;
        (0..FILTER_PROBES).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)))
    }

    pub fn insert(&mut self, id: &ChunkId) {
        for p in Self::probes(id) {
            let bit = p & self.mask;
            self.bits[(bit / 64) as usize] |= 1 << (bit % 64);
        }
    }

    pub fn contains(&self, id: &ChunkId) -> bool {
        Self::probes(id).all(|p| {
            let bit = p & self.mask;
            self.bits[(bit / 64) as usize] & (1 << (bit % 64)) != 0
        })
    }

    pub fn bytes(&self) -> u64 {
        self.bits.len() as u64 * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_has_no_false_negatives_and_few_false_positives() {
        let mut filter = ChunkFilter::with_capacity(10_000);
        let ids: Vec<ChunkId> = (0..10_000u32)
            .map(|i| ChunkId::of(&i.to_le_bytes()))
            .collect();
        for id in &ids {
            filter.insert(id);
        }
        assert!(ids.iter().all(|id| filter.contains(id)));
        let false_positives = (10_000..110_000u32)
            .filter(|i| filter.contains(&ChunkId::of(&i.to_le_bytes())))
            .count();
        assert!(
            false_positives < 2_000,
            "{false_positives} false positives in 100000"
        );
    }
}
