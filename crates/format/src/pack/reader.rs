//! Reads and validates a pack's trailer. Every count, offset and length is
//! checked against the file's real size before it is used.

use super::{ChunkKind, Compression, PackEntry, MAX_CHUNK_LEN};
use crate::codec::{min_len, Decoder};
use crate::error::{Error, Result};
use crate::format::{
    PACK_ENTRY_LEN, PACK_FOOTER_LEN, PACK_FOOTER_MAGIC, PACK_HEADER_LEN, PACK_MAGIC, PACK_VERSION,
    SEALED_PACK_VERSION,
};
use crate::id::{ChunkId, PackId};

/// The entries listed in a pack's trailer, from the pack's bytes, after
/// checking the header, the footer, the trailer's checksum and every
/// entry's bounds. (`packs::read_trailer` does the same with ranged reads.)
pub fn trailer_of(bytes: &[u8], object: &str) -> Result<Vec<PackEntry>> {
    let size = bytes.len() as u64;
    if size < (PACK_HEADER_LEN + PACK_FOOTER_LEN) as u64 {
        return Err(Error::corrupt(object, format!("only {size} bytes long")));
    }
    check_header(&bytes[..PACK_HEADER_LEN], object)?;
    let footer_at = bytes.len() - PACK_FOOTER_LEN;
    let (data_end, trailer_hash) = parse_footer(&bytes[footer_at..], size, object)?;
    // parse_footer placed data_end before the trailer, so it is at most footer_at.
    verified_trailer(
        &bytes[min_len(data_end, footer_at)..footer_at],
        &trailer_hash,
        data_end,
        object,
    )
}

/// Checks a pack's header; returns its version.
pub fn check_header(header: &[u8], object: &str) -> Result<u32> {
    let mut d = Decoder::new(header, "pack header");
    d.expect_magic(&PACK_MAGIC)
        .map_err(|e| Error::decode(object, e))?;
    let version = d.u32().map_err(|e| Error::decode(object, e))?;
    let reserved = d.u32().map_err(|e| Error::decode(object, e))?;
    if version != PACK_VERSION && version != SEALED_PACK_VERSION {
        return Err(Error::UnsupportedVersion {
            what: object.to_string(),
            found: version as u64,
            supported: SEALED_PACK_VERSION as u64,
        });
    }
    if reserved != 0 {
        return Err(Error::corrupt(object, "reserved header field is not zero"));
    }
    Ok(version)
}

/// Where the trailer starts (the end of the data area) and its hash, as
/// the footer of a `size`-byte pack says.
pub fn parse_footer(footer: &[u8], size: u64, object: &str) -> Result<(u64, [u8; 32])> {
    let mut d = Decoder::new(footer, "pack footer");
    let parse = |d: &mut Decoder| -> Result<(u32, [u8; 32]), crate::codec::DecodeError> {
        let count = d.u32()?;
        if d.u32()? != 0 {
            return Err(d.error("reserved footer field is not zero"));
        }
        let hash = d.array::<32>()?;
        d.expect_magic(&PACK_FOOTER_MAGIC)?;
        Ok((count, hash))
    };
    let (count, trailer_hash) = parse(&mut d).map_err(|e| Error::decode(object, e))?;
    let trailer_len = count as u64 * PACK_ENTRY_LEN as u64;
    let data_end = size
        .checked_sub(PACK_FOOTER_LEN as u64 + trailer_len)
        .filter(|end| *end >= PACK_HEADER_LEN as u64)
        .ok_or_else(|| {
            Error::corrupt(
                object,
                format!("footer claims {count} entries, more than fit in {size} bytes"),
            )
        })?;
    Ok((data_end, trailer_hash))
}

pub fn verified_trailer(
    trailer: &[u8],
    hash: &[u8; 32],
    data_end: u64,
    object: &str,
) -> Result<Vec<PackEntry>> {
    if blake3::hash(trailer).as_bytes() != hash {
        return Err(Error::corrupt(object, "trailer checksum mismatch"));
    }
    decode_trailer(trailer, data_end).map_err(|detail| Error::corrupt(object, detail))
}

/// Decodes trailer entries whose chunk bytes must lie in
/// `[PACK_HEADER_LEN, data_end)`.
pub(crate) fn decode_trailer(trailer: &[u8], data_end: u64) -> Result<Vec<PackEntry>, String> {
    if !trailer.len().is_multiple_of(PACK_ENTRY_LEN) {
        return Err(format!(
            "trailer of {} bytes is not a whole number of entries",
            trailer.len()
        ));
    }
    trailer
        .chunks_exact(PACK_ENTRY_LEN)
        .enumerate()
        .map(|(index, raw)| decode_entry(raw, data_end).map_err(|e| format!("entry {index} {e}")))
        .collect()
}

