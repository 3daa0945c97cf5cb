//! Account identity, without I/O: the account's identity key, the
//! certificates it gives each device's MLS signature key, the signed and
//! hash-chained device list, and how a client checks what the relay serves
//! against what it pinned.
//!
//! The relay can add a device to an account (it sends the SMS codes),
//! list or hide devices, and serve any key it likes. None of that moves a
//! client: a device is used only if a certificate under the account's
//! pinned identity key names its signature key, and a chat's devices
//! follow only device lists that verify under that key, in version order,
//! each naming the hash of the one before. A list under another identity
//! key is an identity change (an account reset, or a number now held by
//! another account), which the client shows and does not act on until the
//! user accepts it.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use redoubt_proto::identity::{
    CredentialDocument, DEVICE_CERTIFICATE_CONTEXT, DEVICE_LIST_CONTEXT,
};
use redoubt_proto::{
    AccountId, DeviceCertificate, DeviceId, DeviceList, ListedDevice, PhoneNumber, SignedDocument,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// Why an identity document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The document does not decode.
    #[error("it does not decode")]
    Malformed,
    /// The signature does not verify under the key it names.
    #[error("its signature does not verify")]
    BadSignature,
    /// A certificate names another signature key than the leaf it is in.
    #[error("its certificate is for another key")]
    WrongKey,
    /// It is signed by another identity key than the one pinned.
    #[error("it is signed by an identity key other than the one pinned for the account")]
    NotPinned,
    /// It is about another account or number than expected.
    #[error("it is about another account")]
    WrongAccount,
    /// A list older than (or as old as) one already seen.
    #[error("it is an older device list than one already seen (a rollback)")]
    Rollback,
    /// A list of the next version that does not name the previous one's
    /// hash: the relay shows a different history than before.
    #[error("it does not continue the device-list history already seen (a fork)")]
    Fork,
    /// Versions are missing between the pinned list and the new one.
    #[error("versions are missing from the device-list history")]
    Gap,
    /// A credential without a certificate (made before identity keys).
    #[error("it has no identity certificate")]
    Uncertified,
}

/// Standard base64.
pub fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

fn unb64(text: &str) -> Result<Vec<u8>, IdentityError> {
    STANDARD.decode(text).map_err(|_| IdentityError::Malformed)
}

/// SHA-256 of a list body, in hex: what the next list names as `previous`.
pub fn body_hash(body: &str) -> String {
    sha256_hex(body.as_bytes())
}

/// SHA-256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn verify(doc: &SignedDocument, context: &[u8], key_b64: &str) -> Result<(), IdentityError> {
    let key: [u8; 32] = unb64(key_b64)?
        .try_into()
        .map_err(|_| IdentityError::Malformed)?;
    let key = VerifyingKey::from_bytes(&key).map_err(|_| IdentityError::Malformed)?;
    let signature =
        Signature::from_slice(&unb64(&doc.signature)?).map_err(|_| IdentityError::Malformed)?;
    key.verify_strict(
        &SignedDocument::signing_input(context, &doc.body),
        &signature,
    )
    .map_err(|_| IdentityError::BadSignature)
}

/// An account's identity key. Created by the account's first device (or
/// by an SMS registration, which resets the account), handed to linked
/// devices end to end, sealed in every profile; never sent to the relay.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IdentityKey(#[serde(with = "seed")] SigningKey);

mod seed {
    use super::*;
    pub fn serialize<S: serde::Serializer>(k: &SigningKey, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(k.to_bytes()))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SigningKey, D::Error> {
        let text = Zeroizing::new(String::deserialize(d)?);
        let bytes = Zeroizing::new(
            STANDARD
                .decode(text.as_bytes())
                .map_err(serde::de::Error::custom)?,
        );
        let seed: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| serde::de::Error::custom("an identity key is 32 bytes"))?;
        Ok(SigningKey::from_bytes(&seed))
    }
}

impl IdentityKey {
    /// A fresh identity key.
    pub fn generate() -> Self {
        Self(SigningKey::generate(&mut rand::rngs::OsRng))
    }

    /// The public key, standard base64: what contacts pin.
    pub fn public(&self) -> String {
        b64(self.0.verifying_key().as_bytes())
    }

    fn sign(&self, context: &[u8], body: String) -> SignedDocument {
        let signature = self.0.sign(&SignedDocument::signing_input(context, &body));
        SignedDocument {
            body,
            signature: b64(&signature.to_bytes()),
        }
    }

    /// Certifies that `signature_key` is `device` of the account.
    pub fn certify(
        &self,
        account: AccountId,
        device: DeviceId,
        phone: &PhoneNumber,
        signature_key: &[u8],
        now: i64,
    ) -> SignedDocument {
        let cert = DeviceCertificate {
            account,
            device,
            phone: phone.clone(),
            identity_key: self.public(),
            signature_key: b64(signature_key),
            issued_at: now,
        };
        // Plain data with string keys always serialises.
        self.sign(
            DEVICE_CERTIFICATE_CONTEXT,
            serde_json::to_string(&cert).unwrap_or_default(),
        )
    }

