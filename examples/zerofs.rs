//! The kernel's FUSE ceiling on this machine: a trivial in-memory file
//! system with one file of zeros, mounted the same way as `strata mount`
//! (same fuser, same kernel settings), so `tools/bench` can compare reads
//! through Strata with the most any FUSE file system could deliver here.
//! Usage: zerofs MOUNTPOINT SIZE_BYTES (unmounts on SIGINT/SIGTERM).

// The `strata` binary's own handling, so that both stop alike.
#[path = "../src/cli/signals.rs"]
mod signals;

use std::ffi::OsStr;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    consts, FileAttr, FileType, Filesystem, KernelConfig, ReplyAttr, ReplyData, ReplyEntry,
    ReplyOpen, Request,
};

struct ZeroFs {
    size: u64,
    zeros: Vec<u8>,
}

fn attr(ino: u64, size: u64) -> FileAttr {
    FileAttr {
        ino,
        size: if ino == 1 { 0 } else { size },
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: if ino == 1 {
            FileType::Directory
        } else {
            FileType::RegularFile
        },
        perm: if ino == 1 { 0o555 } else { 0o444 },
        nlink: 1,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 128 * 1024,
        flags: 0,
    }
}

const TTL: Duration = Duration::from_secs(3600);

impl Filesystem for ZeroFs {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), libc::c_int> {
        let _ = config.set_max_readahead(4 << 20);
        let _ = config.set_max_write(1 << 20);
        let _ = config.add_capabilities(consts::FUSE_ASYNC_READ);
        Ok(())
    }
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        if parent == 1 && name == "zeros" {
            reply.entry(&TTL, &attr(2, self.size), 0)
        } else {
            reply.error(libc::ENOENT)
        }
    }
    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        reply.attr(&TTL, &attr(ino, self.size))
    }
    fn open(&mut self, _req: &Request<'_>, _ino: u64, _flags: i32, reply: ReplyOpen) {
        reply.opened(0, consts::FOPEN_KEEP_CACHE)
    }
    #[allow(clippy::too_many_arguments)]
    fn read(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyData,
    ) {
        let end = (offset as u64 + size as u64).min(self.size);
        let len = end.saturating_sub(offset as u64) as usize;
        reply.data(&self.zeros[..len.min(self.zeros.len())])
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mountpoint = args.next().expect("usage: zerofs MOUNTPOINT SIZE");
    let size: u64 = args
        .next()
        .expect("usage: zerofs MOUNTPOINT SIZE")
        .parse()
        .expect("size in bytes");
    let cancel = signals::install();
    let fs = ZeroFs {
        size,
        zeros: vec![0; 4 << 20],
    };
    let session = fuser::spawn_mount2(
        fs,
        &mountpoint,
        &[
            fuser::MountOption::RO,
            fuser::MountOption::FSName("zerofs".into()),
        ],
    )
    .expect("mount");
    while !cancel.is_cancelled() && !session.guard.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
    }
}
