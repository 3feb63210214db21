//! The VMDK layer: virtual disks read natively (raw images and VMDKs:
//! monolithicSparse, twoGbMaxExtentSparse, monolithicFlat,
//! twoGbMaxExtentFlat, vmfs flat, streamOptimized) as one address space of
//! extents, and written out as sparse or flat VMDKs or raw files.
//!
//! A [`VirtualDisk`] answers two questions: which byte ranges hold data
//! (so holes are never read), and what the bytes at an offset are.
//!
//! This layer knows nothing of repositories: it depends only on
//! `strata-format`'s error and disk-format types. How a stored
//! disk is mapped to chunks is the repository's business (`disk_map`).

// Lengths and offsets come from hostile bytes: a cast that could
// truncate one must be a checked conversion instead.
#![deny(clippy::cast_possible_truncation)]

pub mod descriptor;
pub mod probe;
pub mod sparse;
pub mod writer;

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use descriptor::{Descriptor, ExtentKind, TextEncoding};
pub use probe::ImageFormat;
use probe::Looks;
use sparse::{SparseExtent, SECTOR};

use strata_format::error;

use crate::error::{Error, IoContext, Result};

pub use strata_format::disk_format::DiskFormat;

/// Whether `bytes` are all zero: a hole to leave unwritten, a chunk not to
/// store. OR-ing 64 bytes at a time vectorizes, and data stops at its
/// first non-zero piece.
pub fn is_zero(bytes: &[u8]) -> bool {
    bytes
        .chunks(64)
        .all(|piece| piece.iter().fold(0u8, |acc, b| acc | b) == 0)
}

enum ExtentData {
    Flat { file: File, offset: u64 },
    Sparse(SparseExtent),
    Zero,
}

struct Extent {
    start: u64,
    len: u64,
    path: PathBuf,
    data: ExtentData,
}

pub struct VirtualDisk {
    path: PathBuf,
    format: DiskFormat,
    capacity: u64,
    /// `ddb.adapterType` of the descriptor, if it has one.
    adapter_type: Option<String>,
    extents: Vec<Extent>,
}

fn bad(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::corrupt(format!("disk image {}", path.display()), what)
}

impl VirtualDisk {
    /// Opens an image as `format`, or as its name asks when `None` (see
    /// [`probe`]); content that contradicts the format is refused, named.
    pub fn open(path: &Path, format: Option<ImageFormat>) -> Result<VirtualDisk> {
        let file = File::open(path).at("opening disk", path)?;
        let len = byte_len(&file, path)?;
        let device = file
            .metadata()
            .at("reading metadata of", path)?
            .file_type()
            .is_block_device();
        let looks = probe::probe(&file, path, len)?;
        let expected = format.or(if device {
            Some(ImageFormat::Raw)
        } else {
            probe::format_for_name(path)
        });
        let refuse = |why: String| Err(Error::InvalidInput(format!("{}: {why}", path.display())));
        match (looks, expected) {
            (Looks::Empty, _) => refuse(format!("it is {looks}; there is no disk to back up")),
            (_, Some(ImageFormat::Raw)) if format.is_some() => Ok(Self::raw(path, file, len)),
            (Looks::SparseVmdk, None | Some(ImageFormat::Vmdk)) => Self::from_sparse(path),
            (Looks::Descriptor, None | Some(ImageFormat::Vmdk)) => {
                Self::from_descriptor_file(path, &file, len)
            }
            (Looks::CowdVmdk, None | Some(ImageFormat::Vmdk)) => refuse(
                "it is an ESX COWD (vmfsSparse) extent, a snapshot delta Strata does not read; consolidate the snapshot or back up the base disk".into(),
            ),
            (_, Some(ImageFormat::Vmdk)) => refuse(format!(
                "it is not a VMDK, it looks like {looks}; back up the descriptor that names it, or pass --format raw to store its bytes as a raw disk"
            )),
            (_, _) if looks.is_vmdk() => refuse(format!(
                "it is named as a raw image but looks like {looks}; pass --format vmdk to read it as a VMDK, or --format raw to store its bytes as they are"
            )),
            (_, _) if looks.is_recognised() => refuse(format!(
                "it looks like {looks}, not a disk image Strata reads; convert it to VMDK or raw first, or pass --format raw to store its bytes as they are"
            )),
            _ => Ok(Self::raw(path, file, len)),
        }
    }

