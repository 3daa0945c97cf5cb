//! Disclosure packages: what the desk hands an authority, signed with the
//! service's own key so the authority can check it came from the operator,
//! unaltered.
//!
//! [`Disclosure`] is the only type that carries user data out of the
//! service, and it can hold exactly a phone number (with the account's
//! creation time) and IP-log records.

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::order::{canonical_json, DataCategory};
use crate::records::{IpRecord, Subscriber};
use redoubt_proto::PhoneNumber;

/// The `subscriber` category as disclosed: the phone number and the
/// account's creation time, nothing else (not even the internal account id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriberData {
    /// The account's phone number.
    pub phone: PhoneNumber,
    /// When the account was created.
    #[serde(with = "time::serde::rfc3339")]
    pub account_created_at: OffsetDateTime,
}

impl From<&Subscriber> for SubscriberData {
    fn from(s: &Subscriber) -> Self {
        Self {
            phone: s.phone.clone(),
            account_created_at: s.account_created_at,
        }
    }
}
use crate::LegalError;

/// The data produced for an order: a phone number and IP records, nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disclosure {
    /// The `subscriber` category, if requested.
    pub subscriber: Option<SubscriberData>,
    /// The `ip_identification` category, if requested (possibly empty).
    pub ip_identification: Option<Vec<IpRecord>>,
}

/// A requested category that is not produced, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotProduced {
    /// The category.
    pub category: DataCategory,
    /// Why: "not held: end-to-end encrypted", "not held: not collected".
    pub reason: String,
}

/// The package for one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisclosurePackage {
    /// The order answered.
    pub order_id: String,
    /// Its issuing authority.
    pub issuing_authority: String,
    /// Its jurisdiction.
    pub jurisdiction: String,
    /// What is disclosed.
    pub produced: Disclosure,
    /// What was asked for and cannot be produced.
    pub not_produced: Vec<NotProduced>,
    /// Message content disclosed, always zero: the service never has it.
    pub message_content_bytes_disclosed: u64,
    /// When the package was made.
    #[serde(with = "time::serde::rfc3339")]
    pub produced_at: OffsetDateTime,
    /// The order document exactly as the authority sent it, so anyone can
    /// check which signed order this package answers.
    #[serde(default)]
    pub signed_order: String,
}

/// A package with the service's signature over its canonical encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedPackage {
    /// The package.
    pub package: DisclosurePackage,
    /// Ed25519 signature by the service key, standard base64.
    pub signature: String,
}

/// The service's signing key, for disclosure packages and reports.
#[derive(Clone)]
pub struct ServiceKey(SigningKey);

impl ServiceKey {
    /// The key itself, for the desk's own signatures (checkpoints, the
    /// relay's chores in the audit log).
    pub(crate) fn signing(&self) -> &SigningKey {
        &self.0
    }

    /// A 32-byte secret for `purpose`, derived one way from this key: for
    /// the relay's keyed hashes, which every node must compute alike. Every
    /// node already holds the service key, so no other secret has to be
    /// copied between them, and the secret is not in the database beside
    /// the hashes it keys.
    pub fn derive_secret(&self, purpose: &str) -> [u8; 32] {
        use sha2::Digest as _;
        sha2::Sha256::new()
            .chain_update(b"redoubt/service-key-derived-secret/v1\0")
            .chain_update(purpose.as_bytes())
            .chain_update(b"\0")
            .chain_update(self.0.to_bytes())
            .finalize()
            .into()
    }

    /// A fresh key held only in memory (for tools and tests that never
    /// publish what they sign).
    pub fn generate() -> Self {
        Self(SigningKey::generate(&mut rand::rngs::OsRng))
    }

    /// Loads the key from `path`, creating it (mode 0600) on first use.
    pub fn load_or_create(path: &Path) -> Result<Self, LegalError> {
        Ok(Self(SigningKey::from_bytes(&load_or_create_seed(
            path,
            "the service key",
        )?)))
    }

    /// The public key, standard base64, to publish for authorities.
    pub fn public_key(&self) -> String {
        STANDARD.encode(self.0.verifying_key().as_bytes())
    }

    /// Signs a package.
    pub fn sign(&self, package: DisclosurePackage) -> SignedPackage {
        let signature = self.0.sign(&canonical_json(&package));
        SignedPackage {
            package,
            signature: STANDARD.encode(signature.to_bytes()),
        }
    }

    /// Signs arbitrary canonical JSON (reports).
    pub fn sign_value<T: Serialize>(&self, value: &T) -> String {
        STANDARD.encode(self.0.sign(&canonical_json(value)).to_bytes())
    }

    /// Signs a notice to one account. Clients accept a notice only under
    /// the service key they pinned, so a relay that forges one is shown up.
    pub fn sign_notice(
        &self,
        notice: &redoubt_proto::ServiceNotice,
    ) -> redoubt_proto::SignedNotice {
        // Serialising plain data with string keys cannot fail.
        let text = serde_json::to_string(notice).unwrap_or_default();
        let signature = self
            .0
            .sign(&redoubt_proto::SignedNotice::signing_input(&text));
        redoubt_proto::SignedNotice {
            notice: text,
            signature: STANDARD.encode(signature.to_bytes()),
        }
    }
}

/// A 32-byte secret kept in a file (base64, mode 0600), created on first
/// use. Written whole under a private name, then linked into place, which
/// fails if the file exists: nodes starting together on a shared directory
/// end up with one secret (the first), never two, and nobody ever reads a
/// half-written file.
pub fn load_or_create_seed(path: &Path, what: &'static str) -> Result<[u8; 32], LegalError> {
    if let Ok(text) = std::fs::read_to_string(path) {
        return STANDARD
            .decode(text.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(LegalError::Malformed {
                what,
                detail: "not 32 bytes of base64".into(),
            });
    }
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension(format!("new-{}", rand::rngs::OsRng.next_u64()));
    std::fs::write(&tmp, STANDARD.encode(seed))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(seed),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create_seed(path, what),
        Err(e) => Err(e.into()),
    }
}

/// Why a signed document does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackageError {
    /// Not a signed package.
    #[error("not a signed disclosure package: {0}")]
    Malformed(String),
    /// The signature does not match the content and key.
    #[error("the signature does not verify: the package was altered or not signed by this key")]
    BadSignature,
}

/// Checks a signed package's bytes against the service's public key (base64).
pub fn verify_package(bytes: &[u8], public_key: &str) -> Result<DisclosurePackage, PackageError> {
    let signed: SignedPackage =
        serde_json::from_slice(bytes).map_err(|e| PackageError::Malformed(e.to_string()))?;
    // Checked over the package as received, not a re-encoding of what was
    // parsed: bytes changed in a way that keeps their meaning (a time
    // written "+00:00" instead of "Z") still break the signature.
    let as_received: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| PackageError::Malformed(e.to_string()))?;
    let key = crate::verify::decode_key(public_key).ok_or(PackageError::BadSignature)?;
    let signature = STANDARD
        .decode(&signed.signature)
        .ok()
        .and_then(|b| Signature::from_slice(&b).ok())
        .ok_or(PackageError::BadSignature)?;
    VerifyingKey::verify_strict(&key, &canonical_json(&as_received["package"]), &signature)
        .map_err(|_| PackageError::BadSignature)?;
    Ok(signed.package)
}
