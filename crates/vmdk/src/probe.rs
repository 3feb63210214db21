//! What a disk image file looks like, from its first bytes, and which
//! format a backup expects of it.
//!
//! Raw images have no magic, so anything can be one; that is why a format
//! is never guessed from content alone. A name ending in `.vmdk` (or
//! `--format vmdk`) asks for a VMDK, `.img`/`.raw` names and block devices
//! (or `--format raw`) for raw data; content that contradicts what was
//! asked for is refused with what it looks like, and only an explicit
//! `--format raw` stores a recognised container's bytes as they are.

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::descriptor::{is_text, looks_like_descriptor, text_part, MAX_DESCRIPTOR_LEN};
use super::sparse::SPARSE_MAGIC;
use crate::error::{IoContext, Result};

/// The format a backup was asked to read an image as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Raw,
    Vmdk,
}

/// What an image's content looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Looks {
    Empty,
    SparseVmdk,
    CowdVmdk,
    Descriptor,
    Qcow2,
    Qed,
    Vhd,
    Vhdx,
    Vdi,
    Bzip2,
    Gzip,
    Xz,
    Zstd,
    Text,
    /// No magic Strata knows: raw data, or a format it does not know.
    Unknown,
}

impl fmt::Display for Looks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Looks::Empty => "an empty file (0 bytes)",
            Looks::SparseVmdk => "a VMDK sparse extent",
            Looks::CowdVmdk => "an ESX COWD sparse extent",
            Looks::Descriptor => "a VMDK descriptor",
            Looks::Qcow2 => "a qcow2 image",
            Looks::Qed => "a QED image",
            Looks::Vhd => "a VHD (vpc) image",
            Looks::Vhdx => "a VHDX image",
            Looks::Vdi => "a VirtualBox VDI image",
            Looks::Bzip2 => "bzip2-compressed data",
            Looks::Gzip => "gzip-compressed data",
            Looks::Xz => "xz-compressed data",
            Looks::Zstd => "zstd-compressed data",
            Looks::Text => "a text file",
            Looks::Unknown => "data without any known image magic",
        })
    }
}

impl Looks {
    pub fn is_vmdk(self) -> bool {
        matches!(self, Looks::SparseVmdk | Looks::Descriptor)
    }

    /// A format that has a magic of its own, so raw data is unlikely.
    pub fn is_recognised(self) -> bool {
        !matches!(self, Looks::Text | Looks::Unknown)
    }
}

/// Classifies an image from its first bytes (and, for a fixed VHD, its
/// last sector). `len` is the image's size in bytes.
pub fn probe(file: &File, path: &Path, len: u64) -> Result<Looks> {
    if len == 0 {
        return Ok(Looks::Empty);
    }
    let mut head = vec![0u8; len.min(4096) as usize];
    file.read_exact_at(&mut head, 0).at("reading", path)?;
    let starts = |magic: &[u8]| head.starts_with(magic);
    let looks = if starts(&SPARSE_MAGIC) {
        Looks::SparseVmdk
    } else if starts(b"COWD") {
        Looks::CowdVmdk
    } else if starts(b"QFI\xfb") {
        Looks::Qcow2
    } else if starts(b"QED\0") {
        Looks::Qed
    } else if starts(b"conectix") {
        Looks::Vhd
    } else if starts(b"vhdxfile") {
        Looks::Vhdx
    } else if head.get(64..68) == Some(&0xbeda_107f_u32.to_le_bytes()[..]) {
        Looks::Vdi
    } else if starts(b"BZh") && head.get(3).is_some_and(|d| (b'1'..=b'9').contains(d)) {
        Looks::Bzip2
    } else if starts(b"\x1f\x8b") {
        Looks::Gzip
    } else if starts(b"\xfd7zXZ\0") {
        Looks::Xz
    } else if starts(b"\x28\xb5\x2f\xfd") {
        Looks::Zstd
    } else if text_part(&head).is_some_and(is_text) {
        text_kind(file, path, len, head)?
    } else if has_vhd_footer(file, path, len)? {
        Looks::Vhd
    } else {
        Looks::Unknown
    };
    Ok(looks)
}

/// A text file is a descriptor when a descriptor line appears anywhere in
/// its first [`MAX_DESCRIPTOR_LEN`] bytes (comment headers can be long).
fn text_kind(file: &File, path: &Path, len: u64, head: Vec<u8>) -> Result<Looks> {
    let prefix = if len > head.len() as u64 {
        let mut more = vec![0u8; len.min(MAX_DESCRIPTOR_LEN) as usize];
        file.read_exact_at(&mut more, 0).at("reading", path)?;
        more
    } else {
        head
    };
    Ok(if looks_like_descriptor(&prefix) {
        Looks::Descriptor
    } else {
        Looks::Text
    })
}

/// A fixed-size VHD is raw data with a 512-byte footer at the end.
fn has_vhd_footer(file: &File, path: &Path, len: u64) -> Result<bool> {
    if len < 512 {
        return Ok(false);
    }
    let mut magic = [0u8; 8];
    file.read_exact_at(&mut magic, len - 512)
        .at("reading", path)?;
    Ok(&magic == b"conectix")
}

/// The format a name asks for: `.vmdk` a VMDK, `.img`/`.raw` raw data,
/// anything else nothing in particular.
pub fn format_for_name(path: &Path) -> Option<ImageFormat> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "vmdk" => Some(ImageFormat::Vmdk),
        "img" | "raw" => Some(ImageFormat::Raw),
        _ => None,
    }
}
