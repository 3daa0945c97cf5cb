//! The outbox: messages encrypted on this device that the relay has not
//! accepted yet.
//!
//! A text is encrypted once, and stored in the same transaction as the MLS
//! state that encryption advanced, with the envelope id it will be sent
//! under. Only then is it sent. If the relay is unreachable (or the process
//! dies in between) it waits, and every later command that reaches the
//! relay retries the very same bytes under the very same id, which the
//! relay recognises: the message is delivered exactly once, and nothing
//! is ever encrypted twice from one ratchet position.

use redoubt_proto::api::CommitTag;
use redoubt_proto::{DeviceId, EnvelopeId, ErrorCode};

use super::{system_message, Client};
use crate::error::{ClientError, Result};
use crate::model::{Delivery, MessageRecord, OutboxEntry};
use crate::store::Changes;

/// What one pass over the outbox did.
#[derive(Debug, Default)]
pub struct Flushed {
    /// Envelopes the relay accepted.
    pub sent: Vec<EnvelopeId>,
    /// Envelopes the relay refused for good, with why.
    pub failed: Vec<(EnvelopeId, ClientError)>,
    /// How many still wait, and the error that stopped the pass.
    pub waiting: usize,
    /// Why the pass stopped early (the relay unreachable, say).
    pub stopped: Option<ClientError>,
}

/// The id of the copy of envelope `id` for the sender's own other devices:
/// derived, so that a retry sends the same copy, and a UUID of version 4
/// like any client's (the relay refuses version 8, its own).
fn self_copy_id(id: EnvelopeId) -> EnvelopeId {
    use sha2::Digest as _;
    let digest = sha2::Sha256::new()
        .chain_update(b"redoubt/self-copy/v1\0")
        .chain_update(id.as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    EnvelopeId::from_bytes(bytes)
}

impl ClientError {
    /// Whether a failed send is worth retrying later as it is: the relay
    /// unreachable, failing, rate-limiting, or a recipient's mailbox full.
    /// Anything else is the relay's final answer.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::BadResponse(_) => true,
            Self::Server { status, code, .. } => {
                *status >= 500 || *status == 429 || *code == ErrorCode::MailboxFull
            }
            _ => false,
        }
    }
}

impl Client {
    /// Sends one envelope to `recipients` under `id`. Devices the relay no
    /// longer knows (revoked since the group last changed) are dropped and
    /// the send is retried once for the rest: the relay queues all or
    /// nothing, so nobody receives it twice.
    pub(super) async fn send_envelope(
        &mut self,
        id: EnvelopeId,
        recipients: Vec<DeviceId>,
        payload: Vec<u8>,
    ) -> Result<()> {
        self.send_envelope_as(id, recipients, payload, None).await
    }

    /// [`Client::send_envelope`], tagged as a commit when it is one.
    ///
    /// The copies for this account's other devices go as an envelope of
    /// their own (issue 16, item 9): one envelope queued for Bob's devices
    /// and Alice's would tell the relay, in its own tables, that Alice and
    /// Bob talk. The copy's id is derived from `id`, so a retry of the pair
    /// is recognised as the same two envelopes. It goes second and without
    /// the commit tag: the relay takes one commit per group and epoch, and
    /// the tagged one decides.
    pub(super) async fn send_envelope_as(
        &mut self,
        id: EnvelopeId,
        recipients: Vec<DeviceId>,
        payload: Vec<u8>,
        commit: Option<CommitTag>,
    ) -> Result<()> {
        let own: Vec<DeviceId> = self
            .identity
            .own_list
            .as_ref()
            .map(|l| l.devices.iter().map(|(d, _)| *d).collect())
            .unwrap_or_default();
        let (mine, theirs): (Vec<DeviceId>, Vec<DeviceId>) =
            recipients.into_iter().partition(|d| own.contains(d));
        if mine.is_empty() || theirs.is_empty() {
            let all = if mine.is_empty() { theirs } else { mine };
            return self.send_one(id, all, payload, commit).await;
        }
        self.send_one(id, theirs, payload.clone(), commit).await?;
        self.send_one(self_copy_id(id), mine, payload, None).await
    }

