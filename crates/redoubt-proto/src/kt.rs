//! Key transparency on the wire: what the relay's directory maps a phone
//! number to, its signed epochs, and the proofs it serves. The directory is
//! akd (WhatsApp's auditable key directory); its proofs travel as akd's own
//! protobuf encoding, base64, and are verified by the client, never
//! trusted.

use serde::{Deserialize, Serialize};

use crate::AccountId;

/// What the directory maps a phone number to: the account holding it, its
/// identity key, and the newest device list that key signed. Encoded as
/// canonical JSON (keys sorted, no whitespace) for the directory's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryValue {
    /// The account.
    pub account: AccountId,
    /// Its identity key, standard base64.
    pub identity_key: String,
    /// SHA-256 (hex) of the newest signed device list's body.
    pub list_sha256: String,
    /// That list's version.
    pub list_version: u64,
}

impl DirectoryValue {
    /// The directory's value bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Struct fields in declaration order are already sorted by name,
        // and serde_json writes no whitespace: this is the canonical form.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a directory value.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

/// The context a directory epoch's signature covers.
pub const EPOCH_CONTEXT: &[u8] = b"redoubt/kt-epoch/v2\0";

/// One published epoch of the directory: its number and root hash, and
/// the root of the log of every epoch's root up to it, signed with the
/// directory key clients pin. The log (RFC 9162, one leaf per epoch, see
/// [`epoch_leaf`]) is what lets a device check cheaply that a newer epoch
/// continues the history it saw, and two devices that they saw one
/// history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SignedEpoch {
    /// The epoch, from 0 (the empty directory).
    pub epoch: u64,
    /// The root hash, standard base64 of 32 bytes.
    pub root: String,
    /// When it was published, seconds since the Unix epoch.
    pub published_at: i64,
    /// The Merkle root of the log of epochs 0 to this one, standard base64
    /// of 32 bytes.
    pub log_root: String,
    /// Ed25519 by the directory key over [`SignedEpoch::signing_input`],
    /// standard base64.
    pub signature: String,
}

impl SignedEpoch {
    /// What the signature covers: the context, the epoch (8 bytes, big
    /// endian), the root's 32 bytes, the publication time (8 bytes, big
    /// endian) and the log root's 32 bytes.
    pub fn signing_input(
        epoch: u64,
        root: &[u8; 32],
        published_at: i64,
        log_root: &[u8; 32],
    ) -> Vec<u8> {
        let mut input = EPOCH_CONTEXT.to_vec();
        input.extend_from_slice(&epoch.to_be_bytes());
        input.extend_from_slice(root);
        input.extend_from_slice(&published_at.to_be_bytes());
        input.extend_from_slice(log_root);
        input
    }
}

/// The leaf hash an epoch has in the log of epoch roots: the epoch (8
/// bytes, big endian) and its root.
pub fn epoch_leaf(epoch: u64, root: &[u8; 32]) -> crate::merkle::Hash {
    let mut data = epoch.to_be_bytes().to_vec();
    data.extend_from_slice(root);
    crate::merkle::leaf_hash(&data)
}

/// `GET /v1/kt/consistency?from=A&to=B`: that the log of epochs up to B
/// extends the log up to A, and where A's and B's roots sit in them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct KtConsistencyResponse {
    /// Epoch B, as signed.
    pub to: SignedEpoch,
    /// RFC 9162 consistency proof from the log of A+1 leaves to the log of
    /// B+1 leaves, standard base64 hashes.
    pub consistency: Vec<String>,
    /// Inclusion proof of epoch A's leaf in the log of A+1 leaves.
    pub from_inclusion: Vec<String>,
    /// Inclusion proof of epoch B's leaf in the log of B+1 leaves.
    pub to_inclusion: Vec<String>,
}

/// `GET /v1/kt/keys`: the directory's public keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KtKeysResponse {
    /// The key that signs epochs, standard base64 (clients pin it).
    pub directory_key: String,
    /// The directory's VRF public key, standard base64 (it hides which
    /// numbers the directory holds from those who verify proofs).
    pub vrf_public_key: String,
}

/// A proof about one number against a signed epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KtProofResponse {
    /// The epoch the proof is against.
    pub epoch: SignedEpoch,
    /// akd's proof (lookup or history), protobuf, standard base64.
    pub proof: String,
}

/// `GET /v1/kt/audit?from=A&to=B`: the append-only proof from epoch A to
/// B, with every signed epoch from A to B.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KtAuditResponse {
    /// Epochs A to B, in order.
    pub epochs: Vec<SignedEpoch>,
    /// akd's append-only proof, protobuf, standard base64.
    pub proof: String,
}
