//! Validated identifiers. Each is a distinct type so that an account id can
//! never be passed where a device id is expected.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::bytes::{decode_b64, encode_b64};

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The text is not a UUID in its hyphenated form.
    #[error("not a valid {0} (expected a UUID, hyphenated, in lower case)")]
    NotUuid(&'static str),
    /// A key-package reference is not base64 or has the wrong length.
    #[error("not a valid key package reference (expected 1 to 64 bytes of base64)")]
    BadKeyPackageRef,
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $label:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(value_type = String, format = Uuid))]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh random identifier.
            pub fn random() -> Self {
                Self(Uuid::new_v4())
            }

            /// The identifier as a UUID.
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }

            /// The identifier's 16 raw bytes.
            pub fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }

            /// Rebuilds an identifier from its 16 raw bytes.
            pub fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(Uuid::from_bytes(bytes))
            }
        }

        impl From<Uuid> for $name {
            fn from(value: Uuid) -> Self {
                Self(value)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                // Only the canonical hyphenated form is accepted, so that one
                // id has exactly one spelling on the wire and in logs.
                // Lower-case hex only: the parser also takes upper case,
                // which gave one id two spellings (found by the property
                // test `ids_have_one_spelling`).
                if s.len() != 36 || s.bytes().any(|b| b.is_ascii_uppercase()) {
                    return Err(IdError::NotUuid($label));
                }
                Uuid::parse_str(s).map(Self).map_err(|_| IdError::NotUuid($label))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0.hyphenated())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

uuid_id!(
    /// An account: one person, reachable at one phone number, with one or more devices.
    AccountId,
    "account id"
);
uuid_id!(
    /// One device of an account. Mailboxes, key packages and tokens belong to devices.
    DeviceId,
    "device id"
);
uuid_id!(
    /// One envelope. The sending client picks it, so that a retried send is
    /// recognised as the same envelope and stored once.
    EnvelopeId,
    "envelope id"
);

impl EnvelopeId {
    /// A fresh identifier for an envelope about to be sent: a UUID of
    /// version 7, whose first 48 bits are the current Unix time in
    /// milliseconds and whose other 74 free bits are random.
    ///
    /// Why not [`EnvelopeId::random`]: the relay keys its stores and its
    /// deduplication receipts by this id. Random ids land on a random page
    /// of each index, so every envelope dirtied pages of its own and the
    /// write-ahead log carried several kilobytes per 256-byte message
    /// (`BENCHMARKS.md`, issue 15). Ids that grow with time are appended
    /// next to each other. The relay relies on nothing about the order: a
    /// client with a wrong clock, or one that sends random ids, costs it
    /// speed, never correctness. What the id tells the relay, the time the
    /// client made the envelope, is within the time it arrived save for
    /// messages written offline (see `docs/threat-model.md`).
    pub fn time_ordered() -> Self {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Self::time_ordered_at(ms)
    }

    /// The id of an envelope the relay itself writes (a market-exit or
    /// disclosure notice), from 16 bytes it derived: a UUID of version 8,
    /// a version no client makes ([`EnvelopeId::random`] is 4,
    /// [`EnvelopeId::time_ordered`] 7) and the relay refuses from clients.
    ///
    /// Why a namespace of its own: notice ids are derived from values users
    /// can know (an account id, an order id), so that a retry is recognised
    /// as the same envelope. In the ids clients write, a user who sent an
    /// envelope under that id first made the relay's deduplication drop the
    /// real notice (issue 16).
    pub fn service(derived: [u8; 16]) -> Self {
        let mut bytes = derived;
        bytes[6] = (bytes[6] & 0x0f) | 0x80;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        Self(Uuid::from_bytes(bytes))
    }

    /// Whether this id is in the relay's own namespace
    /// ([`EnvelopeId::service`]).
    pub fn is_service(&self) -> bool {
        self.0.get_version_num() == 8
    }

    /// [`EnvelopeId::time_ordered`] for a given Unix time in milliseconds.
    pub fn time_ordered_at(unix_ms: u64) -> Self {
        let mut bytes = *Uuid::new_v4().as_bytes();
        bytes[..6].copy_from_slice(&unix_ms.to_be_bytes()[2..]);
        // Version 7; the variant bits are already RFC 9562's from v4.
        bytes[6] = (bytes[6] & 0x0f) | 0x70;
        Self(Uuid::from_bytes(bytes))
    }
}

/// The reference a client computed for one of its MLS KeyPackages (the MLS
/// `KeyPackageRef`, a hash). The server treats it as opaque bytes.
#[derive(Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(value_type = String, format = Byte))]
pub struct KeyPackageRef(Vec<u8>);

impl KeyPackageRef {
    /// The longest reference accepted, in bytes. MLS hash references are 32
    /// or 64 bytes long depending on the ciphersuite.
    pub const MAX_LEN: usize = 64;

    /// Wraps raw reference bytes, checking their length.
    pub fn new(bytes: Vec<u8>) -> Result<Self, IdError> {
        if bytes.is_empty() || bytes.len() > Self::MAX_LEN {
            return Err(IdError::BadKeyPackageRef);
        }
        Ok(Self(bytes))
    }

    /// The raw reference bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for KeyPackageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPackageRef({})", encode_b64(&self.0))
    }
}

