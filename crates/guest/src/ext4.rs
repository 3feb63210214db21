//! ext2, ext3 and ext4, read-only: the superblock and group descriptors
//! (32- and 64-bit, `meta_bg`), inodes with their nanosecond times, data
//! by extent trees or ext2/3 block maps (holes and unwritten extents read
//! as zeros), inline data, directories (linear and htree, read linearly as
//! the format allows), fast and slow symlinks, and extended attributes in
//! the inode and in their block (POSIX ACLs converted to the kernel's
//! `system.posix_acl_*` format). Layout: the kernel's
//! `Documentation/filesystems/ext4/` and `fs/ext4/ext4.h`.
//!
//! Why not the `ext4-view` crate: it reads data well, but does not give an
//! inode's number, link count or extended attributes, which hard links
//! and a faithful restore need. It is this reader's test oracle instead
//! (see `tests/filesystems.rs`).
//!
//! Every number read is checked before use: block numbers against the
//! file system, offsets against their block, extent trees against a
//! depth limit; a damaged structure is an error naming the inode or
//! block, never a panic or wrong bytes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::bytes::{le16, le32};
use crate::error::{Error, Result};
use crate::fs::{DirEntry, FileKind, GuestFs, KernelAcl, NodeId, Stat, Time};
use crate::probe::Content;
use crate::runs::{read_runs, Run};
use crate::source::{read_vec, ByteSource, Window};

const MAGIC: u16 = 0xEF53;
const ROOT: u32 = 2;

const INCOMPAT_COMPRESSION: u32 = 0x1;
const INCOMPAT_FILETYPE: u32 = 0x2;
const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_ENCRYPT: u32 = 0x10000;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_HUGE_FILE: u32 = 0x8;

const FLAG_ENCRYPT: u32 = 0x800;
const FLAG_HUGE_FILE: u32 = 0x40000;
const FLAG_EXTENTS: u32 = 0x80000;
const FLAG_EA_INODE: u32 = 0x200000;
const FLAG_INLINE_DATA: u32 = 0x1000_0000;

const EXTENT_MAGIC: u16 = 0xF30A;
const MAX_EXTENT_DEPTH: u16 = 5;
const XATTR_MAGIC: u32 = 0xEA02_0000;
/// Most group descriptors read (a 2 PiB file system of 4 KiB blocks).
const MAX_GROUPS: u64 = 1 << 24;
/// Most bytes of one directory read (a directory of millions of entries
/// is a few hundred MiB; more is damage).
const MAX_DIR_BYTES: u64 = 1 << 30;
/// The largest extended attribute value (the kernel's XATTR_SIZE_MAX).
const MAX_XATTR_VALUE: usize = 64 << 10;
/// Most runs of one file's blocks, and most extent tree nodes visited
/// for one file (index entries of a damaged tree may all name one child).
const MAX_RUNS: usize = 1 << 22;
const MAX_EXTENT_NODES: usize = 1 << 16;
/// Files whose block lists stay cached.
const CACHED_MAPS: usize = 256;



pub struct Ext4 {
    device: Window,
    name: String,
    block_size: u64,
    blocks: u64,
    inodes: u32,
    inodes_per_group: u32,
    inode_size: u64,
    /// Each group's inode table, by block.
    inode_tables: Vec<u64>,
    filetype: bool,
    huge_file: bool,
    label: Option<String>,
    maps: Mutex<HashMap<u32, Arc<Vec<Run>>>>,
}

/// What an inode says, as far as this reader uses it.
#[derive(Clone)]
struct Inode {
    number: u32,
    mode: u16,
    uid: u32,
    gid: u32,
    size: u64,
    links: u16,
    flags: u32,
    blocks_512: u64,
    file_acl: u64,
    block: [u8; 60],
    atime: Time,
    mtime: Time,
    ctime: Time,
    /// The in-inode extended attribute area (after `i_extra_isize`).
    xattr_area: Vec<u8>,
}

impl Inode {
    fn kind(&self) -> Result<FileKind> {
        FileKind::from_mode(u32::from(self.mode)).ok_or_else(|| {
            let other = self.mode & 0xF000;
            Error::damaged(format!("inode {}", self.number), format!("file type {other:#x} is none of ext4's"))
        })
    }
}

