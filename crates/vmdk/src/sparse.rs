//! Hosted sparse extents (VMDK version 1–3): monolithicSparse,
//! twoGbMaxExtentSparse pieces and streamOptimized (zlib-compressed grains
//! with markers, grain directory in the footer).
//!
//! Every offset and size in the header, grain directory and grain tables is
//! checked against the file's length before it is used, and nothing is
//! allocated from a header field without such a bound, so a damaged or
//! truncated file gives an error naming the structure at fault.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::min_len;
use crate::error::{Error, IoContext, Result};

pub const SECTOR: u64 = 512;
pub const SPARSE_MAGIC: [u8; 4] = *b"KDMV";
const FLAG_COMPRESSED: u32 = 1 << 16;
const FLAG_MARKERS: u32 = 1 << 17;
const COMPRESSION_DEFLATE: u16 = 1;
const GD_AT_END: u64 = u64::MAX;
const MARKER_FOOTER: u32 = 3;
/// Largest capacity read or written: 512 TiB.
pub const MAX_CAPACITY_SECTORS: u64 = 1 << 40;
const MAX_GRAIN_SECTORS: u64 = 1 << 16;
/// qemu refuses more ("L2 table size too big"); VMware writes 512.
const MAX_GTES_PER_GT: u32 = 512;
/// qemu's bound on a grain directory ("L1 size too big").
const MAX_DIRECTORY_ENTRIES: u64 = 32 << 20;

/// The fields of a sparse extent header that reading needs.
#[derive(Debug, Clone, Copy)]
pub struct SparseHeader {
    pub version: u32,
    pub flags: u32,
    pub capacity: u64,
    pub grain_sectors: u64,
    pub descriptor_offset: u64,
    pub descriptor_sectors: u64,
    pub gtes_per_gt: u32,
    pub gd_offset: u64,
    /// Sectors before the first grain (`overHead`).
    pub grain_offset: u64,
    pub compression: u16,
}

impl SparseHeader {
    pub fn parse(bytes: &[u8; 512]) -> std::result::Result<Self, String> {
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
        if bytes[..4] != SPARSE_MAGIC {
            return Err("no KDMV magic".into());
        }
        Ok(SparseHeader {
            version: u32_at(4),
            flags: u32_at(8),
            capacity: u64_at(12),
            grain_sectors: u64_at(20),
            descriptor_offset: u64_at(28),
            descriptor_sectors: u64_at(36),
            gtes_per_gt: u32_at(44),
            gd_offset: u64_at(56),
            grain_offset: u64_at(64),
            compression: u16::from_le_bytes([bytes[77], bytes[78]]),
        })
    }
}

pub struct SparseExtent {
    file: File,
    path: PathBuf,
    len: u64,
    header: SparseHeader,
    /// Sector offset of each grain table; 0 = table not allocated.
    directory: Vec<u32>,
    compressed: bool,
    last_table: Mutex<Option<(usize, Arc<Vec<u32>>)>>,
}

fn damaged(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::corrupt(format!("VMDK sparse extent {}", path.display()), what)
}

/// A zeroed buffer for `size` bytes of `what`, a size the caller has
/// checked against the file; one this machine cannot address is damage.
fn buffer(path: &Path, size: u64, what: &str) -> Result<Vec<u8>> {
    let len = usize::try_from(size)
        .map_err(|_| damaged(path, format!("{what} of {size} bytes is too large to read")))?;
    Ok(vec![0u8; len])
}

