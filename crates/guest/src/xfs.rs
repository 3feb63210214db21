//! XFS, read-only: v5 file systems (metadata CRCs) and v4 ones where it
//! costs little. Superblock and inodes (v1, v2 and v3 cores, big
//! timestamps, 64-bit extent counters), data and attribute forks in the
//! local, extent and B+tree formats (holes and unwritten extents read as
//! zeros), directories in the short-form, block and leaf/node formats
//! (their data blocks read linearly, as the format allows), inline and
//! remote symlinks, and extended attributes in the short-form, leaf and
//! node formats with local and remote values (POSIX ACLs converted to the
//! kernel's `system.posix_acl_*` format). Layout: the kernel's
//! `fs/xfs/libxfs/xfs_format.h`, `xfs_da_format.h` and the XFS
//! Algorithms & Data Structures document. Everything on disk is
//! big-endian except the CRCs, which are little-endian CRC32C.
//!
//! Why not the `lamxfs` or `xfs-core` crates: the first gives no owners,
//! times or links and checks no B+tree or directory CRC (a flipped bit
//! gave wrong bytes), the second reads zeros for files outside AG 0.
//!
//! The reader walks from the root inode only: it never needs the free
//! space or inode B+trees, so it reads no AGF, AGI or bitmap. Every v5
//! metadata block it reads (superblock, inode, B+tree, directory,
//! attribute, symlink and remote value blocks) must carry its magic, a
//! correct CRC, the file system's UUID, its own address and its owner;
//! every number is checked against the file system's bounds and every
//! offset against its block; trees are walked to a bounded depth and
//! node count. Damage is an error naming the inode or block, never a
//! panic, a hang or wrong bytes. The log is not replayed: a file system
//! not cleanly unmounted reads as its last checkpoint on disk.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::bytes::{be16, be32, be64};
use crate::error::{Error, Result};
use crate::fs::{DirEntry, FileKind, GuestFs, KernelAcl, NodeId, Stat, Time};
use crate::probe::Content;
use crate::runs::{read_runs, Run};
use crate::source::{read_vec, ByteSource, Window};

const SB_MAGIC: u32 = 0x5846_5342; // "XFSB"
const INODE_MAGIC: u16 = 0x494e; // "IN"
const BMAP_MAGIC_V4: u32 = 0x424d_4150; // "BMAP"
const BMAP_MAGIC_V5: u32 = 0x424d_4133; // "BMA3"
const DIR_BLOCK_V4: u32 = 0x5844_3242; // "XD2B"
const DIR_BLOCK_V5: u32 = 0x5844_4233; // "XDB3"
const DIR_DATA_V4: u32 = 0x5844_3244; // "XD2D"
const DIR_DATA_V5: u32 = 0x5844_4433; // "XDD3"
const SYMLINK_MAGIC: u32 = 0x5853_4c4d; // "XSLM"
const ATTR_REMOTE_MAGIC: u32 = 0x5841_524d; // "XARM"
const ATTR_LEAF_V4: u16 = 0xfbee;
const ATTR_LEAF_V5: u16 = 0x3bee;
const DA_NODE_V4: u16 = 0xfebe;
const DA_NODE_V5: u16 = 0x3ebe;

const VERSION_DIRV2: u16 = 0x2000;
const VERSION_MOREBITS: u16 = 0x8000;
const FEATURES2_FTYPE: u32 = 0x200;

/// The v5 incompatible features, by bit; the ones this reader handles
/// are in [`INCOMPAT_KNOWN`].
const INCOMPAT_NAMES: [(u32, &str); 9] = [
    (0x1, "ftype"),
    (0x2, "sparse inodes"),
    (0x4, "meta_uuid"),
    (0x8, "bigtime"),
    (0x10, "needsrepair"),
    (0x20, "nrext64"),
    (0x40, "exchange-range"),
    (0x80, "parent pointers"),
    (0x100, "metadir"),
];
const INCOMPAT_FTYPE: u32 = 0x1;
const INCOMPAT_META_UUID: u32 = 0x4;
/// ftype, sparse inodes, meta_uuid, bigtime, nrext64; exchange-range
/// only changes what the log may hold, and parent pointers are
/// attributes of a namespace this reader skips.
const INCOMPAT_KNOWN: u32 = 0x1 | 0x2 | 0x4 | 0x8 | 0x20 | 0x40 | 0x80;

const FORMAT_DEV: u8 = 0;
const FORMAT_LOCAL: u8 = 1;
const FORMAT_EXTENTS: u8 = 2;
const FORMAT_BTREE: u8 = 3;

const DIFLAG_REALTIME: u16 = 0x1;
const DIFLAG2_BIGTIME: u64 = 0x8;
const DIFLAG2_NREXT64: u64 = 0x10;

const ATTR_LOCAL: u8 = 0x1;
const ATTR_ROOT: u8 = 0x2;
const ATTR_SECURE: u8 = 0x4;
const ATTR_PARENT: u8 = 0x8;
const ATTR_INCOMPLETE: u8 = 0x80;

/// Sizes of the inode cores: v1 and v2 (v4 file systems), v3 (v5).
const CORE_V2: usize = 100;
const CORE_V3: usize = 176;
/// The headers of v5 B+tree, directory data, attribute leaf and node,
/// symlink and remote value blocks; of v4 ones.
const BMBT_HDR_V5: usize = 72;
const BMBT_HDR_V4: usize = 24;
const DIR_HDR_V5: usize = 64;
const DIR_HDR_V4: usize = 16;
const ATTR_LEAF_HDR_V5: usize = 80;
const ATTR_LEAF_HDR_V4: usize = 32;
const DA_NODE_HDR_V5: usize = 64;
const DA_NODE_HDR_V4: usize = 16;
const REMOTE_HDR: usize = 56;

/// Where directory leaf blocks start in a directory's address space:
/// data blocks lie below.
const DIR_LEAF_OFFSET: u64 = 32 << 30;
/// The longest symlink target XFS writes.
const MAX_SYMLINK: u64 = 1024;
/// Most bytes of one directory's data blocks read (a directory of
/// millions of entries is a few hundred MiB; more is damage).
const MAX_DIR_BYTES: u64 = 1 << 30;
/// The largest extended attribute value (the kernel's XATTR_SIZE_MAX).
const MAX_XATTR_VALUE: usize = 64 << 10;
/// Most attributes of one inode (a leaf of 64 KiB holds a few thousand).
const MAX_XATTRS: usize = 1 << 16;
/// Deepest B+tree of a fork (the kernel's limit for 64-bit counters is
/// lower) and of a dabtree (XFS_DA_NODE_MAXDEPTH).
const MAX_BMBT_LEVELS: u16 = 10;
const MAX_DA_DEPTH: usize = 5;
/// Most runs of one fork, and most tree blocks visited for one fork
/// (pointers of a damaged tree may all name one child).
const MAX_RUNS: usize = 1 << 22;
const MAX_TREE_NODES: usize = 1 << 17;
/// Forks whose block lists stay cached.
const CACHED_MAPS: usize = 256;

