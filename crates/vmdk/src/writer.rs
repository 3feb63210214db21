//! Writing disks out: hosted sparse VMDKs (monolithicSparse), flat extents
//! with a monolithicFlat descriptor, and raw files or block devices.
//!
//! Writers receive a disk's chunks in increasing offset order. The sparse
//! writer appends only grains that hold data, so holes stay unallocated;
//! its grain directory and tables are written when it finishes.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::min_len;
use super::sparse::{MAX_CAPACITY_SECTORS, SECTOR, SPARSE_MAGIC};
use crate::error::{Error, IoContext, Result};

const GRAIN_BYTES: usize = 64 << 10; // 64 KiB grains, as VMware writes them
const GRAIN_SECTORS: u64 = GRAIN_BYTES as u64 / SECTOR;
/// Grain table entries per table, as the header's 32-bit field holds it.
const GTES_PER_GT_FIELD: u32 = 512;
const GTES_PER_GT: u64 = GTES_PER_GT_FIELD as u64;
const DESCRIPTOR_SECTORS: u64 = 20;
const TABLE_SECTORS: u64 = GTES_PER_GT * 4 / SECTOR;

/// Adapter types a VMDK descriptor may name (those qemu and VMware know).
pub const ADAPTER_TYPES: [&str; 4] = ["ide", "buslogic", "lsilogic", "legacyESX"];

pub trait DiskSink: Send {
    fn write_chunk(&mut self, offset: u64, data: &[u8]) -> Result<()>;
    /// A range that reads as zeros (only block devices need writing).
    fn hole(&mut self, _offset: u64, _len: u64) -> Result<()> {
        Ok(())
    }
    fn finish(self: Box<Self>) -> Result<()>;
}

/// Sectors a VMDK of a disk of `capacity` bytes has: rounded up to a whole
/// sector as qemu does, and at least one, since no VMDK reader accepts an
/// extent of 0 sectors.
pub fn vmdk_sectors(capacity: u64) -> u64 {
    capacity.div_ceil(SECTOR).max(1)
}

fn geometry_cylinders(sectors: u64) -> u64 {
    (sectors / (16 * 63)).clamp(1, 65535)
}

fn descriptor_text(create_type: &str, extent_line: &str, sectors: u64, adapter: &str) -> String {
    let adapter = if ADAPTER_TYPES.contains(&adapter) {
        adapter
    } else {
        "lsilogic"
    };
    format!(
        "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"{create_type}\"\n\n# Extent description\n{extent_line}\n\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\nddb.geometry.cylinders = \"{}\"\nddb.geometry.heads = \"16\"\nddb.geometry.sectors = \"63\"\nddb.adapterType = \"{adapter}\"\n",
        geometry_cylinders(sectors)
    )
}

/// The descriptor of a monolithicFlat disk whose data is `flat_name`; the
/// flat file must hold [`vmdk_sectors`] whole sectors.
pub fn flat_descriptor_text(flat_name: &str, capacity: u64, adapter: &str) -> String {
    let sectors = vmdk_sectors(capacity);
    descriptor_text(
        "monolithicFlat",
        &format!("RW {sectors} FLAT \"{flat_name}\" 0"),
        sectors,
        adapter,
    )
}

/// Writes the descriptor of a monolithicFlat disk whose data is `flat_name`.
pub fn write_flat_descriptor(
    path: &Path,
    flat_name: &str,
    capacity: u64,
    adapter: &str,
) -> Result<()> {
    let text = flat_descriptor_text(flat_name, capacity, adapter);
    std::fs::write(path, text).at("writing descriptor", path)?;
    File::open(path)
        .and_then(|f| f.sync_all())
        .at("syncing", path)
}

/// A monolithicSparse VMDK written front to back. Grains that hold data
/// are appended as they come; a grain table is appended once the grains of
/// its 32 MiB span are all past, and only if one of them holds data, so
/// time, memory and file size follow the data, not the capacity. The grain
/// directory's place is reserved after the descriptor and left a hole
/// (entries of 0: no table) except where a table was written.
pub struct SparseVmdkWriter {
    file: File,
    path: PathBuf,
    grains: u64,
    gd_sector: u64,
    /// Index and entries of the grain table being filled.
    table: Option<(u64, Vec<u32>)>,
    next_sector: u64,
    /// Bytes from the start whose writeback was started.
    written_back: u64,
}

