//! Administration through the server that needs no lease: the figures of
//! `stats` and `tier status` the server can give without the key, the
//! server's half of `check`, and key slots written and removed by an admin
//! client (which seals them; the server checks each one's form).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};

use strata_engine::cancel::CancelToken;
use strata_engine::check::{check_stored, CheckReport};
use strata_engine::key_slot::{KeySlot, SlotId};
use strata_engine::progress::NoProgress;

use super::auth::authorize;
use super::error::ApiError;
use super::maintenance::parse_json;
use super::routes::{blocking, served, Peer};
use super::state::ServerState;
use crate::protocol::{CheckRequest, Role, StorageAnswer};

type Shared = State<Arc<ServerState>>;
type ApiResult<T> = Result<T, ApiError>;

/// A key slot is a few hundred bytes; this leaves room for any KDF
/// parameters while refusing a body meant to fill the disk.
const MAX_KEY_SLOT_BYTES: usize = 16 << 10;

pub async fn storage(
    State(state): Shared,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(repo): Path<String>,
) -> ApiResult<Json<StorageAnswer>> {
    authorize(&state, &headers, peer.0.ip(), Role::Admin, "read the repository's figures").await?;
    let served = served(&state, &repo)?;
    blocking(move || {
        Ok(Json(StorageAnswer {
            stored: strata_engine::stats::stored_totals(&served.repo)?,
            tiers: strata_engine::tier::stored_status(&served.repo)?,
        }))
    })
    .await
}

pub async fn check(
    State(state): Shared,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(repo): Path<String>,
    body: Bytes,
) -> ApiResult<Json<CheckReport>> {
    let token = authorize(&state, &headers, peer.0.ip(), Role::Admin, "check the repository").await?;
    let served = served(&state, &repo)?;
    let request: CheckRequest = parse_json(&body)?;
    tracing::info!(token = %token.name, repository = %repo, read_data = request.read_data, "check of the stored packs");
    blocking(move || {
        let mut report = CheckReport::default();
        check_stored(&served.repo, request.read_data, &mut report, &NoProgress, &CancelToken::new())?;
        Ok(Json(report))
    })
    .await
}

fn slot_id(name: &str) -> ApiResult<SlotId> {
    SlotId::from_object_name(name).ok_or_else(|| ApiError::forbidden(format!("object {name:?} is not a key slot")))
}

/// `PUT …/objects/keys/{slot}`: a new key slot (`strata key add`,
/// `strata key passwd`), never over an existing one.
pub async fn put_key_slot(
    State(state): Shared,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path((repo, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let token = authorize(&state, &headers, peer.0.ip(), Role::Admin, "add a key slot").await?;
    let served = served(&state, &repo)?;
    slot_id(&name)?;
    if body.len() > MAX_KEY_SLOT_BYTES {
        return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "a key slot is at most 16 KiB"));
    }
    KeySlot::decode(&name, &body).map_err(|e| ApiError::bad_request(format!("not a key slot: {e}")))?;
    blocking(move || {
        let store = served.repo.store();
        match store.size(&name) {
            Ok(_) => {
                return Err(ApiError::new(StatusCode::CONFLICT, "exists", format!("key slot {name} exists already")));
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        store.put(&name, &body)?;
        tracing::info!(token = %token.name, slot = %name, "key slot added by an admin client");
        Ok(StatusCode::CREATED)
    })
    .await
}

/// `DELETE …/objects/keys/{slot}`: never the last slot, which would lock
/// everyone out.
pub async fn delete_key_slot(
    State(state): Shared,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path((repo, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let token = authorize(&state, &headers, peer.0.ip(), Role::Admin, "remove a key slot").await?;
    let served = served(&state, &repo)?;
    slot_id(&name)?;
    blocking(move || {
        let store = served.repo.store();
        let names = strata_engine::keys::slot_names(store)?;
        if !names.contains(&name) {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no key slot {name}")));
        }
        if names.len() == 1 {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "last_key",
                "this is the repository's only key slot: removing it would leave no password that opens it",
            ));
        }
        store.delete(&name)?;
        tracing::info!(token = %token.name, slot = %name, "key slot removed by an admin client");
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}