/// Where a v5 block keeps its stamps: CRC, UUID, owner and its own
/// address in 512-byte sectors.
#[derive(Clone, Copy)]
struct Stamps {
    crc: usize,
    uuid: usize,
    owner: usize,
    blkno: usize,
}

const BMBT_STAMPS: Stamps = Stamps { crc: 64, uuid: 40, owner: 56, blkno: 24 };
const DIR_STAMPS: Stamps = Stamps { crc: 4, uuid: 24, owner: 40, blkno: 8 };
const DA_STAMPS: Stamps = Stamps { crc: 12, uuid: 32, owner: 48, blkno: 16 };
const REMOTE_STAMPS: Stamps = Stamps { crc: 12, uuid: 16, owner: 32, blkno: 40 };

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Fork {
    Data,
    Attr,
}

pub struct Xfs {
    device: Window,
    name: String,
    v5: bool,
    block_size: u64,
    /// Blocks of the data section.
    blocks: u64,
    ag_blocks: u64,
    ag_count: u64,
    ag_blk_log: u32,
    inop_blog: u32,
    inode_size: usize,
    /// Bytes of a directory block (one or more file system blocks).
    dir_block: u64,
    root: u64,
    ftype: bool,
    /// The UUID every v5 metadata block carries.
    uuid: [u8; 16],
    label: Option<String>,
    maps: Mutex<HashMap<(u64, Fork), Arc<Runs>>>,
}

type Runs = Vec<Run>;

/// What a walk of one fork's extents knows: how to name the fork, and
/// how many extents its inode counts.
struct Walk<'a> {
    what: &'a dyn Fn() -> String,
    limit: usize,
}

/// An extended attribute as stored: its namespace flags, name and value.
type RawXattr = (u8, Vec<u8>, Vec<u8>);

/// What an inode says, as far as this reader uses it.
struct Inode {
    number: u64,
    mode: u16,
    uid: u32,
    gid: u32,
    nlink: u32,
    size: u64,
    flags: u16,
    atime: Time,
    mtime: Time,
    ctime: Time,
    format: u8,
    attr_format: u8,
    data_extents: u64,
    attr_extents: u64,
    data: Vec<u8>,
    /// The attribute fork, when the inode has one.
    attr: Option<Vec<u8>>,
}

impl Inode {
    fn kind(&self) -> Result<FileKind> {
        FileKind::from_mode(u32::from(self.mode)).ok_or_else(|| {
            let other = self.mode & 0xF000;
            Error::damaged(format!("inode {}", self.number), format!("file type {other:#x} is none of XFS's"))
        })
    }

    fn fork(&self, fork: Fork) -> (&[u8], u8, u64) {
        match fork {
            Fork::Data => (&self.data, self.format, self.data_extents),
            Fork::Attr => (self.attr.as_deref().unwrap_or(&[]), self.attr_format, self.attr_extents),
        }
    }
}

const CRC32C_TABLE: [u32; 256] = crc32c_table();

const fn crc32c_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

fn crc32c_update(mut crc: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        crc = CRC32C_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

/// Whether the little-endian CRC32C at `at` is that of `block` with the
/// CRC field itself taken as zeros (XFS's xfs_verify_cksum).
fn crc_ok(block: &[u8], at: usize) -> bool {
    if at + 4 > block.len() {
        return false;
    }
    let stored = u32::from_le_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]]);
    let crc = crc32c_update(!0, &block[..at]);
    let crc = crc32c_update(crc, &[0; 4]);
    !crc32c_update(crc, &block[at + 4..]) == stored
}

/// A packed 128-bit extent record: (logical block, file system block,
/// length, unwritten).
fn extent_record(rec: &[u8]) -> (u64, u64, u64, bool) {
    let (l0, l1) = (be64(rec, 0), be64(rec, 8));
    let unwritten = l0 >> 63 != 0;
    let logical = (l0 & ((1 << 63) - 1)) >> 9;
    let start = ((l0 & 0x1ff) << 43) | (l1 >> 21);
    let len = l1 & ((1 << 21) - 1);
    (logical, start, len, unwritten)
}

/// A timestamp: seconds and nanoseconds (signed seconds from 1970), or
/// with big timestamps nanoseconds since 1901-12-13.
fn timestamp(raw: u64, bigtime: bool) -> Time {
    if bigtime {
        Time {
            sec: (raw / 1_000_000_000) as i64 - (1 << 31),
            nsec: (raw % 1_000_000_000) as u32,
        }
    } else {
        Time {
            sec: i64::from((raw >> 32) as u32 as i32),
            nsec: (raw as u32).min(999_999_999),
        }
    }
}

/// XFS's ACL format (big-endian: a count, then tag, id and permissions
/// of 12 bytes each) as the kernel's `system.posix_acl_*` value
/// (little-endian: version 2, then tag, permissions and id).
fn acl_to_kernel(value: &[u8]) -> Option<Vec<u8>> {
    let count = be32(value.get(..4)?, 0) as usize;
    if value.len() != 4 + count.checked_mul(12)? {
        return None;
    }
    let mut acl = KernelAcl::new();
    for e in value[4..].chunks_exact(12) {
        acl.push(u16::try_from(be32(e, 0)).ok()?, be16(e, 8), || Some(be32(e, 4)))?;
    }
    Some(acl.into_bytes())
}

/// Opens the XFS file system on `device`; `name` names the volume in
/// messages.
pub fn open(device: Window, name: &str) -> Result<Box<dyn GuestFs>> {
    Ok(Box::new(Xfs::open(device, name)?))
}