impl SparseVmdkWriter {
    pub fn create(path: &Path, capacity: u64, adapter: &str) -> Result<Self> {
        let capacity_sectors = vmdk_sectors(capacity);
        if capacity_sectors > MAX_CAPACITY_SECTORS {
            return Err(Error::InvalidInput(format!(
                "{}: a disk of {capacity} bytes is larger than a VMDK may be",
                path.display()
            )));
        }
        let grains = capacity_sectors.div_ceil(GRAIN_SECTORS);
        let table_count = grains.div_ceil(GTES_PER_GT);
        let gd_sector = 1 + DESCRIPTOR_SECTORS;
        let gd_sectors = (table_count * 4).div_ceil(SECTOR);
        let overhead = (gd_sector + gd_sectors).div_ceil(GRAIN_SECTORS) * GRAIN_SECTORS;
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
        put(44, &GTES_PER_GT_FIELD.to_le_bytes());
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
            adapter,
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
            grains,
            gd_sector,
            table: None,
            next_sector: overhead,
            written_back: 0,
        })
    }

    fn sector_entry(&self) -> Result<u32> {
        u32::try_from(self.next_sector).map_err(|_| {
            Error::InvalidInput(format!(
                "{} would exceed 2 TiB of data, the most a sparse VMDK holds",
                self.path.display()
            ))
        })
    }

    /// Appends the table being filled and points its directory entry at it.
    fn flush_table(&mut self) -> Result<()> {
        let Some((index, entries)) = self.table.take() else {
            return Ok(());
        };
        let at = self.sector_entry()?;
        let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
        self.file
            .write_all_at(&bytes, self.next_sector * SECTOR)
            .at("writing grain table of", &self.path)?;
        self.file
            .write_all_at(&at.to_le_bytes(), self.gd_sector * SECTOR + index * 4)
            .at("writing grain directory of", &self.path)?;
        self.next_sector += TABLE_SECTORS;
        Ok(())
    }
}

impl DiskSink for SparseVmdkWriter {
    fn write_chunk(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        if !offset.is_multiple_of(GRAIN_BYTES as u64) {
            return Err(Error::InvalidInput(format!(
                "chunk at {offset} is not grain-aligned"
            )));
        }
        let mut padded;
        for (n, piece) in data.chunks(GRAIN_BYTES).enumerate() {
            if crate::is_zero(piece) {
                continue;
            }
            let grain = offset / GRAIN_BYTES as u64 + n as u64;
            if grain >= self.grains {
                return Err(Error::InvalidInput(format!(
                    "data beyond the end of {}",
                    self.path.display()
                )));
            }
            let index = grain / GTES_PER_GT;
            match self.table.as_ref().map(|(current, _)| *current) {
                Some(current) if current == index => {}
                Some(current) if current > index => {
                    return Err(Error::InvalidInput(format!(
                        "grain {grain} of {} comes after a later one",
                        self.path.display()
                    )))
                }
                _ => {
                    self.flush_table()?;
                    self.table = Some((index, vec![0; GTES_PER_GT_FIELD as usize]));
                }
            }
            let bytes = if piece.len() == GRAIN_BYTES {
                piece
            } else {
                padded = piece.to_vec();
                padded.resize(GRAIN_BYTES, 0);
                &padded
            };
            let entry = self.sector_entry()?;
            self.file
                .write_all_at(bytes, self.next_sector * SECTOR)
                .at("writing", &self.path)?;
            if let Some((_, entries)) = &mut self.table {
                entries[(grain % GTES_PER_GT) as usize] = entry;
            }
            self.next_sector += GRAIN_SECTORS;
        }
        let end = self.next_sector * SECTOR;
        if end - self.written_back >= WRITEBACK_BYTES {
            start_writeback(
                &self.file,
                &self.path,
                self.written_back,
                end - self.written_back,
            );
            self.written_back = end;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        self.flush_table()?;
        // Readers want the file to reach at least the first grain's sector.
        self.file
            .set_len(self.next_sector * SECTOR)
            .at("setting size of", &self.path)?;
        self.file.sync_all().at("syncing", &self.path)
    }
}

/// Raw bytes at their offsets: a flat extent, a raw image, or a block
/// device (where holes must be written as zeros).
///
/// A regular file that may already exist is written under a temporary
/// name beside it and renamed over it only once complete, so a failed
/// restore leaves the old copy as it was; the temporary file is removed
/// if the writer is dropped unfinished. Block devices are written in place.
pub struct RawWriter {
    file: File,
    path: PathBuf,
    /// The temporary name being written, renamed to `path` by `finish`.
    temp: Option<PathBuf>,
    capacity: u64,
    block_device: bool,
}

impl RawWriter {
    /// A regular file that must not exist yet (a flat extent in a new VM
    /// folder), `capacity` bytes long.
    pub fn create_new(path: &Path, capacity: u64) -> Result<Self> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .at("creating", path)?;
        Ok(RawWriter {
            file,
            path: path.to_path_buf(),
            temp: None,
            capacity,
            block_device: false,
        })
    }

