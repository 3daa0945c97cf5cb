//! The legal desk's operators and their API tokens. Tokens are shown once
//! and stored as SHA-256 hashes; the name a token maps to is what the
//! four-eyes rule compares.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::LegalError;

/// One operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operator {
    /// Their name, as the audit log records it.
    pub name: String,
    /// SHA-256 (hex) of their token.
    pub token_sha256: String,
    /// When the token was issued.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// The operators file, `<legal dir>/operators.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operators {
    /// Every operator.
    pub operators: Vec<Operator>,
}

fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Operators {
    /// Reads the file; missing means no operators.
    pub fn load(dir: &Path) -> Result<Self, LegalError> {
        match std::fs::read(dir.join("operators.json")) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| LegalError::Malformed {
                what: "the operators file",
                detail: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e.into()),
        }
    }

    /// Issues a token for `name` (replacing any earlier one) and saves the
    /// file; returns the token, which is not stored.
    pub fn issue(dir: &Path, name: &str, now: OffsetDateTime) -> Result<String, LegalError> {
        crate::verify::check_id("operator name", name).map_err(|detail| LegalError::Malformed {
            what: "the operator name",
            detail,
        })?;
        let mut all = Self::load(dir)?;
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let token = format!("rdo_{}", URL_SAFE_NO_PAD.encode(secret));
        all.operators.retain(|o| o.name != name);
        all.operators.push(Operator {
            name: name.into(),
            token_sha256: hash(&token),
            created_at: now,
        });
        std::fs::create_dir_all(dir)?;
        let path = dir.join("operators.json");
        let tmp = path.with_extension("tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(&all).map_err(|e| LegalError::Malformed {
                what: "the operators file",
                detail: e.to_string(),
            })?,
        )?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        }
        std::fs::rename(tmp, path)?;
        Ok(token)
    }

    /// The operator a token belongs to.
    pub fn authenticate(&self, token: &str) -> Option<&Operator> {
        let h = hash(token);
        self.operators.iter().find(|o| o.token_sha256 == h)
    }
}
