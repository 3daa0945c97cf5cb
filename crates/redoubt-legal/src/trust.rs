//! The authority trust store: the operator's list of authorities whose
//! orders it will consider, per jurisdiction, with their public keys, kind
//! and validity period. It is the replay of the audit log's confirmed
//! trust changes (`redoubtd legal authority add|revoke` proposes one, a
//! second operator's `redoubtd legal confirm` makes it).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// What kind of body an authority is. Prosecutors and others need a court or
/// judge to validate their orders (as under the EU e-Evidence Regulation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthorityKind {
    /// A court.
    Court,
    /// An investigating judge.
    Judge,
    /// A public prosecutor.
    Prosecutor,
    /// Any other competent authority.
    Other,
}

impl AuthorityKind {
    /// Whether orders from this kind of authority need a validating authority.
    pub fn needs_validation(self) -> bool {
        matches!(self, Self::Prosecutor | Self::Other)
    }
}

/// One of an authority's signing keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorityKey {
    /// The id orders name in `signature.key_id`.
    pub key_id: String,
    /// The Ed25519 public key, standard base64 of 32 bytes.
    pub public_key: String,
}

/// An authority the operator trusts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authority {
    /// Its id, as orders name it.
    pub id: String,
    /// Its name, for people.
    pub name: String,
    /// ISO 3166-1 alpha-2 code of the state it acts for.
    pub jurisdiction: String,
    /// What kind of body it is.
    pub kind: AuthorityKind,
    /// Its signing keys.
    pub keys: Vec<AuthorityKey>,
    /// Trusted from.
    #[serde(with = "time::serde::rfc3339")]
    pub valid_from: OffsetDateTime,
    /// Trusted until.
    #[serde(with = "time::serde::rfc3339")]
    pub valid_until: OffsetDateTime,
    /// When the operator revoked it, if they did.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

/// The trust store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustStore {
    /// Every authority, revoked ones included (for the record).
    pub authorities: Vec<Authority>,
}

/// Why a trust-store change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// The id is taken.
    #[error("an authority with id {0:?} already exists")]
    Duplicate(String),
    /// No such authority.
    #[error("no authority with id {0:?}")]
    Unknown(String),
    /// A field breaks a rule.
    #[error("{0}")]
    Invalid(String),
}

impl TrustStore {
    /// The authority with this id.
    pub fn find(&self, id: &str) -> Option<&Authority> {
        self.authorities.iter().find(|a| a.id == id)
    }

    /// Adds an authority after checking it.
    pub fn add(&mut self, authority: Authority) -> Result<(), TrustError> {
        if self.find(&authority.id).is_some() {
            return Err(TrustError::Duplicate(authority.id));
        }
        crate::verify::check_id("authority id", &authority.id).map_err(TrustError::Invalid)?;
        crate::verify::check_country(&authority.jurisdiction).map_err(TrustError::Invalid)?;
        if authority.keys.is_empty() {
            return Err(TrustError::Invalid(
                "an authority needs at least one key".into(),
            ));
        }
        for key in &authority.keys {
            crate::verify::check_id("key id", &key.key_id).map_err(TrustError::Invalid)?;
            crate::verify::decode_key(&key.public_key).ok_or_else(|| {
                TrustError::Invalid(format!(
                    "key {:?} is not a base64 Ed25519 public key",
                    key.key_id
                ))
            })?;
        }
        if authority.valid_from >= authority.valid_until {
            return Err(TrustError::Invalid(
                "valid_from must be before valid_until".into(),
            ));
        }
        self.authorities.push(authority);
        Ok(())
    }

    /// Revokes an authority from `at` on.
    pub fn revoke(&mut self, id: &str, at: OffsetDateTime) -> Result<(), TrustError> {
        let authority = self
            .authorities
            .iter_mut()
            .find(|a| a.id == id)
            .ok_or_else(|| TrustError::Unknown(id.into()))?;
        if authority.revoked_at.is_none() {
            authority.revoked_at = Some(at);
        }
        Ok(())
    }
}
