//! Maintenance through the server: `forget` and `prune` for an admin
//! client, which holds the key the server lacks.
//!
//! The client takes the repository's maintenance lease (granted only
//! while no backup session is open; no session opens while it is held),
//! decides what to forget from the manifests it can read, and for a prune
//! walks every restore point and sends the ids of every chunk they
//! reference. The server checks the client walked exactly the restore
//! points there are, then sweeps (deleting dead packs, repacking sparse
//! ones by copying chunks as stored) without ever opening a chunk.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};

use strata_engine::cancel::CancelToken;
use strata_engine::id::RestorePointId;
use strata_engine::progress::NoProgress;
use strata_engine::prune::{prune_marked, ChunkFilter, Marked, PruneOptions, PruneReport};

use super::auth::authorize;
use super::error::ApiError;
use super::routes::{served, Peer};
use super::state::{Maintenance, Served, ServerState};
use crate::protocol::{decode_ids, MaintenanceStarted, PruneRequest, Role};

type Shared = State<Arc<ServerState>>;
type ApiResult<T> = Result<T, ApiError>;

fn busy(message: String) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "busy", message).retry_after(5)
}

fn stored_ids(served: &Served) -> ApiResult<BTreeSet<RestorePointId>> {
    Ok(served.repo.stored_restore_points()?.into_iter().map(|(id, _)| id).collect())
}

pub async fn begin(
    State(state): Shared,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(repo): Path<String>,
) -> ApiResult<Json<MaintenanceStarted>> {
    let token = authorize(&state, &headers, peer.0.ip(), Role::Admin, "maintain the repository").await?;
    let served = served(&state, &repo)?;
    let mut raw = [0u8; 16];
    strata_engine::crypto::random_bytes(&mut raw)?;
    let id = hex::encode(raw);
    let chunks = {
        let served = Arc::clone(&served);
        tokio::task::spawn_blocking(move || served.repo.chunk_index().chunks().count() as u64)
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
    };
    {
        let mut arbiter = served.arbiter.lock().expect("arbiter lock");
        if let Some(m) = &arbiter.maintenance {
            return Err(busy(format!("token {} is maintaining this repository", m.token)));
        }
        if !arbiter.sessions.is_empty() {
            return Err(busy(format!(
                "{} backup sessions are open; maintenance starts when they end",
                arbiter.sessions.len()
            )));
        }
        arbiter.maintenance = Some(Maintenance {
            id: id.clone(),
            token: token.name.clone(),
            last_seen: Instant::now(),
            live: ChunkFilter::with_capacity(chunks),
            live_count: 0,
            running: false,
        });
    }
    tracing::info!(maintenance = %id, token = %token.name, repository = %repo, "maintenance started; backups wait");
    let listed = {
        let served = Arc::clone(&served);
        tokio::task::spawn_blocking(move || stored_ids(&served))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
    };
    let restore_points = match listed {
        Ok(ids) => ids.iter().map(ToString::to_string).collect(),
        Err(e) => {
            served.arbiter.lock().expect("arbiter lock").maintenance = None;
            return Err(e);
        }
    };
    Ok(Json(MaintenanceStarted {
        maintenance: id,
        restore_points,
        timeout_secs: state.session_timeout.as_secs().max(1),
    }))
}

/// Checks the lease is live and `token`'s.
fn touch(served: &Served, id: &str, token: &str) -> ApiResult<()> {
    let mut arbiter = served.arbiter.lock().expect("arbiter lock");
    match &mut arbiter.maintenance {
        Some(m) if m.id == id && m.token == token => {
            m.last_seen = Instant::now();
            Ok(())
        }
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "maintenance_unknown",
            format!("no live maintenance lease {id} of this token (it ended or timed out): start again"),
        )),
    }
}

