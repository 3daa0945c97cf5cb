//! The key-transparency directory's API. Keys, epochs and append-only
//! proofs are public (anyone may audit the directory, account or not);
//! lookups need an account, and a key history is served for one's own
//! number only.

use axum::extract::State;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use redoubt_proto::kt::{
    KtAuditResponse, KtConsistencyResponse, KtKeysResponse, KtProofResponse, SignedEpoch,
};
use redoubt_proto::{ErrorBody, PhoneNumber};
use serde::Deserialize;

use super::extract::{ApiJson, ApiPath, ApiQuery, Authed};
use crate::error::ApiError;
use crate::kt::KtError;
use crate::AppState;

/// The most epochs one audit request covers.
const MAX_AUDIT_EPOCHS: u64 = 1000;

fn kt_error(e: KtError) -> ApiError {
    match e {
        KtError::NotFound => ApiError::NotFound,
        other => ApiError::internal(other),
    }
}

/// The directory's public keys: the key that signs epochs, which clients
/// pin, and the VRF key proofs are checked with.
#[utoipa::path(
    get, path = "/v1/kt/keys", tag = "key transparency",
    responses((status = 200, body = KtKeysResponse))
)]
pub async fn keys(State(state): State<AppState>) -> ApiJson<KtKeysResponse> {
    ApiJson(KtKeysResponse {
        directory_key: state.kt().directory_key(),
        vrf_public_key: state.kt().vrf_public_key(),
    })
}

/// The newest signed epoch.
#[utoipa::path(
    get, path = "/v1/kt/epochs/latest", tag = "key transparency",
    responses((status = 200, body = SignedEpoch))
)]
pub async fn latest(State(state): State<AppState>) -> Result<ApiJson<SignedEpoch>, ApiError> {
    Ok(ApiJson(state.kt().latest().await.map_err(kt_error)?))
}

/// One signed epoch, by number: how a client checks an epoch another
/// member's device was shown against the directory it is shown itself.
#[utoipa::path(
    get, path = "/v1/kt/epochs/{epoch}", tag = "key transparency",
    params(("epoch" = u64, Path, description = "The epoch")),
    responses(
        (status = 200, body = SignedEpoch),
        (status = 404, body = ErrorBody),
    )
)]
pub async fn epoch(
    State(state): State<AppState>,
    ApiPath(epoch): ApiPath<u64>,
) -> Result<ApiJson<SignedEpoch>, ApiError> {
    state
        .kt()
        .epoch(epoch)
        .await
        .map_err(kt_error)?
        .map(ApiJson)
        .ok_or(ApiError::NotFound)
}

/// Query of `GET /v1/kt/audit`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// The first epoch.
    pub from: u64,
    /// The last epoch (at most 1000 after `from`).
    pub to: u64,
}

/// The append-only proof from one epoch to a later one, with every signed
/// epoch between: what an auditor checks.
#[utoipa::path(
    get, path = "/v1/kt/audit", tag = "key transparency",
    params(AuditQuery),
    responses(
        (status = 200, body = KtAuditResponse),
        (status = 422, body = ErrorBody),
    )
)]
pub async fn audit(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<ApiJson<KtAuditResponse>, ApiError> {
    let latest = state.kt().latest().await.map_err(kt_error)?.epoch;
    if q.from >= q.to || q.to > latest || q.to - q.from > MAX_AUDIT_EPOCHS {
        return Err(ApiError::InvalidRequest(format!(
            "from must be before to, to at most the latest epoch ({latest}), and at most {MAX_AUDIT_EPOCHS} epochs apart"
        )));
    }
    let epochs = state.kt().epochs(q.from, q.to).await.map_err(kt_error)?;
    let proof = state.kt().audit(q.from, q.to).await.map_err(kt_error)?;
    Ok(ApiJson(KtAuditResponse {
        epochs,
        proof: STANDARD.encode(proof),
    }))
}

/// Query of `GET /v1/kt/consistency`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyQuery {
    /// The older epoch.
    pub from: u64,
    /// The newer epoch (or the same).
    pub to: u64,
}

/// That the log of epoch roots up to `to` extends the log up to `from`
/// (RFC 9162 consistency proof), with each epoch's place in its log: how a
/// device checks that a newer epoch, or one another member's device was
/// shown, belongs to the history it saw. A few hundred bytes, however busy
/// the directory.
#[utoipa::path(
    get, path = "/v1/kt/consistency", tag = "key transparency",
    params(ConsistencyQuery),
    responses(
        (status = 200, body = KtConsistencyResponse),
        (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
pub async fn consistency(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ConsistencyQuery>,
) -> Result<ApiJson<KtConsistencyResponse>, ApiError> {
    if q.from > q.to {
        return Err(ApiError::InvalidRequest("from must not be after to".into()));
    }
    state
        .kt()
        .consistency(q.from, q.to)
        .await
        .map_err(kt_error)?
        .map(ApiJson)
        .ok_or(ApiError::NotFound)
}

fn phone(text: &str) -> Result<PhoneNumber, ApiError> {
    PhoneNumber::parse(text).map_err(|e| ApiError::InvalidRequest(e.to_string()))
}

/// A lookup proof for a number against the newest signed epoch: the
/// client checks it before it uses any key the relay gives it.
#[utoipa::path(
    get, path = "/v1/kt/lookup/{phone}", tag = "key transparency",
    security(("bearer" = [])),
    params(("phone" = String, Path, description = "The number, E.164")),
    responses(
        (status = 200, body = KtProofResponse),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
pub async fn lookup(
    State(state): State<AppState>,
    _auth: Authed,
    ApiPath(number): ApiPath<String>,
) -> Result<ApiJson<KtProofResponse>, ApiError> {
    let (epoch, proof) = state
        .kt()
        .lookup(&phone(&number)?)
        .await
        .map_err(kt_error)?;
    Ok(ApiJson(KtProofResponse {
        epoch,
        proof: STANDARD.encode(proof),
    }))
}

/// The caller's own number's complete key history, against the newest
/// signed epoch: how a device notices a key it did not publish. Served for
/// the caller's own number only (a relay that refuses it is refusing
/// service, which the device shows).
#[utoipa::path(
    get, path = "/v1/kt/history/{phone}", tag = "key transparency",
    security(("bearer" = [])),
    params(("phone" = String, Path, description = "The caller's own number, E.164")),
    responses(
        (status = 200, body = KtProofResponse),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
pub async fn history(
    State(state): State<AppState>,
    auth: Authed,
    ApiPath(number): ApiPath<String>,
) -> Result<ApiJson<KtProofResponse>, ApiError> {
    let number = phone(&number)?;
    if state.store().account_by_phone(&number).await? != Some(auth.account_id) {
        return Err(ApiError::NotFound);
    }
    let (epoch, proof) = state.kt().history(&number).await.map_err(kt_error)?;
    Ok(ApiJson(KtProofResponse {
        epoch,
        proof: STANDARD.encode(proof),
    }))
}