    fn raw(path: &Path, file: File, len: u64) -> VirtualDisk {
        VirtualDisk {
            path: path.to_path_buf(),
            format: DiskFormat::Raw,
            capacity: len,
            adapter_type: None,
            extents: vec![Extent {
                start: 0,
                len,
                path: path.to_path_buf(),
                data: ExtentData::Flat { file, offset: 0 },
            }],
        }
    }

    fn from_sparse(path: &Path) -> Result<VirtualDisk> {
        let (extent, embedded) = SparseExtent::open(path)?;
        let capacity = extent.capacity();
        let mut format = DiskFormat::MonolithicSparse;
        let mut adapter_type = None;
        if let Some(bytes) = embedded {
            let d = Descriptor::read(&bytes, &format!("embedded in {}", path.display()))?;
            reject_delta(path, &d)?;
            format = DiskFormat::from_create_type(&d.create_type).unwrap_or(format);
            if format == DiskFormat::StreamOptimized && !extent.is_compressed() {
                return Err(bad(
                    path,
                    "its descriptor says streamOptimized, but its header says grains are not compressed",
                ));
            }
            if extent.is_compressed() {
                // As qemu does: compressed grains make it stream-optimized.
                format = DiskFormat::StreamOptimized;
            }
            if d.capacity_sectors().checked_mul(SECTOR) != Some(capacity) {
                return Err(bad(
                    path,
                    format!(
                        "its descriptor gives {} sectors, but its header {}",
                        d.capacity_sectors(),
                        capacity / SECTOR
                    ),
                ));
            }
            adapter_type = d.adapter_type;
        }
        Ok(VirtualDisk {
            path: path.to_path_buf(),
            format,
            capacity,
            adapter_type,
            extents: vec![Extent {
                start: 0,
                len: capacity,
                path: path.to_path_buf(),
                data: ExtentData::Sparse(extent),
            }],
        })
    }

    fn from_descriptor_file(path: &Path, file: &File, len: u64) -> Result<VirtualDisk> {
        let too_large = || bad(path, format!("descriptor file of {len} bytes is too large"));
        if len > descriptor::MAX_DESCRIPTOR_LEN {
            return Err(too_large());
        }
        let mut bytes = vec![0u8; usize::try_from(len).map_err(|_| too_large())?];
        file.read_exact_at(&mut bytes, 0).at("reading", path)?;
        let d = Descriptor::read(&bytes, &path.display().to_string())?;
        Self::from_descriptor(path, &d)
    }

