//! The FUSE boundary: kernel requests in, `Result`s turned into replies.
//!
//! Metadata requests are answered on the session thread from the lazily
//! built namespace. Reads go to a pool of worker threads, so parallel
//! readers scale and one slow chunk never blocks other requests; each
//! reply is sent from the worker. Sequential readers get the chunks ahead
//! of them loaded in parallel ([`super::read_ahead`]). Damaged or missing data yields EIO and
//! a log line naming the restore point, path and chunk, never wrong bytes.
//!
//! Every entry handed to the kernel (`lookup`, `readdirplus`) counts one
//! lookup in the inode table and `forget` gives it back. With
//! `--allow-other` the kernel enforces permissions itself
//! (default_permissions), ACLs included: it reads them through `getxattr`
//! once FUSE_POSIX_ACL is granted.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{bounded, Sender};
use fuser::{
    consts, fuse_forget_one, FileType, Filesystem, KernelConfig, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyXattr, Request,
};
use libc::{EIO, ENODATA, ENOENT, ENOTDIR, ERANGE};

use crate::chunk_cache::ChunkCache;
use super::namespace::{Inode, Kind, Namespace};
use super::read::{read_range, seek, Source};
use super::read_ahead::ReadAhead;
use crate::error::Error;
use crate::tree::NodeKind;

/// Restore points never change: the kernel may cache everything below
/// them for long. The top directories change as backups arrive.
const STABLE_TTL: Duration = Duration::from_secs(24 * 3600);
const DYNAMIC_TTL: Duration = Duration::from_secs(1);

type Job = Box<dyn FnOnce() + Send>;

pub struct StrataFs {
    ns: Arc<Namespace>,
    cache: Arc<ChunkCache>,
    pool: Sender<Job>,
    read_ahead: Arc<ReadAhead>,
    /// Answer xattr requests with ENOSYS, so the kernel stops asking.
    no_xattrs: bool,
    /// Ask the kernel to enforce the backed-up POSIX ACLs, which it reads
    /// as `system.posix_acl_*` xattrs through `getxattr`.
    kernel_acls: bool,
}

impl StrataFs {
    pub fn new(
        ns: Arc<Namespace>,
        cache_bytes: u64,
        no_xattrs: bool,
        kernel_acls: bool,
    ) -> Self {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .max(2)
            * 2;
        let (pool, jobs) = bounded::<Job>(threads * 16);
        for n in 0..threads {
            let jobs = jobs.clone();
            std::thread::Builder::new()
                .name(format!("fuse-read-{n}"))
                .spawn(move || {
                    for job in jobs {
                        job();
                    }
                })
                .expect("spawning a FUSE worker");
        }
        StrataFs {
            cache: ns.cache.clone(),
            ns,
            pool,
            read_ahead: ReadAhead::new(cache_bytes),
            no_xattrs,
            kernel_acls,
        }
    }

    fn ttl(inode: &Inode) -> &'static Duration {
        if inode.kind.is_dynamic() {
            &DYNAMIC_TTL
        } else {
            &STABLE_TTL
        }
    }

    fn inode(&self, ino: u64) -> std::result::Result<Arc<Inode>, i32> {
        self.ns.get(ino).ok_or(ENOENT)
    }

    /// Whether no file of the mount has attribute `name`, so that a probe
    /// for it may get EOPNOTSUPP: GNU `ls` then stops asking every file
    /// (see [`super::xattr_names`]). Never for the ACLs the kernel enforces:
    /// it takes EOPNOTSUPP from its own ACL read as a failed permission
    /// check.
    fn absent_everywhere(&self, name: &[u8]) -> bool {
        let kernel_reads = self.kernel_acls && name.starts_with(b"system.posix_acl_");
        !kernel_reads && self.ns.xattr_names.absent_everywhere(name)
    }
}

/// `trusted.*` attributes are for CAP_SYS_ADMIN only, as on every Linux
/// file system; the VFS checks `getxattr` of them but passes `listxattr`
/// through, so the file system filters the list itself.
fn is_trusted(name: &[u8]) -> bool {
    name.starts_with(b"trusted.")
}

