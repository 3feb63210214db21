//! The chunk codec: how a chunk's plaintext becomes the bytes stored in a
//! pack and back. That is zstd (or the raw bytes where zstd does not
//! shrink them), sealed with the repository's key when it is encrypted,
//! and on the way back the seal's authentication and a check of the
//! plaintext against the chunk's id (plain or keyed BLAKE3). It is the one
//! place that knows how chunks are stored.

use std::cell::RefCell;

use super::{ChunkKind, Compression, PackEntry, MAX_CHUNK_LEN};
use crate::crypto::{Protection, Sealed};
use crate::error::{Error, Result};
use crate::format::{PACK_VERSION, SEALED_PACK_VERSION};
use crate::id::{ChunkId, IdKey, PackId};

/// A repository's chunk codec.
#[derive(Debug, Clone)]
pub struct ChunkCodec {
    level: i32,
    protection: Protection,
}

impl ChunkCodec {
    /// A codec compressing at zstd `level`, storing chunks unencrypted.
    pub fn new(level: i32) -> Self {
        Self::with_protection(level, Protection::none())
    }

    /// A codec compressing at `level` and protecting chunks with `protection`.
    pub fn with_protection(level: i32, protection: Protection) -> Self {
        ChunkCodec { level, protection }
    }

    pub fn protection(&self) -> &Protection {
        &self.protection
    }

    /// How this repository's chunk ids are computed.
    pub fn ids(&self) -> IdKey {
        self.protection.ids()
    }

    /// The version written in the header of new packs.
    pub fn pack_version(&self) -> u32 {
        if self.protection.is_encrypted() {
            SEALED_PACK_VERSION
        } else {
            PACK_VERSION
        }
    }

    /// An encoder for one thread, at the codec's level.
    pub fn encoder(&self) -> Result<ChunkEncoder> {
        self.encoder_at(self.level)
    }

    /// An encoder at another level (cold packs trade time for space).
    pub fn encoder_at(&self, level: i32) -> Result<ChunkEncoder> {
        ChunkEncoder::new(level, self.protection.clone())
    }

    /// Turns a chunk's stored bytes back into its plaintext and verifies it
    /// hashes to the chunk's id: damage never yields wrong bytes.
    pub fn decode(&self, entry: &PackEntry, pack: &PackId, stored: &[u8]) -> Result<Vec<u8>> {
        let mut plain = Vec::new();
        self.decode_borrowed_into(entry, pack, stored, &mut plain)?;
        Ok(plain)
    }

    /// [`Self::decode_into`] for stored bytes the caller keeps: they are
    /// copied only when they must be opened (an encrypted repository).
    pub fn decode_borrowed_into(
        &self,
        entry: &PackEntry,
        pack: &PackId,
        stored: &[u8],
        plain: &mut Vec<u8>,
    ) -> Result<()> {
        if self.protection.is_encrypted() {
            self.decode_into(entry, pack, &mut stored.to_vec(), plain)
        } else {
            decode_chunk_into(entry, pack, stored, self.ids(), plain)
        }
    }

    /// [`Self::decode`] into `plain`, replacing its contents, and opening
    /// `stored` in place (it is left scrambled): a reader of many chunks
    /// reuses its buffers instead of faulting in fresh pages for every
    /// chunk.
    pub fn decode_into(
        &self,
        entry: &PackEntry,
        pack: &PackId,
        stored: &mut [u8],
        plain: &mut Vec<u8>,
    ) -> Result<()> {
        let sealed = Sealed::Chunk {
            id: entry.id.as_bytes(),
            kind: entry.kind as u8,
            compression: entry.compression as u8,
            raw_len: entry.raw_len,
        };
        let opened = self
            .protection
            .open_in_place(sealed, stored)
            .map_err(|e| Error::ChunkDamaged {
                id: entry.id,
                pack: *pack,
                detail: e.to_string(),
            })?;
        decode_chunk_into(entry, pack, opened, self.ids(), plain)
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
    protection: Protection,
}

impl ChunkEncoder {
    fn new(level: i32, protection: Protection) -> Result<Self> {
        let zstd = zstd::bulk::Compressor::new(level)
            .map_err(|e| Error::InvalidInput(format!("zstd level {level}: {e}")))?;
        Ok(ChunkEncoder {
            zstd,
            scratch: Vec::new(),
            protection,
        })
    }

    /// Compresses `data`, falling back to storing it raw when compression
    /// does not shrink it (already-compressed or random data), and seals
    /// it when the repository is encrypted.
    pub fn encode(&mut self, id: ChunkId, kind: ChunkKind, data: &[u8]) -> Result<CompressedChunk> {
        // Callers bound chunks by MAX_CHUNK_LEN (chunker parameters, the
        // tree encoder's check). A longer one keeps a length over that
        // limit, never a truncated one, and `PackWriter::append` refuses it.
        let raw_len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        self.scratch.clear();
        self.scratch
            .reserve(zstd::zstd_safe::compress_bound(data.len()));
        let (compression, body) = match self.zstd.compress_to_buffer(data, &mut self.scratch) {
            Ok(n) if n < data.len() => (Compression::Zstd, &self.scratch[..n]),
            _ => (Compression::None, data),
        };
        let sealed = Sealed::Chunk {
            id: id.as_bytes(),
            kind: kind as u8,
            compression: compression as u8,
            raw_len,
        };
        let bytes = self.protection.seal(sealed, body)?;
        Ok(CompressedChunk {
            id,
            kind,
            raw_len,
            compression,
            bytes,
        })
    }
}

thread_local! {
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Decompresses an opened chunk into `plain` and checks it against its id.
pub(crate) fn decode_chunk_into(
    entry: &PackEntry,
    pack: &PackId,
    stored: &[u8],
    ids: IdKey,
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
    if ids.chunk_id(plain) != entry.id {
        return Err(damaged("content does not match its id".into()));
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
            .unwrap()
                .compression,
            Compression::Zstd
        );
        let stored = c.encode(ChunkId::of(&random), ChunkKind::Data, &random).unwrap();
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
            .encode(id, ChunkKind::Data, &plain)
            .unwrap();
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
