//! Builds one pack, streaming it into any writer. The pack's id is the
//! hash of its bytes, known only once it is complete; the caller then
//! stores it under its content-derived name and only after that indexes its
//! chunks, so the index never points into a pack that is not durable.

use std::io::Write;

use super::{CompressedChunk, PackEntry, MAX_CHUNK_LEN};
use crate::codec::Encoder;
use crate::error::{Error, Result};
use crate::format::{PACK_FOOTER_MAGIC, PACK_HEADER_LEN, PACK_MAGIC};
use crate::id::PackId;

pub struct PackWriter<W: Write> {
    out: W,
    /// Where the bytes go, for messages.
    target: String,
    /// Hash of every byte written so far; names the pack when finished.
    hasher: blake3::Hasher,
    entries: Vec<PackEntry>,
    len: u64,
}

/// A complete pack: its id, what it holds, and how long it is.
pub struct FinishedPack {
    pub id: PackId,
    pub entries: Vec<PackEntry>,
    /// How many entries the footer counts: `entries.len()`, which
    /// `finish` checked fits the footer's 32-bit field.
    pub chunk_count: u32,
    pub len: u64,
    /// The pack's last bytes, trailer and footer: all that reading its
    /// entries needs (kept on the warm tier for a cold pack, whose own
    /// bytes an archive class makes unreadable).
    pub tail: Vec<u8>,
}

impl<W: Write> PackWriter<W> {
    /// A pack of `version` ([`super::ChunkCodec::pack_version`]: whether
    /// its chunks are sealed).
    pub fn new(out: W, target: String, version: u32) -> Result<Self> {
        let mut writer = PackWriter {
            out,
            target,
            hasher: blake3::Hasher::new(),
            entries: Vec::new(),
            len: 0,
        };
        let mut header = Encoder::new();
        header.raw(&PACK_MAGIC).u32(version).u32(0);
        let header = header.into_bytes();
        debug_assert_eq!(header.len(), PACK_HEADER_LEN);
        writer.write(&header)?;
        Ok(writer)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|e| Error::io("writing pack", &self.target, e))?;
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }

    pub fn append(&mut self, chunk: &CompressedChunk) -> Result<PackEntry> {
        // Readers refuse such a chunk, so it is never written.
        if chunk.raw_len > MAX_CHUNK_LEN {
            return Err(Error::InvalidInput(format!(
                "chunk {} of more than {MAX_CHUNK_LEN} bytes is too large for a pack",
                chunk.id
            )));
        }
        let entry = PackEntry {
            id: chunk.id,
            offset: self.len,
            stored_len: len_u32(chunk.bytes.len(), "stored chunk")?,
            raw_len: chunk.raw_len,
            kind: chunk.kind,
            compression: chunk.compression,
        };
        self.write(&chunk.bytes)?;
        self.entries.push(entry);
        Ok(entry)
    }

    /// Bytes written so far, header included.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes trailer and footer and hands back the output, which the
    /// caller makes durable under the pack's name.
    pub fn finish(mut self) -> Result<(FinishedPack, W)> {
        let chunk_count = len_u32(self.entries.len(), "pack entry count")?;
        let trailer = encode_trailer(&self.entries);
        let trailer_hash = blake3::hash(&trailer);
        let mut footer = Encoder::new();
        footer
            .u32(chunk_count)
            .u32(0)
            .raw(trailer_hash.as_bytes())
            .raw(&PACK_FOOTER_MAGIC);
        let mut tail = trailer;
        tail.extend_from_slice(&footer.into_bytes());
        self.write(&tail)?;
        let hash = self.hasher.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&hash.as_bytes()[..16]);
        Ok((
            FinishedPack {
                id: PackId(id),
                entries: self.entries,
                chunk_count,
                len: self.len,
                tail,
            },
            self.out,
        ))
    }
}

/// A length as the format's 32-bit field; larger is a bug upstream (the
/// chunker and tree encoder bound every chunk), reported, not truncated.
fn len_u32(len: usize, what: &str) -> Result<u32> {
    u32::try_from(len)
        .map_err(|_| Error::InvalidInput(format!("{what} of {len} bytes is too large for a pack")))
}

pub(crate) fn encode_trailer(entries: &[PackEntry]) -> Vec<u8> {
    let mut e = Encoder::new();
    for entry in entries {
        e.raw(entry.id.as_bytes())
            .u64(entry.offset)
            .u32(entry.stored_len)
            .u32(entry.raw_len)
            .u8(entry.kind as u8)
            .u8(entry.compression as u8)
            .raw(&[0u8; 6]);
    }
    e.into_bytes()
}
