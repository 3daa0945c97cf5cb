//! Operational endpoints: health, metrics, the OpenAPI document.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
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
