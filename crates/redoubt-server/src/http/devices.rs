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
/// packages are deleted. Another device may be revoked only once the
/// account's latest device list, validly signed by its identity key, no
/// longer names it.
#[utoipa::path(
    delete, path = "/v1/devices/{device_id}", tag = "devices", security(("bearer" = [])),
    params(("device_id" = String, Path, description = "The device to revoke")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Another device, still named by the account's latest signed device list (`forbidden`)", body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
pub async fn revoke(
    State(state): State<AppState>,
    auth: Authed,
    ApiPath(device_id): ApiPath<DeviceId>,
) -> Result<StatusCode, ApiError> {
    // A device added with the SMS code alone revoked the account's original
    // device (issue 16, item 8). Revoking another device now takes the
    // identity key: the account's latest signed list must leave it out.
    // A device that got onto the account without the key can only get
    // there by signing a list with a key of its own, which is an account
    // reset that every contact and the device itself are shown.
    if device_id != auth.device_id {
        // Another account's device, or one already revoked, is unknown here
        // whatever any list says.
        let own = state.store().devices(auth.account_id).await?;
        if !own.iter().any(|d| d.device_id == device_id) {
            return Err(ApiError::UnknownDevice);
        }
        let dropped = state
            .store()
            .latest_device_list(auth.account_id)
            .await?
            .is_some_and(|raw| signed_list_leaves_out(&raw, auth.account_id, device_id));
        if !dropped {
            return Err(ApiError::Forbidden(
                "revoking another device takes the account's identity key: publish a signed \
                 device list without it first",
            ));
        }
    }
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

/// Whether `raw` (a stored device list) is validly signed by the identity
/// key it names, is the account's, and does not list `device`.
fn signed_list_leaves_out(raw: &[u8], account: AccountId, device: DeviceId) -> bool {
    use base64::Engine as _;
    use redoubt_proto::identity::DEVICE_LIST_CONTEXT;
    use redoubt_proto::{DeviceList, SignedDocument};
    let Ok(doc) = serde_json::from_slice::<SignedDocument>(raw) else {
        return false;
    };
    let Ok(list) = serde_json::from_str::<DeviceList>(&doc.body) else {
        return false;
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let (Ok(key), Ok(signature)) = (b64.decode(&list.identity_key), b64.decode(&doc.signature))
    else {
        return false;
    };
    let input = SignedDocument::signing_input(DEVICE_LIST_CONTEXT, &doc.body);
    // The same Ed25519 check (strict) as a registering device's proof.
    super::registration::verify_possession(&key, &input, &signature).is_ok()
        && list.account == account
        && list.devices.iter().all(|d| d.device != device)
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

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use ed25519_dalek::{Signer, SigningKey};
    use redoubt_proto::identity::DEVICE_LIST_CONTEXT;
    use redoubt_proto::{
        AccountId, DeviceId, DeviceList, ListedDevice, PhoneNumber, SignedDocument,
    };

    use super::signed_list_leaves_out;

    fn list(
        account: AccountId,
        declared: &SigningKey,
        signer: &SigningKey,
        devices: &[DeviceId],
    ) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let body = serde_json::to_string(&DeviceList {
            account,
            phone: PhoneNumber::parse("+33612345678").unwrap(),
            identity_key: b64.encode(declared.verifying_key().as_bytes()),
            version: 1,
            previous: String::new(),
            devices: devices
                .iter()
                .map(|d| ListedDevice {
                    device: *d,
                    signature_key: b64.encode([1u8; 32]),
                })
                .collect(),
            issued_at: 0,
        })
        .unwrap();
        let signature = signer.sign(&SignedDocument::signing_input(DEVICE_LIST_CONTEXT, &body));
        serde_json::to_vec(&SignedDocument {
            body,
            signature: b64.encode(signature.to_bytes()),
        })
        .unwrap()
    }

    #[test]
    fn only_a_validly_signed_list_of_the_account_that_leaves_the_device_out_counts() {
        let identity = SigningKey::from_bytes(&[1; 32]);
        let other = SigningKey::from_bytes(&[2; 32]);
        let account = AccountId::random();
        let (kept, gone) = (DeviceId::random(), DeviceId::random());
        assert!(signed_list_leaves_out(
            &list(account, &identity, &identity, &[kept]),
            account,
            gone
        ));
        assert!(!signed_list_leaves_out(
            &list(account, &identity, &identity, &[kept, gone]),
            account,
            gone
        ));
        // Declares the identity key but signed by another: forged.
        assert!(!signed_list_leaves_out(
            &list(account, &identity, &other, &[kept]),
            account,
            gone
        ));
        assert!(!signed_list_leaves_out(
            &list(AccountId::random(), &identity, &identity, &[kept]),
            account,
            gone
        ));
        assert!(!signed_list_leaves_out(b"not json", account, gone));
    }
}
