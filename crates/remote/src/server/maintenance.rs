//! Maintenance through the server: `forget`, `prune`, `tier run` and
//! `thaw` for an admin client, which holds the key the server lacks.
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
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use strata_engine::cancel::CancelToken;
use strata_engine::id::{ChunkId, RestorePointId};
use strata_engine::progress::NoProgress;
use strata_engine::prune::{prune_marked, ChunkFilter, Marked, PruneOptions};

use super::auth::authorize;
use super::error::ApiError;
use super::routes::{blocking, served, Peer};
use super::state::{Maintenance, Served, ServerState};
use crate::protocol::{decode_ids, MaintenanceStarted, PruneRequest, Role, MAX_IDS_PER_REQUEST};

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
        blocking(move || Ok(served.repo.chunk_index().chunks().count() as u64)).await?
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
            live: Some(ChunkFilter::with_capacity(chunks)),
            live_count: 0,
            named: Arc::default(),
            named_limit: usize::try_from(chunks).unwrap_or(usize::MAX).saturating_mul(2) + MAX_IDS_PER_REQUEST,
            running: false,
            finished: None,
        });
    }
    tracing::info!(maintenance = %id, token = %token.name, repository = %repo, "maintenance started; backups wait");
    let listed = {
        let served = Arc::clone(&served);
        blocking(move || stored_ids(&served)).await
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
        _ => Err(lease_gone(id)),
    }
}

