//! The pack service: the one place that routes a pack to its tier's
//! store, seals packs, and reads a chunk's stored bytes back.
//!
//! ```text
//!  backup pipeline ─┐                 ┌─▶ warm store (Arc<dyn ObjectStore>)
//!  tier run ────────┼─▶ Packs ─ codec ┤
//!  prune, repair ───┘                 └─▶ cold store
//! ```
//! Sealing writes a pack through its store's streaming writer and commits
//! it under its content-derived name; the caller indexes it only after
//! that ([`crate::repository::Repository::seal_pack`] does both), so the
//! index never points into a pack that could still vanish.

#![deny(clippy::cast_possible_truncation)]

use std::sync::Arc;

use crate::crypto::Protection;
use crate::error::{Error, Result};
use crate::id::PackId;
use crate::index::{PackRecord, Tier};
use crate::format::{PACK_FOOTER_LEN, PACK_HEADER_LEN};
use crate::pack::{self, reader, ChunkCodec, CompressedChunk, PackEntry, PackWriter};
use crate::storage::{Availability, ObjectStore, ObjectWriter};

/// Buffers reused across chunk reads: a reader of many chunks (a disk
/// restore) faults in their pages once instead of once per chunk.
#[derive(Debug, Default)]
pub struct ChunkBuffers {
    /// The chunk as stored in its pack.
    pub stored: Vec<u8>,
    /// The verified plaintext of the last chunk read.
    pub plain: Vec<u8>,
}

pub struct Packs {
    warm: Arc<dyn ObjectStore>,
    /// The warm tier for chunk reads (restore, mount): through a bucket's
    /// local read cache.
    warm_reads: Arc<dyn ObjectStore>,
    cold: Option<Arc<dyn ObjectStore>>,
    codec: ChunkCodec,
    target_size: u64,
}

/// A pack being filled, bound for one tier and one class of chunks
/// (metadata and data never share a pack, so metadata can stay warm).
pub struct OpenPack {
    tier: Tier,
    metadata: bool,
    writer: PackWriter<Box<dyn ObjectWriter>>,
    target_size: u64,
}

/// A pack that is durable under its name, ready to be indexed.
pub struct SealedPack {
    pub id: PackId,
    pub tier: Tier,
    pub metadata: bool,
    pub len: u64,
    pub entries: Vec<PackEntry>,
    /// `entries.len()` as the pack's footer holds it.
    pub chunk_count: u32,
}

impl SealedPack {
    /// The pack table's record for this pack, every chunk live.
    pub fn record(&self) -> PackRecord {
        PackRecord {
            tier: self.tier,
            metadata: self.metadata,
            size: self.len,
            chunk_count: self.chunk_count,
            live_bytes: self.entries.iter().map(|e| e.stored_len as u64).sum(),
            created: crate::clock::now().sec,
        }
    }
}

impl OpenPack {
    pub fn append(&mut self, chunk: &CompressedChunk) -> Result<PackEntry> {
        self.writer.append(chunk)
    }

    pub fn is_empty(&self) -> bool {
        self.writer.is_empty()
    }

    /// Whether the pack has reached the repository's target size.
    pub fn is_full(&self) -> bool {
        self.writer.len() >= self.target_size
    }
}

/// The error for a cold tier that is not configured.
fn no_cold_tier() -> Error {
    Error::InvalidInput(
        "this repository has no cold tier (create one with `strata init --cold DIR`)".into(),
    )
}

impl Packs {
    pub fn new(
        warm: Arc<dyn ObjectStore>,
        cold: Option<Arc<dyn ObjectStore>>,
        codec: ChunkCodec,
        target_size: u64,
    ) -> Self {
        Packs {
            warm_reads: Arc::clone(&warm),
            warm,
            cold,
            codec,
            target_size,
        }
    }

