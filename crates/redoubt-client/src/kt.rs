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
//! newer epoch is taken only with a consistency proof that the log of
//! epoch roots it signs extends the one signed by the epoch seen before
//! ([`DirectoryPins::link`]), and members compare the epochs they were
//! shown inside their messages the same way, so a relay that forks its
//! directory to show two people two different ones is caught by either of
//! them. akd's own append-only proofs (most of a megabyte per busy epoch)
//! are left to auditors (`kt_audit`), who check every epoch grows out of
//! the last.

use akd_core::{AkdLabel, WhatsAppV1Configuration as Config};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use protobuf::Message as _;
use redoubt_proto::kt::{
    epoch_leaf, DirectoryValue, KtConsistencyResponse, KtProofResponse, SignedEpoch,
};
use redoubt_proto::merkle;
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
    /// carry for other members to compare, and what a newer epoch's log
    /// must extend.
    #[serde(default)]
    pub newest_signed: Option<SignedEpoch>,
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
        let log_root = decode32(&epoch.log_root).ok_or(KtFailure::BadSignature)?;
        key.verify_strict(
            &SignedEpoch::signing_input(epoch.epoch, &root, epoch.published_at, &log_root),
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
            Some((seen, _)) if epoch.epoch > *seen && self.logged() => {
                return Err(KtFailure::NotLinked {
                    from: *seen,
                    to: epoch.epoch,
                    why: "no consistency proof was checked".into(),
                })
            }
            _ => {}
        }
        self.remember(epoch);
        Ok(root)
    }

    /// Whether the newest epoch seen carries a log root (epochs signed
    /// before the log existed do not; the next one is taken on its
    /// signature).
    fn logged(&self) -> bool {
        self.newest_signed
            .as_ref()
            .is_some_and(|e| !e.log_root.is_empty())
    }

    /// Keeps a checked epoch's root, and it as the newest if it is.
    fn remember(&mut self, epoch: &SignedEpoch) {
        if self.newest.as_ref().is_none_or(|(n, _)| epoch.epoch >= *n) {
            self.newest = Some((epoch.epoch, epoch.root.clone()));
            self.newest_signed = Some(epoch.clone());
        }
    }

    /// Checks that `later`'s log of epoch roots extends `earlier`'s, and
    /// that each epoch is the last leaf of its own log, with the relay's
    /// proof for `from = earlier.epoch, to = later.epoch`. Both must be
    /// signed by the pinned key; the relay's `to` must be `later` itself
    /// (another root for it is a split view). An `earlier` from before the
    /// log existed (no log root) is not compared.
    pub fn check_extends(
        &self,
        earlier: Option<&SignedEpoch>,
        later: &SignedEpoch,
        proof: &KtConsistencyResponse,
    ) -> Result<(), KtFailure> {
        let later_root = self.check_signature(later)?;
        let from = earlier.map_or(later.epoch, |e| e.epoch);
        let not_linked = |why: &str| KtFailure::NotLinked {
            from,
            to: later.epoch,
            why: why.into(),
        };
        if proof.to != *later {
            return Err(if proof.to.epoch == later.epoch {
                KtFailure::SplitView(later.epoch)
            } else {
                not_linked("the relay answered for another epoch")
            });
        }
        let hashes = |list: &[String]| -> Result<Vec<merkle::Hash>, KtFailure> {
            list.iter()
                .map(|h| decode32(h).ok_or_else(|| not_linked("a proof hash is malformed")))
                .collect()
        };
        let later_log = decode32(&later.log_root).ok_or_else(|| not_linked("no log root"))?;
        if !merkle::verify_inclusion(
            later.epoch,
            later.epoch + 1,
            &epoch_leaf(later.epoch, &later_root),
            &hashes(&proof.to_inclusion)?,
            &later_log,
        ) {
            return Err(not_linked("the epoch is not the last entry of its own log"));
        }
        let Some(earlier) = earlier.filter(|e| !e.log_root.is_empty()) else {
            return Ok(());
        };
        let earlier_root = self.check_signature(earlier)?;
        let earlier_log = decode32(&earlier.log_root).ok_or_else(|| not_linked("no log root"))?;
        if earlier.epoch > later.epoch {
            return Err(not_linked("the epochs are the wrong way round"));
        }
        if !merkle::verify_inclusion(
            earlier.epoch,
            earlier.epoch + 1,
            &epoch_leaf(earlier.epoch, &earlier_root),
            &hashes(&proof.from_inclusion)?,
            &earlier_log,
        ) {
            return Err(not_linked(
                "the earlier epoch is not the last entry of its own log",
            ));
        }
        if !merkle::verify_consistency(
            earlier.epoch + 1,
            later.epoch + 1,
            &earlier_log,
            &later_log,
            &hashes(&proof.consistency)?,
        ) {
            return Err(not_linked("the later log does not contain the earlier one"));
        }
        Ok(())
    }

    /// Moves to `later`, a newer epoch, once [`DirectoryPins::check_extends`]
    /// from the newest seen holds for it.
    pub fn link(
        &mut self,
        later: &SignedEpoch,
        proof: &KtConsistencyResponse,
    ) -> Result<(), KtFailure> {
        let earlier = self.newest_signed.clone();
        if let Some(e) = &earlier {
            if later.epoch < e.epoch {
                return Err(KtFailure::Rollback {
                    seen: e.epoch,
                    served: later.epoch,
                });
            }
        }
        self.check_extends(earlier.as_ref(), later, proof)?;
        self.remember(later);
        Ok(())
    }

    /// What this device's view of the directory says of an epoch another
    /// member's device was shown, before asking the relay anything.
    pub fn compare_peer(&self, theirs: &SignedEpoch) -> PeerEpoch {
        if self.check_signature(theirs).is_err() {
            return PeerEpoch::Unsigned;
        }
        match &self.newest_signed {
            Some(ours) if ours.epoch == theirs.epoch && ours == theirs => PeerEpoch::Same,
            Some(ours) if ours.epoch == theirs.epoch => PeerEpoch::Differs,
            _ => PeerEpoch::Unknown,
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
    /// Another root (or log) for the epoch this device is at: the relay
    /// signed two directories for one epoch (the two signed epochs prove
    /// it).
    Differs,
    /// Not signed by the directory key this device pinned: the relay gave
    /// the two devices different directories from the start.
    Unsigned,
    /// Another epoch: the relay must prove one log extends the other.
    Unknown,
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

    /// A directory's signed epochs: epoch i has root [i; 32], or
    /// [100 + i; 32] from `fork_at` on (another history).
    struct History {
        key: ed25519_dalek::SigningKey,
        log: merkle::MerkleLog,
        epochs: Vec<SignedEpoch>,
    }

    impl History {
        fn new(key: &ed25519_dalek::SigningKey, n: u64, fork_at: u64) -> Self {
            let mut h = History {
                key: key.clone(),
                log: merkle::MerkleLog::new(),
                epochs: Vec::new(),
            };
            for i in 0..n {
                let root = [if i >= fork_at { 100 + i as u8 } else { i as u8 }; 32];
                h.log.push(epoch_leaf(i, &root));
                let log_root = h.log.root(i + 1).unwrap();
                h.epochs.push(SignedEpoch {
                    epoch: i,
                    root: STANDARD.encode(root),
                    published_at: 1,
                    log_root: STANDARD.encode(log_root),
                    signature: STANDARD.encode(
                        h.key
                            .sign(&SignedEpoch::signing_input(i, &root, 1, &log_root))
                            .to_bytes(),
                    ),
                });
            }
            h
        }

        fn proof(&self, from: u64, to: u64) -> KtConsistencyResponse {
            let encode = |p: Vec<merkle::Hash>| p.iter().map(|h| STANDARD.encode(h)).collect();
            KtConsistencyResponse {
                to: self.epochs[to as usize].clone(),
                consistency: encode(self.log.consistency_proof(from + 1, to + 1).unwrap()),
                from_inclusion: encode(self.log.inclusion_proof(from, from + 1).unwrap()),
                to_inclusion: encode(self.log.inclusion_proof(to, to + 1).unwrap()),
            }
        }
    }

    #[test]
    fn epochs_only_move_forward_along_one_log_and_one_epoch_has_one_root() {
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let honest = History::new(&key, 10, u64::MAX);
        let forked = History::new(&key, 10, 4);
        let mut p = pins(&key);
        let e = |h: &History, i: usize| h.epochs[i].clone();
        assert!(p.link(&e(&honest, 5), &honest.proof(5, 5)).is_ok());
        assert!(p.accept_epoch(&e(&honest, 5)).is_ok());
        assert_eq!(p.accept_epoch(&e(&forked, 5)), Err(KtFailure::SplitView(5)));
        assert_eq!(
            p.accept_epoch(&e(&honest, 4)),
            Err(KtFailure::Rollback { seen: 5, served: 4 })
        );
        // A newer epoch needs the proof that its log extends the one seen.
        assert!(matches!(
            p.accept_epoch(&e(&honest, 6)),
            Err(KtFailure::NotLinked { .. })
        ));
        assert!(matches!(
            p.link(&e(&forked, 7), &forked.proof(5, 7)),
            Err(KtFailure::NotLinked { .. })
        ));
        assert!(p.link(&e(&honest, 7), &honest.proof(5, 7)).is_ok());
        assert!(p.accept_epoch(&e(&honest, 7)).is_ok());
        assert_eq!(p.compare_peer(&e(&honest, 7)), PeerEpoch::Same);
        assert_eq!(p.compare_peer(&e(&forked, 7)), PeerEpoch::Differs);
        assert_eq!(p.compare_peer(&e(&forked, 3)), PeerEpoch::Unknown);
        // An older epoch another member saw: the relay proves it is in
        // this device's history, or cannot.
        let ours = e(&honest, 7);
        assert!(p
            .check_extends(Some(&e(&honest, 2)), &ours, &honest.proof(2, 7))
            .is_ok());
        assert!(p
            .check_extends(Some(&e(&forked, 5)), &ours, &honest.proof(5, 7))
            .is_err());
        let other = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let stranger = History::new(&other, 10, u64::MAX);
        assert_eq!(
            p.accept_epoch(&e(&stranger, 7)),
            Err(KtFailure::BadSignature)
        );
        assert_eq!(p.compare_peer(&e(&stranger, 7)), PeerEpoch::Unsigned);
        let mut forged = e(&honest, 8);
        forged.published_at = 2;
        assert_eq!(p.accept_epoch(&forged), Err(KtFailure::BadSignature));
        assert_eq!(p.newest, Some((7, STANDARD.encode([7u8; 32]))));
    }
}
