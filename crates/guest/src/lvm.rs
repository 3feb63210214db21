//! LVM2 physical volumes: the label, the metadata areas and the text
//! metadata in them, and the linear logical volumes of a disk's volume
//! groups, each as a [`Window`] over the disk (a volume extended across
//! several of the disk's physical volumes reads across them). No
//! maintained crate reads LVM2; this reader checks every field it uses
//! (the label's and the metadata's checksums, every offset and size
//! against the device, every extent against the physical volume) and
//! reads only what a linear volume needs. Layout (LVM2's
//! `lib/format_text/layout.h`):
//!
//! - one of the first four sectors holds the label: `LABELONE`, its own
//!   sector number, a CRC of the rest of the sector, the offset of the PV
//!   header (usually 32) and `LVM2 001`;
//! - the PV header: the PV's UUID, its size, then lists of (offset, size)
//!   pairs ending in zeros: data areas, then metadata areas;
//! - a metadata area starts with a 512-byte header (CRC, magic
//!   ` LVM2 x[5A%r0N*>`, version 1, its start and size, then raw locations
//!   (offset, size, CRC, flags)); the first location is the area's
//!   metadata, text that may wrap around the end of the area's ring,
//!   unless its flags mark the area ignored (not kept current);
//! - the text is LVM's configuration syntax: `name = value`, `name {
//!   … }`, values are numbers, quoted strings or `[ … ]` lists.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::bytes::{le32, le64};
use crate::error::{Error, Result};
use crate::source::{read_vec, ByteSource, Extent, Window};

const SECTOR: u64 = 512;
const MDA_MAGIC: &[u8; 16] = b" LVM2 x[5A%r0N*>";
/// LVM's own CRC: the standard reflected polynomial, this initial value,
/// no final inversion.
const LVM_CRC_INITIAL: u32 = 0xf597_a6cf;
/// Most bytes of metadata text read (LVM's default area is 1 MiB).
const MAX_METADATA: u64 = 16 << 20;
/// A metadata area whose copy LVM does not keep current (`metadataignore`).
const RAW_LOCN_IGNORED: u32 = 0x1;
/// Deepest nesting of sections, and most segments per volume.
const MAX_DEPTH: usize = 16;
const MAX_SEGMENTS: usize = 4096;

fn lvm_crc(bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new_with_initial(!LVM_CRC_INITIAL);
    hasher.update(bytes);
    !hasher.finalize()
}



/// Whether `device` carries an LVM2 label.
pub fn is_physical_volume(device: &dyn ByteSource) -> bool {
    matches!(label(device), Ok(Some(_)))
}

/// The sector of the label and the PV header's offset in it.
fn label(device: &dyn ByteSource) -> Result<Option<(u64, usize)>> {
    for sector in 0..4u64 {
        if (sector + 1) * SECTOR > device.len() {
            break;
        }
        let s = read_vec(device, sector * SECTOR, SECTOR as usize).map_err(|e| Error::io("an LVM2 label", e))?;
        if &s[0..8] != b"LABELONE" {
            continue;
        }
        if le64(&s, 8) != sector || &s[24..32] != b"LVM2 001" {
            return Err(Error::damaged("the LVM2 label", format!("in sector {sector}: wrong sector number or type")));
        }
        if lvm_crc(&s[20..]) != le32(&s, 16) {
            return Err(Error::damaged("the LVM2 label", format!("in sector {sector}: checksum mismatch")));
        }
        let offset = le32(&s, 20) as usize;
        if !(32..SECTOR as usize - 40).contains(&offset) {
            return Err(Error::damaged("the LVM2 label", format!("the PV header offset {offset} is out of the sector")));
        }
        return Ok(Some((sector, offset)));
    }
    Ok(None)
}

/// A linear logical volume of a volume group of a disk.
#[derive(Clone)]
pub struct LogicalVolume {
    pub vg: String,
    pub name: String,
    /// The volume's bytes; `Err` says why it cannot be read (a RAID or
    /// thin volume, one on a physical volume not on this disk).
    pub device: std::result::Result<Window, String>,
    /// Which of the physical volumes given held the metadata it comes from.
    pub described_by: usize,
}

