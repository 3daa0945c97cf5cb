//! The MLS layer: the OpenMLS provider whose state is snapshotted into the
//! sealed profile store, credentials, group configuration, key packages.

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_memory_storage::MemoryStorage;
use openmls_rust_crypto::RustCrypto;

use crate::error::{ClientError, Result};
use crate::model::MemberIdentity;

/// The one ciphersuite Redoubt uses: X25519, AES-128-GCM, SHA-256, Ed25519
/// (MLS's mandatory-to-implement suite). Ed25519 is also the key type the
/// server registers for each device.
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// How many past epochs' secrets are kept, so messages sent just before a
/// commit still decrypt after it. The relay queues each device's envelopes
/// in the order it accepted them, so a message can only be overtaken by
/// commits that were already on their way when it was written: one, or two
/// when a removal and the designated member's commit of a leave cross.
/// More would only widen the window in which a removed member's old-epoch
/// message decrypts (such messages are not shown as normal; see
/// docs/threat-model.md). Messages from epochs not reached yet are kept
/// apart until their commit arrives, so they need no window here.
const MAX_PAST_EPOCHS: usize = 2;

/// OpenMLS's crypto with an in-memory store that the client snapshots into
/// its sealed database after every change.
#[derive(Default)]
pub struct Provider {
    crypto: RustCrypto,
    storage: MemoryStorage,
}

impl OpenMlsProvider for Provider {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = MemoryStorage;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }
    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }
    fn rand(&self) -> &Self::RandProvider {
        &self.crypto
    }
}

impl Provider {
    /// Restores a snapshot made by [`Provider::snapshot`].
    pub fn restore(snapshot: &[u8]) -> Result<Self> {
        let corrupt = || ClientError::Corrupt("MLS state snapshot");
        let mut rest = snapshot;
        let mut take = |n: usize| -> Result<&[u8]> {
            if rest.len() < n {
                return Err(corrupt());
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        let count = u64::from_be_bytes(take(8)?.try_into().map_err(|_| corrupt())?) as usize;
        let mut values = std::collections::HashMap::with_capacity(count.min(1 << 20));
        for _ in 0..count {
            let k_len = u64::from_be_bytes(take(8)?.try_into().map_err(|_| corrupt())?) as usize;
            let v_len = u64::from_be_bytes(take(8)?.try_into().map_err(|_| corrupt())?) as usize;
            let k = take(k_len)?.to_vec();
            let v = take(v_len)?.to_vec();
            values.insert(k, v);
        }
        let storage = MemoryStorage::default();
        *storage.values.write().map_err(|_| corrupt())? = values;
        Ok(Self {
            crypto: RustCrypto::default(),
            storage,
        })
    }

    /// Snapshots the whole MLS state: a count, then length-prefixed keys and
    /// values (the layout OpenMLS uses for its own test snapshots).
    pub fn snapshot(&self) -> Result<Vec<u8>> {
        let values = self
            .storage
            .values
            .read()
            .map_err(|_| ClientError::Corrupt("MLS state lock"))?;
        let mut out = Vec::with_capacity(
            8 + values
                .iter()
                .map(|(k, v)| 16 + k.len() + v.len())
                .sum::<usize>(),
        );
        out.extend((values.len() as u64).to_be_bytes());
        for (k, v) in values.iter() {
            out.extend((k.len() as u64).to_be_bytes());
            out.extend((v.len() as u64).to_be_bytes());
            out.extend(k);
            out.extend(v);
        }
        Ok(out)
    }
}

/// The credential of a device: its certificate from the account's
/// identity key (which names the device, the account, its number and this
/// signature key), and the signature key itself.
pub fn credential(
    certificate: &redoubt_proto::SignedDocument,
    signer: &SignatureKeyPair,
) -> Result<CredentialWithKey> {
    let bytes = serde_json::to_vec(&redoubt_proto::identity::CredentialDocument {
        certificate: certificate.clone(),
    })
    .map_err(ClientError::mls)?;
    Ok(CredentialWithKey {
        credential: BasicCredential::new(bytes).into(),
        signature_key: signer.public().into(),
    })
}

/// The identity bytes of a member's credential.
pub fn credential_bytes(credential: &Credential) -> Result<Vec<u8>> {
    let basic = BasicCredential::try_from(credential.clone()).map_err(ClientError::mls)?;
    Ok(basic.identity().to_vec())
}

/// Who a member's credential says it is, for display and addressing. It
/// is not a check: [`crate::identity::check_leaf`] is, wherever a leaf is
/// first met. Credentials from before identity keys carry the identity
/// bare and still read.
pub fn identity_of(credential: &Credential) -> Result<MemberIdentity> {
    let bytes = credential_bytes(credential)?;
    if let Ok((_, cert)) = crate::identity::certificate_of(&bytes) {
        return Ok(MemberIdentity {
            account: cert.account,
            device: cert.device,
            phone: cert.phone,
        });
    }
    serde_json::from_slice(&bytes)
        .map_err(|_| ClientError::Mls("a member credential is not a Redoubt identity".into()))
}

/// The configuration of every group this client creates. Handshake messages
/// are encrypted too (`PURE_CIPHERTEXT`), so the server cannot even see who
/// adds or removes whom.
pub fn create_config() -> MlsGroupCreateConfig {
    MlsGroupCreateConfig::builder()
        .ciphersuite(CIPHERSUITE)
        .use_ratchet_tree_extension(true)
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .build()
}

/// The configuration for joining groups from a Welcome.
pub fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .build()
}

/// A fresh key package, serialized, with its reference.
pub struct FreshKeyPackage {
    /// The MLS `KeyPackageRef`.
    pub reference: Vec<u8>,
    /// The TLS-serialized KeyPackage.
    pub bytes: Vec<u8>,
}

/// Makes a key package; its private keys stay in the provider's store.
pub fn key_package(
    provider: &Provider,
    signer: &SignatureKeyPair,
    credential: CredentialWithKey,
    last_resort: bool,
) -> Result<FreshKeyPackage> {
    // The leaf declares LastResort among its extensions, or a group that
    // adds a device through its last-resort package is refused ("a key
    // package extension is not supported in the leaf's capabilities") and
    // a contact whose other packages were drained cannot be reached.
    let mut builder = KeyPackage::builder().leaf_node_capabilities(Capabilities::new(
        None,
        None,
        Some(&[ExtensionType::LastResort]),
        None,
        None,
    ));
    if last_resort {
        builder = builder.mark_as_last_resort();
    }
    let bundle = builder
        .build(CIPHERSUITE, provider, signer, credential)
        .map_err(ClientError::mls)?;
    let package = bundle.key_package();
    Ok(FreshKeyPackage {
        reference: package
            .hash_ref(provider.crypto())
            .map_err(ClientError::mls)?
            .as_slice()
            .to_vec(),
        bytes: package.tls_serialize_detached().map_err(ClientError::mls)?,
    })
}

/// Parses and validates a key package claimed from the server.
pub fn parse_key_package(provider: &Provider, bytes: &[u8]) -> Result<KeyPackage> {
    let incoming = KeyPackageIn::tls_deserialize_exact(bytes).map_err(ClientError::mls)?;
    incoming
        .validate(provider.crypto(), ProtocolVersion::Mls10)
        .map_err(ClientError::mls)
}
