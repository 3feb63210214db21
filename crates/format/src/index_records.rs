//! Values stored in the RocksDB index, each led by a version byte.

use crate::codec::{DecodeError, Decoder, Encoder};
use crate::format::INDEX_RECORD_VERSION;
use crate::id::{ChunkId, PackId};
use crate::pack::{ChunkKind, Compression, PackEntry};

/// Which storage tier holds a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Tier {
    Warm = 0,
    Cold = 1,
}

impl Tier {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Tier::Warm),
            1 => Some(Tier::Cold),
            _ => None,
        }
    }
}

/// Where a chunk is: chunk index value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLocation {
    pub pack: PackId,
    pub tier: Tier,
    pub entry: PackEntry,
}

fn check_version(d: &mut Decoder) -> Result<(), DecodeError> {
    let v = d.u8()?;
    if v != INDEX_RECORD_VERSION {
        return Err(d.error(format!("unknown record version {v}")));
    }
    Ok(())
}

impl ChunkLocation {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        e.u8(INDEX_RECORD_VERSION)
            .raw(self.pack.as_bytes())
            .u64(self.entry.offset)
            .u32(self.entry.stored_len)
            .u32(self.entry.raw_len)
            .u8(self.entry.kind as u8)
            .u8(self.entry.compression as u8)
            .u8(self.tier as u8);
        e.into_bytes()
    }

    pub fn decode(id: ChunkId, bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(bytes, "chunk index record");
        check_version(&mut d)?;
        let pack = PackId(d.array()?);
        let offset = d.u64()?;
        let stored_len = d.u32()?;
        let raw_len = d.u32()?;
        let kind = d.u8()?;
        let kind =
            ChunkKind::from_u8(kind).ok_or_else(|| d.error(format!("unknown kind {kind}")))?;
        let compression = d.u8()?;
        let compression = Compression::from_u8(compression)
            .ok_or_else(|| d.error(format!("unknown compression {compression}")))?;
        let tier = d.u8()?;
        let tier = Tier::from_u8(tier).ok_or_else(|| d.error(format!("unknown tier {tier}")))?;
        d.finish()?;
        Ok(ChunkLocation {
            pack,
            tier,
            entry: PackEntry {
                id,
                offset,
                stored_len,
                raw_len,
                kind,
                compression,
            },
        })
    }
}

/// Pack table value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackRecord {
    pub tier: Tier,
    /// True for packs of metadata chunks (trees), which stay warm.
    pub metadata: bool,
    pub size: u64,
    pub chunk_count: u32,
    /// Stored bytes of chunks that the index points at in this pack.
    pub live_bytes: u64,
    /// Seconds since the Unix epoch.
    pub created: i64,
}

impl PackRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        e.u8(INDEX_RECORD_VERSION)
            .u8(self.tier as u8)
            .u8(self.metadata as u8)
            .u64(self.size)
            .u32(self.chunk_count)
            .u64(self.live_bytes)
            .i64(self.created);
        e.into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(bytes, "pack table record");
        check_version(&mut d)?;
        let tier = d.u8()?;
        let tier = Tier::from_u8(tier).ok_or_else(|| d.error(format!("unknown tier {tier}")))?;
        let metadata = d.u8()? != 0;
        let record = PackRecord {
            tier,
            metadata,
            size: d.u64()?,
            chunk_count: d.u32()?,
            live_bytes: d.u64()?,
            created: d.i64()?,
        };
        d.finish()?;
        Ok(record)
    }
}

/// What an incremental backup needs to know to trust a file unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileFingerprint {
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub inode: u64,
    pub device: u64,
}

/// File cache value: the fingerprint and the chunk list it was read as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileCacheRecord {
    pub fingerprint: FileFingerprint,
    pub extents: Vec<crate::tree::Extent>,
}

impl FileCacheRecord {
    pub fn encode(&self) -> Vec<u8> {
        let f = &self.fingerprint;
        let mut e = Encoder::new();
        e.u8(INDEX_RECORD_VERSION)
            .u64(f.size)
            .raw(&f.mtime_ns.to_le_bytes())
            .raw(&f.ctime_ns.to_le_bytes())
            .u64(f.inode)
            .u64(f.device);
        crate::tree::encode_extents(&mut e, &self.extents);
        e.into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(bytes, "file cache record");
        check_version(&mut d)?;
        let fingerprint = FileFingerprint {
            size: d.u64()?,
            mtime_ns: i128::from_le_bytes(d.array()?),
            ctime_ns: i128::from_le_bytes(d.array()?),
            inode: d.u64()?,
            device: d.u64()?,
        };
        let extents = crate::tree::decode_extents(&mut d)?;
        d.finish()?;
        Ok(FileCacheRecord {
            fingerprint,
            extents,
        })
    }
}

/// File cache value for a directory: what its listing looked like when
/// its tree was stored, so an unchanged directory reuses the tree without
/// a look at its files' records or their chunks.
///
/// `run` names the backup run that stored the tree; the tree may be
/// trusted only once that run is known to have committed a restore point
/// that is still kept and warm (see [`encode_run_record`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirCacheRecord {
    pub run: [u8; 16],
    /// Digest of the names and full status of the directory's entries.
    pub listing: [u8; 32],
    /// Digest of the subdirectories' tree ids, in name order.
    pub subtrees: [u8; 32],
    pub tree: ChunkId,
}

impl DirCacheRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        e.u8(INDEX_RECORD_VERSION)
            .raw(&self.run)
            .raw(&self.listing)
            .raw(&self.subtrees)
            .raw(self.tree.as_bytes());
        e.into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(bytes, "directory cache record");
        check_version(&mut d)?;
        let record = DirCacheRecord {
            run: d.array()?,
            listing: d.array()?,
            subtrees: d.array()?,
            tree: ChunkId(d.array()?),
        };
        d.finish()?;
        Ok(record)
    }
}

/// File cache value for a backup run that committed: the restore point
/// it made.
pub fn encode_run_record(restore_point: &crate::id::RestorePointId) -> Vec<u8> {
    let mut e = Encoder::new();
    e.u8(INDEX_RECORD_VERSION).raw(restore_point.as_bytes());
    e.into_bytes()
}

pub fn decode_run_record(bytes: &[u8]) -> Result<crate::id::RestorePointId, DecodeError> {
    let mut d = Decoder::new(bytes, "backup run record");
    check_version(&mut d)?;
    let id = crate::id::RestorePointId(d.array()?);
    d.finish()?;
    Ok(id)
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::RestorePointId;

    #[test]
    fn directory_and_run_records_round_trip_and_refuse_damage() {
        let record = DirCacheRecord {
            run: [1; 16],
            listing: [2; 32],
            subtrees: [3; 32],
            tree: ChunkId([4; 32]),
        };
        let bytes = record.encode();
        assert_eq!(bytes.len(), 1 + 16 + 32 + 32 + 32);
        assert_eq!(DirCacheRecord::decode(&bytes).unwrap(), record);
        assert!(DirCacheRecord::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut unknown = bytes.clone();
        unknown[0] = 9;
        assert!(DirCacheRecord::decode(&unknown).is_err());

        let id = RestorePointId([7; 32]);
        assert_eq!(decode_run_record(&encode_run_record(&id)).unwrap(), id);
        assert!(decode_run_record(&[INDEX_RECORD_VERSION, 1, 2]).is_err());
    }
}