/// An LVM2 physical volume: its UUID, and the newest metadata it keeps.
pub struct PhysicalVolume {
    /// Names it in messages (`web01/p2`).
    pub name: String,
    /// Without dashes, as in the PV header.
    uuid: String,
    device: Window,
    /// `None`: every copy is marked ignored; the group's metadata is kept
    /// on its other physical volumes.
    metadata: Option<(u64, BTreeMap<String, Value>)>,
}

/// The physical volume `device` (a partition): its label, its header and
/// the newest of its metadata copies. `pv_name` names it in messages.
pub fn physical_volume(device: Window, pv_name: &str) -> Result<PhysicalVolume> {
    let what = |s: &str| format!("{s} of the LVM2 physical volume {pv_name}");
    let (sector, offset) = label(&device)?
        .ok_or_else(|| Error::damaged(what("the label"), "none in the first four sectors"))?;
    let header = read_vec(&device, sector * SECTOR, SECTOR as usize).map_err(|e| Error::io(what("the label"), e))?;
    let pv_uuid = String::from_utf8_lossy(&header[offset..offset + 32]).to_string();
    let mut at = offset + 40;
    let mut lists: [Vec<(u64, u64)>; 2] = [Vec::new(), Vec::new()];
    for list in &mut lists {
        loop {
            if at + 16 > SECTOR as usize {
                return Err(Error::damaged(what("the PV header"), "its area lists run past the label sector"));
            }
            let (o, s) = (le64(&header, at), le64(&header, at + 8));
            at += 16;
            if o == 0 && s == 0 {
                break;
            }
            list.push((o, s));
        }
    }
    let [_, metadata_areas] = lists;
    if metadata_areas.is_empty() {
        return Err(Error::unsupported(what("the PV header"), "no metadata area on this physical volume"));
    }
    // A physical volume may keep two copies (`--metadatacopies 2`), and
    // one marked ignored (`--metadataignore`) is not kept current: the
    // newest copy not ignored is the volume group's metadata.
    let mut newest: Option<(u64, BTreeMap<String, Value>)> = None;
    let mut failed = None;
    for &(mda_offset, mda_size) in &metadata_areas {
        let config = match metadata_text(&device, mda_offset, mda_size) {
            Ok(None) => continue,
            Ok(Some(text)) => parse(&text).map_err(|why| Error::damaged(what("the metadata text"), why)),
            Err(Error::Damaged { why, .. }) => Err(Error::damaged(what("the metadata area"), why)),
            Err(other) => Err(other),
        };
        match config {
            Ok(config) => {
                let seqno = sequence_number(&config);
                if newest.as_ref().is_none_or(|(n, _)| seqno > *n) {
                    newest = Some((seqno, config));
                }
            }
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    if let (None, Some(e)) = (&newest, failed) {
        return Err(e);
    }
    Ok(PhysicalVolume {
        name: pv_name.to_string(),
        uuid: pv_uuid,
        device,
        metadata: newest,
    })
}

/// The logical volumes of the volume groups on `pvs` (the physical
/// volumes of one disk), in name order: each group read from the newest
/// metadata any of them keeps, each volume mapped through whichever of
/// them hold its extents. Also, by index into `pvs`, why a physical
/// volume gives no volumes: its group's metadata is damaged, or kept only
/// on physical volumes of other disks.
pub fn logical_volumes(pvs: &[PhysicalVolume]) -> (Vec<LogicalVolume>, Vec<(usize, String)>) {
    // The newest metadata of each group, by its id.
    let mut groups: BTreeMap<String, (u64, usize)> = BTreeMap::new();
    for (i, pv) in pvs.iter().enumerate() {
        let Some((seqno, config)) = &pv.metadata else { continue };
        let Some((name, vg)) = volume_group(config) else { continue };
        let id = text(vg, "id").unwrap_or(name).to_string();
        if groups.get(&id).is_none_or(|(newest, _)| seqno > newest) {
            groups.insert(id, (*seqno, i));
        }
    }
    let (mut out, mut problems) = (Vec::new(), Vec::new());
    let mut described = vec![false; pvs.len()];
    for &(_, from) in groups.values() {
        let Some((_, config)) = &pvs[from].metadata else { continue };
        match group_volumes(config, pvs, from) {
            Ok((volumes, members)) => {
                out.extend(volumes);
                for i in members {
                    described[i] = true;
                }
            }
            Err(e) => {
                described[from] = true;
                problems.push((from, e.to_string()));
            }
        }
    }
    for (i, pv) in pvs.iter().enumerate() {
        if !described[i] && pv.metadata.is_none() {
            problems.push((
                i,
                format!("every metadata copy of {} is marked ignored, and no physical volume of this disk keeps its volume group's", pv.name),
            ));
        }
    }
    out.sort_by(|a, b| (&a.vg, &a.name).cmp(&(&b.vg, &b.name)));
    (out, problems)
}

/// The volume group section of a metadata text, with its name.
fn volume_group(config: &BTreeMap<String, Value>) -> Option<(&str, &BTreeMap<String, Value>)> {
    config.iter().find_map(|(name, v)| v.section().map(|s| (name.as_str(), s)))
}

/// The volume group's sequence number (`seqno`), which grows with every
/// change of its metadata; 0 if the text has none.
fn sequence_number(config: &BTreeMap<String, Value>) -> u64 {
    volume_group(config).and_then(|(_, vg)| number(vg, "seqno").ok()).unwrap_or(0)
}

/// The current metadata text of the area at `offset` of `size` bytes;
/// `None` if the area is marked ignored.
fn metadata_text(device: &dyn ByteSource, offset: u64, size: u64) -> Result<Option<String>> {
    let end = offset.checked_add(size).filter(|&end| end <= device.len() && size > SECTOR);
    if end.is_none() {
        return Err(Error::damaged("", format!("{size} bytes at {offset} do not lie on the device")));
    }
    let h = read_vec(device, offset, SECTOR as usize).map_err(|e| Error::io("an LVM2 metadata area", e))?;
    if lvm_crc(&h[4..]) != le32(&h, 0) {
        return Err(Error::damaged("", "its header fails its checksum"));
    }
    if &h[4..20] != MDA_MAGIC || le32(&h, 20) != 1 || le64(&h, 24) != offset || le64(&h, 32) != size {
        return Err(Error::damaged("", "its header has the wrong magic, version, start or size"));
    }
    let (text_offset, text_size, text_crc, flags) = (le64(&h, 40), le64(&h, 48), le32(&h, 56), le32(&h, 60));
    if flags & RAW_LOCN_IGNORED != 0 {
        return Ok(None);
    }
    if text_size == 0 || text_size > MAX_METADATA || text_size > size - SECTOR || !(SECTOR..size).contains(&text_offset) {
        return Err(Error::damaged("", format!("its metadata of {text_size} bytes at {text_offset} does not fit")));
    }
    // The text is in a ring after the header: it may wrap to its start.
    let first = text_size.min(size - text_offset);
    let mut text = read_vec(device, offset + text_offset, first as usize).map_err(|e| Error::io("LVM2 metadata", e))?;
    if first < text_size {
        text.extend(read_vec(device, offset + SECTOR, (text_size - first) as usize).map_err(|e| Error::io("LVM2 metadata", e))?);
    }
    if lvm_crc(&text) != text_crc {
        return Err(Error::damaged("", "the metadata text fails its checksum"));
    }
    let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
    String::from_utf8(text[..end].to_vec()).map(Some).map_err(|_| Error::damaged("", "the metadata text is not UTF-8"))
}

/// A value of LVM's configuration syntax.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Number(i64),
    Text(String),
    List(Vec<Value>),
    Section(BTreeMap<String, Value>),
}

impl Value {
    fn section(&self) -> Option<&BTreeMap<String, Value>> {
        match self {
            Value::Section(s) => Some(s),
            _ => None,
        }
    }
}

fn get<'a>(section: &'a BTreeMap<String, Value>, key: &str) -> std::result::Result<&'a Value, String> {
    section.get(key).ok_or_else(|| format!("no {key:?}"))
}