/// Whether the calling process holds CAP_SYS_ADMIN (and is root), read from
/// its `/proc/<pid>/status`; unknown means no.
fn may_see_trusted(req: &Request<'_>) -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    if req.uid() != 0 {
        return false;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", req.pid())) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

/// A guest node's xattrs; one that cannot be read has none (logged).
fn guest_xattrs(inode: &Inode) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Kind::GuestNode { fs, stat, path, .. } = &inode.kind else {
        return Vec::new();
    };
    fs.xattrs(stat.node).unwrap_or_else(|e| {
        tracing::error!(path = %path, error = %e, "guest xattrs unreadable");
        Vec::new()
    })
}

fn errno(e: &Error) -> i32 {
    match e {
        Error::Io { source, .. } => source.raw_os_error().unwrap_or(EIO),
        _ => EIO,
    }
}

/// Receives one directory entry; returns true when the reply is full.
type AddEntry<'a> = dyn FnMut(u64, i64, FileType, &OsStr, Option<(&Inode, &Duration)>) -> bool + 'a;

/// The inode number `readdir` gives an entry the kernel has not looked up
/// (libfuse's FUSE_UNKNOWN_INO): making an inode for every name listed
/// would hold one per entry ever listed.
const UNKNOWN_INO: u64 = 0xffff_ffff;

impl StrataFs {
    /// Walks a directory's entries from `offset` ("." and ".." first).
    /// With `plus`, every entry comes with its inode, made if need be.
    fn list(
        &self,
        ino: u64,
        offset: i64,
        plus: bool,
        add: &mut AddEntry,
    ) -> std::result::Result<(), i32> {
        let inode = self.inode(ino)?;
        if inode.kind.file_type() != FileType::Directory {
            return Err(ENOTDIR);
        }
        let children = self.ns.children(&inode).map_err(|e| {
            tracing::error!(error = %e, "listing failed");
            errno(&e)
        })?;
        let ttl = Self::ttl(&inode);
        let mut index = offset.max(0) as usize;
        if index == 0 {
            if add(
                inode.ino,
                1,
                FileType::Directory,
                OsStr::new("."),
                Some((&inode, ttl)),
            ) {
                return Ok(());
            }
            index = 1;
        }
        if index == 1 {
            let parent = self.ns.get(inode.parent).unwrap_or_else(|| inode.clone());
            if add(
                parent.ino,
                2,
                FileType::Directory,
                OsStr::new(".."),
                Some((&parent, ttl)),
            ) {
                return Ok(());
            }
            index = 2;
        }
        for (i, child) in children.iter().enumerate().skip(index - 2) {
            let name = OsStr::from_bytes(&child.name);
            let next = (i + 3) as i64;
            let full = if plus {
                let child_inode = self.ns.intern(inode.ino, child);
                add(
                    child_inode.ino,
                    next,
                    child.kind.file_type(),
                    name,
                    Some((&child_inode, ttl)),
                )
            } else {
                let child_ino = self
                    .ns
                    .inodes
                    .bound(inode.ino, child)
                    .unwrap_or(UNKNOWN_INO);
                add(child_ino, next, child.kind.file_type(), name, None)
            };
            if full {
                break;
            }
        }
        Ok(())
    }
}

