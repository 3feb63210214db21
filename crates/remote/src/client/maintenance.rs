//! `forget`, `prune`, `tier run` and `thaw` through a server, by an admin
//! client: the decisions that need the key (which restore points a policy
//! keeps, which chunks they reference, which are cold) are made here; the
//! server deletes, moves, copies and sweeps. See docs/PROTOCOL.md,
//! "Maintenance".

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use reqwest::Method;

use strata_engine::cancel::CancelToken;
use strata_engine::error::{Error, Result};
use strata_engine::id::{ChunkId, PackId, RestorePointId};
use strata_engine::prune::PruneReport;
use strata_engine::restore_point::RestorePoint;
use strata_engine::storage::RestorePriority;
use strata_engine::thaw::{ThawOptions, ThawReport};
use strata_engine::thaw_record::{pack_thaw_record_name, restore_point_thaw_record_name, seal_thaw_record};
use strata_engine::tier::TierReport;
use strata_engine::reachability::for_each_chunk;
use strata_engine::reader::RepositoryReader;
use strata_engine::walk::ReaderLoader;

use super::connection::Payload;
use super::repository::RemoteRepository;
use crate::protocol::{encode_ids, MaintenanceStarted, PruneRequest, ThawRequest, TierRequest, MAX_IDS_PER_REQUEST};

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
                Err(refusal) if refusal.code == "busy" => {
                    return Err(Error::Busy {
                        holder: format!("{} ({})", refusal.message, reader.location()),
                    })
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
            self.operation("/forget", Payload::Bytes(&encode_ids(&chunk_ids)))?;
        }
        Ok(())
    }

    /// Walks every restore point, sends the server what they reference,
    /// and has it sweep what they do not.
    pub fn prune(&self, repack_below: f64, dry_run: bool, cancel: &CancelToken) -> Result<PruneReport> {
        let points = self.every_restore_point()?;
        let loader = ReaderLoader(self.reader as &dyn RepositoryReader);
        let mut live = Sender::new(self, "/live");
        let mut visited = HashSet::new();
        for rp in &points {
            for_each_chunk(&loader, rp, &mut visited, cancel, &mut |id, _| live.send(id))?;
        }
        live.flush()?;
        let request = PruneRequest {
            repack_below,
            dry_run,
            restore_points: self.restore_points.iter().map(ToString::to_string).collect(),
        };
        self.json_operation("/prune", &request)
    }

    /// Walks every restore point, names the data chunks only those older
    /// than `warm_days` use and sends every referenced chunk as live; the
    /// server moves the named chunks to the cold tier (as stored: it
    /// cannot recompress what it cannot open) and sweeps.
    /// `only_sources`, when it names any, limits the cold ones to theirs.
    pub fn tier(&self, warm_days: u32, only_sources: &[String], cancel: &CancelToken) -> Result<TierReport> {
        let points = self.every_restore_point()?;
        let (cold, warm) = strata_engine::tier::split_by_age(points, warm_days, only_sources);
        let capacity = self.reader.storage()?.stored.chunks;
        let loader = ReaderLoader(self.reader as &dyn RepositoryReader);
        let mut live = Sender::new(self, "/live");
        let mut moving = Sender::new(self, "/chunks");
        strata_engine::tier::mark(
            &loader,
            &cold,
            &warm,
            capacity,
            cancel,
            &mut |id| moving.send(id),
            &mut |id| live.send(id),
        )?;
        live.flush()?;
        moving.flush()?;
        let request = TierRequest {
            warm_days,
            restore_points: self.restore_points.iter().map(ToString::to_string).collect(),
            restore_points_cold: cold.len() as u64,
        };
        self.json_operation("/tier", &request)
    }

    /// Thaws restore point `rp`, whose data chunks are `data_chunks` (see
    /// [`data_chunks`]): the server plans which cold packs they are in,
    /// this client seals a thaw record for each, and the server copies
    /// what it can now and asks the provider to restore the rest.
    pub fn thaw(
        &self,
        rp: &RestorePointId,
        data_chunks: &[ChunkId],
        options: &ThawOptions,
        cancel: &CancelToken,
    ) -> Result<ThawReport> {
        let mut named = Sender::new(self, "/chunks");
        for id in data_chunks {
            cancel.check()?;
            named.send(id)?;
        }
        named.flush()?;
        let until = strata_engine::clock::now().sec + i64::from(options.days) * 86_400;
        let mut request = ThawRequest {
            restore_point: rp.to_string(),
            days: options.days,
            plan: true,
            priority: match options.priority {
                RestorePriority::Expedited => "expedited".into(),
                RestorePriority::Standard => "standard".into(),
            },
            until,
            records: Default::default(),
        };
        let plan: ThawReport = self.json_operation("/thaw", &request)?;
        if options.plan {
            return Ok(plan);
        }
        let protection = self.reader.protection();
        let mut names = vec![restore_point_thaw_record_name(rp)];
        for pack in plan.packs.keys() {
            let pack: PackId = pack
                .parse()
                .map_err(|_| Error::corrupt(format!("an answer from {}", self.reader.location()), "a pack id"))?;
            names.push(pack_thaw_record_name(&pack));
        }
        for name in names {
            let sealed = seal_thaw_record(protection, &name, until)?;
            request.records.insert(name, hex::encode(sealed));
        }
        request.plan = false;
        self.json_operation("/thaw", &request)
    }

    /// The restore points, checked to be every one the repository has:
    /// an operation that sweeps must have walked them all.
    fn every_restore_point(&self) -> Result<Vec<RestorePoint>> {
        let points = self.reader.restore_points()?;
        let seen: BTreeSet<RestorePointId> = points.iter().map(|rp| rp.id).collect();
        if seen != self.restore_points {
            return Err(Error::InvalidInput(format!(
                "this client sees {} restore points and the repository has {}: this needs a token that sees every source ('*')",
                seen.len(),
                self.restore_points.len()
            )));
        }
        Ok(points)
    }

    fn json_operation<T: serde::de::DeserializeOwned>(&self, path: &str, request: &impl serde::Serialize) -> Result<T> {
        let body = serde_json::to_vec(request).map_err(|e| Error::InvalidInput(e.to_string()))?;
        let answer = self.operation(path, Payload::Json(body))?;
        serde_json::from_slice(&answer)
            .map_err(|e| Error::corrupt(format!("an answer from {}", self.reader.location()), e.to_string()))
    }

    /// Sends an operation, and waits while the server says the same
    /// request is still running (its answer was lost to a dropped
    /// connection, and it was sent again).
    fn operation(&self, path: &str, payload: Payload<'_>) -> Result<Vec<u8>> {
        loop {
            match self.reader.connection.call(Method::POST, &self.path(path), payload.clone(), &[])? {
                Ok(answer) => return Ok(answer),
                Err(refusal) if refusal.code == "running" => {
                    tracing::info!("the server is still running this operation; waiting for its answer");
                    std::thread::sleep(Duration::from_secs(2));
                }
                Err(refusal) => return Err(self.reader.connection.refused(refusal)),
            }
        }
    }
}