fn number(section: &BTreeMap<String, Value>, key: &str) -> std::result::Result<u64, String> {
    match get(section, key)? {
        Value::Number(n) if *n >= 0 => Ok(*n as u64),
        other => Err(format!("{key} is {other:?}, not a count")),
    }
}

fn text<'a>(section: &'a BTreeMap<String, Value>, key: &str) -> std::result::Result<&'a str, String> {
    match get(section, key)? {
        Value::Text(t) => Ok(t),
        other => Err(format!("{key} is {other:?}, not text")),
    }
}

/// Parses LVM's configuration syntax into its top-level section.
pub fn parse(input: &str) -> std::result::Result<BTreeMap<String, Value>, String> {
    let mut p = Parser {
        bytes: input.as_bytes(),
        at: 0,
    };
    let top = p.section(0)?;
    p.skip();
    if p.at < p.bytes.len() {
        return Err(format!("unexpected {:?} at byte {}", p.bytes[p.at] as char, p.at));
    }
    Ok(top)
}

struct Parser<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn skip(&mut self) {
        while let Some(&c) = self.bytes.get(self.at) {
            if c == b'#' {
                while self.bytes.get(self.at).is_some_and(|&c| c != b'\n') {
                    self.at += 1;
                }
            } else if c.is_ascii_whitespace() {
                self.at += 1;
            } else {
                break;
            }
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip();
        self.bytes.get(self.at).copied()
    }

