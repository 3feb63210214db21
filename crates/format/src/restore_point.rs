//! Restore points: the manifest that commits a backup (its format and
//! object names only; how people name restore points is `selector`, the
//! time a backup takes is `clock`).
//!
//! A manifest is stored as the object `manifests/<id>`, where the id is the
//! BLAKE3 of its bytes (keyed, and the object sealed, in an encrypted
//! repository). Writing it is the commit point of a backup: it is
//! written only after every chunk and tree it references is durable, so a
//! restore point either exists completely or not at all.

use crate::codec::{DecodeError, Decoder, Encoder};
use crate::error::{Error, Result};
use crate::format::{MANIFEST_MAGIC, MANIFEST_VERSION};
use crate::crypto::{Protection, Sealed};
use crate::id::{ChunkId, IdKey, RestorePointId};
use crate::tree::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum RestorePointKind {
    /// A file tree; `root` is its top tree.
    Files = 0,
    /// A virtual machine or disk image; `root` is its VM description.
    Vm = 1,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BackupStats {
    pub files: u64,
    pub directories: u64,
    /// Logical size of all file contents in the restore point.
    pub bytes_total: u64,
    /// Bytes actually read from the source (unchanged files are not read).
    pub bytes_read: u64,
    /// Raw bytes of chunks the repository did not hold before.
    pub bytes_new: u64,
    /// Bytes those new chunks take in packs, after compression.
    pub bytes_stored: u64,
    pub chunks_new: u64,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MissedFile {
    #[serde(serialize_with = "crate::restore_point::lossy")]
    pub path: Vec<u8>,
    pub reason: String,
}

pub(crate) fn lossy<S: serde::Serializer>(
    bytes: &[u8],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(bytes))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub kind: RestorePointKind,
    pub source: String,
    /// When the data was captured (or the `--time` given), UTC.
    pub time: Timestamp,
    pub hostname: String,
    pub tags: Vec<String>,
    /// The absolute paths that were backed up.
    pub paths: Vec<Vec<u8>>,
    pub root: ChunkId,
    pub parent: Option<RestorePointId>,
    pub stats: BackupStats,
    pub missed: Vec<MissedFile>,
}

pub fn object_name(id: &RestorePointId) -> String {
    format!("manifests/{id}")
}

pub fn id_from_object_name(name: &str) -> Option<RestorePointId> {
    name.strip_prefix("manifests/")?.parse().ok()
}

impl Manifest {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        e.raw(&MANIFEST_MAGIC)
            .u16(MANIFEST_VERSION)
            .u8(self.kind as u8)
            .bytes(self.source.as_bytes());
        e.i64(self.time.sec)
            .u32(self.time.nsec)
            .bytes(self.hostname.as_bytes());
        e.count(self.tags.len());
        for tag in &self.tags {
            e.bytes(tag.as_bytes());
        }
        e.count(self.paths.len());
        for path in &self.paths {
            e.bytes(path);
        }
        e.raw(self.root.as_bytes());
        match &self.parent {
            Some(parent) => e.u8(1).raw(parent.as_bytes()),
            None => e.u8(0),
        };
        let s = &self.stats;
        for v in [
            s.files,
            s.directories,
            s.bytes_total,
            s.bytes_read,
            s.bytes_new,
            s.bytes_stored,
            s.chunks_new,
            s.duration_ms,
        ] {
            e.u64(v);
        }
        e.count(self.missed.len());
        for missed in &self.missed {
            e.bytes(&missed.path).bytes(missed.reason.as_bytes());
        }
        e.into_bytes()
    }

    pub fn id_of(ids: IdKey, bytes: &[u8]) -> RestorePointId {
        ids.restore_point_id(bytes)
    }

    /// The manifest's id and its stored form (sealed under that id when
    /// the repository is encrypted).
    pub fn seal(&self, protection: &Protection) -> Result<(RestorePointId, Vec<u8>)> {
        let bytes = self.encode();
        let id = Self::id_of(protection.ids(), &bytes);
        let stored = protection.seal(Sealed::Manifest { id: id.as_bytes() }, &bytes)?;
        Ok((id, stored))
    }

    /// Opens and decodes the stored manifest of restore point `id`: a
    /// manifest stored under another id (an old one replayed under a new
    /// name) fails to open.
    pub fn open(protection: &Protection, id: &RestorePointId, stored: &[u8]) -> Result<Manifest> {
        let bytes = protection.open(Sealed::Manifest { id: id.as_bytes() }, stored, || {
            format!("manifest {}", object_name(id))
        })?;
        Self::decode(protection.ids(), id, &bytes)
    }

    /// Decodes a manifest, checking that it hashes to `id`.
    pub fn decode(ids: IdKey, id: &RestorePointId, bytes: &[u8]) -> Result<Manifest> {
        let object = || format!("manifest of restore point {id}");
        if Self::id_of(ids, bytes) != *id {
            return Err(Error::corrupt(
                object(),
                "content does not match its id",
            ));
        }
        let mut d = Decoder::new(bytes, "manifest");
        d.expect_magic(&MANIFEST_MAGIC)
            .map_err(|e| Error::decode(object(), e))?;
        let version = d.u16().map_err(|e| Error::decode(object(), e))?;
        if version != MANIFEST_VERSION {
            return Err(Error::UnsupportedVersion {
                what: object(),
                found: version as u64,
                supported: MANIFEST_VERSION as u64,
            });
        }
        Self::decode_body(&mut d)
            .and_then(|m| d.finish().map(|_| m))
            .map_err(|e| Error::decode(object(), e))
    }

    fn decode_body(d: &mut Decoder) -> Result<Manifest, DecodeError> {
        let kind = match d.u8()? {
            0 => RestorePointKind::Files,
            1 => RestorePointKind::Vm,
            other => return Err(d.error(format!("unknown restore point kind {other}"))),
        };
        let text = |d: &mut Decoder| -> Result<String, DecodeError> {
            let bytes = d.bytes()?;
            String::from_utf8(bytes.to_vec()).map_err(|_| d.error("text is not UTF-8"))
        };
        let source = text(d)?;
        let time = Timestamp {
            sec: d.i64()?,
            nsec: d.u32()?,
        };
        let hostname = text(d)?;
        let n = d.count(4)?;
        let tags = (0..n).map(|_| text(d)).collect::<Result<_, _>>()?;
        let n = d.count(4)?;
        let paths = (0..n)
            .map(|_| d.bytes().map(<[u8]>::to_vec))
            .collect::<Result<_, _>>()?;
        let root = ChunkId(d.array()?);
        let parent = match d.u8()? {
            0 => None,
            1 => Some(RestorePointId(d.array()?)),
            other => return Err(d.error(format!("bad parent flag {other}"))),
        };
        let mut v = [0u64; 8];
        for slot in &mut v {
            *slot = d.u64()?;
        }
        let stats = BackupStats {
            files: v[0],
            directories: v[1],
            bytes_total: v[2],
            bytes_read: v[3],
            bytes_new: v[4],
            bytes_stored: v[5],
            chunks_new: v[6],
            duration_ms: v[7],
        };
        let n = d.count(8)?;
        let mut missed = Vec::with_capacity(n);
        for _ in 0..n {
            let path = d.bytes()?.to_vec();
            missed.push(MissedFile {
                path,
                reason: text(d)?,
            });
        }
        Ok(Manifest {
            kind,
            source,
            time,
            hostname,
            tags,
            paths,
            root,
            parent,
            stats,
            missed,
        })
    }
}

