//! Request and response bodies of the HTTP API, route by route.

use serde::{Deserialize, Serialize};

use crate::auth::{AuthToken, VerificationSession};
use crate::bytes::OpaqueBytes;
use crate::ids::{AccountId, DeviceId, EnvelopeId, KeyPackageRef};
use crate::phone::PhoneNumber;
use crate::time::Timestamp;

/// `POST /v1/registration/code`: ask for a verification code by SMS (or
/// whatever code sender the operator configured).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RequestCodeRequest {
    /// The number to verify, in E.164 form.
    pub phone: PhoneNumber,
}

/// The answer to a code request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RequestCodeResponse {
    /// How long the code stays valid, in seconds.
    pub expires_in_seconds: u64,
    /// This request's session: the code verifies only with it, and wrong
    /// guesses count against it alone.
    pub session: VerificationSession,
}

/// `POST /v1/registration/verify`: prove the number with the code and
/// register this device.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct VerifyCodeRequest {
    /// The session of the code request ([`RequestCodeResponse::session`]).
    pub session: VerificationSession,
    /// The number the code was sent to.
    pub phone: PhoneNumber,
    /// The code, as digits.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[0-9]{6}$"))]
    pub code: String,
    /// A name for the device that its owner will recognise in the device
    /// list: 1 to 64 printable characters, none invisible or changing the
    /// text's direction.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub device_name: String,
    /// The device's Ed25519 public signature key (32 bytes), the same key its
    /// MLS credential uses.
    pub signature_key: OpaqueBytes,
    /// An Ed25519 signature, by that key, over
    /// [`VerifyCodeRequest::registration_challenge`]: it proves the device holds
    /// the private half and binds the key to this verification.
    pub proof: OpaqueBytes,
}

impl VerifyCodeRequest {
    /// The bytes a device signs to prove possession of its signature key:
    /// a context string, the phone number and the code, each length-prefixed.
    pub fn registration_challenge(phone: &PhoneNumber, code: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        for part in [
            crate::REGISTRATION_CONTEXT,
            phone.e164().as_bytes(),
            code.as_bytes(),
        ] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }
}

/// A registered device's credentials.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VerifyCodeResponse {
    /// The account the number belongs to (created if it is new).
    pub account_id: AccountId,
    /// This device.
    pub device_id: DeviceId,
    /// The bearer token for every later call. Shown once; the server keeps only a hash.
    pub token: AuthToken,
    /// Whether the account was created by this verification.
    pub new_account: bool,
}

/// One of the caller's devices, as `GET /v1/devices` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OwnDevice {
    /// The device.
    pub device_id: DeviceId,
    /// The name given at registration.
    pub name: String,
    /// When it registered.
    pub created_at: Timestamp,
    /// Its public signature key.
    pub signature_key: OpaqueBytes,
    /// Whether this is the device making the request.
    pub current: bool,
}

/// `GET /v1/devices`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OwnDevicesResponse {
    /// The caller's active devices.
    pub devices: Vec<OwnDevice>,
}

/// Another account's device, as contact lookups show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PeerDevice {
    /// The device.
    pub device_id: DeviceId,
    /// Its public signature key, for safety numbers.
    pub signature_key: OpaqueBytes,
}

/// `POST /v1/accounts/lookup`: find the account behind a phone number.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LookupRequest {
    /// The number to look up. It travels in the body, never in a URL that a
    /// proxy might log.
    pub phone: PhoneNumber,
}

/// An account and its active devices.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AccountDevicesResponse {
    /// The account.
    pub account_id: AccountId,
    /// Its active devices.
    pub devices: Vec<PeerDevice>,
}

/// One KeyPackage a device uploads.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct KeyPackageUpload {
    /// The reference the client computed for it.
    pub id: KeyPackageRef,
    /// The serialized MLS KeyPackage.
    pub data: OpaqueBytes,
    /// A last-resort package is handed out again when no other is left.
    /// A device keeps at most one; uploading another replaces it.
    #[serde(default)]
    pub last_resort: bool,
}