fn time(seconds: u32, extra: Option<u32>) -> Time {
    // The extra field: two bits extending the seconds past 2038, thirty
    // bits of nanoseconds.
    let base = i64::from(seconds as i32);
    match extra {
        Some(extra) => Time {
            sec: base + (i64::from(extra & 3) << 32),
            nsec: (extra >> 2).min(999_999_999),
        },
        None => Time { sec: base, nsec: 0 },
    }
}

impl Ext4 {
    pub fn open(device: Window, name: &str) -> Result<Ext4> {
        let what = || format!("the ext file system of {name}");
        let sb = read_vec(&device, 1024, 1024).map_err(|e| Error::io(what(), e))?;
        if le16(&sb, 56) != MAGIC {
            return Err(Error::damaged(what(), "no ext2/3/4 superblock (magic) at 1 KiB"));
        }
        let log = le32(&sb, 24);
        if log > 6 {
            return Err(Error::damaged(what(), format!("block size 2^{} KiB", log)));
        }
        let block_size = 1024u64 << log;
        let incompat = le32(&sb, 96);
        let ro_compat = le32(&sb, 100);
        if incompat & (INCOMPAT_COMPRESSION | INCOMPAT_JOURNAL_DEV) != 0 {
            return Err(Error::unsupported(what(), format!("incompatible features {incompat:#x} (compression or a journal device)")));
        }
        if incompat & INCOMPAT_ENCRYPT != 0 {
            tracing::info!(volume = name, "ext4 with encryption: encrypted files and directories read as errors");
        }
        let is_64 = incompat & INCOMPAT_64BIT != 0;
        let blocks = u64::from(le32(&sb, 4)) | if is_64 { u64::from(le32(&sb, 336)) << 32 } else { 0 };
        let first_data_block = u64::from(le32(&sb, 20));
        let blocks_per_group = u64::from(le32(&sb, 32));
        let inodes_per_group = le32(&sb, 40);
        let inodes = le32(&sb, 0);
        let rev = le32(&sb, 76);
        let inode_size = if rev == 0 { 128 } else { u64::from(le16(&sb, 88)) };
        let desc_size = if is_64 { u64::from(le16(&sb, 254)).max(32) } else { 32 };
        let valid = blocks_per_group > 0
            && inodes_per_group > 0
            && (128..=block_size).contains(&inode_size)
            && inode_size.is_power_of_two()
            && desc_size <= block_size
            && desc_size.is_power_of_two()
            && blocks.checked_mul(block_size).is_some_and(|b| b <= device.len())
            && first_data_block < blocks;
        if !valid {
            return Err(Error::damaged(
                what(),
                format!(
                    "superblock: {blocks} blocks of {block_size} bytes on a {}-byte volume, {blocks_per_group} blocks and {inodes_per_group} inodes per group, inodes of {inode_size} bytes",
                    device.len()
                ),
            ));
        }
        let groups = (blocks - first_data_block).div_ceil(blocks_per_group);
        if groups > MAX_GROUPS || u64::from(inodes) > groups * u64::from(inodes_per_group) {
            return Err(Error::damaged(what(), format!("{groups} groups for {inodes} inodes")));
        }
        let per_block = block_size / desc_size;
        let first_meta_bg = if incompat & INCOMPAT_META_BG != 0 { u64::from(le32(&sb, 260)) } else { u64::MAX };
        let sparse = ro_compat & RO_COMPAT_SPARSE_SUPER != 0;
        let mut inode_tables = Vec::with_capacity(groups as usize);
        let mut desc_block_cache: Option<(u64, Vec<u8>)> = None;
        for g in 0..groups {
            let index = g / per_block;
            let block = if index < first_meta_bg {
                first_data_block + 1 + index
            } else {
                // meta_bg: each meta group's descriptors sit in its first
                // group, after that group's superblock backup if any.
                let group = index * per_block;
                let has_super = group_has_super(group, sparse);
                first_data_block + group * blocks_per_group + u64::from(has_super)
            };
            if block >= blocks {
                return Err(Error::damaged(what(), format!("group descriptors of group {g} at block {block}, past the end")));
            }
            if desc_block_cache.as_ref().is_none_or(|(b, _)| *b != block) {
                let bytes = read_vec(&device, block * block_size, block_size as usize).map_err(|e| Error::io(what(), e))?;
                desc_block_cache = Some((block, bytes));
            }
            let bytes = &desc_block_cache.as_ref().expect("just read").1;
            let at = ((g % per_block) * desc_size) as usize;
            let d = &bytes[at..at + desc_size as usize];
            let mut table = u64::from(le32(d, 8));
            if is_64 && desc_size >= 64 {
                table |= u64::from(le32(d, 0x28)) << 32;
            }
            inode_tables.push(table);
        }
        let label = sb[120..136].split(|&b| b == 0).next().map(|l| String::from_utf8_lossy(l).trim().to_string()).filter(|l| !l.is_empty());
        Ok(Ext4 {
            device,
            name: name.to_string(),
            block_size,
            blocks,
            inodes,
            inodes_per_group,
            inode_size,
            inode_tables,
            filetype: incompat & INCOMPAT_FILETYPE != 0,
            huge_file: ro_compat & RO_COMPAT_HUGE_FILE != 0,
            label,
            maps: Mutex::new(HashMap::new()),
        })
    }

