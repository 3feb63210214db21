//! The stored description of a backed-up VM: its `.vmx` verbatim, a
//! summary, and for each disk its slot, capacity and disk map. It is the
//! root object of a VM restore point and a metadata chunk, so it stays
//! warm and is shared when nothing changed.

use crate::codec::{DecodeError, Decoder, Encoder};
use crate::disk_map::PageRef;
use crate::error::{Error, Result};
use crate::format::{
    VM_DESCRIPTION_MAGIC, VM_DESCRIPTION_VERSION, VM_DESCRIPTION_VERSION_1,
    VM_DESCRIPTION_VERSION_3,
};
use crate::id::ChunkId;
use crate::disk_format::DiskFormat;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskRecord {
    /// Controller slot (`scsi0:0`), or `image` for `backup image`.
    pub slot: String,
    /// File name as the `.vmx` gives it.
    pub file_name: String,
    pub source_format: DiskFormat,
    /// The source descriptor's `ddb.adapterType` (`ide`, `lsilogic`, …),
    /// written into restored and mounted descriptors.
    pub adapter_type: String,
    /// Mode and owner of the source disk file (the descriptor, for
    /// multi-file formats); `None` in version 1 records.
    pub owner: Option<FileOwner>,
    pub capacity: u64,
    pub chunk_size: u32,
    pub pages: Vec<PageRef>,
    /// The QEMU dirty bitmap that began recording the disk's writes when
    /// this restore point's data was taken (`--next-bitmap`): only an
    /// incremental reading that bitmap may use this restore point as its
    /// parent. `None` before version 3 and for disks read otherwise.
    pub tracking_bitmap: Option<String>,
}

/// Permission bits and owner of a VM file as backed up, which the mount
/// shows and enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileOwner {
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl FileOwner {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileOwner {
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
        }
    }

    /// What a disk made of several files may show: the permission bits
    /// all of them allow, and the owner of the file holding the data.
    pub fn narrowed_by(self, data_file: FileOwner) -> FileOwner {
        FileOwner {
            mode: self.mode & data_file.mode,
            uid: data_file.uid,
            gid: data_file.gid,
        }
    }

    fn encode(owner: Option<&FileOwner>, e: &mut Encoder) {
        match owner {
            None => {
                e.u8(0);
            }
            Some(o) => {
                e.u8(1).u32(o.mode).u32(o.uid).u32(o.gid);
            }
        }
    }

    fn decode(d: &mut Decoder) -> std::result::Result<Option<Self>, DecodeError> {
        match d.u8()? {
            0 => Ok(None),
            1 => {
                let mode = d.u32()?;
                if mode > 0o7777 {
                    return Err(d.error(format!("file mode {mode:o} has bits beyond 7777")));
                }
                Ok(Some(FileOwner {
                    mode,
                    uid: d.u32()?,
                    gid: d.u32()?,
                }))
            }
            other => Err(d.error(format!("bad owner flag {other}"))),
        }
    }
}

/// The adapter type of a disk whose descriptor gives none, or of a
/// version 1 record (which did not keep it): from its controller slot.
pub fn adapter_for_slot(slot: &str) -> &'static str {
    if slot.starts_with("ide") {
        "ide"
    } else {
        "lsilogic"
    }
}

impl DiskRecord {
    pub fn chunk_count(&self) -> u64 {
        self.capacity.div_ceil(self.chunk_size as u64)
    }

    /// Bytes of the disk held in data chunks (holes excluded).
    pub fn allocated_bytes(&self) -> u64 {
        let chunks: u64 = self.pages.iter().map(|p| p.data_chunks as u64).sum();
        (chunks * self.chunk_size as u64).min(self.capacity)
    }

    /// Length of chunk `index` (the last one may be short).
    pub fn chunk_len(&self, index: u64) -> u64 {
        let start = index * self.chunk_size as u64;
        (self.capacity - start).min(self.chunk_size as u64)
    }

