//! The index in RocksDB: one column family per concern, plus the file
//! cache of incremental backups (which only saves reading, so `repair
//! index` leaves it empty) and the schema version.
//!
//! The writer opens the database as RocksDB's primary; every other process
//! opens a secondary instance, which never blocks the writer and can catch
//! up with it. Column families, keys and values are listed in
//! `docs/FORMAT.md`; their names and encodings are the on-disk format.

use std::path::{Path, PathBuf};

use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor,
    IteratorMode, LruCacheOptions, Options, WriteBatch, WriteOptions, DB,
};

use crate::codec::DecodeError;
use crate::error::{Error, Result};
use crate::format::INDEX_SCHEMA_VERSION;
use crate::id::{ChunkId, PackId, RestorePointId};
use crate::pack::PackEntry;

use super::records::{ChunkLocation, PackRecord, Tier};
use super::{Catalog, ChunkIndex, PackTable, ThawMark, ThawTable, ThawTarget};

const CF_CHUNKS: &str = "chunks";
const CF_PACKS: &str = "packs";
const CF_RESTORE_POINTS: &str = "restore_points";
/// Written by releases before the file cache moved to the data mover's
/// own store; still opened (RocksDB wants every column family named), and
/// emptied by a rebuild.
const CF_FILE_CACHE: &str = "file_cache";
const CF_META: &str = "meta";
/// Thawed cold packs and restore points, with their expiry.
const CF_THAW: &str = "thaw";
/// Thaw keys: one of these, then the pack's or restore point's id.
const THAW_PACK: u8 = b'p';
const THAW_RESTORE_POINT: u8 = b'r';
const ALL_CFS: [&str; 6] = [
    CF_CHUNKS,
    CF_PACKS,
    CF_RESTORE_POINTS,
    CF_FILE_CACHE,
    CF_META,
    CF_THAW,
];
const SCHEMA_KEY: &[u8] = b"schema_version";

/// Memory RocksDB may use for blocks, index and filters, whatever the
/// repository's size.
const WRITER_BLOCK_CACHE_BYTES: usize = 128 << 20;
/// Readers, such as a long-running mount, look up far less.
const READER_BLOCK_CACHE_BYTES: usize = 32 << 20;

pub struct RocksIndex {
    db: DB,
    path: PathBuf,
    secondary_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum IndexAccess {
    /// Creates the database if missing; only `init` and `repair` use it.
    Create,
    /// Creates a database without its schema version, which only
    /// [`RocksIndex::mark_rebuilt`] writes: until then every command refuses it,
    /// so a rebuild cut short at any point is never taken for a whole index.
    Rebuild,
    /// The single writer.
    Primary,
    /// A reader beside a possible writer.
    Secondary,
}

/// Table options chosen so that a lookup costs one data-block read at most.
///
/// Index and filter blocks live in the block cache, so their memory is
/// bounded, but partitioned: a large table's index is a small top-level
/// block (pinned) over 4 KiB partitions that the cache holds like data.
/// With one monolithic index block, a table of a million chunks has an
/// index block of about 800 KB; RocksDB splits a 32 MiB cache into 64
/// shards of 512 KiB, a block larger than its shard is evicted as soon as
/// it is used, and every lookup then re-read the whole index block.
fn options(cache_bytes: usize) -> (Options, Vec<ColumnFamilyDescriptor>) {
    let mut cache_opts = LruCacheOptions::default();
    cache_opts.set_capacity(cache_bytes);
    // Shards of at least 4 MiB, so that no single block outgrows one.
    cache_opts.set_num_shard_bits(((cache_bytes >> 22).max(1).ilog2() as i32).min(6));
    let cache = Cache::new_lru_cache_opts(&cache_opts);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&cache);
    table.set_bloom_filter(10.0, false);
    table.set_cache_index_and_filter_blocks(true);
    table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
    table.set_partition_filters(true);
    table.set_metadata_block_size(4096);
    table.set_pin_top_level_index_and_filter(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    let mut cf_opts = Options::default();
    cf_opts.set_block_based_table_factory(&table);
    let mut db_opts = Options::default();
    db_opts.create_missing_column_families(true);
    db_opts.set_max_open_files(512);
    db_opts.set_keep_log_file_num(4);
    let cfs = ALL_CFS
        .iter()
        .map(|name| ColumnFamilyDescriptor::new(*name, cf_opts.clone()))
        .collect();
    (db_opts, cfs)
}

impl RocksIndex {
    pub fn open(path: &Path, access: IndexAccess) -> Result<Self> {
        let cache_bytes = match access {
            IndexAccess::Secondary => READER_BLOCK_CACHE_BYTES,
            _ => WRITER_BLOCK_CACHE_BYTES,
        };
        let (mut opts, cfs) = options(cache_bytes);
        let wrap = |source: rocksdb::Error| Error::Index {
            path: path.to_path_buf(),
            detail: source.into_string(),
        };
        let creating = matches!(access, IndexAccess::Create | IndexAccess::Rebuild);
        if !creating && !path.join("CURRENT").exists() {
            return Err(Error::corrupt(
                format!("repository index {}", path.display()),
                "it is missing; rebuild it with `strata repair index`",
            ));
        }
        let (db, secondary_dir) = match access {
            IndexAccess::Create | IndexAccess::Rebuild | IndexAccess::Primary => {
                opts.create_if_missing(creating);
                (
                    DB::open_cf_descriptors(&opts, path, cfs).map_err(wrap)?,
                    None,
                )
            }
            IndexAccess::Secondary => {
                // RocksDB wants max_open_files = -1 for secondaries so that
                // SST files deleted by the primary stay readable.
                opts.set_max_open_files(-1);
                let dir = std::env::temp_dir().join(format!(
                    "strata-index-reader-{}-{}",
                    std::process::id(),
                    crate::storage::local::staging_name("s")
                ));
                // A reader cannot create column families: open those the
                // writer has made (one added by a newer release may not
                // exist yet in an older repository; it reads as empty).
                let existing = DB::list_cf(&opts, path).map_err(wrap)?;
                let cfs: Vec<ColumnFamilyDescriptor> = cfs
                    .into_iter()
                    .filter(|cf| existing.iter().any(|name| name == cf.name()))
                    .collect();
                let db =
                    DB::open_cf_descriptors_as_secondary(&opts, path, &dir, cfs).map_err(wrap)?;
                (db, Some(dir))
            }
        };
        let index = RocksIndex {
            db,
            path: path.to_path_buf(),
            secondary_dir,
        };
        if access != IndexAccess::Rebuild {
            index.check_schema(access == IndexAccess::Create)?;
        }
        Ok(index)
    }

