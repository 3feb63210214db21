//! Packs made elsewhere, by a remote data mover, taken into the
//! repository: checked for everything that can be checked without the
//! key, then stored and indexed exactly like a pack sealed here.
//!
//! A server cannot open a sealed chunk, so in an encrypted repository it
//! cannot check that a chunk's bytes hash to its id (in an unencrypted one
//! it does); what it always checks is that the pack is one of
//! this repository's packs in every other respect: named by the hash of
//! its bytes, of this repository's pack version, its trailer intact, its
//! chunks laid end to end with no bytes hidden between them, no id twice,
//! one class (metadata or data) only, and every length consistent with
//! its compression and sealing.

use std::collections::HashSet;

use crate::crypto::SEAL_OVERHEAD;
use crate::error::{Error, Result};
use crate::format::{PACK_ENTRY_LEN, PACK_FOOTER_LEN, PACK_HEADER_LEN};
use crate::id::PackId;
use crate::index::{PackRecord, Tier};
use crate::pack::{self, Compression, PackEntry};
use crate::repository::{Exclusive, Repository};

/// A pack taken in by [`Repository::import_pack`].
#[derive(Debug)]
pub struct ImportedPack {
    pub entries: Vec<PackEntry>,
    pub metadata: bool,
    /// The pack was already stored and indexed (a retried upload): nothing
    /// was written.
    pub already_stored: bool,
}

impl Repository<Exclusive> {
    /// Checks `bytes` as pack `id` of this repository, then stores it on
    /// the warm tier and indexes it: durable first, then visible.
    pub fn import_pack(&self, id: &PackId, bytes: &[u8]) -> Result<ImportedPack> {
        let (entries, metadata) = verify_pack(id, bytes, self.codec().pack_version(), self.protection().is_encrypted())?;
        if !self.protection().is_encrypted() {
            // Nothing is sealed, so every chunk can be checked against its
            // id: an uploader cannot store wrong bytes under a real id.
            let mut plain = Vec::new();
            for entry in &entries {
                let start = entry.offset as usize;
                let stored = &bytes[start..start + entry.stored_len as usize];
                self.codec()
                    .decode_borrowed_into(entry, id, stored, &mut plain)
                    .map_err(|e| Error::corrupt(format!("uploaded pack {id}"), e.to_string()))?;
            }
        }
        if self.pack_table().pack(id)?.is_some() {
            return Ok(ImportedPack { entries, metadata, already_stored: true });
        }
        self.store().put(&pack::object_name(id), bytes)?;
        let record = PackRecord {
            tier: Tier::Warm,
            metadata,
            size: bytes.len() as u64,
            chunk_count: u32::try_from(entries.len()).unwrap_or(u32::MAX),
            live_bytes: entries.iter().map(|e| u64::from(e.stored_len)).sum(),
            created: crate::clock::now().sec,
        };
        self.pack_table().add_pack(*id, &record, &entries)?;
        Ok(ImportedPack { entries, metadata, already_stored: false })
    }
}

/// The entries of pack `id` and whether it holds metadata, if `bytes` are
/// a well-formed pack of `version` named by their hash.
pub fn verify_pack(id: &PackId, bytes: &[u8], version: u32, encrypted: bool) -> Result<(Vec<PackEntry>, bool)> {
    let object = format!("uploaded pack {id}");
    let refuse = |detail: String| Error::corrupt(object.clone(), detail);
    if blake3::hash(bytes).as_bytes()[..16] != id.0 {
        return Err(refuse("content does not match its name".into()));
    }
    let entries = pack::reader::trailer_of(bytes, &object)?;
    let found = pack::reader::check_header(&bytes[..PACK_HEADER_LEN], &object)?;
    if found != version {
        return Err(refuse(format!(
            "pack version {found}, but this repository's packs are version {version}"
        )));
    }
    let Some(first) = entries.first() else {
        return Err(refuse("it holds no chunk".into()));
    };
    let metadata = first.kind.is_metadata();
    let data_end = bytes.len() - PACK_FOOTER_LEN - entries.len() * PACK_ENTRY_LEN;
    let mut expected_offset = PACK_HEADER_LEN as u64;
    let mut ids = HashSet::with_capacity(entries.len());
    for entry in &entries {
        let name = entry.id;
        if entry.offset != expected_offset {
            return Err(refuse(format!(
                "chunk {name} starts at byte {}, not right after the previous one (byte {expected_offset})",
                entry.offset
            )));
        }
        expected_offset += u64::from(entry.stored_len);
        if !ids.insert(entry.id) {
            return Err(refuse(format!("chunk {name} is listed twice")));
        }
        if entry.kind.is_metadata() != metadata {
            return Err(refuse(format!("chunk {name} is of another class than the pack's first chunk (metadata and data never share a pack)")));
        }
        let overhead = if encrypted { SEAL_OVERHEAD as u64 } else { 0 };
        let stored = u64::from(entry.stored_len);
        let consistent = match entry.compression {
            Compression::None => stored == u64::from(entry.raw_len) + overhead,
            Compression::Zstd => stored >= overhead,
        };
        if !consistent {
            return Err(refuse(format!(
                "chunk {name} stores {stored} bytes, which cannot hold {} bytes as its compression and sealing say",
                entry.raw_len
            )));
        }
    }
    if expected_offset != data_end as u64 {
        return Err(refuse(format!(
            "its chunks end at byte {expected_offset}, but its data area ends at byte {data_end}"
        )));
    }
    Ok((entries, metadata))
}
