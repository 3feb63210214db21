//! The in-process [`BackupSession`]: a mover in this process storing into
//! a repository this process holds the writer lock of.
//!
//! ```text
//!  movers ──store_chunk──▶ [dedup] ──▶ encode ──bounded──▶ packer ──▶ sealers (3)
//!                          pending set + index          seal: durable, then indexed
//! ```
//! Chunks the repository already holds (or that this session already
//! queued) are dropped at `store_chunk`; new ones are compressed right
//! there, on the mover's thread, with an encoder from a pool. A separate
//! stage of encoder threads would add a queue that the movers' threads
//! (many, since they mostly wait for the disk) fill faster than the
//! encoders drain it, and blocking on that queue cost more system time
//! (spinning, yielding, futex waits) than handing the chunk over saved.
//! The packer's channel is bounded, so memory stays bounded whatever the
//! input size. A chunk id stays in the pending set until its pack is
//! durable and indexed, after which the index answers for it; a rare race
//! can store a chunk twice, which is harmless (the index points at one
//! copy, prune drops the other).
//!
//! `commit` is the barrier: it closes the queue, waits until every stage
//! has drained and every pack is sealed, and only then writes the
//! manifest, so a restore point never references a chunk that is not
//! durable.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crossbeam_channel::{bounded, Receiver, Sender};

use super::{BackupSession, MoverSettings};
use crate::error::{Error, Result};
use crate::id::{ChunkId, RestorePointId};
use crate::index::Tier;
use crate::pack::{ChunkEncoder, ChunkKind, CompressedChunk};
use crate::packs::OpenPack;
use crate::repository::{Exclusive, Repository};
use crate::restore_point::{BackupStats, Manifest, RestorePoint};

/// Counters of what a session stored.
#[derive(Default)]
pub struct StoreCounters {
    pub chunks_new: AtomicU64,
    pub bytes_new: AtomicU64,
    pub bytes_stored: AtomicU64,
    pub packs: AtomicU64,
}

impl StoreCounters {
    /// A restore point's statistics: what the mover saw, plus what the
    /// session stored.
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
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        }
    }
}

pub struct LocalSession<'r> {
    repo: &'r Repository<Exclusive>,
    pending: Mutex<HashSet<ChunkId>>,
    /// Zstd contexts not in use; one is made when all are.
    encoders: Mutex<Vec<ChunkEncoder>>,
    /// Open (chunks may be stored), or drained with its outcome.
    queue: Mutex<Queue>,
    packer_end: Receiver<Result<()>>,
    counters: StoreCounters,
}

/// Runs `work` with a session on `repo`, and returns once the pipeline
/// behind it has stopped (after `work` committed, or on its error).
pub fn with_local_session<R>(
    repo: &Repository<Exclusive>,
    work: impl FnOnce(&LocalSession) -> Result<R>,
) -> Result<R> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let (to_pack, pack_rx) = bounded::<CompressedChunk>(cores * 4);
    let (packer_done, packer_end) = bounded::<Result<()>>(1);
    let session = LocalSession {
        repo,
        pending: Mutex::new(HashSet::new()),
        encoders: Mutex::new(Vec::new()),
        queue: Mutex::new(Queue::Open(to_pack)),
        packer_end,
        counters: StoreCounters::default(),
    };
    std::thread::scope(|scope| {
        // Closes the queue however this scope is left, a panic included,
        // so the packer ends and the scope can join it.
        let _close = CloseOnDrop(&session.queue);
        let session_ref = &session;
        std::thread::Builder::new()
            .name("packer".into())
            .spawn_scoped(scope, move || {
                let _ = packer_done.send(pack_stage(session_ref, pack_rx));
            })
            .expect("spawning the packer thread");
        let worked = work(&session);
        // Work that failed before committing: stop the pipeline; what it
        // sealed is indexed but unreferenced, for prune to reclaim.
        let drained = session.drain();
        // The packer's error is the cause; the work's "the pack writer
        // stopped" is its consequence.
        match (worked, drained) {
            (_, Err(e)) | (Err(e), Ok(())) => Err(e),
            (Ok(r), Ok(())) => Ok(r),
        }
    })
}

/// The session's queue into the pipeline. Draining happens once; its
/// outcome is kept, so a second commit (a retry, or a concurrent one)
/// waits for the first drain and gets its result instead of skipping the
/// barrier.
enum Queue {
    Open(Sender<CompressedChunk>),
    Drained(Result<(), String>),
}

struct CloseOnDrop<'a>(&'a Mutex<Queue>);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        let mut queue = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(*queue, Queue::Open(_)) {
            *queue = Queue::Drained(Err("the session ended".into()));
        }
    }
}

impl LocalSession<'_> {
    /// Closes the queue and waits for the packer to finish. The lock is
    /// held throughout, so a concurrent caller waits for this outcome.
    fn drain(&self) -> Result<()> {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if let Queue::Drained(outcome) = &*queue {
            return outcome.clone().map_err(|e| {
                Error::Interrupted(format!("the backup session already ended: {e}"))
            });
        }
        // Dropping the sender lets the packer finish.
        *queue = Queue::Drained(Err("draining".into()));
        let outcome = self
            .packer_end
            .recv()
            .unwrap_or_else(|_| Err(Error::Interrupted("the pack writer stopped".into())));
        *queue = Queue::Drained(outcome.as_ref().map(|_| ()).map_err(ToString::to_string));
        outcome
    }

    /// Compresses a new chunk on the calling thread.
    fn encode(&self, id: ChunkId, kind: ChunkKind, data: &[u8]) -> Result<CompressedChunk> {
        let pooled = self.encoders.lock().expect("encoder pool lock").pop();
        let mut encoder = match pooled {
            Some(encoder) => encoder,
            None => self.repo.codec().encoder()?,
        };
        let encoded = encoder.encode(id, kind, data);
        self.encoders
            .lock()
            .expect("encoder pool lock")
            .push(encoder);
        encoded
    }

    fn submit(&self, chunk: CompressedChunk) -> Result<()> {
        // Sent on a clone, outside the lock: a full queue must block only
        // this producer, not the others or a commit waiting to drain.
        let sender = match &*self.queue.lock().unwrap_or_else(|e| e.into_inner()) {
            Queue::Open(sender) => sender.clone(),
            Queue::Drained(_) => {
                return Err(Error::InvalidInput(
                    "the backup session is already flushed or committed".into(),
                ))
            }
        };
        sender
            .send(chunk)
            .map_err(|_| Error::Interrupted("the pack writer stopped".into()))
    }
}

