//! The legal desk's admin HTTP API: the operations of `redoubtd legal`, for
//! operators' tools. It is served on its own listener (`admin.listen`),
//! never on the public one. Every call carries the operator's signed action
//! in `Authorization: Redoubt-Action <token>` (see
//! `redoubt_legal::operators::SignedAction::to_header`): the key that signed
//! it is what the four-eyes rule compares and what the audit log records.
//! Reads are signed `read` actions naming the path; writes are the very
//! actions the desk records (an intake names the document's hash, an
//! approval the order), so the relay cannot take one operator's request for
//! another act.

use axum::body::Bytes;
use axum::extract::{FromRequestParts, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use redoubt_legal::desk::{DeskError, Intake};
use redoubt_legal::operators::{ActionKind, SignedAction};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::http::extract::{ApiJson, ApiPath};
use crate::AppState;

/// The operator's signed action from the request, signature checked. Which
/// operator signed it is checked by the desk (writes) or [`reader`] (reads).
pub struct Signed(pub SignedAction);

impl FromRequestParts<AppState> for Signed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or(ApiError::MissingToken)?;
        let text = header
            .to_str()
            .ok()
            .and_then(|t| t.strip_prefix("Redoubt-Action "))
            .ok_or(ApiError::MissingToken)?;
        let action = SignedAction::from_header(text).map_err(|_| ApiError::InvalidToken)?;
        action.signers().map_err(|_| ApiError::InvalidToken)?;
        Ok(Self(action))
    }
}

fn desk_error(e: DeskError) -> ApiError {
    match e {
        DeskError::FourEyes => {
            ApiError::Forbidden("four-eyes rule: a second operator must approve or confirm")
        }
        DeskError::NotAnOperator
        | DeskError::BadAction(_)
        | DeskError::StaleAction
        | DeskError::ReplayedAction => ApiError::InvalidToken,
        DeskError::UnknownOrder(_) | DeskError::UnknownProposal(_) => ApiError::UnknownOrder,
        DeskError::NotPending(_)
        | DeskError::AmbiguousOrder(_)
        | DeskError::ActionMismatch(_)
        | DeskError::Bootstrap(_)
        | DeskError::BadChange(_)
        | DeskError::ProposalExpired
        | DeskError::BadOperator => ApiError::InvalidRequest(e.to_string()),
        DeskError::Expired => ApiError::OrderRejected {
            code: "expired",
            reason: "the order's deadline passed before approval".into(),
        },
        DeskError::NoLongerValid(rejection) => ApiError::OrderRejected {
            code: rejection.code(),
            reason: rejection.to_string(),
        },
        DeskError::TargetChanged => ApiError::OrderRejected {
            code: "target_changed",
            reason: DeskError::TargetChanged.to_string(),
        },
        other => ApiError::internal(other),
    }
}

/// Checks a read: a `read` action for this very path, fresh, by an active
/// operator. Reads are not recorded, so a read action may be reused within
/// its few minutes.
async fn reader(state: &AppState, signed: &SignedAction, path: &str) -> Result<(), ApiError> {
    if !matches!(&signed.action.what, ActionKind::Read { path: p } if p == path) {
        return Err(ApiError::InvalidToken);
    }
    let desk = state.legal_desk();
    let now = state.clock().now_offset();
    let desk_state = desk.state().await.map_err(desk_error)?;
    let keys = signed.signers().map_err(|_| ApiError::InvalidToken)?;
    let known = keys.len() == 1 && desk_state.active_operator(&keys[0]).is_some();
    if !known || (signed.action.at - now).abs() > redoubt_legal::operators::ACTION_SKEW {
        return Err(ApiError::InvalidToken);
    }
    Ok(())
}

async fn service_key(
    State(state): State<AppState>,
    Signed(action): Signed,
) -> Result<ApiJson<Value>, ApiError> {
    reader(&state, &action, "/admin/v1/service-key").await?;
    Ok(ApiJson(
        json!({ "public_key": state.service_key().public_key() }),
    ))
}

async fn authorities(
    State(state): State<AppState>,
    Signed(action): Signed,
) -> Result<ApiJson<Value>, ApiError> {
    reader(&state, &action, "/admin/v1/authorities").await?;
    let desk_state = state.legal_desk().state().await.map_err(desk_error)?;
    Ok(ApiJson(
        serde_json::to_value(&desk_state.trust).map_err(ApiError::internal)?,
    ))
}

async fn proposals(
    State(state): State<AppState>,
    Signed(action): Signed,
) -> Result<ApiJson<Value>, ApiError> {
    reader(&state, &action, "/admin/v1/proposals").await?;
    let desk_state = state.legal_desk().state().await.map_err(desk_error)?;
    Ok(ApiJson(
        serde_json::to_value(&desk_state.proposals).map_err(ApiError::internal)?,
    ))
}

