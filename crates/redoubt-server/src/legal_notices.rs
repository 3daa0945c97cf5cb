//! Delivers the legal desk's user notices. The desk (in `redoubt-legal`)
//! only computes who is owed a notice; writing to a mailbox is the relay's
//! job and stays here, so the desk keeps no code path to mailbox tables.

use redoubt_proto::api::EnvelopeKind;
use redoubt_proto::{EnvelopeId, NoticeKind, ServiceNotice};
use sha2::{Digest, Sha256};

use crate::storage::{EnqueueOutcome, NewEnvelope};
use crate::AppState;

/// Why delivering notices failed.
#[derive(Debug, thiserror::Error)]
pub enum NoticeError {
    /// The desk's workflow failed.
    #[error(transparent)]
    Desk(#[from] redoubt_legal::desk::DeskError),
    /// The relay's storage failed.
    #[error(transparent)]
    Store(#[from] crate::storage::StoreError),
}

/// The envelope id of an order's notice: derived from the issuer and order
/// id, so a retry after a crash is recognised by the relay's receipts and
/// never delivered twice. Public for the tests that try to pre-empt it.
#[doc(hidden)]
pub fn notice_id(issuer: &str, order_id: &str) -> EnvelopeId {
    let digest = Sha256::new()
        .chain_update(b"redoubt/disclosure-notice/v2\0")
        .chain_update(issuer.as_bytes())
        .chain_update(b"\0")
        .chain_update(order_id.as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    // In the namespace clients cannot write (the relay refuses it from
    // them), or a user could send under this id first and the real notice
    // would be dropped as a duplicate.
    EnvelopeId::service(bytes)
}

/// Queues a notice from the service itself, signed with the service key,
/// to every active device of the notice's account. False when it could not
/// be queued now (the caller retries on its next pass); true when queued,
/// already queued under the same id, or there is no device to tell. A
/// notice the user is owed is never refused by a full mailbox: it waits in
/// line instead. The caller fixes `issued_at`, so a retry signs the same
/// bytes and the relay's receipts recognise it.
pub(crate) async fn queue_notice(
    state: &AppState,
    id: EnvelopeId,
    notice: ServiceNotice,
) -> Result<bool, crate::storage::StoreError> {
    let account = notice.account;
    // Serialising plain data cannot fail.
    let payload = serde_json::to_vec(&state.service_key().sign_notice(&notice)).unwrap_or_default();
    let recipients: Vec<_> = state
        .store()
        .devices(account)
        .await?
        .into_iter()
        .map(|d| d.device_id)
        .collect();
    if recipients.is_empty() {
        return Ok(true);
    }
    let now = state.clock().now();
    let outcome = state
        .store()
        .enqueue(NewEnvelope {
            id,
            kind: EnvelopeKind::ServerNotice,
            payload,
            recipients: recipients.clone(),
            now,
            expires_at: now.plus(state.config().mailbox.message_ttl),
            max_queued: u64::MAX,
            commit: None,
        })
        .await?;
    match outcome {
        EnqueueOutcome::Queued => {
            state.fanout().wake(id, &recipients).await;
            Ok(true)
        }
        EnqueueOutcome::Duplicate => Ok(true),
        other => {
            tracing::warn!(
                ?other,
                "a service notice could not be queued; retrying next pass"
            );
            Ok(false)
        }
    }
}

/// Queues every notice that is due to the affected account's devices.
/// Returns how many orders' notices were delivered. The desk records each
/// in its log (signed by the service), once, even with several nodes at it.
pub async fn deliver_due(state: &AppState) -> Result<usize, NoticeError> {
    let desk = state.legal_desk();
    // The relay's clock, so the gag's end is judged on the same time line as
    // everything else the relay does (and tests can move it).
    let now = state.clock().now_offset();
    let mut delivered = 0;
    for notice in desk.due_notices(now).await? {
        let signed = ServiceNotice {
            account: notice.account_id,
            issued_at: notice.disclosed_at.unix_timestamp(),
            text: notice.text,
            kind: NoticeKind::DisclosureNotice {
                order_id: notice.order_id.clone(),
            },
        };
        let id = notice_id(&notice.issuer, &notice.order_id);
        if !queue_notice(state, id, signed).await? {
            continue;
        }
        desk.mark_notified(&notice.issuer, &notice.order_id, now)
            .await?;
        delivered += 1;
    }
    if delivered > 0 {
        tracing::info!(delivered, "disclosure notices delivered");
    }
    Ok(delivered)
}