    /// The pack service a repository's configuration asks for: its
    /// compression level and pack size, and its protection (unlocked from
    /// its key slots when it is encrypted).
    pub fn for_config(
        warm: Arc<dyn ObjectStore>,
        cold: Option<Arc<dyn ObjectStore>>,
        config: &crate::config::RepoConfig,
        protection: Protection,
    ) -> Self {
        Self::new(
            warm,
            cold,
            ChunkCodec::with_protection(config.compression_level, protection),
            config.pack_target_size,
        )
    }

    /// Reads chunks of the warm tier through `reads` (the same objects,
    /// through a local cache).
    pub fn with_chunk_reads(mut self, reads: Arc<dyn ObjectStore>) -> Self {
        self.warm_reads = reads;
        self
    }

    pub fn codec(&self) -> &ChunkCodec {
        &self.codec
    }

    pub fn warm(&self) -> &dyn ObjectStore {
        self.warm.as_ref()
    }

    /// The store holding a tier's packs.
    pub fn store(&self, tier: Tier) -> Result<&dyn ObjectStore> {
        match tier {
            Tier::Warm => Ok(self.warm.as_ref()),
            Tier::Cold => self.cold.as_deref().ok_or_else(no_cold_tier),
        }
    }

    /// Starts a pack on `tier`.
    pub fn open(&self, tier: Tier, metadata: bool) -> Result<OpenPack> {
        let store = self.store(tier)?;
        let writer = PackWriter::new(
            store.writer()?,
            format!("a new pack in {}", store.location()),
            self.codec.pack_version(),
        )?;
        Ok(OpenPack {
            tier,
            metadata,
            writer,
            target_size: self.target_size,
        })
    }

    /// Finishes a pack and makes it durable under its name. Nothing is
    /// indexed yet.
    pub fn seal(&self, pack: OpenPack) -> Result<SealedPack> {
        let (finished, out) = pack.writer.finish()?;
        if pack.tier == Tier::Cold {
            // Before the pack: every cold pack then has its tail on the
            // warm tier, where check and `repair index` read its entries
            // even when an archive class has made the pack unreadable.
            self.warm
                .put(&pack::cold_tail_name(&finished.id), &finished.tail)?;
        }
        out.commit(&pack::object_name(&finished.id))?;
        tracing::debug!(pack = %finished.id, chunks = finished.entries.len(), bytes = finished.len, "sealed pack");
        Ok(SealedPack {
            id: finished.id,
            tier: pack.tier,
            metadata: pack.metadata,
            len: finished.len,
            entries: finished.entries,
            chunk_count: finished.chunk_count,
        })
    }

    /// A pack's trailer: a warm pack's read from the pack, a cold one's
    /// as `cold_trailer` reads it.
    pub fn trailer(&self, tier: Tier, id: &PackId) -> Result<Vec<PackEntry>> {
        match tier {
            Tier::Warm => read_trailer(self.warm.as_ref(), &pack::object_name(id)),
            Tier::Cold => self.cold_trailer(id),
        }
    }

    /// A pack's trailer read from the pack object itself.
    pub fn trailer_of_pack_object(&self, tier: Tier, id: &PackId) -> Result<Vec<PackEntry>> {
        read_trailer(self.store(tier)?, &pack::object_name(id))
    }

    /// A cold pack's trailer: from the pack where it can be read (it is
    /// the truth), else, in an archive class, from its tail on the warm
    /// tier, checked against the pack's size (which even an archived
    /// object reports) and the footer's hash.
    fn cold_trailer(&self, id: &PackId) -> Result<Vec<PackEntry>> {
        let cold = self.store(Tier::Cold)?;
        let name = pack::object_name(id);
        match cold.availability(&name)? {
            Availability::Readable => self.trailer_of_pack_object(Tier::Cold, id),
            Availability::Archived | Availability::Restoring => self.cold_tail_trailer(id),
        }
    }

