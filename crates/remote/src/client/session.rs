//! A data mover's [`BackupSession`] on a repository behind a server.
//!
//! ```text
//!  movers ──store_chunk──▶ batch (256 chunks) ──known?──▶ server
//!                           upload: encode ──▶ packer ──▶ uploaders (3) ──PUT pack──▶ server
//!                           deferred (another session uploads it): held, asked again at flush
//!                           present: dropped, never compressed or sealed
//! ```
//! Chunks are batched before the server is asked about them, so a
//! round trip covers many chunks and only the ones the server lacks are
//! compressed and sealed. Packs are built here with the repository's pack
//! format and sealed with its key; the server checks and stores them.
//!
//! Faults: every request is retried (a dropped connection, a restarting
//! server); a session the server no longer knows (it restarted, or the
//! mover was silent past the timeout) is opened again, and since packs
//! are named by their content, sending one twice stores it once.
//! `commit` is the same barrier as in-process: it returns only after
//! every pack the restore point needs was stored.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use reqwest::Method;

use strata_engine::error::{Error, Result};
use strata_engine::id::{ChunkId, RestorePointId};
use strata_engine::pack::writer::PackWriter;
use strata_engine::pack::{ChunkEncoder, ChunkKind, CompressedChunk};
use strata_engine::reader::RepositoryReader;
use strata_engine::restore_point::{Manifest, RestorePoint};
use strata_engine::session::{BackupSession, MoverSettings, StoreCounters};

use super::connection::{Payload, Refusal};
use super::repository::RemoteRepository;
use crate::protocol::{
    encode_ids, Committed, Known, OpenSession, PackStored, SessionOpened, MAX_IDS_PER_REQUEST, RESTORE_POINT_HEADER,
    SOURCE_HEADER,
};

/// Chunks asked about in one round trip.
const BATCH_CHUNKS: usize = 256;
/// Bytes of chunk data held in a batch before it is asked about.
const BATCH_BYTES: usize = 16 << 20;
/// Encoded chunks held while another session uploads them; beyond this
/// they are uploaded here too (a harmless duplicate).
const DEFERRED_BYTES: usize = 256 << 20;
/// Packs uploaded at once.
const UPLOADS_IN_FLIGHT: usize = 3;
/// Pack bytes beyond the last chunk: trailer and footer room.
const PACK_SLACK: u64 = 1 << 20;

pub struct RemoteSession<'r> {
    reader: &'r RemoteRepository,
    request: OpenSession,
    open: Mutex<OpenedSession>,
    seen: Mutex<HashSet<ChunkId>>,
    batch: Mutex<Batch>,
    deferred: Mutex<(Vec<CompressedChunk>, usize)>,
    encoders: Mutex<Vec<ChunkEncoder>>,
    queue: Mutex<Queue>,
    packer_end: Receiver<Result<()>>,
    uploads: Uploads,
    counters: StoreCounters,
}

struct OpenedSession {
    id: String,
    /// Bumped on every reopen, so concurrent callers reopen once.
    generation: u64,
    timeout: Duration,
    max_pack_bytes: u64,
}

#[derive(Default)]
struct Batch {
    chunks: Vec<(ChunkId, ChunkKind, Vec<u8>)>,
    bytes: usize,
}

enum Queue {
    Open(Sender<PackerInput>),
    Drained(Result<(), String>),
}

enum PackerInput {
    Chunk(CompressedChunk),
    /// Hand every open pack to the uploaders and answer once all uploads
    /// so far are stored.
    Settle(Sender<Result<()>>),
}

/// Uploads in flight and the first failure, shared by packer and
/// uploaders.
#[derive(Default)]
struct Uploads {
    state: Mutex<(usize, Option<String>)>,
    changed: Condvar,
}

impl Uploads {
    fn started(&self) {
        self.state.lock().expect("uploads lock").0 += 1;
    }

    fn finished(&self, outcome: Result<()>) {
        let mut state = self.state.lock().expect("uploads lock");
        state.0 -= 1;
        if let Err(e) = outcome {
            state.1.get_or_insert(e.to_string());
        }
        self.changed.notify_all();
    }

    fn failure(&self) -> Option<String> {
        self.state.lock().expect("uploads lock").1.clone()
    }

    /// Waits until nothing is in flight; the first failure, if any.
    fn settle(&self) -> Result<()> {
        let mut state = self.state.lock().expect("uploads lock");
        while state.0 > 0 {
            state = self.changed.wait(state).expect("uploads lock");
        }
        match &state.1 {
            Some(e) => Err(Error::Interrupted(format!("uploading a pack failed: {e}"))),
            None => Ok(()),
        }
    }
}

