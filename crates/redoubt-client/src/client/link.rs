//! Linking a new device to an account, with a code shown on the new device
//! and typed on one the account already has.
//!
//! The two devices run SPAKE2 (a password-authenticated key exchange)
//! through a rendezvous on the relay, with the code's secret half as the
//! password. The relay carries every message but never sees the password,
//! so it cannot learn the key they agree on, and it cannot put its own key
//! in place of the new device's: the key travels inside the exchange's
//! transcript, which both sides confirm with the agreed key before the
//! existing device approves anything. Only then does the existing device
//! register the new device's key, sign a device list that includes it,
//! and send the account's identity key to it, encrypted under the agreed
//! key. A wrong code or a relay in the middle ends the link with nothing
//! approved.
//!
//! 1. new → relay: open a rendezvous; the code is its id and a password.
//! 2. new → existing (`offer`): SPAKE2 message B, its signature key, name
//!    and proof of possession.
//! 3. existing → new (`answer`): SPAKE2 message A and a confirmation MAC.
//! 4. new → existing (`confirm`): its confirmation MAC.
//! 5. existing: approves the key at the relay, publishes the new list.
//! 6. existing → new (`secrets`): account, number, device id and identity
//!    key, sealed under the agreed key.
//! 7. new → relay: claims its token by signing with its key.

use std::path::Path;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Mac as _, SimpleHmac};
use openmls::prelude::SignatureScheme;
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::signatures::Signer as _;
use rand::RngCore as _;
use redoubt_proto::api::{ApproveLinkRequest, ClaimLinkRequest};
use redoubt_proto::identity::{base32, base32_decode};
use redoubt_proto::{AccountId, DeviceId, PhoneNumber};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use spake2::{Ed25519Group, Identity, Password, Spake2};

use super::{now_ms, Client, ClientConfig, IdentityDoc};
use crate::api::Api;
use crate::error::{ClientError, Result};
use crate::identity::{self, IdentityKey, ListUpdate};
use crate::seal::SealKey;
use crate::store::ProfileStore;

/// How long either side waits for the other's next message.
const WAIT: Duration = Duration::from_secs(600);
/// How often it looks.
const POLL: Duration = Duration::from_millis(100);

const SIDE_EXISTING: &[u8] = b"redoubt existing device";
const SIDE_NEW: &[u8] = b"redoubt new device";

#[derive(Serialize, Deserialize)]
struct Offer {
    spake: String,
    signature_key: String,
    device_name: String,
    proof: String,
}

#[derive(Serialize, Deserialize)]
struct Answer {
    spake: String,
    confirm: String,
}

#[derive(Serialize, Deserialize)]
struct Confirm {
    confirm: String,
}

/// What the existing device hands the new one, sealed under the agreed key.
#[derive(Serialize, Deserialize)]
struct Secrets {
    account: AccountId,
    phone: PhoneNumber,
    device: DeviceId,
    identity_key: IdentityKey,
}

/// The agreed key and the transcript both sides confirm.
struct Agreed {
    key: Vec<u8>,
    transcript: [u8; 32],
}

impl Agreed {
    fn new(key: Vec<u8>, link: &str, offer: &[u8], spake_a: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(b"redoubt/v1/link-transcript\0");
        for part in [link.as_bytes(), offer, spake_a] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        Self {
            key,
            transcript: h.finalize().into(),
        }
    }

    fn mac(&self, label: &[u8]) -> Vec<u8> {
        // HMAC takes keys of any length.
        let mut mac = SimpleHmac::<Sha256>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(label);
        mac.update(&self.transcript);
        mac.finalize().into_bytes().to_vec()
    }

    fn check(&self, label: &[u8], theirs: &str) -> Result<()> {
        let theirs = STANDARD.decode(theirs).map_err(|_| mismatch())?;
        let mut mac = SimpleHmac::<Sha256>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(label);
        mac.update(&self.transcript);
        mac.verify_slice(&theirs).map_err(|_| mismatch())
    }

    fn sealer(&self) -> SealKey {
        let secret: [u8; 32] = self.mac(b"secrets").try_into().unwrap_or([0; 32]);
        SealKey::from_secret(&secret)
    }
}

fn mismatch() -> ClientError {
    ClientError::LinkFailed(
        "the other device did not prove it knows the code (a mistyped code, or someone in \
         between); nothing was linked"
            .into(),
    )
}

fn malformed() -> ClientError {
    ClientError::LinkFailed("a message of the link does not decode; nothing was linked".into())
}

/// A code split into the rendezvous id and the password.
fn parse_code(code: &str) -> Result<(String, Vec<u8>)> {
    let compact: String = code
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect();
    let bytes = base32_decode(&compact)
        .filter(|b| b.len() == 10)
        .ok_or_else(|| {
            ClientError::Invalid(
                "a link code is 16 letters and digits, as the new device shows it".into(),
            )
        })?;
    Ok((base32(&bytes[..5]), bytes[5..].to_vec()))
}

