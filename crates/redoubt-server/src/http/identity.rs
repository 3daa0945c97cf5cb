//! Account identity: signed device lists and linking new devices.
//!
//! The relay stores and serves what clients sign; it cannot make it. Device
//! lists are opaque to it beyond the account and version they claim (so it
//! can keep versions in order), and a link's key exchange passes through
//! it without the password, so it can neither read the account's secrets
//! nor put its own key in place of the new device's.

use axum::extract::State;
use axum::http::StatusCode;
use rand::Rng as _;
use redoubt_proto::api::{
    ApproveLinkRequest, ApproveLinkResponse, ClaimLinkRequest, DeviceListsQueryRequest,
    DeviceListsQueryResponse, DeviceListsResponse, LinkCreatedResponse, LinkMessage,
    PublishDeviceListRequest, PublishDeviceListResponse, VerifyCodeResponse,
};
use redoubt_proto::identity::{base32, base32_decode};
use redoubt_proto::{AccountId, AuthToken, DeviceId, DeviceList, ErrorBody, SignedDocument};
use serde::Deserialize;

use super::extract::{token_hash, ApiJson, ApiPath, ApiQuery, Authed};
use super::registration::{device_name, verify_possession};
use crate::error::ApiError;
use crate::storage::{DeviceListOutcome, LinkPut, LinkSlot, NewDevice};
use crate::AppState;

/// How long a link rendezvous lives: long enough to walk to the other
/// device, short enough that an abandoned one is soon gone.
const LINK_TTL: std::time::Duration = std::time::Duration::from_secs(600);
/// The largest link message (key-exchange messages and encrypted secrets
/// are a few hundred bytes).
const MAX_LINK_MESSAGE: usize = 16 * 1024;
/// The largest signed device list.
const MAX_DEVICE_LIST: usize = 64 * 1024;
/// Lists served per request.
const LISTS_PER_PAGE: u32 = 100;

