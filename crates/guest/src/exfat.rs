//! exFAT, read-only (SD cards, USB disks, data volumes shared with
//! Windows and macOS). Layout: Microsoft's "exFAT file system
//! specification" (2019, the one published for the Linux kernel).
//!
//! Why our own reader: the `exfat-fs` crate (0.1.3) aborted on a damaged
//! boot sector and loads the whole FAT into memory. This one reads the FAT
//! a page at a time through a small cache, and checks every number before
//! use:
//! - the boot region: its checksum (sector 11) over sectors 0–10, then
//!   the boot sector's fields (JumpBoot, name, sector and cluster sizes,
//!   FAT and cluster heap within the volume, the root's cluster); when the
//!   main region fails, its backup (sectors 12–23) is read instead;
//! - cluster chains: every cluster within the heap, a chain exactly as
//!   long as its file's size needs (a loop never ends in end-of-chain, so
//!   it is found within that many steps), the root's chain no longer than
//!   [`MAX_DIR_BYTES`];
//! - directory entry sets: the SetChecksum, SecondaryCount, the Stream
//!   Extension and as many File Name entries as NameLength needs,
//!   ValidDataLength ≤ DataLength, DataLength within the cluster heap;
//!   names that are empty, `.`, `..`, or hold `/` or NUL, and two entries
//!   of one name, are damage (the path of a node would be ambiguous);
//! - nesting: nodes are numbered by path as first listed, so a directory
//!   loop of a damaged volume only makes ever deeper paths: listing one
//!   deeper than [`MAX_DEPTH`] is an error.
//!
//! Conventions shared with the FAT reader: no inodes or owners, so nodes
//! are numbered as they are first listed, files show mode 0644 (0444 with
//! the read-only attribute), directories 0755 and size 0, owned by root,
//! one link. Times are converted to UTC with their UTC offset field; a
//! time without a valid offset is read as UTC (as FAT's are), one whose
//! fields are out of range reads as the epoch. Bytes past a file's
//! ValidDataLength read as zeros. Names are UTF-16: an unpaired surrogate
//! reads as U+FFFD. Not checked: NameHash (it needs the up-case table;
//! the SetChecksum covers the same bytes) and the allocation bitmap.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::bytes::{le16, le32, le64};
use crate::error::{Error, Result};
use crate::fs::{days_from_civil, DirEntry, FileKind, GuestFs, NodeId, Stat, Time};
use crate::probe::Content;
use crate::source::{read_vec, ByteSource, Window};

/// Deepest directory nesting read (as for FAT).
pub const MAX_DEPTH: usize = 64;
/// The largest directory the specification allows (256 MiB).
const MAX_DIR_BYTES: u64 = 256 << 20;
/// The largest cluster the specification allows (32 MiB).
const MAX_CLUSTER_SHIFT: u8 = 25;
/// The most clusters the specification allows.
const MAX_CLUSTERS: u32 = 0xFFFF_FFF5;
const FAT_BAD: u32 = 0xFFFF_FFF7;
const FAT_END: u32 = 0xFFFF_FFFF;
/// Bytes of the FAT read at once, and pages kept.
const FAT_PAGE: u64 = 4096;
const CACHED_FAT_PAGES: usize = 64;
/// Files and directories whose cluster runs stay cached.
const CACHED_MAPS: usize = 256;
const ROOT: NodeId = 1;

const ENTRY: usize = 32;
const TYPE_BITMAP: u8 = 0x81;
const TYPE_UPCASE: u8 = 0x82;
const TYPE_LABEL: u8 = 0x83;
const TYPE_FILE: u8 = 0x85;
const TYPE_STREAM: u8 = 0xC0;
const TYPE_NAME: u8 = 0xC1;
const IN_USE: u8 = 0x80;
const SECONDARY: u8 = 0x40;
const BENIGN: u8 = 0x20;
const ATTR_READ_ONLY: u16 = 0x01;
const ATTR_DIRECTORY: u16 = 0x10;
const FLAG_ALLOCATION_POSSIBLE: u8 = 0x01;
const FLAG_NO_FAT_CHAIN: u8 = 0x02;
/// Characters of one File Name entry, and most of a name.
const NAME_CHARS: usize = 15;

/// Opens the exFAT file system on `device`; `name` names the volume in
/// messages.
pub fn open(device: Window, name: &str) -> Result<Box<dyn GuestFs>> {
    Ok(Box::new(Exfat::open(device, name)?))
}

/// Where things are, from the boot sector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    sector_shift: u8,
    cluster_shift: u8,
    /// Byte offset of the FAT in use.
    fat_offset: u64,
    fat_bytes: u64,
    heap_offset: u64,
    clusters: u32,
    root_cluster: u32,
}

impl Geometry {
    fn cluster_size(&self) -> u64 {
        1 << (self.sector_shift + self.cluster_shift)
    }

    fn valid_cluster(&self, cluster: u32) -> bool {
        cluster >= 2 && u64::from(cluster) <= u64::from(self.clusters) + 1
    }