impl Xfs {
    pub fn open(device: Window, name: &str) -> Result<Xfs> {
        let what = || format!("the XFS file system of {name}");
        let head = read_vec(&device, 0, 512).map_err(|e| Error::io(what(), e))?;
        if be32(&head, 0) != SB_MAGIC {
            return Err(Error::damaged(what(), "no XFS superblock (magic) at byte 0"));
        }
        let sector = u64::from(be16(&head, 102));
        if !(512..=32768).contains(&sector) || !sector.is_power_of_two() {
            return Err(Error::damaged(what(), format!("superblock: sectors of {sector} bytes")));
        }
        let sb = read_vec(&device, 0, sector as usize).map_err(|e| Error::io(what(), e))?;
        let versionnum = be16(&sb, 100);
        let v5 = match versionnum & 0xf {
            5 => true,
            4 => false,
            v => return Err(Error::unsupported(what(), format!("superblock version {v} (this reader knows 4 and 5)"))),
        };
        if v5 && !crc_ok(&sb, 224) {
            return Err(Error::damaged(what(), "the superblock's CRC does not match"));
        }
        let incompat = if v5 { be32(&sb, 216) } else { 0 };
        let unknown = incompat & !INCOMPAT_KNOWN;
        if unknown != 0 {
            let names: Vec<String> = (0..32)
                .map(|bit| 1u32 << bit)
                .filter(|b| unknown & b != 0)
                .map(|b| INCOMPAT_NAMES.iter().find(|(v, _)| *v == b).map_or(format!("{b:#x}"), |(_, n)| n.to_string()))
                .collect();
            return Err(Error::unsupported(what(), format!("incompatible features this reader does not handle: {}", names.join(", "))));
        }
        let features2 = if versionnum & VERSION_MOREBITS != 0 { be32(&sb, 200) } else { 0 };
        if !v5 && versionnum & VERSION_DIRV2 == 0 {
            return Err(Error::unsupported(what(), "version 1 directories (this reader knows version 2)"));
        }
        let block_size = u64::from(be32(&sb, 4));
        let blocks = be64(&sb, 8);
        let ag_blocks = u64::from(be32(&sb, 84));
        let ag_count = u64::from(be32(&sb, 88));
        let inode_size = u64::from(be16(&sb, 104));
        let inodes_per_block = u64::from(be16(&sb, 106));
        let (block_log, inode_log, inop_blog, ag_blk_log) = (u32::from(sb[120]), u32::from(sb[122]), u32::from(sb[123]), u32::from(sb[124]));
        let dir_blk_log = u32::from(sb[192]);
        let valid = (512..=65536).contains(&block_size)
            && block_size == 1 << block_log.min(31)
            && (256..=2048).contains(&inode_size)
            && inode_size == 1 << inode_log.min(31)
            && inode_size <= block_size
            && inodes_per_block == block_size / inode_size
            && inodes_per_block == 1 << inop_blog.min(31)
            && ag_blocks >= 8
            && ag_blk_log < 32
            && (1u64 << ag_blk_log) >= ag_blocks
            && (1u64 << ag_blk_log) < ag_blocks * 2
            && ag_count > 0
            && blocks > 0
            && blocks <= ag_count.saturating_mul(ag_blocks)
            && blocks > (ag_count - 1) * ag_blocks
            && dir_blk_log <= 16
            && (block_size << dir_blk_log) <= 65536
            && blocks.checked_mul(block_size).is_some_and(|b| b <= device.len());
        if !valid {
            return Err(Error::damaged(
                what(),
                format!(
                    "superblock: {blocks} blocks of {block_size} bytes in {ag_count} groups of {ag_blocks} (2^{ag_blk_log}) on a {}-byte volume, inodes of {inode_size} bytes, {inodes_per_block} a block, directory blocks of 2^{dir_blk_log} blocks",
                    device.len()
                ),
            ));
        }
        if sb[126] != 0 {
            return Err(Error::damaged(what(), "mkfs.xfs did not finish it (sb_inprogress)"));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&sb[if incompat & INCOMPAT_META_UUID != 0 { 248 } else { 32 }..][..16]);
        let label = sb[108..120].split(|&b| b == 0).next().map(|l| String::from_utf8_lossy(l).trim().to_string()).filter(|l| !l.is_empty());
        let fs = Xfs {
            device,
            name: name.to_string(),
            v5,
            block_size,
            blocks,
            ag_blocks,
            ag_count,
            ag_blk_log,
            inop_blog,
            inode_size: inode_size as usize,
            dir_block: block_size << dir_blk_log,
            root: be64(&sb, 56),
            ftype: if v5 { incompat & INCOMPAT_FTYPE != 0 } else { features2 & FEATURES2_FTYPE != 0 },
            uuid,
            label,
            maps: Mutex::new(HashMap::new()),
        };
        if !fs.valid_ino(fs.root) {
            return Err(Error::damaged(what(), format!("its root inode number {} lies outside it", fs.root)));
        }
        Ok(fs)
    }

    fn what(&self, ino: u64) -> String {
        format!("inode {ino} of {}", self.name)
    }

    /// Where inode `ino` lies: its linear block and its index there.
    fn ino_location(&self, ino: u64) -> Option<(u64, u64)> {
        let ag = ino >> (self.ag_blk_log + self.inop_blog);
        let ag_ino = ino & ((1u64 << (self.ag_blk_log + self.inop_blog)) - 1);
        let ag_block = ag_ino >> self.inop_blog;
        let index = ag_ino & ((1 << self.inop_blog) - 1);
        if ag >= self.ag_count || ag_block >= self.ag_blocks {
            return None;
        }
        let block = ag * self.ag_blocks + ag_block;
        (block < self.blocks).then_some((block, index))
    }

    fn valid_ino(&self, ino: u64) -> bool {
        ino != 0 && self.ino_location(ino).is_some()
    }

    /// A file system block number (AG in the high bits) as a linear
    /// block of the data section, checking that `len` blocks from it lie
    /// within its AG.
    fn linear(&self, fsb: u64, len: u64) -> Option<u64> {
        let ag = fsb >> self.ag_blk_log;
        let ag_block = fsb & ((1u64 << self.ag_blk_log) - 1);
        if ag >= self.ag_count || ag_block.checked_add(len)? > self.ag_blocks {
            return None;
        }
        let block = ag * self.ag_blocks + ag_block;
        (block + len <= self.blocks).then_some(block)
    }

    fn read_blocks(&self, block: u64, count: u64, what: &str) -> Result<Vec<u8>> {
        if block.checked_add(count).is_none_or(|end| end > self.blocks) {
            return Err(Error::damaged(what.to_string(), format!("blocks {block}+{count} lie outside the file system's {}", self.blocks)));
        }
        read_vec(&self.device, block * self.block_size, (count * self.block_size) as usize).map_err(|e| Error::io(what.to_string(), e))
    }

