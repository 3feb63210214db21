//! `tier run` and `thaw` under an admin client's maintenance lease. The
//! client walks (it holds the key) and names the chunks: for a tier run
//! the data chunks only cold restore points use, with every referenced
//! chunk sent as live for the sweep after the move; for a thaw the data
//! chunks of the restore point. The server moves chunks as stored (it
//! cannot open them to recompress) and copies packs; the thaw records it
//! writes beside the copies are those the client sealed.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;

use strata_engine::cancel::CancelToken;
use strata_engine::prune::Marked;
use strata_engine::thaw::{ThawOptions, ThawRecords};
use strata_engine::tier::TierReport;

use super::error::ApiError;
use super::maintenance::{holder, json, json_response, operate, parse_json, parse_restore_points, request_digest, require_walked, Marks};
use super::routes::Peer;
use super::state::ServerState;
use crate::protocol::{ThawRequest, TierRequest};

type Shared = State<Arc<ServerState>>;
type ApiResult<T> = Result<T, ApiError>;

pub async fn tier(
    State(state): Shared,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path((repo, id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let (token, served) = holder(&state, &headers, peer, &repo, &id, "move restore points to the cold tier").await?;
    let request: TierRequest = parse_json(&body)?;
    let walked = parse_restore_points(&request.restore_points)?;
    if request.restore_points_cold > walked.len() as u64 {
        return Err(ApiError::bad_request("more cold restore points than restore points"));
    }
    let answer = operate(served, request_digest("tier", &body), Marks::Live, move |served, live, named| {
        let restore_points = require_walked(&served, &walked)?;
        tracing::info!(token = %token.name, chunks = named.len(), warm_days = request.warm_days, "tier run marked by an admin client");
        let report = TierReport {
            warm_days: request.warm_days,
            restore_points_cold: request.restore_points_cold,
            restore_points_warm: restore_points - request.restore_points_cold,
            ..TierReport::default()
        };
        let marked = Marked {
            live: live.expect("asked for the live marks"),
            restore_points,
        };
        json(&strata_engine::tier::run_marked(&served.repo, report, &named, marked, &CancelToken::new())?)
    })
    .await?;
    Ok(json_response(answer))
}

pub async fn thaw(
    State(state): Shared,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path((repo, id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let (token, served) = holder(&state, &headers, peer, &repo, &id, "thaw a restore point").await?;
    let request: ThawRequest = parse_json(&body)?;
    let rp = request
        .restore_point
        .parse()
        .map_err(|_| ApiError::bad_request(format!("{:?} is not a restore point id", request.restore_point)))?;
    let mut records = HashMap::with_capacity(request.records.len());
    for (name, sealed) in &request.records {
        let bytes = hex::decode(sealed).map_err(|_| ApiError::bad_request(format!("thaw record {name} is not hex")))?;
        if !name.starts_with("thaw/") || bytes.len() > 4096 {
            return Err(ApiError::bad_request(format!("{name:?} is not a thaw record")));
        }
        records.insert(name.clone(), bytes);
    }
    let options = ThawOptions {
        days: request.days,
        plan: request.plan,
        priority: request.priority(),
    };
    let records = ThawRecords::Given {
        until: request.until,
        records,
    };
    let answer = operate(served, request_digest("thaw", &body), Marks::Named, move |served, _, named| {
        let stored = served.repo.stored_restore_points()?;
        if !stored.iter().any(|(id, _)| *id == rp) {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no restore point {rp}")));
        }
        tracing::info!(token = %token.name, restore_point = %rp, chunks = named.len(), plan = options.plan, "thaw by an admin client");
        json(&strata_engine::thaw::thaw_named(&served.repo, &rp, &named, &options, &records, &CancelToken::new())?)
    })
    .await?;
    Ok(json_response(answer))
}
