//! A file's data as runs of blocks (ext4's extents and block maps, XFS's
//! extent records), and reads through them.

use std::io;

use crate::source::ByteSource;

/// A run of a file's blocks: `len` blocks from logical `logical` at
/// physical `physical`, a block of the whole device (`None`: a hole or an
/// unwritten extent, zeros).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub logical: u64,
    pub len: u64,
    pub physical: Option<u64>,
}

/// Fills `buf` with the bytes at `offset` of a file made of `runs`
/// (sorted by logical block, not overlapping) of `block_size`-byte blocks
/// on `device`; what no run covers reads as zeros.
pub fn read_runs(device: &dyn ByteSource, block_size: u64, runs: &[Run], offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        let at = offset + done as u64;
        let block = at / block_size;
        let within = at % block_size;
        let i = runs.partition_point(|r| r.logical + r.len <= block);
        let run = runs.get(i).filter(|r| r.logical <= block);
        // Bytes until the run (or the hole before the next run) ends.
        let until = match (run, runs.get(i)) {
            (Some(r), _) => (r.logical + r.len) * block_size - at,
            (None, Some(next)) => next.logical * block_size - at,
            (None, None) => u64::MAX,
        };
        let n = until.min((buf.len() - done) as u64) as usize;
        match run.and_then(|r| r.physical.map(|p| p + (block - r.logical))) {
            Some(physical) => device.read_exact_at(physical * block_size + within, &mut buf[done..done + n])?,
            None => buf[done..done + n].fill(0),
        }
        done += n;
    }
    Ok(())
}