    /// Checks a v5 block's CRC, UUID, owner and address (the sector of
    /// its first block, `block`).
    fn check_stamps(&self, bytes: &[u8], s: Stamps, owner: u64, block: u64, what: &str) -> Result<()> {
        if !self.v5 {
            return Ok(());
        }
        let damaged = |why: &str| Err(Error::damaged(what.to_string(), why.to_string()));
        if !crc_ok(bytes, s.crc) {
            return damaged("its CRC does not match");
        }
        if bytes[s.uuid..s.uuid + 16] != self.uuid {
            return damaged("it carries another file system's UUID");
        }
        if be64(bytes, s.owner) != owner {
            return damaged(&format!("it belongs to inode {}", be64(bytes, s.owner)));
        }
        if be64(bytes, s.blkno) != block * (self.block_size / 512) {
            return damaged(&format!("it says it lies at sector {}", be64(bytes, s.blkno)));
        }
        Ok(())
    }

    fn inode(&self, ino: u64) -> Result<Inode> {
        let what = self.what(ino);
        let (block, index) = self.ino_location(ino).filter(|_| ino != 0).ok_or_else(|| Error::NotFound(format!("{what} (no such inode number)")))?;
        let at = block * self.block_size + index * self.inode_size as u64;
        let raw = read_vec(&self.device, at, self.inode_size).map_err(|e| Error::io(what.clone(), e))?;
        if be16(&raw, 0) != INODE_MAGIC {
            return Err(Error::damaged(what, "no inode magic"));
        }
        let version = raw[4];
        let core = match (self.v5, version) {
            (true, 3) => CORE_V3,
            (false, 1 | 2) => CORE_V2,
            _ => return Err(Error::damaged(what, format!("an inode of version {version} on a v{} file system", if self.v5 { 5 } else { 4 }))),
        };
        if self.v5 {
            if !crc_ok(&raw, 100) {
                return Err(Error::damaged(what, "its CRC does not match"));
            }
            if be64(&raw, 152) != ino || raw[160..176] != self.uuid {
                return Err(Error::damaged(what, format!("it says it is inode {} of another file system or place", be64(&raw, 152))));
            }
        }
        let mode = be16(&raw, 2);
        if mode == 0 {
            return Err(Error::damaged(what, "it is free"));
        }
        let flags2 = if version == 3 { be64(&raw, 120) } else { 0 };
        let bigtime = flags2 & DIFLAG2_BIGTIME != 0;
        let (data_extents, attr_extents) = if flags2 & DIFLAG2_NREXT64 != 0 {
            (be64(&raw, 24), u64::from(be32(&raw, 76)))
        } else {
            (u64::from(be32(&raw, 76)), u64::from(be16(&raw, 80)))
        };
        let fork_off = usize::from(raw[82]) * 8;
        let literal = self.inode_size - core;
        if fork_off >= literal {
            return Err(Error::damaged(what, format!("its attribute fork starts at byte {fork_off} of a {literal}-byte literal area")));
        }
        let data_end = if fork_off != 0 { core + fork_off } else { self.inode_size };
        Ok(Inode {
            number: ino,
            mode,
            uid: be32(&raw, 8),
            gid: be32(&raw, 12),
            nlink: if version == 1 { u32::from(be16(&raw, 6)) } else { be32(&raw, 16) },
            size: be64(&raw, 56),
            flags: be16(&raw, 90),
            atime: timestamp(be64(&raw, 32), bigtime),
            mtime: timestamp(be64(&raw, 40), bigtime),
            ctime: timestamp(be64(&raw, 48), bigtime),
            format: raw[5],
            attr_format: raw[83],
            data_extents,
            attr_extents,
            data: raw[core..data_end].to_vec(),
            attr: (fork_off != 0).then(|| raw[data_end..].to_vec()),
        })
    }

    /// The runs of an inode's fork, sorted (cached for the forks read
    /// last).
    fn runs(&self, inode: &Inode, fork: Fork) -> Result<Arc<Vec<Run>>> {
        let key = (inode.number, fork);
        if let Some(runs) = self.maps.lock().expect("xfs maps").get(&key) {
            return Ok(Arc::clone(runs));
        }
        let fork_name = if fork == Fork::Data { "data" } else { "attribute" };
        let what = || format!("{} ({fork_name} fork)", self.what(inode.number));
        let (bytes, format, extents) = inode.fork(fork);
        // A fork holds as many extents as its inode counts: no more are
        // read, however many a damaged tree names.
        if extents > MAX_RUNS as u64 {
            return Err(Error::damaged(what(), format!("{extents} extents (at most {MAX_RUNS} are read)")));
        }
        let walk = Walk { what: &what, limit: extents as usize };
        let mut runs = Vec::new();
        match format {
            FORMAT_EXTENTS => {
                let records = usize::try_from(extents).ok().filter(|n| n.checked_mul(16).is_some_and(|b| b <= bytes.len()));
                let records = records.ok_or_else(|| Error::damaged(what(), format!("{extents} extents in a fork of {} bytes", bytes.len())))?;
                for rec in bytes.chunks_exact(16).take(records) {
                    self.push_extent(rec, &mut runs, &walk)?;
                }
            }
            FORMAT_BTREE => self.bmbt_root(inode, bytes, &mut runs, &walk)?,
            other => return Err(Error::damaged(what(), format!("format {other} has no blocks"))),
        }
        if runs.len() as u64 != extents {
            return Err(Error::damaged(what(), format!("{} extents where the inode counts {extents}", runs.len())));
        }
        runs.sort_by_key(|r| r.logical);
        for pair in runs.windows(2) {
            if pair[0].logical + pair[0].len > pair[1].logical {
                return Err(Error::damaged(what(), format!("its extents overlap at block {}", pair[1].logical)));
            }
        }
        let runs = Arc::new(runs);
        let mut maps = self.maps.lock().expect("xfs maps");
        if maps.len() >= CACHED_MAPS {
            maps.clear();
        }
        maps.insert(key, Arc::clone(&runs));
        Ok(runs)
    }

    fn push_extent(&self, rec: &[u8], runs: &mut Vec<Run>, walk: &Walk) -> Result<()> {
        let (logical, start, len, unwritten) = extent_record(rec);
        let physical = self.linear(start, len).filter(|_| len > 0);
        let physical = physical.ok_or_else(|| Error::damaged((walk.what)(), format!("an extent of {len} blocks at block {start:#x}, outside the file system")))?;
        if runs.len() >= walk.limit {
            return Err(Error::damaged((walk.what)(), format!("more extents than the {} its inode counts", walk.limit)));
        }
        runs.push(Run {
            logical,
            len,
            physical: (!unwritten).then_some(physical),
        });
        Ok(())
    }