    /// Signs the next device list after `previous` (or the first under this
    /// key, at `version`, when `previous` is another key's or none).
    pub fn sign_list(
        &self,
        account: AccountId,
        phone: &PhoneNumber,
        version: u64,
        previous: Option<&TrustedList>,
        devices: &[(DeviceId, Vec<u8>)],
        now: i64,
    ) -> (SignedDocument, TrustedList) {
        let previous = previous
            .filter(|p| p.identity_key == self.public())
            .map(|p| p.hash.clone())
            .unwrap_or_default();
        let list = DeviceList {
            account,
            phone: phone.clone(),
            identity_key: self.public(),
            version,
            previous,
            devices: devices
                .iter()
                .map(|(device, key)| ListedDevice {
                    device: *device,
                    signature_key: b64(key),
                })
                .collect(),
            issued_at: now,
        };
        let body = serde_json::to_string(&list).unwrap_or_default();
        let trusted = TrustedList {
            account,
            phone: phone.clone(),
            identity_key: self.public(),
            version,
            hash: body_hash(&body),
            devices: devices.to_vec(),
        };
        (self.sign(DEVICE_LIST_CONTEXT, body), trusted)
    }
}

/// A device list that verified, as a client remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedList {
    /// The account.
    pub account: AccountId,
    /// Its number.
    pub phone: PhoneNumber,
    /// The identity key it verified under, base64.
    pub identity_key: String,
    /// Its version.
    pub version: u64,
    /// The hash of its body.
    pub hash: String,
    /// Its devices and their signature keys.
    pub devices: Vec<(DeviceId, Vec<u8>)>,
}

impl TrustedList {
    /// The signature key listed for a device.
    pub fn key_of(&self, device: DeviceId) -> Option<&[u8]> {
        self.devices
            .iter()
            .find(|(d, _)| *d == device)
            .map(|(_, k)| k.as_slice())
    }
}

/// Verifies one list under the identity key it names (nothing pinned).
fn open_list(doc: &SignedDocument) -> Result<(DeviceList, TrustedList), IdentityError> {
    let list: DeviceList = serde_json::from_str(&doc.body).map_err(|_| IdentityError::Malformed)?;
    verify(doc, DEVICE_LIST_CONTEXT, &list.identity_key)?;
    let devices = list
        .devices
        .iter()
        .map(|d| Ok((d.device, unb64(&d.signature_key)?)))
        .collect::<Result<Vec<_>, IdentityError>>()?;
    let trusted = TrustedList {
        account: list.account,
        phone: list.phone.clone(),
        identity_key: list.identity_key.clone(),
        version: list.version,
        hash: body_hash(&doc.body),
        devices,
    };
    Ok((list, trusted))
}

/// What the lists served after a pinned one say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListUpdate {
    /// Nothing newer.
    Unchanged,
    /// Newer lists under the pinned identity key, each continuing the last.
    Advanced(TrustedList),
    /// A list under another identity key: the account was reset, or the
    /// number now belongs to another account. Not to be acted on before
    /// the user accepts it.
    IdentityChanged(TrustedList),
}

/// Checks the lists the relay served for an account after the pinned
/// one (oldest first). With nothing pinned, the latest list is taken on
/// first use, for the number the user asked for. `account` is the account
/// the relay says the number (or the chat member) belongs to.
pub fn advance(
    pinned: Option<&TrustedList>,
    account: AccountId,
    phone: &PhoneNumber,
    served: &[SignedDocument],
) -> Result<ListUpdate, IdentityError> {
    let Some(pinned) = pinned else {
        let Some(last) = served.last() else {
            return Ok(ListUpdate::Unchanged);
        };
        let (_, trusted) = open_list(last)?;
        if trusted.account != account || trusted.phone != *phone {
            return Err(IdentityError::WrongAccount);
        }
        return Ok(ListUpdate::Advanced(trusted));
    };
    let mut current = pinned.clone();
    let mut changed: Option<TrustedList> = None;
    for doc in served {
        let (list, trusted) = open_list(doc)?;
        if trusted.phone != pinned.phone {
            return Err(IdentityError::WrongAccount);
        }
        if trusted.version <= current.version {
            return Err(IdentityError::Rollback);
        }
        if trusted.version != current.version + 1 {
            return Err(IdentityError::Gap);
        }
        let same_key = trusted.identity_key == current.identity_key;
        if same_key && trusted.account == current.account {
            if list.previous != current.hash {
                return Err(IdentityError::Fork);
            }
        } else if !list.previous.is_empty() {
            // A new identity starts its own history.
            return Err(IdentityError::Fork);
        } else {
            changed = Some(trusted.clone());
        }
        current = trusted;
    }
    if current.account != account {
        return Err(IdentityError::WrongAccount);
    }
    Ok(match changed {
        Some(_) => ListUpdate::IdentityChanged(current),
        None if current.version == pinned.version => ListUpdate::Unchanged,
        None => ListUpdate::Advanced(current),
    })
}

/// What a leaf's certificate vouches for, once it verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certified {
    /// The account.
    pub account: AccountId,
    /// The device.
    pub device: DeviceId,
    /// The account's number.
    pub phone: PhoneNumber,
    /// The identity key that signed it, base64.
    pub identity_key: String,
}

