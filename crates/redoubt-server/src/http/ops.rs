//! Operational endpoints: health, metrics, the OpenAPI document.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use redoubt_proto::api::{HealthResponse, ServiceKeyResponse};
use redoubt_proto::ErrorBody;
use utoipa::OpenApi as _;

use super::extract::ApiJson;
use crate::error::ApiError;
use crate::AppState;

/// Liveness and storage reachability.
#[utoipa::path(
    get, path = "/healthz", tag = "operations",
    responses((status = 200, body = HealthResponse), (status = 503, body = ErrorBody))
)]
pub async fn healthz(State(state): State<AppState>) -> Result<ApiJson<HealthResponse>, ApiError> {
    if state.shutdown_token().is_cancelled() {
        return Err(ApiError::Unavailable("the server is shutting down"));
    }
    state.store().health().await?;
    Ok(ApiJson(HealthResponse {
        status: "ok".into(),
    }))
}

/// The operator's public service key. Clients pin it when they register
/// and accept notices from the service only under it.
#[utoipa::path(
    get, path = "/v1/service-key", tag = "operations",
    responses((status = 200, body = ServiceKeyResponse))
)]
pub async fn service_key(State(state): State<AppState>) -> ApiJson<ServiceKeyResponse> {
    ApiJson(ServiceKeyResponse {
        public_key: state.service_key().public_key(),
    })
}

/// Prometheus metrics in the OpenMetrics text format, for a scraper that
/// presents `metrics.token` (the admin listener serves them without one).
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text"),
        (status = 401, description = "No token, or not `metrics.token`", body = ErrorBody),
        (status = 404, description = "No `metrics.token` is configured: metrics are on the admin listener only", body = ErrorBody),
    )
)]
pub async fn metrics(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let Some(token) = &state.config().metrics.token else {
        return Err(ApiError::NotFound);
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ApiError::MissingToken)?;
    // Compared as digests, so the time taken says nothing about how much
    // of the token was right.
    use sha2::{Digest, Sha256};
    if Sha256::digest(presented.as_bytes()) != Sha256::digest(token.as_bytes()) {
        return Err(ApiError::InvalidToken);
    }
    Ok(metrics_text(&state))
}

/// The metrics, for the admin listener (private, no token).
pub async fn admin_metrics(State(state): State<AppState>) -> Response {
    metrics_text(&state)
}

fn metrics_text(state: &AppState) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics().encode(),
    )
        .into_response()
}

/// This document.
#[utoipa::path(
    get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API"))
)]
pub async fn openapi() -> impl IntoResponse {
    axum::Json(super::ApiDoc::openapi())
}
