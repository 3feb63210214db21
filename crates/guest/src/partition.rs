//! Partition tables: MBR (primary partitions, and logical ones in the
//! chain of extended boot records) and GPT (the primary header, or the
//! backup at the disk's end when the primary fails its checksum). Written
//! here rather than taken from a crate: both formats are a few fixed
//! records, and every field of them is hostile input to check (a chain of
//! logical partitions that loops, entries past the disk's end, a header
//! that claims a million entries).
//!
//! A partition is numbered as Linux numbers it: an MBR's primaries by
//! their slot (1–4), its logicals from 5 in chain order, a GPT's by their
//! entry (from 1).

use crate::bytes::{le32, le64};
use crate::error::{Error, Result};
use crate::source::{read_vec, ByteSource};

/// Bytes per sector of the tables (what VMDKs and every hypervisor
/// present; GPT on a 4 KiB-sector disk is tried as well).
pub const SECTOR: u64 = 512;

/// Most logical partitions read from one MBR chain.
const MAX_LOGICAL: usize = 128;
/// Most GPT entries read (the format's usual 128, with room to spare).
const MAX_GPT_ENTRIES: u32 = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    Mbr,
    Gpt,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// `1`, `2`, … as Linux numbers it.
    pub number: u32,
    pub offset: u64,
    pub len: u64,
    /// The MBR type byte, or the GPT type GUID, as text.
    pub kind: String,
    /// A GPT partition's name.
    pub name: Option<String>,
    /// Why the partition cannot be read (it lies past the disk's end): it
    /// is still listed, empty, with this reason.
    pub problem: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub scheme: Scheme,
    pub partitions: Vec<Partition>,
}

/// The disk's partition table; `None` when it has none (a file system on
/// the whole disk, or nothing).
pub fn read(disk: &dyn ByteSource) -> Result<Option<Table>> {
    if disk.len() < SECTOR {
        return Ok(None);
    }
    let mbr = read_vec(disk, 0, SECTOR as usize).map_err(|e| Error::io("the master boot record", e))?;
    if mbr[510..512] != [0x55, 0xAA] {
        return Ok(None);
    }
    let entries = mbr_entries(&mbr);
    if entries.iter().any(|e| e.kind == 0xEE) {
        for sector in [SECTOR, 4096] {
            if let Some(table) = gpt(disk, sector)? {
                return Ok(Some(table));
            }
        }
        return Err(Error::damaged(
            "the GUID partition table",
            "the protective MBR names one, but neither its header nor its backup is valid",
        ));
    }
    // A boot sector of a FAT or NTFS file system also ends in 55 AA: its
    // "entries" are code and the BPB. A real table has only the boot
    // flags 0x00 and 0x80, and something in it.
    if entries.iter().any(|e| e.status != 0 && e.status != 0x80) || entries.iter().all(|e| e.kind == 0) {
        return Ok(None);
    }
    mbr_table(disk, &entries).map(Some)
}

#[derive(Debug, Clone, Copy)]
struct MbrEntry {
    status: u8,
    kind: u8,
    start: u32,
    sectors: u32,
}

fn mbr_entries(sector: &[u8]) -> [MbrEntry; 4] {
    std::array::from_fn(|i| {
        let e = &sector[446 + 16 * i..446 + 16 * (i + 1)];
        MbrEntry {
            status: e[0],
            kind: e[4],
            start: u32::from_le_bytes([e[8], e[9], e[10], e[11]]),
            sectors: u32::from_le_bytes([e[12], e[13], e[14], e[15]]),
        }
    })
}

fn is_extended(kind: u8) -> bool {
    matches!(kind, 0x05 | 0x0F | 0x85)
}

fn mbr_table(disk: &dyn ByteSource, entries: &[MbrEntry; 4]) -> Result<Table> {
    let mut partitions = Vec::new();
    let mut extended = None;
    for (slot, e) in entries.iter().enumerate() {
        if e.kind == 0 || e.sectors == 0 {
            continue;
        }
        if is_extended(e.kind) {
            if extended.is_none() {
                extended = Some(*e);
            }
            continue;
        }
        partitions.push(partition(disk, slot as u32 + 1, u64::from(e.start), u64::from(e.sectors), e.kind));
    }
    if let Some(ext) = extended {
        logical(disk, &ext, &mut partitions)?;
    }
    Ok(Table {
        scheme: Scheme::Mbr,
        partitions,
    })
}