    /// The B+tree root in the inode: level, count, keys, then pointers
    /// after as many keys as the fork could hold.
    fn bmbt_root(&self, inode: &Inode, fork: &[u8], runs: &mut Vec<Run>, walk: &Walk) -> Result<()> {
        let what = walk.what;
        if fork.len() < 4 {
            return Err(Error::damaged(what(), "a B+tree root in a fork of less than 4 bytes"));
        }
        let (level, count) = (be16(fork, 0), usize::from(be16(fork, 2)));
        let max = (fork.len() - 4) / 16;
        if level == 0 || level > MAX_BMBT_LEVELS || count == 0 || count > max {
            return Err(Error::damaged(what(), format!("a B+tree root of level {level} with {count} entries")));
        }
        let mut visited = 0;
        for i in 0..count {
            let ptr = be64(fork, 4 + max * 8 + i * 8);
            self.bmbt_node(inode, ptr, level - 1, runs, &mut visited, walk)?;
        }
        Ok(())
    }

    fn bmbt_node(&self, inode: &Inode, fsb: u64, level: u16, runs: &mut Vec<Run>, visited: &mut usize, walk: &Walk) -> Result<()> {
        let what = walk.what;
        // Every leaf holds an extent and every node a leaf below it: a
        // tree of more blocks than that names some twice.
        *visited += 1;
        let most = MAX_TREE_NODES.min(2 * walk.limit + usize::from(MAX_BMBT_LEVELS));
        if *visited > most {
            return Err(Error::damaged(what(), format!("a B+tree of more than {most} blocks")));
        }
        let block = self.linear(fsb, 1).ok_or_else(|| Error::damaged(what(), format!("a B+tree block at {fsb:#x}, outside the file system")))?;
        let node_what = format!("{} (B+tree block {block})", what());
        let bytes = self.read_blocks(block, 1, &node_what)?;
        let (magic, header) = if self.v5 { (BMAP_MAGIC_V5, BMBT_HDR_V5) } else { (BMAP_MAGIC_V4, BMBT_HDR_V4) };
        if be32(&bytes, 0) != magic {
            return Err(Error::damaged(node_what, "no B+tree block magic"));
        }
        self.check_stamps(&bytes, BMBT_STAMPS, inode.number, block, &node_what)?;
        let (node_level, count) = (be16(&bytes, 4), usize::from(be16(&bytes, 6)));
        let max = (bytes.len() - header) / 16;
        if node_level != level || count == 0 || count > max {
            return Err(Error::damaged(node_what, format!("level {node_level} (expected {level}) with {count} entries")));
        }
        if level == 0 {
            for rec in bytes[header..].chunks_exact(16).take(count) {
                self.push_extent(rec, runs, walk)?;
            }
        } else {
            for i in 0..count {
                let ptr = be64(&bytes, header + max * 8 + i * 8);
                self.bmbt_node(inode, ptr, level - 1, runs, visited, walk)?;
            }
        }
        Ok(())
    }

    /// `count` blocks of a fork from logical block `logical`, which must
    /// all be written, and the linear block of the first.
    fn fork_blocks(&self, runs: &[Run], logical: u64, count: u64, what: &str) -> Result<(Vec<u8>, u64)> {
        let mut out = Vec::with_capacity((count * self.block_size) as usize);
        let mut first = None;
        let mut at = logical;
        while at < logical + count {
            let i = runs.partition_point(|r| r.logical + r.len <= at);
            let run = runs.get(i).filter(|r| r.logical <= at);
            let Some(physical) = run.and_then(|r| r.physical.map(|p| (p + (at - r.logical), r.logical + r.len))) else {
                return Err(Error::damaged(what.to_string(), format!("its block {at} is a hole or unwritten")));
            };
            let (block, run_end) = physical;
            let n = run_end.min(logical + count) - at;
            out.extend(self.read_blocks(block, n, what)?);
            first.get_or_insert(block);
            at += n;
        }
        Ok((out, first.unwrap_or(0)))
    }

    /// Bytes of an inode's data fork at `offset`: holes and unwritten
    /// extents read as zeros; fewer only at the inode's end.
    fn read_inode_at(&self, inode: &Inode, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if offset >= inode.size {
            return Ok(0);
        }
        let len = (buf.len() as u64).min(inode.size - offset) as usize;
        let buf = &mut buf[..len];
        if inode.format == FORMAT_LOCAL {
            let data = inode.data.get(..inode.size as usize).ok_or_else(|| Error::damaged(self.what(inode.number), format!("{} bytes in a fork of {}", inode.size, inode.data.len())))?;
            buf.copy_from_slice(&data[offset as usize..offset as usize + len]);
            return Ok(len);
        }
        let runs = self.runs(inode, Fork::Data)?;
        read_runs(&self.device, self.block_size, &runs, offset, buf).map_err(|e| Error::io(self.what(inode.number), e))?;
        Ok(len)
    }

    fn dir_entry(&self, inode: &Inode, name: &[u8], ino: u64, out: &mut Vec<DirEntry>) -> Result<()> {
        if name.is_empty() || name.contains(&b'/') || name.contains(&0) || !self.valid_ino(ino) {
            return Err(Error::damaged(
                format!("directory {} of {}", inode.number, self.name),
                format!("entry {:?} names inode {ino}", String::from_utf8_lossy(name)),
            ));
        }
        if name != b"." && name != b".." {
            out.push(DirEntry { name: name.to_vec(), node: ino });
        }
        Ok(())
    }

    /// A short-form directory in the inode: a count, the parent, then
    /// entries of name, optional file type and inode number (4 bytes,
    /// or 8 when the header says some need them).
    fn short_dir(&self, inode: &Inode, out: &mut Vec<DirEntry>) -> Result<()> {
        let damaged = |why: String| Error::damaged(format!("directory {} of {}", inode.number, self.name), why);
        let bytes = inode.data.get(..inode.size as usize).ok_or_else(|| damaged(format!("{} bytes in a fork of {}", inode.size, inode.data.len())))?;
        if bytes.len() < 2 {
            return Err(damaged("a short-form header of less than 2 bytes".into()));
        }
        let count = usize::from(bytes[0]);
        let wide = bytes[1] != 0;
        let ino_len = if wide { 8 } else { 4 };
        let mut at = 2 + ino_len;
        for i in 0..count {
            let name_len = usize::from(*bytes.get(at).ok_or_else(|| damaged(format!("entry {i} starts past its end")))?);
            let name_at = at + 3;
            let ino_at = name_at + name_len + usize::from(self.ftype);
            let raw = bytes.get(ino_at..ino_at + ino_len).ok_or_else(|| damaged(format!("entry {i} runs past its end")))?;
            let ino = if wide { be64(raw, 0) & 0x00ff_ffff_ffff_ffff } else { u64::from(be32(raw, 0)) };
            self.dir_entry(inode, &bytes[name_at..name_at + name_len], ino, out)?;
            at = ino_at + ino_len;
        }
        Ok(())
    }