/// The token and repository of a request under lease `id`, once the
/// token is an admin's and the lease is live and its own.
async fn holder(
    state: &ServerState,
    headers: &HeaderMap,
    peer: Peer,
    repo: &str,
    id: &str,
    action: &str,
) -> ApiResult<(crate::tokens::TokenRecord, Arc<Served>)> {
    let token = authorize(state, headers, peer.0.ip(), Role::Admin, action).await?;
    let served = served(state, repo)?;
    touch(&served, id, &token.name)?;
    Ok((token, served))
}

pub async fn forget(
    State(state): Shared,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path((repo, id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let (token, served) = holder(&state, &headers, peer, &repo, &id, "forget restore points").await?;
    let ids: Vec<RestorePointId> = decode_ids(&body)?.into_iter().map(|c| RestorePointId(c.0)).collect();
    tokio::task::spawn_blocking(move || {
        let stored = stored_ids(&served)?;
        for rp in &ids {
            if !stored.contains(rp) {
                return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no restore point {rp}")));
            }
        }
        for rp in &ids {
            strata_engine::forget::remove(&served.repo, rp)?;
            tracing::info!(restore_point = %rp, token = %token.name, "forgotten by an admin client");
        }
        Ok(StatusCode::NO_CONTENT)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
}

pub async fn live(
    State(state): Shared,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path((repo, id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let (_, served) = holder(&state, &headers, peer, &repo, &id, "mark live chunks").await?;
    let ids = decode_ids(&body)?;
    let mut arbiter = served.arbiter.lock().expect("arbiter lock");
    if let Some(m) = &mut arbiter.maintenance {
        for chunk in &ids {
            m.live.insert(chunk);
        }
        m.live_count += ids.len() as u64;
    }
    Ok(StatusCode::NO_CONTENT)
}

pub async fn prune(
    State(state): Shared,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path((repo, id)): Path<(String, String)>,
    Json(request): Json<PruneRequest>,
) -> ApiResult<Json<PruneReport>> {
    let (_, served) = holder(&state, &headers, peer, &repo, &id, "prune").await?;
    if !(0.0..=1.0).contains(&request.repack_below) {
        return Err(ApiError::bad_request("repack_below must be between 0 and 1"));
    }
    let walked: BTreeSet<RestorePointId> = request
        .restore_points
        .iter()
        .map(|s| s.parse().map_err(|_| ApiError::bad_request(format!("{s:?} is not a restore point id"))))
        .collect::<ApiResult<_>>()?;
    let (live, count) = {
        let mut arbiter = served.arbiter.lock().expect("arbiter lock");
        let m = arbiter.maintenance.as_mut().expect("touched above");
        m.running = true;
        (std::mem::replace(&mut m.live, ChunkFilter::with_capacity(0)), m.live_count)
    };
    let options = PruneOptions {
        repack_below: request.repack_below,
        repack_cold: true,
        dry_run: request.dry_run,
    };
    let worker = Arc::clone(&served);
    let outcome = tokio::task::spawn_blocking(move || {
        let stored = stored_ids(&worker)?;
        if stored != walked {
            let missing = stored.difference(&walked).count();
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "walk_incomplete",
                format!("the client walked {} restore points, the repository has {} ({missing} not walked): nothing was pruned", walked.len(), stored.len()),
            ));
        }
        tracing::info!(restore_points = stored.len(), live_chunks = count, dry_run = options.dry_run, "prune marked by an admin client");
        let marked = Marked {
            live,
            restore_points: stored.len() as u64,
        };
        Ok(prune_marked(&worker.repo, &options, marked, &NoProgress, &CancelToken::new())?)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()));
    if let Some(m) = served.arbiter.lock().expect("arbiter lock").maintenance.as_mut() {
        m.running = false;
        m.last_seen = Instant::now();
    }
    Ok(Json(outcome??))
}

pub async fn end(
    State(state): Shared,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path((repo, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let (_, served) = holder(&state, &headers, peer, &repo, &id, "end maintenance").await?;
    served.arbiter.lock().expect("arbiter lock").maintenance = None;
    tracing::info!(maintenance = %id, "maintenance ended; backups may open again");
    Ok(StatusCode::NO_CONTENT)
}
