//! NTFS (Windows guests), read-only, through the `ntfs` crate (0.4, MIT
//! or Apache-2.0, by Colin Finck of ReactOS: NTFS 3.x as Windows 2000 to
//! 11 write it, with attribute lists, sparse runs and B-tree indexes). It
//! was tried on images from `mkntfs` filled through `ntfs-3g`, and under
//! byte-flip runs (`tests/ntfs.rs`).
//!
//! What the crate leaves to its caller, done here:
//! - It returns compressed (LZNT1) and encrypted data as the raw bytes on
//!   disk, with no error. Such files are listed, but reading them is an
//!   error naming the reason: never wrong bytes.
//! - A reparse point's data is not in the file (a deduplicated file, a
//!   cloud placeholder): reading one is an error too, except symbolic
//!   links and junctions, which are shown as symlinks to their target.
//! - It follows B-tree subnodes wherever damaged metadata points: every
//!   operation reads through a [`Cursor`] with a byte budget, so a loop
//!   ends in an error, and it is called under `catch_unwind`, so a slice
//!   bound it did not check on a hostile record is an error, not a crash
//!   of the mount.
//!
//! NTFS keeps Windows security descriptors, not owners and modes: files
//! show mode 0644 (0444 when read-only), directories 0755, owned by root,
//! as FAT's do. Nodes are MFT record numbers, so a file's hard links
//! share one. Names are UTF-16 and may hold unpaired surrogates; those
//! are shown with U+FFFD. DOS 8.3 aliases, alternate data streams and the
//! system files (records below 16: `$MFT`, `$Extend`, …) are not shown.

use std::io::SeekFrom;
use std::panic::{catch_unwind, AssertUnwindSafe};

use ntfs::structured_values::{NtfsFileAttributeFlags, NtfsFileName, NtfsFileNamespace, NtfsStandardInformation};
use ntfs::{NtfsAttributeFlags, NtfsAttributeType, NtfsFile, NtfsReadSeek};

use crate::bytes::{le16, le32, le64};
use crate::error::{Error, Result};
use crate::fs::{DirEntry, FileKind, GuestFs, NodeId, Stat, Time};
use crate::probe::Content;
use crate::source::{Cursor, Window};

const ROOT: u64 = 5;
/// Records below this one are the file system's own (`$MFT` … `$Extend`
/// and reserved ones).
const FIRST_USER_RECORD: u64 = 16;
/// Most bytes one listing reads (a directory of a million entries has an
/// index of about 100 MiB), and most one stat, link or attribute read
/// reads (a record, its attribute list, and their runs).
const DIR_BUDGET: u64 = 1 << 30;
const RECORD_BUDGET: u64 = 64 << 20;
/// Most entries of one directory.
const MAX_ENTRIES: usize = 1 << 22;
/// Sizes of an Interix special file's data: its magic, and at most a
/// 4,096-unit target after it.
const INTERIX_HEADER: u64 = 8;
const INTERIX_MAX: u64 = 8 + 8192;
const REPARSE_SYMLINK: u32 = 0xA000_000C;
const REPARSE_MOUNT_POINT: u32 = 0xA000_0003;
/// 100-nanosecond intervals from 1601 to 1970.
const EPOCH_DIFFERENCE: u64 = 116_444_736_000_000_000;

pub struct Ntfs {
    device: Window,
    name: String,
    fs: ntfs::Ntfs,
    label: Option<String>,
}

/// What one MFT record says, as far as this reader uses it.
struct Record {
    stat: Stat,
    /// Why its data cannot be read, if it cannot.
    unreadable: Option<String>,
    /// A symlink's or junction's target.
    target: Option<Vec<u8>>,
}

impl Ntfs {
    pub fn open(device: Window, name: &str) -> Result<Ntfs> {
        let what = format!("the NTFS volume {name}");
        let mut cursor = Cursor::new(device.clone(), RECORD_BUDGET);
        let (fs, label) = guarded(&what, || {
            let mut fs = ntfs::Ntfs::new(&mut cursor)?;
            // Case-insensitive names need it; reading it checks it too.
            fs.read_upcase_table(&mut cursor)?;
            let label = match fs.volume_name(&mut cursor) {
                Some(label) => Some(label?.name().to_string_lossy()).filter(|l| !l.is_empty()),
                None => None,
            };
            Ok((fs, label))
        })?;
        let ntfs = Ntfs {
            device,
            name: name.to_string(),
            fs,
            label,
        };
        // A volume whose root cannot be read shows nothing: say so now.
        ntfs.stat(ROOT as NodeId)?;
        Ok(ntfs)
    }

