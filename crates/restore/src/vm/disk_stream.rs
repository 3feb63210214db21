//! Streams a stored disk out of the repository: into a raw file or block
//! device, or a sparse VMDK.
//!
//! A few more workers than cores (so that one waiting for the disk leaves
//! no core idle) claim the disk's data chunks in offset order; each reads,
//! decompresses and verifies its chunk into buffers it keeps, so no chunk
//! costs an allocation. Holes are never read or written: a raw file is
//! written by the workers themselves at each chunk's offset, skipping
//! all-zero blocks so that they stay unallocated, and its writeback starts
//! behind the restore so that the final sync finds little left. Only a
//! block device, which keeps whatever it held, gets zeros written. A
//! sparse VMDK, which is appended in order, gets its chunks through one
//! writer thread that puts them back in order, with the workers at most
//! [`LOOKAHEAD`] chunks ahead of it.
//!
//! The first failure stops every worker; the one at the lowest offset is
//! reported, naming the disk and the offset. The output is finished
//! (sized, synced, renamed into place) only once every chunk was written.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::cancel::CancelToken;
use crate::disk_map::{page_of, DiskMapPage, PAGE_ENTRIES};
use crate::disk_reader::read_page;
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::packs::ChunkBuffers;
use crate::progress::Progress;
use crate::reader::RepositoryReader;
use crate::vmdk::is_zero;
use crate::vmdk::writer::{DiskSink, RawWriter};
use strata_engine::vm::description::DiskRecord;

/// Chunks the workers may run ahead of an in-order writer.
const LOOKAHEAD: u64 = 16;
/// Bytes of finished output after which their writeback is started.
const WRITEBACK_BYTES: u64 = 32 << 20;
/// The unit of hole detection inside a chunk: a file system block.
const BLOCK: usize = 4096;

/// Where a disk goes.
pub enum DiskTarget {
    /// Written at each chunk's offset, by all workers at once.
    Positional(Box<dyn PositionalTarget>),
    /// Written in offset order by one thread (a sparse VMDK).
    InOrder(Box<dyn DiskSink>),
}

/// A target written at each chunk's offset by all workers at once: a raw
/// file or block device, an NBD export.
pub trait PositionalTarget: Sync {
    /// Whether holes must be written: the target keeps what it held.
    fn writes_holes(&self) -> bool;
    /// Writes one chunk's plaintext at its offset.
    fn write_chunk(&self, offset: u64, data: &[u8]) -> Result<()>;
    /// Makes a hole of the disk read as zeros.
    fn zero_at(&self, offset: u64, len: u64) -> Result<()>;
    /// Everything from `from` for `len` bytes is written.
    fn written_through(&self, _from: u64, _len: u64) {}
    /// Makes the whole output durable (and, for a file, puts it in place).
    fn finish(self: Box<Self>) -> Result<()>;
}

impl PositionalTarget for RawWriter {
    fn writes_holes(&self) -> bool {
        RawWriter::writes_holes(self)
    }

    fn write_chunk(&self, offset: u64, data: &[u8]) -> Result<()> {
        if self.writes_holes() {
            self.write_at(offset, data)
        } else {
            write_skipping_zeros(self, offset, data)
        }
    }

    fn zero_at(&self, offset: u64, len: u64) -> Result<()> {
        RawWriter::zero_at(self, offset, len)
    }

    fn written_through(&self, from: u64, len: u64) {
        self.start_writeback(from, len);
    }

    fn finish(self: Box<Self>) -> Result<()> {
        DiskSink::finish(self)
    }
}

/// One chunk a worker took on: `seq` counts claims from 0.
struct Claim {
    seq: u64,
    index: u64,
    id: Option<ChunkId>,
}

/// Hands out the disk's chunks in order, reading its map one page at a
/// time. Holes are skipped unless the target must have zeros written.
struct Claims<'r> {
    repo: &'r dyn RepositoryReader,
    disk: &'r DiskRecord,
    with_holes: bool,
    state: Mutex<ClaimState>,
}

#[derive(Default)]
struct ClaimState {
    next_index: u64,
    next_seq: u64,
    page: Option<(usize, Arc<DiskMapPage>)>,
    exhausted: bool,
}