    fn name(&mut self) -> std::result::Result<String, String> {
        let start = self.at;
        while self
            .bytes
            .get(self.at)
            .is_some_and(|&c| c.is_ascii_alphanumeric() || b"_-.+".contains(&c))
        {
            self.at += 1;
        }
        if start == self.at {
            return Err(format!("a name expected at byte {start}"));
        }
        Ok(String::from_utf8_lossy(&self.bytes[start..self.at]).into_owned())
    }

    /// Entries until `}` (or the end, at depth 0).
    fn section(&mut self, depth: usize) -> std::result::Result<BTreeMap<String, Value>, String> {
        if depth > MAX_DEPTH {
            return Err(format!("sections nested deeper than {MAX_DEPTH}"));
        }
        let mut entries = BTreeMap::new();
        loop {
            match self.peek() {
                None if depth == 0 => return Ok(entries),
                None => return Err("a section is not closed".into()),
                Some(b'}') if depth > 0 => {
                    self.at += 1;
                    return Ok(entries);
                }
                Some(_) => {}
            }
            let name = self.name()?;
            let value = match self.peek() {
                Some(b'{') => {
                    self.at += 1;
                    Value::Section(self.section(depth + 1)?)
                }
                Some(b'=') => {
                    self.at += 1;
                    self.value(0)?
                }
                _ => return Err(format!("= or {{ expected after {name:?} at byte {}", self.at)),
            };
            entries.insert(name, value);
        }
    }

    fn value(&mut self, depth: usize) -> std::result::Result<Value, String> {
        match self.peek() {
            Some(b'"') => {
                self.at += 1;
                let mut out = Vec::new();
                loop {
                    match self.bytes.get(self.at) {
                        None => return Err("a string is not closed".into()),
                        Some(b'"') => {
                            self.at += 1;
                            return Ok(Value::Text(String::from_utf8_lossy(&out).into_owned()));
                        }
                        Some(b'\\') => {
                            let escaped = *self.bytes.get(self.at + 1).ok_or("a string ends in \\")?;
                            out.push(escaped);
                            self.at += 2;
                        }
                        Some(&c) => {
                            out.push(c);
                            self.at += 1;
                        }
                    }
                }
            }
            Some(b'[') if depth < MAX_DEPTH => {
                self.at += 1;
                let mut items = Vec::new();
                loop {
                    match self.peek() {
                        Some(b']') => {
                            self.at += 1;
                            return Ok(Value::List(items));
                        }
                        Some(b',') if !items.is_empty() => self.at += 1,
                        _ => items.push(self.value(depth + 1)?),
                    }
                }
            }
            Some(c) if c == b'-' || c.is_ascii_digit() => {
                let start = self.at;
                self.at += 1;
                while self.bytes.get(self.at).is_some_and(u8::is_ascii_digit) {
                    self.at += 1;
                }
                // Numbers with a fraction (rare: none in the volume
                // layout) are kept as their whole part.
                let whole = std::str::from_utf8(&self.bytes[start..self.at]).unwrap_or("x");
                if self.bytes.get(self.at) == Some(&b'.') {
                    self.at += 1;
                    while self.bytes.get(self.at).is_some_and(u8::is_ascii_digit) {
                        self.at += 1;
                    }
                }
                whole
                    .parse()
                    .map(Value::Number)
                    .map_err(|_| format!("{whole:?} at byte {start} is not a number"))
            }
            other => Err(format!("a value expected at byte {}, found {:?}", self.at, other.map(char::from))),
        }
    }
}