/// The logical partitions of the extended partition `ext`: each EBR's
/// first entry is a partition (its start relative to the EBR), its second
/// the next EBR (relative to the extended partition's start).
fn logical(disk: &dyn ByteSource, ext: &MbrEntry, out: &mut Vec<Partition>) -> Result<()> {
    let base = u64::from(ext.start);
    let mut ebr = base;
    let mut seen = std::collections::HashSet::new();
    let mut number = 5;
    for _ in 0..MAX_LOGICAL {
        if !seen.insert(ebr) {
            return Err(Error::damaged("the extended partition", format!("its chain of logical partitions loops at sector {ebr}")));
        }
        let Some(at) = ebr.checked_mul(SECTOR).filter(|at| at + SECTOR <= disk.len()) else {
            return Err(Error::damaged(
                "the extended partition",
                format!("a logical partition's boot record at sector {ebr} lies past the disk's end"),
            ));
        };
        let sector = read_vec(disk, at, SECTOR as usize).map_err(|e| Error::io("a logical partition's boot record", e))?;
        if sector[510..512] != [0x55, 0xAA] {
            return Err(Error::damaged(
                "the extended partition",
                format!("the boot record at sector {ebr} has no 55 AA signature"),
            ));
        }
        let [this, next, ..] = mbr_entries(&sector);
        if this.kind != 0 && this.sectors != 0 {
            out.push(partition(disk, number, ebr + u64::from(this.start), u64::from(this.sectors), this.kind));
            number += 1;
        }
        if next.kind == 0 || next.sectors == 0 || !is_extended(next.kind) {
            return Ok(());
        }
        ebr = base + u64::from(next.start);
    }
    Err(Error::damaged("the extended partition", format!("more than {MAX_LOGICAL} logical partitions")))
}

fn partition(disk: &dyn ByteSource, number: u32, start: u64, sectors: u64, kind: u8) -> Partition {
    let (offset, len) = (start * SECTOR, sectors * SECTOR);
    Partition {
        number,
        offset,
        len,
        kind: format!("0x{kind:02x}"),
        name: None,
        problem: past_end(disk, offset, len),
    }
}

fn past_end(disk: &dyn ByteSource, offset: u64, len: u64) -> Option<String> {
    let end = offset.checked_add(len);
    end.is_none_or(|end| end > disk.len()).then(|| {
        format!(
            "the partition table puts it at {offset}..{} but the disk has {} bytes",
            end.map_or("beyond".to_string(), |e| e.to_string()),
            disk.len()
        )
    })
}



/// A GUID as text, in its mixed-endian form (the first three fields
/// little-endian).
fn guid(b: &[u8]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        le32(b, 0),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        b[8],
        b[9],
        b[10],
        b[11],
        b[12],
        b[13],
        b[14],
        b[15]
    )
}

/// The GPT with `sector`-byte sectors: the primary header, else the
/// backup; `None` if neither is valid.
fn gpt(disk: &dyn ByteSource, sector: u64) -> Result<Option<Table>> {
    let last = disk.len() / sector;
    if last < 2 {
        return Ok(None);
    }
    for lba in [1, last - 1] {
        if let Some(header) = gpt_header(disk, sector, lba)? {
            if let Some(table) = gpt_entries(disk, sector, &header)? {
                return Ok(Some(table));
            }
        }
    }
    Ok(None)
}

struct GptHeader {
    entries_lba: u64,
    count: u32,
    entry_size: u32,
    entries_crc: u32,
}

fn gpt_header(disk: &dyn ByteSource, sector: u64, lba: u64) -> Result<Option<GptHeader>> {
    let h = read_vec(disk, lba * sector, sector as usize).map_err(|e| Error::io("a GPT header", e))?;
    if &h[0..8] != b"EFI PART" {
        return Ok(None);
    }
    let size = le32(&h, 12) as usize;
    if !(92..=sector as usize).contains(&size) {
        return Ok(None);
    }
    let mut zeroed = h[..size].to_vec();
    zeroed[16..20].fill(0);
    if crc32fast::hash(&zeroed) != le32(&h, 16) || le64(&h, 24) != lba {
        tracing::warn!(lba, "a GPT header fails its checksum");
        return Ok(None);
    }
    let header = GptHeader {
        entries_lba: le64(&h, 72),
        count: le32(&h, 80),
        entry_size: le32(&h, 84),
        entries_crc: le32(&h, 88),
    };
    let bounded = header.count <= MAX_GPT_ENTRIES
        && (128..=4096).contains(&header.entry_size)
        && header.entry_size.is_multiple_of(8)
        && header
            .entries_lba
            .checked_mul(sector)
            .and_then(|at| at.checked_add(u64::from(header.count) * u64::from(header.entry_size)))
            .is_some_and(|end| end <= disk.len());
    Ok(bounded.then_some(header))
}