impl<'r> Claims<'r> {
    fn next(&self) -> Result<Option<Claim>> {
        let mut state = self.state.lock().expect("claims");
        let chunks = self.disk.chunk_count();
        while state.next_index < chunks {
            let index = state.next_index;
            let p = page_of(index);
            let page_ref =
                self.disk.pages.get(p).ok_or_else(|| {
                    Error::corrupt("disk map", format!("page {p} does not exist"))
                })?;
            if page_ref.data_chunks == 0 && !self.with_holes {
                state.next_index = (p as u64 + 1) * PAGE_ENTRIES as u64;
                continue;
            }
            let page = match &state.page {
                Some((at, page)) if *at == p => page.clone(),
                _ => {
                    let page = Arc::new(read_page(self.repo, &page_ref.id)?);
                    state.page = Some((p, page.clone()));
                    page
                }
            };
            state.next_index += 1;
            let id = page.chunk(index);
            if id.is_some() || self.with_holes {
                let seq = state.next_seq;
                state.next_seq += 1;
                return Ok(Some(Claim { seq, index, id }));
            }
        }
        state.exhausted = true;
        Ok(None)
    }

    /// Whether every chunk was handed out; the number of claims made.
    fn handed_out(&self) -> (bool, u64) {
        let state = self.state.lock().expect("claims");
        (state.exhausted, state.next_seq)
    }
}

/// The first failure by offset; once set, workers stop claiming.
#[derive(Default)]
struct Failure {
    stop: AtomicBool,
    first: Mutex<Option<(u64, Error)>>,
}

impl Failure {
    fn record(&self, offset: u64, error: Error) {
        let mut first = self.first.lock().expect("failure");
        if first.as_ref().is_none_or(|(at, _)| offset < *at) {
            *first = Some((offset, error));
        }
        self.stop.store(true, Ordering::Release);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn take(&self) -> Option<Error> {
        self.first.lock().expect("failure").take().map(|(_, e)| e)
    }
}

/// Streams a stored disk into `target`; returns the data bytes written.
pub fn write_disk(
    repo: &dyn RepositoryReader,
    disk: &DiskRecord,
    target: DiskTarget,
    progress: &dyn Progress,
    cancel: &CancelToken,
) -> Result<u64> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        + 2;
    let stream = Stream {
        claims: Claims {
            repo,
            disk,
            with_holes: matches!(&target, DiskTarget::Positional(raw) if raw.writes_holes()),
            state: Mutex::new(ClaimState::default()),
        },
        failure: Failure::default(),
        progress,
        cancel,
    };
    match target {
        DiskTarget::Positional(raw) => stream.positional(raw, threads),
        DiskTarget::InOrder(sink) => stream.in_order(sink, threads),
    }
}

struct Stream<'r> {
    claims: Claims<'r>,
    failure: Failure,
    progress: &'r dyn Progress,
    cancel: &'r CancelToken,
}