/// The token and repository of a request under lease `id`, once the
/// token is an admin's and the lease is live and its own.
pub(super) async fn holder(
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
    let digest = request_digest("forget", &body);
    operate(served, digest, Marks::Named, move |served, _, _| {
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
        Ok(Vec::new())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn live(
    State(state): Shared,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path((repo, id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    take_ids(&state, &headers, peer, (&repo, &id), "mark live chunks", &body, |m, ids| {
        let live = m.live.as_mut().ok_or_else(marks_used)?;
        for chunk in &ids {
            live.insert(chunk);
        }
        m.live_count += ids.len() as u64;
        Ok(())
    })
    .await
}

/// Chunks the client names for the next operation: to move (tier run) or
/// to thaw.
pub async fn named(
    State(state): Shared,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path((repo, id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    take_ids(&state, &headers, peer, (&repo, &id), "name chunks", &body, |m, ids| {
        if m.running {
            return Err(still_running());
        }
        if m.named.len() + ids.len() > m.named_limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_many_chunks",
                format!("more chunks named than twice the {} the repository holds", m.named_limit / 2),
            ));
        }
        Arc::make_mut(&mut m.named).extend(ids);
        Ok(())
    })
    .await
}

/// A batch of chunk ids sent under lease `id` of `repo`, handed to `take`
/// with the lease.
async fn take_ids(
    state: &ServerState,
    headers: &HeaderMap,
    peer: Peer,
    (repo, id): (&str, &str),
    action: &str,
    body: &[u8],
    take: impl FnOnce(&mut Maintenance, Vec<ChunkId>) -> ApiResult<()>,
) -> ApiResult<StatusCode> {
    let (_, served) = holder(state, headers, peer, repo, id, action).await?;
    let ids = decode_ids(body)?;
    let mut arbiter = served.arbiter.lock().expect("arbiter lock");
    let m = arbiter.maintenance.as_mut().ok_or_else(|| lease_gone(id))?;
    take(m, ids)?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn prune(
    State(state): Shared,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path((repo, id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let (_, served) = holder(&state, &headers, peer, &repo, &id, "prune").await?;
    let request: PruneRequest = parse_json(&body)?;
    if !(0.0..=1.0).contains(&request.repack_below) {
        return Err(ApiError::bad_request("repack_below must be between 0 and 1"));
    }
    let walked = parse_restore_points(&request.restore_points)?;
    let options = PruneOptions {
        repack_below: request.repack_below,
        repack_cold: true,
        dry_run: request.dry_run,
    };
    let answer = operate(served, request_digest("prune", &body), Marks::Live, move |served, live, _| {
        let stored = require_walked(&served, &walked)?;
        tracing::info!(restore_points = stored, dry_run = options.dry_run, "prune marked by an admin client");
        let marked = Marked {
            live: live.expect("asked for the live marks"),
            restore_points: stored,
        };
        json(&prune_marked(&served.repo, &options, marked, &NoProgress, &CancelToken::new())?)
    })
    .await?;
    Ok(json_response(answer))
}

/// What an operation takes from the lease.
#[derive(PartialEq)]
pub(super) enum Marks {
    /// The live marks, which the operation's sweep uses up.
    Live,
    /// Only the chunks named (a thaw), or nothing (a forget).
    Named,
}

/// Runs `operation` on a blocking thread once for this request under the
/// lease (see the module's description), and gives its JSON answer.
pub(super) async fn operate(
    served: Arc<Served>,
    digest: [u8; 32],
    marks: Marks,
    operation: impl FnOnce(Arc<Served>, Option<ChunkFilter>, Arc<Vec<ChunkId>>) -> ApiResult<Vec<u8>> + Send + 'static,
) -> ApiResult<Vec<u8>> {
    let (live, named) = {
        let mut arbiter = served.arbiter.lock().expect("arbiter lock");
        let Some(m) = arbiter.maintenance.as_mut() else {
            return Err(lease_gone("of this request"));
        };
        if m.running {
            return Err(still_running());
        }
        if let Some((done, answer)) = &m.finished {
            if *done == digest {
                return Ok(answer.clone());
            }
        }
        let live = match marks {
            Marks::Live => Some(m.live.take().ok_or_else(marks_used)?),
            Marks::Named => None,
        };
        m.running = true;
        (live, Arc::clone(&m.named))
    };
    let worker = Arc::clone(&served);
    let outcome = blocking(move || operation(worker, live, named)).await;
    if let Some(m) = served.arbiter.lock().expect("arbiter lock").maintenance.as_mut() {
        m.running = false;
        m.last_seen = Instant::now();
        if let Ok(answer) = &outcome {
            m.finished = Some((digest, answer.clone()));
        }
    }
    outcome
}

pub(super) fn request_digest(operation: &str, body: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(operation.as_bytes());
    hasher.update(&[0]);
    hasher.update(body);
    *hasher.finalize().as_bytes()
}

pub(super) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the request body: {e}")))
}

/// An operation's JSON answer, sent as it was made (a repeated request
/// gets the same bytes).
pub(super) fn json_response(answer: Vec<u8>) -> Response {
    ([("content-type", "application/json")], answer).into_response()
}

pub(super) fn json<T: serde::Serialize>(value: &T) -> ApiResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| ApiError::internal(e.to_string()))
}

pub(super) fn parse_restore_points(ids: &[String]) -> ApiResult<BTreeSet<RestorePointId>> {
    ids.iter()
        .map(|s| s.parse().map_err(|_| ApiError::bad_request(format!("{s:?} is not a restore point id"))))
        .collect()
}

/// Checks the client walked exactly the repository's restore points;
/// returns how many there are.
pub(super) fn require_walked(served: &Served, walked: &BTreeSet<RestorePointId>) -> ApiResult<u64> {
    let stored = stored_ids(served)?;
    if stored != *walked {
        let missing = stored.difference(walked).count();
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "walk_incomplete",
            format!(
                "the client walked {} restore points, the repository has {} ({missing} not walked): nothing was changed",
                walked.len(),
                stored.len()
            ),
        ));
    }
    Ok(stored.len() as u64)
}

fn lease_gone(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "maintenance_unknown",
        format!("no live maintenance lease {id} (it ended or timed out): start again"),
    )
}

fn still_running() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "running",
        "an operation is running under this lease; its answer comes when it ends",
    )
    .retry_after(2)
}

fn marks_used() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "marks_used",
        "the live marks of this lease were used by an operation already: end it and start again",
    )
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
