//! The order of each sender's messages, on this device: what this device
//! numbers its own messages with, and how a received message takes its
//! place (after a visible gap, into the gap it left, or dropped as a
//! repeat). The rules are `crate::transcript` (no I/O); this is where they
//! meet the history.

use std::collections::BTreeMap;

use redoubt_proto::DeviceId;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{hex, system_message, Client};
use crate::error::{ClientError, Result};
use crate::model::{AppEnvelope, AppMessage, MemberIdentity, MessageRecord};
use crate::store::Changes;
use crate::transcript::{auth_of, message_hash, ChatTranscript, OldCommit, Placement, SenderOrder};

const TRANSCRIPT: &str = "transcript";

/// Every chat's transcript state, by hex group id.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct TranscriptDoc {
    chats: BTreeMap<String, ChatTranscript>,
}

/// What a received application message turned out to be.
pub(super) enum Received {
    /// Apply it; its records go where [`Client::place`] says.
    Apply(Slot),
    /// A repeat: dropped (a notice says so).
    Dropped,
}

/// Where a received message's history record goes.
pub(super) enum Slot {
    /// At the end.
    Append,
    /// Into the placeholder with this id.
    Fill(Uuid),
}

fn placeholder(group_id: &[u8], id: Uuid, text: String) -> MessageRecord {
    MessageRecord {
        message_id: id,
        ..system_message(group_id, text)
    }
}

impl Client {
    async fn transcripts(&mut self) -> Result<&mut TranscriptDoc> {
        if self.transcript.is_none() {
            let doc = match self.store.document(TRANSCRIPT).await? {
                Some(bytes) => serde_json::from_slice(&bytes)
                    .map_err(|_| ClientError::Corrupt("transcript"))?,
                None => TranscriptDoc::default(),
            };
            self.transcript = Some(doc);
        }
        Ok(self.transcript.get_or_insert_with(Default::default))
    }

    /// Adds the transcript state changed during this operation to
    /// `changes` (and forgets it: the next operation reads it afresh, as
    /// another process may write it in between).
    pub(super) fn keep_transcript(&mut self, changes: &mut Changes) -> Result<()> {
        if let Some(doc) = self.transcript.take() {
            let bytes = serde_json::to_vec(&doc).map_err(|_| ClientError::Corrupt("transcript"))?;
            changes.documents.push((TRANSCRIPT, bytes));
        }
        Ok(())
    }

    /// Records that this device joined (or made) a chat in `epoch`: it
    /// expects every member's messages from that epoch on, and no others.
    pub(super) async fn joined_chat(&mut self, group_id: &[u8], epoch: u64) -> Result<()> {
        self.transcripts()
            .await?
            .chats
            .insert(hex(group_id), ChatTranscript::joined_in(epoch));
        self.note_epoch(group_id).await
    }

    /// Notes the authenticator of the epoch the chat is in now, so digests
    /// can carry it and be compared with it.
    pub(super) async fn note_epoch(&mut self, group_id: &[u8]) -> Result<()> {
        let Some((epoch, auth)) = self.groups.get(group_id).map(|g| {
            (
                g.epoch().as_u64(),
                auth_of(g.epoch_authenticator().as_slice()),
            )
        }) else {
            return Ok(());
        };
        self.chat_transcript(group_id)
            .await?
            .note_epoch(epoch, auth);
        Ok(())
    }

    /// Notes the commit (its MLS message's bytes) this device took in or
    /// made from `epoch`, and the authenticator of the epoch it led to.
    pub(super) async fn note_commit(
        &mut self,
        group_id: &[u8],
        epoch: u64,
        commit: &[u8],
    ) -> Result<()> {
        self.chat_transcript(group_id)
            .await?
            .note_commit(epoch, message_hash(commit));
        self.note_epoch(group_id).await
    }

    /// A commit from an epoch this device has left: the same one it took
    /// in (a replay), or a second one the relay accepted from that epoch,
    /// which has split the chat in two. Said once per split.
    pub(super) async fn old_commit(
        &mut self,
        group_id: &[u8],
        epoch: u64,
        commit: &[u8],
        changes: &mut Changes,
    ) -> Result<()> {
        let text = match self
            .chat_transcript(group_id)
            .await?
            .old_commit(epoch, &message_hash(commit))
        {
            OldCommit::Replay => {
                "⚠ The relay delivered a change to this chat again; the repeat was dropped.".into()
            }
            OldCommit::Split { first: false } => return Ok(()),
            OldCommit::Split { first: true } => format!(
                "⚠ THIS CHAT MAY HAVE SPLIT: a second change to it made from the same state \
                 (change {epoch}) arrived after this device took in another. If the relay \
                 accepted both, members who took in the other are now in another history of \
                 this chat: they cannot read what is written here, nor this device what they \
                 write (their messages show as not decrypted). Start a new chat with them to \
                 talk safely. (Anyone once in the chat could also send such a change to raise \
                 this alarm.)"
            ),
        };
        changes.messages.push(system_message(group_id, text));
        Ok(())
    }

