//! Operators are keys, not names. Each operator holds an Ed25519 key pair
//! on their own machine; every action they take at the desk (intake,
//! approval, a proposed or confirmed trust change, a market decision, an
//! admin-API read) is a [`SignedAction`] under that key, and the audit
//! entry it causes carries the signed action. The four-eyes rule compares
//! keys; adding or revoking an authority or an operator needs a proposal by
//! one operator and a confirmation by another.
//!
//! Anyone with a shell on the relay host can still write rows into the
//! desk's tables, but not an operator's signature: an entry without one is
//! refused by every replay of the log (`audit verify`), and a rewrite that
//! drops or reorders signed entries breaks the published checkpoints.

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::order::canonical_json;
use crate::trust::Authority;
use crate::LegalError;

/// What a signed action's signature covers, before its canonical JSON: a
/// signature made for anything else can never pass for an action.
const DOMAIN: &[u8] = b"redoubt/legal-action/v1\0";

/// How far an action's own time may be from the desk's: a signed action
/// is good for a few minutes, not as a standing permission.
pub const ACTION_SKEW: time::Duration = time::Duration::minutes(10);

/// A change to who the desk trusts, which takes two operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case", deny_unknown_fields)]
pub enum Change {
    /// Trust an authority's orders.
    AddAuthority {
        /// The authority.
        authority: Authority,
    },
    /// Stop trusting an authority from the confirmation on.
    RevokeAuthority {
        /// Its id.
        id: String,
    },
    /// Add an operator.
    AddOperator {
        /// Their name, for people.
        name: String,
        /// Their Ed25519 public key, standard base64.
        public_key: String,
    },
    /// Revoke an operator's key.
    RevokeOperator {
        /// Their Ed25519 public key, standard base64.
        public_key: String,
    },
}

/// An operator as the bootstrap action names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOperator {
    /// Their name.
    pub name: String,
    /// Their Ed25519 public key, standard base64.
    pub public_key: String,
}

/// What an operator (or, for its own chores, the relay) asks the desk to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ActionKind {
    /// The first two operators, each signing: only on a desk with none.
    Bootstrap {
        /// Both of them.
        operators: Vec<NewOperator>,
    },
    /// Propose a trust change for a second operator to confirm.
    Propose {
        /// The change.
        change: Change,
    },
    /// Confirm another operator's proposal.
    Confirm {
        /// The proposal's number (the sequence number of its audit entry).
        proposal: u64,
    },
    /// Take in an order document.
    Intake {
        /// SHA-256 (hex) of the document's bytes.
        document_sha256: String,
    },
    /// Approve a pending order.
    Approve {
        /// The issuing authority's id.
        issuer: String,
        /// The order's id (unique per issuer).
        order_id: String,
    },
    /// A market decision (announce or cancel an exit), as the market book
    /// records it.
    Market {
        /// What was decided.
        decision: serde_json::Value,
    },
    /// Read the desk through the admin API (orders, the trust store, the
    /// log, a report); not recorded, but authenticated like any action.
    Read {
        /// The admin-API path read.
        path: String,
    },
    /// The relay itself: a user was told about a disclosure. Signed with
    /// the service key.
    Notified {
        /// The issuing authority's id.
        issuer: String,
        /// The order's id.
        order_id: String,
    },
    /// The relay itself: a market's data was purged. Signed with the
    /// service key.
    Purged {
        /// What was purged.
        detail: serde_json::Value,
    },
}

/// An action with its time and a nonce, as signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// What is asked.
    pub what: ActionKind,
    /// When it was signed.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// 16 random bytes (hex): the same action is never taken twice.
    pub nonce: String,
}

/// One signature over an action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionSignature {
    /// The signer's Ed25519 public key, standard base64.
    pub public_key: String,
    /// The signature over the domain tag and the action's canonical JSON,
    /// standard base64.
    pub signature: String,
}

/// An action with its signatures (one, or one per operator for a bootstrap).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedAction {
    /// The action.
    pub action: Action,
    /// Its signatures.
    pub signatures: Vec<ActionSignature>,
}