    /// The entries of a directory in blocks: every data block below the
    /// leaf offset, read linearly (a block directory's single block ends
    /// in its leaf entries and tail; leaf and free blocks are not read).
    fn block_dir(&self, inode: &Inode, out: &mut Vec<DirEntry>) -> Result<()> {
        let what = format!("directory {} of {}", inode.number, self.name);
        let runs = self.runs(inode, Fork::Data)?;
        let per = self.dir_block / self.block_size;
        let leaf_block = DIR_LEAF_OFFSET / self.block_size;
        let mut dir_blocks = Vec::new();
        for r in runs.iter().filter(|r| r.physical.is_some() && r.logical < leaf_block) {
            let (first, last) = (r.logical / per, (r.logical + r.len - 1).min(leaf_block - 1) / per);
            for d in first..=last {
                if dir_blocks.last() != Some(&d) {
                    dir_blocks.push(d);
                }
                if dir_blocks.len() as u64 > MAX_DIR_BYTES / self.dir_block {
                    return Err(Error::damaged(what, format!("more than {MAX_DIR_BYTES} bytes of directory blocks")));
                }
            }
        }
        for d in dir_blocks {
            let block_what = format!("{what} (directory block {d})");
            let (bytes, first) = self.fork_blocks(&runs, d * per, per, &block_what)?;
            let magic = be32(&bytes, 0);
            let (block_magic, data_magic, header) = if self.v5 { (DIR_BLOCK_V5, DIR_DATA_V5, DIR_HDR_V5) } else { (DIR_BLOCK_V4, DIR_DATA_V4, DIR_HDR_V4) };
            let end = if magic == block_magic && d == 0 {
                // The tail: a count of leaf entries (8 bytes each) before it.
                let leaves = be32(&bytes, bytes.len() - 8) as usize;
                bytes.len().checked_sub(8 + leaves.saturating_mul(8)).filter(|&e| e >= header).ok_or_else(|| Error::damaged(block_what.clone(), format!("{leaves} leaf entries")))?
            } else if magic == data_magic {
                bytes.len()
            } else {
                return Err(Error::damaged(block_what, format!("magic {magic:#x} is no directory data block's")));
            };
            self.check_stamps(&bytes, DIR_STAMPS, inode.number, first, &block_what)?;
            self.dir_data(inode, &bytes, header, end, &block_what, out)?;
        }
        Ok(())
    }

    /// Entries between `start` and `end` of a directory data block: in
    /// use (inode, name length, name, optional file type, tag) or unused
    /// (0xffff, length), each a multiple of 8 bytes ending in a tag that
    /// holds its own offset.
    fn dir_data(&self, inode: &Inode, bytes: &[u8], start: usize, end: usize, what: &str, out: &mut Vec<DirEntry>) -> Result<()> {
        let damaged = |at: usize, why: String| Error::damaged(what.to_string(), format!("the entry at byte {at}: {why}"));
        let mut at = start;
        while at < end {
            if at + 8 > end {
                return Err(damaged(at, "runs past the data".into()));
            }
            if be16(bytes, at) == 0xffff {
                let len = usize::from(be16(bytes, at + 2));
                if len < 8 || len % 8 != 0 || at + len > end {
                    return Err(damaged(at, format!("unused space of {len} bytes")));
                }
                at += len;
                continue;
            }
            if at + 16 > end {
                return Err(damaged(at, "runs past the data".into()));
            }
            let name_len = usize::from(bytes[at + 8]);
            let len = (8 + 1 + name_len + usize::from(self.ftype) + 2).div_ceil(8) * 8;
            if at + len > end {
                return Err(damaged(at, format!("a name of {name_len} bytes runs past the data")));
            }
            if usize::from(be16(bytes, at + len - 2)) != at {
                return Err(damaged(at, "its tag names another offset".into()));
            }
            self.dir_entry(inode, &bytes[at + 9..at + 9 + name_len], be64(bytes, at), out)?;
            at += len;
        }
        Ok(())
    }

    fn remote_link(&self, inode: &Inode) -> Result<Vec<u8>> {
        let what = self.what(inode.number);
        let runs = self.runs(inode, Fork::Data)?;
        let mut out = Vec::new();
        for r in runs.iter() {
            if r.len > 4 {
                return Err(Error::damaged(what, format!("a symlink extent of {} blocks", r.len)));
            }
            let (bytes, first) = self.fork_blocks(&runs, r.logical, r.len, &what)?;
            let chunk = if self.v5 {
                if be32(&bytes, 0) != SYMLINK_MAGIC {
                    return Err(Error::damaged(what, format!("symlink block {first} has no magic")));
                }
                self.check_stamps(&bytes, REMOTE_STAMPS, inode.number, first, &what)?;
                let (offset, len) = (be32(&bytes, 4) as usize, be32(&bytes, 8) as usize);
                if offset != out.len() || REMOTE_HDR + len > bytes.len() {
                    return Err(Error::damaged(what, format!("symlink block {first} holds {len} bytes at {offset}")));
                }
                &bytes[REMOTE_HDR..REMOTE_HDR + len]
            } else {
                &bytes[..]
            };
            out.extend_from_slice(chunk);
        }
        if (out.len() as u64) < inode.size {
            return Err(Error::damaged(what, format!("a symlink of {} bytes with {} in its blocks", inode.size, out.len())));
        }
        out.truncate(inode.size as usize);
        Ok(out)
    }

    /// Extended attributes as stored: (flags, name, value).
    fn raw_xattrs(&self, inode: &Inode) -> Result<Vec<RawXattr>> {
        let Some(fork) = &inode.attr else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        match inode.attr_format {
            FORMAT_LOCAL => self.short_attrs(inode, fork, &mut out)?,
            FORMAT_EXTENTS | FORMAT_BTREE => {
                if inode.attr_extents == 0 {
                    return Ok(out);
                }
                let runs = self.runs(inode, Fork::Attr)?;
                let mut seen = HashSet::new();
                self.attr_block(inode, &runs, 0, 0, &mut seen, &mut out)?;
            }
            other => return Err(Error::damaged(self.what(inode.number), format!("attribute fork format {other}"))),
        }
        Ok(out)
    }

