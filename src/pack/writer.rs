//! Builds one pack in a staging file. The caller stores the finished file
//! under its content-derived name and only then indexes its chunks, so the
//! index never points into a pack that is not durable.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::{CompressedChunk, PackEntry};
use crate::codec::Encoder;
use crate::error::{IoContext, Result};
use crate::format::{PACK_FOOTER_MAGIC, PACK_HEADER_LEN, PACK_MAGIC, PACK_VERSION};
use crate::id::PackId;
use crate::storage::local::staging_name;

pub struct PackWriter {
    out: BufWriter<File>,
    path: PathBuf,
    /// Hash of every byte written so far; names the pack when finished.
    hasher: blake3::Hasher,
    entries: Vec<PackEntry>,
    len: u64,
}

/// A sealed, fsync'ed pack in the staging directory.
pub struct FinishedPack {
    pub id: PackId,
    pub staging_path: PathBuf,
    pub entries: Vec<PackEntry>,
    pub len: u64,
}

impl PackWriter {
    pub fn create(staging_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(staging_dir).at("creating directory", staging_dir)?;
        let path = staging_dir.join(staging_name("pack"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .at("creating pack", &path)?;
        let mut writer = PackWriter {
            out: BufWriter::with_capacity(1 << 20, file),
            path,
            hasher: blake3::Hasher::new(),
            entries: Vec::new(),
            len: 0,
        };
        let mut header = Encoder::new();
        header.raw(&PACK_MAGIC).u32(PACK_VERSION).u32(0);
        let header = header.into_bytes();
        debug_assert_eq!(header.len(), PACK_HEADER_LEN);
        writer.write(&header)?;
        Ok(writer)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).at("writing pack", &self.path)?;
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }

    pub fn append(&mut self, chunk: &CompressedChunk) -> Result<PackEntry> {
        let entry = PackEntry {
            id: chunk.id,
            offset: self.len,
            stored_len: chunk.bytes.len() as u32,
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

    /// Writes trailer and footer, fsyncs, and returns the pack's id.
    pub fn finish(mut self) -> Result<FinishedPack> {
        let trailer = encode_trailer(&self.entries);
        let trailer_hash = blake3::hash(&trailer);
        let mut footer = Encoder::new();
        footer
            .u32(self.entries.len() as u32)
            .u32(0)
            .raw(trailer_hash.as_bytes())
            .raw(&PACK_FOOTER_MAGIC);
        self.write(&trailer)?;
        self.write(&footer.into_bytes())?;
        let file = self
            .out
            .into_inner()
            .map_err(|e| e.into_error())
            .at("writing pack", &self.path)?;
        file.sync_all().at("syncing pack", &self.path)?;
        let hash = self.hasher.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&hash.as_bytes()[..16]);
        Ok(FinishedPack {
            id: PackId(id),
            staging_path: self.path,
            entries: self.entries,
            len: self.len,
        })
    }

    /// Gives up on the pack, removing its staging file.
    pub fn abandon(self) {
        let _ = std::fs::remove_file(&self.path);
    }
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
