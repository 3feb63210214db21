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
use strata_engine::pack::PackEntry;

use super::connection::{Connection, Payload};
use crate::protocol::{decode_chunk_frames, encode_ids};

/// Bytes fetched ahead and not yet read, at most.
const READY_LIMIT: usize = 256 << 20;
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

    /// The chunk if it was fetched ahead (waiting for it if it is on its
    /// way); `None` means the caller fetches it itself.
    pub fn take(&self, id: &ChunkId) -> Option<Fetched> {
        let mut state = self.state.lock().expect("prefetch lock");
        loop {
            if let Some(fetched) = state.ready.remove(id) {
                state.ready_bytes -= fetched.stored.len();
                self.changed.notify_all();
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