impl Stream<'_> {
    /// Runs `work` for each claim on `threads` threads until the chunks
    /// run out or anything fails.
    fn run_workers<F>(&self, threads: usize, work: F)
    where
        F: Fn(&Claim, &mut ChunkBuffers) -> Result<()> + Sync,
    {
        let disk = self.claims.disk;
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    let mut buffers = ChunkBuffers::default();
                    while !self.failure.stopped() {
                        let claim = match self.cancel.check().and_then(|()| self.claims.next()) {
                            Ok(Some(claim)) => claim,
                            Ok(None) => return,
                            Err(e) => return self.failure.record(u64::MAX, e),
                        };
                        if let Err(e) = work(&claim, &mut buffers) {
                            self.failure.record(claim.index * disk.chunk_size as u64, e);
                        }
                    }
                });
            }
        });
    }

    /// Reads chunk `claim` into `buffers.plain`, verified and of the
    /// length the disk's record gives it.
    fn read(&self, claim: &Claim, id: &ChunkId, buffers: &mut ChunkBuffers) -> Result<()> {
        let disk = self.claims.disk;
        let offset = claim.index * disk.chunk_size as u64;
        let expected = disk.chunk_len(claim.index);
        let at = || format!("disk {} at byte {offset}", disk.slot);
        self.claims
            .repo
            .read_chunk_into(id, buffers)
            .map_err(|e| match e {
                Error::Cold { .. } => e,
                e => Error::corrupt(at(), e),
            })?;
        if buffers.plain.len() as u64 != expected {
            return Err(Error::corrupt(
                at(),
                format!(
                    "chunk {id} holds {} bytes, expected {expected}",
                    buffers.plain.len()
                ),
            ));
        }
        Ok(())
    }

    fn positional(&self, raw: Box<dyn PositionalTarget>, threads: usize) -> Result<u64> {
        let disk = self.claims.disk;
        let frontier = Frontier::default();
        let written = std::sync::atomic::AtomicU64::new(0);
        self.run_workers(threads, |claim, buffers| {
            let offset = claim.index * disk.chunk_size as u64;
            let len = disk.chunk_len(claim.index);
            match &claim.id {
                None => raw.zero_at(offset, len)?,
                Some(id) => {
                    self.read(claim, id, buffers)?;
                    raw.write_chunk(offset, &buffers.plain)?;
                    written.fetch_add(len, Ordering::Relaxed);
                    self.progress.advance(len);
                }
            }
            if let Some((from, len)) = frontier.finished(claim.seq, offset + len) {
                raw.written_through(from, len);
            }
            Ok(())
        });
        if let Some(e) = self.failure.take() {
            return Err(e);
        }
        if !self.claims.handed_out().0 {
            return Err(unfinished());
        }
        raw.finish()?;
        Ok(written.into_inner())
    }

    fn in_order(&self, sink: Box<dyn DiskSink>, threads: usize) -> Result<u64> {
        let (to_writer, arrivals) = bounded::<Arrival>(threads);
        let (recycle, spare) = bounded::<Vec<u8>>(LOOKAHEAD as usize);
        let gate = Gate::default();
        let disk = self.claims.disk;
        std::thread::scope(|scope| -> Result<u64> {
            let writer = scope.spawn(|| {
                let result = write_in_order(sink, disk, arrivals, &recycle, &gate, self.progress);
                if result.is_err() {
                    self.failure.stop.store(true, Ordering::Release);
                }
                gate.open_all();
                result
            });
            self.run_workers(threads, |claim, buffers| {
                if !gate.wait_for(claim.seq, &self.failure) {
                    return Ok(()); // stopping; the cause is recorded elsewhere
                }
                let id = claim.id.as_ref().expect("in-order targets get no holes");
                if buffers.plain.capacity() == 0 {
                    buffers.plain = spare.try_recv().unwrap_or_default();
                }
                self.read(claim, id, buffers)?;
                let data = std::mem::take(&mut buffers.plain);
                // A closed channel means the writer failed; it says why.
                let _ = to_writer.send((claim.seq, claim.index, data));
                Ok(())
            });
            drop(to_writer);
            let written = writer.join().expect("disk writer panicked");
            if let Some(e) = self.failure.take() {
                return Err(e);
            }
            let (chunks, bytes, sink) = written?;
            let (exhausted, claimed) = self.claims.handed_out();
            if !exhausted || chunks != claimed {
                return Err(unfinished());
            }
            sink.finish()?;
            Ok(bytes)
        })
    }
}

/// A chunk on its way to the in-order writer: claim number, chunk index,
/// plaintext.
type Arrival = (u64, u64, Vec<u8>);

/// What a restore that ran out of work before the end reports (a cause
/// recorded elsewhere, such as a signal, is reported instead where known).
fn unfinished() -> Error {
    Error::Interrupted("disk restore stopped before its end".into())
}

/// Writes arrivals in claim order; returns the chunks and data bytes
/// written and the sink, still to be finished.
fn write_in_order(
    mut sink: Box<dyn DiskSink>,
    disk: &DiskRecord,
    arrivals: Receiver<Arrival>,
    recycle: &Sender<Vec<u8>>,
    gate: &Gate,
    progress: &dyn Progress,
) -> Result<(u64, u64, Box<dyn DiskSink>)> {
    let mut waiting = BTreeMap::new();
    let (mut next, mut bytes) = (0u64, 0u64);
    for (seq, index, data) in arrivals {
        waiting.insert(seq, (index, data));
        while let Some((index, data)) = waiting.remove(&next) {
            sink.write_chunk(index * disk.chunk_size as u64, &data)?;
            bytes += data.len() as u64;
            progress.advance(data.len() as u64);
            let _ = recycle.try_send(data);
            next += 1;
            gate.advance(next);
        }
    }
    Ok((next, bytes, sink))
}

