//! Chunks fetched ahead of their readers: a restore tells the repository
//! which chunks it will read next (a directory's files), and this fetches
//! them from the server many per request, so that reading 50,000 small
//! files costs a few hundred round trips instead of 50,000.
//!
//! ```text
//!  prefetch(ids) ──▶ queue ──▶ fetchers (2) ──POST chunks/read──▶ ready (bounded)
//!  read_chunk(id) ──▶ ready? take it : in flight? wait : fetch it alone
//! ```
//! The frames are kept as stored (sealed) and opened and verified by the
//! reader that takes them. What was fetched but is never read is bounded
//! by [`READY_LIMIT`]; beyond it hints are dropped and readers fetch for
//! themselves, which is slower, never wrong.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex};

use reqwest::Method;

use strata_engine::id::{ChunkId, PackId};
use strata_engine::pack::{ChunkCodec, PackEntry};

use super::connection::{Connection, Payload};
use crate::protocol::{decode_chunk_frames, encode_ids};

/// Bytes fetched ahead and not yet read, at most.
const READY_LIMIT: usize = 256 << 20;
/// Ids waiting to be fetched before a scout waits.
const QUEUE_LIMIT: usize = 8192;
/// How deep a scout follows directories (a hostile tree cannot exhaust
/// its stack; below this the restore fetches for itself).
const SCOUT_DEPTH: usize = 256;
/// Ids asked for in one request; the server stops at 32 MiB of chunks and
/// the rest are asked for again.
const IDS_PER_FETCH: usize = 512;
const FETCHERS: usize = 2;

/// A chunk as the server stored it.
pub struct Fetched {
    pub pack: PackId,
    pub entry: PackEntry,
    pub stored: Vec<u8>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<ChunkId>,
    /// Queued or being fetched.
    pending: HashSet<ChunkId>,
    ready: HashMap<ChunkId, Fetched>,
    ready_bytes: usize,
    fetchers: usize,
    closed: bool,
}

#[derive(Default)]
pub struct Prefetcher {
    state: Mutex<State>,
    changed: Condvar,
}

impl Prefetcher {
    /// Queues `ids` to be fetched, starting fetchers on first use.
    pub fn hint(self: &Arc<Self>, connection: &Arc<Connection>, ids: &[ChunkId]) {
        let mut state = self.state.lock().expect("prefetch lock");
        if state.closed || state.ready_bytes >= READY_LIMIT {
            return;
        }
        for id in ids {
            if !state.ready.contains_key(id) && state.pending.insert(*id) {
                state.queue.push_back(*id);
            }
        }
        while state.fetchers < FETCHERS {
            state.fetchers += 1;
            let (me, connection) = (Arc::clone(self), Arc::clone(connection));
            let started = std::thread::Builder::new()
                .name("prefetch".into())
                .spawn(move || me.fetch_loop(&connection));
            if started.is_err() {
                state.fetchers -= 1;
                break;
            }
        }
        self.changed.notify_all();
    }

    /// Queues `ids`, waiting while enough is queued or fetched already:
    /// for a scout, which must not drop hints the way [`Self::hint`] does.
    fn hint_waiting(self: &Arc<Self>, connection: &Arc<Connection>, ids: &[ChunkId]) -> bool {
        {
            let mut state = self.state.lock().expect("prefetch lock");
            while !state.closed && (state.queue.len() >= QUEUE_LIMIT || state.ready_bytes >= READY_LIMIT) {
                state = self.changed.wait(state).expect("prefetch lock");
            }
            if state.closed {
                return false;
            }
            for id in ids {
                if !state.ready.contains_key(id) && state.pending.insert(*id) {
                    state.queue.push_back(*id);
                }
            }
        }
        // Starts fetchers if none run yet.
        self.hint(connection, &[]);
        true
    }

    /// Starts a scout that reads the directory tree `root` ahead of a
    /// restore, in the order the restore will (depth first, a
    /// directory's entries in order, each subdirectory where it appears),
    /// and queues every tree and file chunk it finds.
    pub fn scout(self: &Arc<Self>, connection: &Arc<Connection>, codec: ChunkCodec, root: ChunkId) {
        let (me, connection) = (Arc::clone(self), Arc::clone(connection));
        let started = std::thread::Builder::new().name("scout".into()).spawn(move || {
            if let Err(e) = me.scout_tree(&connection, &codec, &root, 0) {
                tracing::debug!(error = %e, "reading ahead of the restore stopped");
            }
        });
        if let Err(e) = started {
            tracing::debug!(error = %e, "no thread to read ahead of the restore");
        }
    }