/// Publish the caller's account's next signed device list. The relay checks
/// only that it names the caller's account and the next version; clients
/// check the signature and the chain.
#[utoipa::path(
    put, path = "/v1/device-list", tag = "identity", security(("bearer" = [])),
    request_body = PublishDeviceListRequest,
    responses(
        (status = 200, body = PublishDeviceListResponse),
        (status = 401, body = ErrorBody),
        (status = 409, description = "Not the next version", body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
pub async fn publish_device_list(
    State(state): State<AppState>,
    auth: Authed,
    ApiJson(req): ApiJson<PublishDeviceListRequest>,
) -> Result<ApiJson<PublishDeviceListResponse>, ApiError> {
    let bytes = serde_json::to_vec(&req.list).map_err(ApiError::internal)?;
    if bytes.len() > MAX_DEVICE_LIST {
        return Err(ApiError::InvalidRequest(format!(
            "a device list may be at most {MAX_DEVICE_LIST} bytes"
        )));
    }
    let list: DeviceList = serde_json::from_str(&req.list.body)
        .map_err(|_| ApiError::InvalidRequest("list.body is not a device list".into()))?;
    if list.account != auth.account_id || list.version == 0 {
        return Err(ApiError::InvalidRequest(
            "a device list must name the caller's account and a version from 1".into(),
        ));
    }
    // The list names the account's own number: the directory publishes it
    // under that number, for everyone who looks the number up.
    if state.store().account_by_phone(&list.phone).await? != Some(auth.account_id) {
        return Err(ApiError::InvalidRequest(
            "a device list must name the account's own number".into(),
        ));
    }
    match state
        .store()
        .put_device_list(auth.account_id, list.version, bytes, state.clock().now())
        .await?
    {
        DeviceListOutcome::Stored => {
            let value = redoubt_proto::kt::DirectoryValue {
                account: list.account,
                identity_key: list.identity_key.clone(),
                list_sha256: redoubt_legal::sha256_hex(req.list.body.as_bytes()),
                list_version: list.version,
            };
            state
                .kt()
                .queue(
                    &list.phone,
                    &value,
                    state.clock().now_offset().unix_timestamp(),
                )
                .await
                .map_err(ApiError::internal)?;
            Ok(ApiJson(PublishDeviceListResponse {
                version: list.version,
            }))
        }
        DeviceListOutcome::Conflict { latest } => Err(ApiError::DeviceListConflict { latest }),
    }
}

/// Query of `GET /v1/accounts/{account_id}/device-lists`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListsQuery {
    /// Only versions after this one (default 0: from the first).
    pub since: Option<u64>,
}

/// An account's signed device lists after a version, oldest first: a client
/// that pinned version N verifies the chain from N to the latest.
#[utoipa::path(
    get, path = "/v1/accounts/{account_id}/device-lists", tag = "identity",
    security(("bearer" = [])),
    params(("account_id" = String, Path, description = "The account"), ListsQuery),
    responses(
        (status = 200, body = DeviceListsResponse),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
pub async fn device_lists(
    State(state): State<AppState>,
    _auth: Authed,
    ApiPath(account): ApiPath<AccountId>,
    ApiQuery(query): ApiQuery<ListsQuery>,
) -> Result<ApiJson<DeviceListsResponse>, ApiError> {
    if !state.store().account_exists(account).await? {
        return Err(ApiError::UnknownAccount);
    }
    let lists = stored_lists(&state, account, query.since.unwrap_or(0)).await?;
    Ok(ApiJson(DeviceListsResponse { lists }))
}

/// The most accounts one query may name.
const MAX_QUERY_ACCOUNTS: usize = 1000;

/// The newer signed device lists of many accounts in one round trip: what
/// a client checks before it sends to a group. Accounts with nothing newer
/// (or unknown) are left out.
#[utoipa::path(
    post, path = "/v1/device-lists/query", tag = "identity", security(("bearer" = [])),
    request_body = DeviceListsQueryRequest,
    responses(
        (status = 200, body = DeviceListsQueryResponse),
        (status = 401, body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
pub async fn query_device_lists(
    State(state): State<AppState>,
    _auth: Authed,
    ApiJson(req): ApiJson<DeviceListsQueryRequest>,
) -> Result<ApiJson<DeviceListsQueryResponse>, ApiError> {
    if req.accounts.len() > MAX_QUERY_ACCOUNTS {
        return Err(ApiError::InvalidRequest(format!(
            "a query may name at most {MAX_QUERY_ACCOUNTS} accounts"
        )));
    }
    let mut lists = std::collections::BTreeMap::new();
    for q in req.accounts {
        let found = stored_lists(&state, q.account_id, q.since).await?;
        if !found.is_empty() {
            lists.insert(q.account_id, found);
        }
    }
    Ok(ApiJson(DeviceListsQueryResponse { lists }))
}

/// An account's stored lists after `since`, as they were published.
async fn stored_lists(
    state: &AppState,
    account: AccountId,
    since: u64,
) -> Result<Vec<SignedDocument>, ApiError> {
    // Versions are stored as signed 64-bit integers, as the document's
    // int64 says; a larger one is no version at all.
    if since > i64::MAX as u64 {
        return Err(ApiError::InvalidRequest("since is out of range".into()));
    }
    state
        .store()
        .device_lists(account, since, LISTS_PER_PAGE)
        .await?
        .into_iter()
        .map(|bytes| serde_json::from_slice::<SignedDocument>(&bytes))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ApiError::internal)
}

fn link_id(text: &str) -> Result<Vec<u8>, ApiError> {
    base32_decode(text)
        .filter(|b| b.len() == 5)
        .ok_or(ApiError::UnknownLink)
}

fn slot(name: &str) -> Result<LinkSlot, ApiError> {
    LinkSlot::parse(name).ok_or(ApiError::NotFound)
}

/// Open a link rendezvous (the new device does this, without an account).
#[utoipa::path(
    post, path = "/v1/links", tag = "identity",
    responses((status = 201, body = LinkCreatedResponse))
)]
pub async fn create_link(
    State(state): State<AppState>,
) -> Result<(StatusCode, ApiJson<LinkCreatedResponse>), ApiError> {
    let expires_at = state.clock().now().plus(LINK_TTL);
    // 40 random bits, unique among open links: short enough to type.
    for _ in 0..8 {
        let mut id = [0u8; 5];
        rand::rngs::OsRng.fill(&mut id);
        if state.store().open_link(&id, expires_at).await? {
            return Ok((
                StatusCode::CREATED,
                ApiJson(LinkCreatedResponse {
                    link_id: base32(&id),
                    expires_at,
                }),
            ));
        }
    }
    Err(ApiError::Unavailable("no free link id; try again"))
}

/// Write one message of a link's key exchange (once).
#[utoipa::path(
    put, path = "/v1/links/{link_id}/{slot}", tag = "identity",
    params(
        ("link_id" = String, Path, description = "The link"),
        ("slot" = String, Path, description = "offer, answer, confirm or secrets"),
    ),
    request_body = LinkMessage,
    responses(
        (status = 204, description = "Stored"),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
    )
)]
pub async fn put_link_message(
    State(state): State<AppState>,
    ApiPath((id, name)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<LinkMessage>,
) -> Result<StatusCode, ApiError> {
    let (id, slot) = (link_id(&id)?, slot(&name)?);
    if req.data.as_slice().is_empty() || req.data.as_slice().len() > MAX_LINK_MESSAGE {
        return Err(ApiError::InvalidRequest(format!(
            "a link message is 1 to {MAX_LINK_MESSAGE} bytes"
        )));
    }
    match state
        .store()
        .put_link(&id, slot, req.data.into_vec(), state.clock().now())
        .await?
    {
        LinkPut::Stored => Ok(StatusCode::NO_CONTENT),
        LinkPut::Taken => Err(ApiError::LinkSlotTaken),
        LinkPut::Unknown => Err(ApiError::UnknownLink),
    }
}

/// Read one message of a link's key exchange; 204 while it is not written.
#[utoipa::path(
    get, path = "/v1/links/{link_id}/{slot}", tag = "identity",
    params(
        ("link_id" = String, Path, description = "The link"),
        ("slot" = String, Path, description = "offer, answer, confirm or secrets"),
    ),
    responses(
        (status = 200, body = LinkMessage),
        (status = 204, description = "Not written yet"),
        (status = 404, body = ErrorBody),
    )
)]
pub async fn get_link_message(
    State(state): State<AppState>,
    ApiPath((id, name)): ApiPath<(String, String)>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse as _;
    let (id, slot) = (link_id(&id)?, slot(&name)?);
    match state
        .store()
        .get_link(&id, slot, state.clock().now())
        .await?
    {
        None => Err(ApiError::UnknownLink),
        Some(None) => Ok(StatusCode::NO_CONTENT.into_response()),
        Some(Some(data)) => Ok(ApiJson(LinkMessage { data: data.into() }).into_response()),
    }
}

