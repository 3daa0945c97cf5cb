//! Sending envelopes, fetching a mailbox, acknowledging delivery.

use axum::extract::State;
use axum::http::StatusCode;
use redoubt_proto::api::{
    AckRequest, AckResponse, Envelope, EnvelopeKind, FetchResponse, SendRequest, SendResponse,
    COMMIT_GROUP_LEN,
};
use redoubt_proto::{AccountId, DeviceId, EnvelopeId, ErrorBody};
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
        (status = 202, description = "Queued, for every recipient not named in `full`", body = SendResponse),
        (status = 200, description = "Already queued earlier (a retry)", body = SendResponse),
        (status = 401, body = ErrorBody),
        (status = 409, description = "The id was used for other bytes, or another commit to the group was accepted from this epoch", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, description = "Unknown recipients or too many", body = ErrorBody),
        (status = 429, description = "Every recipient's mailbox holds as much from this sender as the relay takes for now", body = ErrorBody),
        (status = 507, description = "Every recipient's mailbox is full; nothing queued", body = ErrorBody),
    )
)]
pub async fn send(
    State(state): State<AppState>,
    auth: Authed,
    ApiJson(req): ApiJson<SendRequest>,
) -> Result<(StatusCode, ApiJson<SendResponse>), ApiError> {
    let commit = match req.commit {
        None => None,
        Some(tag) => Some(CommitPosition {
            group: tag.group.as_slice().try_into().map_err(|_| {
                ApiError::InvalidRequest(format!(
                    "commit.group must be {COMMIT_GROUP_LEN} bytes (SHA-256 of the group id)"
                ))
            })?,
            epoch: tag.epoch,
        }),
    };
    let Accepted { duplicate, full } = submit(
        &state,
        Submission {
            sender: auth.account_id,
            id: req.id,
            recipients: req.recipients,
            payload: req.payload.into_vec(),
            commit,
        },
    )
    .await?;
    let status = if duplicate {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((
        status,
        ApiJson(SendResponse {
            id: req.id,
            duplicate,
            full,
        }),
    ))
}

/// One envelope to queue, from `POST /v1/messages` or a WebSocket send.
pub(crate) struct Submission {
    /// Who sends it: held to a quota per recipient mailbox, never stored.
    pub sender: AccountId,
    /// The sender's id for it.
    pub id: EnvelopeId,
    /// Its recipients, as sent (duplicates allowed).
    pub recipients: Vec<DeviceId>,
    /// The MLS message.
    pub payload: Vec<u8>,
    /// The group and epoch, for a commit.
    pub commit: Option<CommitPosition>,
}

/// What became of an accepted send.
pub(crate) struct Accepted {
    /// The id had been accepted before (a retry).
    pub duplicate: bool,
    /// Recipients it was not queued for (full, or over this sender's
    /// quota into their mailbox).
    pub full: Vec<DeviceId>,
}

/// Checks and queues one envelope, waking its recipients: the one send
/// path behind both transports, so they keep the same limits, ids and
/// errors.
pub(crate) async fn submit(state: &AppState, s: Submission) -> Result<Accepted, ApiError> {
    let cfg = &state.config().mailbox;
    if s.id.is_service() {
        return Err(ApiError::InvalidRequest(
            "id is a UUID of version 8, which only the relay's own notices use; \
             send a version 4 or 7 id"
                .into(),
        ));
    }
    if s.payload.is_empty() {
        return Err(ApiError::InvalidRequest("payload must not be empty".into()));
    }
    if s.payload.len() > cfg.max_envelope_bytes {
        return Err(ApiError::PayloadTooLarge);
    }
    let recipients = dedup(s.recipients);
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
    // The position after a commit's epoch must be storable (a signed
    // 64-bit column): a larger epoch is no real group's.
    if s.commit.is_some_and(|c| c.epoch >= i64::MAX as u64) {
        return Err(ApiError::InvalidRequest(
            "commit.epoch is out of range".into(),
        ));
    }
    let now = state.clock().now();
    // The sender's quota into each mailbox (issue 16, item 1): a mailbox
    // this sender has filled its share of is left out, as a full one is.
    let over = state.sender_quota().take(s.sender, &recipients, now);
    let recipients: Vec<DeviceId> = if over.is_empty() {
        recipients
    } else {
        state.metrics().rate_limited.inc();
        let rest: Vec<DeviceId> = recipients
            .into_iter()
            .filter(|d| !over.contains(d))
            .collect();
        if rest.is_empty() {
            return Err(ApiError::RateLimited {
                retry_after_secs: state.sender_quota().retry_after().as_secs().max(1),
            });
        }
        rest
    };
    let outcome = state
        .store()
        .enqueue(NewEnvelope {
            id: s.id,
            kind: EnvelopeKind::Mls,
            payload: s.payload,
            recipients: recipients.clone(),
            now,
            expires_at: now.plus(cfg.message_ttl),
            max_queued: cfg.max_queued_per_device,
            commit: s.commit,
        })
        .await?;
    let mut full = over;
    match outcome {
        EnqueueOutcome::Queued | EnqueueOutcome::Partial(_) => {
            if let EnqueueOutcome::Partial(left_out) = outcome {
                full.extend(left_out);
            }
            let queued: Vec<DeviceId> = recipients
                .into_iter()
                .filter(|d| !full.contains(d))
                .collect();
            full.sort();
            state.metrics().envelopes_queued.inc_by(queued.len() as u64);
            // A store that feeds its commits to the sessions has handed
            // them this envelope already; a wake-up would only make them
            // read the mailbox for it.
            if !state.store().feeds_commits() {
                state.fanout().wake(s.id, &queued).await;
            }
            Ok(Accepted {
                duplicate: false,
                full,
            })
        }
        // A retry wakes the recipients again: the first attempt may have
        // been cut off (its client gone, its task dropped) after the store
        // committed and before the wake, and a wake only makes a session
        // read its mailbox.
        EnqueueOutcome::Duplicate => {
            state.fanout().wake(s.id, &recipients).await;
            Ok(Accepted {
                duplicate: true,
                full: Vec::new(),
            })
        }
        EnqueueOutcome::Conflict => Err(ApiError::EnvelopeIdConflict),
        EnqueueOutcome::StaleCommit => Err(ApiError::StaleCommit),
        EnqueueOutcome::UnknownRecipients(d) => Err(ApiError::UnknownRecipients(d)),
        EnqueueOutcome::MailboxFull(d) => {
            // Every mailbox left is full, and those over the quota are as
            // good as full for this sender.
            full.extend(d);
            full.sort();
            Err(ApiError::MailboxFull(full))
        }
    }
}

/// Query of `GET /v1/messages`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FetchQuery {
    /// Envelopes to return at most (default and maximum: the server's page size).
    // Documented as the unsigned 32-bit value it is, not as `int32`, whose
    // range stops at 2^31 - 1.
    #[param(value_type = Option<u64>, minimum = 0, maximum = 4294967295_u64)]
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
