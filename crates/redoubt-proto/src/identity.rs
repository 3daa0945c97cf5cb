//! Account identity on the wire: device certificates and signed device
//! lists.
//!
//! Each account has one Ed25519 identity key, created by its first device
//! and shared only with devices linked to it end to end. The identity key
//! signs a certificate for every device's MLS signature key (carried in the
//! device's MLS credential) and a versioned, hash-chained list of the
//! account's devices. The relay stores and serves these documents but
//! cannot make them: clients accept a device only if the account's pinned
//! identity key vouches for it, so a relay that adds, hides or swaps a
//! device is refused or shown.
//!
//! Documents are signed as JSON text ([`SignedDocument`]): the signer
//! serialises once, signs those bytes with a context prefix, and the
//! verifier checks the very bytes it then parses.

use serde::{Deserialize, Serialize};

use crate::ids::{AccountId, DeviceId};
use crate::phone::PhoneNumber;

/// The signature context of a device certificate.
pub const DEVICE_CERTIFICATE_CONTEXT: &[u8] = b"redoubt/v1/device-certificate\0";
/// The signature context of a device list.
pub const DEVICE_LIST_CONTEXT: &[u8] = b"redoubt/v1/device-list\0";
/// What a device being linked signs to show it holds the key it offers.
pub const LINK_PROOF_CONTEXT: &[u8] = b"redoubt/v1/device-link\0";
/// What a linked device signs to collect its token.
pub const LINK_CLAIM_CONTEXT: &[u8] = b"redoubt/v1/device-link-claim\0";

/// A JSON document and an Ed25519 signature over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SignedDocument {
    /// The document, as the JSON text that was signed.
    pub body: String,
    /// Ed25519 over the document's context followed by `body`, standard
    /// base64.
    pub signature: String,
}

impl SignedDocument {
    /// The bytes a signature over `body` in `context` covers.
    pub fn signing_input(context: &[u8], body: &str) -> Vec<u8> {
        let mut input = context.to_vec();
        input.extend_from_slice(body.as_bytes());
        input
    }
}

/// The identity key's word that a device (by its MLS signature key)
/// belongs to the account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceCertificate {
    /// The account.
    pub account: AccountId,
    /// The device.
    pub device: DeviceId,
    /// The account's number.
    pub phone: PhoneNumber,
    /// The account identity key that signed this, standard base64.
    pub identity_key: String,
    /// The device's MLS signature key, standard base64.
    pub signature_key: String,
    /// When it was issued, seconds since the epoch.
    pub issued_at: i64,
}

/// One device in a device list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListedDevice {
    /// The device.
    pub device: DeviceId,
    /// Its MLS signature key, standard base64.
    pub signature_key: String,
}

/// An account's devices as its identity key states them. Version 1 is the
/// first list under an identity key; each later one names the hash of the
/// one before, so a relay can neither drop a version unnoticed nor fork
/// the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceList {
    /// The account.
    pub account: AccountId,
    /// The account's number.
    pub phone: PhoneNumber,
    /// The identity key that signed this, standard base64.
    pub identity_key: String,
    /// Increases by one with every change.
    pub version: u64,
    /// SHA-256 (hex) of the previous list's body, or empty for the first
    /// list under this identity key (a new account, or an account reset).
    pub previous: String,
    /// The devices.
    pub devices: Vec<ListedDevice>,
    /// When it was signed, seconds since the epoch.
    pub issued_at: i64,
}

/// A device's MLS credential: its certificate, signed by the account's
/// identity key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialDocument {
    /// The signed [`DeviceCertificate`].
    pub certificate: SignedDocument,
}

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Crockford base32 (digits and capitals without I, L, O, U): what people
/// read off one screen and type on another. `bytes.len()` must be a
/// multiple of 5.
pub fn base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 8 / 5);
    for chunk in bytes.chunks(5) {
        let mut n = 0u64;
        for b in chunk {
            n = (n << 8) | u64::from(*b);
        }
        n <<= 8 * (5 - chunk.len());
        for i in (0..8).rev() {
            out.push(char::from(CROCKFORD[((n >> (i * 5)) & 31) as usize]));
        }
    }
    out
}

/// Decodes [`base32`], forgiving case and the letters people confuse with
/// digits (O for 0, I and L for 1). `None` unless a multiple of 8 symbols.
pub fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let symbols: Vec<u8> = text
        .chars()
        .map(|c| match c.to_ascii_uppercase() {
            'O' => Some(0),
            'I' | 'L' => Some(1),
            c => CROCKFORD
                .iter()
                .position(|s| char::from(*s) == c)
                .map(|p| p as u8),
        })
        .collect::<Option<_>>()?;
    if symbols.is_empty() || !symbols.len().is_multiple_of(8) {
        return None;
    }
    let mut out = Vec::with_capacity(symbols.len() * 5 / 8);
    for chunk in symbols.chunks(8) {
        let n = chunk.iter().fold(0u64, |n, s| (n << 5) | u64::from(*s));
        out.extend_from_slice(&n.to_be_bytes()[3..]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_round_trips_and_forgives_look_alikes() {
        let bytes = [0x00, 0x44, 0x32, 0x14, 0xc7, 0xff, 0xff, 0xff, 0xff, 0xff];
        let text = base32(&bytes);
        assert_eq!(text.len(), 16);
        assert_eq!(base32_decode(&text).unwrap(), bytes);
        assert_eq!(base32_decode(&text.to_lowercase()).unwrap(), bytes);
        assert_eq!(
            base32_decode("0000000O").unwrap(),
            base32_decode("00000000").unwrap()
        );
        assert_eq!(
            base32_decode("0000000L").unwrap(),
            base32_decode("00000001").unwrap()
        );
        assert!(base32_decode("0000000").is_none());
        assert!(base32_decode("0000000U").is_none());
    }
}
