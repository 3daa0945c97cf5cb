//! Opaque byte strings, carried as standard base64 in JSON.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub(crate) fn encode_b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

pub(crate) fn decode_b64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    STANDARD.decode(text)
}

/// Bytes the server stores and forwards without understanding: MLS messages,
/// KeyPackages, signature keys.
///
/// `Debug` prints only the length, so that message bytes never reach a log
/// through a derived `Debug` of a larger type.
#[derive(Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(value_type = String, format = Byte))]
pub struct OpaqueBytes(Vec<u8>);

impl OpaqueBytes {
    /// Wraps bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The wrapped bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    /// Unwraps the bytes.
    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }

    /// The number of bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for OpaqueBytes {
    fn from(value: Vec<u8>) -> Self {
        Self(value)
    }
}

impl fmt::Debug for OpaqueBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpaqueBytes({} bytes)", self.0.len())
    }
}

impl Serialize for OpaqueBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode_b64(&self.0))
    }
}

impl<'de> Deserialize<'de> for OpaqueBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        decode_b64(&s)
            .map(Self)
            .map_err(|_| serde::de::Error::custom("expected standard base64"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_bytes() {
        let b = OpaqueBytes::new(b"secret".to_vec());
        assert_eq!(format!("{b:?}"), "OpaqueBytes(6 bytes)");
    }

    #[test]
    fn base64_round_trip() {
        let b = OpaqueBytes::new(vec![0, 1, 2, 255]);
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(json, "\"AAEC/w==\"");
        assert_eq!(serde_json::from_str::<OpaqueBytes>(&json).unwrap(), b);
        assert!(serde_json::from_str::<OpaqueBytes>("\"not base64!\"").is_err());
    }
}