impl SparseExtent {
    /// Opens a sparse extent; also returns its embedded descriptor's bytes
    /// (up to the first NUL; `None` if it has none).
    pub fn open(path: &Path) -> Result<(SparseExtent, Option<Vec<u8>>)> {
        let file = File::open(path).at("opening", path)?;
        let len = super::byte_len(&file, path)?;
        let mut raw = [0u8; 512];
        if len < 512 {
            return Err(damaged(
                path,
                format!("file is {len} bytes, shorter than a header"),
            ));
        }
        file.read_exact_at(&mut raw, 0)
            .at("reading header of", path)?;
        if raw.starts_with(b"COWD") {
            return Err(Error::InvalidInput(format!(
                "{}: it is an ESX COWD (vmfsSparse) extent, a snapshot delta Strata does not read; consolidate the snapshot or back up the base disk",
                path.display()
            )));
        }
        let mut header =
            SparseHeader::parse(&raw).map_err(|e| damaged(path, format!("header: {e}")))?;
        check_version(path, header.version)?;
        let descriptor = read_embedded_descriptor(&file, path, len, &header)?;
        if header.gd_offset == GD_AT_END {
            header = read_footer(&file, path, len)?;
        }
        validate(path, len, &header)?;
        let compressed = header.flags & FLAG_COMPRESSED != 0;
        let tables = directory_len(&header);
        let gd_bytes = tables * 4;
        let gd_start = header.gd_offset * SECTOR;
        if gd_start.checked_add(gd_bytes).is_none_or(|end| end > len) {
            return Err(damaged(
                path,
                format!(
                    "grain directory at sector {} ({} entries) lies outside the file",
                    header.gd_offset, tables
                ),
            ));
        }
        let mut gd_raw = buffer(path, gd_bytes, "grain directory")?;
        file.read_exact_at(&mut gd_raw, gd_start)
            .at("reading grain directory of", path)?;
        let directory: Vec<u32> = gd_raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4")))
            .collect();
        let table_bytes = header.gtes_per_gt as u64 * 4;
        for (i, &sector) in directory.iter().enumerate() {
            if sector != 0
                && (sector as u64 * SECTOR)
                    .checked_add(table_bytes)
                    .is_none_or(|end| end > len)
            {
                return Err(damaged(
                    path,
                    format!("grain table {i} at sector {sector} lies outside the file"),
                ));
            }
        }
        Ok((
            SparseExtent {
                file,
                path: path.to_path_buf(),
                len,
                header,
                directory,
                compressed,
                last_table: Mutex::new(None),
            },
            descriptor,
        ))
    }

    pub fn capacity(&self) -> u64 {
        self.header.capacity * SECTOR
    }

    /// True for zlib-compressed grains (stream-optimized).
    pub fn is_compressed(&self) -> bool {
        self.compressed
    }

    fn grain_bytes(&self) -> u64 {
        self.header.grain_sectors * SECTOR
    }

    fn table(&self, index: usize) -> Result<Option<Arc<Vec<u32>>>> {
        let sector = self.directory[index];
        if sector == 0 {
            return Ok(None);
        }
        if let Some((i, table)) = self.last_table.lock().expect("table cache").as_ref() {
            if *i == index {
                return Ok(Some(table.clone()));
            }
        }
        let mut raw = vec![0u8; self.header.gtes_per_gt as usize * 4];
        self.file
            .read_exact_at(&mut raw, sector as u64 * SECTOR)
            .at("reading grain table of", &self.path)?;
        let table = Arc::new(
            raw.chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4")))
                .collect::<Vec<_>>(),
        );
        *self.last_table.lock().expect("table cache") = Some((index, table.clone()));
        Ok(Some(table))
    }

    /// Grain table entry of grain `grain`: 0 unallocated, 1 zero grain,
    /// else the sector of the grain (or of its marker when compressed).
    fn entry(&self, grain: u64) -> Result<u32> {
        let per = self.header.gtes_per_gt as usize;
        let grain = usize::try_from(grain)
            .map_err(|_| damaged(&self.path, format!("grain {grain} is out of range")))?;
        let Some(table) = self.table(grain / per)? else {
            return Ok(0);
        };
        Ok(table[grain % per])
    }

    /// Byte ranges that hold data (allocated, non-zero grains).
    pub fn allocated(&self) -> Result<Vec<(u64, u64)>> {
        let grain = self.grain_bytes();
        let per = self.header.gtes_per_gt as u64;
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for index in 0..self.directory.len() {
            let Some(table) = self.table(index)? else {
                continue;
            };
            for (j, &entry) in table.iter().enumerate() {
                if entry <= 1 {
                    continue;
                }
                let start = (index as u64 * per + j as u64) * grain;
                if start >= self.capacity() {
                    break;
                }
                let end = (start + grain).min(self.capacity());
                match ranges.last_mut() {
                    Some(last) if last.1 == start => last.1 = end,
                    _ => ranges.push((start, end)),
                }
            }
        }
        Ok(ranges)
    }