/// Runs `work` with a session writing a restore point through the server
/// behind `reader`; returns once every thread behind it ended.
pub fn with_remote_session<R>(
    reader: &RemoteRepository,
    work: impl FnOnce(&RemoteSession) -> Result<R>,
) -> Result<R> {
    let request = OpenSession {
        host: nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default(),
    };
    let opened = open_session(reader, &request)?;
    let (to_packer, packer_rx) = bounded::<PackerInput>(16);
    let (packer_done, packer_end) = bounded::<Result<()>>(1);
    let session = RemoteSession {
        reader,
        request,
        open: Mutex::new(OpenedSession {
            generation: 0,
            ..opened
        }),
        seen: Mutex::new(HashSet::new()),
        batch: Mutex::new(Batch::default()),
        deferred: Mutex::new((Vec::new(), 0)),
        encoders: Mutex::new(Vec::new()),
        queue: Mutex::new(Queue::Open(to_packer)),
        packer_end,
        uploads: Uploads::default(),
        counters: StoreCounters::default(),
    };
    let (stop_heartbeat, heartbeat_stopped) = bounded::<()>(0);
    let result = std::thread::scope(|scope| {
        let session_ref = &session;
        std::thread::Builder::new()
            .name("packer".into())
            .spawn_scoped(scope, move || {
                let _ = packer_done.send(session_ref.pack_stage(packer_rx));
            })
            .expect("spawning the packer thread");
        std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn_scoped(scope, move || session_ref.heartbeat(&heartbeat_stopped))
            .expect("spawning the heartbeat thread");
        let worked = work(&session);
        let drained = session.drain();
        drop(stop_heartbeat);
        match (worked, drained) {
            (_, Err(e)) | (Err(e), Ok(())) => Err(e),
            (Ok(r), Ok(())) => Ok(r),
        }
    });
    if result.is_err() {
        // Ends the server's session now rather than at its timeout, so its
        // claims stop holding back other movers. Best effort: a dead
        // server ends it by itself.
        let id = session.open.lock().expect("session lock").id.clone();
        let _ = reader
            .connection
            .call(Method::DELETE, &format!("/sessions/{id}"), Payload::None, &[]);
    }
    result
}

fn open_session(reader: &RemoteRepository, request: &OpenSession) -> Result<OpenedSession> {
    let body = serde_json::to_vec(request).map_err(|e| Error::InvalidInput(e.to_string()))?;
    let started = Instant::now();
    loop {
        match reader.connection.call(Method::POST, "/sessions", Payload::Json(body.clone()), &[])? {
            Ok(answer) => {
                let opened: SessionOpened = serde_json::from_slice(&answer)
                    .map_err(|e| Error::corrupt(format!("a session from {}", reader.location()), e.to_string()))?;
                tracing::debug!(session = %opened.session, "backup session opened");
                return Ok(OpenedSession {
                    id: opened.session,
                    generation: 0,
                    timeout: Duration::from_secs(opened.timeout_secs.max(1)),
                    max_pack_bytes: opened.max_pack_bytes,
                });
            }
            // The server runs as many sessions as it may: wait for a slot
            // rather than fail the backup.
            Err(refusal)
                if matches!(refusal.code.as_str(), "too_many_sessions" | "maintenance")
                    && started.elapsed() < Duration::from_secs(24 * 3600) =>
            {
                tracing::info!(reason = %refusal.message, "waiting for the server to take a backup");
                std::thread::sleep(Duration::from_secs(2));
            }
            Err(refusal) => return Err(reader.connection.refused(refusal)),
        }
    }
}