    fn what(&self, number: u32) -> String {
        format!("inode {number} of {}", self.name)
    }

    fn node(node: NodeId) -> Result<u32> {
        u32::try_from(node).map_err(|_| Error::NotFound(format!("node {node}")))
    }

    fn read_block(&self, block: u64, what: &str) -> Result<Vec<u8>> {
        if block == 0 || block >= self.blocks {
            return Err(Error::damaged(what.to_string(), format!("block {block} lies outside the file system's {} blocks", self.blocks)));
        }
        read_vec(&self.device, block * self.block_size, self.block_size as usize).map_err(|e| Error::io(what.to_string(), e))
    }

    fn inode(&self, number: u32) -> Result<Inode> {
        if number == 0 || number > self.inodes {
            return Err(Error::damaged(self.name.clone(), format!("inode number {number} (the file system has {})", self.inodes)));
        }
        let what = self.what(number);
        let index = u64::from(number - 1);
        let group = (index / u64::from(self.inodes_per_group)) as usize;
        let table = *self.inode_tables.get(group).ok_or_else(|| Error::damaged(what.clone(), "its group does not exist"))?;
        let at = table
            .checked_mul(self.block_size)
            .and_then(|t| t.checked_add((index % u64::from(self.inodes_per_group)) * self.inode_size))
            .filter(|&at| at + self.inode_size <= self.blocks * self.block_size && table != 0)
            .ok_or_else(|| Error::damaged(what.clone(), format!("its group's inode table at block {table} is outside the file system")))?;
        let raw = read_vec(&self.device, at, self.inode_size as usize).map_err(|e| Error::io(what.clone(), e))?;
        let extra = if self.inode_size > 128 { u64::from(le16(&raw, 128)) } else { 0 };
        if 128 + extra > self.inode_size {
            return Err(Error::damaged(what, format!("its extra size {extra} runs past the inode")));
        }
        let has = |field_end: u64| extra >= field_end - 128;
        let extra_at = |at: usize| has(at as u64 + 4).then(|| le32(&raw, at));
        let flags = le32(&raw, 32);
        let mut blocks_512 = u64::from(le32(&raw, 28)) | (u64::from(le16(&raw, 116)) << 32);
        if self.huge_file && flags & FLAG_HUGE_FILE != 0 {
            blocks_512 *= self.block_size / 512;
        }
        let mut block = [0u8; 60];
        block.copy_from_slice(&raw[40..100]);
        let xattr_start = (128 + extra) as usize;
        Ok(Inode {
            number,
            mode: le16(&raw, 0),
            uid: u32::from(le16(&raw, 2)) | (u32::from(le16(&raw, 120)) << 16),
            gid: u32::from(le16(&raw, 24)) | (u32::from(le16(&raw, 122)) << 16),
            size: u64::from(le32(&raw, 4)) | (u64::from(le32(&raw, 108)) << 32),
            links: le16(&raw, 26),
            flags,
            blocks_512,
            file_acl: u64::from(le32(&raw, 104)) | (u64::from(le16(&raw, 118)) << 32),
            block,
            atime: time(le32(&raw, 8), extra_at(140)),
            mtime: time(le32(&raw, 16), extra_at(136)),
            ctime: time(le32(&raw, 12), extra_at(132)),
            xattr_area: raw[xattr_start..].to_vec(),
        })
    }