    fn check_schema(&self, creating: bool) -> Result<()> {
        let cf = self.cf(CF_META);
        match self.db.get_cf(cf, SCHEMA_KEY).map_err(|e| self.err(e))? {
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_slice())
                    .map(u32::from_le_bytes)
                    .unwrap_or(u32::MAX);
                if found != INDEX_SCHEMA_VERSION {
                    return Err(Error::UnsupportedVersion {
                        what: format!("repository index {}", self.path.display()),
                        found: found as u64,
                        supported: INDEX_SCHEMA_VERSION as u64,
                    });
                }
                Ok(())
            }
            None if creating => self
                .db
                .put_cf_opt(
                    cf,
                    SCHEMA_KEY,
                    INDEX_SCHEMA_VERSION.to_le_bytes(),
                    &sync_write(),
                )
                .map_err(|e| self.err(e)),
            None => Err(Error::corrupt(
                format!("repository index {}", self.path.display()),
                "schema version missing; rebuild it with `strata repair index`",
            )),
        }
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are created on open")
    }

    fn err(&self, source: rocksdb::Error) -> Error {
        Error::Index {
            path: self.path.clone(),
            detail: source.into_string(),
        }
    }

    fn corrupt(&self, what: &str, err: DecodeError) -> Error {
        Error::corrupt(
            format!("repository index {} ({what})", self.path.display()),
            err,
        )
    }

    fn bad_key(&self, what: &'static str, key: &[u8]) -> Error {
        self.corrupt(
            what,
            DecodeError {
                what,
                offset: 0,
                reason: format!("{} bytes", key.len()),
            },
        )
    }

    /// True for a reader's instance, whose view can fall behind the writer.
    pub fn is_secondary(&self) -> bool {
        self.secondary_dir.is_some()
    }

    /// For secondaries: see what the writer has committed since opening.
    pub fn catch_up(&self) -> Result<()> {
        if self.secondary_dir.is_some() {
            self.db
                .try_catch_up_with_primary()
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// A thaw mark's expiry. A reader of a repository no build with thaws
    /// has written to lacks the column family: nothing is thawed there.
    fn get_expiry(&self, target: &ThawTarget) -> Result<Option<i64>> {
        Ok(self
            .db
            .get_pinned_cf(
                match self.db.cf_handle(CF_THAW) {
                    Some(cf) => cf,
                    None => return Ok(None),
                },
                thaw_key(target),
            )
            .map_err(|e| self.err(e))?
            .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok().map(i64::from_le_bytes)))
    }

    fn set_expiry(&self, target: &ThawTarget, until: i64) -> Result<()> {
        self.db
            .put_cf_opt(
                self.cf(CF_THAW),
                thaw_key(target),
                until.to_le_bytes(),
                &sync_write(),
            )
            .map_err(|e| self.err(e))
    }

    /// Drops every index entry of every column family but the schema
    /// version; used by `repair index` before rebuilding.
    pub fn clear_derived(&self) -> Result<()> {
        for name in [CF_CHUNKS, CF_PACKS, CF_RESTORE_POINTS, CF_FILE_CACHE] {
            let cf = self.cf(name);
            let mut batch = WriteBatch::default();
            for item in self.db.iterator_cf(cf, IteratorMode::Start) {
                let (k, _) = item.map_err(|e| self.err(e))?;
                batch.delete_cf(cf, k);
                if batch.len() >= 10_000 {
                    self.db
                        .write(std::mem::take(&mut batch))
                        .map_err(|e| self.err(e))?;
                }
            }
            self.db
                .write_opt(batch, &sync_write())
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Ends a rebuild begun with [`IndexAccess::Rebuild`].
    pub fn mark_rebuilt(&self) -> Result<()> {
        self.db
            .put_cf_opt(
                self.cf(CF_META),
                SCHEMA_KEY,
                INDEX_SCHEMA_VERSION.to_le_bytes(),
                &sync_write(),
            )
            .map_err(|e| self.err(e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RocksIndex {
    fn drop(&mut self) {
        if let Some(dir) = &self.secondary_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl ChunkIndex for RocksIndex {
    fn chunk(&self, id: &ChunkId) -> Result<Option<ChunkLocation>> {
        match self
            .db
            .get_pinned_cf(self.cf(CF_CHUNKS), id.as_bytes())
            .map_err(|e| self.err(e))?
        {
            Some(v) => Ok(Some(
                ChunkLocation::decode(*id, &v).map_err(|e| self.corrupt("chunk", e))?,
            )),
            None => Ok(None),
        }
    }

    fn has_chunk(&self, id: &ChunkId) -> Result<bool> {
        let cf = self.cf(CF_CHUNKS);
        if !self.db.key_may_exist_cf(cf, id.as_bytes()) {
            return Ok(false);
        }
        Ok(self
            .db
            .get_pinned_cf(cf, id.as_bytes())
            .map_err(|e| self.err(e))?
            .is_some())
    }

    fn has_warm_chunk(&self, id: &ChunkId) -> Result<bool> {
        let cf = self.cf(CF_CHUNKS);
        if !self.db.key_may_exist_cf(cf, id.as_bytes()) {
            return Ok(false);
        }
        Ok(
            match self
                .db
                .get_pinned_cf(cf, id.as_bytes())
                .map_err(|e| self.err(e))?
            {
                Some(v) => ChunkLocation::decode(*id, &v).is_ok_and(|l| l.tier == Tier::Warm),
                None => false,
            },
        )
    }

    fn warm_chunks(&self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        let keys = ids.iter().map(|id| id.as_bytes().as_slice());
        let results = self
            .db
            .batched_multi_get_cf(self.cf(CF_CHUNKS), keys, false);
        ids.iter()
            .zip(results)
            .map(|(id, result)| {
                Ok(match result.map_err(|e| self.err(e))? {
                    Some(v) => ChunkLocation::decode(*id, &v).is_ok_and(|l| l.tier == Tier::Warm),
                    None => false,
                })
            })
            .collect()
    }

    fn chunks(&self) -> Box<dyn Iterator<Item = Result<ChunkLocation>> + '_> {
        Box::new(
            self.db
                .iterator_cf(self.cf(CF_CHUNKS), IteratorMode::Start)
                .map(move |item| {
                    let (k, v) = item.map_err(|e| self.err(e))?;
                    let id =
                        ChunkId::from_slice(&k).ok_or_else(|| self.bad_key("chunk key", &k))?;
                    ChunkLocation::decode(id, &v).map_err(|e| self.corrupt("chunk", e))
                }),
        )
    }
}

impl PackTable for RocksIndex {
    fn add_pack(&self, pack: PackId, record: &PackRecord, entries: &[PackEntry]) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_PACKS), pack.as_bytes(), record.encode());
        let chunks = self.cf(CF_CHUNKS);
        for entry in entries {
            let location = ChunkLocation {
                pack,
                tier: record.tier,
                entry: *entry,
            };
            batch.put_cf(chunks, entry.id.as_bytes(), location.encode());
        }
        self.db
            .write_opt(batch, &sync_write())
            .map_err(|e| self.err(e))
    }

    fn remove_pack(&self, pack: &PackId, chunks: &[ChunkId]) -> Result<()> {
        let mut batch = WriteBatch::default();
        let cf = self.cf(CF_CHUNKS);
        for id in chunks {
            if self.chunk(id)?.is_some_and(|loc| loc.pack == *pack) {
                batch.delete_cf(cf, id.as_bytes());
            }
        }
        batch.delete_cf(self.cf(CF_PACKS), pack.as_bytes());
        self.db
            .write_opt(batch, &sync_write())
            .map_err(|e| self.err(e))
    }

    fn pack(&self, id: &PackId) -> Result<Option<PackRecord>> {
        match self
            .db
            .get_pinned_cf(self.cf(CF_PACKS), id.as_bytes())
            .map_err(|e| self.err(e))?
        {
            Some(v) => Ok(Some(
                PackRecord::decode(&v).map_err(|e| self.corrupt("pack", e))?,
            )),
            None => Ok(None),
        }
    }

    fn packs(&self) -> Box<dyn Iterator<Item = Result<(PackId, PackRecord)>> + '_> {
        Box::new(
            self.db
                .iterator_cf(self.cf(CF_PACKS), IteratorMode::Start)
                .map(move |item| {
                    let (k, v) = item.map_err(|e| self.err(e))?;
                    let id = PackId::from_slice(&k).ok_or_else(|| self.bad_key("pack key", &k))?;
                    Ok((
                        id,
                        PackRecord::decode(&v).map_err(|e| self.corrupt("pack", e))?,
                    ))
                }),
        )
    }
}

impl Catalog for RocksIndex {
    fn add_restore_point(&self, id: &RestorePointId, manifest: &[u8]) -> Result<()> {
        self.db
            .put_cf_opt(
                self.cf(CF_RESTORE_POINTS),
                id.as_bytes(),
                manifest,
                &sync_write(),
            )
            .map_err(|e| self.err(e))
    }

    fn remove_restore_point(&self, id: &RestorePointId) -> Result<()> {
        self.db
            .delete_cf_opt(self.cf(CF_RESTORE_POINTS), id.as_bytes(), &sync_write())
            .map_err(|e| self.err(e))
    }

    fn restore_points(&self) -> Result<Vec<(RestorePointId, Vec<u8>)>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_RESTORE_POINTS), IteratorMode::Start)
        {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if let Some(id) = RestorePointId::from_slice(&k) {
                out.push((id, v.into_vec()));
            }
        }
        Ok(out)
    }
}