    /// The state of one chat; a chat from before transcripts is taken as
    /// joined in its current epoch, so nothing older is judged.
    async fn chat_transcript(&mut self, group_id: &[u8]) -> Result<&mut ChatTranscript> {
        let epoch = self.groups.get(group_id).map_or(0, |g| g.epoch().as_u64());
        Ok(self
            .transcripts()
            .await?
            .chats
            .entry(hex(group_id))
            .or_insert_with(|| ChatTranscript::joined_in(epoch)))
    }

    /// The bytes of an application message for a chat in MLS `epoch`:
    /// `body`, its place in this device's stream, and the newest directory
    /// epoch this device saw. The stream's state is stored at once.
    pub(super) async fn app_bytes(
        &mut self,
        group_id: &[u8],
        epoch: u64,
        body: AppMessage,
    ) -> Result<Vec<u8>> {
        let directory = self.directory_epoch().await?;
        let me = self.identity.device;
        self.note_epoch(group_id).await?;
        let chat = self.chat_transcript(group_id).await?;
        let order = chat.next_order(me, epoch);
        let bytes = serde_json::to_vec(&AppEnvelope {
            body,
            directory,
            order: Some(order.clone()),
        })
        .map_err(ClientError::mls)?;
        chat.sent(epoch, &order, message_hash(&bytes));
        let mut changes = Changes::default();
        self.keep_transcript(&mut changes)?;
        self.record(changes).await?;
        Ok(bytes)
    }

    /// Places a received message in its sender's stream, adding what the
    /// history must show first (placeholders for messages the relay has
    /// not delivered, a repeat dropped, a sender whose stream forks).
    pub(super) async fn place(
        &mut self,
        group_id: &[u8],
        sender: &MemberIdentity,
        epoch: u64,
        order: &SenderOrder,
        payload: &[u8],
        changes: &mut Changes,
    ) -> Result<Received> {
        let device: DeviceId = sender.device;
        let who = sender.phone.to_string();
        let me = self.identity.device;
        let missing = |group_id: &[u8], id: Uuid| {
            placeholder(
                group_id,
                id,
                format!("⚠ A message from {who} is missing: the relay has not delivered it."),
            )
        };
        if self.groups.get(group_id).map(|g| g.epoch().as_u64()) == Some(epoch) {
            self.note_epoch(group_id).await?;
        }
        // What the sender holds and this device does not: a message the
        // relay gave some members and not this one, or the end of an epoch.
        if let Some(digest) = &order.digest {
            if self.chat_transcript(group_id).await?.other_history(digest) {
                changes.messages.push(system_message(
                    group_id,
                    format!(
                        "⚠ {who}'s device is in another history of this chat than this one \
                         (they differ at change {}): the relay gave you different changes.",
                        digest.epoch
                    ),
                ));
            }
            let gaps = self
                .chat_transcript(group_id)
                .await?
                .missing_per(me, digest, Uuid::new_v4);
            for (author, ids) in gaps {
                let author = self
                    .member_identity(group_id, author)
                    .map_or_else(|| "a former member".to_owned(), |id| id.phone.to_string());
                for id in ids {
                    changes.messages.push(if author == who {
                        missing(group_id, id)
                    } else {
                        placeholder(
                            group_id,
                            id,
                            format!(
                                "⚠ A message from {author} is missing: {who}'s device received \
                                 it, this one has not."
                            ),
                        )
                    });
                }
            }
        }
        let chat = self.chat_transcript(group_id).await?;
        let (placement, mismatch) =
            chat.receive(device, epoch, order, message_hash(payload), Uuid::new_v4);
        if mismatch.is_some() {
            changes.messages.push(system_message(
                group_id,
                format!(
                    "⚠ Messages from {who} do not follow on from each other: the sender's \
                     device showed this chat two different histories."
                ),
            ));
        }
        Ok(match placement {
            Placement::Next => Received::Apply(Slot::Append),
            Placement::AfterGap { placeholders } => {
                for id in placeholders {
                    changes.messages.push(missing(group_id, id));
                }
                Received::Apply(Slot::Append)
            }
            Placement::Fills(id) => Received::Apply(Slot::Fill(id)),
            Placement::Repeat => {
                changes.messages.push(system_message(
                    group_id,
                    format!(
                        "⚠ The relay delivered a message from {who} again; the repeat was dropped."
                    ),
                ));
                Received::Dropped
            }
        })
    }

    /// Puts the records a late message produced (those after `from` in
    /// `changes.messages`) into its placeholder's place: in this batch if
    /// the placeholder is still in it, else in the stored history. A late
    /// message with no record of its own leaves a note there instead.
    pub(super) fn fill(
        &self,
        group_id: &[u8],
        sender: &MemberIdentity,
        placeholder_id: Uuid,
        from: usize,
        changes: &mut Changes,
    ) {
        let mut produced: Vec<MessageRecord> = changes.messages.drain(from..).collect();
        let record = match produced.iter().position(|m| m.group_id == group_id) {
            Some(i) => produced.remove(i),
            None => system_message(
                group_id,
                format!("A message from {} arrived late.", sender.phone),
            ),
        };
        changes.messages.extend(produced);
        match changes
            .messages
            .iter_mut()
            .find(|m| m.message_id == placeholder_id)
        {
            Some(slot) => *slot = record,
            None => changes.filled.push((placeholder_id, record)),
        }
    }
}
