//! Commits this device makes: sent under an envelope id of their own and
//! tagged with their group and epoch, so that the relay accepts one commit
//! per group and epoch (two members changing a group at once do not split
//! it: the later one is refused, `stale_commit`, and made again on the new
//! state). A commit whose fate is unknown (the relay unreachable after it
//! may have stored it) is kept, with its pending MLS state, and sent again
//! under the same id before anything else touches the chat, until the
//! relay confirms or refuses it. Dropping it instead would leave this
//! device in the old state while the others, had the relay stored it,
//! moved on.

use std::collections::BTreeMap;

use redoubt_proto::api::CommitTag;
use redoubt_proto::ErrorCode;
use sha2::{Digest as _, Sha256};

use super::*;

/// How many times a commit is sent again within one operation after a
/// transient failure, before it is kept for the next one.
const COMMIT_RETRIES: u32 = 3;
const COMMIT_RETRY_WAIT: Duration = Duration::from_millis(200);

/// How many times an operation that lost a race to another member's commit
/// takes that commit in and makes its own change again.
pub(super) const CHANGE_RETRIES: u32 = 3;

const COMMITS: &str = "commits";

/// A commit the relay has not confirmed, with what must follow it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Unconfirmed {
    id: EnvelopeId,
    group_id: Vec<u8>,
    /// The epoch it was made in.
    epoch: u64,
    recipients: Vec<DeviceId>,
    bytes: Vec<u8>,
    /// The Welcome for devices it adds, sent once it is confirmed.
    welcome: Option<(Vec<DeviceId>, Vec<u8>)>,
}

/// Unconfirmed commits, by hex group id (one per chat at most: MLS allows
/// one pending commit per group).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct CommitsDoc {
    pending: BTreeMap<String, Unconfirmed>,
}

/// What became of a commit sent to the relay.
enum Fate {
    /// Accepted (now or by an earlier attempt): merged, not yet stored.
    Merged,
    /// Not known: kept to be sent again.
    Kept(ClientError),
    /// Refused: discarded.
    Refused(ClientError),
}

/// Whether a failed send may still have been stored by the relay: no
/// answer, or one that is not the relay's word on the envelope. A 429 or a
/// full mailbox is a refusal (nothing was queued), not an unknown.
fn fate_unknown(e: &ClientError) -> bool {
    match e {
        ClientError::Unreachable { .. } | ClientError::BadResponse(_) => true,
        ClientError::Server { status, .. } => *status >= 500,
        _ => false,
    }
}

impl Client {
    /// Sends a commit this device created to `recipients`; once the relay
    /// confirms it, merges and stores it and queues `welcome` (devices it
    /// adds, and the Welcome) and the chat's description for them. A
    /// refused commit is discarded so the group stays usable
    /// (`ChatChanged` when another member's commit won); one whose fate is
    /// unknown is kept and the error returned.
    pub(super) async fn send_commit(
        &mut self,
        group_id: &[u8],
        recipients: Vec<DeviceId>,
        commit: MlsMessageOut,
        welcome: Option<(Vec<DeviceId>, MlsMessageOut)>,
    ) -> Result<()> {
        let epoch = self
            .groups
            .get(group_id)
            .ok_or(ClientError::NotAMember)?
            .epoch()
            .as_u64();
        let welcome = match welcome {
            Some((devices, w)) => Some((
                devices,
                w.tls_serialize_detached().map_err(ClientError::mls)?,
            )),
            None => None,
        };
        let record = Unconfirmed {
            id: EnvelopeId::time_ordered(),
            group_id: group_id.to_vec(),
            epoch,
            recipients,
            bytes: commit.tls_serialize_detached().map_err(ClientError::mls)?,
            welcome,
        };
        match self.deliver_commit(&record).await? {
            Fate::Merged => self.merged(&record, None).await,
            Fate::Kept(e) => {
                let mut doc = self.commits_doc().await?;
                doc.pending.insert(hex(group_id), record);
                self.persist(Changes {
                    documents: vec![(COMMITS, encode(&doc)?)],
                    ..Default::default()
                })
                .await?;
                Err(e)
            }
            Fate::Refused(e) => Err(e),
        }
    }

    /// Sends kept commits again (only `group_id`'s, if given): merged when
    /// the relay confirms, discarded when refused or overtaken (another
    /// member's commit from the same epoch was taken in). An error while
    /// the relay still does not answer leaves them kept.
    pub(super) async fn confirm_commits(&mut self, group_id: Option<&[u8]>) -> Result<()> {
        let mut doc = self.commits_doc().await?;
        let keys: Vec<String> = doc
            .pending
            .keys()
            .filter(|k| group_id.is_none_or(|g| **k == hex(g)))
            .cloned()
            .collect();
        for key in keys {
            let Some(record) = doc.pending.remove(&key) else {
                continue;
            };
            let current = self
                .groups
                .get(&record.group_id)
                .and_then(|g| g.pending_commit().is_some().then(|| g.epoch().as_u64()));
            let outcome = if current == Some(record.epoch) {
                self.deliver_commit(&record).await?
            } else {
                Fate::Refused(ClientError::ChatChanged)
            };
            match outcome {
                Fate::Kept(e) => return Err(e),
                Fate::Merged => self.merged(&record, Some(&doc)).await?,
                Fate::Refused(_) => {
                    self.persist(Changes {
                        documents: vec![(COMMITS, encode(&doc)?)],
                        ..Default::default()
                    })
                    .await?
                }
            }
        }
        Ok(())
    }