    /// The disk's file name without directory and disk-image extension
    /// (`.vmdk`, `.raw`, `.img`).
    pub fn stem(&self) -> &str {
        let base = self.file_name.rsplit('/').next().unwrap_or(&self.file_name);
        [".vmdk", ".raw", ".img"]
            .iter()
            .find_map(|ext| base.strip_suffix(ext))
            .unwrap_or(base)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDescription {
    pub name: String,
    pub cpus: u32,
    pub memory_mb: u64,
    pub guest_os: String,
    /// The `.vmx` as backed up; empty for a single image.
    pub vmx: Vec<u8>,
    /// Mode and owner of the `.vmx`; `None` for an image or a version 1
    /// record.
    pub vmx_owner: Option<FileOwner>,
    pub disks: Vec<DiskRecord>,
}

fn format_code(f: DiskFormat) -> u8 {
    match f {
        DiskFormat::Raw => 0,
        DiskFormat::MonolithicSparse => 1,
        DiskFormat::TwoGbMaxExtentSparse => 2,
        DiskFormat::MonolithicFlat => 3,
        DiskFormat::TwoGbMaxExtentFlat => 4,
        DiskFormat::StreamOptimized => 5,
        DiskFormat::Vmfs => 6,
    }
}

fn format_from(code: u8) -> Option<DiskFormat> {
    Some(match code {
        0 => DiskFormat::Raw,
        1 => DiskFormat::MonolithicSparse,
        2 => DiskFormat::TwoGbMaxExtentSparse,
        3 => DiskFormat::MonolithicFlat,
        4 => DiskFormat::TwoGbMaxExtentFlat,
        5 => DiskFormat::StreamOptimized,
        6 => DiskFormat::Vmfs,
        _ => return None,
    })
}

impl VmDescription {
    /// Disk `index`'s name as the mount and guest paths show it: its
    /// file's stem, with its slot when another disk of the VM has the
    /// same stem.
    pub fn disk_name(&self, index: usize) -> String {
        let disk = &self.disks[index];
        let stem = disk.stem();
        let clash = self.disks.iter().enumerate().any(|(i, d)| i != index && d.stem() == stem);
        if clash {
            format!("{stem}-{}", disk.slot.replace(':', "-"))
        } else {
            stem.to_string()
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Version 3 only where it says more: descriptions without tracking
        // bitmaps keep their version 2 bytes (and ids).
        let tracked = self.disks.iter().any(|d| d.tracking_bitmap.is_some());
        let version = if tracked { VM_DESCRIPTION_VERSION_3 } else { VM_DESCRIPTION_VERSION };
        let mut e = Encoder::new();
        e.raw(&VM_DESCRIPTION_MAGIC)
            .u16(version)
            .bytes(self.name.as_bytes())
            .u32(self.cpus)
            .u64(self.memory_mb)
            .bytes(self.guest_os.as_bytes())
            .bytes(&self.vmx);
        FileOwner::encode(self.vmx_owner.as_ref(), &mut e);
        e.count(self.disks.len());
        for d in &self.disks {
            e.bytes(d.slot.as_bytes())
                .bytes(d.file_name.as_bytes())
                .u8(format_code(d.source_format))
                .bytes(d.adapter_type.as_bytes());
            FileOwner::encode(d.owner.as_ref(), &mut e);
            e.u64(d.capacity).u32(d.chunk_size).count(d.pages.len());
            for p in &d.pages {
                e.raw(p.id.as_bytes()).u32(p.data_chunks);
            }
            if tracked {
                match &d.tracking_bitmap {
                    None => {
                        e.u8(0);
                    }
                    Some(name) => {
                        e.u8(1).bytes(name.as_bytes());
                    }
                }
            }
        }
        e.into_bytes()
    }

    pub fn decode(id: &ChunkId, bytes: &[u8]) -> Result<Self> {
        let object = || format!("VM description {id}");
        let mut d = Decoder::new(bytes, "VM description");
        let version = (|| {
            d.expect_magic(&VM_DESCRIPTION_MAGIC)?;
            d.u16()
        })()
        .map_err(|e| Error::decode(object(), e))?;
        if ![VM_DESCRIPTION_VERSION_1, VM_DESCRIPTION_VERSION, VM_DESCRIPTION_VERSION_3].contains(&version) {
            return Err(Error::UnsupportedVersion {
                what: object(),
                found: version as u64,
                supported: VM_DESCRIPTION_VERSION_3 as u64,
            });
        }
        let description =
            Self::decode_body(&mut d, version).map_err(|e| Error::decode(object(), e))?;
        d.finish().map_err(|e| Error::decode(object(), e))?;
        Ok(description)
    }

    fn decode_body(d: &mut Decoder, version: u16) -> std::result::Result<Self, DecodeError> {
        let text = |d: &mut Decoder| -> std::result::Result<String, DecodeError> {
            let raw = d.bytes()?;
            String::from_utf8(raw.to_vec()).map_err(|_| d.error("text is not UTF-8"))
        };
        let name = text(d)?;
        let cpus = d.u32()?;
        let memory_mb = d.u64()?;
        let guest_os = text(d)?;
        let vmx = d.bytes()?.to_vec();
        let vmx_owner = if version == VM_DESCRIPTION_VERSION_1 {
            None
        } else {
            FileOwner::decode(d)?
        };
        let n = d.count(30)?;
        let mut disks = Vec::with_capacity(n);
        for _ in 0..n {
            let slot = text(d)?;
            let file_name = text(d)?;
            let code = d.u8()?;
            let source_format =
                format_from(code).ok_or_else(|| d.error(format!("unknown disk format {code}")))?;
            let (adapter_type, owner) = if version == VM_DESCRIPTION_VERSION_1 {
                (adapter_for_slot(&slot).to_string(), None)
            } else {
                (text(d)?, FileOwner::decode(d)?)
            };
            let capacity = d.u64()?;
            let chunk_size = d.u32()?;
            if chunk_size == 0 {
                return Err(d.error("chunk size 0"));
            }
            let pages_n = d.count(36)?;
            let expected = capacity
                .div_ceil(chunk_size as u64)
                .div_ceil(crate::disk_map::PAGE_ENTRIES as u64);
            if pages_n as u64 != expected {
                return Err(d.error(format!(
                    "{pages_n} map pages for a disk that needs {expected}"
                )));
            }
            let mut pages = Vec::with_capacity(pages_n);
            for _ in 0..pages_n {
                pages.push(PageRef {
                    id: ChunkId(d.array()?),
                    data_chunks: d.u32()?,
                });
            }
            let tracking_bitmap = if version == VM_DESCRIPTION_VERSION_3 {
                match d.u8()? {
                    0 => None,
                    1 => Some(text(d)?),
                    other => return Err(d.error(format!("tracking bitmap flag {other}"))),
                }
            } else {
                None
            };
            disks.push(DiskRecord {
                slot,
                file_name,
                source_format,
                adapter_type,
                owner,
                capacity,
                chunk_size,
                pages,
                tracking_bitmap,
            });
        }
        Ok(VmDescription {
            name,
            cpus,
            memory_mb,
            guest_os,
            vmx,
            vmx_owner,
            disks,
        })
    }

    /// Finds a disk by slot (`scsi0:1`) or file name (`web01_1.vmdk` or
    /// `web01_1`).
    pub fn find_disk(&self, selector: &str) -> Option<&DiskRecord> {
        self.disks
            .iter()
            .find(|d| d.slot == selector || d.file_name == selector || d.stem() == selector)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(adapter_type: &str, owner: Option<FileOwner>) -> VmDescription {
        VmDescription {
            name: "web01".into(),
            cpus: 2,
            memory_mb: 4096,
            guest_os: "ubuntu-64".into(),
            vmx: b"displayName = \"web01\"\n".to_vec(),
            vmx_owner: owner,
            disks: vec![DiskRecord {
                slot: "scsi0:0".into(),
                file_name: "web01.vmdk".into(),
                source_format: DiskFormat::MonolithicSparse,
                adapter_type: adapter_type.into(),
                owner,
                capacity: 3 << 20,
                chunk_size: 1 << 20,
                pages: vec![PageRef {
                    id: ChunkId([9; 32]),
                    data_chunks: 2,
                }],
                tracking_bitmap: None,
            }],
        }
    }

    #[test]
    fn round_trip_and_golden() {
        let desc = sample(
            "buslogic",
            Some(FileOwner {
                mode: 0o600,
                uid: 1000,
                gid: 100,
            }),
        );
        let bytes = desc.encode();
        crate::codec::assert_golden("vm_description_v2.bin", &bytes);
        assert_eq!(
            VmDescription::decode(&ChunkId::of(&bytes), &bytes).unwrap(),
            desc
        );
        assert_eq!(desc.disks[0].allocated_bytes(), 2 << 20);
        assert!(desc.find_disk("web01").is_some() && desc.find_disk("scsi0:0").is_some());
        for len in 0..bytes.len() {
            assert!(VmDescription::decode(&ChunkId([0; 32]), &bytes[..len]).is_err());
        }
    }

    /// A disk read through a QEMU dirty bitmap records the bitmap that
    /// started with it, in version 3; without one the bytes stay version 2.
    #[test]
    fn tracking_bitmaps_round_trip_in_version_3() {
        let mut desc = sample("lsilogic", None);
        assert_eq!(u16::from_le_bytes([desc.encode()[4], desc.encode()[5]]), VM_DESCRIPTION_VERSION);
        desc.disks[0].tracking_bitmap = Some("strata-7".into());
        let bytes = desc.encode();
        crate::codec::assert_golden("vm_description_v3.bin", &bytes);
        assert_eq!(VmDescription::decode(&ChunkId::of(&bytes), &bytes).unwrap(), desc);
        for len in 0..bytes.len() {
            assert!(VmDescription::decode(&ChunkId([0; 32]), &bytes[..len]).is_err());
        }
    }

    /// Version 1 records, written before the adapter type was kept, still
    /// read; their adapter comes from the slot.
    #[test]
    fn version_1_records_still_read() {
        let bytes = std::fs::read(crate::codec::golden_path("vm_description_v1.bin")).unwrap();
        let desc = VmDescription::decode(&ChunkId::of(&bytes), &bytes).unwrap();
        assert_eq!(desc, sample("lsilogic", None));
        assert_eq!(adapter_for_slot("ide0:1"), "ide");
    }
}