fn gpt_entries(disk: &dyn ByteSource, sector: u64, h: &GptHeader) -> Result<Option<Table>> {
    let len = h.count as usize * h.entry_size as usize;
    let bytes = read_vec(disk, h.entries_lba * sector, len).map_err(|e| Error::io("the GPT entries", e))?;
    if crc32fast::hash(&bytes) != h.entries_crc {
        tracing::warn!("the GPT entries fail their checksum");
        return Ok(None);
    }
    let mut partitions = Vec::new();
    for (i, e) in bytes.chunks_exact(h.entry_size as usize).enumerate() {
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let (first, last) = (le64(e, 32), le64(e, 40));
        let name: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&c| c != 0)
            .collect();
        let offset = first.saturating_mul(sector);
        let len = last.checked_sub(first).map_or(0, |n| (n + 1).saturating_mul(sector));
        let mut problem = past_end(disk, offset, len);
        if last < first {
            problem = Some(format!("its last sector {last} comes before its first {first}"));
        }
        partitions.push(Partition {
            number: i as u32 + 1,
            offset,
            len,
            kind: guid(&e[..16]),
            name: Some(String::from_utf16_lossy(&name)).filter(|n| !n.is_empty()),
            problem,
        });
    }
    Ok(Some(Table {
        scheme: Scheme::Gpt,
        partitions,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(sector: &mut [u8], slot: usize, status: u8, kind: u8, start: u32, sectors: u32) {
        let e = &mut sector[446 + 16 * slot..446 + 16 * (slot + 1)];
        e[0] = status;
        e[4] = kind;
        e[8..12].copy_from_slice(&start.to_le_bytes());
        e[12..16].copy_from_slice(&sectors.to_le_bytes());
    }

    fn signed(disk: &mut [u8], at: usize) {
        disk[at + 510] = 0x55;
        disk[at + 511] = 0xAA;
    }

    /// Primaries in slots 1 and 3, an extended partition in slot 2 with
    /// two logicals, one primary past the end.
    fn mbr_disk() -> Vec<u8> {
        let mut d = vec![0u8; 4096 * 512];
        entry(&mut d, 0, 0x80, 0x83, 2048, 100);
        entry(&mut d, 1, 0, 0x05, 2200, 1000);
        entry(&mut d, 2, 0, 0x83, 3500, 200);
        entry(&mut d, 3, 0, 0x07, 4000, 1000);
        signed(&mut d, 0);
        // First EBR at 2200: a logical at +1, the next EBR at +500.
        entry(&mut d[2200 * 512..], 0, 0, 0x83, 1, 100);
        entry(&mut d[2200 * 512..], 1, 0, 0x05, 500, 200);
        signed(&mut d, 2200 * 512);
        entry(&mut d[2700 * 512..], 0, 0, 0x8e, 2, 50);
        signed(&mut d, 2700 * 512);
        d
    }

    #[test]
    fn mbr_primaries_by_slot_and_logicals_from_five() {
        let table = read(&mbr_disk()).unwrap().unwrap();
        assert_eq!(table.scheme, Scheme::Mbr);
        let got: Vec<(u32, u64, u64, bool)> = table
            .partitions
            .iter()
            .map(|p| (p.number, p.offset / 512, p.len / 512, p.problem.is_some()))
            .collect();
        assert_eq!(
            got,
            [(1, 2048, 100, false), (3, 3500, 200, false), (4, 4000, 1000, true), (5, 2201, 100, false), (6, 2702, 50, false)]
        );
        assert!(table.partitions[2].problem.as_ref().unwrap().contains("past") || table.partitions[2].problem.as_ref().unwrap().contains("disk has"));
    }

    #[test]
    fn a_looping_chain_of_logicals_is_an_error() {
        let mut d = mbr_disk();
        // The second EBR points back at the first.
        entry(&mut d[2700 * 512..], 1, 0, 0x05, 0, 200);
        let err = read(&d).unwrap_err().to_string();
        assert!(err.contains("loops"), "{err}");
    }

    #[test]
    fn a_boot_sector_is_not_a_partition_table() {
        let mut d = vec![0u8; 2048 * 512];
        d[..3].copy_from_slice(&[0xEB, 0x52, 0x90]);
        d[3..11].copy_from_slice(b"NTFS    ");
        d[446..510].fill(0x33);
        signed(&mut d, 0);
        assert_eq!(read(&d).unwrap(), None);
    }

    fn gpt_disk() -> Vec<u8> {
        let sectors = 4096u64;
        let mut d = vec![0u8; (sectors * 512) as usize];
        entry(&mut d, 0, 0, 0xEE, 1, (sectors - 1) as u32);
        signed(&mut d, 0);
        let mut entries = vec![0u8; 128 * 128];
        let linux = [0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d, 0xe4];
        for (i, (first, last)) in [(34u64, 1033u64), (2048, 3999)].iter().enumerate() {
            let e = &mut entries[i * 128..(i + 1) * 128];
            e[..16].copy_from_slice(&linux);
            e[16] = i as u8 + 1;
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&last.to_le_bytes());
            for (j, c) in "root".encode_utf16().enumerate() {
                e[56 + 2 * j..58 + 2 * j].copy_from_slice(&c.to_le_bytes());
            }
        }
        for (lba, entries_lba) in [(1u64, 2u64), (sectors - 1, sectors - 33)] {
            let at = (entries_lba * 512) as usize;
            d[at..at + entries.len()].copy_from_slice(&entries);
            let mut h = vec![0u8; 92];
            h[..8].copy_from_slice(b"EFI PART");
            h[8..12].copy_from_slice(&0x10000u32.to_le_bytes());
            h[12..16].copy_from_slice(&92u32.to_le_bytes());
            h[24..32].copy_from_slice(&lba.to_le_bytes());
            h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
            h[80..84].copy_from_slice(&128u32.to_le_bytes());
            h[84..88].copy_from_slice(&128u32.to_le_bytes());
            h[88..92].copy_from_slice(&crc32fast::hash(&entries).to_le_bytes());
            let crc = crc32fast::hash(&h);
            h[16..20].copy_from_slice(&crc.to_le_bytes());
            let at = (lba * 512) as usize;
            d[at..at + 92].copy_from_slice(&h);
        }
        d
    }

    #[test]
    fn gpt_entries_by_number_with_names_and_the_backup_when_the_primary_is_damaged() {
        let d = gpt_disk();
        let table = read(&d).unwrap().unwrap();
        assert_eq!(table.scheme, Scheme::Gpt);
        assert_eq!(table.partitions.len(), 2);
        assert_eq!((table.partitions[1].number, table.partitions[1].offset), (2, 2048 * 512));
        assert_eq!(table.partitions[0].name.as_deref(), Some("root"));
        assert_eq!(table.partitions[0].kind, "0fc63daf-8483-4772-8e79-3d69d8477de4");
        let mut damaged = d.clone();
        damaged[512 + 40] ^= 0xff;
        assert_eq!(read(&damaged).unwrap(), Some(table));
        let mut both = damaged;
        let backup = both.len() - 512;
        both[backup + 40] ^= 0xff;
        assert!(read(&both).is_err());
    }

    #[test]
    fn mutated_tables_are_errors_or_tables_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(16);
        for original in [mbr_disk(), gpt_disk()] {
            for _ in 0..2000 {
                let mut d = original.clone();
                for _ in 0..rng.gen_range(1..6) {
                    // Mostly the tables: the first sectors, the EBRs, the
                    // backup GPT.
                    let at = match rng.gen_range(0..4) {
                        0 => rng.gen_range(0..34 * 512),
                        1 => rng.gen_range(2200 * 512..2201 * 512),
                        2 => rng.gen_range(2700 * 512..2701 * 512),
                        _ => rng.gen_range(d.len() - 33 * 512..d.len()),
                    };
                    d[at] = rng.gen();
                }
                if let Ok(Some(table)) = read(&d) {
                    for p in table.partitions {
                        assert!(p.problem.is_some() || p.offset + p.len <= d.len() as u64);
                    }
                }
            }
        }
    }
}
