//! Key transparency, checked on the device (no I/O): the directory's signed
//! epochs and akd proofs against the keys this device pinned, and what the
//! directory says about a number against what the relay served for it.
//!
//! The relay cannot show one person one key and another person another
//! without one of them noticing: a contact's keys must be the directory's
//! (a lookup proof), and a device watches its own number's history in the
//! same directory (a history proof), so a key put behind a number is seen
//! by its owner. Epochs only move forward: an older epoch than one already
//! seen is a rollback, and two roots for one epoch are a split view.

use akd_core::{AkdLabel, WhatsAppV1Configuration as Config};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use protobuf::Message as _;
use redoubt_proto::kt::{DirectoryValue, KtProofResponse, SignedEpoch};
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
}

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
    /// Checks a served epoch: signed by the pinned key, not older than one
    /// seen, not another root for a seen epoch. A newer one is remembered.
    /// Returns its root.
    pub fn accept_epoch(&mut self, epoch: &SignedEpoch) -> Result<[u8; 32], KtFailure> {
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
        self.newest = Some((epoch.epoch, epoch.root.clone()));
        Ok(root)
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
        DirectoryPins {
            directory_key: STANDARD.encode(key.verifying_key().as_bytes()),
            vrf_public_key: String::new(),
            newest: None,
        }
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
