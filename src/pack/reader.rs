//! Reads and validates a pack's trailer. Every count, offset and length is
//! checked against the file's real size before it is used.

use super::{ChunkKind, Compression, PackEntry, MAX_CHUNK_LEN};
use crate::codec::Decoder;
use crate::error::{Error, Result};
use crate::format::{
    PACK_ENTRY_LEN, PACK_FOOTER_LEN, PACK_FOOTER_MAGIC, PACK_HEADER_LEN, PACK_MAGIC, PACK_VERSION,
};
use crate::id::ChunkId;
use crate::storage::ObjectStore;

/// The entries listed in pack `name`'s trailer, after checking the header,
/// the footer, the trailer's checksum and every entry's bounds.
pub fn read_trailer(store: &dyn ObjectStore, name: &str) -> Result<Vec<PackEntry>> {
    let object = || format!("pack {}/{name}", store.location());
    let size = store.size(name)?;
    if size < (PACK_HEADER_LEN + PACK_FOOTER_LEN) as u64 {
        return Err(Error::corrupt(object(), format!("only {size} bytes long")));
    }
    let mut header = [0u8; PACK_HEADER_LEN];
    store.read_at(name, 0, &mut header)?;
    let mut d = Decoder::new(&header, "pack header");
    d.expect_magic(&PACK_MAGIC)
        .map_err(|e| Error::decode(object(), e))?;
    let version = d.u32().map_err(|e| Error::decode(object(), e))?;
    let reserved = d.u32().map_err(|e| Error::decode(object(), e))?;
    if version == PACK_VERSION && reserved != 0 {
        return Err(Error::corrupt(
            object(),
            "reserved header field is not zero",
        ));
    }
    if version != PACK_VERSION {
        return Err(Error::UnsupportedVersion {
            what: object(),
            found: version as u64,
            supported: PACK_VERSION as u64,
        });
    }

    let mut footer = [0u8; PACK_FOOTER_LEN];
    store.read_at(name, size - PACK_FOOTER_LEN as u64, &mut footer)?;
    let mut d = Decoder::new(&footer, "pack footer");
    let parse = |d: &mut Decoder| -> Result<(u32, [u8; 32]), crate::codec::DecodeError> {
        let count = d.u32()?;
        if d.u32()? != 0 {
            return Err(d.error("reserved footer field is not zero"));
        }
        let hash = d.array::<32>()?;
        d.expect_magic(&PACK_FOOTER_MAGIC)?;
        Ok((count, hash))
    };
    let (count, trailer_hash) = parse(&mut d).map_err(|e| Error::decode(object(), e))?;
    let trailer_len = count as u64 * PACK_ENTRY_LEN as u64;
    let data_end = size
        .checked_sub(PACK_FOOTER_LEN as u64 + trailer_len)
        .filter(|end| *end >= PACK_HEADER_LEN as u64)
        .ok_or_else(|| {
            Error::corrupt(
                object(),
                format!("footer claims {count} entries, more than fit in {size} bytes"),
            )
        })?;

    let mut trailer = vec![0u8; trailer_len as usize];
    store.read_at(name, data_end, &mut trailer)?;
    if blake3::hash(&trailer).as_bytes() != &trailer_hash {
        return Err(Error::corrupt(object(), "trailer checksum mismatch"));
    }
    decode_trailer(&trailer, data_end).map_err(|detail| Error::corrupt(object(), detail))
}