    /// Fills `buf` from virtual byte `offset`; unallocated grains read as
    /// zeros.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let grain = self.grain_bytes();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let index = pos / grain;
            let within = pos % grain;
            let mut take = min_len(grain - within, buf.len() - done);
            let entry = self.entry(index)?;
            let out = &mut buf[done..done + take];
            match entry {
                0 | 1 => out.fill(0),
                sector if self.compressed => {
                    self.read_compressed(index, sector as u64, within, out)?
                }
                sector => {
                    // Coalesce grains stored back to back into one read.
                    let start = sector as u64 * SECTOR + within;
                    let mut next = index + 1;
                    while done + take < buf.len()
                        && u64::from(self.entry(next)?)
                            == sector as u64 + (next - index) * self.header.grain_sectors
                    {
                        take = min_len(take as u64 + grain, buf.len() - done);
                        next += 1;
                    }
                    let out = &mut buf[done..done + take];
                    if start + out.len() as u64 > self.len {
                        return Err(damaged(
                            &self.path,
                            format!(
                                "grain {index} at sector {sector} lies beyond the end of the file"
                            ),
                        ));
                    }
                    self.file
                        .read_exact_at(out, start)
                        .at("reading grain of", &self.path)?;
                }
            }
            done += take;
        }
        Ok(())
    }

    fn read_compressed(&self, index: u64, sector: u64, within: u64, out: &mut [u8]) -> Result<()> {
        let grain = self.grain_bytes();
        // At most MAX_GRAIN_SECTORS sectors (validated), but checked all the same.
        let grain_len = usize::try_from(grain).map_err(|_| {
            damaged(
                &self.path,
                format!("grains of {grain} bytes are too large to read"),
            )
        })?;
        let at = sector * SECTOR;
        let mut marker = [0u8; 12];
        if at + 12 > self.len {
            return Err(damaged(
                &self.path,
                format!("grain marker {index} at sector {sector} lies beyond the end of the file"),
            ));
        }
        self.file
            .read_exact_at(&mut marker, at)
            .at("reading grain marker of", &self.path)?;
        let lba = u64::from_le_bytes(marker[..8].try_into().expect("8"));
        let size = u32::from_le_bytes(marker[8..12].try_into().expect("4")) as u64;
        if lba != index * self.header.grain_sectors {
            return Err(damaged(
                &self.path,
                format!(
                    "grain marker at sector {sector} is for sector {lba}, expected {}",
                    index * self.header.grain_sectors
                ),
            ));
        }
        if size == 0 || size > 2 * grain + 1024 || at + 12 + size > self.len {
            return Err(damaged(
                &self.path,
                format!("compressed grain {index} claims {size} bytes"),
            ));
        }
        let mut compressed = buffer(&self.path, size, "compressed grain")?;
        self.file
            .read_exact_at(&mut compressed, at + 12)
            .at("reading grain of", &self.path)?;
        let mut plain = Vec::with_capacity(grain_len);
        flate2::read::ZlibDecoder::new(&compressed[..])
            .take(grain + 1)
            .read_to_end(&mut plain)
            .map_err(|e| {
                damaged(
                    &self.path,
                    format!("grain {index} does not decompress: {e}"),
                )
            })?;
        if plain.len() > grain_len {
            return Err(damaged(
                &self.path,
                format!("grain {index} decompresses to more than a grain"),
            ));
        }
        plain.resize(grain_len, 0);
        // `within` lies inside the grain, as the caller computed it.
        let within = min_len(within, grain_len);
        out.copy_from_slice(&plain[within..within + out.len()]);
        Ok(())
    }
}

fn directory_len(h: &SparseHeader) -> u64 {
    let per_table = h.grain_sectors * h.gtes_per_gt as u64;
    h.capacity.div_ceil(per_table)
}

fn check_version(path: &Path, version: u32) -> Result<()> {
    if (1..=3).contains(&version) {
        return Ok(());
    }
    Err(Error::InvalidInput(format!(
        "VMDK sparse extent {} has header version {version}; Strata reads versions 1 to 3",
        path.display()
    )))
}