/// Decodes one trailer entry of [`PACK_ENTRY_LEN`] bytes.
fn decode_entry(raw: &[u8], data_end: u64) -> Result<PackEntry, String> {
    let mut d = Decoder::new(raw, "pack trailer entry");
    let field = |e: crate::codec::DecodeError| e.to_string();
    let id = ChunkId(d.array::<32>().map_err(field)?);
    let offset = d.u64().map_err(field)?;
    let stored_len = d.u32().map_err(field)?;
    let raw_len = d.u32().map_err(field)?;
    let kind = d.u8().map_err(field)?;
    let compression = d.u8().map_err(field)?;
    d.raw(6).map_err(field)?;
    let kind = ChunkKind::from_u8(kind).ok_or_else(|| format!("({id}) has unknown kind {kind}"))?;
    let compression = Compression::from_u8(compression)
        .ok_or_else(|| format!("({id}) has unknown compression {compression}"))?;
    let end = offset.checked_add(stored_len as u64);
    if offset < PACK_HEADER_LEN as u64 || end.is_none_or(|end| end > data_end) {
        return Err(format!(
            "({id}) spans bytes {offset}+{stored_len}, outside the data area ending at {data_end}"
        ));
    }
    if raw_len > MAX_CHUNK_LEN || stored_len > MAX_CHUNK_LEN {
        return Err(format!("({id}) claims {raw_len} bytes, over the limit"));
    }
    Ok(PackEntry {
        id,
        offset,
        stored_len,
        raw_len,
        kind,
        compression,
    })
}

/// What could be recovered from a pack whose trailer cannot be trusted.
#[derive(Debug, Default)]
pub struct Salvaged {
    /// Chunks whose bytes verify against their id, in offset order.
    pub entries: Vec<PackEntry>,
    /// Entries the trailer or the hints name whose bytes do not verify
    /// (an entry whose own id is damaged is among them).
    pub lost: Vec<(ChunkId, String)>,
    /// Bytes of the data area that no verified chunk covers.
    pub unaccounted_bytes: u64,
}

/// First bytes of a zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Recovers every chunk of a damaged pack that still verifies. Candidates
/// are the entries of its trailer (whatever its checksum says, each decoded
/// on its own) and `hints` (what an index said about the pack); every
/// candidate is kept only if its bytes decode to its id. The data area is
/// then scanned front to back for zstd frames between verified chunks: a
/// frame that decompresses is a chunk whose id is the hash of what it
/// holds, so it needs no trailer. A chunk stored raw that no candidate
/// names cannot be delimited and is counted in `unaccounted_bytes`.
/// `classify` tells a recovered frame's kind from its plaintext. In an
/// encrypted repository every chunk is sealed, so there are no frames to
/// find between the candidates: only named chunks are recovered.
pub fn salvage(
    bytes: &[u8],
    pack: &PackId,
    hints: &[PackEntry],
    codec: &super::ChunkCodec,
    classify: &dyn Fn(&[u8]) -> ChunkKind,
) -> Salvaged {
    let (mut candidates, data_end) = trailer_candidates(bytes);
    candidates.extend_from_slice(hints);
    candidates.sort_by_key(|e| (e.offset, e.id));
    candidates.dedup();
    let mut verified: Vec<PackEntry> = Vec::new();
    let mut failed: Vec<(PackEntry, String)> = Vec::new();
    let mut plain = Vec::new();
    for entry in candidates {
        let end = entry.offset.saturating_add(entry.stored_len as u64);
        let range = usize::try_from(entry.offset)
            .ok()
            .zip(usize::try_from(end).ok());
        let Some(stored) = range.and_then(|(start, end)| bytes.get(start..end)) else {
            failed.push((entry, "the pack ends before its bytes".into()));
            continue;
        };
        match codec.decode_borrowed_into(&entry, pack, stored, &mut plain) {
            Ok(_) => verified.push(entry),
            Err(e) => failed.push((entry, e.to_string())),
        }
    }
    verified.sort_by_key(|e| e.offset);
    verified.dedup_by_key(|e| e.offset);
    // Scan the gaps between verified chunks for chunks no candidate names.
    let data_end = data_end.unwrap_or(bytes.len() as u64);
    let mut out = Salvaged::default();
    let mut found = Vec::new();
    let mut at = PACK_HEADER_LEN as u64;
    for next in verified
        .iter()
        .map(|e| (e.offset, e.offset + e.stored_len as u64))
        .chain(std::iter::once((data_end, data_end)))
    {
        if next.0 > at && codec.protection().is_encrypted() {
            out.unaccounted_bytes += next.0 - at;
        } else if next.0 > at {
            let gap = &bytes[min_len(at, bytes.len())..min_len(next.0, bytes.len())];
            out.unaccounted_bytes += scan_frames(gap, at, classify, &mut found);
        }
        at = at.max(next.1);
    }
    verified.extend(found);
    verified.sort_by_key(|e| e.offset);
    let mut ids = std::collections::HashSet::new();
    verified.retain(|e| ids.insert(e.id));
    // A failed entry may be one whose id was damaged while its bytes were
    // recovered above under their true id; only the restore points can
    // tell, so it is reported, and the caller asks them.
    out.lost = failed
        .into_iter()
        .filter(|(e, _)| !ids.contains(&e.id))
        .map(|(e, why)| (e.id, why))
        .collect();
    out.lost.sort_by_key(|(id, _)| *id);
    out.lost.dedup_by_key(|(id, _)| *id);
    out.entries = verified;
    out
}

