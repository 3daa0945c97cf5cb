//! Key transparency, checked on the device (no I/O): the directory's signed
//! epochs and akd proofs against the keys this device pinned, and what the
//! directory says about a number against what the relay served for it.
//!
//! The relay cannot show one person one key and another person another
//! without one of them noticing: a contact's keys must be the directory's
//! (a lookup proof), and a device watches its own number's history in the
//! same directory (a history proof), so a key put behind a number is seen
//! by its owner. Epochs only move forward: an older epoch than one already
//! seen is a rollback, and two roots for one epoch are a split view. A
//! newer epoch is taken only with akd's append-only proof from the one
//! before (within [`LINK_WINDOW`]), and members compare the epochs they
//! were shown inside their messages, so a relay that forks its directory
//! to show two people two different ones is caught by either of them.

use akd_core::{AkdLabel, WhatsAppV1Configuration as Config};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use protobuf::Message as _;
use redoubt_proto::kt::{DirectoryValue, KtAuditResponse, KtProofResponse, SignedEpoch};
use redoubt_proto::PhoneNumber;
use serde::{Deserialize, Serialize};

use crate::identity::TrustedList;

/// What a device pins of the directory: its keys (from the first contact
/// with the relay, as the service key) and the newest epoch it has seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryPins {
    /// The key that signs epochs, standard base64.
    pub directory_key: String,
    /// The directory's VRF public key, standard base64.
    pub vrf_public_key: String,
    /// The newest epoch seen, and its root (standard base64).
    #[serde(default)]
    pub newest: Option<(u64, String)>,
    /// The newest epoch seen, as signed: what this device's messages
    /// carry for other members to compare.
    #[serde(default)]
    pub newest_signed: Option<SignedEpoch>,
    /// Roots of the epochs seen lately (at most [`SEEN_KEPT`]), to compare
    /// with the epochs other members were shown.
    #[serde(default)]
    pub seen: std::collections::BTreeMap<u64, String>,
}

/// How many recent epochs' roots a device keeps.
pub const SEEN_KEPT: usize = 1024;

/// The most epochs a device links with one append-only proof. Further
/// jumps (a device offline for long on a busy directory) are taken on the
/// directory key's signature, as the proof would be large; the public
/// auditors check those stretches (docs/key-transparency.md).
pub const LINK_WINDOW: u64 = 1000;

/// Why the directory's answer is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KtFailure {
    /// The epoch is not signed by the pinned directory key.
    #[error("the directory epoch is not signed by the directory key this device pinned")]
    BadSignature,
    /// An older epoch than one already seen.
    #[error("the relay showed directory epoch {served}, older than epoch {seen} this device already saw (a rollback)")]
    Rollback {
        /// The newest epoch seen.
        seen: u64,
        /// The epoch served.
        served: u64,
    },
    /// Two roots for one epoch.
    #[error("the relay showed two different directories for epoch {0} (a split view)")]
    SplitView(u64),
    /// An epoch the append-only proof does not link to the ones seen.
    #[error("the directory's epochs {from} to {to} do not extend the ones this device saw: {why}")]
    NotLinked {
        /// The first epoch of the proof.
        from: u64,
        /// The last.
        to: u64,
        /// What failed.
        why: String,
    },
    /// The proof does not verify.
    #[error("the directory's proof does not verify: {0}")]
    BadProof(String),
    /// The directory's value for the number is not a directory value.
    #[error("the directory holds a malformed entry")]
    BadValue,
}

fn decode32(text: &str) -> Option<[u8; 32]> {
    STANDARD.decode(text).ok()?.try_into().ok()
}

/// The label a number has in the directory.
pub fn label(phone: &PhoneNumber) -> AkdLabel {
    AkdLabel(phone.e164().as_bytes().to_vec())
}

impl DirectoryPins {
    /// Pins a directory's keys, with no epoch seen yet.
    pub fn new(directory_key: String, vrf_public_key: String) -> Self {
        Self {
            directory_key,
            vrf_public_key,
            newest: None,
            newest_signed: None,
            seen: Default::default(),
        }
    }

    /// Checks that `epoch` is signed by the pinned directory key, and
    /// returns its root.
    pub fn check_signature(&self, epoch: &SignedEpoch) -> Result<[u8; 32], KtFailure> {
        let root = decode32(&epoch.root).ok_or(KtFailure::BadSignature)?;
        let key = decode32(&self.directory_key)
            .and_then(|k| ed25519_dalek::VerifyingKey::from_bytes(&k).ok())
            .ok_or(KtFailure::BadSignature)?;
        let signature: [u8; 64] = STANDARD
            .decode(&epoch.signature)
            .ok()
            .and_then(|s| s.try_into().ok())
            .ok_or(KtFailure::BadSignature)?;
        key.verify_strict(
            &SignedEpoch::signing_input(epoch.epoch, &root, epoch.published_at),
            &ed25519_dalek::Signature::from_bytes(&signature),
        )
        .map_err(|_| KtFailure::BadSignature)?;
        Ok(root)
    }

