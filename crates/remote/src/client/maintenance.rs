//! `forget` and `prune` through a server, by an admin client: the
//! decisions that need the key (which restore points a policy keeps,
//! which chunks they reference) are made here; the server deletes and
//! sweeps. See docs/PROTOCOL.md, "Maintenance".

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use reqwest::Method;

use strata_engine::cancel::CancelToken;
use strata_engine::error::{Error, Result};
use strata_engine::id::{ChunkId, RestorePointId};
use strata_engine::prune::PruneReport;
use strata_engine::reachability::for_each_chunk;
use strata_engine::reader::RepositoryReader;
use strata_engine::walk::ReaderLoader;

use super::connection::Payload;
use super::repository::RemoteRepository;
use crate::protocol::{encode_ids, MaintenanceStarted, PruneRequest, MAX_IDS_PER_REQUEST};

/// The repository's maintenance lease, held until dropped.
pub struct Maintenance<'r> {
    reader: &'r RemoteRepository,
    id: String,
    /// Every restore point in the repository when the lease was taken
    /// (none can be added while it is held).
    pub restore_points: BTreeSet<RestorePointId>,
}

impl<'r> Maintenance<'r> {
    /// Takes the lease, waiting up to `patience` for running backups (or
    /// another admin) to finish.
    pub fn begin(reader: &'r RemoteRepository, patience: Duration, cancel: &CancelToken) -> Result<Self> {
        let started = Instant::now();
        loop {
            cancel.check()?;
            match reader.connection.call(Method::POST, "/maintenance", Payload::None, &[])? {
                Ok(body) => {
                    let answer: MaintenanceStarted = serde_json::from_slice(&body)
                        .map_err(|e| Error::corrupt(format!("an answer from {}", reader.location()), e.to_string()))?;
                    let restore_points = answer
                        .restore_points
                        .iter()
                        .map(|s| s.parse())
                        .collect::<std::result::Result<_, _>>()
                        .map_err(|_| Error::corrupt(format!("an answer from {}", reader.location()), "a restore point id"))?;
                    return Ok(Maintenance {
                        reader,
                        id: answer.maintenance,
                        restore_points,
                    });
                }
                Err(refusal) if refusal.code == "busy" && started.elapsed() < patience => {
                    tracing::info!(reason = %refusal.message, "waiting to maintain the repository");
                    std::thread::sleep(Duration::from_secs(2));
                }
                Err(refusal) => return Err(reader.connection.refused(refusal)),
            }
        }
    }

    fn path(&self, rest: &str) -> String {
        format!("/maintenance/{}{rest}", self.id)
    }

    /// Removes restore points (their data goes at the next prune).
    pub fn forget(&self, ids: &[RestorePointId]) -> Result<()> {
        for batch in ids.chunks(MAX_IDS_PER_REQUEST) {
            let chunk_ids: Vec<ChunkId> = batch.iter().map(|id| ChunkId(id.0)).collect();
            self.reader
                .connection
                .expect(Method::POST, &self.path("/forget"), Payload::Bytes(&encode_ids(&chunk_ids)), &[])?;
        }
        Ok(())
    }

    /// Walks every restore point, sends the server what they reference,
    /// and has it sweep what they do not.
    pub fn prune(&self, repack_below: f64, dry_run: bool, cancel: &CancelToken) -> Result<PruneReport> {
        let points = self.reader.restore_points()?;
        let seen: BTreeSet<RestorePointId> = points.iter().map(|rp| rp.id).collect();
        if seen != self.restore_points {
            return Err(Error::InvalidInput(format!(
                "this client sees {} restore points and the repository has {}: prune needs a token that sees every source ('*')",
                seen.len(),
                self.restore_points.len()
            )));
        }
        let loader = ReaderLoader(self.reader as &dyn RepositoryReader);
        let mut visited = HashSet::new();
        let mut batch: Vec<ChunkId> = Vec::with_capacity(MAX_IDS_PER_REQUEST);
        let mut sent: HashSet<ChunkId> = HashSet::new();
        for rp in &points {
            let mut send = |id: &ChunkId| -> Result<()> {
                if sent.insert(*id) {
                    batch.push(*id);
                }
                if batch.len() == MAX_IDS_PER_REQUEST {
                    self.send_live(&std::mem::take(&mut batch))?;
                }
                Ok(())
            };
            for_each_chunk(&loader, rp, &mut visited, cancel, &mut |id, _| send(id))?;
        }
        self.send_live(&batch)?;
        let request = PruneRequest {
            repack_below,
            dry_run,
            restore_points: self.restore_points.iter().map(ToString::to_string).collect(),
        };
        let body = serde_json::to_vec(&request).map_err(|e| Error::InvalidInput(e.to_string()))?;
        let answer = self
            .reader
            .connection
            .expect(Method::POST, &self.path("/prune"), Payload::Json(body), &[])?;
        serde_json::from_slice(&answer)
            .map_err(|e| Error::corrupt(format!("an answer from {}", self.reader.location()), e.to_string()))
    }

    fn send_live(&self, ids: &[ChunkId]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.reader
            .connection
            .expect(Method::POST, &self.path("/live"), Payload::Bytes(&encode_ids(ids)), &[])?;
        Ok(())
    }
}

impl Drop for Maintenance<'_> {
    fn drop(&mut self) {
        // Best effort: a lease not ended here times out on the server.
        if let Err(e) = self
            .reader
            .connection
            .expect(Method::DELETE, &self.path(""), Payload::None, &[])
        {
            tracing::warn!(error = %e, "ending the maintenance lease failed; it times out on the server");
        }
    }
}