/// The trailer entries that still decode, each on its own, and where the
/// data area ends, when the footer can be read. Without a footer the
/// entries are read backwards from the end while they decode.
fn trailer_candidates(bytes: &[u8]) -> (Vec<PackEntry>, Option<u64>) {
    let size = bytes.len() as u64;
    if size < (PACK_HEADER_LEN + PACK_FOOTER_LEN) as u64 {
        return (Vec::new(), None);
    }
    let footer_at = bytes.len() - PACK_FOOTER_LEN;
    if let Ok((data_end, _)) = parse_footer(&bytes[footer_at..], size, "") {
        let entries = bytes[min_len(data_end, footer_at)..footer_at]
            .chunks_exact(PACK_ENTRY_LEN)
            .filter_map(|raw| decode_entry(raw, data_end).ok())
            .collect();
        return (entries, Some(data_end));
    }
    let mut entries = Vec::new();
    let mut end = footer_at;
    while end >= PACK_HEADER_LEN + PACK_ENTRY_LEN {
        let start = end - PACK_ENTRY_LEN;
        match decode_entry(&bytes[start..end], start as u64) {
            Ok(entry) => entries.push(entry),
            Err(_) => break,
        }
        end = start;
    }
    (entries, None)
}

/// Appends to `found` every zstd frame in `gap` (which starts at pack
/// offset `base`) that decompresses; returns the bytes left over.
fn scan_frames(
    gap: &[u8],
    base: u64,
    classify: &dyn Fn(&[u8]) -> ChunkKind,
    found: &mut Vec<PackEntry>,
) -> u64 {
    let mut unaccounted = 0u64;
    let mut pos = 0usize;
    while pos < gap.len() {
        let next_frame = gap[pos..]
            .windows(ZSTD_MAGIC.len())
            .position(|w| w == ZSTD_MAGIC)
            .map(|p| pos + p);
        let Some(start) = next_frame else {
            unaccounted += (gap.len() - pos) as u64;
            break;
        };
        match decode_frame(&gap[start..]) {
            Some((stored_len, raw_len, plain)) => {
                unaccounted += (start - pos) as u64;
                found.push(PackEntry {
                    id: ChunkId::of(&plain),
                    offset: base + start as u64,
                    stored_len,
                    raw_len,
                    kind: classify(&plain),
                    compression: Compression::Zstd,
                });
                pos = start + stored_len as usize;
            }
            None => {
                unaccounted += (start + 1 - pos) as u64;
                pos = start + 1;
            }
        }
    }
    unaccounted
}

/// The stored length, raw length and plaintext of the zstd frame at the
/// start of `bytes`, if it is a whole frame of a size a chunk may have.
fn decode_frame(bytes: &[u8]) -> Option<(u32, u32, Vec<u8>)> {
    let stored_len = zstd::zstd_safe::find_frame_compressed_size(bytes).ok()?;
    let frame = bytes.get(..stored_len)?;
    let stored_len = chunk_len(stored_len)?;
    let raw_len = chunk_len(zstd::zstd_safe::get_frame_content_size(frame).ok()??)?;
    let plain = zstd::bulk::decompress(frame, raw_len as usize).ok()?;
    (plain.len() == raw_len as usize).then_some((stored_len, raw_len, plain))
}

