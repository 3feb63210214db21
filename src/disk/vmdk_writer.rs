//! Writing disks out: hosted sparse VMDKs (monolithicSparse), flat extents
//! with a monolithicFlat descriptor, and raw files or block devices.
//!
//! Writers receive a disk's chunks in increasing offset order. The sparse
//! writer appends only grains that hold data, so holes stay unallocated;
//! its grain directory and tables are written when it finishes.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use super::sparse::{SECTOR, SPARSE_MAGIC};
use crate::error::{Error, IoContext, Result};

const GRAIN_SECTORS: u64 = 128; // 64 KiB grains, as VMware writes them
const GTES_PER_GT: u64 = 512;
const DESCRIPTOR_SECTORS: u64 = 20;

pub trait DiskSink: Send {
    fn write_chunk(&mut self, offset: u64, data: &[u8]) -> Result<()>;
    /// A range that reads as zeros (only block devices need writing).
    fn hole(&mut self, _offset: u64, _len: u64) -> Result<()> {
        Ok(())
    }
    fn finish(self: Box<Self>) -> Result<()>;
}

fn geometry_cylinders(sectors: u64) -> u64 {
    (sectors / (16 * 63)).clamp(1, 65535)
}

fn descriptor_text(create_type: &str, extent_line: &str, sectors: u64) -> String {
    format!(
        "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"{create_type}\"\n\n# Extent description\n{extent_line}\n\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\nddb.geometry.cylinders = \"{}\"\nddb.geometry.heads = \"16\"\nddb.geometry.sectors = \"63\"\nddb.adapterType = \"lsilogic\"\n",
        geometry_cylinders(sectors)
    )
}

/// The descriptor of a monolithicFlat disk whose data is `flat_name`.
pub fn flat_descriptor_text(flat_name: &str, capacity: u64) -> String {
    let sectors = capacity.div_ceil(SECTOR);
    descriptor_text(
        "monolithicFlat",
        &format!("RW {sectors} FLAT \"{flat_name}\" 0"),
        sectors,
    )
}

/// Writes the descriptor of a monolithicFlat disk whose data is `flat_name`.
pub fn write_flat_descriptor(path: &Path, flat_name: &str, capacity: u64) -> Result<()> {
    let text = flat_descriptor_text(flat_name, capacity);
    std::fs::write(path, text).at("writing descriptor", path)?;
    File::open(path)
        .and_then(|f| f.sync_all())
        .at("syncing", path)
}

pub struct SparseVmdkWriter {
    file: File,
    path: PathBuf,
    capacity_sectors: u64,
    gd_sector: u64,
    gt_sector: u64,
    tables: Vec<u32>,
    next_sector: u64,
}

impl SparseVmdkWriter {
    pub fn create(path: &Path, capacity: u64) -> Result<Self> {
        if capacity % SECTOR != 0 {
            return Err(Error::InvalidInput(format!(
                "the disk is {capacity} bytes, not a whole number of sectors; restore it as raw"
            )));
        }
        let capacity_sectors = capacity / SECTOR;
        let grains = capacity_sectors.div_ceil(GRAIN_SECTORS);
        let table_count = grains.div_ceil(GTES_PER_GT);
        let gd_sector = 1 + DESCRIPTOR_SECTORS;
        let gd_sectors = (table_count * 4).div_ceil(SECTOR);
        let gt_sector = gd_sector + gd_sectors;
        let gt_sectors = table_count * GTES_PER_GT * 4 / SECTOR;
        let overhead = (gt_sector + gt_sectors).div_ceil(GRAIN_SECTORS) * GRAIN_SECTORS;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .at("creating disk", path)?;

        let mut header = [0u8; 512];
        header[..4].copy_from_slice(&SPARSE_MAGIC);
        let mut put = |at: usize, bytes: &[u8]| header[at..at + bytes.len()].copy_from_slice(bytes);
        put(4, &1u32.to_le_bytes()); // version
        put(8, &1u32.to_le_bytes()); // flags: valid newline detection
        put(12, &capacity_sectors.to_le_bytes());
        put(20, &GRAIN_SECTORS.to_le_bytes());
        put(28, &1u64.to_le_bytes()); // descriptor offset
        put(36, &DESCRIPTOR_SECTORS.to_le_bytes());
        put(44, &(GTES_PER_GT as u32).to_le_bytes());
        put(48, &0u64.to_le_bytes()); // no redundant directory
        put(56, &gd_sector.to_le_bytes());
        put(64, &overhead.to_le_bytes());
        put(73, b"\n \r\n");
        file.write_all_at(&header, 0)
            .at("writing header of", path)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let descriptor = descriptor_text(
            "monolithicSparse",
            &format!("RW {capacity_sectors} SPARSE \"{name}\""),
            capacity_sectors,
        );
        if descriptor.len() as u64 > DESCRIPTOR_SECTORS * SECTOR {
            return Err(Error::InvalidInput(format!(
                "disk file name {name:?} is too long"
            )));
        }
        file.write_all_at(descriptor.as_bytes(), SECTOR)
            .at("writing descriptor of", path)?;
        Ok(SparseVmdkWriter {
            file,
            path: path.to_path_buf(),
            capacity_sectors,
            gd_sector,
            gt_sector,
            tables: vec![0; (table_count * GTES_PER_GT) as usize],
            next_sector: overhead,
        })
    }
}