    /// After the relay confirmed `record` (and it was merged): stores the
    /// new MLS state, the transcript, the Welcome and the chat's
    /// description queued for the devices it added, and `doc` (the kept
    /// commits without it) in one write, then sends what it queued. Queued
    /// rather than sent, a Welcome outlives a relay that stops answering.
    async fn merged(&mut self, record: &Unconfirmed, doc: Option<&CommitsDoc>) -> Result<()> {
        let group_id = &record.group_id;
        self.note_commit(group_id, record.epoch, &record.bytes)
            .await?;
        let mut changes = Changes::default();
        if let Some((devices, bytes)) = &record.welcome {
            changes.outbox_add.push(OutboxEntry {
                envelope_id: EnvelopeId::time_ordered(),
                message_id: Uuid::new_v4(),
                group_id: group_id.clone(),
                recipients: devices.clone(),
                payload: bytes.clone(),
            });
            if let Some(entry) = self.chat_info_entry(group_id).await? {
                changes.outbox_add.push(entry);
            }
        }
        if let Some(doc) = doc {
            changes.documents.push((COMMITS, encode(doc)?));
        }
        self.keep_transcript(&mut changes)?;
        self.persist(changes).await?;
        if record.welcome.is_some() {
            self.flush_outbox().await?;
        }
        Ok(())
    }

    /// Sends `record` (again, under its id) and merges or discards the
    /// pending commit by the relay's answer.
    async fn deliver_commit(&mut self, record: &Unconfirmed) -> Result<Fate> {
        let group_id = record.group_id.as_slice();
        let position = (group_id.to_vec(), record.epoch);
        // Refused as stale once already with no commit from this epoch
        // taken in since: the relay's position was taken by something no
        // member made (a forged commit), so the tag, a courtesy, is left
        // off rather than let that block every change to the chat.
        let tag = (!self.stale_seen.contains(&position)).then(|| CommitTag {
            group: Sha256::digest(group_id).to_vec().into(),
            epoch: record.epoch,
        });
        // A failure may come after the relay stored the commit (the answer
        // was lost): the same bytes go again under the same envelope id,
        // which the relay recognises.
        let mut attempt = 0;
        let sent = loop {
            let sent = self
                .send_envelope_as(
                    record.id,
                    record.recipients.clone(),
                    record.bytes.clone(),
                    tag.clone(),
                )
                .await;
            match &sent {
                Err(e) if fate_unknown(e) && attempt < COMMIT_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(COMMIT_RETRY_WAIT * attempt).await;
                }
                _ => break sent,
            }
        };
        let group = self
            .groups
            .get_mut(group_id)
            .ok_or(ClientError::NotAMember)?;
        Ok(match sent {
            Ok(()) => {
                group
                    .merge_pending_commit(&self.provider)
                    .map_err(ClientError::mls)?;
                Fate::Merged
            }
            Err(e) if fate_unknown(&e) => Fate::Kept(e),
            Err(e) => {
                group
                    .clear_pending_commit(self.provider.storage())
                    .map_err(ClientError::mls)?;
                Fate::Refused(match e {
                    ClientError::Server {
                        code: ErrorCode::StaleCommit,
                        ..
                    } => {
                        self.stale_seen.push(position);
                        ClientError::ChatChanged
                    }
                    other => other,
                })
            }
        })
    }

    async fn commits_doc(&self) -> Result<CommitsDoc> {
        match self.store.document(COMMITS).await? {
            Some(bytes) => {
                serde_json::from_slice(&bytes).map_err(|_| ClientError::Corrupt("commits"))
            }
            None => Ok(CommitsDoc::default()),
        }
    }

    /// The chat's description (kind and name) as an outbox entry for its
    /// members, for devices a commit just added; `None` if the chat is not
    /// (or no longer) stored.
    async fn chat_info_entry(&mut self, group_id: &[u8]) -> Result<Option<OutboxEntry>> {
        let Some(chat) = self
            .store
            .chats()
            .await?
            .into_iter()
            .find(|c| c.group_id == group_id)
        else {
            return Ok(None);
        };
        let epoch = self.active_group(&chat)?.epoch().as_u64();
        let info = self
            .app_bytes(
                group_id,
                epoch,
                super::chats::chat_info(chat.kind, &chat.name),
            )
            .await?;
        let (provider, signer) = (&self.provider, &self.identity.signer);
        let group = self
            .groups
            .get_mut(group_id)
            .ok_or(ClientError::NotAMember)?;
        let out = group
            .create_message(provider, signer, &info)
            .map_err(ClientError::mls)?;
        Ok(Some(OutboxEntry {
            envelope_id: EnvelopeId::time_ordered(),
            message_id: Uuid::new_v4(),
            group_id: group_id.to_vec(),
            recipients: self.recipients(self.active_group(&chat)?)?,
            payload: out.tls_serialize_detached().map_err(ClientError::mls)?,
        }))
    }
}

fn encode(doc: &CommitsDoc) -> Result<Vec<u8>> {
    serde_json::to_vec(doc).map_err(|_| ClientError::Corrupt("commits"))
}

/// Runs a change to a chat (an expression using `$client`), and when
/// another member's commit won the race (`ChatChanged`), takes it in with
/// a sync and runs the change again, up to [`CHANGE_RETRIES`] times.
macro_rules! after_races {
    ($client:ident, $op:expr) => {{
        let mut attempt = 0;
        loop {
            match $op {
                Err(ClientError::ChatChanged) if attempt < commits::CHANGE_RETRIES => {
                    attempt += 1;
                    $client.sync().await?;
                }
                other => break other,
            }
        }
    }};
}
pub(super) use after_races;