impl BackupSession for LocalSession<'_> {
    fn settings(&self) -> MoverSettings {
        MoverSettings::of(self.repo.config(), self.repo.protection())
    }

    fn local_root(&self) -> Option<&Path> {
        Some(self.repo.root())
    }

    fn restore_points(&self) -> Result<Vec<RestorePoint>> {
        self.repo.restore_points()
    }

    fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        self.repo.read_chunk(id)
    }

    fn stored_chunks(&self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        self.repo.chunk_index().warm_chunks(ids)
    }

    fn store_chunk(&self, id: ChunkId, kind: ChunkKind, data: &[u8]) -> Result<bool> {
        if self.pending.lock().expect("pending lock").contains(&id)
            || self.repo.chunk_index().has_warm_chunk(&id)?
        {
            return Ok(false);
        }
        if !self.pending.lock().expect("pending lock").insert(id) {
            return Ok(false);
        }
        let submitted = self.encode(id, kind, data).and_then(|c| self.submit(c));
        if let Err(e) = submitted {
            // Not stored: a later offer of this chunk must not be taken
            // for a duplicate.
            self.pending.lock().expect("pending lock").remove(&id);
            return Err(e);
        }
        self.counters.chunks_new.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_new
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(true)
    }

    fn counters(&self) -> &StoreCounters {
        &self.counters
    }

    fn flush(&self) -> Result<()> {
        self.drain()
    }

    fn commit(&self, manifest: &Manifest) -> Result<RestorePointId> {
        self.drain()?;
        self.repo.commit_restore_point(manifest)
    }
}

/// One open pack per class, so metadata and data never share a pack.
#[derive(Default)]
struct OpenPacks {
    data: Option<OpenPack>,
    metadata: Option<OpenPack>,
}

/// How many full packs are sealed at once: a pack's upload to a bucket
/// (or its fsync on a disk) waits on the network or the device, so the
/// packer goes on filling the next pack meanwhile.
const SEALS_IN_FLIGHT: usize = 3;

fn pack_stage(session: &LocalSession, rx: Receiver<CompressedChunk>) -> Result<()> {
    let _span = tracing::debug_span!("pack").entered();
    let (to_seal, full) = bounded::<OpenPack>(1);
    // The first sealing error; later packs are dropped unsealed, which
    // leaves nothing behind.
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    let filled = std::thread::scope(|scope| {
        for _ in 0..SEALS_IN_FLIGHT {
            let (full, failed) = (full.clone(), &failed);
            std::thread::Builder::new()
                .name("sealer".into())
                .spawn_scoped(scope, move || {
                    for pack in full.iter() {
                        if failed.lock().expect("sealer error lock").is_some() {
                            continue;
                        }
                        if let Err(e) = seal(session, pack) {
                            failed.lock().expect("sealer error lock").get_or_insert(e);
                        }
                    }
                })
                .expect("spawning a sealer thread");
        }
        drop(full);
        let filled = fill_packs(session, &rx, &to_seal, &failed);
        drop(to_seal);
        filled
    });
    // A sealer's error is the cause; the packer's "sealing failed" its
    // consequence.
    match failed.into_inner().expect("sealer error lock") {
        Some(e) => Err(e),
        None => filled,
    }
}

/// Appends chunks to open packs and hands each full one to the sealers;
/// at the end, the partly filled ones too.
fn fill_packs(
    session: &LocalSession,
    rx: &Receiver<CompressedChunk>,
    to_seal: &Sender<OpenPack>,
    failed: &Mutex<Option<Error>>,
) -> Result<()> {
    let repo = session.repo;
    let hand_over = |pack: OpenPack| -> Result<()> {
        if failed.lock().expect("sealer error lock").is_some() {
            return Err(Error::Interrupted("sealing a pack failed".into()));
        }
        to_seal
            .send(pack)
            .map_err(|_| Error::Interrupted("the sealers stopped".into()))
    };
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
        session
            .counters
            .bytes_stored
            .fetch_add(chunk.bytes.len() as u64, Ordering::Relaxed);
        if pack.is_full() {
            hand_over(slot.take().expect("just used"))?;
        }
    }
    for pack in [open.data.take(), open.metadata.take()]
        .into_iter()
        .flatten()
    {
        hand_over(pack)?;
    }
    Ok(())
}

/// Makes a pack durable under its final name, then indexes it: the index
/// never points into a pack that could still vanish.
fn seal(session: &LocalSession, pack: OpenPack) -> Result<()> {
    let sealed = session.repo.seal_pack(pack)?;
    session.counters.packs.fetch_add(1, Ordering::Relaxed);
    let mut pending = session.pending.lock().expect("pending lock");
    for entry in &sealed.entries {
        pending.remove(&entry.id);
    }
    Ok(())
}