impl Filesystem for StrataFs {
    fn init(
        &mut self,
        _req: &Request<'_>,
        config: &mut KernelConfig,
    ) -> std::result::Result<(), libc::c_int> {
        // The kernel offers its own read-ahead (128 KiB) as the most it
        // takes, so requests stay that size; the read-ahead that keeps
        // sequential readers fed is the mount's own (`read_ahead`).
        let _ = config.set_max_readahead(4 << 20);
        let _ = config.set_max_write(1 << 20);
        let _ = config.add_capabilities(
            consts::FUSE_ASYNC_READ
                | consts::FUSE_PARALLEL_DIROPS
                | consts::FUSE_CACHE_SYMLINKS
                | consts::FUSE_DO_READDIRPLUS
                | consts::FUSE_READDIRPLUS_AUTO,
        );
        let _ = config.set_max_background(64);
        if self.kernel_acls {
            // Also turns on default_permissions: the kernel checks mode
            // bits and ACLs itself, and caches each inode's ACL.
            if let Err(missing) = config.add_capabilities(consts::FUSE_POSIX_ACL) {
                tracing::error!(missing, "the kernel cannot enforce POSIX ACLs in FUSE");
                return Err(libc::ENOSYS);
            }
        }
        Ok(())
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let parent = match self.inode(parent) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        if parent.kind.file_type() != FileType::Directory {
            return reply.error(ENOTDIR);
        }
        match self.ns.lookup(&parent, name.as_bytes()) {
            Ok(Some(inode)) => {
                self.ns.inodes.looked_up(inode.ino);
                reply.entry(Self::ttl(&parent), &self.ns.attr(&inode), 0);
            }
            Ok(None) => reply.error(ENOENT),
            Err(e) => {
                tracing::error!(error = %e, name = %name.to_string_lossy(), "lookup failed");
                reply.error(errno(&e))
            }
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.inode(ino) {
            Ok(inode) => reply.attr(Self::ttl(&inode), &self.ns.attr(&inode)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        let inode = match self.inode(ino) {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        match &inode.kind {
            Kind::Latest(target) => reply.data(target),
            Kind::Entry { node, .. } => match &node.kind {
                NodeKind::Symlink { target } => reply.data(target),
                _ => reply.error(libc::EINVAL),
            },
            Kind::GuestNode { fs, stat, path, .. } => match fs.read_link(stat.node) {
                Ok(target) => reply.data(&target),
                Err(e) => {
                    tracing::error!(path = %path, error = %e, "guest symlink unreadable");
                    reply.error(EIO)
                }
            },
            _ => reply.error(libc::EINVAL),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(libc::EROFS);
        }
        match self.inode(ino) {
            Ok(_) => reply.opened(0, consts::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let inode = match self.inode(ino) {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        let source = match &inode.kind {
            Kind::Blob { data, .. } => Source::Blob(data.clone()),
            Kind::FlatDisk { .. } => Source::Disk,
            Kind::Entry { .. } => match self.ns.file_content(&inode) {
                Some(content) => Source::Extents(content),
                None => return reply.error(libc::EINVAL),
            },
            Kind::GuestNode { fs, stat, .. } if stat.kind == strata_guest::fs::FileKind::File => Source::Guest {
                fs: fs.clone(),
                node: stat.node,
            },
            Kind::GuestNode { .. } => return reply.error(libc::EINVAL),
            _ => return reply.error(libc::EISDIR),
        };
        let offset = offset.max(0) as u64;
        let end = offset + size as u64;
        // Decided here, where requests arrive in order; the workers may
        // run them out of order.
        let sequential = inode.last_end.swap(end, Ordering::Relaxed) == offset;
        if !sequential {
            inode.run_start.store(offset, Ordering::Relaxed);
        }
        let read_ahead = self.read_ahead.clone();
        let (ns, cache) = (self.ns.clone(), self.cache.clone());
        let job: Job = Box::new(move || {
            match read_range(&ns, &cache, &inode, &source, offset, size) {
                Ok(data) => {
                    reply.data(data.as_slice());
                    read_ahead.follow(&ns, &cache, &inode, &source, end, sequential);
                }
                Err(e) => {
                    let (rp, path) = match &inode.kind {
                        Kind::Entry { rp, path, .. } => (rp.id.short(), path.clone()),
                        Kind::FlatDisk { rp, path, .. } => (rp.id.short(), path.clone()),
                        Kind::GuestNode { rp, path, .. } => (rp.id.short(), format!("guest/{path}")),
                        _ => (String::new(), String::new()),
                    };
                    tracing::error!(restore_point = %rp, path = %path, offset, error = %e, "read failed");
                    reply.error(EIO)
                }
            }
        });
        if let Err(job) = self.pool.send(job) {
            (job.into_inner())();
        }
    }

    fn flush(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _lock_owner: u64,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    /// SEEK_DATA and SEEK_HOLE, so that tools like qemu-img and cp skip
    /// holes without reading them.
    fn lseek(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let inode = match self.inode(ino) {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        let size = self.ns.attr(&inode).size;
        let offset = offset.max(0) as u64;
        if offset >= size || !(whence == libc::SEEK_DATA || whence == libc::SEEK_HOLE) {
            return reply.error(libc::ENXIO);
        }
        let want_data = whence == libc::SEEK_DATA;
        match seek(&self.ns, &inode, offset, size, want_data) {
            Ok(Some(found)) => reply.offset(found as i64),
            Ok(None) => reply.error(libc::ENXIO),
            Err(e) => {
                tracing::error!(error = %e, "lseek failed");
                reply.error(EIO)
            }
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let result = self.list(ino, offset, false, &mut |entry_ino, next, kind, name, _| {
            reply.add(entry_ino, next, kind, name)
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    /// Entries with their attributes, so `ls -l` needs no lookup per file.
    fn readdirplus(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let ns = self.ns.clone();
        let result = self.list(
            ino,
            offset,
            true,
            &mut |entry_ino, next, _, name, entry| match entry {
                Some((inode, ttl)) => {
                    let full = reply.add(entry_ino, next, name, ttl, &ns.attr(inode), 0);
                    // The kernel counts a lookup for every entry it gets
                    // but `.` and `..`.
                    if !full && name != "." && name != ".." {
                        ns.inodes.looked_up(entry_ino);
                    }
                    full
                }
                None => false,
            },
        );
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&mut self, _req: &Request<'_>, ino: u64, nlookup: u64) {
        self.ns.inodes.forget(ino, nlookup);
    }

    fn batch_forget(&mut self, _req: &Request<'_>, nodes: &[fuse_forget_one]) {
        for node in nodes {
            self.ns.inodes.forget(node.nodeid, node.nlookup);
        }
    }

    /// `files` is the number of inodes the mount holds now (`df -i`).
    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let held = self.ns.inodes.held() as u64;
        reply.statfs(0, 0, 0, held, 0, 128 * 1024, 255, 128 * 1024);
    }

    fn getxattr(
        &mut self,
        req: &Request<'_>,
        ino: u64,
        name: &OsStr,
        size: u32,
        reply: ReplyXattr,
    ) {
        if self.no_xattrs {
            return reply.error(libc::ENOSYS);
        }
        let inode = match self.inode(ino) {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        if is_trusted(name.as_bytes()) && !may_see_trusted(req) {
            return reply.error(ENODATA);
        }
        let value = match &inode.kind {
            Kind::Entry { node, .. } | Kind::Dir { node, .. } => node
                .xattrs
                .iter()
                .find(|(n, _)| n.as_slice() == name.as_bytes())
                .map(|(_, v)| v.clone()),
            Kind::GuestNode { .. } => guest_xattrs(&inode)
                .into_iter()
                .find(|(n, _)| n.as_slice() == name.as_bytes())
                .map(|(_, v)| v),
            _ => None,
        };
        match value {
            None if self.absent_everywhere(name.as_bytes()) => reply.error(libc::EOPNOTSUPP),
            None => reply.error(ENODATA),
            Some(v) if size == 0 => reply.size(v.len() as u32),
            Some(v) if v.len() > size as usize => reply.error(ERANGE),
            Some(v) => reply.data(&v),
        }
    }

    fn listxattr(&mut self, req: &Request<'_>, ino: u64, size: u32, reply: ReplyXattr) {
        if self.no_xattrs {
            return reply.error(libc::ENOSYS);
        }
        let inode = match self.inode(ino) {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        let mut list = Vec::new();
        let guest;
        let xattrs: &[(Vec<u8>, Vec<u8>)] = match &inode.kind {
            Kind::Entry { node, .. } | Kind::Dir { node, .. } => &node.xattrs,
            Kind::GuestNode { .. } => {
                guest = guest_xattrs(&inode);
                &guest
            }
            _ => &[],
        };
        let show_trusted = xattrs.iter().any(|(n, _)| is_trusted(n)) && may_see_trusted(req);
        for (name, _) in xattrs {
            if is_trusted(name) && !show_trusted {
                continue;
            }
            list.extend_from_slice(name);
            list.push(0);
        }
        if size == 0 {
            reply.size(list.len() as u32)
        } else if list.len() > size as usize {
            reply.error(ERANGE)
        } else {
            reply.data(&list)
        }
    }
}