    /// A block device (written in place) or a regular file, new or to be
    /// replaced only when complete.
    pub fn replace(path: &Path, capacity: u64) -> Result<Self> {
        let existing = std::fs::metadata(path).ok();
        if existing
            .as_ref()
            .is_some_and(|m| m.file_type().is_block_device())
        {
            return Self::device(path, capacity);
        }
        let name = path.file_name().ok_or_else(|| {
            Error::InvalidInput(format!("{} does not name a file", path.display()))
        })?;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".strata-partial-{}", std::process::id()));
        let temp = path.with_file_name(temp_name);
        // A leftover of an earlier run of this process id is ours to replace.
        let _ = std::fs::remove_file(&temp);
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        if let Some(meta) = &existing {
            options.mode(meta.permissions().mode() & 0o7777);
        }
        let file = options.open(&temp).at("creating", &temp)?;
        Ok(RawWriter {
            file,
            path: path.to_path_buf(),
            temp: Some(temp),
            capacity,
            block_device: false,
        })
    }

    fn device(path: &Path, capacity: u64) -> Result<Self> {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .at("opening device", path)?;
        let size = super::byte_len(&file, path)?;
        if size < capacity {
            return Err(Error::NoSpace {
                path: path.to_path_buf(),
                needed: capacity,
                available: size,
            });
        }
        Ok(RawWriter {
            file,
            path: path.to_path_buf(),
            temp: None,
            capacity,
            block_device: true,
        })
    }

    fn written_path(&self) -> &Path {
        self.temp.as_deref().unwrap_or(&self.path)
    }

    /// Whether holes must be written as zeros: a block device keeps
    /// whatever it held, a new file reads zeros where nothing was written.
    pub fn writes_holes(&self) -> bool {
        self.block_device
    }

    /// Writes `data` at `offset`. Takes `&self`: several threads may write
    /// disjoint ranges at once.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.file
            .write_all_at(data, offset)
            .at("writing", self.written_path())
    }

    /// Writes `len` zero bytes at `offset` on a block device; nothing on a
    /// file, where the hole stays unallocated.
    pub fn zero_at(&self, offset: u64, len: u64) -> Result<()> {
        if !self.block_device {
            return Ok(());
        }
        // In pieces of at most a MiB: a hole can be as long as the disk.
        let zeros = vec![0u8; min_len(len, 1 << 20)];
        let mut done = 0u64;
        while done < len {
            let piece = &zeros[..min_len(len - done, zeros.len())];
            self.write_at(offset + done, piece)?;
            done += piece.len() as u64;
        }
        Ok(())
    }

    /// Starts writing `len` bytes at `offset` back to the disk without
    /// waiting for it; see [`start_writeback`].
    pub fn start_writeback(&self, offset: u64, len: u64) {
        start_writeback(&self.file, self.written_path(), offset, len);
    }
}

/// Bytes appended to a sparse VMDK after which their writeback starts.
const WRITEBACK_BYTES: u64 = 32 << 20;

/// Starts writing `len` bytes of `file` at `offset` back to the disk
/// without waiting, so that the disk writes while a restore is still
/// decompressing and the final sync finds little left. Only a hint:
/// errors surface at that sync.
fn start_writeback(file: &File, path: &Path, offset: u64, len: u64) {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor is open for as long as `file` is borrowed;
    // sync_file_range reads no memory of ours.
    let rc = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
    if rc != 0 {
        tracing::debug!(file = %path.display(), error = %std::io::Error::last_os_error(), "sync_file_range");
    }
}

impl Drop for RawWriter {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            if let Err(e) = std::fs::remove_file(&temp) {
                tracing::error!(file = %temp.display(), error = %e, "could not remove incomplete restore");
            }
        }
    }
}

impl DiskSink for RawWriter {
    fn write_chunk(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.write_at(offset, data)
    }

    fn hole(&mut self, offset: u64, len: u64) -> Result<()> {
        self.zero_at(offset, len)
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        if !self.block_device {
            self.file
                .set_len(self.capacity)
                .at("setting size of", self.written_path())?;
        }
        self.file.sync_all().at("syncing", self.written_path())?;
        if let Some(temp) = &self.temp {
            std::fs::rename(temp, &self.path).at("renaming into place", &self.path)?;
            self.temp = None;
            let dir = self
                .path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            // The rename is durable only once its directory is synced.
            File::open(dir)
                .and_then(|d| d.sync_all())
                .at("syncing directory", dir)?;
        }
        Ok(())
    }
}
