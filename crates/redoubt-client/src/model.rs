//! What the client stores and shows: chats, messages, contacts, and the
//! application payloads that travel inside MLS messages.

use redoubt_proto::kt::SignedEpoch;
use redoubt_proto::{AccountId, DeviceId, EnvelopeId, PhoneNumber};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One chat kind or the other; both are MLS groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatKind {
    /// Two accounts (each with all of its devices).
    Direct,
    /// A named group.
    Group,
}

/// Whether this device still takes part in the chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatState {
    /// A member.
    Active,
    /// Left on its own.
    Left,
    /// Removed by another member.
    Removed,
}

/// A chat as stored locally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatRecord {
    /// The MLS group id.
    pub group_id: Vec<u8>,
    /// Direct or group.
    pub kind: ChatKind,
    /// The group's name, or for a direct chat the peer's number.
    pub name: String,
    /// For a direct chat, the peer's account.
    pub peer: Option<AccountId>,
    /// Whether this device is still a member.
    pub state: ChatState,
    /// When the chat was created or joined (ms since epoch).
    pub created_at: i64,
}

/// Who wrote a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Author {
    /// A member's device.
    Member {
        /// The account.
        account: AccountId,
        /// The device.
        device: DeviceId,
        /// The account's number, from its MLS credential.
        phone: String,
        /// Whether it is this profile's own account.
        me: bool,
    },
    /// This client, about the chat itself (joins, removals, key changes, errors).
    System,
}

/// A message as stored locally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// The sender's message id (or a local id for system notices).
    pub message_id: Uuid,
    /// The chat.
    pub group_id: Vec<u8>,
    /// Who wrote it.
    pub author: Author,
    /// The text.
    pub text: String,
    /// When the author sent it, by the author's clock (ms since epoch).
    pub sent_at: i64,
    /// When this device stored it.
    pub received_at: i64,
    /// For a message this device sent: whether the relay has it yet.
    #[serde(default, skip_serializing_if = "Delivery::is_sent")]
    pub delivery: Delivery,
}

/// Where a message this device wrote stands. Received messages and system
/// notices are always `Sent`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// The relay accepted it (or it was never ours to send).
    #[default]
    Sent,
    /// Encrypted and kept in the outbox until the relay is reachable.
    Queued,
    /// The relay refused it for good; a notice in the chat says why.
    Failed,
}

impl Delivery {
    /// Whether the relay has it.
    pub fn is_sent(&self) -> bool {
        *self == Self::Sent
    }
}

/// An encrypted message waiting in the outbox. It is retried under the same
/// envelope id with the same bytes, so the relay stores it once however
/// often the attempt is repeated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// The envelope id picked when it was encrypted.
    pub envelope_id: EnvelopeId,
    /// The history record it belongs to.
    pub message_id: Uuid,
    /// The chat.
    pub group_id: Vec<u8>,
    /// The devices it goes to.
    pub recipients: Vec<DeviceId>,
    /// The MLS ciphertext.
    pub payload: Vec<u8>,
}

/// A contact's device key, remembered to detect key changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactDevice {
    /// The account.
    pub account_id: AccountId,
    /// The device.
    pub device_id: DeviceId,
    /// The device's Ed25519 public key.
    pub signature_key: Vec<u8>,
    /// The account's number.
    pub phone: String,
}

/// The payload of an MLS application message: what members say to each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AppMessage {
    /// A text message.
    Text {
        /// Unique per message; receivers drop repeats.
        id: Uuid,
        /// The text.
        text: String,
        /// The sender's clock (ms since epoch).
        sent_at: i64,
    },
    /// What the chat is, sent after every add so new members know.
    ChatInfo {
        /// Direct or group.
        kind: ChatKind,
        /// The group's name (empty for direct chats).
        name: String,
    },
    /// The sender's device found that the relay showed it another key
    /// directory than a member's device: both epochs, signed, so every
    /// member can check (two signatures on one epoch are proof).
    DirectoryConflict {
        /// The member whose message carried `theirs` (its number).
        member: String,
        /// The epoch that member's device was shown.
        theirs: SignedEpoch,
        /// The newest epoch the sender's device was shown, or its root for
        /// the same epoch.
        ours: SignedEpoch,
    },
}

/// What an MLS application message carries: the payload, and beside it
/// (inside the encryption, so the relay cannot strip or change them without
/// breaking the message) its place in the sender's stream, and the newest
/// key-directory epoch the sender's device has seen, which receivers
/// compare with their own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppEnvelope {
    /// The payload.
    #[serde(flatten)]
    pub body: AppMessage,
    /// The newest directory epoch the sender's device saw, as signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<SignedEpoch>,
    /// Its place in the sender's stream of messages in this chat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<crate::transcript::SenderOrder>,
}

/// The identity an MLS credential carries: who this leaf is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberIdentity {
    /// The account.
    pub account: AccountId,
    /// The device.
    pub device: DeviceId,
    /// The account's number.
    pub phone: PhoneNumber,
}