impl Serialize for KeyPackageRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode_b64(&self.0))
    }
}

impl<'de> Deserialize<'de> for KeyPackageRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let bytes =
            decode_b64(&s).map_err(|_| serde::de::Error::custom(IdError::BadKeyPackageRef))?;
        Self::new(bytes).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_other_spellings() {
        let id = AccountId::random();
        let text = id.to_string();
        assert_eq!(text.parse::<AccountId>().unwrap(), id);
        assert!(text.replace('-', "").parse::<AccountId>().is_err());
        assert!("not-a-uuid".parse::<DeviceId>().is_err());
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<AccountId>(&json).unwrap(), id);
    }

    #[test]
    fn only_service_ids_are_in_the_service_namespace() {
        for _ in 0..100 {
            assert!(!EnvelopeId::random().is_service());
            assert!(!EnvelopeId::time_ordered().is_service());
        }
        for derived in [[0u8; 16], [0xff; 16], [0x47; 16]] {
            let id = EnvelopeId::service(derived);
            assert!(id.is_service());
            assert_eq!(id.0.get_variant(), uuid::Variant::RFC4122);
        }
    }

    #[test]
    fn time_ordered_envelope_ids_are_v7_uuids_that_sort_by_time() {
        let earlier = EnvelopeId::time_ordered_at(1_700_000_000_000);
        let later = EnvelopeId::time_ordered_at(1_700_000_000_001);
        assert!(earlier.as_bytes() < later.as_bytes());
        assert_eq!(earlier.as_uuid().get_version_num(), 7);
        assert_eq!(earlier.as_uuid().get_variant(), uuid::Variant::RFC4122);
        assert_eq!(
            &earlier.as_bytes()[..6],
            &1_700_000_000_000u64.to_be_bytes()[2..]
        );
        // Two ids of one millisecond still differ.
        assert_ne!(
            EnvelopeId::time_ordered_at(1_700_000_000_000),
            EnvelopeId::time_ordered_at(1_700_000_000_000)
        );
        let text = EnvelopeId::time_ordered().to_string();
        assert!(text.parse::<EnvelopeId>().is_ok());
    }

    #[test]
    fn key_package_refs_have_bounded_length() {
        assert!(KeyPackageRef::new(vec![]).is_err());
        assert!(KeyPackageRef::new(vec![1; 65]).is_err());
        let r = KeyPackageRef::new(vec![7; 32]).unwrap();
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<KeyPackageRef>(&json).unwrap(), r);
        assert!(serde_json::from_str::<KeyPackageRef>("\"%%%\"").is_err());
    }
}