    fn what(&self, record: u64) -> String {
        format!("record {record} of the NTFS volume {}", self.name)
    }

    fn cursor(&self, budget: u64) -> Cursor {
        Cursor::new(self.device.clone(), budget)
    }

    fn check_node(&self, node: NodeId) -> Result<u64> {
        if node == ROOT || node >= FIRST_USER_RECORD {
            Ok(node)
        } else {
            Err(Error::NotFound(self.what(node)))
        }
    }

    fn record(&self, node: NodeId) -> Result<Record> {
        let number = self.check_node(node)?;
        let mut c = self.cursor(RECORD_BUDGET);
        guarded(&self.what(number), || {
            let file = self.fs.file(&mut c, number)?;
            read_record(&file, &mut c)
        })
    }
}

/// What the MFT record of `file` says, its attributes read once.
fn read_record(file: &NtfsFile<'_>, c: &mut Cursor) -> ntfs::Result<Record> {
    let info = file.info()?;
    let system = info.file_attributes().contains(NtfsFileAttributeFlags::SYSTEM);
    let mut interix = None;
    let mut names = 0u32;
    let mut data: Option<(u64, NtfsAttributeFlags)> = None;
    let mut reparse: Option<Vec<u8>> = None;
    let mut attributes = file.attributes();
    while let Some(item) = attributes.next(c) {
        let item = item?;
        let attribute = item.to_attribute()?;
        match attribute.ty()? {
            NtfsAttributeType::FileName => {
                let name = attribute.structured_value::<_, NtfsFileName>(c)?;
                if name.namespace() != NtfsFileNamespace::Dos {
                    names += 1;
                }
            }
            NtfsAttributeType::Data if attribute.name()?.is_empty() && data.is_none() => {
                let len = attribute.value_length();
                data = Some((len, attribute.flags()));
                if system && (INTERIX_HEADER..=INTERIX_MAX).contains(&len) {
                    interix = Some(read_value(&attribute, c, len as usize)?);
                }
            }
            NtfsAttributeType::ReparsePoint if reparse.is_none() => {
                let len = attribute.value_length().min(16 << 10) as usize;
                reparse = Some(read_value(&attribute, c, len)?);
            }
            _ => {}
        }
    }
    Ok(describe_record(file, &info, names, data, reparse.as_deref(), interix.as_deref()))
}

/// A record's stat, and what keeps its data from being read.
fn describe_record(
    file: &NtfsFile<'_>,
    info: &NtfsStandardInformation,
    names: u32,
    data: Option<(u64, NtfsAttributeFlags)>,
    reparse: Option<&[u8]>,
    interix: Option<&[u8]>,
) -> Record {
    let read_only = info.file_attributes().contains(NtfsFileAttributeFlags::READ_ONLY);
    let special = interix.and_then(interix_special);
    let target = reparse.and_then(link_target).or_else(|| match &special {
        Some(Interix::Symlink(t)) => Some(t.clone()),
        _ => None,
    });
    let (mut kind, mut rdev) = (FileKind::File, 0);
    if let Some(Interix::Device(k, dev)) = special {
        (kind, rdev) = (k, dev);
    }
    let (kind, size) = match (&target, file.is_directory()) {
        (Some(t), _) => (FileKind::Symlink, t.len() as u64),
        (None, true) => (FileKind::Dir, 0),
        (None, false) if kind != FileKind::File => (kind, 0),
        (None, false) => (FileKind::File, data.map_or(0, |(len, _)| len)),
    };
    let mode = match (kind, read_only) {
        (FileKind::Dir, _) => 0o755,
        (FileKind::Symlink, _) => 0o777,
        (_, true) => 0o444,
        (_, false) => 0o644,
    };
    let unreadable = match (kind, data, reparse) {
        (FileKind::File, _, Some(r)) => Some(format!(
            "a reparse point (tag {:#010x}) whose data is kept outside the file",
            r.get(..4).map_or(0, |t| le32(t, 0))
        )),
        (FileKind::File, Some((_, flags)), None) if flags.contains(NtfsAttributeFlags::COMPRESSED) => {
            Some("NTFS-compressed (LZNT1), which this reader does not decompress".into())
        }
        (FileKind::File, Some((_, flags)), None) if flags.contains(NtfsAttributeFlags::ENCRYPTED) => {
            Some("encrypted with EFS".into())
        }
        _ => None,
    };
    Record {
        stat: Stat {
            node: file.file_record_number(),
            kind,
            size,
            mode,
            uid: 0,
            gid: 0,
            nlink: names.max(1),
            atime: time(info.access_time().nt_timestamp()),
            mtime: time(info.modification_time().nt_timestamp()),
            ctime: time(info.mft_record_modification_time().nt_timestamp()),
            rdev,
        },
        unreadable,
        target,
    }
}