    /// The runs of an inode's blocks (cached for the files read last).
    fn runs(&self, inode: &Inode) -> Result<Arc<Vec<Run>>> {
        if let Some(runs) = self.maps.lock().expect("ext4 maps").get(&inode.number) {
            return Ok(Arc::clone(runs));
        }
        let file_blocks = inode.size.div_ceil(self.block_size);
        let mut runs = Vec::new();
        if inode.flags & FLAG_EXTENTS != 0 {
            let mut visited = 0;
            self.extent_node(inode, &inode.block, MAX_EXTENT_DEPTH, &mut runs, &mut visited)?;
        } else {
            self.block_map(inode, file_blocks, &mut runs)?;
        }
        runs.sort_by_key(|r| r.logical);
        for pair in runs.windows(2) {
            if pair[0].logical + pair[0].len > pair[1].logical {
                return Err(Error::damaged(self.what(inode.number), format!("its extents overlap at block {}", pair[1].logical)));
            }
        }
        let runs = Arc::new(runs);
        let mut maps = self.maps.lock().expect("ext4 maps");
        if maps.len() >= CACHED_MAPS {
            maps.clear();
        }
        maps.insert(inode.number, Arc::clone(&runs));
        Ok(runs)
    }

    fn extent_node(&self, inode: &Inode, node: &[u8], depth_left: u16, runs: &mut Vec<Run>, visited: &mut usize) -> Result<()> {
        let what = || self.what(inode.number);
        *visited += 1;
        if *visited > MAX_EXTENT_NODES {
            return Err(Error::damaged(what(), format!("an extent tree of more than {MAX_EXTENT_NODES} nodes")));
        }
        if node.len() < 12 || le16(node, 0) != EXTENT_MAGIC {
            return Err(Error::damaged(what(), "an extent tree node without its magic"));
        }
        let entries = usize::from(le16(node, 2));
        let depth = le16(node, 6);
        if depth >= depth_left || 12 + entries * 12 > node.len() {
            return Err(Error::damaged(what(), format!("an extent node of depth {depth} with {entries} entries")));
        }
        for i in 0..entries {
            let e = &node[12 + 12 * i..24 + 12 * i];
            let logical = u64::from(le32(e, 0));
            if depth == 0 {
                let raw_len = le16(e, 4);
                let (len, unwritten) = if raw_len > 32768 { (raw_len - 32768, true) } else { (raw_len, false) };
                let start = u64::from(le32(e, 8)) | (u64::from(le16(e, 6)) << 32);
                let len = u64::from(len);
                if len == 0 {
                    continue;
                }
                if start.checked_add(len).is_none_or(|end| end > self.blocks) || (start == 0 && !unwritten) {
                    return Err(Error::damaged(what(), format!("an extent of {len} blocks at block {start}, outside the file system")));
                }
                runs.push(Run {
                    logical,
                    len,
                    physical: (!unwritten).then_some(start),
                });
                if runs.len() > MAX_RUNS {
                    return Err(Error::damaged(what(), format!("more than {MAX_RUNS} extents")));
                }
            } else {
                let child = u64::from(le32(e, 4)) | (u64::from(le16(e, 8)) << 32);
                let block = self.read_block(child, &what())?;
                self.extent_node(inode, &block, depth, runs, visited)?;
            }
        }
        Ok(())
    }