impl ThawTable for RocksIndex {
    fn set_pack_thawed(&self, pack: &PackId, until: i64) -> Result<()> {
        self.set_expiry(&ThawTarget::Pack(*pack), until)
    }

    fn pack_thawed_until(&self, pack: &PackId) -> Result<Option<i64>> {
        self.get_expiry(&ThawTarget::Pack(*pack))
    }

    fn set_restore_point_thawed(&self, id: &RestorePointId, until: i64) -> Result<()> {
        self.set_expiry(&ThawTarget::RestorePoint(*id), until)
    }

    fn restore_point_thawed_until(&self, id: &RestorePointId) -> Result<Option<i64>> {
        self.get_expiry(&ThawTarget::RestorePoint(*id))
    }

    /// Marks whose key or expiry does not decode are left out: nothing
    /// this build writes makes one.
    fn thaws(&self) -> Result<Vec<ThawMark>> {
        let mut out = Vec::new();
        let Some(cf) = self.db.cf_handle(CF_THAW) else {
            return Ok(out);
        };
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let Ok(until) = <[u8; 8]>::try_from(&v[..]).map(i64::from_le_bytes) else {
                continue;
            };
            let target = match k.split_first() {
                Some((&THAW_PACK, id)) => PackId::from_slice(id).map(ThawTarget::Pack),
                Some((&THAW_RESTORE_POINT, id)) => {
                    RestorePointId::from_slice(id).map(ThawTarget::RestorePoint)
                }
                _ => None,
            };
            if let Some(target) = target {
                out.push(ThawMark { target, until });
            }
        }
        Ok(out)
    }

    fn remove_thaw(&self, target: &ThawTarget) -> Result<()> {
        self.db
            .delete_cf_opt(self.cf(CF_THAW), thaw_key(target), &sync_write())
            .map_err(|e| self.err(e))
    }
}

fn thaw_key(target: &ThawTarget) -> Vec<u8> {
    let (kind, id) = match target {
        ThawTarget::Pack(pack) => (THAW_PACK, pack.as_bytes().as_slice()),
        ThawTarget::RestorePoint(rp) => (THAW_RESTORE_POINT, rp.as_bytes().as_slice()),
    };
    let mut key = Vec::with_capacity(1 + id.len());
    key.push(kind);
    key.extend_from_slice(id);
    key
}

fn sync_write() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    opts
}

#[cfg(test)]
mod tests;
