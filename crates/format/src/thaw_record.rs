//! Thaw records and the names of thawed objects.
//!
//! A thawed cold pack is copied to `thaw/<xx>/<pack id>.pack` on the warm
//! tier, and its expiry is written beside it as a thaw record,
//! `thaw/<xx>/<pack id>.until`; a thawed restore point has its own record,
//! `thaw/restore-points/<id>.until`. The records are the truth that
//! `repair index` rebuilds the thaw table from.

use crate::crypto::{Protection, Sealed};
use crate::error::{Error, Result};
use crate::format::{THAW_RECORD_MAGIC, THAW_RECORD_VERSION};
use crate::id::{PackId, RestorePointId};
use crate::pack;

/// Object name of a thawed copy of a cold pack, in the warm store.
pub fn thaw_object_name(pack: &PackId) -> String {
    format!("thaw/{}", &pack::object_name(pack)["packs/".len()..])
}

/// Object holding a thawed pack's expiry, beside its copy:
/// `thaw/<xx>/<pack id>.until`.
pub fn pack_thaw_record_name(pack: &PackId) -> String {
    let copy = thaw_object_name(pack);
    format!("{}.until", copy.trim_end_matches(".pack"))
}

/// Object holding a thawed restore point's expiry:
/// `thaw/restore-points/<id>.until`.
pub fn restore_point_thaw_record_name(id: &RestorePointId) -> String {
    format!("thaw/restore-points/{id}.until")
}

/// A thaw record: magic, version, expiry (Unix seconds).
pub fn encode_thaw_record(until: i64) -> Vec<u8> {
    let mut e = crate::codec::Encoder::new();
    e.raw(&THAW_RECORD_MAGIC)
        .u16(THAW_RECORD_VERSION)
        .i64(until);
    e.into_bytes()
}

/// The stored form of the thaw record `name`: sealed under its name when
/// the repository is encrypted (so a record cannot be moved to extend
/// another thaw).
pub fn seal_thaw_record(protection: &Protection, name: &str, until: i64) -> Result<Vec<u8>> {
    protection.seal(Sealed::Named { name }, &encode_thaw_record(until))
}

/// Opens and decodes the stored thaw record `name`.
pub fn open_thaw_record(protection: &Protection, name: &str, stored: &[u8]) -> Result<i64> {
    let bytes = protection.open(Sealed::Named { name }, stored, || format!("thaw record {name}"))?;
    decode_thaw_record(name, &bytes)
}

pub fn decode_thaw_record(name: &str, bytes: &[u8]) -> Result<i64> {
    let object = || format!("thaw record {name}");
    let mut d = crate::codec::Decoder::new(bytes, "thaw record");
    d.expect_magic(&THAW_RECORD_MAGIC)
        .map_err(|e| Error::decode(object(), e))?;
    let version = d.u16().map_err(|e| Error::decode(object(), e))?;
    if version != THAW_RECORD_VERSION {
        return Err(Error::UnsupportedVersion {
            what: object(),
            found: version as u64,
            supported: THAW_RECORD_VERSION as u64,
        });
    }
    let until = d.i64().map_err(|e| Error::decode(object(), e))?;
    d.finish().map_err(|e| Error::decode(object(), e))?;
    Ok(until)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thaw_record_matches_golden_and_reads_back() {
        let until = 1_700_000_000;
        let bytes = encode_thaw_record(until);
        let golden = crate::codec::assert_golden("thaw_record_v1.bin", &bytes);
        assert_eq!(decode_thaw_record("golden", &golden).unwrap(), until);
        let mut newer = golden.clone();
        newer[4] = 2;
        let err = decode_thaw_record("newer", &newer).unwrap_err().to_string();
        assert!(err.contains("version 2"), "{err}");
        assert!(decode_thaw_record("short", &golden[..10]).is_err());
    }
}
