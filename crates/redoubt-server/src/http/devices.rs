//! The caller's own devices, and other accounts' devices for starting chats.

use axum::extract::State;
use axum::http::StatusCode;
use redoubt_proto::api::{
    AccountDevicesResponse, LookupRequest, OwnDevice, OwnDevicesResponse, PeerDevice,
};
use redoubt_proto::{AccountId, DeviceId, ErrorBody};

use super::extract::{ApiJson, ApiPath, Authed};
use crate::error::ApiError;
use crate::AppState;

/// List the caller's active devices.
#[utoipa::path(
    get, path = "/v1/devices", tag = "devices", security(("bearer" = [])),
    responses(
        (status = 200, body = OwnDevicesResponse),
        (status = 401, body = ErrorBody),
    )
)]
pub async fn list_own(
    State(state): State<AppState>,
    auth: Authed,
) -> Result<ApiJson<OwnDevicesResponse>, ApiError> {
    let devices = state
        .store()
        .devices(auth.account_id)
        .await?
        .into_iter()
        .map(|d| OwnDevice {
            current: d.device_id == auth.device_id,
            device_id: d.device_id,
            name: d.name,
            created_at: d.created_at,
            signature_key: d.signature_key.into(),
        })
        .collect();
    Ok(ApiJson(OwnDevicesResponse { devices }))
}

/// Revoke one of the caller's devices (the caller's own included): its token
/// stops working, its live connection closes, and its queued envelopes and key
/// packages are deleted.
#[utoipa::path(
    delete, path = "/v1/devices/{device_id}", tag = "devices", security(("bearer" = [])),
    params(("device_id" = String, Path, description = "The device to revoke")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
pub async fn revoke(
    State(state): State<AppState>,
    auth: Authed,
    ApiPath(device_id): ApiPath<DeviceId>,
) -> Result<StatusCode, ApiError> {
    let now = state.clock().now();
    if !state
        .store()
        .revoke_device(auth.account_id, device_id, now)
        .await?
    {
        return Err(ApiError::UnknownDevice);
    }
    state.fanout().revoked(device_id).await;
    tracing::info!("device revoked");
    Ok(StatusCode::NO_CONTENT)
}

async fn account_devices(
    state: &AppState,
    account_id: AccountId,
) -> Result<AccountDevicesResponse, ApiError> {
    if !state.store().account_exists(account_id).await? {
        return Err(ApiError::UnknownAccount);
    }
    let devices = state
        .store()
        .devices(account_id)
        .await?
        .into_iter()
        .map(|d| PeerDevice {
            device_id: d.device_id,
            signature_key: d.signature_key.into(),
        })
        .collect();
    Ok(AccountDevicesResponse {
        account_id,
        devices,
    })
}

/// Find the account registered with a phone number.
#[utoipa::path(
    post, path = "/v1/accounts/lookup", tag = "accounts", security(("bearer" = [])),
    request_body = LookupRequest,
    responses(
        (status = 200, body = AccountDevicesResponse),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
pub async fn lookup(
    State(state): State<AppState>,
    auth: Authed,
    ApiJson(req): ApiJson<LookupRequest>,
) -> Result<ApiJson<AccountDevicesResponse>, ApiError> {
    // Lookups one by one are how a number range would be enumerated.
    let limits = &state.config().limits;
    super::rate_limited(
        &state,
        &[
            (
                "lookup-account",
                auth.account_id.as_bytes().to_vec(),
                limits.lookups_per_account,
                1,
            ),
            (
                "lookup-address",
                super::address_bucket(auth.addr.ip()),
                limits.lookups_per_address,
                1,
            ),
        ],
    )
    .await?;
    let account = state
        .store()
        .account_by_phone(&req.phone)
        .await?
        .ok_or(ApiError::UnknownAccount)?;
    Ok(ApiJson(account_devices(&state, account).await?))
}

/// List another account's active devices.
#[utoipa::path(
    get, path = "/v1/accounts/{account_id}/devices", tag = "accounts", security(("bearer" = [])),
    params(("account_id" = String, Path, description = "The account")),
    responses(
        (status = 200, body = AccountDevicesResponse),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
pub async fn peer_devices(
    State(state): State<AppState>,
    _auth: Authed,
    ApiPath(account_id): ApiPath<AccountId>,
) -> Result<ApiJson<AccountDevicesResponse>, ApiError> {
    Ok(ApiJson(account_devices(&state, account_id).await?))
}