/// Why a signed action is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    /// No signature, a malformed or weak key, or a signature that does not
    /// verify over this action.
    #[error("the action's signature does not verify")]
    BadSignature,
    /// The same key signed twice.
    #[error("the action is signed twice by the same key")]
    DuplicateSigner,
    /// Not a signed action at all.
    #[error("not a signed action: {0}")]
    Malformed(String),
}

fn signing_input(action: &Action) -> Vec<u8> {
    let mut input = DOMAIN.to_vec();
    input.extend_from_slice(&canonical_json(action));
    input
}

/// Signs an action with a raw key (operators' and the service's).
pub(crate) fn sign_with(key: &SigningKey, what: ActionKind, at: OffsetDateTime) -> SignedAction {
    let mut nonce = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let action = Action {
        what,
        at,
        nonce: nonce.iter().map(|b| format!("{b:02x}")).collect(),
    };
    let signature = key.sign(&signing_input(&action));
    SignedAction {
        signatures: vec![ActionSignature {
            public_key: STANDARD.encode(key.verifying_key().as_bytes()),
            signature: STANDARD.encode(signature.to_bytes()),
        }],
        action,
    }
}

impl SignedAction {
    /// Checks every signature (strictly, weak keys refused) and returns
    /// the signers' public keys (standard base64), in order.
    pub fn signers(&self) -> Result<Vec<String>, ActionError> {
        if self.signatures.is_empty() {
            return Err(ActionError::BadSignature);
        }
        let input = signing_input(&self.action);
        let mut keys = Vec::new();
        for s in &self.signatures {
            let key: VerifyingKey =
                crate::verify::decode_key(&s.public_key).ok_or(ActionError::BadSignature)?;
            let signature = STANDARD
                .decode(&s.signature)
                .ok()
                .and_then(|b| Signature::from_slice(&b).ok())
                .ok_or(ActionError::BadSignature)?;
            key.verify_strict(&input, &signature)
                .map_err(|_| ActionError::BadSignature)?;
            if keys.contains(&s.public_key) {
                return Err(ActionError::DuplicateSigner);
            }
            keys.push(s.public_key.clone());
        }
        Ok(keys)
    }

    /// The action as one header-safe line (URL-safe base64 of its JSON),
    /// as the admin API takes it in `Authorization: Redoubt-Action ...`.
    pub fn to_header(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Reads [`Self::to_header`]'s form.
    pub fn from_header(text: &str) -> Result<Self, ActionError> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|e| ActionError::Malformed(e.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| ActionError::Malformed(e.to_string()))
    }
}

/// An operator's key pair, as kept in their key file (mode 0600):
/// `{"name": ..., "secret_key": <base64 seed>}`.
pub struct OperatorKey {
    name: String,
    key: SigningKey,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    name: String,
    secret_key: String,
}

impl OperatorKey {
    /// A new key for an operator called `name`.
    pub fn generate(name: &str) -> Result<Self, crate::desk::DeskError> {
        crate::desk::check_operator(name)?;
        Ok(Self {
            name: name.into(),
            key: SigningKey::generate(&mut rand::rngs::OsRng),
        })
    }

