//! The legal desk's admin HTTP API: the operations of `redoubtd legal`, for
//! operators' tools. It is served on its own listener (`admin.listen`),
//! never on the public one, and every call needs an operator token issued
//! by `redoubtd legal operator add NAME`. The operator a token names is what
//! the audit log records and what the four-eyes rule compares.

use axum::body::Bytes;
use axum::extract::{FromRequestParts, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::Router;
use redoubt_legal::desk::{DeskError, Intake};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::http::extract::{ApiJson, ApiPath};
use crate::storage::legal_view::RelayRecords;
use crate::AppState;

type Desk = redoubt_legal::desk::Desk<RelayRecords>;

/// An authenticated operator.
pub struct Operator(pub String);

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or(ApiError::MissingToken)?;
        let token = header
            .to_str()
            .ok()
            .and_then(|t| t.strip_prefix("Bearer "))
            .ok_or(ApiError::MissingToken)?;
        let operators = redoubt_legal::operators::Operators::load(&legal_dir(state))
            .map_err(ApiError::internal)?;
        let operator = operators
            .authenticate(token.trim())
            .ok_or(ApiError::InvalidToken)?;
        Ok(Self(operator.name.clone()))
    }
}

fn legal_dir(state: &AppState) -> std::path::PathBuf {
    state.config().data_dir.join("legal")
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn open_desk(state: &AppState) -> Result<Desk, ApiError> {
    let retention =
        time::Duration::try_from(state.config().ip_log.retention).map_err(ApiError::internal)?;
    // Orders from markets the service has left are refused with that reason.
    Desk::open(
        &legal_dir(state),
        state.legal_records(),
        state
            .config()
            .markets
            .policy(&state.markets().book(), now()),
        retention,
    )
    .map_err(ApiError::internal)
}

fn desk_error(e: DeskError) -> ApiError {
    match e {
        DeskError::FourEyes => ApiError::Forbidden(
            "four-eyes rule: the operator who took an order in cannot approve it",
        ),
        DeskError::UnknownOrder(_) => ApiError::UnknownOrder,
        DeskError::NotPending(_) => ApiError::InvalidRequest(
            "the order is not pending (rejected or already answered)".into(),
        ),
        DeskError::Expired => ApiError::OrderRejected {
            code: "expired",
            reason: "the order's deadline passed before approval".into(),
        },
        other => ApiError::internal(other),
    }
}

async fn service_key(
    State(state): State<AppState>,
    _op: Operator,
) -> Result<ApiJson<Value>, ApiError> {
    let desk = open_desk(&state)?;
    Ok(ApiJson(json!({ "public_key": desk.public_key() })))
}

async fn authorities(
    State(state): State<AppState>,
    _op: Operator,
) -> Result<ApiJson<Value>, ApiError> {
    let desk = open_desk(&state)?;
    Ok(ApiJson(
        serde_json::to_value(&desk.trust).map_err(ApiError::internal)?,
    ))
}

async fn add_authority(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiJson(authority): ApiJson<redoubt_legal::trust::Authority>,
) -> Result<StatusCode, ApiError> {
    let _guard = state.legal_lock().lock().await;
    let mut desk = open_desk(&state)?;
    let id = authority.id.clone();
    desk.trust
        .add(authority)
        .map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    desk.save_trust(&op, json!({ "added": id }), now())
        .map_err(ApiError::internal)?;
    Ok(StatusCode::CREATED)
}

async fn revoke_authority(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let _guard = state.legal_lock().lock().await;
    let mut desk = open_desk(&state)?;
    desk.trust
        .revoke(&id, now())
        .map_err(|_| ApiError::NotFound)?;
    desk.save_trust(&op, json!({ "revoked": id }), now())
        .map_err(ApiError::internal)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn intake(
    State(state): State<AppState>,
    Operator(op): Operator,
    body: Bytes,
) -> Result<(StatusCode, ApiJson<Value>), ApiError> {
    let _guard = state.legal_lock().lock().await;
    let desk = open_desk(&state)?;
    match desk.intake(&body, &op, now()).await.map_err(desk_error)? {
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

async fn orders(State(state): State<AppState>, _op: Operator) -> Result<ApiJson<Value>, ApiError> {
    let desk = open_desk(&state)?;
    let list: Vec<Value> = desk
        .orders()
        .map_err(ApiError::internal)?
        .into_iter()
        .map(|r| json!({ "order_id": r.order.order.order_id, "jurisdiction": r.order.order.jurisdiction, "intake_by": r.intake_by, "status": r.status }))
        .collect();
    Ok(ApiJson(Value::Array(list)))
}

async fn approve(
    State(state): State<AppState>,
    Operator(op): Operator,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<Value>, ApiError> {
    let _guard = state.legal_lock().lock().await;
    let desk = open_desk(&state)?;
    let package = desk.approve(&id, &op, now()).await.map_err(desk_error)?;
    Ok(ApiJson(
        serde_json::to_value(package).map_err(ApiError::internal)?,
    ))
}

async fn audit_verify(
    State(state): State<AppState>,
    _op: Operator,
) -> Result<ApiJson<Value>, ApiError> {
    let desk = open_desk(&state)?;
    Ok(ApiJson(match desk.audit().verify() {
        Ok(entries) => json!({ "intact": true, "entries": entries }),
        Err(problem) => json!({ "intact": false, "problem": problem.to_string() }),
    }))
}

async fn report(
    State(state): State<AppState>,
    _op: Operator,
    ApiPath(period): ApiPath<String>,
) -> Result<ApiJson<Value>, ApiError> {
    let desk = open_desk(&state)?;
    let signed = desk
        // The same report as `redoubtd legal report`: market exits included.
        .report(&period, state.markets().book().report_lines(), now())
        .map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    Ok(ApiJson(
        serde_json::to_value(signed).map_err(ApiError::internal)?,
    ))
}

/// The admin router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/admin/v1/service-key", get(service_key))
        .route(
            "/admin/v1/authorities",
            get(authorities).post(add_authority),
        )
        .route("/admin/v1/authorities/{id}", delete(revoke_authority))
        .route("/admin/v1/orders", get(orders).post(intake))
        .route("/admin/v1/orders/{id}/approve", post(approve))
        .route("/admin/v1/audit/verify", get(audit_verify))
        .route("/admin/v1/reports/{period}", get(report))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::extract::DefaultBodyLimit::max(
            redoubt_legal::order::limits::MAX_DOCUMENT_BYTES,
        ))
        .with_state(state)
}