    /// Short-form attributes: a header (total size, count), then entries
    /// of name length, value length, flags, name and value.
    fn short_attrs(&self, inode: &Inode, fork: &[u8], out: &mut Vec<RawXattr>) -> Result<()> {
        let damaged = |why: String| Error::damaged(self.what(inode.number), format!("short-form attributes: {why}"));
        if fork.len() < 4 {
            return Err(damaged("no header".into()));
        }
        let total = usize::from(be16(fork, 0));
        let bytes = fork.get(..total).ok_or_else(|| damaged(format!("{total} bytes in a fork of {}", fork.len())))?;
        let mut at = 4;
        for i in 0..fork[2] {
            let head = bytes.get(at..at + 3).ok_or_else(|| damaged(format!("entry {i} starts past the end")))?;
            let (name_len, value_len, flags) = (usize::from(head[0]), usize::from(head[1]), head[2]);
            let name = bytes.get(at + 3..at + 3 + name_len).ok_or_else(|| damaged(format!("entry {i} runs past the end")))?;
            let value = bytes.get(at + 3 + name_len..at + 3 + name_len + value_len).ok_or_else(|| damaged(format!("entry {i} runs past the end")))?;
            out.push((flags, name.to_vec(), value.to_vec()));
            at += 3 + name_len + value_len;
        }
        Ok(())
    }

    /// An attribute leaf or node block at logical `logical` of the
    /// attribute fork; a node's children are walked in order.
    fn attr_block(&self, inode: &Inode, runs: &[Run], logical: u64, depth: usize, seen: &mut HashSet<u64>, out: &mut Vec<RawXattr>) -> Result<()> {
        let what = format!("{} (attribute block {logical})", self.what(inode.number));
        if depth > MAX_DA_DEPTH || !seen.insert(logical) || seen.len() > MAX_TREE_NODES {
            return Err(Error::damaged(what, "the attribute tree is too deep or names a block twice"));
        }
        let (bytes, first) = self.fork_blocks(runs, logical, 1, &what)?;
        let magic = be16(&bytes, 8);
        let (leaf, node) = if self.v5 { (ATTR_LEAF_V5, DA_NODE_V5) } else { (ATTR_LEAF_V4, DA_NODE_V4) };
        if magic != leaf && magic != node {
            return Err(Error::damaged(what, format!("magic {magic:#x} is no attribute leaf's or node's")));
        }
        self.check_stamps(&bytes, DA_STAMPS, inode.number, first, &what)?;
        if magic == leaf {
            return self.attr_leaf(inode, runs, &bytes, &what, out);
        }
        let header = if self.v5 { DA_NODE_HDR_V5 } else { DA_NODE_HDR_V4 };
        let count_at = header - if self.v5 { 8 } else { 4 };
        let count = usize::from(be16(&bytes, count_at));
        if header + count * 8 > bytes.len() {
            return Err(Error::damaged(what, format!("a node of {count} entries")));
        }
        for i in 0..count {
            let child = u64::from(be32(&bytes, header + i * 8 + 4));
            self.attr_block(inode, runs, child, depth + 1, seen, out)?;
        }
        Ok(())
    }

    /// An attribute leaf: entries (hash, offset of name and value,
    /// flags) after the header, names and values from the block's end;
    /// a remote value lies in blocks of its own.
    fn attr_leaf(&self, inode: &Inode, runs: &[Run], bytes: &[u8], what: &str, out: &mut Vec<RawXattr>) -> Result<()> {
        let damaged = |why: String| Error::damaged(what.to_string(), why);
        let header = if self.v5 { ATTR_LEAF_HDR_V5 } else { ATTR_LEAF_HDR_V4 };
        let count = usize::from(be16(bytes, if self.v5 { 56 } else { 12 }));
        if header + count * 8 > bytes.len() {
            return Err(damaged(format!("a leaf of {count} entries")));
        }
        for i in 0..count {
            let e = &bytes[header + i * 8..header + i * 8 + 8];
            let (at, flags) = (usize::from(be16(e, 4)), e[6]);
            if flags & ATTR_INCOMPLETE != 0 {
                continue;
            }
            if out.len() >= MAX_XATTRS {
                return Err(damaged(format!("more than {MAX_XATTRS} attributes")));
            }
            let field = |from: usize, len: usize| bytes.get(at + from..at + from + len).ok_or_else(|| damaged(format!("entry {i} at byte {at} runs past the block")));
            if flags & ATTR_LOCAL != 0 {
                let head = field(0, 3)?;
                let (value_len, name_len) = (usize::from(be16(head, 0)), usize::from(head[2]));
                let name = field(3, name_len)?;
                let value = field(3 + name_len, value_len)?;
                out.push((flags, name.to_vec(), value.to_vec()));
            } else {
                let head = field(0, 9)?;
                let (value_block, value_len, name_len) = (u64::from(be32(head, 0)), be32(head, 4) as usize, usize::from(head[8]));
                let name = field(9, name_len)?.to_vec();
                if value_len > MAX_XATTR_VALUE {
                    return Err(damaged(format!("a value of {value_len} bytes (the kernel allows {MAX_XATTR_VALUE})")));
                }
                let value = self.remote_value(inode, runs, value_block, value_len, what)?;
                out.push((flags, name, value));
            }
        }
        Ok(())
    }

    /// A remote attribute value from logical block `first`: in v5 each
    /// block starts with a header of its own.
    fn remote_value(&self, inode: &Inode, runs: &[Run], first: u64, len: usize, what: &str) -> Result<Vec<u8>> {
        let space = self.block_size as usize - if self.v5 { REMOTE_HDR } else { 0 };
        let blocks = len.div_ceil(space) as u64;
        let mut out = Vec::with_capacity(len);
        for b in 0..blocks {
            let (bytes, linear) = self.fork_blocks(runs, first + b, 1, what)?;
            let want = space.min(len - out.len());
            if self.v5 {
                if be32(&bytes, 0) != ATTR_REMOTE_MAGIC {
                    return Err(Error::damaged(what.to_string(), format!("remote value block {linear} has no magic")));
                }
                self.check_stamps(&bytes, REMOTE_STAMPS, inode.number, linear, what)?;
                if be32(&bytes, 4) as usize != out.len() || be32(&bytes, 8) as usize != want {
                    return Err(Error::damaged(what.to_string(), format!("remote value block {linear} holds other bytes of the value")));
                }
                out.extend_from_slice(&bytes[REMOTE_HDR..REMOTE_HDR + want]);
            } else {
                out.extend_from_slice(&bytes[..want]);
            }
        }
        Ok(out)
    }
}

impl GuestFs for Xfs {
    fn describe(&self) -> (Content, Option<String>) {
        (Content::Xfs, self.label.clone())
    }

    fn root(&self) -> NodeId {
        self.root
    }

