//! The secrets the server hands out: the bearer token a device
//! authenticates with, and the secret of a verification session.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not a well-formed token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed token")]
pub struct MalformedToken;

/// A secret the server hands out once and keeps only a hash of: a prefix
/// that lets secret scanners recognise it, then 32 random bytes in unpadded
/// base64url. `Debug` is redacted so it never reaches a log; `expose` gives
/// the text where it is really needed.
macro_rules! server_secret {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $pattern:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq)]
        #[cfg_attr(
            feature = "openapi",
            derive(utoipa::ToSchema),
            schema(value_type = String, pattern = $pattern)
        )]
        pub struct $name(String);

        impl $name {
            /// The prefix of every one, which lets secret scanners recognise it.
            pub const PREFIX: &'static str = $prefix;

            /// Checks the shape: the prefix followed by 43 characters of
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

            /// Builds one from 32 random bytes chosen by the server.
            pub fn from_random_bytes(bytes: &[u8; 32]) -> Self {
                use base64::engine::general_purpose::URL_SAFE_NO_PAD;
                use base64::Engine as _;
                Self(format!("{}{}", Self::PREFIX, URL_SAFE_NO_PAD.encode(bytes)))
            }

            /// The text, for the one place that needs it.
            pub fn expose(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

server_secret!(
    /// A device's bearer token, as the server issued it. The server keeps
    /// only a hash of it; the text goes in the `Authorization` header.
    AuthToken,
    "rdt_",
    "^rdt_[A-Za-z0-9_-]{43}$"
);

server_secret!(
    /// The secret of one verification session: handed to whoever asked for
    /// a code, and needed with the code to verify it. Guesses count against
    /// the session, so strangers who ask for codes to someone else's number
    /// cannot spend that person's attempts (issue 16).
    VerificationSession,
    "rdv_",
    "^rdv_[A-Za-z0-9_-]{43}$"
);

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
        let v = VerificationSession::from_random_bytes(&[9; 32]);
        assert_eq!(VerificationSession::parse(v.expose()).unwrap(), v);
        assert_eq!(format!("{v:?}"), "VerificationSession(<redacted>)");
        assert!(
            VerificationSession::parse(t.expose()).is_err(),
            "a token is not a session"
        );
    }
}
