//! Operational endpoints: health, metrics, the OpenAPI document.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use redoubt_proto::api::HealthResponse;
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

/// Prometheus metrics in the OpenMetrics text format.
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text"))
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics().encode(),
    )
}

/// This document.
#[utoipa::path(
    get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API"))
)]
pub async fn openapi() -> impl IntoResponse {
    axum::Json(super::ApiDoc::openapi())
}