/// A stream-optimized file's real header is its footer, 1 KiB before the
/// end: footer marker, footer, end-of-stream marker (checked as qemu does).
fn read_footer(file: &File, path: &Path, len: u64) -> Result<SparseHeader> {
    if len < 1536 {
        return Err(damaged(
            path,
            "stream-optimized file too short for a footer",
        ));
    }
    let mut tail = [0u8; 1536];
    file.read_exact_at(&mut tail, len - 1536)
        .at("reading footer of", path)?;
    let u32_at = |o: usize| u32::from_le_bytes(tail[o..o + 4].try_into().expect("4 bytes"));
    let eos_clear = tail[1024..1040].iter().all(|b| *b == 0);
    if u32_at(8) != 0 || u32_at(12) != MARKER_FOOTER || !eos_clear {
        return Err(damaged(
            path,
            "the header defers to a footer, but the file does not end with footer and end-of-stream markers",
        ));
    }
    let footer = SparseHeader::parse(tail[512..1024].try_into().expect("512 bytes"))
        .map_err(|e| damaged(path, format!("footer: {e}")))?;
    check_version(path, footer.version)?;
    if footer.gd_offset == GD_AT_END {
        return Err(damaged(path, "footer has no grain directory offset"));
    }
    Ok(footer)
}

/// Checks the header's fields against each other and the file's length,
/// with qemu's vmdk driver's limits where it has them.
fn validate(path: &Path, len: u64, h: &SparseHeader) -> Result<()> {
    let fail = |what: String| Err(damaged(path, what));
    if h.capacity == 0 || h.capacity > MAX_CAPACITY_SECTORS {
        return fail(format!(
            "capacity of {} sectors is out of range",
            h.capacity
        ));
    }
    if h.grain_sectors == 0
        || !h.grain_sectors.is_power_of_two()
        || h.grain_sectors > MAX_GRAIN_SECTORS
    {
        return fail(format!(
            "grain size of {} sectors is not a power of two up to {MAX_GRAIN_SECTORS}",
            h.grain_sectors
        ));
    }
    if h.gtes_per_gt == 0 || h.gtes_per_gt > MAX_GTES_PER_GT {
        return fail(format!(
            "{} grain table entries per table; VMDK allows 1 to {MAX_GTES_PER_GT}",
            h.gtes_per_gt
        ));
    }
    if directory_len(h) > MAX_DIRECTORY_ENTRIES {
        return fail(format!(
            "{} grain tables for {} sectors is more than a VMDK may have",
            directory_len(h),
            h.capacity
        ));
    }
    let compressed = h.flags & FLAG_COMPRESSED != 0;
    match (compressed, h.compression) {
        (true, COMPRESSION_DEFLATE) | (false, 0) => {}
        (false, COMPRESSION_DEFLATE) => {
            return fail(
                "the header names deflate compression, but its flags say grains are not compressed"
                    .into(),
            )
        }
        (true, 0) => return fail(
            "its flags say grains are compressed, but the header names no compression algorithm"
                .into(),
        ),
        (_, other) => return fail(format!("unknown compression algorithm {other}")),
    }
    if compressed && h.flags & FLAG_MARKERS == 0 {
        return fail("compressed grains without markers are not supported".into());
    }
    if h.gd_offset == 0 || h.gd_offset.checked_mul(SECTOR).is_none_or(|b| b >= len) {
        return fail(format!(
            "grain directory offset {} lies outside the file",
            h.gd_offset
        ));
    }
    if h.grain_offset.checked_mul(SECTOR).is_none_or(|b| b > len) {
        return fail(format!(
            "file is {len} bytes, but its header says grains start at sector {}",
            h.grain_offset
        ));
    }
    Ok(())
}

fn read_embedded_descriptor(
    file: &File,
    path: &Path,
    len: u64,
    h: &SparseHeader,
) -> Result<Option<Vec<u8>>> {
    if h.descriptor_offset == 0 || h.descriptor_sectors == 0 {
        return Ok(None);
    }
    let start = h.descriptor_offset.checked_mul(SECTOR);
    let size = h
        .descriptor_sectors
        .checked_mul(SECTOR)
        .filter(|s| *s <= super::descriptor::MAX_DESCRIPTOR_LEN);
    let (Some(start), Some(size)) = (start, size) else {
        return Err(damaged(
            path,
            "embedded descriptor offset or size out of range",
        ));
    };
    if start.checked_add(size).is_none_or(|end| end > len) {
        return Err(damaged(path, "embedded descriptor lies outside the file"));
    }
    let mut raw = buffer(path, size, "embedded descriptor")?;
    file.read_exact_at(&mut raw, start)
        .at("reading descriptor of", path)?;
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    raw.truncate(end);
    Ok((!raw.is_empty()).then_some(raw))
}