    /// An ext2/3 block map: twelve direct blocks, then single, double and
    /// triple indirect blocks.
    fn block_map(&self, inode: &Inode, file_blocks: u64, runs: &mut Vec<Run>) -> Result<()> {
        let per = self.block_size / 4;
        let mut logical = 0u64;
        let mut push = |runs: &mut Vec<Run>, logical: u64, physical: u64| {
            let physical = (physical != 0).then_some(physical);
            if let Some(last) = runs.last_mut() {
                let follows = match (last.physical, physical) {
                    (Some(a), Some(b)) => a + last.len == b,
                    (None, None) => true,
                    _ => false,
                };
                if follows && last.logical + last.len == logical {
                    last.len += 1;
                    return;
                }
            }
            runs.push(Run { logical, len: 1, physical });
        };
        for i in 0..12 {
            if logical >= file_blocks {
                return Ok(());
            }
            let b = u64::from(le32(&inode.block, 4 * i));
            self.check_block(inode, b)?;
            push(runs, logical, b);
            logical += 1;
        }
        for (slot, level) in [(12usize, 1u32), (13, 2), (14, 3)] {
            if logical >= file_blocks {
                return Ok(());
            }
            let b = u64::from(le32(&inode.block, 4 * slot));
            let span = per.pow(level);
            if b == 0 {
                let n = span.min(file_blocks - logical);
                runs.push(Run { logical, len: n, physical: None });
                logical += n;
                continue;
            }
            self.indirect(inode, b, level, per, file_blocks, &mut logical, runs, &mut push)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn indirect(
        &self,
        inode: &Inode,
        block: u64,
        level: u32,
        per: u64,
        file_blocks: u64,
        logical: &mut u64,
        runs: &mut Vec<Run>,
        push: &mut dyn FnMut(&mut Vec<Run>, u64, u64),
    ) -> Result<()> {
        let bytes = self.read_block(block, &self.what(inode.number))?;
        for i in 0..per as usize {
            if *logical >= file_blocks {
                return Ok(());
            }
            if runs.len() > MAX_RUNS {
                return Err(Error::damaged(self.what(inode.number), format!("more than {MAX_RUNS} runs of blocks")));
            }
            let b = u64::from(le32(&bytes, 4 * i));
            if level == 1 {
                self.check_block(inode, b)?;
                push(runs, *logical, b);
                *logical += 1;
            } else if b == 0 {
                let n = per.pow(level - 1).min(file_blocks - *logical);
                runs.push(Run { logical: *logical, len: n, physical: None });
                *logical += n;
            } else {
                self.indirect(inode, b, level - 1, per, file_blocks, logical, runs, push)?;
            }
        }
        Ok(())
    }

    fn check_block(&self, inode: &Inode, block: u64) -> Result<()> {
        if block >= self.blocks {
            return Err(Error::damaged(self.what(inode.number), format!("block {block} lies outside the file system")));
        }
        Ok(())
    }

    /// The whole content of a small inode (a directory, a slow symlink).
    fn content(&self, inode: &Inode, limit: u64) -> Result<Vec<u8>> {
        if inode.size > limit {
            return Err(Error::damaged(self.what(inode.number), format!("{} bytes, more than the {limit} expected", inode.size)));
        }
        let mut out = vec![0u8; inode.size as usize];
        let n = self.read_inode_at(inode, 0, &mut out)?;
        out.truncate(n);
        Ok(out)
    }

    fn read_inode_at(&self, inode: &Inode, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if inode.flags & FLAG_ENCRYPT != 0 {
            return Err(Error::unsupported(self.what(inode.number), "it is encrypted (fscrypt)"));
        }
        if offset >= inode.size {
            return Ok(0);
        }
        let len = (buf.len() as u64).min(inode.size - offset) as usize;
        let buf = &mut buf[..len];
        if inode.flags & FLAG_INLINE_DATA != 0 {
            let data = self.inline_data(inode)?;
            for (i, b) in buf.iter_mut().enumerate() {
                *b = data.get(offset as usize + i).copied().unwrap_or(0);
            }
            return Ok(len);
        }
        let runs = self.runs(inode)?;
        read_runs(&self.device, self.block_size, &runs, offset, buf).map_err(|e| Error::io(self.what(inode.number), e))?;
        Ok(len)
    }

    /// An inline-data inode's bytes: the 60 bytes of `i_block`, then the
    /// value of its `system.data` attribute.
    fn inline_data(&self, inode: &Inode) -> Result<Vec<u8>> {
        let mut data = inode.block.to_vec();
        if let Some((_, more)) = self.raw_xattrs(inode)?.into_iter().find(|(name, _)| name == b"system.data") {
            data.extend(more);
        }
        Ok(data)
    }

    /// Extended attributes as stored (ACLs still in ext4's format).
    fn raw_xattrs(&self, inode: &Inode) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        let area = &inode.xattr_area;
        if area.len() >= 4 && le32(area, 0) == XATTR_MAGIC {
            self.xattr_entries(inode, &area[4..], 0, &mut out)?;
        }
        if inode.file_acl != 0 {
            let block = self.read_block(inode.file_acl, &self.what(inode.number))?;
            if le32(&block, 0) != XATTR_MAGIC {
                return Err(Error::damaged(self.what(inode.number), format!("its attribute block {} has no magic", inode.file_acl)));
            }
            self.xattr_entries(inode, &block, 32, &mut out)?;
        }
        Ok(out)
    }

    /// Entries from `first` of `region`; values at offsets from the
    /// region's start (in the inode: from the first entry).
    fn xattr_entries(&self, inode: &Inode, region: &[u8], first: usize, out: &mut Vec<(Vec<u8>, Vec<u8>)>) -> Result<()> {
        let damaged = |why: String| Error::damaged(self.what(inode.number), format!("extended attributes: {why}"));
        let mut at = first;
        while at + 16 <= region.len() && le32(region, at) != 0 {
            let name_len = usize::from(region[at]);
            let index = region[at + 1];
            let value_at = usize::from(le16(region, at + 2));
            let value_inode = le32(region, at + 4);
            let value_len = le32(region, at + 8) as usize;
            let name = region.get(at + 16..at + 16 + name_len).ok_or_else(|| damaged(format!("a name runs past its area at {at}")))?;
            let prefix: &[u8] = match index {
                1 => b"user.",
                2 => b"system.posix_acl_access",
                3 => b"system.posix_acl_default",
                4 => b"trusted.",
                6 => b"security.",
                7 => b"system.",
                8 => b"system.richacl",
                other => {
                    tracing::debug!(inode = inode.number, index = other, "extended attribute of an unknown namespace skipped");
                    at += (16 + name_len).div_ceil(4) * 4;
                    continue;
                }
            };
            if value_len > MAX_XATTR_VALUE {
                return Err(damaged(format!("a value of {value_len} bytes (the kernel allows {MAX_XATTR_VALUE})")));
            }
            let value = if value_inode != 0 {
                let ea = self.inode(value_inode)?;
                // An attribute inode holds its value in blocks: one with
                // inline data (whose bytes are in its own attributes) or
                // another length is damage, and would let a value name
                // itself.
                if ea.flags & FLAG_EA_INODE == 0 || ea.flags & FLAG_INLINE_DATA != 0 || ea.size != value_len as u64 {
                    return Err(damaged(format!("value inode {value_inode} is not an attribute inode of {value_len} bytes")));
                }
                self.content(&ea, MAX_XATTR_VALUE as u64)?
            } else {
                region
                    .get(value_at..value_at + value_len)
                    .ok_or_else(|| damaged(format!("a value of {value_len} bytes at {value_at} runs past its area")))?
                    .to_vec()
            };
            let mut full = prefix.to_vec();
            full.extend_from_slice(name);
            out.push((full, value));
            at += (16 + name_len).div_ceil(4) * 4;
        }
        Ok(())
    }

    fn parse_dir(&self, inode: &Inode, bytes: &[u8], out: &mut Vec<DirEntry>) -> Result<()> {
        let damaged = |why: String| Error::damaged(format!("directory {} of {}", inode.number, self.name), why);
        let block = self.block_size as usize;
        let mut base = 0;
        while base < bytes.len() {
            let end = (base + block).min(bytes.len());
            let mut at = base;
            while at + 8 <= end {
                let entry_inode = le32(bytes, at);
                let mut rec_len = usize::from(le16(bytes, at + 4));
                if rec_len == 0 || (rec_len == 65535 && block == 65536) {
                    rec_len = block;
                }
                let name_len = if self.filetype { usize::from(bytes[at + 6]) } else { usize::from(le16(bytes, at + 6)) };
                if rec_len < 8 || at + rec_len > end || 8 + name_len > rec_len {
                    return Err(damaged(format!("an entry at byte {at} has record length {rec_len} and name length {name_len}")));
                }
                let name = &bytes[at + 8..at + 8 + name_len];
                if entry_inode != 0 && name != b"." && name != b".." && !name.is_empty() {
                    if entry_inode > self.inodes {
                        return Err(damaged(format!("entry {:?} names inode {entry_inode}", String::from_utf8_lossy(name))));
                    }
                    if name.contains(&b'/') || name.contains(&0) {
                        return Err(damaged(format!("entry {:?} has a / or NUL in its name", String::from_utf8_lossy(name))));
                    }
                    out.push(DirEntry {
                        name: name.to_vec(),
                        node: NodeId::from(entry_inode),
                    });
                }
                at += rec_len;
            }
            base = end;
        }
        Ok(())
    }
}

/// glibc's `makedev`.
/// Whether group `group` holds a superblock backup.
fn group_has_super(group: u64, sparse: bool) -> bool {
    if group <= 1 || !sparse {
        return true;
    }
    [3u64, 5, 7].iter().any(|&base| {
        let mut n = base;
        while n < group {
            n = n.saturating_mul(base);
        }
        n == group
    })
}

/// ext4's ACL format (version 1, short entries for the owner, group,
/// mask and others) as the kernel's `system.posix_acl_*` value (version
/// 2, every entry with an id).
fn acl_to_kernel(value: &[u8]) -> Option<Vec<u8>> {
    if value.len() < 4 || le32(value, 0) != 1 {
        return None;
    }
    let mut acl = KernelAcl::new();
    let mut at = 4;
    while at < value.len() {
        let tag = le16(value.get(at..at + 2)?, 0);
        let perm = le16(value.get(at + 2..at + 4)?, 0);
        acl.push(tag, perm, || Some(le32(value.get(at + 4..at + 8)?, 0)))?;
        at += if KernelAcl::tag_has_id(tag)? { 8 } else { 4 };
    }
    Some(acl.into_bytes())
}

impl GuestFs for Ext4 {
    fn describe(&self) -> (Content, Option<String>) {
        (Content::Ext, self.label.clone())
    }

