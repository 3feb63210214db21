//! What the server holds: its repositories (each opened once, as the
//! writer, without its key), the backup sessions writing into them, and
//! which session has claimed which chunk.
//!
//! The claims are how concurrent backups deduplicate against each other:
//! the first session to ask about a chunk nobody stores claims it and
//! uploads it; any other session asking meanwhile is told to ask again
//! later instead of uploading it too. A claim ends when a pack holding the
//! chunk is stored, or when its session ends (committed, aborted, or not
//! heard from within the timeout), so a dead mover never blocks another.

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata_engine::error::{Error, IoContext, Result};
use strata_engine::id::{ChunkId, RestorePointId};
use strata_engine::repository::{Exclusive, Repository};

use crate::protocol::Known;

pub type SessionId = String;

pub struct Session {
    /// The token that opened it: only that token may use it.
    pub token: String,
    pub host: String,
    pub last_seen: Instant,
    /// Chunks this session was told to upload and has not yet stored.
    pub claims: HashSet<ChunkId>,
}

/// The sessions of one repository and their claims, under one lock:
/// every answer to `known` is consistent with every pack stored.
#[derive(Default)]
pub struct Arbiter {
    pub sessions: HashMap<SessionId, Session>,
    claimed_by: HashMap<ChunkId, SessionId>,
    /// Maintenance (forget, prune) by an admin client: while it is held
    /// no backup session opens, and it starts only when none is open, so
    /// nothing a running backup was told is stored can be deleted.
    pub maintenance: Option<Maintenance>,
}

pub struct Maintenance {
    pub id: String,
    pub token: String,
    pub last_seen: Instant,
    /// The chunks the admin client found referenced, as it sends them;
    /// taken by the one operation (prune, tier run) that sweeps with it.
    pub live: Option<strata_engine::prune::ChunkFilter>,
    pub live_count: u64,
    /// Chunk ids the client named: for a tier run the chunks to move, for
    /// a thaw the restore point's data chunks.
    pub named: Arc<Vec<ChunkId>>,
    /// Most ids `named` may hold: twice the chunks the index held when the
    /// lease began (room for batches sent again after a lost answer).
    pub named_limit: usize,
    /// An operation is running: the lease does not expire under it, and
    /// the same request sent again waits for it.
    pub running: bool,
    /// The last operation finished under the lease: a digest of its
    /// request, and its answer, given again to the same request (a client
    /// that lost the answer to a dropped connection asks again).
    pub finished: Option<([u8; 32], Vec<u8>)>,
}

impl Arbiter {
    /// Answers `known` for `ids`, given which of them the index holds warm,
    /// claiming the others for `session` unless another session has.
    pub fn answer(&mut self, session: &SessionId, ids: &[ChunkId], stored: &[bool]) -> Vec<Known> {
        let mut answers = Vec::with_capacity(ids.len());
        for (id, stored) in ids.iter().zip(stored) {
            let answer = if *stored {
                Known::Present
            } else {
                match self.claimed_by.get(id) {
                    Some(owner) if owner != session => Known::Deferred,
                    _ => {
                        self.claimed_by.insert(*id, session.clone());
                        if let Some(s) = self.sessions.get_mut(session) {
                            s.claims.insert(*id);
                        }
                        Known::Upload
                    }
                }
            };
            answers.push(answer);
        }
        answers
    }

    /// Ends the claims on chunks now stored, whoever held them.
    pub fn stored(&mut self, ids: impl IntoIterator<Item = ChunkId>) {
        for id in ids {
            if let Some(owner) = self.claimed_by.remove(&id) {
                if let Some(s) = self.sessions.get_mut(&owner) {
                    s.claims.remove(&id);
                }
            }
        }
    }

    /// Ends a session and its claims.
    pub fn end(&mut self, session: &SessionId) -> Option<Session> {
        let ended = self.sessions.remove(session)?;
        for id in &ended.claims {
            self.claimed_by.remove(id);
        }
        Some(ended)
    }

    /// Ends a maintenance lease whose client went silent; returns its id.
    pub fn expire_maintenance(&mut self, timeout: Duration) -> Option<String> {
        let stale = self
            .maintenance
            .as_ref()
            .is_some_and(|m| !m.running && m.last_seen.elapsed() > timeout);
        stale.then(|| self.maintenance.take().map(|m| m.id)).flatten()
    }

