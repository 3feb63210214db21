//! The storing half of every backup: deduplicate, compress, pack, index.
//!
//! ```text
//!  readers ──submit──▶ [dedup] ──bounded──▶ compressors ──bounded──▶ packer
//!                       pending set + index                 seal: fsync, rename, index
//! ```
//! Producers call [`ChunkSink::submit`] with a chunk's id and bytes; chunks
//! the repository already holds (or that this run already queued) are
//! dropped there, so only new data is copied and compressed. Channels are
//! bounded, so memory stays bounded whatever the input size. A chunk id
//! stays in the pending set until its pack is durable and indexed, after
//! which the index answers for it; a rare race can store a chunk twice,
//! which is harmless (the index points at one copy, prune drops the other).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::index::Tier;
use crate::pack::{ChunkEncoder, ChunkKind, CompressedChunk};
use crate::packs::OpenPack;
use crate::repository::{Exclusive, Repository};
use crate::restore_point::BackupStats;

/// Counters of what the pipeline stored.
#[derive(Default)]
pub struct StoreCounters {
    pub chunks_new: AtomicU64,
    pub bytes_new: AtomicU64,
    pub bytes_stored: AtomicU64,
    pub packs: AtomicU64,
}

impl StoreCounters {
    /// A restore point's statistics: what the mover saw, plus what the
    /// pipeline stored.
    pub fn stats(
        &self,
        files: u64,
        directories: u64,
        bytes_total: u64,
        bytes_read: u64,
        started: std::time::Instant,
    ) -> BackupStats {
        BackupStats {
            files,
            directories,
            bytes_total,
            bytes_read,
            bytes_new: self.bytes_new.load(Ordering::Relaxed),
            bytes_stored: self.bytes_stored.load(Ordering::Relaxed),
            chunks_new: self.chunks_new.load(Ordering::Relaxed),
            duration_ms: started.elapsed().as_millis() as u64,
        }
    }
}

struct RawChunk {
    id: ChunkId,
    kind: ChunkKind,
    data: Vec<u8>,
}

/// Where producers hand in chunks; shared by reference between threads.
pub struct ChunkSink<'a> {
    repo: &'a Repository<Exclusive>,
    pending: &'a Mutex<HashSet<ChunkId>>,
    to_compress: Sender<RawChunk>,
    counters: &'a StoreCounters,
}

impl ChunkSink<'_> {
    /// Stores `data` under `id` unless the repository already has it.
    /// Returns whether it was new.
    pub fn submit(&self, id: ChunkId, kind: ChunkKind, data: &[u8]) -> Result<bool> {
        if self.pending.lock().expect("pending lock").contains(&id)
            || self.repo.chunk_index().has_warm_chunk(&id)?
        {
            return Ok(false);
        }
        if !self.pending.lock().expect("pending lock").insert(id) {
            return Ok(false);
        }
        self.counters.chunks_new.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_new
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        self.to_compress
            .send(RawChunk {
                id,
                kind,
                data: data.to_vec(),
            })
            .map_err(|_| Error::Interrupted("the pack writer stopped".into()))?;
        Ok(true)
    }

    pub fn repo(&self) -> &Repository<Exclusive> {
        self.repo
    }
}

/// Runs `produce` with a sink, and returns once everything it submitted is
/// durable and indexed (or the first error).
pub fn with_chunk_sink<R>(
    repo: &Repository<Exclusive>,
    counters: &StoreCounters,
    produce: impl FnOnce(&ChunkSink) -> Result<R>,
) -> Result<R> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let pending = Mutex::new(HashSet::new());
    let (to_compress, compress_rx) = bounded::<RawChunk>(threads * 2);
    let (to_pack, pack_rx) = bounded::<CompressedChunk>(threads * 2);

    std::thread::scope(|scope| {
        let mut compressors = Vec::new();
        for n in 0..threads {
            let rx = compress_rx.clone();
            let tx = to_pack.clone();
            compressors.push(
                std::thread::Builder::new()
                    .name(format!("compress-{n}"))
                    .spawn_scoped(scope, move || compress_stage(repo.codec().encoder()?, rx, tx))
                    .expect("spawning a compressor thread"),
            );
        }
        drop((compress_rx, to_pack));
        let pending_ref = &pending;
        let packer = std::thread::Builder::new()
            .name("packer".into())
            .spawn_scoped(scope, move || {
                pack_stage(repo, pending_ref, counters, pack_rx)
            })
            .expect("spawning the packer thread");

        let sink = ChunkSink {
            repo,
            pending: &pending,
            to_compress,
            counters,
        };
        let produced = produce(&sink);
        drop(sink);
        let mut first_error = None;
        for handle in compressors {
            if let Err(e) = handle.join().expect("compressor thread panicked") {
                first_error.get_or_insert(e);
            }
        }
        let packed = packer.join().expect("packer thread panicked");
        // The packer's error is the cause; a producer's "pack writer
        // stopped" is its consequence.
        match (produced, packed, first_error) {
            (_, Err(e), _) | (_, _, Some(e)) => Err(e),
            (Err(e), Ok(()), None) => Err(e),
            (Ok(r), Ok(()), None) => Ok(r),
        }
    })
}

fn compress_stage(
    mut encoder: ChunkEncoder,
    rx: Receiver<RawChunk>,
    tx: Sender<CompressedChunk>,
) -> Result<()> {
    let _span = tracing::debug_span!("compress").entered();
    for raw in rx {
        let compressed = encoder.encode(raw.id, raw.kind, raw.data);
        if tx.send(compressed).is_err() {
            break; // the packer failed; it reports why
        }
    }
    Ok(())
}

/// One open pack per class, so metadata and data never share a pack.
#[derive(Default)]
struct OpenPacks {
    data: Option<OpenPack>,
    metadata: Option<OpenPack>,
}

fn pack_stage(
    repo: &Repository<Exclusive>,
    pending: &Mutex<HashSet<ChunkId>>,
    counters: &StoreCounters,
    rx: Receiver<CompressedChunk>,
) -> Result<()> {
    let _span = tracing::debug_span!("pack").entered();
    // An open pack dropped on an error leaves nothing behind.
    let mut open = OpenPacks::default();
    for chunk in rx.iter() {
        let metadata = chunk.kind.is_metadata();
        let slot = if metadata {
            &mut open.metadata
        } else {
            &mut open.data
        };
        let pack = match slot {
            Some(pack) => pack,
            None => slot.insert(repo.packs().open(Tier::Warm, metadata)?),
        };
        pack.append(&chunk)?;
        counters
            .bytes_stored
            .fetch_add(chunk.bytes.len() as u64, Ordering::Relaxed);
        if pack.is_full() {
            seal(repo, pending, counters, slot.take().expect("just used"))?;
        }
    }
    for pack in [open.data.take(), open.metadata.take()].into_iter().flatten() {
        seal(repo, pending, counters, pack)?;
    }
    Ok(())
}

/// Makes a pack durable under its final name, then indexes it: the index
/// never points into a pack that could still vanish.
fn seal(
    repo: &Repository<Exclusive>,
    pending: &Mutex<HashSet<ChunkId>>,
    counters: &StoreCounters,
    pack: OpenPack,
) -> Result<()> {
    let sealed = repo.seal_pack(pack)?;
    counters.packs.fetch_add(1, Ordering::Relaxed);
    let mut pending = pending.lock().expect("pending lock");
    for entry in &sealed.entries {
        pending.remove(&entry.id);
    }
    Ok(())
}