async fn propose(
    State(state): State<AppState>,
    Signed(action): Signed,
) -> Result<(StatusCode, ApiJson<Value>), ApiError> {
    let number = state
        .legal_desk()
        .propose(&action, state.clock().now_offset())
        .await
        .map_err(desk_error)?;
    Ok((
        StatusCode::CREATED,
        ApiJson(json!({ "proposal": number, "status": "waiting for a second operator" })),
    ))
}

async fn confirm(
    State(state): State<AppState>,
    Signed(action): Signed,
) -> Result<ApiJson<Value>, ApiError> {
    let change = state
        .legal_desk()
        .confirm(&action, state.clock().now_offset())
        .await
        .map_err(desk_error)?;
    Ok(ApiJson(json!({ "applied": change })))
}

async fn intake(
    State(state): State<AppState>,
    Signed(action): Signed,
    body: Bytes,
) -> Result<(StatusCode, ApiJson<Value>), ApiError> {
    let desk = state.legal_desk();
    match desk
        .intake(&body, &action, state.clock().now_offset())
        .await
        .map_err(desk_error)?
    {
        Intake::Pending { order_id } => Ok((
            StatusCode::CREATED,
            ApiJson(json!({ "order_id": order_id, "status": "pending" })),
        )),
        Intake::Rejected { rejection, .. } => Err(ApiError::OrderRejected {
            code: rejection.code(),
            reason: rejection.to_string(),
        }),
    }
}

async fn orders(
    State(state): State<AppState>,
    Signed(action): Signed,
) -> Result<ApiJson<Value>, ApiError> {
    reader(&state, &action, "/admin/v1/orders").await?;
    let desk_state = state.legal_desk().state().await.map_err(desk_error)?;
    let list: Vec<Value> = desk_state
        .orders
        .iter()
        .map(|r| {
            json!({
                "issuer": r.issuer,
                "order_id": r.order_id,
                "jurisdiction": r.summary.jurisdiction,
                "intake_by": r.intake_by,
                "status": r.status,
            })
        })
        .collect();
    Ok(ApiJson(Value::Array(list)))
}

async fn approve(
    State(state): State<AppState>,
    Signed(action): Signed,
) -> Result<ApiJson<Value>, ApiError> {
    let package = state
        .legal_desk()
        .approve(&action, state.clock().now_offset())
        .await
        .map_err(desk_error)?;
    Ok(ApiJson(
        serde_json::to_value(package).map_err(ApiError::internal)?,
    ))
}

async fn audit_verify(
    State(state): State<AppState>,
    Signed(action): Signed,
) -> Result<ApiJson<Value>, ApiError> {
    reader(&state, &action, "/admin/v1/audit/verify").await?;
    // The whole log, every entry checked again (not the cached replay).
    Ok(ApiJson(match state.legal_desk().replay_all().await {
        Ok(s) => json!({ "intact": true, "entries": s.entries.len() }),
        Err(DeskError::Broken(problem)) => {
            json!({ "intact": false, "problem": problem.to_string() })
        }
        Err(e) => return Err(desk_error(e)),
    }))
}

async fn checkpoint(
    State(state): State<AppState>,
    Signed(action): Signed,
) -> Result<ApiJson<Value>, ApiError> {
    reader(&state, &action, "/admin/v1/audit/checkpoint").await?;
    let checkpoint = state.legal_desk().checkpoint().await.map_err(desk_error)?;
    Ok(ApiJson(
        serde_json::to_value(checkpoint).map_err(ApiError::internal)?,
    ))
}

async fn report(
    State(state): State<AppState>,
    Signed(action): Signed,
    ApiPath(period): ApiPath<String>,
) -> Result<ApiJson<Value>, ApiError> {
    reader(&state, &action, &format!("/admin/v1/reports/{period}")).await?;
    let desk = state.legal_desk();
    let signed = desk
        // The same report as `redoubtd legal report`: market exits included.
        .report(
            &period,
            state.markets().book().report_lines(),
            state.kt().latest().await.ok(),
            state.clock().now_offset(),
        )
        .await
        .map_err(|e| match e {
            DeskError::Legal(redoubt_legal::LegalError::Malformed { .. }) => {
                ApiError::InvalidRequest(e.to_string())
            }
            other => desk_error(other),
        })?;
    Ok(ApiJson(
        serde_json::to_value(signed).map_err(ApiError::internal)?,
    ))
}

/// The admin router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/admin/v1/service-key", get(service_key))
        .route("/admin/v1/authorities", get(authorities))
        .route("/admin/v1/proposals", get(proposals).post(propose))
        .route("/admin/v1/proposals/confirm", post(confirm))
        .route("/admin/v1/orders", get(orders).post(intake))
        .route("/admin/v1/orders/approve", post(approve))
        .route("/admin/v1/audit/verify", get(audit_verify))
        .route("/admin/v1/audit/checkpoint", get(checkpoint))
        .route("/admin/v1/reports/{period}", get(report))
        .route("/metrics", get(crate::http::ops::admin_metrics))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::extract::DefaultBodyLimit::max(
            redoubt_legal::order::limits::MAX_DOCUMENT_BYTES,
        ))
        .with_state(state)
}