    /// The byte offset of a cluster known to be valid.
    fn cluster_offset(&self, cluster: u32) -> u64 {
        self.heap_offset + (u64::from(cluster) - 2) * self.cluster_size()
    }
}

/// The boot region at sector `first` (0: the main one, 12: its backup),
/// read with sectors of `2^sector_shift` bytes.
fn boot_region(device: &Window, first: u64, sector_shift: u8) -> std::result::Result<Geometry, String> {
    let sector = 1u64 << sector_shift;
    let region = read_vec(device, first * sector, (12 * sector) as usize).map_err(|e| e.to_string())?;
    let sector = sector as usize;
    let boot = &region[..512];
    if boot[..3] != [0xEB, 0x76, 0x90] || &boot[3..11] != b"EXFAT   " {
        return Err("no exFAT boot sector (JumpBoot and name)".into());
    }
    if boot[108] != sector_shift {
        return Err(format!("BytesPerSectorShift {} (read as {sector_shift})", boot[108]));
    }
    let expected = boot_checksum(&region[..11 * sector]);
    if let Some(bad) = region[11 * sector..].chunks_exact(4).map(|c| le32(c, 0)).find(|&c| c != expected) {
        return Err(format!("boot checksum {bad:#010x}, its sectors sum to {expected:#010x}"));
    }
    geometry(boot, device.len())
}

/// The checksum of the boot region's first eleven sectors, without the
/// VolumeFlags and PercentInUse fields (they change while mounted).
fn boot_checksum(sectors: &[u8]) -> u32 {
    sectors.iter().enumerate().filter(|(i, _)| !matches!(i, 106 | 107 | 112)).fold(0u32, |sum, (_, &b)| sum.rotate_right(1).wrapping_add(u32::from(b)))
}

/// The geometry a boot sector describes, checked against the volume's
/// `volume_len` bytes.
fn geometry(boot: &[u8], volume_len: u64) -> std::result::Result<Geometry, String> {
    if boot[11..64].iter().any(|&b| b != 0) {
        return Err("its MustBeZero bytes are not zero".into());
    }
    if boot[510..512] != [0x55, 0xAA] {
        return Err("no boot signature".into());
    }
    let revision = le16(boot, 104);
    if revision >> 8 != 1 {
        return Err(format!("revision {}.{} (only 1.x is read)", revision >> 8, revision & 0xFF));
    }
    let sector_shift = boot[108];
    let cluster_shift = boot[109];
    if !(9..=12).contains(&sector_shift) || cluster_shift > MAX_CLUSTER_SHIFT - sector_shift {
        return Err(format!("sectors of 2^{sector_shift} bytes, clusters of 2^{cluster_shift} sectors"));
    }
    let sectors = le64(boot, 72);
    let fat_offset = u64::from(le32(boot, 80));
    let fat_length = u64::from(le32(boot, 84));
    let heap_offset = u64::from(le32(boot, 88));
    let clusters = le32(boot, 92);
    let root_cluster = le32(boot, 96);
    let fats = u64::from(boot[110]);
    let active_fat = u64::from(le16(boot, 106) & 1);
    let volume_bytes = sectors.checked_shl(u32::from(sector_shift)).filter(|b| b >> sector_shift == sectors);
    if volume_bytes.is_none_or(|b| b > volume_len) || sectors < (1 << 20) >> sector_shift {
        return Err(format!("{sectors} sectors of 2^{sector_shift} bytes on a {volume_len}-byte volume"));
    }
    if !(1..=2).contains(&fats) || active_fat >= fats {
        return Err(format!("{fats} FATs, FAT {active_fat} active"));
    }
    let fat_needed = (u64::from(clusters) + 2) * 4;
    let fats_end = fat_offset + fat_length * fats;
    let heap_sectors = sectors.saturating_sub(heap_offset);
    let valid = fat_offset >= 24
        && fat_length << sector_shift >= fat_needed
        && heap_offset >= fats_end
        && heap_offset <= sectors
        && clusters <= MAX_CLUSTERS
        && clusters > 0
        && u64::from(clusters) <= heap_sectors >> cluster_shift;
    if !valid {
        return Err(format!(
            "FAT at sector {fat_offset} of {fat_length} sectors, cluster heap at sector {heap_offset} with {clusters} clusters of 2^{cluster_shift} sectors, in {sectors} sectors"
        ));
    }
    let geometry = Geometry {
        sector_shift,
        cluster_shift,
        fat_offset: (fat_offset + active_fat * fat_length) << sector_shift,
        fat_bytes: fat_length << sector_shift,
        heap_offset: heap_offset << sector_shift,
        clusters,
        root_cluster,
    };
    if !geometry.valid_cluster(root_cluster) {
        return Err(format!("root directory at cluster {root_cluster}, outside the {clusters} clusters"));
    }
    Ok(geometry)
}

/// Where a node's data lies.
#[derive(Debug, Clone, Copy)]
struct Data {
    first_cluster: u32,
    /// NoFatChain: the clusters follow each other, the FAT is not read.
    contiguous: bool,
    /// DataLength; `None` for the root directory, whose chain ends where
    /// its FAT says.
    len: Option<u64>,
    /// ValidDataLength: bytes past it read as zeros.
    valid: u64,
}

