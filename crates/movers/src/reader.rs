//! Reads one file for a backup: its data regions (holes are skipped, not
//! read), cut into chunks, hashed, and handed to the backup session.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::chunker::StreamChunker;
use crate::error::Error;
use crate::index::FileFingerprint;
use crate::pack::ChunkKind;
use crate::session::BackupSession;
use crate::tree::Extent;

/// Why a file could not be read; it is recorded as missed, not fatal.
#[derive(Debug)]
pub struct Missed(pub String);

pub enum ReadFailure {
    Missed(Missed),
    /// The repository side failed: the backup must stop.
    Fatal(Error),
}

impl From<Error> for ReadFailure {
    fn from(e: Error) -> Self {
        ReadFailure::Fatal(e)
    }
}

impl From<io::Error> for ReadFailure {
    fn from(e: io::Error) -> Self {
        ReadFailure::Missed(Missed(describe(&e)))
    }
}

fn describe(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => "permission denied".into(),
        Some(libc::ENOENT) => "vanished before it could be read".into(),
        Some(libc::ELOOP) => "replaced by a symlink while backing up".into(),
        _ => e.to_string(),
    }
}

pub struct FileContent {
    pub extents: Vec<Extent>,
    pub bytes_read: u64,
}

fn open_for_backup(path: &Path) -> io::Result<File> {
    let open = |flags| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(path)
    };
    // O_NOATIME keeps the backup from touching access times; only the
    // owner (or root) may use it.
    match open(libc::O_NOFOLLOW | libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(libc::O_NOFOLLOW),
        other => other,
    }
}

/// Data regions `[start, end)` of a file, found with SEEK_DATA/SEEK_HOLE.
fn data_regions(file: &File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let mut regions = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        // SAFETY: lseek on a valid fd has no memory-safety preconditions.
        let start = unsafe { libc::lseek(fd, pos as i64, libc::SEEK_DATA) };
        if start < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole remains
            }
            return Err(e);
        }
        // SAFETY: as above.
        let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
        if end < 0 {
            return Err(io::Error::last_os_error());
        }
        let (start, end) = (start as u64, (end as u64).min(size));
        if start >= end {
            break;
        }
        regions.push((start, end));
        pos = end;
    }
    Ok(regions)
}

const SEQUENTIAL_HINT_MIN: u64 = 1 << 20;

pub fn read_file(
    path: &Path,
    expected: &FileFingerprint,
    chunker: &mut StreamChunker,
    session: &dyn BackupSession,
    on_progress: &dyn Fn(u64),
) -> Result<FileContent, ReadFailure> {
    let mut file = open_for_backup(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.ino() != expected.inode || meta.dev() != expected.device {
        return Err(ReadFailure::Missed(Missed(
            "replaced while backing up".into(),
        )));
    }
    let size = expected.size;
    // A larger read-ahead window pays off only for files longer than the
    // default one; most files are smaller, and a system call each adds up.
    if size > SEQUENTIAL_HINT_MIN {
        // SAFETY: posix_fadvise only advises the kernel about an open fd.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL) };
    }
    let sparse = meta.blocks() * 512 < size;
    let regions = if sparse {
        data_regions(&file, size)?
    } else {
        vec![(0, size)]
    };

    let mut extents = Vec::new();
    let mut bytes_read = 0u64;
    let mut pos = 0u64;
    for (start, end) in regions {
        if start > pos {
            extents.push(Extent::Hole { len: start - pos });
        }
        // Finding the data regions moved the file offset; a file read
        // whole is already where its only region starts.
        if sparse || start != 0 {
            file.seek(SeekFrom::Start(start))?;
        }
        let read = chunker.chunk(
            &mut file,
            end - start,
            |chunk: &[u8]| -> Result<(), ReadFailure> {
                let id = session.chunk_id(chunk);
                session.store_chunk(id, ChunkKind::Data, chunk)?;
                extents.push(Extent::Data {
                    id,
                    len: chunk.len() as u32,
                });
                on_progress(chunk.len() as u64);
                Ok(())
            },
        )?;
        bytes_read += read;
        if read < end - start {
            return Err(ReadFailure::Missed(Missed(format!(
                "truncated while reading: {} bytes at start, {} readable",
                size,
                start + read
            ))));
        }
        pos = end;
    }
    if pos < size {
        extents.push(Extent::Hole { len: size - pos });
    }
    Ok(FileContent {
        extents,
        bytes_read,
    })
}

impl Missed {
    pub fn from_io(e: &io::Error) -> Self {
        Missed(describe(e))
    }
}