    fn root(&self) -> NodeId {
        NodeId::from(ROOT)
    }

    fn stat(&self, node: NodeId) -> Result<Stat> {
        let inode = self.inode(Self::node(node)?)?;
        let kind = inode.kind()?;
        let rdev = if matches!(kind, FileKind::CharDevice | FileKind::BlockDevice) {
            // Linux's old 16-bit encoding in i_block[0], or its new one in
            // i_block[1].
            let (old, new) = (le32(&inode.block, 0), le32(&inode.block, 4));
            let (major, minor) = if old != 0 {
                ((old >> 8) & 0xff, old & 0xff)
            } else {
                ((new & 0xfff00) >> 8, (new & 0xff) | ((new >> 12) & 0xfff00))
            };
            crate::fs::makedev(major, minor)
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
            nlink: u32::from(inode.links).max(1),
            atime: inode.atime,
            mtime: inode.mtime,
            ctime: inode.ctime,
            rdev,
        })
    }

    fn read_dir(&self, node: NodeId) -> Result<Vec<DirEntry>> {
        let inode = self.inode(Self::node(node)?)?;
        if inode.kind()? != FileKind::Dir {
            return Err(Error::NotADirectory(self.what(inode.number)));
        }
        if inode.flags & FLAG_ENCRYPT != 0 {
            return Err(Error::unsupported(self.what(inode.number), "the directory is encrypted (fscrypt)"));
        }
        let mut out = Vec::new();
        if inode.flags & FLAG_INLINE_DATA != 0 {
            // The parent's number, then entries in the rest of i_block,
            // then in the system.data attribute.
            let data = self.inline_data(&inode)?;
            let (first, rest) = data.split_at(60.min(data.len()));
            self.parse_inline_dir(&inode, &first[4..], &mut out)?;
            self.parse_inline_dir(&inode, rest, &mut out)?;
        } else {
            // An htree directory's leaves are ordinary blocks of entries,
            // and its index blocks look like one empty entry each: read
            // linearly, as the format intends for readers without htree.
            if inode.size > MAX_DIR_BYTES {
                return Err(Error::damaged(self.what(inode.number), format!("a directory of {} bytes", inode.size)));
            }
            let mut block = vec![0u8; self.block_size as usize];
            let mut offset = 0;
            while offset < inode.size {
                let n = self.read_inode_at(&inode, offset, &mut block)?;
                self.parse_dir(&inode, &block[..n], &mut out)?;
                offset += self.block_size;
            }
        }
        Ok(out)
    }