#[derive(Clone)]
struct Node {
    /// Components from the root.
    path: Vec<String>,
    stat: Stat,
    data: Data,
}

/// A run of a node's clusters: `len` clusters from its cluster
/// `logical` at cluster `physical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    logical: u64,
    len: u64,
    physical: u32,
}

#[derive(Default)]
struct Nodes {
    by_id: HashMap<NodeId, Arc<Node>>,
    by_path: HashMap<Vec<String>, NodeId>,
}

pub struct Exfat {
    device: Window,
    name: String,
    geometry: Geometry,
    label: Option<String>,
    nodes: Mutex<Nodes>,
    /// FAT pages read last, oldest first.
    fat_pages: Mutex<VecDeque<(u64, Arc<Vec<u8>>)>>,
    maps: Mutex<HashMap<NodeId, Arc<Vec<Run>>>>,
}

impl Exfat {
    pub fn open(device: Window, name: &str) -> Result<Exfat> {
        let what = format!("the exFAT file system of {name}");
        let geometry = Self::boot(&device, name)?;
        let root = Node {
            path: Vec::new(),
            stat: stat(ROOT, FileKind::Dir, 0o755, Times::default()),
            data: Data {
                first_cluster: geometry.root_cluster,
                contiguous: false,
                len: None,
                valid: 0,
            },
        };
        let mut fs = Exfat {
            device,
            name: name.to_string(),
            geometry,
            label: None,
            nodes: Mutex::new(Nodes::default()),
            fat_pages: Mutex::new(VecDeque::new()),
            maps: Mutex::new(HashMap::new()),
        };
        let root = Arc::new(root);
        let bytes = fs.directory_bytes(ROOT, &root)?;
        fs.label = root_entries(&bytes, &geometry).map_err(|why| Error::damaged(format!("the root directory of {what}"), why))?;
        let mut nodes = fs.nodes.lock().expect("exFAT nodes");
        nodes.by_id.insert(ROOT, root);
        nodes.by_path.insert(Vec::new(), ROOT);
        drop(nodes);
        Ok(fs)
    }

    /// The geometry of the main boot region, or of its backup when the
    /// main one is damaged.
    fn boot(device: &Window, name: &str) -> Result<Geometry> {
        let what = || format!("the exFAT file system of {name}");
        let first = read_vec(device, 0, 512).map_err(|e| Error::io(what(), e))?;
        let main = if (9..=12).contains(&first[108]) {
            boot_region(device, 0, first[108])
        } else {
            Err(format!("BytesPerSectorShift {}", first[108]))
        };
        let main_why = match main {
            Ok(g) => return Ok(g),
            Err(why) => why,
        };
        // The backup's sector size is its own: try each.
        let mut backup_why = String::from("no backup boot region");
        for shift in 9..=12u8 {
            if (24u64 << shift) > device.len() {
                break;
            }
            match boot_region(device, 12, shift) {
                Ok(g) => {
                    tracing::warn!(volume = name, problem = %main_why, "exFAT main boot region damaged: reading its backup");
                    return Ok(g);
                }
                Err(why) if why.starts_with("no exFAT") || why.starts_with("BytesPerSectorShift") => {}
                Err(why) => backup_why = why,
            }
        }
        Err(Error::damaged(what(), format!("main boot region: {main_why}; backup: {backup_why}")))
    }

    fn what(&self, node: &Node) -> String {
        format!("{}/{}", self.name, node.path.join("/"))
    }

    fn node(&self, id: NodeId) -> Result<Arc<Node>> {
        self.nodes.lock().expect("exFAT nodes").by_id.get(&id).cloned().ok_or_else(|| Error::NotFound(format!("node {id} of {}", self.name)))
    }

    /// The FAT's entry for `cluster` (valid), read through the page cache.
    fn fat_entry(&self, cluster: u32, page: &mut Option<(u64, Arc<Vec<u8>>)>) -> Result<u32> {
        let at = u64::from(cluster) * 4;
        let number = at / FAT_PAGE;
        if page.as_ref().is_none_or(|(n, _)| *n != number) {
            *page = Some((number, self.fat_page(number)?));
        }
        let bytes = &page.as_ref().expect("just read").1;
        let within = (at % FAT_PAGE) as usize;
        bytes
            .get(within..within + 4)
            .map(|b| le32(b, 0))
            .ok_or_else(|| Error::damaged(format!("the FAT of {}", self.name), format!("cluster {cluster} lies past its end")))
    }

    fn fat_page(&self, number: u64) -> Result<Arc<Vec<u8>>> {
        if let Some((_, bytes)) = self.fat_pages.lock().expect("exFAT FAT pages").iter().find(|(n, _)| *n == number) {
            return Ok(Arc::clone(bytes));
        }
        let start = number * FAT_PAGE;
        let len = FAT_PAGE.min(self.geometry.fat_bytes.saturating_sub(start));
        let bytes = read_vec(&self.device, self.geometry.fat_offset + start, len as usize).map_err(|e| Error::io(format!("the FAT of {}", self.name), e))?;
        let bytes = Arc::new(bytes);
        let mut pages = self.fat_pages.lock().expect("exFAT FAT pages");
        if pages.len() >= CACHED_FAT_PAGES {
            pages.pop_front();
        }
        pages.push_back((number, Arc::clone(&bytes)));
        Ok(bytes)
    }

