//! The bearer token a device authenticates with.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A device's bearer token, as the server issued it.
///
/// The server keeps only a hash of it. `Debug` is redacted so the token never
/// reaches a log; use [`AuthToken::expose`] where the text is really needed
/// (the `Authorization` header).
#[derive(Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(value_type = String))]
pub struct AuthToken(String);

/// Why a string is not a well-formed token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed token")]
pub struct MalformedToken;

impl AuthToken {
    /// The prefix of every token, which lets secret scanners recognise one.
    pub const PREFIX: &'static str = "rdt_";

    /// Checks the shape of a token: the prefix followed by 43 characters of
    /// unpadded base64url (32 random bytes).
    pub fn parse(text: &str) -> Result<Self, MalformedToken> {
        let rest = text.strip_prefix(Self::PREFIX).ok_or(MalformedToken)?;
        let well_formed = rest.len() == 43
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if well_formed {
            Ok(Self(text.to_owned()))
        } else {
            Err(MalformedToken)
        }
    }

    /// Builds a token from 32 random bytes chosen by the server.
    pub fn from_random_bytes(bytes: &[u8; 32]) -> Self {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine as _;
        Self(format!("{}{}", Self::PREFIX, URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// The token's text, for the `Authorization` header or the device's store.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthToken(<redacted>)")
    }
}

impl Serialize for AuthToken {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for AuthToken {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_hide_in_debug() {
        let t = AuthToken::from_random_bytes(&[9; 32]);
        assert_eq!(AuthToken::parse(t.expose()).unwrap(), t);
        assert_eq!(format!("{t:?}"), "AuthToken(<redacted>)");
        assert!(AuthToken::parse("rdt_short").is_err());
        assert!(AuthToken::parse("xyz_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").is_err());
    }
}
