//! The chunk codec: how a chunk's plaintext becomes the bytes stored in a
//! pack and back. Today that is zstd (or the raw bytes where zstd does not
//! shrink them) and, on the way back, a BLAKE3 check of the plaintext
//! against the chunk's id. It is the one place that knows, so that
//! encryption is added here and nowhere else.

use std::cell::RefCell;

use super::{ChunkKind, Compression, PackEntry, MAX_CHUNK_LEN};
use crate::error::{Error, Result};
use crate::id::{ChunkId, PackId};

/// A repository's chunk codec.
#[derive(Debug, Clone)]
pub struct ChunkCodec {
    level: i32,
}

impl ChunkCodec {
    /// A codec compressing at zstd `level`.
    pub fn new(level: i32) -> Self {
        ChunkCodec { level }
    }

    /// An encoder for one thread, at the codec's level.
    pub fn encoder(&self) -> Result<ChunkEncoder> {
        ChunkEncoder::new(self.level)
    }

    /// An encoder at another level (cold packs trade time for space).
    pub fn encoder_at(&self, level: i32) -> Result<ChunkEncoder> {
        ChunkEncoder::new(level)
    }

    /// Turns a chunk's stored bytes back into its plaintext and verifies it
    /// hashes to the chunk's id: damage never yields wrong bytes.
    pub fn decode(&self, entry: &PackEntry, pack: &PackId, stored: &[u8]) -> Result<Vec<u8>> {
        let mut plain = Vec::new();
        decode_chunk_into(entry, pack, stored, &mut plain)?;
        Ok(plain)
    }

    /// [`Self::decode`] into `plain`, replacing its contents: a reader of
    /// many chunks reuses one buffer instead of faulting in fresh pages
    /// for every chunk.
    pub fn decode_into(
        &self,
        entry: &PackEntry,
        pack: &PackId,
        stored: &[u8],
        plain: &mut Vec<u8>,
    ) -> Result<()> {
        decode_chunk_into(entry, pack, stored, plain)
    }
}

/// A chunk ready to be appended to a pack.
pub struct CompressedChunk {
    pub id: ChunkId,
    pub kind: ChunkKind,
    pub raw_len: u32,
    pub compression: Compression,
    pub bytes: Vec<u8>,
}

/// Encodes chunks with one reusable zstd context; one per thread.
pub struct ChunkEncoder {
    zstd: zstd::bulk::Compressor<'static>,
    scratch: Vec<u8>,
}

impl ChunkEncoder {
    fn new(level: i32) -> Result<Self> {
        let zstd = zstd::bulk::Compressor::new(level)
            .map_err(|e| Error::InvalidInput(format!("zstd level {level}: {e}")))?;
        Ok(ChunkEncoder {
            zstd,
            scratch: Vec::new(),
        })
    }

    /// Compresses `data`, falling back to storing it raw when compression
    /// does not shrink it (already-compressed or random data).
    pub fn encode(&mut self, id: ChunkId, kind: ChunkKind, data: &[u8]) -> CompressedChunk {
        // Callers bound chunks by MAX_CHUNK_LEN (chunker parameters, the
        // tree encoder's check). A longer one keeps a length over that
        // limit, never a truncated one, and `PackWriter::append` refuses it.
        let raw_len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        self.scratch.clear();
        self.scratch
            .reserve(zstd::zstd_safe::compress_bound(data.len()));
        match self.zstd.compress_to_buffer(data, &mut self.scratch) {
            Ok(n) if n < data.len() => CompressedChunk {
                id,
                kind,
                raw_len,
                compression: Compression::Zstd,
                bytes: self.scratch[..n].to_vec(),
            },
            _ => CompressedChunk {
                id,
                kind,
                raw_len,
                compression: Compression::None,
                bytes: data.to_vec(),
            },
        }
    }
}

thread_local! {
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

pub(crate) fn decode_chunk_into(
    entry: &PackEntry,
    pack: &PackId,
    stored: &[u8],
    plain: &mut Vec<u8>,
) -> Result<()> {
    let damaged = |detail: String| Error::ChunkDamaged {
        id: entry.id,
        pack: *pack,
        detail,
    };
    if entry.raw_len > MAX_CHUNK_LEN {
        return Err(damaged(format!(
            "raw length {} exceeds the limit",
            entry.raw_len
        )));
    }
    plain.clear();
    match entry.compression {
        Compression::None => plain.extend_from_slice(stored),
        Compression::Zstd => {
            DECOMPRESSOR.with(|cell| {
                let mut slot = cell.borrow_mut();
                if slot.is_none() {
                    *slot = Some(
                        zstd::bulk::Decompressor::new()
                            .map_err(|e| damaged(format!("zstd context: {e}")))?,
                    );
                }
                let decompressor = slot.as_mut().expect("just set");
                // The buffer never grows past its capacity, at least the
                // promised length; a frame giving more or less is refused.
                plain.reserve(entry.raw_len as usize);
                decompressor
                    .decompress_to_buffer(stored, plain)
                    .map_err(|e| damaged(format!("zstd: {e}")))
            })?;
        }
    };
    if plain.len() != entry.raw_len as usize {
        return Err(damaged(format!(
            "decompressed to {} bytes, expected {}",
            plain.len(),
            entry.raw_len
        )));
    }
    if ChunkId::of(plain) != entry.id {
        return Err(damaged("content does not match its BLAKE3 id".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incompressible_chunks_are_stored_raw() {
        let mut c = ChunkCodec::new(3).encoder().unwrap();
        let random: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13).to_le_bytes()[0])
            .collect();
        let zeros = vec![0u8; 4096];
        assert_eq!(
            c.encode(ChunkId::of(&zeros), ChunkKind::Data, &zeros)
                .compression,
            Compression::Zstd
        );
        let stored = c.encode(ChunkId::of(&random), ChunkKind::Data, &random);
        if stored.compression == Compression::None {
            assert_eq!(stored.bytes, random);
        }
    }

    #[test]
    fn decoding_verifies_and_refuses_damage() {
        let codec = ChunkCodec::new(3);
        let plain = b"hello hello hello hello hello".repeat(10);
        let id = ChunkId::of(&plain);
        let chunk = codec
            .encoder()
            .unwrap()
            .encode(id, ChunkKind::Data, &plain);
        let entry = PackEntry {
            id,
            offset: 0,
            stored_len: u32::try_from(chunk.bytes.len()).unwrap(),
            raw_len: chunk.raw_len,
            kind: chunk.kind,
            compression: chunk.compression,
        };
        let pack = PackId([1; 16]);
        assert_eq!(codec.decode(&entry, &pack, &chunk.bytes).unwrap(), plain);
        let mut damaged = chunk.bytes.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(matches!(
            codec.decode(&entry, &pack, &damaged),
            Err(Error::ChunkDamaged { .. })
        ));
    }
}
