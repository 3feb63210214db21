//! The endpoints (docs/PROTOCOL.md lists each with its role, body and
//! answer). Handlers check the token first, then do the work on a
//! blocking thread: the engine's calls wait on disks and stores.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Extension, Json, Router};

use strata_engine::crypto::Protection;
use strata_engine::id::{PackId, RestorePointId};
use strata_engine::reader::RepositoryReader;
use strata_engine::restore_point::Manifest;

use super::auth::{authorize, require_source};
use super::{admin, maintenance, tiers};
use super::error::ApiError;
use super::state::{Served, ServerState, Session, SessionId};
use crate::protocol::{
    decode_ids, encode_chunk_frame, encode_manifest_frame, Committed, Known, OpenSession, PackStored, Role,
    ServerInfo, SessionOpened, MAX_MANIFEST_BYTES, MAX_READ_RESPONSE, PROTOCOL_VERSION, RESTORE_POINT_HEADER, SOURCE_HEADER,
};
use crate::tokens::TokenRecord;

/// The peer's address, set on every request by the accept loop.
#[derive(Clone, Copy)]
pub struct Peer(pub SocketAddr);

type Shared = State<Arc<ServerState>>;
type ApiResult<T> = Result<T, ApiError>;

pub fn router(state: Arc<ServerState>) -> Router {
    let ids_limit = DefaultBodyLimit::max(crate::protocol::MAX_IDS_PER_REQUEST * 32);
    Router::new()
        .route("/api/v1", get(info))
        .route(
            "/api/v1/repos/{repo}/objects/{*name}",
            get(object).put(admin::put_key_slot).delete(admin::delete_key_slot),
        )
        .route("/api/v1/repos/{repo}/storage", get(admin::storage))
        .route("/api/v1/repos/{repo}/check", post(admin::check))
        .route("/api/v1/repos/{repo}/keys", get(key_names))
        .route("/api/v1/repos/{repo}/restore-points", get(restore_points))
        .route("/api/v1/repos/{repo}/chunks/read", post(read_chunks).layer(ids_limit))
        .route("/api/v1/repos/{repo}/chunks/present", post(present).layer(ids_limit))
        .route("/api/v1/repos/{repo}/sessions", post(open_session))
        .route("/api/v1/repos/{repo}/sessions/{session}/known", post(known).layer(ids_limit))
        .route("/api/v1/repos/{repo}/sessions/{session}/heartbeat", post(heartbeat))
        .route(
            "/api/v1/repos/{repo}/sessions/{session}/packs/{pack}",
            // The handler bounds the body itself, after taking a permit.
            put(store_pack).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/api/v1/repos/{repo}/sessions/{session}/commit",
            post(commit).layer(DefaultBodyLimit::max(MAX_MANIFEST_BYTES)),
        )
        .route("/api/v1/repos/{repo}/sessions/{session}", delete(abort))
        .route("/api/v1/repos/{repo}/maintenance", post(maintenance::begin))
        .route("/api/v1/repos/{repo}/maintenance/{id}", delete(maintenance::end))
        .route("/api/v1/repos/{repo}/maintenance/{id}/forget", post(maintenance::forget).layer(ids_limit))
        .route("/api/v1/repos/{repo}/maintenance/{id}/live", post(maintenance::live).layer(ids_limit))
        .route("/api/v1/repos/{repo}/maintenance/{id}/chunks", post(maintenance::named).layer(ids_limit))
        .route("/api/v1/repos/{repo}/maintenance/{id}/prune", post(maintenance::prune))
        .route("/api/v1/repos/{repo}/maintenance/{id}/tier", post(tiers::tier))
        .route("/api/v1/repos/{repo}/maintenance/{id}/thaw", post(tiers::thaw))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        // A bug that panics in a handler answers 500 (and is logged)
        // instead of leaving its client waiting on a stream that never
        // ends.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            ApiError::internal("the server failed handling this request (a bug: see its log)").into_response()
        }))
        .with_state(state)
}

pub(super) fn served(state: &ServerState, repo: &str) -> ApiResult<Arc<Served>> {
    state
        .repos
        .get(repo)
        .cloned()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("this server has no repository {repo:?}")))
}

/// Runs blocking engine work off the async threads.
pub(super) async fn blocking<T: Send + 'static>(work: impl FnOnce() -> ApiResult<T> + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(format!("a worker thread failed: {e}")))?
}