/// `POST /v1/keypackages`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UploadKeyPackagesRequest {
    /// The batch.
    pub key_packages: Vec<KeyPackageUpload>,
}

/// How many key packages the device has left on the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyPackageCountResponse {
    /// One-time key packages left (not counting the last-resort one).
    pub remaining: u64,
    /// Whether a last-resort key package is stored.
    pub last_resort: bool,
    /// The server suggests uploading more when `remaining` falls below this.
    pub low_watermark: u64,
}

/// `POST /v1/keypackages/claim`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ClaimKeyPackagesRequest {
    /// The devices to claim one key package each for.
    pub devices: Vec<DeviceId>,
}

/// One claimed key package.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClaimedKeyPackage {
    /// The device it belongs to.
    pub device_id: DeviceId,
    /// Its reference.
    pub id: KeyPackageRef,
    /// The serialized MLS KeyPackage.
    pub data: OpaqueBytes,
    /// Whether this was the device's last-resort package (which stays stored).
    pub last_resort: bool,
}

/// The claimed key packages, one per requested device.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClaimKeyPackagesResponse {
    /// In the order the devices were requested.
    pub key_packages: Vec<ClaimedKeyPackage>,
}

/// What an envelope carries, so a client knows how to read it before it
/// decrypts anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum EnvelopeKind {
    /// An MLS message (application message, commit, proposal or welcome), opaque to the server.
    #[default]
    Mls,
    /// A notice from the service itself (JSON, not encrypted): disclosure or market notices.
    ServerNotice,
}

/// `POST /v1/messages`: queue one envelope for several devices.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// Chosen by the sender; a retry with the same id and bytes is accepted once.
    /// A UUID of version 4 or 7: version 8 is kept for the relay's own
    /// notices and refused (422 `invalid_request`).
    pub id: EnvelopeId,
    /// Every device that should receive it.
    pub recipients: Vec<DeviceId>,
    /// The MLS message.
    pub payload: OpaqueBytes,
    /// Set when the payload is an MLS commit: which group it changes and
    /// from which epoch. The relay accepts one commit per group and epoch,
    /// so two members changing a group at once do not split it; the later
    /// one is refused (`stale_commit`) and made again on the new state.
    /// An honest relay's courtesy, not a guarantee: clients still detect a
    /// relay that accepts both (`docs/threat-model.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<CommitTag>,
}

/// Which group a commit changes, and from which epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CommitTag {
    /// SHA-256 of the MLS group id ([`COMMIT_GROUP_LEN`] bytes). The group
    /// id is in every MLS message's clear header anyway; the hash keeps
    /// the relay's table to fixed-size keys.
    pub group: OpaqueBytes,
    /// The epoch the commit was made in; accepting it moves the group to
    /// the next.
    pub epoch: u64,
}

/// Length of [`CommitTag::group`].
pub const COMMIT_GROUP_LEN: usize = 32;

/// The answer to a send.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SendResponse {
    /// The envelope id.
    pub id: EnvelopeId,
    /// True when this exact envelope had already been accepted (a retry).
    pub duplicate: bool,
    /// Recipients it was not queued for, because their mailbox is full or
    /// holds as much from this sender as the relay takes for now; every
    /// other recipient got it. Absent when it went to everyone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub full: Vec<DeviceId>,
}

/// An envelope waiting in a device's mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Envelope {
    /// The id the sender chose; clients drop an id they have already processed.
    pub id: EnvelopeId,
    /// What the payload is.
    pub kind: EnvelopeKind,
    /// When the server accepted it.
    pub received_at: Timestamp,
    /// The bytes. The server records no sender: MLS authenticates the sender
    /// inside the ciphertext.
    pub payload: OpaqueBytes,
}

/// `GET /v1/messages`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FetchResponse {
    /// The oldest unacknowledged envelopes, oldest first.
    pub envelopes: Vec<Envelope>,
    /// Whether more are waiting beyond this page.
    pub more: bool,
}

