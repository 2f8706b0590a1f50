//! Owners' limits (`PUT`/`GET /auth/owners/{owner}/limits`), and the JSON shapes of limits
//! and credits that keys use too.

use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    AppState,
    error::{ApiError, Problem},
    extract::{Admin, Json},
};
use crate::{
    domain::{Consistency, Credits, CreditsInput, Interval, LimitInput, Limits, OwnerId, ParseError, RefillInput},
    service::{OwnerLimits, limits::PolicyState},
    store::StoredCredits,
};

/// A limit: at most `limit` requests (or cost units) per sliding window of `window_seconds`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    /// 1 to 32 characters of a-z, 0-9, `_` and `-`, starting with a letter; unique per key
    /// or owner; not `credits`.
    #[schema(example = "burst")]
    pub name: String,
    /// 1 to 1000000000000.
    #[schema(example = 100)]
    pub limit: i64,
    /// 1 to 2678400 (31 days).
    #[schema(example = 60)]
    pub window_seconds: i64,
    /// `fast` (the default): decided in memory, shared between replicas at least once a
    /// second; `strict`: decided atomically in the shared state, exact across replicas.
    #[schema(example = "fast")]
    pub consistency: Option<String>,
}

/// A refill: the balance becomes `amount` at each interval's edge (midnight UTC; for
/// `monthly`, on `day`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefillSpec {
    #[schema(example = 10000)]
    pub amount: i64,
    /// `daily` or `monthly`.
    #[schema(example = "monthly")]
    pub interval: String,
    /// For `monthly`: the day of the month, 1 to 28 (default 1).
    #[schema(example = 1)]
    pub day: Option<i64>,
}

/// Credits: a balance each verification spends its cost from; without a refill, a fixed budget.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditsSpec {
    /// 0 to 1000000000000.
    #[schema(example = 10000)]
    pub remaining: i64,
    pub refill: Option<RefillSpec>,
}

/// A limit with what is used of it now.
#[derive(Debug, Serialize, ToSchema)]
pub struct LimitView {
    pub name: String,
    pub limit: u64,
    pub window_seconds: u64,
    /// `fast` or `strict`.
    pub consistency: &'static str,
    /// Counted in the sliding window ending now, as this server knows it (for `fast`
    /// limits on replicas, up to a second behind).
    pub used: u64,
    pub remaining: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RefillView {
    pub amount: u64,
    pub interval: &'static str,
    pub day: Option<u8>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreditsView {
    /// What is left to spend.
    pub remaining: u64,
    pub refill: Option<RefillView>,
}

fn unprocessable(e: ParseError) -> ApiError {
    ApiError::Unprocessable(e.0.to_owned())
}

pub fn parse_limits(specs: &[LimitSpec]) -> Result<Limits, ApiError> {
    let inputs = specs
        .iter()
        .map(|s| {
            let consistency = match s.consistency.as_deref() {
                None | Some("fast") => Consistency::Fast,
                Some("strict") => Consistency::Strict,
                Some(_) => return Err(ApiError::Unprocessable("limits: consistency must be fast or strict".into())),
            };
            Ok(LimitInput { name: s.name.clone(), limit: s.limit, window_seconds: s.window_seconds, consistency })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Limits::parse(&inputs).map_err(unprocessable)
}

pub fn parse_credits(spec: &CreditsSpec) -> Result<Credits, ApiError> {
    let input = CreditsInput {
        remaining: spec.remaining,
        refill: spec.refill.as_ref().map(|r| RefillInput {
            amount: r.amount,
            interval: r.interval.clone(),
            day: r.day,
        }),
    };
    Credits::parse(&input).map_err(unprocessable)
}

/// Each limit of `limits` with its use from `usage`, found under `prefix` + its name.
pub fn limit_views(limits: &Limits, usage: &[PolicyState], prefix: &str) -> Vec<LimitView> {
    limits
        .iter()
        .map(|l| {
            let remaining = usage
                .iter()
                .find(|p| p.name.strip_prefix(prefix) == Some(l.name.as_str()))
                .map_or(l.limit, |p| p.remaining);
            LimitView {
                name: l.name.to_string(),
                limit: l.limit,
                window_seconds: l.window_seconds,
                consistency: match l.consistency {
                    Consistency::Fast => "fast",
                    Consistency::Strict => "strict",
                },
                used: l.limit.saturating_sub(remaining),
                remaining,
            }
        })
        .collect()
}

pub fn credits_view(c: StoredCredits) -> CreditsView {
    CreditsView {
        remaining: c.remaining.max(0) as u64,
        refill: c.refill.map(|r| {
            let (interval, day) = match r.interval {
                Interval::Daily => ("daily", None),
                Interval::Monthly { day } => ("monthly", Some(day)),
            };
            RefillView { amount: r.amount, interval, day }
        }),
    }
}

/// An owner's limits and credits, replacing what was set.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OwnerLimitsRequest {
    /// Up to 5 limits shared by every key of the account naming this owner.
    #[serde(default)]
    pub limits: Vec<LimitSpec>,
    /// Credits shared the same way; null or left out for none.
    pub credits: Option<CreditsSpec>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OwnerLimitsResponse {
    #[schema(example = "cus_42")]
    pub owner: String,
    pub limits: Vec<LimitView>,
    pub credits: Option<CreditsView>,
}

impl From<OwnerLimits> for OwnerLimitsResponse {
    fn from(o: OwnerLimits) -> Self {
        Self {
            owner: o.owner.to_string(),
            limits: limit_views(&o.limits, &o.usage, "owner."),
            credits: o.credits.map(credits_view),
        }
    }
}

fn parse_owner(owner: &str) -> Result<OwnerId, ApiError> {
    OwnerId::parse(owner).map_err(unprocessable)
}

#[utoipa::path(
    put,
    path = "/auth/owners/{owner}/limits",
    operation_id = "put_owner_limits",
    tag = "owners",
    security(("session" = [])),
    params(("owner" = String, Path, description = "The owner's id in your system (1 to 256 characters, percent-encoded)")),
    request_body(content = OwnerLimitsRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The owner's limits and credits as they are now", body = OwnerLimitsResponse),
        (status = 400, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid session", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Sent by a browser from another origin (CSRF)", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "A body that is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A limit, the credits or the owner is wrong; the detail names it, and nothing was changed", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Temporarily unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn put(
    State(state): State<AppState>,
    Admin(session): Admin,
    Path(owner): Path<String>,
    Json(request): Json<OwnerLimitsRequest>,
) -> Result<Json<OwnerLimitsResponse>, ApiError> {
    let owner = parse_owner(&owner)?;
    let limits = parse_limits(&request.limits)?;
    let credits = request.credits.as_ref().map(parse_credits).transpose()?;
    let set = state.auth.put_owner_limits(&session, owner, limits, credits).await?;
    Ok(Json(set.into()))
}

#[utoipa::path(
    get,
    path = "/auth/owners/{owner}/limits",
    operation_id = "get_owner_limits",
    tag = "owners",
    security(("session" = [])),
    params(("owner" = String, Path, description = "The owner's id in your system (1 to 256 characters, percent-encoded)")),
    responses(
        (status = 200, description = "The owner's limits and credits with their use; none when none were set", body = OwnerLimitsResponse),
        (status = 401, description = "No valid session", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not an owner id", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Temporarily unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    Admin(session): Admin,
    Path(owner): Path<String>,
) -> Result<Json<OwnerLimitsResponse>, ApiError> {
    let owner = parse_owner(&owner)?;
    Ok(Json(state.auth.owner_limits(&session, owner).await?.into()))
}