/// A length a chunk may have, as the trailer's 32-bit field.
fn chunk_len<N: TryInto<u32>>(len: N) -> Option<u32> {
    len.try_into().ok().filter(|len| *len <= MAX_CHUNK_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::PackId;
    use crate::pack::{object_name, writer::PackWriter, ChunkCodec};

    /// Packs by name, as a store would hold them.
    #[derive(Default)]
    struct MemoryStore(std::cell::RefCell<std::collections::HashMap<String, Vec<u8>>>);

    impl MemoryStore {
        fn new() -> Self {
            Self::default()
        }

        fn put(&self, name: &str, bytes: &[u8]) -> Result<()> {
            self.0.borrow_mut().insert(name.into(), bytes.to_vec());
            Ok(())
        }

        fn get(&self, name: &str) -> Result<Vec<u8>> {
            Ok(self.0.borrow()[name].clone())
        }

        fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
            let start = usize::try_from(offset).unwrap();
            buf.copy_from_slice(&self.0.borrow()[name][start..start + buf.len()]);
            Ok(())
        }
    }

    fn write_pack(store: &MemoryStore, chunks: &[&[u8]]) -> (String, Vec<PackEntry>) {
        let mut writer = PackWriter::new(Vec::new(), "test pack".into(), PACK_VERSION).unwrap();
        let mut encoder = ChunkCodec::new(3).encoder().unwrap();
        for data in chunks {
            let c = encoder.encode(ChunkId::of(data), ChunkKind::Data, data).unwrap();
            writer.append(&c).unwrap();
        }
        let (finished, bytes) = writer.finish().unwrap();
        let name = object_name(&finished.id);
        store.put(&name, &bytes).unwrap();
        (name, finished.entries)
    }

    #[test]
    fn trailer_written_by_the_writer_reads_back() {
        let store = MemoryStore::new();
        let (name, written) = write_pack(&store, &[b"alpha", &[7u8; 100_000], b""]);
        let read = trailer_of(&store.get(&name).unwrap(), "test").unwrap();
        assert_eq!(read, written);
        let pack = crate::pack::id_from_object_name(&name).unwrap();
        for entry in &read {
            let mut stored = vec![0u8; entry.stored_len as usize];
            store.read_at(&name, entry.offset, &mut stored).unwrap();
            let plain = ChunkCodec::new(3).decode(entry, &pack, &stored).unwrap();
            assert_eq!(ChunkId::of(&plain), entry.id);
        }
    }

    #[test]
    fn any_flipped_byte_in_trailer_or_footer_is_detected() {
        let store = MemoryStore::new();
        let (name, entries) = write_pack(&store, &[b"one", b"two"]);
        let original = store.get(&name).unwrap();
        let trailer_start = original.len() - PACK_FOOTER_LEN - entries.len() * PACK_ENTRY_LEN;
        for pos in trailer_start..original.len() {
            let mut damaged = original.clone();
            damaged[pos] ^= 0x40;
            assert!(
                trailer_of(&damaged, "test").is_err(),
                "flip at {pos} went unnoticed"
            );
        }
    }

    /// A pack of raw (uncompressed) chunks, so its bytes do not depend on
    /// the zstd version, pinned against a committed golden file.
    #[test]
    fn golden_pack_reads_back() {
        use crate::pack::{CompressedChunk, Compression};
        let store = MemoryStore::new();
        let mut writer = PackWriter::new(Vec::new(), "golden pack".into(), PACK_VERSION).unwrap();
        for (data, kind) in [
            (&b"golden data"[..], ChunkKind::Data),
            (b"STRT tree bytes", ChunkKind::Tree),
        ] {
            writer
                .append(&CompressedChunk {
                    id: ChunkId::of(data),
                    kind,
                    raw_len: u32::try_from(data.len()).unwrap(),
                    compression: Compression::None,
                    bytes: data.to_vec(),
                })
                .unwrap();
        }
        let (finished, bytes) = writer.finish().unwrap();
        let golden = crate::codec::assert_golden("pack_v1.bin", &bytes);
        let name = object_name(&finished.id);
        store.put("packs/golden.pack", &golden).unwrap();
        assert_eq!(trailer_of(&golden, "golden").unwrap(), finished.entries);
        assert_eq!(
            name,
            object_name(&PackId(
                blake3::hash(&golden).as_bytes()[..16].try_into().unwrap()
            ))
        );
    }

    #[test]
    fn truncated_pack_is_an_error() {
        let store = MemoryStore::new();
        let (name, _) = write_pack(&store, &[b"one"]);
        let bytes = store.get(&name).unwrap();
        for len in [0, 10, bytes.len() / 2, bytes.len() - 1] {
            assert!(trailer_of(&bytes[..len], "test").is_err());
        }
    }

    fn data_kind(_: &[u8]) -> ChunkKind {
        ChunkKind::Data
    }

    /// Four compressible chunks and one stored raw.
    fn salvage_fixture(store: &MemoryStore) -> (String, Vec<PackEntry>, Vec<u8>) {
        let mut rng_state = 7u32;
        let mut random = vec![0u8; 5000];
        for b in random.iter_mut() {
            rng_state = rng_state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            *b = rng_state.to_le_bytes()[2];
        }
        let texts: Vec<Vec<u8>> = (0..4)
            .map(|i| format!("chunk {i} ").repeat(500).into_bytes())
            .collect();
        let chunks = [
            texts[0].as_slice(),
            texts[1].as_slice(),
            random.as_slice(),
            texts[2].as_slice(),
            texts[3].as_slice(),
        ];
        let (name, entries) = write_pack(store, &chunks);
        assert_eq!(entries[2].compression, Compression::None);
        assert_eq!(entries[0].compression, Compression::Zstd);
        let bytes = store.get(&name).unwrap();
        (name, entries, bytes)
    }

    #[test]
    fn salvage_with_a_flipped_trailer_recovers_every_chunk() {
        let store = MemoryStore::new();
        let (name, entries, mut bytes) = salvage_fixture(&store);
        let pack = crate::pack::id_from_object_name(&name).unwrap();
        let trailer_start = bytes.len() - PACK_FOOTER_LEN - entries.len() * PACK_ENTRY_LEN;
        // The first entry's id: that entry no longer verifies, but its
        // zstd frame is found by the scan.
        bytes[trailer_start] ^= 0x01;
        assert!(trailer_of(&bytes, "test").is_err());
        let salvaged = salvage(&bytes, &pack, &[], &ChunkCodec::new(3), &data_kind);
        assert_eq!(salvaged.entries, entries);
        assert_eq!(salvaged.lost.len(), 1, "{:?}", salvaged.lost);
        assert_ne!(salvaged.lost[0].0, entries[0].id);
        assert_eq!(salvaged.unaccounted_bytes, 0);
    }

    #[test]
    fn salvage_of_a_truncated_pack_keeps_what_lies_before_the_cut() {
        let store = MemoryStore::new();
        let (name, entries, bytes) = salvage_fixture(&store);
        let pack = crate::pack::id_from_object_name(&name).unwrap();
        // Cut inside the fourth chunk (the third text chunk).
        let cut = usize::try_from(entries[3].offset + 5).unwrap();
        let truncated = &bytes[..cut];
        // Without hints: compressed chunks are found by the scan; the raw
        // one cannot be delimited.
        let alone = salvage(truncated, &pack, &[], &ChunkCodec::new(3), &data_kind);
        assert_eq!(alone.entries, vec![entries[0], entries[1]]);
        assert!(alone.unaccounted_bytes >= entries[2].stored_len as u64);
        // With an index's records, the raw chunk is recovered too, and the
        // chunks past the cut are named as lost.
        let hinted = salvage(truncated, &pack, &entries, &ChunkCodec::new(3), &data_kind);
        assert_eq!(hinted.entries, entries[..3].to_vec());
        let lost: Vec<ChunkId> = hinted.lost.iter().map(|(id, _)| *id).collect();
        assert_eq!(lost.len(), 2);
        assert!(lost.contains(&entries[3].id) && lost.contains(&entries[4].id));
    }

    #[test]
    fn salvage_never_returns_damaged_chunks() {
        let store = MemoryStore::new();
        let (name, entries, mut bytes) = salvage_fixture(&store);
        let pack = crate::pack::id_from_object_name(&name).unwrap();
        bytes[usize::try_from(entries[1].offset).unwrap() + 20] ^= 0x10;
        let salvaged = salvage(&bytes, &pack, &[], &ChunkCodec::new(3), &data_kind);
        assert!(salvaged.entries.iter().all(|e| e.id != entries[1].id));
        assert_eq!(salvaged.lost.len(), 1);
        assert_eq!(salvaged.lost[0].0, entries[1].id);
        for entry in &salvaged.entries {
            let stored =
                &bytes[usize::try_from(entry.offset).unwrap()..][..entry.stored_len as usize];
            ChunkCodec::new(3).decode(entry, &pack, stored).unwrap();
        }
    }
}
