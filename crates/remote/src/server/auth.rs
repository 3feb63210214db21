//! Who is asking: the bearer token checked against the token file, the
//! role and sources it grants, and a limit on failed attempts per address
//! so that secrets cannot be guessed at speed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};

use super::error::ApiError;
use super::state::ServerState;
use crate::protocol::Role;
use crate::tokens::TokenRecord;

/// Failed attempts allowed per address and window before all its requests
/// are refused until the window ends.
const FAILURES_ALLOWED: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Every failed attempt is answered only after this long.
pub const FAILURE_DELAY: Duration = Duration::from_millis(200);

#[derive(Default)]
pub struct FailedAuth {
    by_address: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailedAuth {
    /// Seconds until `address` may try again, if it is over the limit.
    fn blocked_for(&self, address: IpAddr) -> Option<u64> {
        let map = self.by_address.lock().expect("failed auth lock");
        let (since, count) = map.get(&address)?;
        let left = FAILURE_WINDOW.checked_sub(since.elapsed())?;
        (*count >= FAILURES_ALLOWED).then(|| left.as_secs().max(1))
    }

    fn failed(&self, address: IpAddr) {
        let mut map = self.by_address.lock().expect("failed auth lock");
        let entry = map.entry(address).or_insert((Instant::now(), 0));
        if entry.0.elapsed() > FAILURE_WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
        // Forget addresses whose window passed, so the map stays small.
        if map.len() > 10_000 {
            map.retain(|_, (since, _)| since.elapsed() <= FAILURE_WINDOW);
        }
    }
}

/// The token presented with a request, if valid and allowed for `role`.
/// A refusal is logged with the token's name (or the address, when no
/// valid token was given).
pub async fn authorize(
    state: &ServerState,
    headers: &HeaderMap,
    peer: IpAddr,
    role: Role,
    action: &str,
) -> Result<TokenRecord, ApiError> {
    if let Some(secs) = state.failures.blocked_for(peer) {
        tracing::warn!(%peer, action, "refused: too many failed authentications");
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many failed authentications from {peer}; try again in {secs} s"),
        )
        .retry_after(secs));
    }
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let token = match presented {
        Some(presented) => state.tokens.authenticate(presented).map_err(ApiError::from)?,
        None => None,
    };
    let Some(token) = token else {
        state.failures.failed(peer);
        tracing::warn!(%peer, action, "refused: no valid token");
        tokio::time::sleep(FAILURE_DELAY).await;
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "no valid API token (give it with STRATA_TOKEN or --token-file)"));
    };
    let allowed = match role {
        Role::Restore => true,
        Role::Backup => matches!(token.role, Role::Backup | Role::Admin),
        Role::Admin => token.role == Role::Admin,
    };
    if !allowed {
        tracing::warn!(token = %token.name, role = token.role.name(), action, "refused: role");
        return Err(ApiError::forbidden(format!(
            "token {} has role {}, and {action} needs role {}",
            token.name,
            token.role.name(),
            role.name()
        )));
    }
    Ok(token)
}

/// Refuses `source` unless `token` covers it.
pub fn require_source(token: &TokenRecord, source: &str, action: &str) -> Result<(), ApiError> {
    if token.covers(source) {
        return Ok(());
    }
    tracing::warn!(token = %token.name, source, action, "refused: source");
    Err(ApiError::forbidden(format!("token {} may not {action} source {source:?}", token.name)))
}
