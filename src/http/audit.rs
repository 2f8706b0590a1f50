//! `GET /auth/audit`: the admin's own account's audit log, newest first, paged backwards.

use axum::extract::{Query, State, rejection::QueryRejection};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    AppState,
    error::{ApiError, Problem},
    extract::{Admin, Json},
};
use crate::store::AuditRecord;

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 200;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// At most this many events, 1 to 200 [default: 50].
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// Only events older than this id: the `next_before` of the previous page.
    #[param(minimum = 1)]
    pub before: Option<i64>,
}

/// One audit entry. It names who did what to what, from where; it never holds a secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    /// Increasing with every entry; pages are cut by it.
    pub id: i64,
    /// Unix seconds.
    pub at: i64,
    /// `admin.login`, `admin.login_failed`, `admin.logout`, `admin.created`,
    /// `key.generated`, `key.deleted`, `lockout` or `signing_key.rotated`.
    #[schema(example = "key.generated")]
    pub action: String,
    /// `admin:<id>`, the email a login was attempted for, `cli` or `keygate`.
    pub actor: String,
    /// The client address, when the event came over the network.
    pub source: Option<String>,
    /// A key ref, an admin email, a locked subject (`email:…`, `key:…`, `addr:…`) or a kid.
    pub target: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    /// Newest first.
    pub events: Vec<AuditEntry>,
    /// Pass as `before` for the next (older) page; `null` on the last page.
    pub next_before: Option<i64>,
}

impl From<AuditRecord> for AuditEntry {
    fn from(r: AuditRecord) -> Self {
        Self {
            id: r.id,
            at: r.event.at,
            action: r.event.action.as_str().to_owned(),
            actor: r.event.actor,
            source: r.event.source,
            target: r.event.target,
        }
    }
}

#[utoipa::path(
    get,
    path = "/auth/audit",
    operation_id = "list_audit_events",
    tag = "audit",
    security(("session" = [])),
    params(AuditQuery),
    responses(
        (status = 200, description = "The account's audit log, newest first", body = AuditPage),
        (status = 400, description = "Bad query parameters", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid session", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Temporarily unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    Admin(session): Admin,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!("limit must be 1 to {MAX_LIMIT}")));
    }
    if query.before.is_some_and(|b| b < 1) {
        return Err(ApiError::BadRequest("before must be a positive event id".into()));
    }
    let records = state.auth.audit_log(&session, query.before, limit).await?;
    let next_before = if records.len() == limit as usize { records.last().map(|r| r.id) } else { None };
    Ok(Json(AuditPage { events: records.into_iter().map(AuditEntry::from).collect(), next_before }))
}