    /// One envelope to `recipients`, dropping devices the relay no longer
    /// knows and trying once more for the rest.
    async fn send_one(
        &mut self,
        id: EnvelopeId,
        mut recipients: Vec<DeviceId>,
        payload: Vec<u8>,
        commit: Option<CommitTag>,
    ) -> Result<()> {
        for _ in 0..2 {
            if recipients.is_empty() {
                return Ok(());
            }
            match self
                .api
                .send(id, recipients.clone(), payload.clone(), commit.clone())
                .await
            {
                Err(ClientError::Server {
                    code: ErrorCode::UnknownRecipients,
                    devices,
                    ..
                }) if !devices.is_empty() => {
                    // The devices stay in the chat (only a signed list
                    // removes one), but the user learns the relay would
                    // not carry this to them.
                    let n = devices.len();
                    self.announcements.push(format!(
                        "⚠ The relay refused to deliver to {n} device{} of this chat (revoked \
 \
                        there, or withheld); the others got it.",
                        if n == 1 { "" } else { "s" }
                    ));
                    recipients.retain(|d| !devices.contains(d));
                }
                Ok(accepted) => {
                    if !accepted.full.is_empty() {
                        // Queued for everyone else (issue 16: one flooded
                        // mailbox no longer holds up a whole chat); the
                        // user learns who did not get it.
                        let n = accepted.full.len();
                        self.announcements.push(format!(
                            "⚠ {n} device{} of this chat did not get this message: the relay \
                             says {} mailbox is full (or holds as much from you as it takes \
                             for now). The others got it.",
                            if n == 1 { "" } else { "s" },
                            if n == 1 { "its" } else { "their" }
                        ));
                    }
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Invalid(
            "the relay keeps refusing this chat's devices; try `redoubt sync`".into(),
        ))
    }

    /// Stores an encrypted message and its history record as queued, with
    /// the MLS state that produced it, in one transaction.
    pub(super) async fn enqueue(
        &self,
        record: &MessageRecord,
        recipients: Vec<DeviceId>,
        payload: Vec<u8>,
    ) -> Result<EnvelopeId> {
        let envelope_id = EnvelopeId::time_ordered();
        let mut record = record.clone();
        record.delivery = Delivery::Queued;
        self.persist(Changes {
            messages: vec![record.clone()],
            outbox_add: vec![OutboxEntry {
                envelope_id,
                message_id: record.message_id,
                group_id: record.group_id.clone(),
                recipients,
                payload,
            }],
            ..Default::default()
        })
        .await?;
        Ok(envelope_id)
    }

    /// Sends what waits in the outbox, oldest first, stopping at the first
    /// failure worth retrying so that messages leave in the order written.
    /// A message the relay refuses for good is marked as not delivered,
    /// with a notice in its chat saying why.
    pub async fn flush_outbox(&mut self) -> Result<Flushed> {
        let _held = self.hold().await?;
        let entries = self.store.outbox().await?;
        let mut flushed = Flushed::default();
        for (i, entry) in entries.iter().enumerate() {
            let outcome = self
                .send_envelope(
                    entry.envelope_id,
                    entry.recipients.clone(),
                    entry.payload.clone(),
                )
                .await;
            let mut changes = Changes {
                outbox_done: vec![entry.envelope_id],
                ..Default::default()
            };
            let delivery = match outcome {
                Ok(()) => {
                    flushed.sent.push(entry.envelope_id);
                    Delivery::Sent
                }
                Err(e) if e.is_transient() => {
                    flushed.waiting = entries.len() - i;
                    flushed.stopped = Some(e);
                    break;
                }
                Err(e) => {
                    changes.messages.push(system_message(
                        &entry.group_id,
                        format!("✗ A message you wrote could not be delivered: {e}"),
                    ));
                    flushed.failed.push((entry.envelope_id, e));
                    Delivery::Failed
                }
            };
            if let Some(mut record) = self.store.message(entry.message_id).await? {
                record.delivery = delivery;
                changes.updated_messages.push(record);
            }
            self.record(changes).await?;
        }
        Ok(flushed)
    }
}