/// The certificate inside an MLS credential's identity bytes, parsed but
/// not verified.
pub fn certificate_of(
    identity: &[u8],
) -> Result<(SignedDocument, DeviceCertificate), IdentityError> {
    let doc: CredentialDocument =
        serde_json::from_slice(identity).map_err(|_| IdentityError::Uncertified)?;
    let cert: DeviceCertificate =
        serde_json::from_str(&doc.certificate.body).map_err(|_| IdentityError::Malformed)?;
    Ok((doc.certificate, cert))
}

/// Checks a leaf: its credential's certificate verifies under the identity
/// key it names, and names the leaf's own signature key. Whether that
/// identity key is the account's is the caller's check, against its pins.
pub fn check_leaf(identity: &[u8], leaf_signature_key: &[u8]) -> Result<Certified, IdentityError> {
    let (doc, cert) = certificate_of(identity)?;
    verify(&doc, DEVICE_CERTIFICATE_CONTEXT, &cert.identity_key)?;
    if unb64(&cert.signature_key)? != leaf_signature_key {
        return Err(IdentityError::WrongKey);
    }
    Ok(Certified {
        account: cert.account,
        device: cert.device,
        phone: cert.phone,
        identity_key: cert.identity_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phone() -> PhoneNumber {
        PhoneNumber::parse("+33612345678").unwrap()
    }

    #[test]
    fn a_certificate_binds_a_leaf_key_to_the_identity_key() {
        let key = IdentityKey::generate();
        let (account, device) = (AccountId::random(), DeviceId::random());
        let cert = key.certify(account, device, &phone(), &[7; 32], 1);
        let identity = serde_json::to_vec(&CredentialDocument { certificate: cert }).unwrap();
        let ok = check_leaf(&identity, &[7; 32]).unwrap();
        assert_eq!((ok.account, ok.device), (account, device));
        assert_eq!(ok.identity_key, key.public());
        assert_eq!(
            check_leaf(&identity, &[8; 32]),
            Err(IdentityError::WrongKey)
        );
        let mut forged: CredentialDocument = serde_json::from_slice(&identity).unwrap();
        forged.certificate.body = forged
            .certificate
            .body
            .replace("+33612345678", "+33699999999");
        let forged = serde_json::to_vec(&forged).unwrap();
        assert_eq!(
            check_leaf(&forged, &[7; 32]),
            Err(IdentityError::BadSignature)
        );
    }

    #[test]
    fn lists_advance_only_along_one_chain() {
        let key = IdentityKey::generate();
        let account = AccountId::random();
        let d1 = (DeviceId::random(), vec![1; 32]);
        let d2 = (DeviceId::random(), vec![2; 32]);
        let (v1, t1) = key.sign_list(account, &phone(), 1, None, std::slice::from_ref(&d1), 1);
        let (v2, t2) = key.sign_list(
            account,
            &phone(),
            2,
            Some(&t1),
            &[d1.clone(), d2.clone()],
            2,
        );
        assert_eq!(
            advance(None, account, &phone(), std::slice::from_ref(&v1)).unwrap(),
            ListUpdate::Advanced(t1.clone())
        );
        assert_eq!(
            advance(Some(&t1), account, &phone(), std::slice::from_ref(&v2)).unwrap(),
            ListUpdate::Advanced(t2.clone())
        );
        assert_eq!(
            advance(Some(&t2), account, &phone(), &[]).unwrap(),
            ListUpdate::Unchanged
        );
        assert_eq!(
            advance(Some(&t2), account, &phone(), std::slice::from_ref(&v1)),
            Err(IdentityError::Rollback)
        );
        // A version 2 that does not continue version 1.
        let (fork, _) = key.sign_list(account, &phone(), 2, None, std::slice::from_ref(&d2), 3);
        let fork = SignedDocument {
            body: fork
                .body
                .replace("\"previous\":\"\"", "\"previous\":\"00\""),
            ..fork
        };
        assert!(advance(Some(&t1), account, &phone(), &[fork]).is_err());
        let (v3, _) = key.sign_list(
            account,
            &phone(),
            3,
            Some(&t2),
            std::slice::from_ref(&d1),
            4,
        );
        assert_eq!(
            advance(Some(&t1), account, &phone(), &[v3]),
            Err(IdentityError::Gap)
        );
        // A list under another key is an identity change, never an advance.
        let other = IdentityKey::generate();
        let (reset, t_reset) = other.sign_list(account, &phone(), 3, Some(&t2), &[d2], 5);
        assert_eq!(
            advance(Some(&t2), account, &phone(), &[reset]).unwrap(),
            ListUpdate::IdentityChanged(t_reset)
        );
        // A list signed by one key claiming another is refused.
        let mut lying = v2;
        lying.signature = other
            .sign(DEVICE_LIST_CONTEXT, lying.body.clone())
            .signature;
        assert_eq!(
            advance(Some(&t1), account, &phone(), &[lying]),
            Err(IdentityError::BadSignature)
        );
    }
}