/// The data chunks of restore point `rp`, which a thaw names.
pub fn data_chunks(reader: &RemoteRepository, rp: &RestorePoint, cancel: &CancelToken) -> Result<Vec<ChunkId>> {
    let loader = ReaderLoader(reader as &dyn RepositoryReader);
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut visited = HashSet::new();
    for_each_chunk(&loader, rp, &mut visited, cancel, &mut |id, is_data| {
        if is_data && seen.insert(*id) {
            out.push(*id);
        }
        Ok(())
    })?;
    Ok(out)
}

/// Sends chunk ids to a lease endpoint in batches, each id once.
struct Sender<'m, 'r> {
    lease: &'m Maintenance<'r>,
    path: &'static str,
    batch: Vec<ChunkId>,
    sent: HashSet<ChunkId>,
}

impl<'m, 'r> Sender<'m, 'r> {
    fn new(lease: &'m Maintenance<'r>, path: &'static str) -> Self {
        Sender {
            lease,
            path,
            batch: Vec::with_capacity(MAX_IDS_PER_REQUEST),
            sent: HashSet::new(),
        }
    }

    fn send(&mut self, id: &ChunkId) -> Result<()> {
        if self.sent.insert(*id) {
            self.batch.push(*id);
        }
        if self.batch.len() == MAX_IDS_PER_REQUEST {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let ids = std::mem::take(&mut self.batch);
        self.lease
            .reader
            .connection
            .expect(Method::POST, &self.lease.path(self.path), Payload::Bytes(&encode_ids(&ids)), &[])?;
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