    /// Checks a served epoch: signed by the pinned key, not older than one
    /// seen, not another root for a seen epoch. A newer one is remembered.
    /// Returns its root.
    pub fn accept_epoch(&mut self, epoch: &SignedEpoch) -> Result<[u8; 32], KtFailure> {
        let root = self.check_signature(epoch)?;
        match &self.newest {
            Some((seen, _)) if epoch.epoch < *seen => {
                return Err(KtFailure::Rollback {
                    seen: *seen,
                    served: epoch.epoch,
                })
            }
            Some((seen, seen_root)) if epoch.epoch == *seen && *seen_root != epoch.root => {
                return Err(KtFailure::SplitView(epoch.epoch))
            }
            _ => {}
        }
        self.remember(epoch);
        Ok(root)
    }

    /// Keeps a checked epoch's root, and it as the newest if it is.
    fn remember(&mut self, epoch: &SignedEpoch) {
        self.seen.insert(epoch.epoch, epoch.root.clone());
        while self.seen.len() > SEEN_KEPT {
            self.seen.pop_first();
        }
        if self.newest.as_ref().is_none_or(|(n, _)| epoch.epoch >= *n) {
            self.newest = Some((epoch.epoch, epoch.root.clone()));
            self.newest_signed = Some(epoch.clone());
        }
    }

    /// The epochs an append-only proof from `from` to `to` must link:
    /// each signed by the pinned key, consecutive, and agreeing with every
    /// root this device already saw. Returns the roots, in order, for
    /// [`verify_append_only`]; once that holds, [`DirectoryPins::linked`]
    /// keeps them.
    pub fn link_roots(
        &self,
        from: u64,
        to: u64,
        answer: &KtAuditResponse,
    ) -> Result<Vec<[u8; 32]>, KtFailure> {
        let not_linked = |why: &str| KtFailure::NotLinked {
            from,
            to,
            why: why.into(),
        };
        if !answer.epochs.iter().map(|e| e.epoch).eq(from..=to) {
            return Err(not_linked("the relay did not serve every epoch in order"));
        }
        answer
            .epochs
            .iter()
            .map(|e| {
                let root = self.check_signature(e)?;
                match self.seen.get(&e.epoch) {
                    Some(seen) if *seen != e.root => Err(KtFailure::SplitView(e.epoch)),
                    _ => Ok(root),
                }
            })
            .collect()
    }

    /// Keeps the epochs of an append-only proof that verified.
    pub fn linked(&mut self, answer: &KtAuditResponse) {
        for e in &answer.epochs {
            self.remember(e);
        }
    }

    /// What this device's view of the directory says of an epoch another
    /// member's device was shown.
    pub fn compare_peer(&self, theirs: &SignedEpoch) -> PeerEpoch {
        if self.check_signature(theirs).is_err() {
            return PeerEpoch::Unsigned;
        }
        match self.seen.get(&theirs.epoch) {
            Some(root) if *root == theirs.root => PeerEpoch::Same,
            Some(_) => PeerEpoch::Differs,
            None => PeerEpoch::Unknown,
        }
    }

    fn vrf(&self) -> Result<Vec<u8>, KtFailure> {
        STANDARD
            .decode(&self.vrf_public_key)
            .map_err(|_| KtFailure::BadProof("the pinned VRF key is not base64".into()))
    }

    /// Verifies a lookup proof for `phone` and returns the number's value.
    pub fn verify_lookup(
        &mut self,
        phone: &PhoneNumber,
        answer: &KtProofResponse,
    ) -> Result<DirectoryValue, KtFailure> {
        let root = self.accept_epoch(&answer.epoch)?;
        let bytes = STANDARD
            .decode(&answer.proof)
            .map_err(|e| KtFailure::BadProof(e.to_string()))?;
        let proof = akd_core::proto::specs::types::LookupProof::parse_from_bytes(&bytes)
            .map_err(|e| KtFailure::BadProof(e.to_string()))?;
        let proof = akd_core::LookupProof::try_from(&proof)
            .map_err(|e| KtFailure::BadProof(format!("{e:?}")))?;
        let found = akd_core::verify::lookup_verify::<Config>(
            &self.vrf()?,
            root,
            answer.epoch.epoch,
            label(phone),
            proof,
        )
        .map_err(|e| KtFailure::BadProof(e.to_string()))?;
        DirectoryValue::from_bytes(&found.value.0).ok_or(KtFailure::BadValue)
    }