    /// The entries of cold pack `id` from its tail on the warm tier.
    pub(crate) fn cold_tail_trailer(&self, id: &PackId) -> Result<Vec<PackEntry>> {
        let cold = self.store(Tier::Cold)?;
        let name = pack::object_name(id);
        let tail_name = pack::cold_tail_name(id);
        let object = format!("pack {}/{name} (its tail {tail_name} on the warm tier)", cold.location());
        let size = cold.size(&name)?;
        // Its length first: a tail longer than its pack is not read.
        let tail_len = self.warm.size(&tail_name).map_err(|e| {
            if e.is_not_found() {
                Error::corrupt(&object, "archived, and its tail is missing: thaw it to read it")
            } else {
                e
            }
        })?;
        if tail_len > size {
            return Err(Error::corrupt(&object, format!("a tail of {tail_len} bytes for a pack of {size}")));
        }
        let tail = self.warm.get(&tail_name)?;
        let footer_at = tail
            .len()
            .checked_sub(PACK_FOOTER_LEN)
            .ok_or_else(|| Error::corrupt(&object, format!("only {} bytes long", tail.len())))?;
        let (data_end, trailer_hash) = reader::parse_footer(&tail[footer_at..], size, &object)?;
        if size.checked_sub(data_end) != Some(tail.len() as u64) {
            return Err(Error::corrupt(
                &object,
                format!(
                    "{} bytes, but the pack's trailer and footer take {}",
                    tail.len(),
                    size.saturating_sub(data_end)
                ),
            ));
        }
        reader::verified_trailer(&tail[..footer_at], &trailer_hash, data_end, &object)
    }

    /// A chunk's stored bytes (as in the pack: compressed, not verified)
    /// from `object` in `store`, into `stored`.
    fn read_stored_into(
        store: &dyn ObjectStore,
        object: &str,
        entry: &PackEntry,
        stored: &mut Vec<u8>,
    ) -> Result<()> {
        stored.resize(entry.stored_len as usize, 0);
        store.read_at(object, entry.offset, stored)
    }

    /// A chunk's stored bytes from pack `id` on `tier`.
    pub fn read_stored(&self, tier: Tier, id: &PackId, entry: &PackEntry) -> Result<Vec<u8>> {
        let (store, name) = (self.store(tier)?, pack::object_name(id));
        let mut stored = Vec::new();
        Self::read_stored_into(store, &name, entry, &mut stored)?;
        Ok(stored)
    }

    /// A chunk's plaintext from pack `id` on `tier`, verified.
    pub fn read_chunk(&self, tier: Tier, id: &PackId, entry: &PackEntry) -> Result<Vec<u8>> {
        let mut buffers = ChunkBuffers::default();
        self.read_chunk_into(tier, id, entry, &mut buffers)?;
        Ok(buffers.plain)
    }

    /// [`Self::read_chunk`] into reused buffers; the plaintext is left in
    /// `buffers.plain`.
    pub fn read_chunk_into(
        &self,
        tier: Tier,
        id: &PackId,
        entry: &PackEntry,
        buffers: &mut ChunkBuffers,
    ) -> Result<()> {
        let store = match tier {
            Tier::Warm => self.warm_reads.as_ref(),
            Tier::Cold => self.store(tier)?,
        };
        self.read_verified_into(store, &pack::object_name(id), id, entry, buffers)
    }

    /// Reads and verifies a chunk of pack `id` stored in `object`. A chunk
    /// that fails verification is read once more after the store drops
    /// any local copy of the object: a damaged cache is not damage in the
    /// repository.
    fn read_verified_into(
        &self,
        store: &dyn ObjectStore,
        object: &str,
        id: &PackId,
        entry: &PackEntry,
        buffers: &mut ChunkBuffers,
    ) -> Result<()> {
        Self::read_stored_into(store, object, entry, &mut buffers.stored)?;
        match self
            .codec
            .decode_into(entry, id, &mut buffers.stored, &mut buffers.plain)
        {
            Err(Error::ChunkDamaged { .. }) => {
                store.evict(object);
                Self::read_stored_into(store, object, entry, &mut buffers.stored)?;
                self.codec
                    .decode_into(entry, id, &mut buffers.stored, &mut buffers.plain)
            }
            result => result,
        }
    }

