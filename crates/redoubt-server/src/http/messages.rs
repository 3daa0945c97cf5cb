//! Sending envelopes, fetching a mailbox, acknowledging delivery.

use axum::extract::State;
use axum::http::StatusCode;
use redoubt_proto::api::{
    AckRequest, AckResponse, Envelope, EnvelopeKind, FetchResponse, SendRequest, SendResponse,
    COMMIT_GROUP_LEN,
};
use redoubt_proto::ErrorBody;
use serde::Deserialize;

use super::extract::{ApiJson, ApiQuery, Authed};
use super::keypackages::dedup;
use crate::error::ApiError;
use crate::storage::{CommitPosition, EnqueueOutcome, NewEnvelope, QueuedEnvelope};
use crate::AppState;

/// Ids one ack may carry.
pub const MAX_ACK_IDS: usize = 1000;

/// Queue one envelope for several devices.
#[utoipa::path(
    post, path = "/v1/messages", tag = "messages", security(("bearer" = [])),
    request_body = SendRequest,
    responses(
        (status = 202, description = "Queued", body = SendResponse),
        (status = 200, description = "Already queued earlier (a retry)", body = SendResponse),
        (status = 401, body = ErrorBody),
        (status = 409, description = "The id was used for other bytes, or another commit to the group was accepted from this epoch", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, description = "Unknown recipients or too many", body = ErrorBody),
        (status = 507, description = "A recipient mailbox is full; nothing queued", body = ErrorBody),
    )
)]
pub async fn send(
    State(state): State<AppState>,
    _auth: Authed,
    ApiJson(req): ApiJson<SendRequest>,
) -> Result<(StatusCode, ApiJson<SendResponse>), ApiError> {
    let cfg = &state.config().mailbox;
    if req.payload.is_empty() {
        return Err(ApiError::InvalidRequest("payload must not be empty".into()));
    }
    if req.payload.len() > cfg.max_envelope_bytes {
        return Err(ApiError::PayloadTooLarge);
    }
    let recipients = dedup(req.recipients);
    if recipients.is_empty() {
        return Err(ApiError::InvalidRequest(
            "recipients must name at least one device".into(),
        ));
    }
    if recipients.len() > cfg.max_recipients {
        return Err(ApiError::TooManyRecipients {
            max: cfg.max_recipients,
        });
    }
    let commit = match req.commit {
        None => None,
        Some(tag) => Some(CommitPosition {
            group: tag.group.as_slice().try_into().map_err(|_| {
                ApiError::InvalidRequest(format!(
                    "commit.group must be {COMMIT_GROUP_LEN} bytes (SHA-256 of the group id)"
                ))
            })?,
            // The position after it must be storable (a signed 64-bit
            // column): a larger epoch is no real group's.
            epoch: (tag.epoch < i64::MAX as u64)
                .then_some(tag.epoch)
                .ok_or_else(|| ApiError::InvalidRequest("commit.epoch is out of range".into()))?,
        }),
    };
    let now = state.clock().now();
    let outcome = state
        .store()
        .enqueue(NewEnvelope {
            id: req.id,
            kind: EnvelopeKind::Mls,
            payload: req.payload.into_vec(),
            recipients: recipients.clone(),
            now,
            expires_at: now.plus(cfg.message_ttl),
            max_queued: cfg.max_queued_per_device,
            commit,
        })
        .await?;
    match outcome {
        EnqueueOutcome::Queued => {
            state
                .metrics()
                .envelopes_queued
                .inc_by(recipients.len() as u64);
            state.fanout().wake(req.id, &recipients).await;
            Ok((
                StatusCode::ACCEPTED,
                ApiJson(SendResponse {
                    id: req.id,
                    duplicate: false,
                }),
            ))
        }
        EnqueueOutcome::Duplicate => Ok((
            StatusCode::OK,
            ApiJson(SendResponse {
                id: req.id,
                duplicate: true,
            }),
        )),
        EnqueueOutcome::Conflict => Err(ApiError::EnvelopeIdConflict),
        EnqueueOutcome::StaleCommit => Err(ApiError::StaleCommit),
        EnqueueOutcome::UnknownRecipients(d) => Err(ApiError::UnknownRecipients(d)),
        EnqueueOutcome::MailboxFull(d) => Err(ApiError::MailboxFull(d)),
    }
}

/// Query of `GET /v1/messages`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct FetchQuery {
    /// Envelopes to return at most (default and maximum: the server's page size).
    pub limit: Option<u32>,
}

pub(crate) fn to_wire(e: QueuedEnvelope) -> Envelope {
    Envelope {
        id: e.id,
        kind: e.kind,
        received_at: e.received_at,
        payload: e.payload.into(),
    }
}

/// Fetch the oldest unacknowledged envelopes. Fetching does not remove them:
/// only an ack does, so a crash between fetch and processing loses nothing.
#[utoipa::path(
    get, path = "/v1/messages", tag = "messages", security(("bearer" = [])),
    params(FetchQuery),
    responses((status = 200, body = FetchResponse), (status = 401, body = ErrorBody))
)]
pub async fn fetch(
    State(state): State<AppState>,
    auth: Authed,
    ApiQuery(query): ApiQuery<FetchQuery>,
) -> Result<ApiJson<FetchResponse>, ApiError> {
    let page = state.config().mailbox.fetch_page;
    let limit = query.limit.unwrap_or(page).clamp(1, page);
    let now = state.clock().now();
    let mut batch = state
        .store()
        .pending(auth.device_id, now, limit + 1)
        .await?;
    let more = batch.len() > limit as usize;
    batch.truncate(limit as usize);
    Ok(ApiJson(FetchResponse {
        envelopes: batch.into_iter().map(to_wire).collect(),
        more,
    }))
}

/// Acknowledge processed envelopes; the server deletes them.
#[utoipa::path(
    post, path = "/v1/messages/ack", tag = "messages", security(("bearer" = [])),
    request_body = AckRequest,
    responses(
        (status = 200, body = AckResponse),
        (status = 401, body = ErrorBody),
        (status = 422, body = ErrorBody),
    )
)]
pub async fn ack(
    State(state): State<AppState>,
    auth: Authed,
    ApiJson(req): ApiJson<AckRequest>,
) -> Result<ApiJson<AckResponse>, ApiError> {
    if req.ids.len() > MAX_ACK_IDS {
        return Err(ApiError::InvalidRequest(format!(
            "an ack may name at most {MAX_ACK_IDS} ids"
        )));
    }
    let removed = state.store().ack(auth.device_id, &dedup(req.ids)).await?;
    state.metrics().envelopes_delivered.inc_by(removed);
    Ok(ApiJson(AckResponse { removed }))
}