    /// Verifies a complete key-history proof for `phone` and returns every
    /// value it held, newest first, with the epoch it was published in.
    pub fn verify_history(
        &mut self,
        phone: &PhoneNumber,
        answer: &KtProofResponse,
    ) -> Result<Vec<(u64, DirectoryValue)>, KtFailure> {
        let root = self.accept_epoch(&answer.epoch)?;
        let bytes = STANDARD
            .decode(&answer.proof)
            .map_err(|e| KtFailure::BadProof(e.to_string()))?;
        let proof = akd_core::proto::specs::types::HistoryProof::parse_from_bytes(&bytes)
            .map_err(|e| KtFailure::BadProof(e.to_string()))?;
        let proof = akd_core::HistoryProof::try_from(&proof)
            .map_err(|e| KtFailure::BadProof(format!("{e:?}")))?;
        let versions = akd_core::verify::key_history_verify::<Config>(
            &self.vrf()?,
            root,
            answer.epoch.epoch,
            label(phone),
            proof,
            akd_core::verify::HistoryVerificationParams::Default {
                history_params: akd_core::verify::history::HistoryParams::Complete,
            },
        )
        .map_err(|e| KtFailure::BadProof(e.to_string()))?;
        versions
            .into_iter()
            .map(|v| {
                DirectoryValue::from_bytes(&v.value.0)
                    .map(|d| (v.epoch, d))
                    .ok_or(KtFailure::BadValue)
            })
            .collect()
    }
}

/// An epoch another member's device was shown, against this device's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerEpoch {
    /// The same root for that epoch.
    Same,
    /// Another root for an epoch this device saw: the relay signed two
    /// directories for one epoch (the two signed epochs prove it).
    Differs,
    /// Not signed by the directory key this device pinned: the relay gave
    /// the two devices different directories from the start.
    Unsigned,
    /// An epoch this device has not seen (or no longer keeps): it must be
    /// linked to this device's view first.
    Unknown,
}

/// Verifies akd's append-only proof (protobuf, base64) over `roots`, the
/// consecutive epochs' roots [`DirectoryPins::link_roots`] returned.
pub async fn verify_append_only(roots: Vec<[u8; 32]>, proof: &str) -> Result<(), String> {
    let bytes = STANDARD.decode(proof).map_err(|e| e.to_string())?;
    let proof = akd::proto::specs::types::AppendOnlyProof::parse_from_bytes(&bytes)
        .map_err(|e| e.to_string())?;
    let proof = akd::AppendOnlyProof::try_from(&proof).map_err(|e| format!("{e:?}"))?;
    akd::auditor::audit_verify::<akd::WhatsAppV1Configuration>(roots, proof)
        .await
        .map_err(|e| e.to_string())
}

/// How the directory's value for a number compares with the list the
/// relay served for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Agreement {
    /// The same account, identity key and list.
    Same,
    /// The same account and identity key; the directory has not published
    /// the newest list yet (it is at most an epoch behind).
    Behind,
    /// Something else: the relay's answer is not the directory's.
    Differs(String),
}

/// Compares the directory's value with a list the relay served.
pub fn compare(value: &DirectoryValue, list: &TrustedList) -> Agreement {
    if value.account != list.account {
        return Agreement::Differs("the directory lists the number at another account".into());
    }
    if value.identity_key != list.identity_key {
        return Agreement::Differs(
            "the directory lists another identity key for the number".into(),
        );
    }
    match value.list_version.cmp(&list.version) {
        std::cmp::Ordering::Less => Agreement::Behind,
        std::cmp::Ordering::Equal if value.list_sha256 == list.hash => Agreement::Same,
        std::cmp::Ordering::Equal => {
            Agreement::Differs("the directory lists another device list of the same version".into())
        }
        std::cmp::Ordering::Greater => Agreement::Differs(format!(
            "the directory lists a newer device list (version {}) than the relay served (version {})",
            value.list_version, list.version
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Signer as _;

    fn pins(key: &ed25519_dalek::SigningKey) -> DirectoryPins {
        DirectoryPins::new(
            STANDARD.encode(key.verifying_key().as_bytes()),
            String::new(),
        )
    }

    fn epoch(key: &ed25519_dalek::SigningKey, n: u64, root: [u8; 32]) -> SignedEpoch {
        SignedEpoch {
            epoch: n,
            root: STANDARD.encode(root),
            published_at: 1,
            signature: STANDARD.encode(
                key.sign(&SignedEpoch::signing_input(n, &root, 1))
                    .to_bytes(),
            ),
        }
    }

    #[test]
    fn epochs_only_move_forward_and_one_epoch_has_one_root() {
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let mut p = pins(&key);
        assert!(p.accept_epoch(&epoch(&key, 5, [1; 32])).is_ok());
        assert!(p.accept_epoch(&epoch(&key, 5, [1; 32])).is_ok());
        assert_eq!(
            p.accept_epoch(&epoch(&key, 5, [2; 32])),
            Err(KtFailure::SplitView(5))
        );
        assert_eq!(
            p.accept_epoch(&epoch(&key, 4, [1; 32])),
            Err(KtFailure::Rollback { seen: 5, served: 4 })
        );
        assert!(p.accept_epoch(&epoch(&key, 6, [3; 32])).is_ok());
        let other = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        assert_eq!(
            p.accept_epoch(&epoch(&other, 7, [4; 32])),
            Err(KtFailure::BadSignature)
        );
        let mut forged = epoch(&key, 8, [5; 32]);
        forged.published_at = 2;
        assert_eq!(p.accept_epoch(&forged), Err(KtFailure::BadSignature));
        assert_eq!(p.newest, Some((6, STANDARD.encode([3u8; 32]))));
    }
}