/// Where a physical volume of a group lies: its window on the disk, its
/// first extent's byte and its extent count.
type Located<'a> = (&'a Window, u64, u64);

/// The logical volumes of the volume group in `config` (read from
/// `pvs[from]`), mapped through those of `pvs` that are its physical
/// volumes, and the indexes of those.
fn group_volumes(config: &BTreeMap<String, Value>, pvs: &[PhysicalVolume], from: usize) -> Result<(Vec<LogicalVolume>, Vec<usize>)> {
    let damaged = |why: String| Error::damaged(format!("the LVM2 metadata of {}", pvs[from].name), why);
    let (vg_name, vg) = volume_group(config).ok_or_else(|| damaged("no volume group".into()))?;
    let extent_size = number(vg, "extent_size").map_err(&damaged)?;
    let extent_bytes = extent_size
        .checked_mul(SECTOR)
        .filter(|&b| b > 0)
        .ok_or_else(|| damaged(format!("extent size {extent_size}")))?;
    // The group's physical volumes by their name in the metadata (pv0,
    // pv1, …), found on the disk by UUID (written with dashes there,
    // without them in the header).
    let listed = get(vg, "physical_volumes").ok().and_then(Value::section).ok_or_else(|| damaged("no physical_volumes".into()))?;
    let mut located: BTreeMap<&str, Located> = BTreeMap::new();
    let mut members = Vec::new();
    for (key, pv) in listed {
        let Some(pv) = pv.section() else { continue };
        let Ok(id) = text(pv, "id") else { continue };
        let Some(i) = pvs.iter().position(|p| p.uuid == id.replace('-', "")) else { continue };
        let pe_start = number(pv, "pe_start").map_err(&damaged)?.checked_mul(SECTOR).ok_or_else(|| damaged("pe_start".into()))?;
        let pe_count = number(pv, "pe_count").map_err(&damaged)?;
        located.insert(key.as_str(), (&pvs[i].device, pe_start, pe_count));
        members.push(i);
    }
    if !members.contains(&from) {
        return Err(damaged("the metadata does not list the physical volume it was read from".into()));
    }
    let mut out = Vec::new();
    let Some(lvs) = get(vg, "logical_volumes").ok().and_then(Value::section) else {
        return Ok((out, members));
    };
    let disk = Arc::clone(pvs[from].device.disk());
    for (lv_name, lv) in lvs {
        let Some(lv) = lv.section() else { continue };
        let visible = matches!(get(lv, "status"), Ok(Value::List(flags)) if flags.contains(&Value::Text("VISIBLE".into())));
        if !visible {
            continue;
        }
        let device = linear_map(lv, &located, extent_bytes)
            .and_then(|extents| Window::mapped(Arc::clone(&disk), extents).map_err(|e| e.to_string()));
        out.push(LogicalVolume {
            vg: vg_name.to_string(),
            name: lv_name.clone(),
            device,
            described_by: from,
        });
    }
    Ok((out, members))
}

