//! Virtual disks read natively: raw images and VMDKs (monolithicSparse,
//! twoGbMaxExtentSparse, monolithicFlat, twoGbMaxExtentFlat, vmfs flat,
//! streamOptimized), as one address space of extents.
//!
//! A [`VirtualDisk`] answers two questions: which byte ranges hold data
//! (so holes are never read), and what the bytes at an offset are.

pub mod descriptor;
pub mod map;
pub mod sparse;
pub mod vmdk_writer;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use descriptor::{Descriptor, ExtentKind};
use sparse::{SparseExtent, SECTOR, SPARSE_MAGIC};

use crate::error::{Error, IoContext, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum DiskFormat {
    Raw,
    MonolithicSparse,
    TwoGbMaxExtentSparse,
    MonolithicFlat,
    TwoGbMaxExtentFlat,
    StreamOptimized,
    Vmfs,
}

impl DiskFormat {
    fn from_create_type(create_type: &str) -> Option<Self> {
        Some(match create_type {
            "monolithicSparse" => DiskFormat::MonolithicSparse,
            "twoGbMaxExtentSparse" => DiskFormat::TwoGbMaxExtentSparse,
            "monolithicFlat" => DiskFormat::MonolithicFlat,
            "twoGbMaxExtentFlat" => DiskFormat::TwoGbMaxExtentFlat,
            "streamOptimized" => DiskFormat::StreamOptimized,
            "vmfs" => DiskFormat::Vmfs,
            _ => return None,
        })
    }
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
    extents: Vec<Extent>,
}

fn bad(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::corrupt(format!("disk image {}", path.display()), what)
}

impl VirtualDisk {
    pub fn open(path: &Path) -> Result<VirtualDisk> {
        let file = File::open(path).at("opening disk", path)?;
        let len = file.metadata().at("reading metadata of", path)?.len();
        let mut head = [0u8; 512];
        let got = file.read_at(&mut head, 0).at("reading", path)?;
        if got >= 4 && head[..4] == SPARSE_MAGIC {
            let (extent, embedded) = SparseExtent::open(path)?;
            let format = match &embedded {
                Some(text) => {
                    let d = Descriptor::parse(text, &path.display().to_string())?;
                    reject_delta(path, &d)?;
                    DiskFormat::from_create_type(&d.create_type)
                        .unwrap_or(DiskFormat::MonolithicSparse)
                }
                None => DiskFormat::MonolithicSparse,
            };
            let capacity = extent.capacity();
            return Ok(VirtualDisk {
                path: path.to_path_buf(),
                format,
                capacity,
                extents: vec![Extent {
                    start: 0,
                    len: capacity,
                    path: path.to_path_buf(),
                    data: ExtentData::Sparse(extent),
                }],
            });
        }
        if got >= 4 && &head[..4] == b"COWD" {
            return Err(bad(path, "ESX COWD sparse extents are not supported"));
        }
        let text_head = String::from_utf8_lossy(&head[..got]);
        if text_head.starts_with("# Disk DescriptorFile") || text_head.contains("createType=") {
            if len > descriptor::MAX_DESCRIPTOR_LEN {
                return Err(bad(
                    path,
                    format!("descriptor file of {len} bytes is too large"),
                ));
            }
            let text = std::fs::read_to_string(path)
                .map_err(|e| bad(path, format!("descriptor is not text: {e}")))?;
            return Self::from_descriptor(
                path,
                &Descriptor::parse(&text, &path.display().to_string())?,
            );
        }
        Ok(VirtualDisk {
            path: path.to_path_buf(),
            format: DiskFormat::Raw,
            capacity: len,
            extents: vec![Extent {
                start: 0,
                len,
                path: path.to_path_buf(),
                data: ExtentData::Flat { file, offset: 0 },
            }],
        })
    }

    fn from_descriptor(path: &Path, d: &Descriptor) -> Result<VirtualDisk> {
        reject_delta(path, d)?;
        let format = DiskFormat::from_create_type(&d.create_type).ok_or_else(|| {
            bad(
                path,
                format!("createType {:?} is not supported", d.create_type),
            )
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut extents = Vec::new();
        let mut start = 0u64;
        for line in &d.extents {
            let len = line
                .sectors
                .checked_mul(SECTOR)
                .ok_or_else(|| bad(path, "extent size overflows"))?;
            let file_path = dir.join(&line.file);
            let data = match line.kind {
                ExtentKind::Zero => ExtentData::Zero,
                ExtentKind::Flat { offset } => {
                    let file = File::open(&file_path).at("opening extent", &file_path)?;
                    let have = file.metadata().at("reading metadata of", &file_path)?.len();
                    let offset = offset
                        .checked_mul(SECTOR)
                        .ok_or_else(|| bad(path, "extent offset overflows"))?;
                    if offset.checked_add(len).is_none_or(|end| end > have) {
                        return Err(bad(
                            &file_path,
                            format!(
                                "flat extent is {have} bytes, but the descriptor {} needs {}",
                                path.display(),
                                offset + len
                            ),
                        ));
                    }
                    ExtentData::Flat { file, offset }
                }
                ExtentKind::Sparse => {
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
            extents,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> DiskFormat {
        self.format
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
            let take = ((extent.len - within) as usize).min(buf.len() - done);
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
