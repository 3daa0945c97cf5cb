//! MLS KeyPackages: devices upload batches; others claim one per device.

use std::collections::HashSet;

use axum::extract::State;
use axum::http::StatusCode;
use redoubt_proto::api::{
    ClaimKeyPackagesRequest, ClaimKeyPackagesResponse, ClaimedKeyPackage, KeyPackageCountResponse,
    UploadKeyPackagesRequest,
};
use redoubt_proto::ErrorBody;

use super::extract::{ApiJson, Authed};
use crate::error::ApiError;
use crate::storage::{AddKeyPackagesOutcome, ClaimOutcome, KeyPackageCount, NewKeyPackage};
use crate::AppState;

/// The largest serialized KeyPackage accepted. Real ones are a few hundred
/// bytes; the bound stops a device from parking large blobs on the server.
const MAX_KEY_PACKAGE_BYTES: usize = 16 * 1024;

fn count_response(state: &AppState, count: KeyPackageCount) -> KeyPackageCountResponse {
    KeyPackageCountResponse {
        remaining: count.remaining,
        last_resort: count.last_resort,
        low_watermark: state.config().key_packages.low_watermark,
    }
}

/// Upload a batch of the caller's key packages.
#[utoipa::path(
    post, path = "/v1/keypackages", tag = "key packages", security(("bearer" = [])),
    request_body = UploadKeyPackagesRequest,
    responses(
        (status = 201, body = KeyPackageCountResponse),
        (status = 401, body = ErrorBody),
        (status = 409, description = "Per-device limit reached", body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
pub async fn upload(
    State(state): State<AppState>,
    auth: Authed,
    ApiJson(req): ApiJson<UploadKeyPackagesRequest>,
) -> Result<(StatusCode, ApiJson<KeyPackageCountResponse>), ApiError> {
    let cfg = &state.config().key_packages;
    if req.key_packages.is_empty() || req.key_packages.len() > cfg.max_batch {
        return Err(ApiError::InvalidRequest(format!(
            "key_packages must hold 1 to {} entries",
            cfg.max_batch
        )));
    }
    if req.key_packages.iter().filter(|k| k.last_resort).count() > 1 {
        return Err(ApiError::InvalidRequest(
            "at most one key package may be last_resort".into(),
        ));
    }
    if req
        .key_packages
        .iter()
        .any(|k| k.data.is_empty() || k.data.len() > MAX_KEY_PACKAGE_BYTES)
    {
        return Err(ApiError::InvalidRequest(format!(
            "each key package must be 1 to {MAX_KEY_PACKAGE_BYTES} bytes"
        )));
    }
    let packages = req
        .key_packages
        .into_iter()
        .map(|k| NewKeyPackage {
            id: k.id,
            data: k.data.into_vec(),
            last_resort: k.last_resort,
        })
        .collect();
    let now = state.clock().now();
    match state
        .store()
        .add_key_packages(auth.device_id, packages, now, cfg.max_per_device)
        .await?
    {
        AddKeyPackagesOutcome::Stored(count) => {
            Ok((StatusCode::CREATED, ApiJson(count_response(&state, count))))
        }
        AddKeyPackagesOutcome::LimitExceeded => Err(ApiError::KeyPackageLimit {
            max: cfg.max_per_device,
        }),
    }
}

/// How many key packages the caller has left.
#[utoipa::path(
    get, path = "/v1/keypackages/count", tag = "key packages", security(("bearer" = [])),
    responses((status = 200, body = KeyPackageCountResponse), (status = 401, body = ErrorBody))
)]
pub async fn count(
    State(state): State<AppState>,
    auth: Authed,
) -> Result<ApiJson<KeyPackageCountResponse>, ApiError> {
    let count = state.store().key_package_count(auth.device_id).await?;
    Ok(ApiJson(count_response(&state, count)))
}

/// Claim one key package for each named device, all or nothing.
#[utoipa::path(
    post, path = "/v1/keypackages/claim", tag = "key packages", security(("bearer" = [])),
    request_body = ClaimKeyPackagesRequest,
    responses(
        (status = 200, body = ClaimKeyPackagesResponse),
        (status = 401, body = ErrorBody),
        (status = 404, description = "A device does not exist", body = ErrorBody),
        (status = 409, description = "A device has no key package left", body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
pub async fn claim(
    State(state): State<AppState>,
    auth: Authed,
    ApiJson(req): ApiJson<ClaimKeyPackagesRequest>,
) -> Result<ApiJson<ClaimKeyPackagesResponse>, ApiError> {
    let max = state.config().key_packages.max_claim;
    let devices = dedup(req.devices);
    if devices.is_empty() || devices.len() > max {
        return Err(ApiError::InvalidRequest(format!(
            "devices must name 1 to {max} devices"
        )));
    }
    // A caller may not drain anyone's one-time packages (issue 16): a
    // limit per caller, and one per caller and device claimed from.
    let limits = &state.config().limits;
    let caller = auth.account_id.as_bytes().to_vec();
    let mut counted = vec![(
        "claim-account",
        caller.clone(),
        limits.claims_per_account,
        u32::try_from(devices.len()).unwrap_or(u32::MAX),
    )];
    for device in &devices {
        let mut id = caller.clone();
        id.extend_from_slice(device.as_bytes());
        counted.push(("claim-device", id, limits.claims_per_device, 1));
    }
    super::rate_limited(&state, &counted).await?;
    match state.store().claim_key_packages(&devices).await? {
        ClaimOutcome::Claimed(claimed) => {
            state
                .metrics()
                .key_packages_claimed
                .inc_by(claimed.len() as u64);
            Ok(ApiJson(ClaimKeyPackagesResponse {
                key_packages: claimed
                    .into_iter()
                    .map(|c| ClaimedKeyPackage {
                        device_id: c.device_id,
                        id: c.id,
                        data: c.data.into(),
                        last_resort: c.last_resort,
                    })
                    .collect(),
            }))
        }
        ClaimOutcome::UnknownDevices(_) => Err(ApiError::UnknownDevice),
        ClaimOutcome::Exhausted(devices) => Err(ApiError::KeyPackagesExhausted(devices)),
    }
}

/// Drops repeated ids, keeping the first occurrence's position.
pub(crate) fn dedup<T: Copy + Eq + std::hash::Hash>(items: Vec<T>) -> Vec<T> {
    let mut seen = HashSet::with_capacity(items.len());
    items.into_iter().filter(|d| seen.insert(*d)).collect()
}
