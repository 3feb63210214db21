//! A disk as the VM mover reads it: an image file (VMDK, raw, a block
//! device) through the VMDK layer, or an NBD export.

use std::path::Path;

use super::nbd::NbdDisk;
use super::SourceDisk;
use crate::error::Result;
use crate::vmdk::{DiskFormat, VirtualDisk};
use strata_engine::vm::description::FileOwner;

/// Where a disk of a VM is read from.
pub enum DiskLocation {
    /// An image file; `format` as asked with `--format` (`None`: as its
    /// name asks, see `vmdk::probe`).
    File {
        path: std::path::PathBuf,
        format: Option<crate::vmdk::ImageFormat>,
    },
    Nbd(strata_nbd::NbdUri),
}

pub enum OpenedDisk {
    Image(VirtualDisk),
    Nbd(NbdDisk),
}

impl OpenedDisk {
    pub fn open(disk: &SourceDisk, bitmap: Option<&str>) -> Result<OpenedDisk> {
        Ok(match &disk.location {
            DiskLocation::File { path, format } => OpenedDisk::Image(VirtualDisk::open(path, *format)?),
            DiskLocation::Nbd(uri) => OpenedDisk::Nbd(NbdDisk::open(uri, bitmap)?),
        })
    }

    pub fn capacity(&self) -> u64 {
        match self {
            OpenedDisk::Image(image) => image.capacity(),
            OpenedDisk::Nbd(disk) => disk.capacity(),
        }
    }

    /// Sorted, merged byte ranges that may hold data; the rest reads as
    /// zeros.
    pub fn allocated(&self) -> Result<Vec<(u64, u64)>> {
        match self {
            OpenedDisk::Image(image) => image.allocated(),
            OpenedDisk::Nbd(disk) => Ok(disk.allocated().clone()),
        }
    }

    /// Reads `span.len()` bytes at `offset` into `buf[span]`; returns the
    /// buffer (an NBD read fills it in place as the reply arrives).
    pub fn read_into(&self, offset: u64, mut buf: Vec<u8>, span: std::ops::Range<usize>) -> Result<Vec<u8>> {
        match self {
            OpenedDisk::Image(image) => {
                image.read_at(offset, &mut buf[span])?;
                Ok(buf)
            }
            OpenedDisk::Nbd(disk) => disk.read_into(offset, buf, span),
        }
    }

    /// The format recorded for the disk: an export's bytes are raw.
    pub fn format(&self) -> DiskFormat {
        match self {
            OpenedDisk::Image(image) => image.format(),
            OpenedDisk::Nbd(_) => DiskFormat::Raw,
        }
    }

    pub fn adapter_type(&self) -> Option<&str> {
        match self {
            OpenedDisk::Image(image) => image.adapter_type(),
            OpenedDisk::Nbd(_) => None,
        }
    }

    /// The mode and owner the mount shows for a disk: a descriptor's own
    /// are narrowed by those of its extents, so a `0644` descriptor of a
    /// `0600` `-flat.vmdk` does not open the data to everyone.
    pub fn owner(&self, recorded: FileOwner) -> FileOwner {
        match self {
            OpenedDisk::Image(image) => image
                .data_files()
                .filter(|path| *path != image.path())
                .filter_map(|path: &Path| std::fs::metadata(path).ok())
                .fold(recorded, |owner, meta| owner.narrowed_by(FileOwner::of(&meta))),
            OpenedDisk::Nbd(_) => recorded,
        }
    }

    /// Threads reading at once: one per core for a local image; for an
    /// export, enough that several requests are always in flight while
    /// others' chunks are hashed and compressed.
    pub fn readers(&self) -> usize {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        match self {
            OpenedDisk::Image(_) => cores,
            OpenedDisk::Nbd(_) => cores.max(8),
        }
    }
}