/// A restore point known to the catalog.
#[derive(Debug, Clone)]
pub struct RestorePoint {
    pub id: RestorePointId,
    pub manifest: Manifest,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A manifest using every field, for the tests of this and other modules.
    pub(crate) fn sample() -> Manifest {
        Manifest {
            kind: RestorePointKind::Files,
            source: "web01".into(),
            time: Timestamp {
                sec: 1_795_000_000,
                nsec: 5,
            },
            hostname: "host".into(),
            tags: vec!["daily".into()],
            paths: vec![b"/etc".to_vec()],
            root: ChunkId([3; 32]),
            parent: Some(RestorePointId([4; 32])),
            stats: BackupStats {
                files: 10,
                bytes_total: 1000,
                ..Default::default()
            },
            missed: vec![MissedFile {
                path: b"/etc/shadow".to_vec(),
                reason: "permission denied".into(),
            }],
        }
    }

    #[test]
    fn round_trip_and_golden() {
        let bytes = sample().encode();
        let id = Manifest::id_of(IdKey::PLAIN, &bytes);
        assert_eq!(Manifest::decode(IdKey::PLAIN, &id, &bytes).unwrap(), sample());
        let golden = crate::codec::assert_golden("manifest_v1.bin", &bytes);
        assert_eq!(
            Manifest::decode(IdKey::PLAIN, &Manifest::id_of(IdKey::PLAIN, &golden), &golden).unwrap(),
            sample()
        );
    }

    #[test]
    fn flipped_byte_is_detected() {
        let mut bytes = sample().encode();
        let id = Manifest::id_of(IdKey::PLAIN, &bytes);
        bytes[10] ^= 1;
        assert!(Manifest::decode(IdKey::PLAIN, &id, &bytes).is_err());
    }

    #[test]
    fn sealed_manifests_open_only_under_their_own_id() {
        let protection = Protection::encrypted(&crate::crypto::MasterKey::generate().unwrap());
        let (id, stored) = sample().seal(&protection).unwrap();
        assert_ne!(id, Manifest::id_of(IdKey::PLAIN, &sample().encode()), "ids are keyed");
        assert_eq!(Manifest::open(&protection, &id, &stored).unwrap(), sample());
        let mut older = sample();
        older.hostname = "older".into();
        let (older_id, older_stored) = older.seal(&protection).unwrap();
        let err = Manifest::open(&protection, &id, &older_stored).unwrap_err().to_string();
        assert!(err.contains("authentication failed"), "{err}");
        assert!(Manifest::open(&protection, &older_id, &older_stored).is_ok());
        assert!(Manifest::open(&Protection::none(), &id, &stored).is_err());
    }
}