/// The extents of a linear volume on the disk, or why it cannot be read.
fn linear_map(lv: &BTreeMap<String, Value>, located: &BTreeMap<&str, Located>, extent_bytes: u64) -> std::result::Result<Vec<Extent>, String> {
    let count = number(lv, "segment_count")? as usize;
    if count == 0 || count > MAX_SEGMENTS {
        return Err(format!("{count} segments"));
    }
    let mut segments = Vec::with_capacity(count);
    for i in 1..=count {
        let seg = get(lv, &format!("segment{i}"))?.section().ok_or(format!("segment{i} is not a section"))?;
        let kind = text(seg, "type")?;
        if kind != "striped" || number(seg, "stripe_count")? != 1 {
            return Err(format!("a {kind} volume (only linear volumes are read)"));
        }
        let (start, extents) = (number(seg, "start_extent")?, number(seg, "extent_count")?);
        let Value::List(stripes) = get(seg, "stripes")? else {
            return Err("stripes is not a list".into());
        };
        let [Value::Text(pv), Value::Number(pv_extent)] = stripes.as_slice() else {
            return Err("a stripe is not [\"pvN\", extent]".into());
        };
        let &(device, pe_start, pe_count) = located
            .get(pv.as_str())
            .ok_or_else(|| format!("it lies on physical volume {pv}, which is not on this disk"))?;
        let pv_extent = u64::try_from(*pv_extent).map_err(|_| "a negative extent".to_string())?;
        if extents == 0 || pv_extent.checked_add(extents).is_none_or(|end| end > pe_count) {
            return Err(format!("extents {pv_extent}+{extents} lie past the physical volume's {pe_count}"));
        }
        segments.push((start, extents, device, pv_extent, pe_start));
    }
    segments.sort_unstable_by_key(|&(start, ..)| start);
    let mut next = 0;
    let mut map = Vec::with_capacity(segments.len());
    for (start, extents, device, pv_extent, pe_start) in segments {
        if start != next {
            return Err(format!("its segments leave a gap or overlap at extent {start}"));
        }
        let len = extents.checked_mul(extent_bytes).ok_or("extent overflow")?;
        let at = pe_start
            .checked_add(pv_extent.checked_mul(extent_bytes).ok_or("extent overflow")?)
            .ok_or("extent overflow")?;
        // Where the segment lies on the disk: within its partition, whole.
        let first = device.disk_offset(at);
        let last = at.checked_add(len - 1).and_then(|end| device.disk_offset(end));
        let disk_offset = match (first, last) {
            (Some(first), Some(last)) if last - first == len - 1 => first,
            _ => return Err(format!("extents {pv_extent}+{extents} do not lie on their physical volume")),
        };
        map.push(Extent {
            device_offset: start.checked_mul(extent_bytes).ok_or("extent overflow")?,
            disk_offset,
            len,
        });
        next = start + extents;
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    const METADATA: &str = r#"vg0 {
id = "abc"
seqno = 3
format = "lvm2" # informational
status = ["RESIZEABLE", "READ", "WRITE"]
extent_size = 8
physical_volumes {
pv0 {
id = "0123456789abcdef0123456789ABCDEF"
device = "/dev/sda2"
pe_start = 16
pe_count = 100
}
}
logical_volumes {
root {
status = ["READ", "WRITE", "VISIBLE"]
segment_count = 2
segment1 {
start_extent = 0
extent_count = 2
type = "striped"
stripe_count = 1
stripes = [
"pv0", 10
]
}
segment2 {
start_extent = 2
extent_count = 1
type = "striped"
stripe_count = 1
stripes = ["pv0", 3]
}
}
hidden { status = ["READ"] segment_count = 1 }
thin { status = ["VISIBLE"] segment_count = 1 segment1 { start_extent = 0 extent_count = 1 type = "thin" } }
}
}
contents = "Text Format Volume Group"
version = 1
"#;

    /// A PV of 64 KiB: label in sector 1, metadata area at 4 KiB.
    fn pv(metadata: &str) -> Vec<u8> {
        let mut d = vec![0u8; 128 << 10];
        let label = &mut d[512..1024];
        label[..8].copy_from_slice(b"LABELONE");
        label[8..16].copy_from_slice(&1u64.to_le_bytes());
        label[20..24].copy_from_slice(&32u32.to_le_bytes());
        label[24..32].copy_from_slice(b"LVM2 001");
        label[32..64].copy_from_slice(b"0123456789abcdef0123456789ABCDEF");
        // data areas: one; metadata areas: one at 4096 of 4096 bytes.
        label[72..80].copy_from_slice(&8192u64.to_le_bytes());
        label[104..112].copy_from_slice(&4096u64.to_le_bytes());
        label[112..120].copy_from_slice(&4096u64.to_le_bytes());
        let crc = lvm_crc(&label[20..]);
        label[16..20].copy_from_slice(&crc.to_le_bytes());
        let text = metadata.as_bytes();
        let mda = &mut d[4096..8192];
        mda[4..20].copy_from_slice(MDA_MAGIC);
        mda[20..24].copy_from_slice(&1u32.to_le_bytes());
        mda[24..32].copy_from_slice(&4096u64.to_le_bytes());
        mda[32..40].copy_from_slice(&4096u64.to_le_bytes());
        mda[40..48].copy_from_slice(&512u64.to_le_bytes());
        mda[48..56].copy_from_slice(&(text.len() as u64).to_le_bytes());
        mda[56..60].copy_from_slice(&lvm_crc(text).to_le_bytes());
        let crc = lvm_crc(&mda[4..512]);
        mda[0..4].copy_from_slice(&crc.to_le_bytes());
        mda[512..512 + text.len()].copy_from_slice(text);
        d
    }

    #[test]
    fn a_linear_volume_maps_its_segments_onto_the_physical_volume() {
        let disk: Arc<dyn ByteSource> = Arc::new(pv(METADATA));
        assert!(is_physical_volume(disk.as_ref()));
        let whole = Window::range(Arc::clone(&disk), 0, disk.len()).unwrap();
        let (lvs, problems) = logical_volumes(&[physical_volume(whole, "sda2").unwrap()]);
        assert!(problems.is_empty(), "{problems:?}");
        let names: Vec<&str> = lvs.iter().map(|lv| lv.name.as_str()).collect();
        assert_eq!(names, ["root", "thin"]);
        let root = lvs[0].device.as_ref().unwrap();
        assert_eq!(root.len(), 3 * 8 * 512);
        // Extent 0 is PV extent 10: 16 sectors + 10 × 8 sectors.
        assert_eq!(root.disk_offset(0), Some((16 + 80) * 512));
        assert_eq!(root.disk_offset(2 * 4096 + 5), Some((16 + 24) * 512 + 5));
        assert!(lvs[1].device.as_ref().unwrap_err().contains("thin"));
    }

    #[test]
    fn the_crc_is_lvms() {
        // LVM2's calc_crc of "LVM2" with its initial value, computed by
        // its reference loop.
        let mut crc = LVM_CRC_INITIAL;
        for &b in b"LVM2 metadata" {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = (crc >> 1) ^ if crc & 1 == 1 { 0xedb8_8320 } else { 0 };
            }
        }
        assert_eq!(lvm_crc(b"LVM2 metadata"), crc);
    }

    #[test]
    fn damaged_metadata_is_an_error_never_a_panic() {
        use rand::{Rng, SeedableRng};
        let original = pv(METADATA);
        let mut rng = rand::rngs::SmallRng::seed_from_u64(17);
        for round in 0..3000 {
            let mut d = original.clone();
            for _ in 0..rng.gen_range(1..4) {
                let at = rng.gen_range(0..8192);
                d[at] = rng.gen();
            }
            let disk: Arc<dyn ByteSource> = Arc::new(d);
            let whole = Window::range(Arc::clone(&disk), 0, disk.len()).unwrap();
            if let Ok(pv) = physical_volume(whole, "sda2") {
                let _ = logical_volumes(&[pv]);
            }
            // The text parser alone, on mutated text.
            let mut text = METADATA.as_bytes().to_vec();
            let at = rng.gen_range(0..text.len());
            text[at] = rng.gen_range(32..127);
            if round % 3 == 0 {
                text.truncate(rng.gen_range(0..text.len()));
            }
            let _ = parse(&String::from_utf8_lossy(&text));
        }
        assert!(parse(&"a { ".repeat(100)).is_err());
        assert!(parse(&format!("a = {}", "[".repeat(100))).is_err());
    }
}