    /// A chunk's plaintext from the thawed copy of cold pack `id` (on the
    /// warm tier), verified, left in `buffers.plain`. Whether the thaw is
    /// still live is the caller's to know.
    pub fn read_thawed_chunk_into(
        &self,
        id: &PackId,
        entry: &PackEntry,
        buffers: &mut ChunkBuffers,
    ) -> Result<()> {
        let name = crate::thaw_record::thaw_object_name(id);
        self.read_verified_into(self.warm_reads.as_ref(), &name, id, entry, buffers)
    }

    /// A chunk's stored bytes from the thawed copy of cold pack `id`.
    pub fn read_thawed_stored(&self, id: &PackId, entry: &PackEntry) -> Result<Vec<u8>> {
        let name = crate::thaw_record::thaw_object_name(id);
        let mut stored = Vec::new();
        Self::read_stored_into(self.warm_reads.as_ref(), &name, entry, &mut stored)?;
        Ok(stored)
    }

    /// Copies cold pack `id` whole to its thaw name on the warm tier, after
    /// checking that it still hashes to its name (a damaged archival copy
    /// is never made readable). Returns its size.
    pub fn copy_to_thaw_area(&self, id: &PackId) -> Result<u64> {
        let bytes = self.store(Tier::Cold)?.get(&pack::object_name(id))?;
        if blake3::hash(&bytes).as_bytes()[..16] != id.0 {
            return Err(Error::corrupt(
                format!("cold pack {id}"),
                "content does not match its name",
            ));
        }
        self.warm.put(&crate::thaw_record::thaw_object_name(id), &bytes)?;
        Ok(bytes.len() as u64)
    }

    /// Deletes pack `id` from its tier, returning the bytes it took (a
    /// cold pack's tail goes after it).
    pub fn delete(&self, tier: Tier, id: &PackId) -> Result<u64> {
        let store = self.store(tier)?;
        let name = pack::object_name(id);
        let size = store.size(&name).unwrap_or(0);
        store.delete(&name)?;
        if tier == Tier::Cold {
            self.warm.delete(&pack::cold_tail_name(id))?;
        }
        Ok(size)
    }
}