    /// Ends every session not heard from within `timeout`; returns them.
    pub fn expire(&mut self, timeout: Duration) -> Vec<(SessionId, Session)> {
        let now = Instant::now();
        let expired: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| now.duration_since(s.last_seen) > timeout)
            .map(|(id, _)| id.clone())
            .collect();
        expired
            .into_iter()
            .filter_map(|id| self.end(&id).map(|s| (id, s)))
            .collect()
    }
}

/// One repository the server serves.
pub struct Served {
    pub name: String,
    pub repo: Repository<Exclusive>,
    pub arbiter: Mutex<Arbiter>,
    pub sources: SourceBook,
}

/// The source name of each restore point committed through this server.
/// In an encrypted repository the server cannot read a manifest, so this
/// is how it knows which token may see which restore point.
pub struct SourceBook {
    path: PathBuf,
    known: Mutex<HashMap<RestorePointId, String>>,
}

impl SourceBook {
    pub fn open(dir: &Path) -> Result<SourceBook> {
        std::fs::create_dir_all(dir).at("creating", dir)?;
        let path = dir.join("sources");
        let mut known = HashMap::new();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                // A line cut by a crash is the last one; it is skipped.
                for line in text.lines() {
                    let Some((id, source)) = line.split_once(' ') else { continue };
                    let (Ok(id), Ok(source)) = (id.parse(), serde_json::from_str::<String>(source)) else {
                        continue;
                    };
                    known.insert(id, source);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("reading", &path, e)),
        }
        Ok(SourceBook {
            path,
            known: Mutex::new(known),
        })
    }

    pub fn get(&self, id: &RestorePointId) -> Option<String> {
        self.known.lock().expect("source book lock").get(id).cloned()
    }

    /// Records durably that `id` is of `source`.
    pub fn record(&self, id: &RestorePointId, source: &str) -> Result<()> {
        let mut known = self.known.lock().expect("source book lock");
        let line = format!("{id} {}\n", serde_json::to_string(source).unwrap_or_default());
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .at("opening", &self.path)?;
        file.write_all(line.as_bytes()).at("writing", &self.path)?;
        file.sync_data().at("syncing", &self.path)?;
        known.insert(*id, source.to_string());
        Ok(())
    }
}

/// The server's state shared by every request.
pub struct ServerState {
    pub repos: HashMap<String, Arc<Served>>,
    pub tokens: crate::tokens::Tokens,
    pub failures: crate::server::auth::FailedAuth,
    pub max_sessions: usize,
    pub session_timeout: Duration,
    /// Pack bodies held in memory at once; bounds the server's memory.
    pub pack_permits: tokio::sync::Semaphore,
    pub max_pack_bytes_extra: u64,
    /// Most bytes per second of pack uploads, all sessions together.
    pub upload_limit: Option<crate::throttle::Throttle>,
}

impl ServerState {
    pub fn live_sessions(&self) -> usize {
        self.repos
            .values()
            .map(|r| r.arbiter.lock().expect("arbiter lock").sessions.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(token: &str) -> Session {
        Session {
            token: token.into(),
            host: "h".into(),
            last_seen: Instant::now(),
            claims: HashSet::new(),
        }
    }

    #[test]
    fn one_session_uploads_a_chunk_the_other_waits_until_it_is_stored_or_the_claimer_ends() {
        let mut arbiter = Arbiter::default();
        arbiter.sessions.insert("a".into(), session("t"));
        arbiter.sessions.insert("b".into(), session("t"));
        let (x, y) = (ChunkId([1; 32]), ChunkId([2; 32]));
        assert_eq!(arbiter.answer(&"a".into(), &[x, y], &[false, true]), [Known::Upload, Known::Present]);
        assert_eq!(arbiter.answer(&"b".into(), &[x], &[false]), [Known::Deferred]);
        assert_eq!(arbiter.answer(&"a".into(), &[x], &[false]), [Known::Upload]);
        arbiter.end(&"a".into());
        assert_eq!(arbiter.answer(&"b".into(), &[x], &[false]), [Known::Upload]);
        arbiter.stored([x]);
        assert!(arbiter.sessions["b"].claims.is_empty());
    }
}