    /// The runs of a node's clusters (cached for the nodes read last).
    fn runs(&self, id: NodeId, node: &Node) -> Result<Arc<Vec<Run>>> {
        if let Some(runs) = self.maps.lock().expect("exFAT maps").get(&id) {
            return Ok(Arc::clone(runs));
        }
        let data = node.data;
        let cluster_size = self.geometry.cluster_size();
        let runs = match data.len {
            Some(0) => Vec::new(),
            Some(len) if data.contiguous => vec![Run {
                logical: 0,
                len: len.div_ceil(cluster_size),
                physical: data.first_cluster,
            }],
            Some(len) => self.chain(node, Some(len.div_ceil(cluster_size)))?,
            None => self.chain(node, None)?,
        };
        let runs = Arc::new(runs);
        let mut maps = self.maps.lock().expect("exFAT maps");
        if maps.len() >= CACHED_MAPS {
            maps.clear();
        }
        maps.insert(id, Arc::clone(&runs));
        Ok(runs)
    }

    /// Follows a node's FAT chain: exactly `clusters` long, or for the
    /// root (`None`) to its end, at most a largest directory's worth.
    fn chain(&self, node: &Node, clusters: Option<u64>) -> Result<Vec<Run>> {
        let what = || self.what(node);
        let g = &self.geometry;
        let limit = clusters.unwrap_or((MAX_DIR_BYTES / g.cluster_size()).clamp(1, u64::from(g.clusters)));
        let mut runs: Vec<Run> = Vec::new();
        let mut page = None;
        let mut cluster = node.data.first_cluster;
        let mut count = 0u64;
        loop {
            if !g.valid_cluster(cluster) {
                return Err(Error::damaged(what(), format!("its cluster {count} is cluster {cluster}, outside the {} clusters", g.clusters)));
            }
            match runs.last_mut() {
                Some(run) if u64::from(run.physical) + run.len == u64::from(cluster) => run.len += 1,
                _ => runs.push(Run {
                    logical: count,
                    len: 1,
                    physical: cluster,
                }),
            }
            count += 1;
            let next = self.fat_entry(cluster, &mut page)?;
            if next == FAT_END {
                if clusters.is_some_and(|c| c != count) {
                    return Err(Error::damaged(what(), format!("its cluster chain ends after {count} of its {limit} clusters")));
                }
                return Ok(runs);
            }
            if count >= limit {
                let why = match clusters {
                    Some(c) => format!("its cluster chain goes on past the {c} clusters of its size (a loop?)"),
                    None => format!("its cluster chain goes on past {limit} clusters (a loop?)"),
                };
                return Err(Error::damaged(what(), why));
            }
            if next == FAT_BAD {
                return Err(Error::damaged(what(), format!("its cluster {count} is marked bad in the FAT")));
            }
            cluster = next;
        }
    }