/// The entries listed in pack `name`'s trailer, read with three ranged
/// reads (header, footer, trailer) instead of the whole pack, after
/// checking the header, the footer, the trailer's checksum and every
/// entry's bounds.
pub fn read_trailer(store: &dyn ObjectStore, name: &str) -> Result<Vec<PackEntry>> {
    let object = format!("pack {}/{name}", store.location());
    let size = store.size(name)?;
    if size < (PACK_HEADER_LEN + PACK_FOOTER_LEN) as u64 {
        return Err(Error::corrupt(object, format!("only {size} bytes long")));
    }
    let mut header = [0u8; PACK_HEADER_LEN];
    store.read_at(name, 0, &mut header)?;
    reader::check_header(&header, &object)?;
    let mut footer = [0u8; PACK_FOOTER_LEN];
    store.read_at(name, size - PACK_FOOTER_LEN as u64, &mut footer)?;
    let (data_end, trailer_hash) = reader::parse_footer(&footer, size, &object)?;
    let trailer_len = usize::try_from(size - PACK_FOOTER_LEN as u64 - data_end)
        .map_err(|_| Error::corrupt(&object, "trailer larger than memory"))?;
    let mut trailer = vec![0u8; trailer_len];
    store.read_at(name, data_end, &mut trailer)?;
    reader::verified_trailer(&trailer, &trailer_hash, data_end, &object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ChunkId;
    use crate::pack::ChunkKind;
    use crate::storage::MemoryStore;

    fn packs(warm: &MemoryStore, cold: Option<&MemoryStore>) -> Packs {
        Packs::new(
            Arc::new(warm.clone()),
            cold.map(|c| Arc::new(c.clone()) as Arc<dyn ObjectStore>),
            ChunkCodec::new(3),
            64 * 1024,
        )
    }

    fn encode(plain: &[u8]) -> CompressedChunk {
        ChunkCodec::new(3).encoder().unwrap().encode(
            ChunkId::of(plain),
            ChunkKind::Data,
            plain,
        )
        .unwrap()
    }

    #[test]
    fn sealed_packs_are_named_by_content_and_read_back() {
        let warm = MemoryStore::new();
        let packs = packs(&warm, None);
        let mut open = packs.open(Tier::Warm, false).unwrap();
        let chunks: Vec<Vec<u8>> = (0..5)
            .map(|i| format!("chunk {i} ").repeat(300).into_bytes())
            .collect();
        for chunk in &chunks {
            open.append(&encode(chunk)).unwrap();
        }
        assert!(!open.is_full());
        let sealed = packs.seal(open).unwrap();
        let warm_dyn: &dyn ObjectStore = &warm;
        assert_eq!(
            warm_dyn.list_all("packs/").unwrap(),
            [pack::object_name(&sealed.id)]
        );
        let bytes = warm.get(&pack::object_name(&sealed.id)).unwrap();
        assert_eq!(&blake3::hash(&bytes).as_bytes()[..16], sealed.id.as_bytes());
        assert_eq!(
            packs.trailer(Tier::Warm, &sealed.id).unwrap(),
            sealed.entries
        );
        for (chunk, entry) in chunks.iter().zip(&sealed.entries) {
            assert_eq!(
                &packs.read_chunk(Tier::Warm, &sealed.id, entry).unwrap(),
                chunk
            );
        }
        let record = sealed.record();
        assert_eq!((record.chunk_count, record.size), (5, sealed.len));
    }

    #[test]
    fn an_unsealed_pack_leaves_nothing() {
        let warm = MemoryStore::new();
        let packs = packs(&warm, None);
        let mut open = packs.open(Tier::Warm, true).unwrap();
        open.append(&encode(b"metadata")).unwrap();
        drop(open);
        let warm_dyn: &dyn ObjectStore = &warm;
        assert!(warm_dyn.list_all("").unwrap().is_empty());
    }

    #[test]
    fn packs_go_to_their_tier_and_a_missing_cold_tier_is_an_error() {
        let (warm, cold) = (MemoryStore::new(), MemoryStore::new());
        let both = packs(&warm, Some(&cold));
        let mut open = both.open(Tier::Cold, false).unwrap();
        open.append(&encode(b"old data")).unwrap();
        let sealed = both.seal(open).unwrap();
        assert!(cold.size(&pack::object_name(&sealed.id)).is_ok());
        assert!(warm.size(&pack::object_name(&sealed.id)).is_err());
        assert!(packs(&warm, None).open(Tier::Cold, false).is_err());
        assert!(both.delete(Tier::Cold, &sealed.id).unwrap() > 0);
        assert!(cold.size(&pack::object_name(&sealed.id)).is_err());
    }

    #[test]
    fn damaged_chunks_are_refused() {
        let warm = MemoryStore::new();
        let packs = packs(&warm, None);
        let mut open = packs.open(Tier::Warm, false).unwrap();
        let entry = open.append(&encode(&b"precious ".repeat(100))).unwrap();
        let sealed = packs.seal(open).unwrap();
        warm.flip_byte(
            &pack::object_name(&sealed.id),
            usize::try_from(entry.offset).unwrap() + 3,
        )
        .unwrap();
        assert!(matches!(
            packs.read_chunk(Tier::Warm, &sealed.id, &entry),
            Err(Error::ChunkDamaged { .. })
        ));
    }
}