fn octets(body: Vec<u8>) -> Response {
    ([("content-type", "application/octet-stream")], body).into_response()
}

async fn info(State(state): Shared, Extension(peer): Extension<Peer>, headers: HeaderMap) -> ApiResult<Json<ServerInfo>> {
    authorize(&state, &headers, peer.0.ip(), Role::Restore, "ask what this server serves").await?;
    let mut repositories: Vec<String> = state.repos.keys().cloned().collect();
    repositories.sort();
    Ok(Json(ServerInfo {
        protocol: vec![PROTOCOL_VERSION],
        server: format!("strata {}", env!("CARGO_PKG_VERSION")),
        repositories,
    }))
}

/// The objects a client needs to open the repository itself:
/// `config.json` and the key slots. Nothing else is served by name.
async fn object(
    State(state): Shared,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path((repo, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    authorize(&state, &headers, peer.0.ip(), Role::Restore, "read the repository's configuration").await?;
    let served = served(&state, &repo)?;
    let allowed = name == "config.json"
        || strata_engine::key_slot::SlotId::from_object_name(&name).is_some();
    if !allowed {
        return Err(ApiError::forbidden(format!("object {name:?} is not served by name")));
    }
    let bytes = blocking(move || Ok(served.repo.store().get(&name)?)).await?;
    Ok(octets(bytes))
}

async fn key_names(
    State(state): Shared,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(repo): Path<String>,
) -> ApiResult<Json<Vec<String>>> {
    authorize(&state, &headers, peer.0.ip(), Role::Restore, "list key slots").await?;
    let served = served(&state, &repo)?;
    blocking(move || Ok(Json(strata_engine::keys::slot_names(served.repo.store())?))).await
}

/// The source of a stored restore point, if the server can know it: from
/// its book, or from the manifest itself when nothing is sealed.
fn source_of(served: &Served, id: &RestorePointId, stored: &[u8]) -> Option<String> {
    if let Some(source) = served.sources.get(id) {
        return Some(source);
    }
    if served.repo.protection().is_encrypted() {
        return None;
    }
    Manifest::open(&Protection::none(), id, stored).ok().map(|m| m.source)
}

fn may_see(token: &TokenRecord, source: Option<&str>) -> bool {
    match source {
        Some(source) => token.covers(source),
        None => token.covers_all(),
    }
}

async fn restore_points(
    State(state): Shared,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(repo): Path<String>,
) -> ApiResult<Response> {
    let token = authorize(&state, &headers, peer.0.ip(), Role::Restore, "list restore points").await?;
    let served = served(&state, &repo)?;
    let body = blocking(move || {
        let mut body = Vec::new();
        for (id, stored) in served.repo.stored_restore_points()? {
            if may_see(&token, source_of(&served, &id, &stored).as_deref()) {
                encode_manifest_frame(&mut body, &id, &stored);
            }
        }
        Ok(body)
    })
    .await?;
    Ok(octets(body))
}

/// Chunks as stored, in the order asked, until the response is full: the
/// client asks again for the rest.
async fn read_chunks(
    State(state): Shared,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(repo): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    authorize(&state, &headers, peer.0.ip(), Role::Restore, "read chunks").await?;
    let served = served(&state, &repo)?;
    let ids = decode_ids(&body)?;
    let body = blocking(move || {
        let mut out = Vec::new();
        for id in &ids {
            let (pack, entry, stored) = served.repo.read_stored_chunk(id)?;
            encode_chunk_frame(&mut out, &pack, &entry, &stored);
            if out.len() >= MAX_READ_RESPONSE {
                break;
            }
        }
        Ok(out)
    })
    .await?;
    Ok(octets(body))
}

/// Per id: 0 not stored, 1 warm, 2 cold but readable (thawed), 3 cold.
async fn present(
    State(state): Shared,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(repo): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    authorize(&state, &headers, peer.0.ip(), Role::Restore, "ask which chunks are stored").await?;
    let served = served(&state, &repo)?;
    let ids = decode_ids(&body)?;
    let body = blocking(move || {
        let repo = &served.repo;
        let warm = repo.chunk_index().warm_chunks(&ids)?;
        let mut out = Vec::with_capacity(ids.len());
        for (id, warm) in ids.iter().zip(warm) {
            out.push(if warm {
                1
            } else if repo.chunk_index().chunk(id)?.is_none() {
                0
            } else if RepositoryReader::is_readable(repo, id)? {
                2
            } else {
                3
            });
        }
        Ok(out)
    })
    .await?;
    Ok(octets(body))
}

async fn open_session(
    State(state): Shared,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(repo): Path<String>,
    Json(request): Json<OpenSession>,
) -> ApiResult<Json<SessionOpened>> {
    let token = authorize(&state, &headers, peer.0.ip(), Role::Backup, "back up").await?;
    let served = served(&state, &repo)?;
    if state.live_sessions() >= state.max_sessions {
        tracing::info!(token = %token.name, host = %request.host, "session refused: the server is at --max-sessions");
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_sessions",
            format!("the server runs {} backup sessions, its limit; try again shortly", state.max_sessions),
        )
        .retry_after(2));
    }
    let mut raw = [0u8; 16];
    strata_engine::crypto::random_bytes(&mut raw)?;
    let id = hex::encode(raw);
    let mut arbiter = served.arbiter.lock().expect("arbiter lock");
    if let Some(m) = &arbiter.maintenance {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "maintenance",
            format!("token {} is maintaining the repository (forget, prune); backups wait until it ends", m.token),
        )
        .retry_after(5));
    }
    tracing::info!(session = %id, token = %token.name, host = %request.host, repository = %repo, "backup session opened");
    arbiter.sessions.insert(
        id.clone(),
        Session {
            token: token.name.clone(),
            host: request.host,
            last_seen: Instant::now(),
            claims: Default::default(),
        },
    );
    drop(arbiter);
    Ok(Json(SessionOpened {
        session: id,
        timeout_secs: state.session_timeout.as_secs().max(1),
        max_pack_bytes: served.repo.config().pack_target_size + state.max_pack_bytes_extra,
    }))
}