impl DiskSink for SparseVmdkWriter {
    fn write_chunk(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let grain_bytes = (GRAIN_SECTORS * SECTOR) as usize;
        if offset % grain_bytes as u64 != 0 {
            return Err(Error::InvalidInput(format!(
                "chunk at {offset} is not grain-aligned"
            )));
        }
        let mut padded;
        for (n, piece) in data.chunks(grain_bytes).enumerate() {
            if piece.iter().all(|b| *b == 0) {
                continue;
            }
            let grain = (offset / grain_bytes as u64) as usize + n;
            if grain as u64 >= self.capacity_sectors.div_ceil(GRAIN_SECTORS) {
                return Err(Error::InvalidInput(format!(
                    "data beyond the end of {}",
                    self.path.display()
                )));
            }
            let bytes = if piece.len() == grain_bytes {
                piece
            } else {
                padded = piece.to_vec();
                padded.resize(grain_bytes, 0);
                &padded
            };
            self.file
                .write_all_at(bytes, self.next_sector * SECTOR)
                .at("writing", &self.path)?;
            self.tables[grain] = u32::try_from(self.next_sector).map_err(|_| {
                Error::InvalidInput(format!(
                    "{} would exceed 2 TiB of grains",
                    self.path.display()
                ))
            })?;
            self.next_sector += GRAIN_SECTORS;
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<()> {
        let tables = self.tables.len() as u64 / GTES_PER_GT;
        let directory: Vec<u8> = (0..tables)
            .flat_map(|i| ((self.gt_sector + i * GTES_PER_GT * 4 / SECTOR) as u32).to_le_bytes())
            .collect();
        self.file
            .write_all_at(&directory, self.gd_sector * SECTOR)
            .at("writing grain directory of", &self.path)?;
        let entries: Vec<u8> = self.tables.iter().flat_map(|e| e.to_le_bytes()).collect();
        self.file
            .write_all_at(&entries, self.gt_sector * SECTOR)
            .at("writing grain tables of", &self.path)?;
        self.file.sync_all().at("syncing", &self.path)
    }
}

/// Raw bytes at their offsets: a flat extent, a raw image, or a block
/// device (where holes must be written as zeros).
pub struct RawWriter {
    file: File,
    path: PathBuf,
    capacity: u64,
    block_device: bool,
}

impl RawWriter {
    /// `create_new` refuses to overwrite an existing regular file.
    pub fn create(path: &Path, capacity: u64, create_new: bool) -> Result<Self> {
        let block_device = std::fs::metadata(path)
            .map(|m| m.file_type().is_block_device())
            .unwrap_or(false);
        let file = if block_device {
            OpenOptions::new()
                .write(true)
                .open(path)
                .at("opening device", path)?
        } else {
            let mut options = OpenOptions::new();
            options.write(true);
            if create_new {
                options.create_new(true);
            } else {
                options.create(true).truncate(true);
            }
            options.open(path).at("creating", path)?
        };
        if block_device {
            let size = std::fs::File::open(path)
                .and_then(|mut f| std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0)))
                .at("reading size of", path)?;
            if size < capacity {
                return Err(Error::NoSpace {
                    path: path.to_path_buf(),
                    needed: capacity,
                    available: size,
                });
            }
        }
        Ok(RawWriter {
            file,
            path: path.to_path_buf(),
            capacity,
            block_device,
        })
    }
}

impl DiskSink for RawWriter {
    fn write_chunk(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.file
            .write_all_at(data, offset)
            .at("writing", &self.path)
    }

    fn hole(&mut self, offset: u64, len: u64) -> Result<()> {
        if self.block_device {
            let zeros = vec![0u8; len as usize];
            self.file
                .write_all_at(&zeros, offset)
                .at("writing", &self.path)?;
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<()> {
        if !self.block_device {
            self.file
                .set_len(self.capacity)
                .at("setting size of", &self.path)?;
        }
        self.file.sync_all().at("syncing", &self.path)
    }
}
