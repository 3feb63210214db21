//! Restores a disk into a writable NBD export: a new image served by
//! qemu-nbd, or a stopped VM's disk.
//!
//! The disk's data chunks are written at their offsets by all workers at
//! once (several requests in flight on the one connection). Its holes
//! must read as zeros afterwards, so each is zeroed with NBD's
//! write-zeroes (letting the server punch a hole), or written as zeros
//! where the export has no write-zeroes; a hole the export's own
//! `base:allocation` already reports as reading zeros (a fresh image) is
//! left alone. Trim alone is never used: it does not promise zeros.

use std::time::Instant;

use strata_nbd::{add_ranges, Client, ConnectOptions, NbdUri, BASE_ALLOCATION, STATE_ZERO};

use super::disk_stream::{write_disk, DiskTarget, PositionalTarget};
use super::{check_readable, load_description, select_disk, VmRestoreSummary};
use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::reader::RepositoryReader;
use crate::restore_point::RestorePoint;

pub fn restore_disk_nbd(
    repo: &dyn RepositoryReader,
    rp: &RestorePoint,
    selector: &str,
    uri: &NbdUri,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<VmRestoreSummary> {
    let started = Instant::now();
    let description = load_description(repo, rp)?;
    let disk = select_disk(&description, selector)?;
    check_readable(repo, rp, disk)?;
    let _span = tracing::info_span!("restore_disk_nbd", disk = %disk.slot, target = %uri).entered();
    let target = NbdTarget::open(uri, disk.capacity)?;
    let tail = target.client.size() - disk.capacity;
    progress.add_total(disk.allocated_bytes());
    let written = write_disk(repo, disk, DiskTarget::Positional(Box::new(target)), progress, cancel)?;
    progress.finish();
    Ok(VmRestoreSummary {
        folder: uri.to_string().into(),
        name: description.name.clone(),
        files: vec![if tail == 0 {
            format!("{} ({} bytes) into {uri}", disk.file_name, disk.capacity)
        } else {
            format!(
                "{} ({} bytes) into {uri}, whose {tail} bytes past the disk now read as zeros",
                disk.file_name, disk.capacity
            )
        }],
        bytes_written: written,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

struct NbdTarget {
    client: Client,
    capacity: u64,
    /// Sorted ranges the export already reads as zeros.
    zeros: Vec<(u64, u64)>,
}

impl NbdTarget {
    fn open(uri: &NbdUri, capacity: u64) -> Result<NbdTarget> {
        let options = ConnectOptions { contexts: vec![BASE_ALLOCATION.into()] };
        let client = Client::connect(uri, &options)?;
        if client.export().read_only() {
            return Err(Error::InvalidInput(format!(
                "NBD export {uri} is read-only; a restore needs a writable export"
            )));
        }
        if client.size() < capacity {
            return Err(Error::InvalidInput(format!(
                "NBD export {uri} holds {} bytes, less than the disk's {capacity}; give an export at least as large",
                client.size()
            )));
        }
        let mut zeros: Vec<(u64, u64)> = Vec::new();
        if client.export().context_id(BASE_ALLOCATION).is_some() {
            client.for_each_extent(client.size(), |_, extents| {
                add_ranges(&mut zeros, extents, |flags| flags & STATE_ZERO != 0);
            })?;
        }
        Ok(NbdTarget { client, capacity, zeros })
    }

    fn reads_zeros(&self, offset: u64, len: u64) -> bool {
        let i = self.zeros.partition_point(|r| r.1 <= offset);
        self.zeros.get(i).is_some_and(|&(a, b)| a <= offset && offset + len <= b)
    }
}

impl PositionalTarget for NbdTarget {
    fn writes_holes(&self) -> bool {
        true
    }

    fn write_chunk(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.client.write_at(offset, data)
    }

    fn zero_at(&self, offset: u64, len: u64) -> Result<()> {
        if self.reads_zeros(offset, len) {
            return Ok(());
        }
        if self.client.can_write_zeroes() {
            return self.client.write_zeroes(offset, len, true);
        }
        const PIECE: u64 = 4 << 20;
        let zeros = vec![0u8; len.min(PIECE) as usize];
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(PIECE);
            self.client.write_at(at, &zeros[..n as usize])?;
            at += n;
        }
        Ok(())
    }

    /// An export larger than the disk reads as zeros past it, so that
    /// nothing of what it held (a partition table's backup at its old
    /// end) is taken for part of the restored disk; then all is flushed.
    fn finish(self: Box<Self>) -> Result<()> {
        let size = self.client.size();
        if size > self.capacity {
            self.zero_at(self.capacity, size - self.capacity)?;
        }
        self.client.flush()
    }
}