    fn from_descriptor(path: &Path, d: &Descriptor) -> Result<VirtualDisk> {
        reject_delta(path, d)?;
        let format = DiskFormat::from_create_type(&d.create_type)
            .ok_or_else(|| unsupported_create_type(path, &d.create_type))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut extents = Vec::new();
        let mut start = 0u64;
        for line in &d.extents {
            let len = line
                .sectors
                .checked_mul(SECTOR)
                .ok_or_else(|| bad(path, "extent size overflows"))?;
            let file_path = extent_path(dir, &line.file, d.encoding);
            let data = match &line.kind {
                ExtentKind::Zero => ExtentData::Zero,
                ExtentKind::Unsupported(kind) => return Err(unsupported_extent(path, kind)),
                ExtentKind::Flat { offset } => {
                    let file = open_extent(path, &file_path)?;
                    flat_extent(path, &file_path, file, *offset, len)?
                }
                ExtentKind::Sparse => {
                    open_extent(path, &file_path)?;
                    let (extent, _) = SparseExtent::open(&file_path)?;
                    if extent.capacity() != len {
                        return Err(bad(
                            &file_path,
                            format!(
                                "sparse extent holds {} bytes, but the descriptor {} says {len}",
                                extent.capacity(),
                                path.display()
                            ),
                        ));
                    }
                    ExtentData::Sparse(extent)
                }
            };
            extents.push(Extent {
                start,
                len,
                path: file_path,
                data,
            });
            start = start
                .checked_add(len)
                .ok_or_else(|| bad(path, "capacity overflows"))?;
        }
        Ok(VirtualDisk {
            path: path.to_path_buf(),
            format,
            capacity: start,
            adapter_type: d.adapter_type.clone(),
            extents,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The files holding the disk's data (for a single-file format, the
    /// image itself).
    pub fn data_files(&self) -> impl Iterator<Item = &Path> {
        self.extents.iter().map(|e| e.path.as_path())
    }

    pub fn format(&self) -> DiskFormat {
        self.format
    }

    /// The descriptor's `ddb.adapterType` (`ide`, `lsilogic`, …), if any.
    pub fn adapter_type(&self) -> Option<&str> {
        self.adapter_type.as_deref()
    }

    /// Size of the virtual disk in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Sorted, merged byte ranges that may hold data; everything else
    /// reads as zeros.
    pub fn allocated(&self) -> Result<Vec<(u64, u64)>> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for extent in &self.extents {
            let ranges = match &extent.data {
                ExtentData::Zero => Vec::new(),
                ExtentData::Sparse(s) => s.allocated()?,
                ExtentData::Flat { file, offset } => {
                    data_ranges(file, *offset, extent.len).at("finding data in", &extent.path)?
                }
            };
            for (a, b) in ranges {
                let (a, b) = (extent.start + a, extent.start + b);
                match out.last_mut() {
                    Some(last) if last.1 >= a => last.1 = last.1.max(b),
                    _ => out.push((a, b)),
                }
            }
        }
        Ok(out)
    }

    /// Fills `buf` with the disk's bytes from `offset`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > self.capacity)
        {
            return Err(Error::InvalidInput(format!(
                "read past the end of disk {}",
                self.path.display()
            )));
        }
        let mut done = 0usize;
        for extent in &self.extents {
            if done == buf.len() {
                break;
            }
            let pos = offset + done as u64;
            if pos >= extent.start + extent.len || pos < extent.start {
                continue;
            }
            let within = pos - extent.start;
            let take = min_len(extent.len - within, buf.len() - done);
            let out = &mut buf[done..done + take];
            match &extent.data {
                ExtentData::Zero => out.fill(0),
                ExtentData::Sparse(s) => s.read_at(within, out)?,
                ExtentData::Flat { file, offset } => file
                    .read_exact_at(out, offset + within)
                    .at("reading", &extent.path)?,
            }
            done += take;
        }
        Ok(())
    }
}

/// Size in bytes of a file or block device (whose metadata says 0).
pub fn byte_len(file: &File, path: &Path) -> Result<u64> {
    let meta = file.metadata().at("reading metadata of", path)?;
    if meta.file_type().is_block_device() {
        // Reads use explicit offsets, so moving the file position is harmless.
        let mut handle = file;
        return handle
            .seek(SeekFrom::End(0))
            .at("finding the size of device", path);
    }
    Ok(meta.len())
}

/// The smaller of `n` (a size or offset in a disk) and `len` (one in
/// memory), as a `usize`, without truncating. The same as
/// `codec::min_len`; this layer keeps to std and the error types.
fn min_len(n: u64, len: usize) -> usize {
    usize::try_from(n).map_or(len, |n| n.min(len))
}

/// Where an extent named in a descriptor lies: by its decoded name, or,
/// for a windows-1252 descriptor, by the bytes that name had there (as
/// qemu, which uses the bytes as they are).
fn extent_path(dir: &Path, name: &str, encoding: TextEncoding) -> PathBuf {
    let path = dir.join(name);
    if encoding == TextEncoding::Windows1252 && std::fs::symlink_metadata(&path).is_err() {
        if let Some(bytes) = descriptor::encode_1252(name) {
            let legacy = dir.join(std::ffi::OsStr::from_bytes(&bytes));
            if std::fs::symlink_metadata(&legacy).is_ok() {
                return legacy;
            }
        }
    }
    path
}

fn open_extent(descriptor: &Path, extent: &Path) -> Result<File> {
    File::open(extent).map_err(|e| {
        Error::InvalidInput(format!(
            "VMDK descriptor {} names extent {}, which cannot be opened: {e}",
            descriptor.display(),
            extent.display()
        ))
    })
}

fn flat_extent(
    descriptor: &Path,
    path: &Path,
    file: File,
    offset: u64,
    len: u64,
) -> Result<ExtentData> {
    let have = byte_len(&file, path)?;
    let end = offset
        .checked_mul(SECTOR)
        .and_then(|start| start.checked_add(len).map(|end| (start, end)));
    match end {
        Some((start, end)) if end <= have => Ok(ExtentData::Flat {
            file,
            offset: start,
        }),
        Some((_, end)) => Err(bad(
            path,
            format!(
                "flat extent is {have} bytes, but the descriptor {} needs {end}",
                descriptor.display()
            ),
        )),
        None => Err(bad(
            path,
            format!(
                "the descriptor {} gives a flat extent offset of {offset} sectors, beyond any file",
                descriptor.display()
            ),
        )),
    }
}

fn unsupported_create_type(path: &Path, create_type: &str) -> Error {
    let why = match create_type {
        "vmfsSparse" | "seSparse" => "a snapshot delta; consolidate the snapshot or back up the base disk",
        "fullDevice" | "partitionedDevice" | "vmfsRaw" | "vmfsRDM" | "vmfsRawDeviceMap"
        | "vmfsPassthroughRawDeviceMap" => {
            "a physical disk or raw device mapping; back up the device itself with `strata backup image DEVICE`"
        }
        _ => "not a disk type Strata reads",
    };
    Error::InvalidInput(format!(
        "{}: createType {create_type:?} is {why}",
        path.display()
    ))
}

fn unsupported_extent(path: &Path, kind: &str) -> Error {
    let why = match kind {
        "SESPARSE" | "VMFSSPARSE" => {
            "a snapshot delta; consolidate the snapshot or back up the base disk"
        }
        _ => "not an extent type Strata reads",
    };
    Error::InvalidInput(format!("{}: extent type {kind} is {why}", path.display()))
}

fn reject_delta(path: &Path, d: &Descriptor) -> Result<()> {
    match &d.parent_hint {
        Some(parent) => Err(Error::InvalidInput(format!(
            "{} is a snapshot delta of {parent}; consolidate the snapshot or back up the base disk",
            path.display()
        ))),
        None => Ok(()),
    }
}

/// Data ranges of `[offset, offset + len)` in a flat file, relative to
/// `offset`, found with SEEK_DATA/SEEK_HOLE (whole range if unsupported).
fn data_ranges(file: &File, offset: u64, len: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let end = offset + len;
    let mut out = Vec::new();
    let mut pos = offset;
    while pos < end {
        // SAFETY: lseek on an open descriptor has no memory-safety preconditions.
        let start = unsafe { libc::lseek(fd, pos as i64, libc::SEEK_DATA) };
        if start < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENXIO) => Ok(out),
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(vec![(0, len)]),
                _ => Err(e),
            };
        }
        let start = start as u64;
        if start >= end {
            break;
        }
        // SAFETY: as above.
        let stop = unsafe { libc::lseek(fd, start as i64, libc::SEEK_HOLE) };
        if stop < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stop = (stop as u64).min(end);
        out.push((start - offset, stop - offset));
        pos = stop;
    }
    Ok(out)
}