    /// A directory's bytes, up to the cluster holding its end-of-directory
    /// entry.
    fn directory_bytes(&self, id: NodeId, node: &Node) -> Result<Vec<u8>> {
        let runs = self.runs(id, node)?;
        let cluster_size = self.geometry.cluster_size();
        let len = node.data.len.unwrap_or(u64::MAX).min(MAX_DIR_BYTES);
        let mut out = Vec::new();
        for run in runs.iter() {
            for i in 0..run.len {
                let remaining = len - out.len() as u64;
                if remaining == 0 {
                    return Ok(out);
                }
                let at = self.geometry.cluster_offset(run.physical) + i * cluster_size;
                let start = out.len();
                out.resize(start + remaining.min(cluster_size) as usize, 0);
                self.device.read_exact_at(at, &mut out[start..]).map_err(|e| Error::io(self.what(node), e))?;
                if out[start..].chunks(ENTRY).any(|e| e[0] == 0) {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    fn read_directory(&self, id: NodeId) -> Result<Vec<DirEntry>> {
        let node = self.node(id)?;
        if node.stat.kind != FileKind::Dir {
            return Err(Error::NotADirectory(self.what(&node)));
        }
        if node.path.len() >= MAX_DEPTH {
            return Err(Error::damaged(self.what(&node), format!("directories nested deeper than {MAX_DEPTH}: a loop of a damaged volume")));
        }
        let bytes = self.directory_bytes(id, &node)?;
        let files = files(&bytes, &self.geometry).map_err(|why| Error::damaged(self.what(&node), why))?;
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = files.iter().find(|f| !seen.insert(f.name.as_str())) {
            return Err(Error::damaged(self.what(&node), format!("two entries are named {:?}", dup.name)));
        }
        let mut nodes = self.nodes.lock().expect("exFAT nodes");
        let mut out = Vec::with_capacity(files.len());
        for file in files {
            let mut path = node.path.clone();
            path.push(file.name.clone());
            let next = nodes.by_id.len() as NodeId + 1;
            let child = *nodes.by_path.entry(path.clone()).or_insert(next);
            let mode = match (file.kind, file.read_only) {
                (FileKind::Dir, _) => 0o755,
                (_, true) => 0o444,
                _ => 0o644,
            };
            let mut stat = stat(child, file.kind, mode, file.times);
            if file.kind == FileKind::File {
                stat.size = file.data.len.unwrap_or(0);
            }
            nodes.by_id.entry(child).or_insert_with(|| Arc::new(Node { path, stat, data: file.data }));
            out.push(DirEntry {
                name: file.name.into_bytes(),
                node: child,
            });
        }
        Ok(out)
    }

    fn read_file(&self, id: NodeId, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let node = self.node(id)?;
        if node.stat.kind != FileKind::File {
            return Err(Error::unsupported(self.what(&node), "not a regular file"));
        }
        let size = node.stat.size;
        let want = (buf.len() as u64).min(size.saturating_sub(offset)) as usize;
        if want == 0 {
            return Ok(0);
        }
        let runs = self.runs(id, &node)?;
        let cluster_size = self.geometry.cluster_size();
        let mut done = 0usize;
        while done < want {
            let at = offset + done as u64;
            let rest = want - done;
            if at >= node.data.valid {
                // Past ValidDataLength: allocated, never written.
                buf[done..want].fill(0);
                break;
            }
            let cluster = at / cluster_size;
            let i = runs.partition_point(|r| r.logical + r.len <= cluster);
            let run = runs
                .get(i)
                .filter(|r| r.logical <= cluster)
                .ok_or_else(|| Error::damaged(self.what(&node), format!("no cluster holds its byte {at}")))?;
            let within_run = at - run.logical * cluster_size;
            let run_end = (run.logical + run.len) * cluster_size;
            let n = (rest as u64).min(run_end - at).min(node.data.valid - at) as usize;
            let disk_at = self.geometry.cluster_offset(run.physical) + within_run;
            self.device.read_exact_at(disk_at, &mut buf[done..done + n]).map_err(|e| Error::io(self.what(&node), e))?;
            done += n;
        }
        Ok(want)
    }
}

/// The times of an entry set that a [`Stat`] shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Times {
    mtime: Time,
    atime: Time,
}

fn stat(node: NodeId, kind: FileKind, mode: u32, times: Times) -> Stat {
    Stat {
        node,
        kind,
        size: 0,
        mode,
        uid: 0,
        gid: 0,
        nlink: 1,
        atime: times.atime,
        mtime: times.mtime,
        ctime: times.mtime,
        rdev: 0,
    }
}

/// A file or directory as its entry set describes it.
#[derive(Debug)]
struct File {
    name: String,
    kind: FileKind,
    read_only: bool,
    times: Times,
    data: Data,
}

/// The entries of a directory's `bytes` that name files and directories.
fn files(bytes: &[u8], g: &Geometry) -> std::result::Result<Vec<File>, String> {
    let count = bytes.len() / ENTRY;
    let entry = |i: usize| &bytes[i * ENTRY..(i + 1) * ENTRY];
    let mut out = Vec::new();
    let mut i = 0;
    while i < count {
        let kind = entry(i)[0];
        match kind {
            0 => break,
            k if k & IN_USE == 0 => i += 1,
            TYPE_FILE => {
                let secondary = usize::from(entry(i)[1]);
                if !(2..=18).contains(&secondary) || i + secondary >= count {
                    return Err(format!("entry {i}: a file's {secondary} secondary entries (the directory has {count})"));
                }
                let set = &bytes[i * ENTRY..(i + 1 + secondary) * ENTRY];
                out.push(file(set, g).map_err(|why| format!("entry {i}: {why}"))?);
                i += 1 + secondary;
            }
            TYPE_BITMAP | TYPE_UPCASE | TYPE_LABEL => i += 1,
            // A benign primary (a volume GUID, TexFAT padding) and its
            // secondaries: nothing a reader needs.
            k if k & (SECONDARY | BENIGN) == BENIGN => i += 1 + usize::from(entry(i)[1]),
            k if k & SECONDARY == 0 => return Err(format!("entry {i}: critical entry type {k:#04x}, which this reader does not know")),
            k => return Err(format!("entry {i}: secondary entry {k:#04x} without its primary entry")),
        }
    }
    Ok(out)
}

/// The volume label of a root directory's `bytes`, after checking that
/// it has its allocation bitmap and up-case table.
fn root_entries(bytes: &[u8], g: &Geometry) -> std::result::Result<Option<String>, String> {
    let mut label = None;
    let (mut bitmap, mut upcase) = (false, false);
    for (i, e) in bytes.chunks_exact(ENTRY).enumerate() {
        match e[0] {
            0 => break,
            TYPE_LABEL => {
                let chars = usize::from(e[1]);
                if chars > 11 {
                    return Err(format!("entry {i}: a volume label of {chars} characters (at most 11)"));
                }
                let units: Vec<u16> = (0..chars).map(|c| le16(e, 2 + 2 * c)).collect();
                label = Some(String::from_utf16_lossy(&units)).filter(|l| !l.is_empty());
            }
            TYPE_BITMAP | TYPE_UPCASE => {
                let first = le32(e, 20);
                let len = le64(e, 24);
                let clusters = len.div_ceil(g.cluster_size());
                if !g.valid_cluster(first) || u64::from(first) + clusters > u64::from(g.clusters) + 2 || len == 0 {
                    return Err(format!("entry {i}: an allocation bitmap or up-case table of {len} bytes at cluster {first}"));
                }
                if e[0] == TYPE_BITMAP {
                    bitmap = true;
                    if len < u64::from(g.clusters).div_ceil(8) {
                        return Err(format!("entry {i}: an allocation bitmap of {len} bytes for {} clusters", g.clusters));
                    }
                } else {
                    upcase = true;
                }
            }
            _ => {}
        }
    }
    if !bitmap || !upcase {
        return Err("no allocation bitmap or no up-case table".into());
    }
    Ok(label)
}

/// The checksum of a directory entry set, without its own field (bytes
/// 2 and 3 of the first entry).
fn set_checksum(set: &[u8]) -> u16 {
    set.iter().enumerate().filter(|(i, _)| !matches!(i, 2 | 3)).fold(0u16, |sum, (_, &b)| sum.rotate_right(1).wrapping_add(u16::from(b)))
}

/// One File entry set: the File entry, its Stream Extension, its File
/// Name entries, and any benign secondaries.
fn file(set: &[u8], g: &Geometry) -> std::result::Result<File, String> {
    let stored = le16(set, 2);
    let sum = set_checksum(set);
    if stored != sum {
        return Err(format!("SetChecksum {stored:#06x}, its entries sum to {sum:#06x}"));
    }
    let entries: Vec<&[u8]> = set.chunks_exact(ENTRY).collect();
    let primary = entries[0];
    let stream = entries[1];
    if stream[0] != TYPE_STREAM {
        return Err(format!("entry type {:#04x} where its Stream Extension belongs", stream[0]));
    }
    let name_len = usize::from(stream[3]);
    let name_entries = name_len.div_ceil(NAME_CHARS);
    if name_len == 0 || 1 + name_entries > entries.len() - 1 {
        return Err(format!("a name of {name_len} characters in {} secondary entries", entries.len() - 1));
    }
    let mut units = Vec::with_capacity(name_len);
    for e in &entries[2..2 + name_entries] {
        if e[0] != TYPE_NAME {
            return Err(format!("entry type {:#04x} where a File Name entry belongs", e[0]));
        }
        units.extend((0..NAME_CHARS).map(|c| le16(e, 2 + 2 * c)));
    }
    units.truncate(name_len);
    for e in &entries[2 + name_entries..] {
        if e[0] & IN_USE == 0 || e[0] & BENIGN == 0 {
            return Err(format!("secondary entry type {:#04x} in its set (unused or critical)", e[0]));
        }
    }
    let name = String::from_utf16_lossy(&units);
    if name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(format!("a file named {name:?}"));
    }
    let attributes = le16(primary, 4);
    let kind = if attributes & ATTR_DIRECTORY != 0 { FileKind::Dir } else { FileKind::File };
    let data = stream_data(stream, kind, g).map_err(|why| format!("{name:?}: {why}"))?;
    Ok(File {
        name,
        kind,
        read_only: attributes & ATTR_READ_ONLY != 0,
        times: Times {
            mtime: timestamp(le32(primary, 12), primary[21], primary[23]),
            atime: timestamp(le32(primary, 16), 0, primary[24]),
        },
        data,
    })
}

/// Where a Stream Extension says the data lies, checked against the
/// cluster heap.
fn stream_data(stream: &[u8], kind: FileKind, g: &Geometry) -> std::result::Result<Data, String> {
    let flags = stream[1];
    let valid = le64(stream, 8);
    let first = le32(stream, 20);
    let len = le64(stream, 24);
    if valid > len {
        return Err(format!("ValidDataLength {valid} past its DataLength {len}"));
    }
    if flags & FLAG_ALLOCATION_POSSIBLE == 0 && len != 0 {
        return Err(format!("{len} bytes of data, but no allocation possible"));
    }
    if len > 0 {
        let clusters = len.div_ceil(g.cluster_size());
        if clusters > u64::from(g.clusters) || !g.valid_cluster(first) {
            return Err(format!("{len} bytes from cluster {first}, outside the {} clusters", g.clusters));
        }
        if flags & FLAG_NO_FAT_CHAIN != 0 && u64::from(first) + clusters > u64::from(g.clusters) + 2 {
            return Err(format!("{clusters} contiguous clusters from cluster {first}, past the last"));
        }
        if kind == FileKind::Dir && len > MAX_DIR_BYTES {
            return Err(format!("a directory of {len} bytes (at most {MAX_DIR_BYTES})"));
        }
    }
    Ok(Data {
        first_cluster: first,
        contiguous: flags & FLAG_NO_FAT_CHAIN != 0,
        len: Some(len),
        // A directory's bytes are all valid.
        valid: if kind == FileKind::Dir { len } else { valid },
    })
}

/// An exFAT timestamp (local time, two-second steps), its 10 ms
/// increments (0–199) and UTC offset (bit 7: valid; bits 0–6: signed,
/// in 15 minutes), as UTC. A time without a valid offset is read as UTC;
/// one whose fields are out of range reads as the epoch.
fn timestamp(stamp: u32, ten_ms: u8, utc_offset: u8) -> Time {
    let double_seconds = i64::from(stamp & 0x1F);
    let minute = i64::from((stamp >> 5) & 0x3F);
    let hour = i64::from((stamp >> 11) & 0x1F);
    let day = i64::from((stamp >> 16) & 0x1F);
    let month = i64::from((stamp >> 21) & 0xF);
    let year = 1980 + i64::from(stamp >> 25);
    if double_seconds > 29 || minute > 59 || hour > 23 || day == 0 || !(1..=12).contains(&month) || ten_ms > 199 {
        return Time::default();
    }
    let mut sec = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + double_seconds * 2 + i64::from(ten_ms / 100);
    if utc_offset & 0x80 != 0 {
        // Seven bits, two's complement: shift them to the top of an i8.
        let quarters = i64::from(((utc_offset << 1) as i8) >> 1);
        sec -= quarters * 15 * 60;
    }
    Time {
        sec,
        nsec: u32::from(ten_ms % 100) * 10_000_000,
    }
}

impl GuestFs for Exfat {
    fn describe(&self) -> (Content, Option<String>) {
        (Content::Exfat, self.label.clone())
    }

    fn has_xattrs(&self) -> bool {
        false
    }

    fn root(&self) -> NodeId {
        ROOT
    }

    fn stat(&self, node: NodeId) -> Result<Stat> {
        Ok(self.node(node)?.stat.clone())
    }

    fn read_dir(&self, node: NodeId) -> Result<Vec<DirEntry>> {
        self.read_directory(node)
    }

    fn read_link(&self, node: NodeId) -> Result<Vec<u8>> {
        Err(Error::unsupported(format!("node {node} of {}", self.name), "exFAT has no symbolic links"))
    }

    fn xattrs(&self, _node: NodeId) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(Vec::new())
    }

    fn read_at(&self, node: NodeId, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.read_file(node, offset, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_convert_to_utc_with_their_offset_and_10ms_steps() {
        // 2023-11-14 22:13:20 local, as exfat-fuse writes 1700000000.
        let stamp = (43 << 25) | (11 << 21) | (14 << 16) | (22 << 11) | (13 << 5) | 10;
        assert_eq!(timestamp(stamp, 0, 0x80), Time { sec: 1_700_000_000, nsec: 0 });
        assert_eq!(timestamp(stamp, 0, 0), Time { sec: 1_700_000_000, nsec: 0 });
        assert_eq!(timestamp(stamp, 123, 0x80), Time { sec: 1_700_000_001, nsec: 230_000_000 });
        // UTC+1 (4 quarters): local 22:13:20 is 21:13:20 UTC.
        assert_eq!(timestamp(stamp, 0, 0x84), Time { sec: 1_700_000_000 - 3600, nsec: 0 });
        // UTC-5 (-20 quarters, 0x6C in seven bits).
        assert_eq!(timestamp(stamp, 0, 0x80 | 0x6C), Time { sec: 1_700_000_000 + 5 * 3600, nsec: 0 });
        // Without a valid offset, the offset bits are ignored.
        assert_eq!(timestamp(stamp, 0, 0x04), Time { sec: 1_700_000_000, nsec: 0 });
        assert_eq!(timestamp(0, 0, 0x80), Time::default());
        assert_eq!(timestamp(stamp, 200, 0x80), Time::default());
    }

    #[test]
    fn checksums_skip_their_own_fields() {
        let mut set = vec![0u8; 96];
        set[0] = TYPE_FILE;
        set[32] = TYPE_STREAM;
        let sum = set_checksum(&set);
        set[2] = 0xAB;
        set[3] = 0xCD;
        assert_eq!(set_checksum(&set), sum);
        set[40] = 1;
        assert_ne!(set_checksum(&set), sum);
        let mut region = vec![0u8; 11 * 512];
        let sum = boot_checksum(&region);
        region[106] = 1;
        region[107] = 2;
        region[112] = 50;
        assert_eq!(boot_checksum(&region), sum);
        region[100] = 1;
        assert_ne!(boot_checksum(&region), sum);
    }

    fn geometry_for_tests() -> Geometry {
        Geometry {
            sector_shift: 9,
            cluster_shift: 3,
            fat_offset: 24 * 512,
            fat_bytes: 128 * 512,
            heap_offset: 4096 * 512,
            clusters: 1000,
            root_cluster: 5,
        }
    }

    /// A File entry set for `name`, with its checksum.
    fn entry_set(name: &str, attributes: u16, flags: u8, first: u32, len: u64, valid: u64) -> Vec<u8> {
        let units: Vec<u16> = name.encode_utf16().collect();
        let names = units.len().div_ceil(NAME_CHARS);
        let mut set = vec![0u8; (2 + names) * ENTRY];
        set[0] = TYPE_FILE;
        set[1] = (1 + names) as u8;
        set[4..6].copy_from_slice(&attributes.to_le_bytes());
        set[32] = TYPE_STREAM;
        set[33] = flags;
        set[35] = units.len() as u8;
        set[40..48].copy_from_slice(&valid.to_le_bytes());
        set[52..56].copy_from_slice(&first.to_le_bytes());
        set[56..64].copy_from_slice(&len.to_le_bytes());
        for (i, chunk) in units.chunks(NAME_CHARS).enumerate() {
            let e = &mut set[(2 + i) * ENTRY..(3 + i) * ENTRY];
            e[0] = TYPE_NAME;
            for (c, u) in chunk.iter().enumerate() {
                e[2 + 2 * c..4 + 2 * c].copy_from_slice(&u.to_le_bytes());
            }
        }
        let sum = set_checksum(&set);
        set[2..4].copy_from_slice(&sum.to_le_bytes());
        set
    }

    #[test]
    fn entry_sets_are_checked_before_use() {
        let g = geometry_for_tests();
        let long = "Zürich – café, a name longer than fifteen characters.txt";
        let mut dir = entry_set(long, 0x20, 3, 10, 5000, 4000);
        dir.extend(entry_set("sub", 0x11, 3, 20, 4096, 4096));
        dir.extend([0u8; 32]);
        let listed = files(&dir, &g).unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!((listed[0].name.as_str(), listed[0].kind, listed[0].read_only), (long, FileKind::File, false));
        assert_eq!((listed[0].data.len, listed[0].data.valid, listed[0].data.contiguous), (Some(5000), 4000, true));
        assert_eq!((listed[1].kind, listed[1].read_only), (FileKind::Dir, true));

        let bad = |set: Vec<u8>| files(&set, &g).unwrap_err();
        let mut wrong_sum = entry_set("a", 0x20, 3, 10, 10, 10);
        wrong_sum[40] ^= 1;
        assert!(bad(wrong_sum).contains("SetChecksum"));
        assert!(bad(entry_set("a", 0x20, 3, 10, 10, 11)).contains("ValidDataLength"));
        assert!(bad(entry_set("a", 0x20, 3, 1, 10, 10)).contains("outside"));
        assert!(bad(entry_set("a", 0x20, 3, 1001, 8192, 10)).contains("past the last"));
        assert!(files(&entry_set("a", 0x20, 3, 1000, 8192, 10), &g).is_ok());
        assert!(bad(entry_set("..", 0x10, 3, 10, 4096, 4096)).contains("named"));
        assert!(bad(entry_set("a/b", 0x20, 3, 10, 1, 1)).contains("named"));
        let mut short = entry_set("a name of twenty chars", 0x20, 3, 10, 1, 1);
        short.truncate(64);
        assert!(bad(short).contains("secondary entries"));
        // A stray secondary entry, and a critical primary of no known type.
        assert!(bad(vec![TYPE_NAME; 32]).contains("without its primary"));
        assert!(bad(vec![0x86; 32]).contains("does not know"));
    }

    #[test]
    fn a_boot_sector_describes_a_geometry_within_the_volume() {
        let mut boot = vec![0u8; 512];
        boot[..3].copy_from_slice(&[0xEB, 0x76, 0x90]);
        boot[3..11].copy_from_slice(b"EXFAT   ");
        boot[72..80].copy_from_slice(&131_072u64.to_le_bytes());
        boot[80..84].copy_from_slice(&2048u32.to_le_bytes());
        boot[84..88].copy_from_slice(&128u32.to_le_bytes());
        boot[88..92].copy_from_slice(&4096u32.to_le_bytes());
        boot[92..96].copy_from_slice(&15_872u32.to_le_bytes());
        boot[96..100].copy_from_slice(&5u32.to_le_bytes());
        boot[104..106].copy_from_slice(&0x100u16.to_le_bytes());
        boot[108] = 9;
        boot[109] = 3;
        boot[110] = 1;
        boot[510..].copy_from_slice(&[0x55, 0xAA]);
        let g = geometry(&boot, 64 << 20).unwrap();
        assert_eq!((g.cluster_size(), g.fat_offset, g.heap_offset, g.clusters), (4096, 2048 * 512, 4096 * 512, 15_872));
        assert!(geometry(&boot, (64 << 20) - 1).is_err());
        let broken = |at: usize, value: u8| {
            let mut b = boot.clone();
            b[at] = value;
            geometry(&b, 64 << 20).unwrap_err()
        };
        broken(109, 17); // clusters of 64 MiB
        broken(108, 13);
        broken(95, 1); // more clusters than the heap holds
        broken(99, 1); // the root far outside
        broken(110, 3);
        broken(20, 1);
    }
}