/// `POST /v1/messages/ack`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// Envelopes the device has processed and stored; the server deletes them.
    pub ids: Vec<EnvelopeId>,
}

/// The answer to an ack.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AckResponse {
    /// How many of the ids were in the mailbox (acking twice is harmless).
    pub removed: u64,
}

/// `GET /healthz`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthResponse {
    /// `ok` when the server and its storage answer.
    pub status: String,
}

/// `GET /v1/service-key`: the operator's public service key, which signs
/// notices to users (and disclosure packages and transparency reports).
/// Clients pin it at registration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceKeyResponse {
    /// The Ed25519 public key, standard base64.
    pub public_key: String,
}

/// `PUT /v1/device-list`: publishes the caller's account's next signed
/// device list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PublishDeviceListRequest {
    /// The signed [`crate::identity::DeviceList`].
    pub list: crate::identity::SignedDocument,
}

/// `PUT /v1/device-list` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PublishDeviceListResponse {
    /// The version now stored.
    pub version: u64,
}

/// `GET /v1/accounts/{account_id}/device-lists?since=N`: the account's
/// signed device lists after version `since`, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceListsResponse {
    /// The lists, oldest first (at most 100; ask again from the last).
    pub lists: Vec<crate::identity::SignedDocument>,
}

/// `POST /v1/links`: a new link rendezvous.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LinkCreatedResponse {
    /// The rendezvous id (8 characters of Crockford base32), part of the
    /// code the new device shows.
    pub link_id: String,
    /// When it expires, ms since the epoch.
    pub expires_at: Timestamp,
}

/// One message of a link's key exchange, opaque to the relay.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LinkMessage {
    /// The bytes.
    pub data: OpaqueBytes,
}

/// `POST /v1/links/{link_id}/approve`: an existing device of the account
/// approves the new device's signature key, after the key exchange showed
/// it is the device the user is holding.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApproveLinkRequest {
    /// The new device's Ed25519 signature key.
    pub signature_key: OpaqueBytes,
    /// The new device's name.
    pub device_name: String,
    /// The new device's signature over [`crate::identity::LINK_PROOF_CONTEXT`],
    /// the link id and its key: proof it holds the private half.
    pub proof: OpaqueBytes,
}

impl ApproveLinkRequest {
    /// What the new device signs as its proof.
    pub fn proof_input(link_id: &str, signature_key: &[u8]) -> Vec<u8> {
        let mut input = crate::identity::LINK_PROOF_CONTEXT.to_vec();
        input.extend_from_slice(link_id.as_bytes());
        input.push(0);
        input.extend_from_slice(signature_key);
        input
    }
}

/// `POST /v1/links/{link_id}/approve` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApproveLinkResponse {
    /// The new device's id.
    pub device_id: DeviceId,
}

/// `POST /v1/links/{link_id}/claim`: the new device collects its token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClaimLinkRequest {
    /// Its signature over [`crate::identity::LINK_CLAIM_CONTEXT`] and the
    /// link id, by the key that was approved.
    pub signature: OpaqueBytes,
}

impl ClaimLinkRequest {
    /// What the new device signs to claim.
    pub fn claim_input(link_id: &str) -> Vec<u8> {
        let mut input = crate::identity::LINK_CLAIM_CONTEXT.to_vec();
        input.extend_from_slice(link_id.as_bytes());
        input
    }
}

/// One account in a `POST /v1/device-lists/query`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceListQuery {
    /// The account.
    pub account_id: AccountId,
    /// Only versions after this one.
    pub since: u64,
}

/// `POST /v1/device-lists/query`: the newer signed device lists of many
/// accounts at once (a group's members), in one round trip.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceListsQueryRequest {
    /// The accounts, at most 1000.
    pub accounts: Vec<DeviceListQuery>,
}

/// The answer: per account asked about, its lists after `since`, oldest
/// first (at most 100 each); accounts with nothing newer are left out.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceListsQueryResponse {
    /// The lists, by account.
    pub lists: std::collections::BTreeMap<AccountId, Vec<crate::identity::SignedDocument>>,
}