impl RemoteSession<'_> {
    /// Sends a request in this session, reopening the session once if the
    /// server no longer knows it.
    fn call(&self, method: Method, path: &str, payload: Payload<'_>, headers: &[(&str, String)]) -> Result<Vec<u8>> {
        for _ in 0..3 {
            let (id, generation) = {
                let open = self.open.lock().expect("session lock");
                (open.id.clone(), open.generation)
            };
            let full = format!("/sessions/{id}{path}");
            let payload = match &payload {
                Payload::None => Payload::None,
                Payload::Bytes(b) => Payload::Bytes(b),
                Payload::Json(b) => Payload::Json(b.clone()),
                Payload::Pack(b) => Payload::Pack(b),
            };
            match self.reader.connection.call(method.clone(), &full, payload, headers)? {
                Ok(body) => return Ok(body),
                Err(Refusal { code, .. }) if code == "session_unknown" => self.reopen(generation)?,
                Err(refusal) => return Err(self.reader.connection.refused(refusal)),
            }
        }
        Err(Error::Interrupted(format!(
            "the server {} keeps losing this backup session",
            self.reader.location()
        )))
    }

    fn reopen(&self, stale: u64) -> Result<()> {
        let mut open = self.open.lock().expect("session lock");
        if open.generation != stale {
            return Ok(());
        }
        tracing::warn!(session = %open.id, "the server no longer knows this backup session (it restarted, or this mover was silent too long); opening a new one");
        let fresh = open_session(self.reader, &self.request)?;
        *open = OpenedSession {
            generation: stale + 1,
            ..fresh
        };
        Ok(())
    }

    fn heartbeat(&self, stop: &Receiver<()>) {
        loop {
            let every = self.open.lock().expect("session lock").timeout / 3;
            match stop.recv_timeout(every) {
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    if let Err(e) = self.call(Method::POST, "/heartbeat", Payload::None, &[]) {
                        tracing::warn!(error = %e, "keeping the backup session open failed");
                    }
                }
                _ => return,
            }
        }
    }

    /// The server's answer for each of `ids`.
    fn known(&self, ids: &[ChunkId]) -> Result<Vec<Known>> {
        let mut answers = Vec::with_capacity(ids.len());
        for batch in ids.chunks(MAX_IDS_PER_REQUEST) {
            let body = self.call(Method::POST, "/known", Payload::Bytes(&encode_ids(batch)), &[])?;
            if body.len() != batch.len() {
                return Err(Error::corrupt(
                    format!("an answer from {}", self.reader.location()),
                    format!("{} answers to {} ids", body.len(), batch.len()),
                ));
            }
            for byte in body {
                answers.push(Known::from_u8(byte).ok_or_else(|| {
                    Error::corrupt(format!("an answer from {}", self.reader.location()), format!("unknown answer {byte}"))
                })?);
            }
        }
        Ok(answers)
    }

    fn encode(&self, id: ChunkId, kind: ChunkKind, data: &[u8]) -> Result<CompressedChunk> {
        let pooled = self.encoders.lock().expect("encoder pool lock").pop();
        let mut encoder = match pooled {
            Some(encoder) => encoder,
            None => self.reader.codec().encoder()?,
        };
        let encoded = encoder.encode(id, kind, data);
        self.encoders.lock().expect("encoder pool lock").push(encoder);
        encoded
    }

    fn send(&self, input: PackerInput) -> Result<()> {
        let sender = match &*self.queue.lock().unwrap_or_else(|e| e.into_inner()) {
            Queue::Open(sender) => sender.clone(),
            Queue::Drained(_) => {
                return Err(Error::InvalidInput("the backup session is already flushed or committed".into()))
            }
        };
        sender
            .send(input)
            .map_err(|_| Error::Interrupted("the pack writer stopped".into()))
    }

    fn submit(&self, chunk: CompressedChunk, raw_len: usize) -> Result<()> {
        self.counters.chunks_new.fetch_add(1, Ordering::Relaxed);
        self.counters.bytes_new.fetch_add(raw_len as u64, Ordering::Relaxed);
        self.send(PackerInput::Chunk(chunk))
    }

    /// Asks the server about a batch and hands on what it lacks.
    fn resolve(&self, batch: Vec<(ChunkId, ChunkKind, Vec<u8>)>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let ids: Vec<ChunkId> = batch.iter().map(|(id, _, _)| *id).collect();
        let answers = self.known(&ids)?;
        for ((id, kind, data), answer) in batch.into_iter().zip(answers) {
            match answer {
                Known::Present => {}
                Known::Upload => {
                    let chunk = self.encode(id, kind, &data)?;
                    self.submit(chunk, data.len())?;
                }
                Known::Deferred => {
                    let chunk = self.encode(id, kind, &data)?;
                    let mut deferred = self.deferred.lock().expect("deferred lock");
                    if deferred.1 + chunk.bytes.len() > DEFERRED_BYTES {
                        drop(deferred);
                        self.submit(chunk, data.len())?;
                    } else {
                        deferred.1 += chunk.bytes.len();
                        deferred.0.push(chunk);
                    }
                }
            }
        }
        Ok(())
    }

    /// Hands every open pack to the uploaders and waits until all are
    /// stored.
    fn settle(&self) -> Result<()> {
        let (ack, done) = bounded(1);
        self.send(PackerInput::Settle(ack))?;
        done.recv()
            .unwrap_or_else(|_| Err(Error::Interrupted("the pack writer stopped".into())))
    }

    /// Settles the chunks other sessions were uploading: present ones are
    /// dropped, those whose uploader gave up are uploaded here.
    fn settle_deferred(&self) -> Result<()> {
        let started = Instant::now();
        let patience = self.open.lock().expect("session lock").timeout * 2 + Duration::from_secs(60);
        loop {
            let waiting = std::mem::take(&mut *self.deferred.lock().expect("deferred lock")).0;
            if waiting.is_empty() {
                return Ok(());
            }
            let ids: Vec<ChunkId> = waiting.iter().map(|c| c.id).collect();
            let answers = self.known(&ids)?;
            let mut still = Vec::new();
            let mut uploaded = false;
            for (chunk, answer) in waiting.into_iter().zip(answers) {
                match answer {
                    Known::Present => {}
                    Known::Upload => {
                        let raw = chunk.raw_len as usize;
                        self.submit(chunk, raw)?;
                        uploaded = true;
                    }
                    Known::Deferred if started.elapsed() > patience => {
                        let raw = chunk.raw_len as usize;
                        self.submit(chunk, raw)?;
                        uploaded = true;
                    }
                    Known::Deferred => still.push(chunk),
                }
            }
            if uploaded {
                self.settle()?;
            }
            if still.is_empty() {
                return Ok(());
            }
            let bytes = still.iter().map(|c| c.bytes.len()).sum();
            *self.deferred.lock().expect("deferred lock") = (still, bytes);
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stores everything handed over, once; later calls get the outcome.
    fn drain(&self) -> Result<()> {
        {
            let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            if let Queue::Drained(outcome) = &*queue {
                return outcome
                    .clone()
                    .map_err(|e| Error::Interrupted(format!("the backup session already ended: {e}")));
            }
        }
        let settled = (|| {
            let rest = std::mem::take(&mut *self.batch.lock().expect("batch lock")).chunks;
            self.resolve(rest)?;
            // Own claims first, so two sessions waiting on each other's
            // chunks both get theirs stored.
            self.settle()?;
            self.settle_deferred()
        })();
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if let Queue::Drained(outcome) = &*queue {
            return outcome.clone().map_err(Error::Interrupted);
        }
        *queue = Queue::Drained(Err("draining".into()));
        drop(queue);
        let ended = self
            .packer_end
            .recv()
            .unwrap_or_else(|_| Err(Error::Interrupted("the pack writer stopped".into())));
        let outcome = settled.and(ended);
        *self.queue.lock().unwrap_or_else(|e| e.into_inner()) =
            Queue::Drained(outcome.as_ref().map(|_| ()).map_err(ToString::to_string));
        outcome
    }

    fn pack_stage(&self, input: Receiver<PackerInput>) -> Result<()> {
        let _span = tracing::debug_span!("remote pack").entered();
        let (to_upload, full) = bounded::<(strata_engine::id::PackId, Arc<Vec<u8>>)>(1);
        std::thread::scope(|scope| {
            for _ in 0..UPLOADS_IN_FLIGHT {
                let full = full.clone();
                std::thread::Builder::new()
                    .name("uploader".into())
                    .spawn_scoped(scope, move || {
                        for (id, bytes) in full.iter() {
                            let outcome = if self.uploads.failure().is_some() {
                                Ok(())
                            } else {
                                self.upload(&id, &bytes)
                            };
                            self.uploads.finished(outcome);
                        }
                    })
                    .expect("spawning an uploader thread");
            }
            drop(full);
            let filled = self.fill_packs(&input, &to_upload);
            drop(to_upload);
            filled
        })?;
        self.uploads.settle()
    }

    fn fill_packs(
        &self,
        input: &Receiver<PackerInput>,
        to_upload: &Sender<(strata_engine::id::PackId, Arc<Vec<u8>>)>,
    ) -> Result<()> {
        let (target, max) = {
            let open = self.open.lock().expect("session lock");
            (self.reader.config().pack_target_size, open.max_pack_bytes)
        };
        let version = self.reader.codec().pack_version();
        let mut open: [Option<PackWriter<Vec<u8>>>; 2] = [None, None];
        let hand_over = |pack: PackWriter<Vec<u8>>| -> Result<()> {
            let (finished, bytes) = pack.finish()?;
            self.uploads.started();
            to_upload
                .send((finished.id, Arc::new(bytes)))
                .map_err(|_| Error::Interrupted("the uploaders stopped".into()))
        };
        for item in input.iter() {
            match item {
                PackerInput::Chunk(chunk) => {
                    if let Some(e) = self.uploads.failure() {
                        return Err(Error::Interrupted(format!("uploading a pack failed: {e}")));
                    }
                    let slot = &mut open[usize::from(chunk.kind.is_metadata())];
                    let size = chunk.bytes.len() as u64;
                    if size + PACK_SLACK > max {
                        return Err(Error::InvalidInput(format!(
                            "chunk {} of {size} bytes is larger than the server takes in one pack ({max} bytes)",
                            chunk.id
                        )));
                    }
                    if slot.as_ref().is_some_and(|p| p.len() + size + PACK_SLACK > max) {
                        hand_over(slot.take().expect("checked"))?;
                    }
                    let pack = match slot {
                        Some(pack) => pack,
                        None => slot.insert(PackWriter::new(Vec::new(), "a pack for the server".into(), version)?),
                    };
                    pack.append(&chunk)?;
                    self.counters.bytes_stored.fetch_add(size, Ordering::Relaxed);
                    if pack.len() >= target {
                        hand_over(slot.take().expect("just used"))?;
                    }
                }
                PackerInput::Settle(ack) => {
                    let mut outcome = Ok(());
                    for slot in &mut open {
                        if let Some(pack) = slot.take() {
                            outcome = outcome.and(hand_over(pack));
                        }
                    }
                    let _ = ack.send(outcome.and_then(|()| self.uploads.settle()));
                }
            }
        }
        for pack in open.into_iter().flatten() {
            hand_over(pack)?;
        }
        Ok(())
    }

    fn upload(&self, id: &strata_engine::id::PackId, bytes: &Arc<Vec<u8>>) -> Result<()> {
        let body = self.call(Method::PUT, &format!("/packs/{id}"), Payload::Pack(bytes), &[])?;
        let stored: PackStored = serde_json::from_slice(&body)
            .map_err(|e| Error::corrupt(format!("an answer from {}", self.reader.location()), e.to_string()))?;
        self.counters.packs.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(pack = %id, chunks = stored.chunks, already = stored.already_stored, "pack stored on the server");
        Ok(())
    }
}

impl BackupSession for RemoteSession<'_> {
    fn settings(&self) -> MoverSettings {
        MoverSettings::of(self.reader.config(), self.reader.protection())
    }

    fn local_root(&self) -> Option<&Path> {
        None
    }

    fn restore_points(&self) -> Result<Vec<RestorePoint>> {
        self.reader.restore_points()
    }

    fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        RepositoryReader::read_chunk(self.reader, id)
    }

    fn stored_chunks(&self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        Ok(self.reader.presence(ids)?.into_iter().map(|p| p == 1).collect())
    }

    fn store_chunk(&self, id: ChunkId, kind: ChunkKind, data: &[u8]) -> Result<bool> {
        if !self.seen.lock().expect("seen lock").insert(id) {
            return Ok(false);
        }
        let full = {
            let mut batch = self.batch.lock().expect("batch lock");
            batch.bytes += data.len();
            batch.chunks.push((id, kind, data.to_vec()));
            (batch.chunks.len() >= BATCH_CHUNKS || batch.bytes >= BATCH_BYTES)
                .then(|| std::mem::take(&mut *batch).chunks)
        };
        if let Some(batch) = full {
            self.resolve(batch)?;
        }
        // Whether it is new is known only once its batch is answered.
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
        let (id, sealed) = manifest.seal(self.reader.protection())?;
        let body = self.call(
            Method::POST,
            "/commit",
            Payload::Bytes(&sealed),
            &[
                (RESTORE_POINT_HEADER, id.to_string()),
                (SOURCE_HEADER, hex::encode(manifest.source.as_bytes())),
            ],
        )?;
        let committed: Committed = serde_json::from_slice(&body)
            .map_err(|e| Error::corrupt(format!("an answer from {}", self.reader.location()), e.to_string()))?;
        if committed.restore_point != id.to_string() {
            return Err(Error::corrupt(
                format!("an answer from {}", self.reader.location()),
                format!("committed {} for {id}", committed.restore_point),
            ));
        }
        Ok(id)
    }
}