/// What ntfs-3g writes for what NTFS has no type of its own (Interix's
/// way, which Windows' POSIX subsystems read too): a system file whose
/// data is a magic and a UTF-16 target or a device number.
enum Interix {
    Symlink(Vec<u8>),
    Device(FileKind, u64),
}

fn interix_special(data: &[u8]) -> Option<Interix> {
    let (magic, rest) = data.split_at_checked(8)?;
    match magic {
        b"IntxLNK\x01" if !rest.is_empty() && rest.len() % 2 == 0 => {
            let units: Vec<u16> = rest.chunks_exact(2).map(|u| u16::from_le_bytes([u[0], u[1]])).collect();
            Some(Interix::Symlink(String::from_utf16_lossy(&units).into_bytes()))
        }
        b"IntxCHR\0" | b"IntxBLK\0" if rest.len() == 16 => {
            let kind = if magic[4] == b'C' { FileKind::CharDevice } else { FileKind::BlockDevice };
            let (major, minor) = (le64(rest, 0), le64(rest, 8));
            let (major, minor) = (u32::try_from(major).ok()?, u32::try_from(minor).ok()?);
            Some(Interix::Device(kind, crate::fs::makedev(major, minor)))
        }
        _ => None,
    }
}

/// The first `len` bytes of an attribute's value.
fn read_value(attribute: &ntfs::NtfsAttribute<'_, '_>, c: &mut Cursor, len: usize) -> ntfs::Result<Vec<u8>> {
    let mut value = attribute.value(c)?;
    let mut bytes = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = value.read(c, &mut bytes[done..])?;
        if n == 0 {
            break;
        }
        done += n;
    }
    bytes.truncate(done);
    Ok(bytes)
}

/// A symbolic link's or junction's target from its reparse data, with
/// `/` for `\`; `None` for other reparse points or malformed data.
fn link_target(reparse: &[u8]) -> Option<Vec<u8>> {
    if reparse.len() < 16 {
        return None;
    }
    let buffer = match le32(reparse, 0) {
        REPARSE_SYMLINK => 20,
        REPARSE_MOUNT_POINT => 16,
        _ => return None,
    };
    // The print name, as Windows shows the link.
    let (offset, len) = (le16(reparse, 12) as usize, le16(reparse, 14) as usize);
    let bytes = reparse.get(buffer + offset..buffer + offset + len)?;
    if len == 0 || len % 2 != 0 {
        return None;
    }
    let units: Vec<u16> = bytes.chunks_exact(2).map(|u| u16::from_le_bytes([u[0], u[1]])).collect();
    let target = String::from_utf16_lossy(&units).replace('\\', "/");
    Some(target.into_bytes())
}

fn time(nt: u64) -> Time {
    let since_1970 = nt as i128 - EPOCH_DIFFERENCE as i128;
    Time {
        sec: since_1970.div_euclid(10_000_000) as i64,
        nsec: (since_1970.rem_euclid(10_000_000) * 100) as u32,
    }
}

/// Runs a call into the `ntfs` crate: its errors, and a panic on a
/// malformed structure it did not bound, become errors naming `what`.
fn guarded<T>(what: &str, call: impl FnOnce() -> ntfs::Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(call)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(ntfs::NtfsError::Io(e))) => Err(Error::io(what, e)),
        Ok(Err(e)) => Err(Error::damaged(what, e.to_string())),
        Err(_) => Err(Error::damaged(what, "a structure is malformed beyond what the NTFS reader checks")),
    }
}