    fn stat(&self, node: NodeId) -> Result<Stat> {
        let inode = self.inode(node)?;
        let kind = inode.kind()?;
        let rdev = if matches!(kind, FileKind::CharDevice | FileKind::BlockDevice) {
            if inode.format != FORMAT_DEV || inode.data.len() < 4 {
                return Err(Error::damaged(self.what(node), format!("a device node with data fork format {}", inode.format)));
            }
            // The old System V encoding: 14 bits of major, 18 of minor.
            let dev = be32(&inode.data, 0);
            crate::fs::makedev((dev >> 18) & 0x3fff, dev & 0x3ffff)
        } else {
            0
        };
        Ok(Stat {
            node,
            kind,
            size: inode.size,
            mode: u32::from(inode.mode & 0o7777),
            uid: inode.uid,
            gid: inode.gid,
            nlink: inode.nlink.max(1),
            atime: inode.atime,
            mtime: inode.mtime,
            ctime: inode.ctime,
            rdev,
        })
    }

    fn read_dir(&self, node: NodeId) -> Result<Vec<DirEntry>> {
        let inode = self.inode(node)?;
        if inode.kind()? != FileKind::Dir {
            return Err(Error::NotADirectory(self.what(node)));
        }
        let mut out = Vec::new();
        match inode.format {
            FORMAT_LOCAL => self.short_dir(&inode, &mut out)?,
            FORMAT_EXTENTS | FORMAT_BTREE => self.block_dir(&inode, &mut out)?,
            other => return Err(Error::damaged(self.what(node), format!("a directory of data fork format {other}"))),
        }
        Ok(out)
    }

    fn read_link(&self, node: NodeId) -> Result<Vec<u8>> {
        let inode = self.inode(node)?;
        if inode.kind()? != FileKind::Symlink {
            return Err(Error::unsupported(self.what(node), "not a symbolic link"));
        }
        if inode.size == 0 || inode.size > MAX_SYMLINK {
            return Err(Error::damaged(self.what(node), format!("a symlink of {} bytes", inode.size)));
        }
        match inode.format {
            FORMAT_LOCAL => inode
                .data
                .get(..inode.size as usize)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| Error::damaged(self.what(node), format!("an inline symlink of {} bytes", inode.size))),
            FORMAT_EXTENTS | FORMAT_BTREE => self.remote_link(&inode),
            other => Err(Error::damaged(self.what(node), format!("a symlink of data fork format {other}"))),
        }
    }

    fn xattrs(&self, node: NodeId) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let inode = self.inode(node)?;
        let mut out = Vec::new();
        for (flags, name, value) in self.raw_xattrs(&inode)? {
            let acl: Option<&[u8]> = match (flags & ATTR_ROOT != 0, name.as_slice()) {
                (true, b"SGI_ACL_FILE") => Some(b"system.posix_acl_access"),
                (true, b"SGI_ACL_DEFAULT") => Some(b"system.posix_acl_default"),
                _ => None,
            };
            if let Some(full) = acl {
                match acl_to_kernel(&value) {
                    Some(kernel) => out.push((full.to_vec(), kernel)),
                    None => tracing::warn!(inode = node, "an ACL in a format this reader does not know was skipped"),
                }
                continue;
            }
            let prefix: &[u8] = match flags & (ATTR_ROOT | ATTR_SECURE | ATTR_PARENT) {
                0 => b"user.",
                ATTR_ROOT => b"trusted.",
                ATTR_SECURE => b"security.",
                other => {
                    tracing::debug!(inode = node, flags = other, "extended attribute of an unknown namespace skipped");
                    continue;
                }
            };
            let mut full = prefix.to_vec();
            full.extend_from_slice(&name);
            out.push((full, value));
        }
        Ok(out)
    }

    fn read_at(&self, node: NodeId, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let inode = self.inode(node)?;
        if inode.kind()? != FileKind::File {
            return Err(Error::unsupported(self.what(node), "not a regular file"));
        }
        if inode.flags & DIFLAG_REALTIME != 0 {
            return Err(Error::unsupported(self.what(node), "its data lies on the realtime device"));
        }
        self.read_inode_at(&inode, offset, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(!crc32c_update(!0, b"123456789"), 0xE306_9283);
        let mut block = b"abcd\0\0\0\0efgh".to_vec();
        let crc = !crc32c_update(!0, &block);
        block[4..8].copy_from_slice(&crc.to_le_bytes());
        assert!(crc_ok(&block, 4));
        block[10] ^= 1;
        assert!(!crc_ok(&block, 4));
        assert!(!crc_ok(&block, 10));
    }

    #[test]
    fn extent_records_unpack_their_fields() {
        // Unwritten, logical 5, start block 0x1_0000_0003 (AG bits high), 7 blocks.
        let (logical, start, len) = (5u64, 0x1_0000_0003u64, 7u64);
        let l0 = (1u64 << 63) | (logical << 9) | (start >> 43);
        let l1 = (start << 21) | len;
        let mut rec = l0.to_be_bytes().to_vec();
        rec.extend(l1.to_be_bytes());
        assert_eq!(extent_record(&rec), (logical, start, len, true));
    }

    #[test]
    fn timestamps_decode_both_encodings() {
        let t = timestamp((u64::from((-5i32) as u32) << 32) | 42, false);
        assert_eq!((t.sec, t.nsec), (-5, 42));
        let t = timestamp(((1u64 << 31) + 1_700_000_000) * 1_000_000_000 + 7, true);
        assert_eq!((t.sec, t.nsec), (1_700_000_000, 7));
    }

    #[test]
    fn acls_become_the_kernels_format() {
        let mut xfs = 2u32.to_be_bytes().to_vec();
        xfs.extend([0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0, 6, 0, 0]); // user::rw-
        xfs.extend([0, 0, 0, 2, 0, 0, 0x04, 0xd2, 0, 4, 0, 0]); // user:1234:r--
        let kernel = acl_to_kernel(&xfs).unwrap();
        assert_eq!(kernel.len(), 4 + 2 * 8);
        assert_eq!(&kernel[..4], &2u32.to_le_bytes());
        assert_eq!(&kernel[4..12], &[0x01, 0, 6, 0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(&kernel[12..20], &[0x02, 0, 4, 0, 0xd2, 0x04, 0, 0]);
        assert!(acl_to_kernel(&xfs[..20]).is_none());
        assert!(acl_to_kernel(&[0, 0, 0, 1, 0, 0, 0, 0x40, 0, 0, 0, 0, 0, 0, 0, 0]).is_none());
    }

    #[test]
    fn device_numbers_become_makedev() {
        assert_eq!(crate::fs::makedev(8, 1), 0x801);
        assert_eq!(crate::fs::makedev(259, 300), (259 << 8) | (300 & 0xff) | ((300 & !0xff) << 12));
    }
}