/// How far the in-order writer has come; workers wait here so that they
/// run at most [`LOOKAHEAD`] chunks ahead of it.
#[derive(Default)]
struct Gate {
    written: Mutex<u64>,
    moved: Condvar,
    open: AtomicBool,
}

impl Gate {
    fn advance(&self, written: u64) {
        *self.written.lock().expect("gate") = written;
        self.moved.notify_all();
    }

    /// Lets every waiter through: the writer stopped.
    fn open_all(&self) {
        self.open.store(true, Ordering::Release);
        let _guard = self.written.lock().expect("gate");
        self.moved.notify_all();
    }

    /// Waits until claim `seq` may be read; false if the restore stops.
    /// A worker failing does not move the writer, so waiters look again
    /// now and then instead of relying on a wake-up.
    fn wait_for(&self, seq: u64, failure: &Failure) -> bool {
        let mut written = self.written.lock().expect("gate");
        while seq >= *written + LOOKAHEAD {
            if failure.stopped() || self.open.load(Ordering::Acquire) {
                return false;
            }
            written = self
                .moved
                .wait_timeout(written, std::time::Duration::from_millis(20))
                .expect("gate")
                .0;
        }
        !failure.stopped()
    }
}

/// The end of the output's finished prefix, from claims finished in any
/// order; says when another [`WRITEBACK_BYTES`] of it can go to the disk.
#[derive(Default)]
struct Frontier {
    state: Mutex<FrontierState>,
}

#[derive(Default)]
struct FrontierState {
    next_seq: u64,
    /// Claims finished out of order: seq → end offset.
    ahead: BTreeMap<u64, u64>,
    end: u64,
    written_back: u64,
}

impl Frontier {
    /// Records claim `seq` finished at `end`; returns a range to write back.
    fn finished(&self, seq: u64, end: u64) -> Option<(u64, u64)> {
        let mut guard = self.state.lock().expect("frontier");
        let s = &mut *guard;
        s.ahead.insert(seq, end);
        while let Some(end) = s.ahead.remove(&s.next_seq) {
            s.end = s.end.max(end);
            s.next_seq += 1;
        }
        if s.end - s.written_back < WRITEBACK_BYTES {
            return None;
        }
        let range = (s.written_back, s.end - s.written_back);
        s.written_back = s.end;
        Some(range)
    }
}

/// Writes `data` at `offset` leaving its all-zero blocks unwritten, so
/// that they stay holes in a file created empty; runs of blocks holding
/// data go out in one write each.
fn write_skipping_zeros(raw: &RawWriter, offset: u64, data: &[u8]) -> Result<()> {
    let mut run_start = None;
    for (n, block) in data.chunks(BLOCK).enumerate() {
        let at = n * BLOCK;
        match (is_zero(block), run_start) {
            (false, None) => run_start = Some(at),
            (true, Some(start)) => {
                raw.write_at(offset + start as u64, &data[start..at])?;
                run_start = None;
            }
            _ => {}
        }
    }
    if let Some(start) = run_start {
        raw.write_at(offset + start as u64, &data[start..])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_blocks_are_told_apart() {
        assert!(is_zero(&[0u8; BLOCK]));
        let mut block = [0u8; BLOCK];
        block[BLOCK - 1] = 1;
        assert!(!is_zero(&block));
        assert!(is_zero(&[]));
    }

    #[test]
    fn the_frontier_follows_claims_finished_out_of_order() {
        let f = Frontier::default();
        let mib = 1 << 20;
        for seq in 1..32 {
            assert_eq!(f.finished(seq, (seq + 1) * mib), None);
        }
        assert_eq!(f.finished(0, mib), Some((0, 32 * mib)));
        assert_eq!(f.finished(33, 34 * mib), None);
        assert_eq!(f.finished(32, 33 * mib), None);
    }
}