/// Decodes trailer entries whose chunk bytes must lie in
/// `[PACK_HEADER_LEN, data_end)`.
pub(crate) fn decode_trailer(trailer: &[u8], data_end: u64) -> Result<Vec<PackEntry>, String> {
    let mut d = Decoder::new(trailer, "pack trailer");
    let mut entries = Vec::with_capacity(trailer.len() / PACK_ENTRY_LEN);
    while d.remaining() > 0 {
        let index = entries.len();
        let field = |e: crate::codec::DecodeError| e.to_string();
        let id = ChunkId(d.array::<32>().map_err(field)?);
        let offset = d.u64().map_err(field)?;
        let stored_len = d.u32().map_err(field)?;
        let raw_len = d.u32().map_err(field)?;
        let kind = d.u8().map_err(field)?;
        let compression = d.u8().map_err(field)?;
        d.raw(6).map_err(field)?;
        let kind = ChunkKind::from_u8(kind)
            .ok_or_else(|| format!("entry {index} ({id}) has unknown kind {kind}"))?;
        let compression = Compression::from_u8(compression)
            .ok_or_else(|| format!("entry {index} ({id}) has unknown compression {compression}"))?;
        let end = offset.checked_add(stored_len as u64);
        if offset < PACK_HEADER_LEN as u64 || end.is_none_or(|end| end > data_end) {
            return Err(format!(
                "entry {index} ({id}) spans bytes {offset}+{stored_len}, outside the data area ending at {data_end}"
            ));
        }
        if raw_len > MAX_CHUNK_LEN || stored_len > MAX_CHUNK_LEN {
            return Err(format!(
                "entry {index} ({id}) claims {raw_len} bytes, over the limit"
            ));
        }
        entries.push(PackEntry {
            id,
            offset,
            stored_len,
            raw_len,
            kind,
            compression,
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::PackId;
    use crate::pack::{object_name, writer::PackWriter, ChunkCompressor};
    use crate::storage::{LocalStore, ObjectStore};

    fn write_pack(store: &LocalStore, chunks: &[&[u8]]) -> (String, Vec<PackEntry>) {
        let mut writer = PackWriter::create(&store.staging_dir()).unwrap();
        let mut compressor = ChunkCompressor::new(3).unwrap();
        for data in chunks {
            let c = compressor.compress(ChunkId::of(data), ChunkKind::Data, data.to_vec());
            writer.append(&c).unwrap();
        }
        let finished = writer.finish().unwrap();
        let name = object_name(&finished.id);
        store.put_file(&name, &finished.staging_path).unwrap();
        (name, finished.entries)
    }

    #[test]
    fn trailer_written_by_the_writer_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let (name, written) = write_pack(&store, &[b"alpha", &[7u8; 100_000], b""]);
        let read = read_trailer(&store, &name).unwrap();
        assert_eq!(read, written);
        let pack = crate::pack::id_from_object_name(&name).unwrap();
        for entry in &read {
            let mut stored = vec![0u8; entry.stored_len as usize];
            store.read_at(&name, entry.offset, &mut stored).unwrap();
            let plain = crate::pack::decode_chunk(entry, &pack, &stored).unwrap();
            assert_eq!(ChunkId::of(&plain), entry.id);
        }
    }

    #[test]
    fn any_flipped_byte_in_trailer_or_footer_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let (name, entries) = write_pack(&store, &[b"one", b"two"]);
        let path = dir.path().join(&name);
        let original = std::fs::read(&path).unwrap();
        let trailer_start = original.len() - PACK_FOOTER_LEN - entries.len() * PACK_ENTRY_LEN;
        for pos in trailer_start..original.len() {
            let mut damaged = original.clone();
            damaged[pos] ^= 0x40;
            std::fs::write(&path, &damaged).unwrap();
            let fresh = LocalStore::new(dir.path());
            assert!(
                read_trailer(&fresh, &name).is_err(),
                "flip at {pos} went unnoticed"
            );
        }
    }

    /// A pack of raw (uncompressed) chunks, so its bytes do not depend on
    /// the zstd version, pinned against a committed golden file.
    #[test]
    fn golden_pack_reads_back() {
        use crate::pack::{CompressedChunk, Compression};
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let mut writer = PackWriter::create(&store.staging_dir()).unwrap();
        for (data, kind) in [
            (&b"golden data"[..], ChunkKind::Data),
            (b"STRT tree bytes", ChunkKind::Tree),
        ] {
            writer
                .append(&CompressedChunk {
                    id: ChunkId::of(data),
                    kind,
                    raw_len: data.len() as u32,
                    compression: Compression::None,
                    bytes: data.to_vec(),
                })
                .unwrap();
        }
        let finished = writer.finish().unwrap();
        let bytes = std::fs::read(&finished.staging_path).unwrap();
        let golden = crate::codec::assert_golden("pack_v1.bin", &bytes);
        let name = object_name(&finished.id);
        store.put("packs/golden.pack", &golden).unwrap();
        assert_eq!(
            read_trailer(&store, "packs/golden.pack").unwrap(),
            finished.entries
        );
        assert_eq!(
            name,
            object_name(&PackId(
                blake3::hash(&golden).as_bytes()[..16].try_into().unwrap()
            ))
        );
    }

    #[test]
    fn truncated_pack_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let (name, _) = write_pack(&store, &[b"one"]);
        let path = dir.path().join(&name);
        let bytes = std::fs::read(&path).unwrap();
        for len in [0, 10, bytes.len() / 2, bytes.len() - 1] {
            std::fs::write(&path, &bytes[..len]).unwrap();
            assert!(read_trailer(&LocalStore::new(dir.path()), &name).is_err());
        }
    }
}