    /// Reads a key file.
    pub fn load(path: &Path) -> Result<Self, LegalError> {
        let malformed = |detail: String| LegalError::Malformed {
            what: "the operator key file",
            detail,
        };
        let file: KeyFile =
            serde_json::from_slice(&std::fs::read(path)?).map_err(|e| malformed(e.to_string()))?;
        let seed: [u8; 32] = STANDARD
            .decode(file.secret_key.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| malformed("secret_key is not 32 bytes of base64".into()))?;
        crate::desk::check_operator(&file.name).map_err(|e| malformed(e.to_string()))?;
        Ok(Self {
            name: file.name,
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// Writes a new key file, readable by its owner only; never overwrites.
    pub fn save(&self, path: &Path) -> Result<(), LegalError> {
        use std::io::Write as _;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path)?;
        let text = serde_json::to_vec_pretty(&KeyFile {
            name: self.name.clone(),
            secret_key: STANDARD.encode(self.key.to_bytes()),
        })
        .map_err(|e| LegalError::Malformed {
            what: "the operator key file",
            detail: e.to_string(),
        })?;
        file.write_all(&text)?;
        file.sync_all()?;
        Ok(())
    }

    /// The operator's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The public key, standard base64, which the desk knows them by.
    pub fn public_key(&self) -> String {
        STANDARD.encode(self.key.verifying_key().as_bytes())
    }

    /// Signs an action, timed `at`.
    pub fn sign(&self, what: ActionKind, at: OffsetDateTime) -> SignedAction {
        sign_with(&self.key, what, at)
    }

    /// Adds this operator's signature to an action others signed (the
    /// bootstrap takes both first operators').
    pub fn cosign(&self, signed: &mut SignedAction) {
        let signature = self.key.sign(&signing_input(&signed.action));
        signed.signatures.push(ActionSignature {
            public_key: self.public_key(),
            signature: STANDARD.encode(signature.to_bytes()),
        });
    }

    /// The bootstrap action naming `first` and `second` as a new desk's
    /// operators, signed by both.
    pub fn bootstrap(first: &Self, second: &Self, at: OffsetDateTime) -> SignedAction {
        let operators = [first, second]
            .iter()
            .map(|k| NewOperator {
                name: k.name().to_owned(),
                public_key: k.public_key(),
            })
            .collect();
        let mut action = first.sign(ActionKind::Bootstrap { operators }, at);
        second.cosign(&mut action);
        action
    }

    /// The action that takes in `document`.
    pub fn intake(&self, document: &[u8], at: OffsetDateTime) -> SignedAction {
        self.sign(
            ActionKind::Intake {
                document_sha256: crate::sha256_hex(document),
            },
            at,
        )
    }

    /// The action that approves an order.
    pub fn approve(&self, issuer: &str, order_id: &str, at: OffsetDateTime) -> SignedAction {
        self.sign(
            ActionKind::Approve {
                issuer: issuer.into(),
                order_id: order_id.into(),
            },
            at,
        )
    }
}

/// An operator on the desk's register, as the log's replay builds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorInfo {
    /// Their name.
    pub name: String,
    /// Their public key, standard base64.
    pub public_key: String,
    /// When they were added.
    #[serde(with = "time::serde::rfc3339")]
    pub added_at: OffsetDateTime,
    /// When their key was revoked, if it was.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_action_verifies_and_any_change_breaks_it() {
        let olga = OperatorKey::generate("olga").unwrap();
        let now = OffsetDateTime::UNIX_EPOCH;
        let signed = olga.approve("fr-tj-paris", "FR-1", now);
        assert_eq!(signed.signers().unwrap(), vec![olga.public_key()]);
        let round = SignedAction::from_header(&signed.to_header()).unwrap();
        assert_eq!(round, signed);
        let mut changed = signed.clone();
        changed.action.what = ActionKind::Approve {
            issuer: "fr-tj-paris".into(),
            order_id: "FR-2".into(),
        };
        assert_eq!(changed.signers(), Err(ActionError::BadSignature));
        let mut twice = signed.clone();
        twice.signatures.push(twice.signatures[0].clone());
        assert_eq!(twice.signers(), Err(ActionError::DuplicateSigner));
        let mut none = signed;
        none.signatures.clear();
        assert_eq!(none.signers(), Err(ActionError::BadSignature));
    }

    #[test]
    fn key_files_round_trip_and_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("olga.key");
        let olga = OperatorKey::generate("olga").unwrap();
        olga.save(&path).unwrap();
        let loaded = OperatorKey::load(&path).unwrap();
        assert_eq!(loaded.public_key(), olga.public_key());
        assert_eq!(loaded.name(), "olga");
        assert!(OperatorKey::generate("other").unwrap().save(&path).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(OperatorKey::generate("olga ").is_err());
    }
}