/// Checks that `session` is live and `token`'s, and notes that its owner
/// was heard from.
fn touch(served: &Served, session: &SessionId, token: &TokenRecord) -> ApiResult<()> {
    let mut arbiter = served.arbiter.lock().expect("arbiter lock");
    match arbiter.sessions.get_mut(session) {
        Some(s) if s.token == token.name => {
            s.last_seen = Instant::now();
            Ok(())
        }
        Some(_) => {
            tracing::warn!(token = %token.name, %session, "refused: another token's session");
            Err(ApiError::forbidden("this session belongs to another token"))
        }
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "session_unknown",
            format!("no live session {session} (it ended, timed out, or the server restarted): open a new one"),
        )),
    }
}

/// The token and repository of a request in session `session`, once the
/// token may back up and the session is live and its own.
async fn owner(
    state: &ServerState,
    headers: &HeaderMap,
    peer: Peer,
    repo: &str,
    session: &SessionId,
    action: &str,
) -> ApiResult<(TokenRecord, Arc<Served>)> {
    let token = authorize(state, headers, peer.0.ip(), Role::Backup, action).await?;
    let served = served(state, repo)?;
    touch(&served, session, &token)?;
    Ok((token, served))
}

async fn known(
    State(state): Shared,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path((repo, session)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let (_, served) = owner(&state, &headers, peer, &repo, &session, "ask which chunks to upload").await?;
    let ids = decode_ids(&body)?;
    let answers = blocking(move || {
        // Under the arbiter's lock: a pack stored meanwhile is either
        // seen in the index or still claimed.
        let mut arbiter = served.arbiter.lock().expect("arbiter lock");
        let stored = served.repo.chunk_index().warm_chunks(&ids)?;
        Ok(arbiter.answer(&session, &ids, &stored))
    })
    .await?;
    Ok(octets(answers.into_iter().map(|k: Known| k as u8).collect()))
}

async fn heartbeat(
    State(state): Shared,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path((repo, session)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    owner(&state, &headers, peer, &repo, &session, "keep a session open").await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn store_pack(
    State(state): Shared,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path((repo, session, pack)): Path<(String, String, String)>,
    body: Body,
) -> ApiResult<Response> {
    let token = authorize(&state, &headers, peer.0.ip(), Role::Backup, "upload a pack").await?;
    let served = served(&state, &repo)?;
    let id: PackId = pack
        .parse()
        .map_err(|_| ApiError::bad_request(format!("{pack:?} is not a pack id")))?;
    let limit = served.repo.config().pack_target_size + state.max_pack_bytes_extra;
    let _permit = state
        .pack_permits
        .acquire()
        .await
        .map_err(|_| ApiError::internal("the server is stopping"))?;
    // The body is read before the session is judged: an answer sent while
    // a client is still sending reaches it as a broken upload, not as the
    // answer, and a client told its session is unknown (after a restart)
    // must hear it to open a new one.
    let bytes = read_pack_body(body, usize::try_from(limit).unwrap_or(usize::MAX), state.upload_limit.as_ref())
        .await
        .map_err(|e| {
            tracing::warn!(token = %token.name, %session, error = %e, "pack upload refused or cut");
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the pack body was cut or is larger than this repository's limit of {limit} bytes: {e}"),
            )
        })?;
    touch(&served, &session, &token)?;
    let stored = blocking(move || {
        let imported = served.repo.import_pack(&id, &bytes).map_err(|e| match e {
            strata_engine::Error::Corrupt { .. } => {
                tracing::warn!(token = %token.name, %session, pack = %id, error = %e, "refused an invalid pack");
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "pack_invalid", e.to_string())
            }
            e => ApiError::from(e),
        })?;
        served
            .arbiter
            .lock()
            .expect("arbiter lock")
            .stored(imported.entries.iter().map(|e| e.id));
        Ok(PackStored {
            chunks: imported.entries.len() as u64,
            already_stored: imported.already_stored,
        })
    })
    .await?;
    let status = if stored.already_stored { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(stored)).into_response())
}