async fn wait_for(api: &Api, link: &str, slot: &str) -> Result<Vec<u8>> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(data) = api.get_link(link, slot).await? {
            return Ok(data);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ClientError::LinkFailed(
                "the other device did not answer in time; nothing was linked".into(),
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

fn sign(signer: &SignatureKeyPair, input: &[u8]) -> Result<Vec<u8>> {
    signer
        .sign(input)
        .map_err(|e| ClientError::Mls(format!("{e:?}")))
}

impl Client {
    /// Links this new device to an account: shows a code (through `show`)
    /// for the user to type on a device the account already has with
    /// `redoubt devices link CODE`, waits for it, and creates the profile
    /// in `dir` under the account's identity.
    pub async fn link_new(
        dir: &Path,
        passphrase: &str,
        server: &str,
        device_name: &str,
        config: ClientConfig,
        show: impl FnOnce(&str),
    ) -> Result<Self> {
        if ProfileStore::exists(dir) {
            return Err(ClientError::ProfileExists(dir.to_owned()));
        }
        let api = Api::bound(server, config.local_address);
        let service_key = match &config.service_key {
            Some(key) => key.clone(),
            None => api.service_key().await?.public_key,
        };
        let signer = SignatureKeyPair::new(SignatureScheme::ED25519).map_err(ClientError::mls)?;
        let link = api.create_link().await?.link_id;
        let mut password = [0u8; 5];
        rand::rngs::OsRng.fill_bytes(&mut password);
        let id_bytes = base32_decode(&link).ok_or_else(malformed)?;
        let code = base32(&[id_bytes.as_slice(), &password].concat());
        let shown: Vec<&str> = (0..4).map(|i| &code[i * 4..i * 4 + 4]).collect();
        show(&shown.join("-"));

        let (spake, spake_b) = Spake2::<Ed25519Group>::start_b(
            &Password::new(password),
            &Identity::new(SIDE_EXISTING),
            &Identity::new(SIDE_NEW),
        );
        let offer = serde_json::to_vec(&Offer {
            spake: STANDARD.encode(&spake_b),
            signature_key: STANDARD.encode(signer.public()),
            device_name: device_name.to_owned(),
            proof: STANDARD.encode(sign(
                &signer,
                &ApproveLinkRequest::proof_input(&link, signer.public()),
            )?),
        })
        .map_err(|_| malformed())?;
        api.put_link(&link, "offer", offer.clone()).await?;
        let answer: Answer = serde_json::from_slice(&wait_for(&api, &link, "answer").await?)
            .map_err(|_| malformed())?;
        let spake_a = STANDARD.decode(&answer.spake).map_err(|_| malformed())?;
        let key = spake.finish(&spake_a).map_err(|_| mismatch())?;
        let agreed = Agreed::new(key, &link, &offer, &spake_a);
        if let Err(e) = agreed.check(b"existing", &answer.confirm) {
            // Tell the other side at once, rather than let it wait for a
            // confirmation that will never come.
            let refused = serde_json::to_vec(&Confirm {
                confirm: String::new(),
            })
            .map_err(|_| malformed())?;
            let _ = api.put_link(&link, "confirm", refused).await;
            return Err(e);
        }
        let confirm = serde_json::to_vec(&Confirm {
            confirm: STANDARD.encode(agreed.mac(b"new")),
        })
        .map_err(|_| malformed())?;
        api.put_link(&link, "confirm", confirm).await?;
        let sealed = wait_for(&api, &link, "secrets").await?;
        let plain = agreed
            .sealer()
            .open(link.as_bytes(), &sealed)
            .map_err(|_| mismatch())?;
        let secrets: Secrets = serde_json::from_slice(&plain).map_err(|_| malformed())?;

        let claimed = api
            .claim_link(
                &link,
                &ClaimLinkRequest {
                    signature: sign(&signer, &ClaimLinkRequest::claim_input(&link))?.into(),
                },
            )
            .await?;
        if claimed.account_id != secrets.account || claimed.device_id != secrets.device {
            return Err(ClientError::LinkFailed(
                "the relay gave this device another account or id than the linking device \
                 approved; nothing was linked"
                    .into(),
            ));
        }
        let api = api.with_token(claimed.token.clone());
        // The list the linking device published must include this device,
        // under the identity key it handed over.
        let lists = api.device_lists_since(secrets.account, 0).await?;
        let own_list =
            match identity::advance(None, secrets.account, &secrets.phone, &lists) {
                Ok(ListUpdate::Advanced(list))
                    if list.identity_key == secrets.identity_key.public()
                        && list.key_of(secrets.device) == Some(signer.public()) =>
                {
                    list
                }
                _ => return Err(ClientError::LinkFailed(
                    "the account's device list does not include this device; nothing was linked"
                        .into(),
                )),
            };
        let certificate = secrets.identity_key.certify(
            secrets.account,
            secrets.device,
            &secrets.phone,
            signer.public(),
            now_ms() / 1000,
        );
        let identity = IdentityDoc {
            server: api.base().to_owned(),
            phone: secrets.phone,
            account: secrets.account,
            device: secrets.device,
            token: claimed.token,
            signer,
            service_key: Some(service_key),
            identity_key: Some(secrets.identity_key),
            certificate: Some(certificate),
            own_list: Some(own_list),
        };
        Self::create(dir, passphrase, api, identity, config).await
    }

    /// Links the device showing `code` to this account: runs the key
    /// exchange, and only once the new device proved it knows the code,
    /// approves its key, adds it to the signed device list and hands it the
    /// account's identity key. Returns the new device's id.
    pub async fn approve_link(&mut self, code: &str) -> Result<DeviceId> {
        let _held = self.hold().await?;
        let (link, password) = parse_code(code)?;
        let offer_bytes = wait_for(&self.api, &link, "offer").await?;
        let offer: Offer = serde_json::from_slice(&offer_bytes).map_err(|_| malformed())?;
        let spake_b = STANDARD.decode(&offer.spake).map_err(|_| malformed())?;
        let (spake, spake_a) = Spake2::<Ed25519Group>::start_a(
            &Password::new(&password),
            &Identity::new(SIDE_EXISTING),
            &Identity::new(SIDE_NEW),
        );
        let key = spake.finish(&spake_b).map_err(|_| mismatch())?;
        let agreed = Agreed::new(key, &link, &offer_bytes, &spake_a);
        let answer = serde_json::to_vec(&Answer {
            spake: STANDARD.encode(&spake_a),
            confirm: STANDARD.encode(agreed.mac(b"existing")),
        })
        .map_err(|_| malformed())?;
        self.api.put_link(&link, "answer", answer).await?;
        let confirm: Confirm =
            serde_json::from_slice(&wait_for(&self.api, &link, "confirm").await?)
                .map_err(|_| malformed())?;
        agreed.check(b"new", &confirm.confirm)?;

        // The new device proved it holds the code: its key is the one the
        // user is looking at.
        let signature_key = STANDARD
            .decode(&offer.signature_key)
            .map_err(|_| malformed())?;
        let proof = STANDARD.decode(&offer.proof).map_err(|_| malformed())?;
        let approved = self
            .api
            .approve_link(
                &link,
                &ApproveLinkRequest {
                    signature_key: signature_key.clone().into(),
                    device_name: offer.device_name,
                    proof: proof.into(),
                },
            )
            .await?;
        let device = approved.device_id;
        self.publish_own_devices(|devices| {
            if !devices.iter().any(|(d, _)| *d == device) {
                devices.push((device, signature_key.clone()));
            }
        })
        .await?;
        let secrets = serde_json::to_vec(&Secrets {
            account: self.identity.account,
            phone: self.identity.phone.clone(),
            device,
            identity_key: self.identity.identity_key()?.clone(),
        })
        .map_err(|_| malformed())?;
        let sealed = agreed.sealer().seal(link.as_bytes(), &secrets);
        self.api.put_link(&link, "secrets", sealed).await?;
        Ok(device)
    }

    /// Revokes one of this account's devices: a new signed device list
    /// without it first (so contacts' chats drop it), then the relay's
    /// revocation (its token stops working).
    pub async fn revoke_device(&mut self, device: DeviceId) -> Result<()> {
        let _held = self.hold().await?;
        self.publish_own_devices(|devices| devices.retain(|(d, _)| *d != device))
            .await?;
        self.api.revoke_device(device).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_parse_forgivingly_and_refuse_nonsense() {
        let (link, password) = parse_code("0123-4567-89ab-cdef").unwrap();
        assert_eq!(link, "01234567");
        assert_eq!(base32(&password), "89ABCDEF");
        assert_eq!(parse_code(" 01234567 89ABCDEF ").unwrap().0, "01234567");
        assert!(parse_code("0123-4567").is_err());
        assert!(parse_code("0123-4567-89ab-cdeU").is_err());
    }

    #[test]
    fn a_wrong_password_fails_confirmation() {
        let (a, msg_a) = Spake2::<Ed25519Group>::start_a(
            &Password::new(b"right"),
            &Identity::new(SIDE_EXISTING),
            &Identity::new(SIDE_NEW),
        );
        let (b, msg_b) = Spake2::<Ed25519Group>::start_b(
            &Password::new(b"wrong"),
            &Identity::new(SIDE_EXISTING),
            &Identity::new(SIDE_NEW),
        );
        let ka = Agreed::new(a.finish(&msg_b).unwrap(), "L", b"offer", &msg_a);
        let kb = Agreed::new(b.finish(&msg_a).unwrap(), "L", b"offer", &msg_a);
        assert!(kb
            .check(b"existing", &STANDARD.encode(ka.mac(b"existing")))
            .is_err());
    }
}
