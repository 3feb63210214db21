//! What a volume holds, by the signatures file systems and containers
//! write at fixed places: enough to choose a reader, or to say in words
//! why a volume shows nothing (encrypted, swap, unknown).

use crate::source::{read_vec, ByteSource};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    Ext,
    Xfs,
    Ntfs,
    Fat,
    Exfat,
    /// An LVM2 physical volume: its logical volumes are volumes too.
    LvmPhysicalVolume,
    Luks,
    BitLocker,
    Swap,
    Unknown,
}

impl Content {
    pub fn name(self) -> &'static str {
        match self {
            Content::Ext => "ext2/3/4",
            Content::Xfs => "xfs",
            Content::Ntfs => "ntfs",
            Content::Fat => "fat",
            Content::Exfat => "exfat",
            Content::LvmPhysicalVolume => "LVM2 physical volume",
            Content::Luks => "LUKS (encrypted)",
            Content::BitLocker => "BitLocker (encrypted)",
            Content::Swap => "swap",
            Content::Unknown => "unknown",
        }
    }
}

/// The content of `device` (reads its first 64 KiB at most).
pub fn probe(device: &dyn ByteSource) -> std::io::Result<Content> {
    let len = device.len().min(64 << 10) as usize;
    if len < 1024 {
        return Ok(Content::Unknown);
    }
    let head = read_vec(device, 0, len)?;
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    Ok(if at(0, b"LUKS\xba\xbe") {
        Content::Luks
    } else if at(3, b"-FVE-FS-") {
        Content::BitLocker
    } else if at(0, b"XFSB") {
        Content::Xfs
    } else if at(3, b"NTFS    ") {
        Content::Ntfs
    } else if at(3, b"EXFAT   ") {
        Content::Exfat
    } else if at(0x438, &[0x53, 0xEF]) {
        Content::Ext
    } else if (0..4).any(|s| at(s * 512, b"LABELONE")) {
        Content::LvmPhysicalVolume
    } else if len >= 4096 && (at(4086, b"SWAPSPACE2") || at(4086, b"SWAP-SPACE")) {
        Content::Swap
    } else if at(510, &[0x55, 0xAA]) && (at(54, b"FAT") || at(82, b"FAT32")) {
        Content::Fat
    } else {
        Content::Unknown
    })
}