    fn read_link(&self, node: NodeId) -> Result<Vec<u8>> {
        let inode = self.inode(Self::node(node)?)?;
        if inode.kind()? != FileKind::Symlink {
            return Err(Error::unsupported(self.what(inode.number), "not a symbolic link"));
        }
        if inode.flags & FLAG_ENCRYPT != 0 {
            return Err(Error::unsupported(self.what(inode.number), "the link is encrypted (fscrypt)"));
        }
        let ea_blocks = if inode.file_acl != 0 { self.block_size / 512 } else { 0 };
        let fast = inode.flags & (FLAG_EXTENTS | FLAG_INLINE_DATA) == 0 && inode.blocks_512.saturating_sub(ea_blocks) == 0;
        let target = if fast {
            if inode.size > 60 {
                return Err(Error::damaged(self.what(inode.number), format!("a fast symlink of {} bytes", inode.size)));
            }
            inode.block[..inode.size as usize].to_vec()
        } else {
            self.content(&inode, 4096)?
        };
        Ok(target)
    }

    fn xattrs(&self, node: NodeId) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let inode = self.inode(Self::node(node)?)?;
        let mut out = Vec::new();
        for (name, value) in self.raw_xattrs(&inode)? {
            if name == b"system.data" {
                continue;
            }
            if name.starts_with(b"system.posix_acl_") {
                match acl_to_kernel(&value) {
                    Some(kernel) => out.push((name, kernel)),
                    None => tracing::warn!(inode = inode.number, "an ACL in a format this reader does not know was skipped"),
                }
                continue;
            }
            out.push((name, value));
        }
        Ok(out)
    }

    fn read_at(&self, node: NodeId, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let inode = self.inode(Self::node(node)?)?;
        if inode.kind()? != FileKind::File {
            return Err(Error::unsupported(self.what(inode.number), "not a regular file"));
        }
        self.read_inode_at(&inode, offset, buf)
    }
}