/// Approve the new device: a device of the account, having run the key
/// exchange with it, registers its signature key. The new device then
/// claims its token.
#[utoipa::path(
    post, path = "/v1/links/{link_id}/approve", tag = "identity", security(("bearer" = [])),
    params(("link_id" = String, Path, description = "The link")),
    request_body = ApproveLinkRequest,
    responses(
        (status = 201, body = ApproveLinkResponse),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
pub async fn approve_link(
    State(state): State<AppState>,
    auth: Authed,
    ApiPath(id_text): ApiPath<String>,
    ApiJson(req): ApiJson<ApproveLinkRequest>,
) -> Result<(StatusCode, ApiJson<ApproveLinkResponse>), ApiError> {
    let id = link_id(&id_text)?;
    let name = device_name(&req.device_name)?;
    let key_bytes = verify_possession(
        req.signature_key.as_slice(),
        &ApproveLinkRequest::proof_input(&base32(&id), req.signature_key.as_slice()),
        req.proof.as_slice(),
    )?;
    // No usable token until the new device claims one: a hash of random
    // bytes nobody holds.
    let mut placeholder = [0u8; 32];
    rand::rngs::OsRng.fill(&mut placeholder);
    let device_id = DeviceId::random();
    let approved = state
        .store()
        .approve_link(
            &id,
            auth.account_id,
            NewDevice {
                id: device_id,
                name: name.to_owned(),
                signature_key: key_bytes.to_vec(),
                token_hash: token_hash(&AuthToken::from_random_bytes(&placeholder)),
            },
            state.clock().now(),
        )
        .await?;
    if !approved {
        return Err(ApiError::UnknownLink);
    }
    tracing::info!("device linked");
    Ok((
        StatusCode::CREATED,
        ApiJson(ApproveLinkResponse { device_id }),
    ))
}

/// The new device collects its token, proving it holds the approved key.
#[utoipa::path(
    post, path = "/v1/links/{link_id}/claim", tag = "identity",
    params(("link_id" = String, Path, description = "The link")),
    request_body = ClaimLinkRequest,
    responses(
        (status = 201, body = VerifyCodeResponse),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
    )
)]
pub async fn claim_link(
    State(state): State<AppState>,
    ApiPath(id_text): ApiPath<String>,
    ApiJson(req): ApiJson<ClaimLinkRequest>,
) -> Result<(StatusCode, ApiJson<VerifyCodeResponse>), ApiError> {
    let id = link_id(&id_text)?;
    let now = state.clock().now();
    let approval = state
        .store()
        .link_approval(&id, now)
        .await?
        .filter(|a| !a.claimed)
        .ok_or(ApiError::LinkNotReady)?;
    verify_possession(
        &approval.signature_key,
        &ClaimLinkRequest::claim_input(&base32(&id)),
        req.signature.as_slice(),
    )?;
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill(&mut secret);
    let token = AuthToken::from_random_bytes(&secret);
    if !state
        .store()
        .claim_link(&id, &token_hash(&token), now)
        .await?
    {
        return Err(ApiError::LinkNotReady);
    }
    Ok((
        StatusCode::CREATED,
        ApiJson(VerifyCodeResponse {
            account_id: approval.account,
            device_id: approval.device,
            token,
            new_account: false,
        }),
    ))
}