    fn scout_tree(
        self: &Arc<Self>,
        connection: &Arc<Connection>,
        codec: &ChunkCodec,
        id: &ChunkId,
        depth: usize,
    ) -> strata_engine::error::Result<()> {
        if depth > SCOUT_DEPTH || self.state.lock().expect("prefetch lock").closed {
            return Ok(());
        }
        // The scout's own copy of the tree; the restore takes the one
        // queued for it.
        let body = connection.expect(Method::POST, "/chunks/read", Payload::Bytes(id.as_bytes()), &[])?;
        let frames = decode_chunk_frames(&body)?;
        let Some(frame) = frames.first().filter(|f| f.entry.id == *id) else {
            return Ok(());
        };
        let plain = codec.decode(&frame.entry, &frame.pack, frame.stored)?;
        let tree = strata_engine::tree::Tree::decode(id, &plain)?;
        let mut ahead = Vec::new();
        for node in &tree.nodes {
            match &node.kind {
                strata_engine::tree::NodeKind::File { extents } => {
                    ahead.extend(extents.iter().filter_map(|e| match e {
                        strata_engine::tree::Extent::Data { id, .. } => Some(*id),
                        strata_engine::tree::Extent::Hole { .. } => None,
                    }));
                }
                strata_engine::tree::NodeKind::Directory { subtree } => {
                    ahead.push(*subtree);
                    if !self.hint_waiting(connection, &std::mem::take(&mut ahead)) {
                        return Ok(());
                    }
                    self.scout_tree(connection, codec, subtree, depth + 1)?;
                }
                _ => {}
            }
        }
        self.hint_waiting(connection, &ahead);
        Ok(())
    }

    /// The chunk if it was fetched ahead (waiting for it if it is on its
    /// way); `None` means the caller fetches it itself.
    pub fn take(&self, id: &ChunkId) -> Option<Fetched> {
        let mut state = self.state.lock().expect("prefetch lock");
        loop {
            if let Some(fetched) = state.ready.remove(id) {
                let was_full = state.ready_bytes >= READY_LIMIT;
                state.ready_bytes -= fetched.stored.len();
                // Only fetchers and scouts waiting for room care that a
                // chunk was taken; waking every reader for each of tens of
                // thousands of chunks cost more than the restore's own work.
                if was_full && state.ready_bytes < READY_LIMIT {
                    self.changed.notify_all();
                }
                return Some(fetched);
            }
            if !state.pending.contains(id) || state.closed {
                return None;
            }
            if state.ready_bytes >= READY_LIMIT {
                // The fetchers wait for room that chunks nobody reads may
                // never make: fetch this one alone rather than wait.
                if let Some(at) = state.queue.iter().position(|queued| queued == id) {
                    state.queue.remove(at);
                    state.pending.remove(id);
                    return None;
                }
            }
            state = self.changed.wait(state).expect("prefetch lock");
        }
    }

    /// Stops the fetchers (the repository is going away).
    pub fn close(&self) {
        let mut state = self.state.lock().expect("prefetch lock");
        state.closed = true;
        state.queue.clear();
        state.pending.clear();
        state.ready.clear();
        self.changed.notify_all();
    }

    fn fetch_loop(&self, connection: &Connection) {
        loop {
            let batch: Vec<ChunkId> = {
                let mut state = self.state.lock().expect("prefetch lock");
                while !state.closed && (state.queue.is_empty() || state.ready_bytes >= READY_LIMIT) {
                    state = self.changed.wait(state).expect("prefetch lock");
                }
                if state.closed {
                    state.fetchers -= 1;
                    return;
                }
                let n = state.queue.len().min(IDS_PER_FETCH);
                state.queue.drain(..n).collect()
            };
            let answer = connection
                .expect(Method::POST, "/chunks/read", Payload::Bytes(&encode_ids(&batch)), &[])
                .and_then(|body| {
                    let frames = decode_chunk_frames(&body)?;
                    Ok(frames
                        .into_iter()
                        .map(|f| Fetched {
                            pack: f.pack,
                            entry: f.entry,
                            stored: f.stored.to_vec(),
                        })
                        .collect::<Vec<_>>())
                });
            let mut state = self.state.lock().expect("prefetch lock");
            match answer {
                Ok(frames) => {
                    let mut answered = HashSet::with_capacity(frames.len());
                    for fetched in frames {
                        let id = fetched.entry.id;
                        // Only what was asked for, once.
                        if state.pending.remove(&id) && answered.insert(id) {
                            state.ready_bytes += fetched.stored.len();
                            state.ready.insert(id, fetched);
                        }
                    }
                    // The server stopped early (its response was full):
                    // the rest go back to the front, in order.
                    for id in batch.iter().rev().filter(|id| !answered.contains(id)) {
                        if state.pending.contains(id) {
                            state.queue.push_front(*id);
                        }
                    }
                    if answered.is_empty() {
                        // Nothing came back for what is still wanted: let
                        // the readers ask for themselves.
                        for id in &batch {
                            state.pending.remove(id);
                        }
                        state.queue.retain(|id| !batch.contains(id));
                    }
                }
                Err(e) => {
                    // A missing or cold chunk fails the whole batch: its
                    // readers fetch each chunk alone and get its own error.
                    tracing::debug!(error = %e, "fetching ahead failed");
                    for id in &batch {
                        state.pending.remove(id);
                    }
                }
            }
            self.changed.notify_all();
        }
    }
}