impl Ext4 {
    /// Entries packed in an inline directory's bytes (no blocks: the
    /// whole region is one run of records).
    fn parse_inline_dir(&self, inode: &Inode, bytes: &[u8], out: &mut Vec<DirEntry>) -> Result<()> {
        let damaged = |why: String| Error::damaged(format!("directory {} of {}", inode.number, self.name), why);
        let mut at = 0;
        while at + 8 <= bytes.len() {
            let entry_inode = le32(bytes, at);
            let rec_len = usize::from(le16(bytes, at + 4));
            let name_len = usize::from(bytes[at + 6]);
            if rec_len < 8 || at + rec_len > bytes.len() || 8 + name_len > rec_len {
                return Err(damaged(format!("an inline entry at byte {at} has record length {rec_len}")));
            }
            let name = &bytes[at + 8..at + 8 + name_len];
            if entry_inode != 0 && !name.is_empty() && name != b"." && name != b".." {
                if entry_inode > self.inodes || name.contains(&b'/') || name.contains(&0) {
                    return Err(damaged(format!("an inline entry names inode {entry_inode}")));
                }
                out.push(DirEntry {
                    name: name.to_vec(),
                    node: NodeId::from(entry_inode),
                });
            }
            at += rec_len;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superblock_backups_sit_in_groups_0_1_and_powers_of_3_5_7() {
        let with: Vec<u64> = (0..60).filter(|&g| group_has_super(g, true)).collect();
        assert_eq!(with, [0, 1, 3, 5, 7, 9, 25, 27, 49]);
        assert!(group_has_super(12, false));
    }

    #[test]
    fn acls_become_the_kernels_format() {
        let mut ext4 = 1u32.to_le_bytes().to_vec();
        ext4.extend([0x01, 0, 6, 0]); // user::rw-
        ext4.extend([0x02, 0, 4, 0]);
        ext4.extend(1234u32.to_le_bytes()); // user:1234:r--
        ext4.extend([0x04, 0, 4, 0, 0x10, 0, 4, 0, 0x20, 0, 0, 0]);
        let kernel = acl_to_kernel(&ext4).unwrap();
        assert_eq!(kernel.len(), 4 + 5 * 8);
        assert_eq!(&kernel[..4], &2u32.to_le_bytes());
        assert_eq!(&kernel[12..20], &[0x02, 0, 4, 0, 0xd2, 0x04, 0, 0]);
        assert!(acl_to_kernel(&[1, 0, 0, 0, 0x40, 0, 0, 0]).is_none());
        assert!(acl_to_kernel(&[1, 0, 0, 0, 0x02, 0]).is_none());
    }

    #[test]
    fn extra_time_extends_seconds_and_carries_nanoseconds() {
        let t = time(0x7fff_ffff, Some((500 << 2) | 1));
        assert_eq!((t.sec, t.nsec), (0x7fff_ffff + (1 << 32), 500));
        assert_eq!(time(u32::MAX, None).sec, -1);
    }
}