/// A pack's body, refused past `limit` bytes, taken in no faster than
/// the server's upload limit (HTTP/2 flow control then slows the sender).
async fn read_pack_body(
    mut body: Body,
    limit: usize,
    throttle: Option<&crate::throttle::Throttle>,
) -> Result<Vec<u8>, String> {
    use http_body_util::BodyExt as _;
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        let Ok(data) = frame.into_data() else { continue };
        if out.len() + data.len() > limit {
            return Err(format!("more than {limit} bytes"));
        }
        if let Some(throttle) = throttle {
            let wait = throttle.reserve(data.len());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        out.extend_from_slice(&data);
    }
    Ok(out)
}

async fn commit(
    State(state): Shared,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path((repo, session)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Committed>> {
    let (token, served) = owner(&state, &headers, peer, &repo, &session, "commit a restore point").await?;
    let source = headers
        .get(SOURCE_HEADER)
        .and_then(|v| hex::decode(v.as_bytes()).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| ApiError::bad_request(format!("a commit needs the {SOURCE_HEADER} header (the source name's UTF-8, in hex)")))?;
    require_source(&token, &source, "back up")?;
    let id: RestorePointId = headers
        .get(RESTORE_POINT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ApiError::bad_request(format!("a commit needs the {RESTORE_POINT_HEADER} header")))?;
    let committed = blocking(move || {
        let outstanding = served
            .arbiter
            .lock()
            .expect("arbiter lock")
            .sessions
            .get(&session)
            .map_or(0, |s| s.claims.len());
        if outstanding > 0 {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "missing_chunks",
                format!("{outstanding} chunks this session was told to upload are not stored yet"),
            ));
        }
        if !served.repo.protection().is_encrypted() {
            // Nothing sealed: the server can check what it commits.
            let manifest = Manifest::open(&Protection::none(), &id, &body)
                .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "manifest_invalid", e.to_string()))?;
            if manifest.source != source {
                return Err(ApiError::forbidden(format!(
                    "the manifest is of source {:?}, the request says {source:?}",
                    manifest.source
                )));
            }
            if !served.repo.chunk_index().has_warm_chunk(&manifest.root)? {
                return Err(ApiError::new(StatusCode::CONFLICT, "missing_chunks", "the restore point's root is not stored"));
            }
        }
        served.sources.record(&id, &source)?;
        served.repo.commit_stored_restore_point(&id, &body)?;
        let ended = served.arbiter.lock().expect("arbiter lock").end(&session);
        tracing::info!(%session, restore_point = %id, source = %source, host = ?ended.map(|s| s.host), "restore point committed");
        Ok(Committed {
            restore_point: id.to_string(),
        })
    })
    .await?;
    Ok(Json(committed))
}

async fn abort(
    State(state): Shared,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path((repo, session)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let (_, served) = owner(&state, &headers, peer, &repo, &session, "abort a session").await?;
    served.arbiter.lock().expect("arbiter lock").end(&session);
    tracing::info!(%session, "backup session aborted by its mover");
    Ok(StatusCode::NO_CONTENT)
}