/// Whether a name read from a directory can be a name here.
fn acceptable(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

impl GuestFs for Ntfs {
    fn describe(&self) -> (Content, Option<String>) {
        (Content::Ntfs, self.label.clone())
    }

    fn root(&self) -> NodeId {
        ROOT
    }

    fn stat(&self, node: NodeId) -> Result<Stat> {
        Ok(self.record(node)?.stat)
    }

    fn read_dir(&self, node: NodeId) -> Result<Vec<DirEntry>> {
        let number = self.check_node(node)?;
        let what = self.what(number);
        let mut c = self.cursor(DIR_BUDGET);
        guarded(&what, || {
            let file = self.fs.file(&mut c, number)?;
            let index = file.directory_index(&mut c)?;
            let mut entries = index.entries();
            let mut out = Vec::new();
            while let Some(entry) = entries.next(&mut c) {
                let entry = entry?;
                let Some(key) = entry.key() else { continue };
                let key = key?;
                let child = entry.file_reference().file_record_number();
                if key.namespace() == NtfsFileNamespace::Dos || child < FIRST_USER_RECORD {
                    continue;
                }
                let name = key.name().to_string_lossy();
                if !acceptable(&name) {
                    tracing::warn!(directory = %what, name = %name, "an NTFS entry with an impossible name is not shown");
                    continue;
                }
                if out.len() == MAX_ENTRIES {
                    return Err(ntfs::NtfsError::Io(std::io::Error::other(format!(
                        "more than {MAX_ENTRIES} entries: damaged"
                    ))));
                }
                out.push(DirEntry {
                    name: name.into_bytes(),
                    node: child,
                });
            }
            Ok(out)
        })
    }

    fn read_link(&self, node: NodeId) -> Result<Vec<u8>> {
        let record = self.record(node)?;
        record
            .target
            .ok_or_else(|| Error::unsupported(self.what(node), "not a symbolic link"))
    }

    fn xattrs(&self, _node: NodeId) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(Vec::new())
    }

    fn has_xattrs(&self) -> bool {
        false
    }

    fn read_at(&self, node: NodeId, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let number = self.check_node(node)?;
        let what = self.what(number);
        let mut c = self.cursor(RECORD_BUDGET.saturating_add(buf.len() as u64));
        // One parse of the record per read: what it is, then its data.
        let read = guarded(&what, || {
            let file = self.fs.file(&mut c, number)?;
            let record = read_record(&file, &mut c)?;
            if record.stat.kind != FileKind::File || record.unreadable.is_some() {
                return Ok(Err(record));
            }
            let want = (buf.len() as u64).min(record.stat.size.saturating_sub(offset)) as usize;
            if want == 0 {
                return Ok(Ok(0));
            }
            let Some(item) = file.data(&mut c, "") else {
                return Err(ntfs::NtfsError::Io(std::io::Error::other("its data attribute is missing")));
            };
            let item = item?;
            let attribute = item.to_attribute()?;
            let mut value = attribute.value(&mut c)?;
            value.seek(&mut c, SeekFrom::Start(offset))?;
            let mut done = 0;
            while done < want {
                let n = value.read(&mut c, &mut buf[done..want])?;
                if n == 0 {
                    return Err(ntfs::NtfsError::Io(std::io::Error::other(format!(
                        "its data ends at byte {} of {}",
                        offset + done as u64,
                        record.stat.size
                    ))));
                }
                done += n;
            }
            Ok(Ok(done))
        })?;
        read.map_err(|record| match record.unreadable {
            Some(why) if record.stat.kind == FileKind::File => Error::unsupported(what, why),
            _ => Error::unsupported(self.what(number), "not a regular file"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nt_times_count_from_1601_in_100_nanosecond_steps() {
        assert_eq!(time(EPOCH_DIFFERENCE), Time { sec: 0, nsec: 0 });
        assert_eq!(time(EPOCH_DIFFERENCE + 17_000_000_123), Time { sec: 1700, nsec: 12_300 });
        assert_eq!(time(0).sec, -11_644_473_600);
    }

    #[test]
    fn link_targets_come_from_the_print_name_with_forward_slashes() {
        let utf16 = |s: &str| s.encode_utf16().flat_map(u16::to_le_bytes).collect::<Vec<u8>>();
        let (sub, print) = (utf16("\\??\\C:\\x"), utf16("..\\a\\b"));
        let mut r = Vec::new();
        r.extend(REPARSE_SYMLINK.to_le_bytes());
        r.extend(0u32.to_le_bytes());
        r.extend(0u16.to_le_bytes());
        r.extend((sub.len() as u16).to_le_bytes());
        r.extend((sub.len() as u16).to_le_bytes());
        r.extend((print.len() as u16).to_le_bytes());
        r.extend(1u32.to_le_bytes());
        r.extend(&sub);
        r.extend(&print);
        assert_eq!(link_target(&r), Some(b"../a/b".to_vec()));
        r[14] = 200;
        assert_eq!(link_target(&r), None, "a print name past the data");
        assert_eq!(link_target(&0x8000_0013u32.to_le_bytes().repeat(8)), None, "deduplicated file");
    }

    #[test]
    fn impossible_names_are_refused() {
        for name in ["", ".", "..", "a/b", "a\0"] {
            assert!(!acceptable(name), "{name:?}");
        }
        assert!(acceptable("Zürich – café.txt"));
    }
}
