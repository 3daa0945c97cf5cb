//! The client: a profile, its identity on one relay, its MLS groups.
//!
//! Several processes may use one profile at once (`redoubt chat` in one
//! terminal, `redoubt send` in another). Every public operation that reads
//! or changes MLS state holds the profile lock for its duration and first
//! reloads the state if another process wrote since ([`Client::hold`]), so
//! no two processes ever encrypt from, or write back, diverging copies.

mod link;
mod notices;
mod outbox;
mod trust;

pub use trust::PinnedContact;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::signatures::Signer as _;
use redoubt_proto::api::{EnvelopeKind, KeyPackageUpload, VerifyCodeRequest};
use redoubt_proto::{AccountId, AuthToken, DeviceId, EnvelopeId, KeyPackageRef, PhoneNumber};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::api::Api;
use crate::error::{ClientError, Result};
use crate::identity::{IdentityKey, TrustedList};
use crate::lock::{LockGuard, ProfileLock};
use crate::mls::{self, Provider};
use crate::model::*;
use crate::seal::KdfParams;
use crate::store::{Changes, ProfileStore};

/// The largest text message, in bytes of UTF-8.
pub const MAX_TEXT_BYTES: usize = 16 * 1024;

/// The group id under which notices from the service itself are filed.
pub const NOTICES_CHAT: &[u8] = b"redoubt/server-notices";

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Cost of deriving the profile key.
    pub kdf: KdfParams,
    /// Key packages to keep on the server.
    pub key_packages: usize,
    /// The local address to connect from; `None` lets the system choose.
    pub local_address: Option<std::net::IpAddr>,
    /// The operator's service key (standard base64), when the user got it
    /// from somewhere other than the relay. Without it, the key the relay
    /// presents at registration is pinned.
    pub service_key: Option<String>,
    /// How long an operation waits for another process using the profile.
    pub lock_wait: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            kdf: KdfParams::default(),
            key_packages: 50,
            local_address: None,
            service_key: None,
            lock_wait: Duration::from_secs(30),
        }
    }
}

/// Who this device is, sealed in the profile.
#[derive(Serialize, Deserialize)]
struct IdentityDoc {
    server: String,
    phone: PhoneNumber,
    account: AccountId,
    device: DeviceId,
    token: AuthToken,
    signer: SignatureKeyPair,
    /// The operator's service key, pinned at registration (or on the first
    /// contact after an upgrade): notices are trusted only under it.
    #[serde(default)]
    service_key: Option<String>,
    /// The account's identity key (absent only in profiles made before
    /// identity keys, which must be reset).
    #[serde(default)]
    identity_key: Option<IdentityKey>,
    /// This device's certificate from the identity key, carried in its MLS
    /// credential.
    #[serde(default)]
    certificate: Option<redoubt_proto::SignedDocument>,
    /// The account's latest device list this device verified or signed.
    #[serde(default)]
    own_list: Option<TrustedList>,
}

impl IdentityDoc {
    fn identity_key(&self) -> Result<&IdentityKey> {
        self.identity_key.as_ref().ok_or(ClientError::ProfileTooOld)
    }
}

/// A member of a chat, device by device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    /// The account's number.
    pub phone: String,
    /// The account.
    pub account: AccountId,
    /// The device.
    pub device: DeviceId,
    /// Whether it is this device.
    pub this_device: bool,
}

/// An account with the devices its identity key lists, each with its
/// public signature key.
#[derive(Debug, Clone)]
struct AccountDevices {
    phone: PhoneNumber,
    account: AccountId,
    /// The identity key the list verified under (base64).
    identity_key: String,
    devices: Vec<(DeviceId, Vec<u8>)>,
}

/// What a sync brought in.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Envelopes processed (new ones, not redeliveries).
    pub processed: usize,
    /// Messages stored (texts and notices).
    pub messages: Vec<MessageRecord>,
    /// Queued messages the relay accepted on this sync.
    pub sent: usize,
    /// Queued messages still waiting (the relay could not take them).
    pub queued: usize,
}

/// An unlocked profile, ready to chat.
pub struct Client {
    store: ProfileStore,
    api: Api,
    identity: IdentityDoc,
    provider: Provider,
    groups: HashMap<Vec<u8>, MlsGroup>,
    config: ClientConfig,
    lock: ProfileLock,
    /// The store generation the in-memory state was loaded at or last
    /// written as; another process's write makes it stale.
    generation: AtomicI64,
    /// Changes met during this operation that the user should see before
    /// anything is sent (a contact linked a device, an identity changed, a
    /// list was refused). The CLI prints and clears them.
    announcements: Vec<String>,
}

/// What a profile holds, as loaded from its store.
struct Loaded {
    identity: IdentityDoc,
    provider: Provider,
    groups: HashMap<Vec<u8>, MlsGroup>,
}

/// Reads the identity and MLS state from the store.
async fn load(store: &ProfileStore) -> Result<Loaded> {
    let doc = store
        .document("identity")
        .await?
        .ok_or(ClientError::Corrupt("identity missing"))?;
    let identity: IdentityDoc =
        serde_json::from_slice(&doc).map_err(|_| ClientError::Corrupt("identity"))?;
    let provider = match store.document("mls").await? {
        Some(snapshot) => Provider::restore(&snapshot)?,
        None => Provider::default(),
    };
    let mut groups = HashMap::new();
    for chat in store.chats().await? {
        if chat.state != ChatState::Active {
            continue;
        }
        let group = MlsGroup::load(provider.storage(), &GroupId::from_slice(&chat.group_id))
            .map_err(|_| ClientError::Corrupt("MLS group state"))?;
        if let Some(group) = group {
            groups.insert(chat.group_id.clone(), group);
        }
    }
    Ok(Loaded {
        identity,
        provider,
        groups,
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn system_message(group_id: &[u8], text: String) -> MessageRecord {
    MessageRecord {
        message_id: Uuid::new_v4(),
        group_id: group_id.to_vec(),
        author: Author::System,
        text,
        sent_at: now_ms(),
        received_at: now_ms(),
        delivery: Delivery::Sent,
    }
}

impl Client {
    /// Asks the relay to send a verification code to `phone`.
    pub async fn request_code(
        server: &str,
        phone: &PhoneNumber,
        config: &ClientConfig,
    ) -> Result<()> {
        Api::bound(server, config.local_address)
            .request_code(phone)
            .await
            .map(|_| ())
    }

    /// Registers this device with `code`, creates the profile in `dir` and
    /// uploads key packages.
    pub async fn register(
        dir: &Path,
        passphrase: &str,
        server: &str,
        phone: &PhoneNumber,
        code: &str,
        device_name: &str,
        config: ClientConfig,
    ) -> Result<Self> {
        if ProfileStore::exists(dir) {
            return Err(ClientError::ProfileExists(dir.to_owned()));
        }
        let signer = SignatureKeyPair::new(SignatureScheme::ED25519).map_err(ClientError::mls)?;
        let challenge = VerifyCodeRequest::registration_challenge(phone, code);
        let proof = signer
            .sign(&challenge)
            .map_err(|e| ClientError::Mls(format!("{e:?}")))?;
        let api = Api::bound(server, config.local_address);
        // The service key is pinned before anything else: from the user's
        // configuration when given, else from this first contact.
        let service_key = match &config.service_key {
            Some(key) => key.clone(),
            None => api.service_key().await?.public_key,
        };
        let registered = api
            .verify_code(&VerifyCodeRequest {
                phone: phone.clone(),
                code: code.to_owned(),
                device_name: device_name.to_owned(),
                signature_key: signer.public().to_vec().into(),
                proof: proof.into(),
            })
            .await?;
        let api = api.with_token(registered.token.clone());
        // Every SMS registration starts a new identity: a new account, or
        // an account reset (contacts see the identity change). Devices join
        // an existing identity only by being linked.
        let identity_key = IdentityKey::generate();
        let latest = api.device_lists_since(registered.account_id, 0).await?;
        let version = latest.len() as u64 + 1;
        let own = vec![(registered.device_id, signer.public().to_vec())];
        let (list, own_list) = identity_key.sign_list(
            registered.account_id,
            phone,
            version,
            None,
            &own,
            now_ms() / 1000,
        );
        api.publish_device_list(list).await?;
        let certificate = identity_key.certify(
            registered.account_id,
            registered.device_id,
            phone,
            signer.public(),
            now_ms() / 1000,
        );
        let identity = IdentityDoc {
            server: api.base().to_owned(),
            phone: phone.clone(),
            account: registered.account_id,
            device: registered.device_id,
            token: registered.token.clone(),
            signer,
            service_key: Some(service_key),
            identity_key: Some(identity_key),
            certificate: Some(certificate),
            own_list: Some(own_list),
        };
        let mut client = Self::create(dir, passphrase, api, identity, config).await?;
        if !registered.new_account {
            client.announcements.push(format!(
                "{phone} already had an account: this registration reset its identity. \
                 Your contacts will see that your safety number changed, and devices \
                 linked before are no longer vouched for; link them again."
            ));
        }
        Ok(client)
    }

    /// Creates the profile for a device that just joined an identity
    /// (registered or linked), and uploads its key packages.
    async fn create(
        dir: &Path,
        passphrase: &str,
        api: Api,
        identity: IdentityDoc,
        config: ClientConfig,
    ) -> Result<Self> {
        let store = ProfileStore::create(dir, passphrase, config.kdf).await?;
        let lock = ProfileLock::open(dir)?;
        let doc = serde_json::to_vec(&identity).map_err(|_| ClientError::Corrupt("identity"))?;
        let mut client = Self {
            store,
            api,
            identity,
            provider: Provider::default(),
            groups: HashMap::new(),
            config,
            lock,
            generation: AtomicI64::new(0),
            announcements: Vec::new(),
        };
        let _held = client.hold().await?;
        client
            .persist(Changes {
                documents: vec![("identity", doc)],
                ..Default::default()
            })
            .await?;
        client.top_up_key_packages().await?;
        drop(_held);
        Ok(client)
    }

    /// Opens an existing profile.
    pub async fn open(dir: &Path, passphrase: &str, config: ClientConfig) -> Result<Self> {
        let store = ProfileStore::open(dir, passphrase).await?;
        let lock = ProfileLock::open(dir)?;
        // The generation is read before the state: a write in between only
        // makes the first operation reload once more.
        let generation = store.generation().await?;
        let Loaded {
            identity,
            provider,
            groups,
        } = load(&store).await?;
        if identity.identity_key.is_none() {
            return Err(ClientError::ProfileTooOld);
        }
        let api =
            Api::bound(&identity.server, config.local_address).with_token(identity.token.clone());
        Ok(Self {
            store,
            api,
            identity,
            provider,
            groups,
            config,
            lock,
            generation: AtomicI64::new(generation),
            announcements: Vec::new(),
        })
    }

    /// Takes the profile lock for one operation (waiting for another
    /// process's operation to end) and, on the outermost hold, reloads the
    /// identity and MLS state if another process wrote since this one last
    /// did. Every public operation that uses MLS state starts here; the
    /// lock is released when the returned guard drops.
    async fn hold(&mut self) -> Result<LockGuard> {
        let (guard, outermost) = self.lock.hold(self.config.lock_wait).await?;
        if outermost {
            let current = self.store.generation().await?;
            if current != self.generation.load(Ordering::SeqCst) {
                let Loaded {
                    identity,
                    provider,
                    groups,
                } = load(&self.store).await?;
                self.api = Api::bound(&identity.server, self.config.local_address)
                    .with_token(identity.token.clone());
                self.identity = identity;
                self.provider = provider;
                self.groups = groups;
                self.generation.store(current, Ordering::SeqCst);
            }
        }
        Ok(guard)
    }

    /// This profile's number.
    pub fn phone(&self) -> &PhoneNumber {
        &self.identity.phone
    }
    /// This profile's account.
    pub fn account_id(&self) -> AccountId {
        self.identity.account
    }
    /// This device.
    pub fn device_id(&self) -> DeviceId {
        self.identity.device
    }
    /// The relay's base URL.
    pub fn server(&self) -> &str {
        &self.identity.server
    }
    /// The relay API (authenticated).
    pub fn api(&self) -> &Api {
        &self.api
    }

    fn credential(&self) -> Result<CredentialWithKey> {
        let certificate = self
            .identity
            .certificate
            .as_ref()
            .ok_or(ClientError::ProfileTooOld)?;
        mls::credential(certificate, &self.identity.signer)
    }

    /// What this operation met that the user should see before anything
    /// else (contacts' new devices, identity changes, refused lists),
    /// taken once.
    pub fn take_announcements(&mut self) -> Vec<String> {
        std::mem::take(&mut self.announcements)
    }

    /// Stores one system notice in a chat (with the current MLS state).
    async fn note(&self, group_id: &[u8], text: String) -> Result<()> {
        let messages = vec![system_message(group_id, text)];
        self.persist(Changes {
            messages,
            ..Default::default()
        })
        .await
    }

    /// Persists `changes` together with the current MLS state.
    async fn persist(&self, mut changes: Changes) -> Result<()> {
        changes.documents.push(("mls", self.provider.snapshot()?));
        self.record(changes).await
    }

    /// Persists the identity document after a change to it.
    async fn save_identity(&self) -> Result<()> {
        let doc =
            serde_json::to_vec(&self.identity).map_err(|_| ClientError::Corrupt("identity"))?;
        self.record(Changes {
            documents: vec![("identity", doc)],
            ..Default::default()
        })
        .await
    }

    /// Persists `changes` that leave MLS state as it is.
    async fn record(&self, changes: Changes) -> Result<()> {
        let generation = self.store.apply(changes).await?;
        self.generation.store(generation, Ordering::SeqCst);
        Ok(())
    }

    /// Uploads key packages when the server holds fewer than it asks for.
    pub async fn top_up_key_packages(&mut self) -> Result<()> {
        let _held = self.hold().await?;
        let count = self.api.key_package_count().await?;
        let wanted = (self.config.key_packages as u64).max(count.low_watermark);
        if count.remaining >= count.low_watermark && count.last_resort {
            return Ok(());
        }
        let mut uploads = Vec::new();
        for _ in count.remaining..wanted {
            uploads.push(self.fresh_key_package(false)?);
        }
        if !count.last_resort {
            uploads.push(self.fresh_key_package(true)?);
        }
        // The private halves are stored before the public ones are published,
        // so no one can claim a key package this device cannot open.
        self.persist(Changes::default()).await?;
        for batch in uploads.chunks(100) {
            self.api.upload_key_packages(batch.to_vec()).await?;
        }
        Ok(())
    }

    fn fresh_key_package(&self, last_resort: bool) -> Result<KeyPackageUpload> {
        let kp = mls::key_package(
            &self.provider,
            &self.identity.signer,
            self.credential()?,
            last_resort,
        )?;
        Ok(KeyPackageUpload {
            id: KeyPackageRef::new(kp.reference)
                .map_err(|_| ClientError::Mls("key package reference".into()))?,
            data: kp.bytes.into(),
            last_resort,
        })
    }

    /// Every chat, most recent first, including "Redoubt notices" (notices
    /// from the service itself, such as a disclosure notice) once one arrived.
    pub async fn chats(&self) -> Result<Vec<ChatRecord>> {
        self.store.chats().await
    }

    /// A chat's last `limit` messages, oldest first.
    pub async fn messages(&self, chat: &ChatRecord, limit: u32) -> Result<Vec<MessageRecord>> {
        self.store.messages(&chat.group_id, limit).await
    }

    /// Notices from the service itself.
    pub async fn notices(&self, limit: u32) -> Result<Vec<MessageRecord>> {
        self.store.messages(NOTICES_CHAT, limit).await
    }

    /// Finds a chat by name, by the peer's number, or by a prefix of its id.
    pub async fn find_chat(&self, query: &str) -> Result<ChatRecord> {
        let chats = self.chats().await?;
        let phone = PhoneNumber::parse(query).ok();
        let matches: Vec<&ChatRecord> = chats
            .iter()
            .filter(|c| {
                c.name == query
                    || phone
                        .as_ref()
                        .is_some_and(|p| c.kind == ChatKind::Direct && c.name == p.e164())
                    || (query.len() >= 4 && hex(&c.group_id).starts_with(&query.to_lowercase()))
            })
            .collect();
        // Prefer an active chat when a name was reused after leaving.
        matches
            .iter()
            .find(|c| c.state == ChatState::Active)
            .or(matches.first())
            .map(|c| (*c).clone())
            .ok_or_else(|| ClientError::UnknownChat(query.to_owned()))
    }

    /// The members of a chat, device by device.
    pub fn members(&self, chat: &ChatRecord) -> Result<Vec<Member>> {
        let group = self
            .groups
            .get(&chat.group_id)
            .ok_or(ClientError::NotAMember)?;
        group
            .members()
            .map(|m| {
                let id = mls::identity_of(&m.credential)?;
                Ok(Member {
                    this_device: id.device == self.identity.device,
                    phone: id.phone.to_string(),
                    account: id.account,
                    device: id.device,
                })
            })
            .collect()
    }

    /// The devices of other members, which every message goes to.
    fn recipients(&self, group: &MlsGroup) -> Result<Vec<DeviceId>> {
        let mut out = Vec::new();
        for m in group.members() {
            let id = mls::identity_of(&m.credential)?;
            if id.device != self.identity.device {
                out.push(id.device);
            }
        }
        Ok(out)
    }

    /// Claims a key package for each listed device of `accounts` and
    /// checks each: its certificate verifies under the account's identity
    /// key and names the very device and key the signed list names. A
    /// package that fails is refused and nothing is added.
    async fn claim_for(
        &self,
        accounts: &[AccountDevices],
    ) -> Result<(Vec<KeyPackage>, Vec<ContactDevice>)> {
        let devices: Vec<DeviceId> = accounts
            .iter()
            .flat_map(|a| a.devices.iter().map(|(id, _)| *id))
            .collect();
        if devices.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let claimed = self.api.claim(devices).await?;
        let mut packages = Vec::new();
        let mut contacts = Vec::new();
        for c in claimed.key_packages {
            let kp = mls::parse_key_package(&self.provider, c.data.as_slice())?;
            let leaf_key = kp.leaf_node().signature_key().as_slice().to_vec();
            let account = accounts
                .iter()
                .find(|a| a.devices.iter().any(|(d, _)| *d == c.device_id))
                .ok_or_else(|| {
                    ClientError::Untrusted("the relay answered for a device not asked for".into())
                })?;
            let refused = |why: String| {
                ClientError::Untrusted(format!(
                    "a key package the relay served for {} {why}; nothing was added",
                    account.phone
                ))
            };
            let certified = crate::identity::check_leaf(
                &mls::credential_bytes(kp.leaf_node().credential())?,
                &leaf_key,
            )
            .map_err(|e| refused(format!("failed its check: {e}")))?;
            let listed_key = account
                .devices
                .iter()
                .find(|(d, _)| *d == c.device_id)
                .map(|(_, k)| k.as_slice());
            if certified.identity_key != account.identity_key
                || certified.account != account.account
                || certified.device != c.device_id
                || listed_key != Some(leaf_key.as_slice())
            {
                return Err(refused(
                    "is not the key their identity key vouches for".into(),
                ));
            }
            contacts.push(ContactDevice {
                account_id: account.account,
                device_id: c.device_id,
                signature_key: leaf_key,
                phone: account.phone.to_string(),
            });
            packages.push(kp);
        }
        Ok((packages, contacts))
    }

    /// Creates a chat with the accounts behind `phones` (all their devices
    /// and this account's other devices).
    async fn create_chat(
        &mut self,
        kind: ChatKind,
        name: String,
        phones: &[PhoneNumber],
    ) -> Result<ChatRecord> {
        let mut accounts = Vec::new();
        for phone in phones {
            if *phone == self.identity.phone {
                return Err(ClientError::Invalid(
                    "you cannot start a chat with your own number".into(),
                ));
            }
            let account = self.trusted_devices(phone, None).await?;
            if self
                .pinned(phone)
                .await?
                .is_some_and(|c| c.pending.is_some())
            {
                return Err(ClientError::IdentityChanged(vec![phone.to_string()]));
            }
            if account.devices.is_empty() {
                return Err(ClientError::UnknownContact(phone.to_string()));
            }
            accounts.push(account);
        }
        let own = self.own_trusted_devices().await?;
        if !own.devices.is_empty() {
            accounts.push(own);
        }
        let (packages, contacts) = self.claim_for(&accounts).await?;
        let mut group = MlsGroup::new(
            &self.provider,
            &self.identity.signer,
            &mls::create_config(),
            self.credential()?,
        )
        .map_err(ClientError::mls)?;
        let group_id = group.group_id().as_slice().to_vec();
        let recipients: Vec<DeviceId> = contacts.iter().map(|c| c.device_id).collect();
        let (_commit, welcome, _) = group
            .add_members(&self.provider, &self.identity.signer, &packages)
            .map_err(ClientError::mls)?;
        group
            .merge_pending_commit(&self.provider)
            .map_err(ClientError::mls)?;
        let info = AppMessage::ChatInfo {
            kind,
            name: if kind == ChatKind::Group {
                name.clone()
            } else {
                String::new()
            },
        };
        let info = group
            .create_message(
                &self.provider,
                &self.identity.signer,
                &serde_json::to_vec(&info).map_err(ClientError::mls)?,
            )
            .map_err(ClientError::mls)?;
        // The Welcome goes first: the same mailbox order makes every new
        // device join before it reads the chat's name.
        self.send_envelope(
            EnvelopeId::random(),
            recipients.clone(),
            welcome.tls_serialize_detached().map_err(ClientError::mls)?,
        )
        .await?;
        self.send_envelope(
            EnvelopeId::random(),
            recipients,
            info.tls_serialize_detached().map_err(ClientError::mls)?,
        )
        .await?;

        let chat = ChatRecord {
            group_id: group_id.clone(),
            kind,
            name,
            peer: (kind == ChatKind::Direct).then(|| accounts[0].account),
            state: ChatState::Active,
            created_at: now_ms(),
        };
        let messages = vec![system_message(&group_id, "You created this chat.".into())];
        self.groups.insert(group_id, group);
        self.persist(Changes {
            chats: vec![chat.clone()],
            messages,
            ..Default::default()
        })
        .await?;
        Ok(chat)
    }

    /// Starts (or returns the existing) direct chat with the account behind `phone`.
    pub async fn start_direct(&mut self, phone: &PhoneNumber) -> Result<ChatRecord> {
        let _held = self.hold().await?;
        let existing = self.chats().await?.into_iter().find(|c| {
            c.kind == ChatKind::Direct && c.state == ChatState::Active && c.name == phone.e164()
        });
        if let Some(chat) = existing {
            return Ok(chat);
        }
        self.create_chat(
            ChatKind::Direct,
            phone.to_string(),
            std::slice::from_ref(phone),
        )
        .await
    }

    /// Creates a named group with the accounts behind `phones`.
    pub async fn create_group(&mut self, name: &str, phones: &[PhoneNumber]) -> Result<ChatRecord> {
        let _held = self.hold().await?;
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 100 || PhoneNumber::parse(name).is_ok() {
            return Err(ClientError::Invalid(
                "a group name must be 1 to 100 characters and not a phone number".into(),
            ));
        }
        self.create_chat(ChatKind::Group, name.to_owned(), phones)
            .await
    }

    fn active_group(&self, chat: &ChatRecord) -> Result<&MlsGroup> {
        if chat.state != ChatState::Active {
            return Err(ClientError::NotAMember);
        }
        self.groups
            .get(&chat.group_id)
            .ok_or(ClientError::NotAMember)
    }

    /// Sends a text message. It is encrypted and stored first, then sent;
    /// when the relay cannot take it now (unreachable, say) it waits in the
    /// outbox and the returned record says `Queued`: any later command that
    /// reaches the relay sends it. A refusal for good is an error.
    pub async fn send_text(&mut self, chat: &ChatRecord, text: &str) -> Result<MessageRecord> {
        if text.len() > MAX_TEXT_BYTES {
            return Err(ClientError::TooLarge {
                len: text.len(),
                max: MAX_TEXT_BYTES,
            });
        }
        if text.trim().is_empty() {
            return Err(ClientError::Invalid("an empty message is not sent".into()));
        }
        let _held = self.hold().await?;
        // A direct chat follows the peer's devices as they change: one
        // request per send, worth it so a re-registered phone keeps
        // receiving. Offline, the message goes to the devices the chat has.
        if chat.kind == ChatKind::Direct {
            match self.reconcile(chat).await {
                Err(e) if e.is_transient() => {}
                other => other?,
            }
        }
        // Nothing goes to a chat where someone's identity changed until the
        // user accepted it.
        let changed = self.pending_changes(chat).await?;
        if !changed.is_empty() {
            return Err(ClientError::IdentityChanged(changed));
        }
        let id = Uuid::new_v4();
        let sent_at = now_ms();
        let body = serde_json::to_vec(&AppMessage::Text {
            id,
            text: text.to_owned(),
            sent_at,
        })
        .map_err(ClientError::mls)?;
        let (provider, signer) = (&self.provider, &self.identity.signer);
        let group = self
            .groups
            .get_mut(&chat.group_id)
            .filter(|_| chat.state == ChatState::Active)
            .ok_or(ClientError::NotAMember)?;
        let out = group
            .create_message(provider, signer, &body)
            .map_err(ClientError::mls)?;
        let recipients = self.recipients(
            self.groups
                .get(&chat.group_id)
                .ok_or(ClientError::NotAMember)?,
        )?;
        let mut record = MessageRecord {
            message_id: id,
            group_id: chat.group_id.clone(),
            author: Author::Member {
                account: self.identity.account,
                device: self.identity.device,
                phone: self.identity.phone.to_string(),
                me: true,
            },
            text: text.to_owned(),
            sent_at,
            received_at: sent_at,
            delivery: Delivery::Queued,
        };
        let envelope = self
            .enqueue(
                &record,
                recipients,
                out.tls_serialize_detached().map_err(ClientError::mls)?,
            )
            .await?;
        let flushed = self.flush_outbox().await?;
        if let Some((_, e)) = flushed.failed.into_iter().find(|(id, _)| *id == envelope) {
            return Err(e);
        }
        if flushed.sent.contains(&envelope) {
            record.delivery = Delivery::Sent;
        }
        Ok(record)
    }

    /// Adds the account behind `phone` (all its devices) to a group.
    pub async fn add_member(&mut self, chat: &ChatRecord, phone: &PhoneNumber) -> Result<()> {
        let _held = self.hold().await?;
        if chat.kind != ChatKind::Group {
            return Err(ClientError::Invalid(
                "members can only be added to groups".into(),
            ));
        }
        let account = self.trusted_devices(phone, Some(&chat.group_id)).await?;
        if self
            .pinned(phone)
            .await?
            .is_some_and(|c| c.pending.is_some())
        {
            return Err(ClientError::IdentityChanged(vec![phone.to_string()]));
        }
        let current = self.members(chat)?;
        let new_devices: Vec<(DeviceId, Vec<u8>)> = account
            .devices
            .iter()
            .filter(|(d, _)| !current.iter().any(|m| m.device == *d))
            .cloned()
            .collect();
        if new_devices.is_empty() {
            return Err(ClientError::Invalid(format!("{phone} is already a member")));
        }
        self.add_devices(
            chat,
            &[AccountDevices {
                devices: new_devices,
                ..account
            }],
        )
        .await?;
        self.note(&chat.group_id, format!("You added {phone}."))
            .await
    }

    /// Commits the addition of these accounts' devices, sends the commit to
    /// the current members and the Welcome to the new devices, then the
    /// chat's description to everyone.
    async fn add_devices(&mut self, chat: &ChatRecord, accounts: &[AccountDevices]) -> Result<()> {
        let (packages, contacts) = self.claim_for(accounts).await?;
        let existing = self.recipients(self.active_group(chat)?)?;
        let (provider, signer) = (&self.provider, &self.identity.signer);
        let group = self
            .groups
            .get_mut(&chat.group_id)
            .ok_or(ClientError::NotAMember)?;
        let (commit, welcome, _) = group
            .add_members(provider, signer, &packages)
            .map_err(ClientError::mls)?;
        self.send_commit(&chat.group_id, existing, commit).await?;
        let new_recipients: Vec<DeviceId> = contacts.iter().map(|c| c.device_id).collect();
        self.send_envelope(
            EnvelopeId::random(),
            new_recipients,
            welcome.tls_serialize_detached().map_err(ClientError::mls)?,
        )
        .await?;
        let info = serde_json::to_vec(&AppMessage::ChatInfo {
            kind: chat.kind,
            name: if chat.kind == ChatKind::Group {
                chat.name.clone()
            } else {
                String::new()
            },
        })
        .map_err(ClientError::mls)?;
        let (provider, signer) = (&self.provider, &self.identity.signer);
        let group = self
            .groups
            .get_mut(&chat.group_id)
            .ok_or(ClientError::NotAMember)?;
        let info = group
            .create_message(provider, signer, &info)
            .map_err(ClientError::mls)?;
        let everyone = self.recipients(self.active_group(chat)?)?;
        self.send_envelope(
            EnvelopeId::random(),
            everyone,
            info.tls_serialize_detached().map_err(ClientError::mls)?,
        )
        .await?;
        self.persist(Changes::default()).await
    }

    /// Sends a commit this device created to `recipients` and merges it; if
    /// the relay refuses it, the commit is discarded so the group stays usable.
    async fn send_commit(
        &mut self,
        group_id: &[u8],
        recipients: Vec<DeviceId>,
        commit: MlsMessageOut,
    ) -> Result<()> {
        let bytes = commit.tls_serialize_detached().map_err(ClientError::mls)?;
        if let Err(e) = self
            .send_envelope(EnvelopeId::random(), recipients, bytes)
            .await
        {
            let group = self
                .groups
                .get_mut(group_id)
                .ok_or(ClientError::NotAMember)?;
            let _ = group.clear_pending_commit(self.provider.storage());
            return Err(e);
        }
        let group = self
            .groups
            .get_mut(group_id)
            .ok_or(ClientError::NotAMember)?;
        group
            .merge_pending_commit(&self.provider)
            .map_err(ClientError::mls)
    }

    /// Removes these leaves. The removed devices get the commit too, so they
    /// learn they are out.
    async fn remove_leaves(&mut self, chat: &ChatRecord, leaves: &[LeafNodeIndex]) -> Result<()> {
        let recipients = self.recipients(self.active_group(chat)?)?;
        let (provider, signer) = (&self.provider, &self.identity.signer);
        let group = self
            .groups
            .get_mut(&chat.group_id)
            .ok_or(ClientError::NotAMember)?;
        let (commit, _, _) = group
            .remove_members(provider, signer, leaves)
            .map_err(ClientError::mls)?;
        self.send_commit(&chat.group_id, recipients, commit).await
    }

    /// Removes the account behind `phone` (all its devices) from a group.
    pub async fn remove_member(&mut self, chat: &ChatRecord, phone: &PhoneNumber) -> Result<()> {
        let _held = self.hold().await?;
        if chat.kind != ChatKind::Group {
            return Err(ClientError::Invalid(
                "members can only be removed from groups".into(),
            ));
        }
        if *phone == self.identity.phone {
            return Err(ClientError::Invalid(
                "use `redoubt group leave` to leave".into(),
            ));
        }
        let group = self.active_group(chat)?;
        let mut leaves = Vec::new();
        for m in group.members() {
            if mls::identity_of(&m.credential)?.phone == *phone {
                leaves.push(m.index);
            }
        }
        if leaves.is_empty() {
            return Err(ClientError::NotInChat(phone.to_string()));
        }
        self.remove_leaves(chat, &leaves).await?;
        self.note(&chat.group_id, format!("You removed {phone}."))
            .await
    }

    /// Brings the chat's devices in line with the device lists its members'
    /// identity keys signed (this account's own included): devices a newer
    /// list dropped are removed, devices it added are added, and an
    /// accepted identity change replaces the old identity's devices with
    /// the new one's. What the relay lists or stops listing changes
    /// nothing; a list that does not verify is refused and said.
    pub async fn reconcile(&mut self, chat: &ChatRecord) -> Result<()> {
        let _held = self.hold().await?;
        let members = self.members(chat)?;
        let mut phones: Vec<PhoneNumber> = Vec::new();
        for m in &members {
            let phone = PhoneNumber::parse(&m.phone)?;
            if !phones.contains(&phone) {
                phones.push(phone);
            }
        }
        let mut stale = Vec::new();
        let mut fresh = Vec::new();
        for phone in phones {
            let wanted = if phone == self.identity.phone {
                self.own_trusted_devices().await?
            } else {
                let devices = self.trusted_devices(&phone, Some(&chat.group_id)).await?;
                // An identity change not yet accepted keeps the chat as it is.
                match self.pinned(&phone).await? {
                    Some(c) if c.pending.is_none() => devices,
                    _ => continue,
                }
            };
            let group = self.active_group(chat)?;
            for m in group.members() {
                let id = mls::identity_of(&m.credential)?;
                let listed = wanted.account == id.account
                    && wanted.devices.iter().any(|(d, k)| {
                        *d == id.device && k.as_slice() == m.signature_key.as_slice()
                    });
                if id.phone == phone && id.device != self.identity.device && !listed {
                    stale.push(m.index);
                }
            }
            let new: Vec<(DeviceId, Vec<u8>)> = wanted
                .devices
                .iter()
                .filter(|(d, _)| !members.iter().any(|m| m.device == *d))
                .cloned()
                .collect();
            if !new.is_empty() {
                fresh.push(AccountDevices {
                    devices: new,
                    ..wanted
                });
            }
        }
        if !stale.is_empty() {
            self.remove_leaves(chat, &stale).await?;
        }
        if !fresh.is_empty() {
            self.add_devices(chat, &fresh).await?;
        }
        if !stale.is_empty() && fresh.is_empty() {
            self.persist(Changes::default()).await?;
        }
        Ok(())
    }

    /// Leaves a group: proposes this device's removal; another member commits it.
    pub async fn leave(&mut self, chat: &ChatRecord) -> Result<()> {
        let _held = self.hold().await?;
        let recipients = self.recipients(self.active_group(chat)?)?;
        let (provider, signer) = (&self.provider, &self.identity.signer);
        let group = self
            .groups
            .get_mut(&chat.group_id)
            .ok_or(ClientError::NotAMember)?;
        let proposal = group
            .leave_group(provider, signer)
            .map_err(ClientError::mls)?;
        self.send_envelope(
            EnvelopeId::random(),
            recipients,
            proposal
                .tls_serialize_detached()
                .map_err(ClientError::mls)?,
        )
        .await?;
        self.forget_group(&chat.group_id)?;
        let mut left = chat.clone();
        left.state = ChatState::Left;
        let messages = vec![system_message(&chat.group_id, "You left this chat.".into())];
        self.persist(Changes {
            chats: vec![left],
            messages,
            ..Default::default()
        })
        .await
    }

    /// Fetches, processes and acknowledges everything waiting, then tops up
    /// key packages.
    pub async fn sync(&mut self) -> Result<SyncReport> {
        let _held = self.hold().await?;
        self.pin_service_key_if_missing().await?;
        // What waits in the outbox goes first, in the order it was written.
        let flushed = self.flush_outbox().await?;
        let mut report = SyncReport {
            sent: flushed.sent.len(),
            queued: flushed.waiting,
            ..Default::default()
        };
        loop {
            let page = self.api.fetch().await?;
            if page.envelopes.is_empty() {
                break;
            }
            let mut changes = Changes::default();
            let mut acks = Vec::new();
            for envelope in page.envelopes {
                acks.push(envelope.id);
                if self.store.is_processed(envelope.id).await?
                    || changes.processed.contains(&envelope.id)
                {
                    continue;
                }
                self.process(envelope.kind, envelope.payload.as_slice(), &mut changes)
                    .await?;
                changes.processed.push(envelope.id);
                report.processed += 1;
            }
            report.messages.extend(changes.messages.iter().cloned());
            // Stored first, acknowledged second: a crash in between means a
            // redelivery, which the processed list drops.
            self.persist(changes).await?;
            self.api.ack(acks).await?;
            if !page.more {
                break;
            }
        }
        // Watch this account's own device list: a list this device's
        // identity did not sign (an SMS reset by someone else) is shown.
        self.own_trusted_devices().await?;
        self.top_up_key_packages().await?;
        Ok(report)
    }

    /// Processes one envelope's payload into `changes`. Bad input becomes a
    /// visible notice, never an error that would block the mailbox.
    async fn process(
        &mut self,
        kind: EnvelopeKind,
        payload: &[u8],
        changes: &mut Changes,
    ) -> Result<()> {
        if kind == EnvelopeKind::ServerNotice {
            return self.service_notice(payload, changes).await;
        }
        let Ok(message) = MlsMessageIn::tls_deserialize_exact(payload) else {
            self.ensure_notices_chat(changes).await?;
            changes.messages.push(system_message(
                NOTICES_CHAT,
                "A message that is not valid MLS was dropped.".into(),
            ));
            return Ok(());
        };
        match message.extract() {
            MlsMessageBodyIn::Welcome(welcome) => self.join(welcome, changes).await,
            MlsMessageBodyIn::PrivateMessage(m) => self.handle_protocol(m.into(), changes).await,
            MlsMessageBodyIn::PublicMessage(m) => self.handle_protocol(m.into(), changes).await,
            _ => Ok(()),
        }
    }

    async fn join(&mut self, welcome: Welcome, changes: &mut Changes) -> Result<()> {
        let staged =
            match StagedWelcome::build_from_welcome(&self.provider, &mls::join_config(), welcome)
                .and_then(|builder| {
                    let group_id = builder
                        .processed_welcome()
                        .unverified_group_info()
                        .group_id()
                        .clone();
                    // A chat this device was removed from or left may still have
                    // state from an older profile version (removal now deletes it):
                    // being added back replaces it. A Welcome into a chat this
                    // device is still in is refused by OpenMLS as a duplicate.
                    if self.groups.contains_key(group_id.as_slice()) {
                        builder.build()
                    } else {
                        builder.replace_old_group().build()
                    }
                }) {
                Ok(staged) => staged,
                Err(_) => {
                    // A Welcome for a key package this device no longer has (or a
                    // forged one) cannot be used; say so instead of failing.
                    self.ensure_notices_chat(changes).await?;
                    changes.messages.push(system_message(
                        NOTICES_CHAT,
                        "An invitation to a chat could not be opened and was dropped.".into(),
                    ));
                    return Ok(());
                }
            };
        let inviter = staged
            .welcome_sender()
            .ok()
            .and_then(|leaf| mls::identity_of(leaf.credential()).ok());
        // Every member of the whole ratchet tree must be vouched for by
        // its account's identity key before this device joins: a ghost in
        // the tree would read everything said here.
        let leaves: Vec<(Credential, Vec<u8>)> = staged
            .members()
            .map(|m| (m.credential.clone(), m.signature_key.clone()))
            .collect();
        for (credential, key) in &leaves {
            match self.vouch(credential, key).await {
                Ok(_) => {}
                Err(why) => {
                    self.ensure_notices_chat(changes).await?;
                    let from = inviter
                        .as_ref()
                        .map(|i| i.phone.to_string())
                        .unwrap_or_else(|| "someone".into());
                    changes.messages.push(system_message(
                        NOTICES_CHAT,
                        format!("⚠ An invitation to a chat from {from} was refused: {why}."),
                    ));
                    return Ok(());
                }
            }
        }
        let group = staged
            .into_group(&self.provider)
            .map_err(ClientError::mls)?;
        let group_id = group.group_id().as_slice().to_vec();
        let previous = self.chat_record(&group_id, changes).await?;
        let inviter_name = inviter
            .as_ref()
            .map(|i| i.phone.to_string())
            .unwrap_or_else(|| "someone".into());
        let back = previous.is_some();
        changes.chats.push(match previous {
            // Added back to a chat this device had left or was removed
            // from: the same chat, with its history, active again.
            Some(chat) => ChatRecord {
                state: ChatState::Active,
                ..chat
            },
            None => ChatRecord {
                group_id: group_id.clone(),
                kind: ChatKind::Group,
                name: format!("chat from {inviter_name}"),
                peer: inviter
                    .as_ref()
                    .map(|i| i.account)
                    .filter(|a| *a != self.identity.account),
                state: ChatState::Active,
                created_at: now_ms(),
            },
        });
        changes.messages.push(system_message(
            &group_id,
            if back {
                format!("{inviter_name} added you back to this chat.")
            } else {
                format!("{inviter_name} added you to this chat.")
            },
        ));
        self.groups.insert(group_id, group);
        Ok(())
    }

    fn pending_chat(&self, group_id: &[u8], changes: &Changes) -> Option<ChatRecord> {
        changes
            .chats
            .iter()
            .rev()
            .find(|c| c.group_id == group_id)
            .cloned()
    }

    async fn chat_record(&self, group_id: &[u8], changes: &Changes) -> Result<Option<ChatRecord>> {
        if let Some(chat) = self.pending_chat(group_id, changes) {
            return Ok(Some(chat));
        }
        Ok(self
            .store
            .chats()
            .await?
            .into_iter()
            .find(|c| c.group_id == group_id))
    }

    async fn handle_protocol(
        &mut self,
        message: ProtocolMessage,
        changes: &mut Changes,
    ) -> Result<()> {
        let group_id = message.group_id().as_slice().to_vec();
        let Some(group) = self.groups.get_mut(&group_id) else {
            // A chat this device left or never joined: nothing to do.
            return Ok(());
        };
        let processed = match group.process_message(&self.provider, message) {
            Ok(p) => p,
            Err(_) => {
                changes.messages.push(system_message(
                    &group_id,
                    "⚠ A message could not be decrypted or verified and was dropped \
                     (tampered, replayed, or not from a member)."
                        .into(),
                ));
                return Ok(());
            }
        };
        let sender = mls::identity_of(processed.credential())?;
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                let Ok(body) = serde_json::from_slice::<AppMessage>(&app.into_bytes()) else {
                    changes.messages.push(system_message(
                        &group_id,
                        "A message in an unknown format was dropped.".into(),
                    ));
                    return Ok(());
                };
                self.apply_app_message(&group_id, sender, body, changes)
                    .await?;
            }
            ProcessedMessageContent::ProposalMessage(proposal) => {
                let group = self
                    .groups
                    .get_mut(&group_id)
                    .ok_or(ClientError::NotAMember)?;
                group
                    .store_pending_proposal(self.provider.storage(), *proposal)
                    .map_err(ClientError::mls)?;
                self.commit_if_designated(&group_id, changes).await?;
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                self.apply_commit(&group_id, &sender, *staged, changes)
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }

    async fn apply_app_message(
        &mut self,
        group_id: &[u8],
        sender: MemberIdentity,
        body: AppMessage,
        changes: &mut Changes,
    ) -> Result<()> {
        match body {
            AppMessage::Text { id, text, sent_at } => changes.messages.push(MessageRecord {
                message_id: id,
                group_id: group_id.to_vec(),
                author: Author::Member {
                    me: sender.account == self.identity.account,
                    account: sender.account,
                    device: sender.device,
                    phone: sender.phone.to_string(),
                },
                text,
                sent_at,
                received_at: now_ms(),
                delivery: Delivery::Sent,
            }),
            AppMessage::ChatInfo { kind, name } => {
                if let Some(mut chat) = self.chat_record(group_id, changes).await? {
                    chat.kind = kind;
                    if kind == ChatKind::Direct {
                        if sender.account != self.identity.account {
                            chat.name = sender.phone.to_string();
                            chat.peer = Some(sender.account);
                        }
                    } else if !name.trim().is_empty() {
                        chat.name = name.chars().take(100).collect();
                    }
                    changes.chats.push(chat);
                }
            }
        }
        Ok(())
    }

    /// When a member proposes to leave, the remaining member with the lowest
    /// leaf index commits the proposal, so exactly one commit is made.
    async fn commit_if_designated(&mut self, group_id: &[u8], changes: &mut Changes) -> Result<()> {
        let group = self.groups.get(group_id).ok_or(ClientError::NotAMember)?;
        let leaving: BTreeSet<u32> = group
            .pending_proposals()
            .filter_map(|p| match p.proposal() {
                Proposal::Remove(r) => Some(r.removed().u32()),
                _ => None,
            })
            .collect();
        let designated = group
            .members()
            .map(|m| m.index.u32())
            .find(|i| !leaving.contains(i));
        if designated != Some(group.own_leaf_index().u32()) {
            return Ok(());
        }
        let recipients = self.recipients(group)?;
        let (provider, signer) = (&self.provider, &self.identity.signer);
        let group = self
            .groups
            .get_mut(group_id)
            .ok_or(ClientError::NotAMember)?;
        let (commit, _, _) = group
            .commit_to_pending_proposals(provider, signer)
            .map_err(ClientError::mls)?;
        self.send_commit(group_id, recipients, commit).await?;
        changes
            .messages
            .push(system_message(group_id, "A member left.".into()));
        Ok(())
    }

    async fn apply_commit(
        &mut self,
        group_id: &[u8],
        sender: &MemberIdentity,
        staged: StagedCommit,
        changes: &mut Changes,
    ) -> Result<()> {
        // Every leaf the commit brings in or changes must be vouched for by
        // its account's identity key. A commit that fails is not merged:
        // the chat stops here, loudly, rather than let a ghost read on.
        let mut added = Vec::new();
        let mut changed_leaves: Vec<(Credential, Vec<u8>)> = staged
            .update_proposals()
            .map(|u| {
                let leaf = u.update_proposal().leaf_node();
                (
                    leaf.credential().clone(),
                    leaf.signature_key().as_slice().to_vec(),
                )
            })
            .collect();
        if let Some(leaf) = staged.update_path_leaf_node() {
            changed_leaves.push((
                leaf.credential().clone(),
                leaf.signature_key().as_slice().to_vec(),
            ));
        }
        let new_leaves: Vec<(Credential, Vec<u8>)> = staged
            .add_proposals()
            .map(|add| {
                let leaf = add.add_proposal().key_package().leaf_node();
                (
                    leaf.credential().clone(),
                    leaf.signature_key().as_slice().to_vec(),
                )
            })
            .collect();
        for (i, (credential, key)) in new_leaves.iter().chain(&changed_leaves).enumerate() {
            match self.vouch(credential, key).await {
                Ok(id) if i < new_leaves.len() => added.push(ContactDevice {
                    account_id: id.account,
                    device_id: id.device,
                    signature_key: key.clone(),
                    phone: id.phone.to_string(),
                }),
                Ok(_) => {}
                Err(why) => {
                    changes.messages.push(system_message(
                        group_id,
                        format!(
                            "⚠ A change to this chat by {} was refused: {why}. Nothing more \
                             can be read or sent here until the chat is created anew.",
                            sender.phone
                        ),
                    ));
                    return Ok(());
                }
            }
        }
        let group = self.groups.get(group_id).ok_or(ClientError::NotAMember)?;
        let mut removed = BTreeSet::new();
        for remove in staged.remove_proposals() {
            if let Some(member) = group.member_at(remove.remove_proposal().removed()) {
                removed.insert(mls::identity_of(&member.credential)?.phone.to_string());
            }
        }
        let self_removed = staged.self_removed();
        let group = self
            .groups
            .get_mut(group_id)
            .ok_or(ClientError::NotAMember)?;
        group
            .merge_staged_commit(&self.provider, staged)
            .map_err(ClientError::mls)?;
        let who = if sender.account == self.identity.account {
            "You".to_owned()
        } else {
            sender.phone.to_string()
        };
        for phone in BTreeSet::from_iter(added.iter().map(|a| a.phone.clone())) {
            changes
                .messages
                .push(system_message(group_id, format!("{who} added {phone}.")));
        }
        for phone in removed {
            if phone != sender.phone.to_string() {
                changes
                    .messages
                    .push(system_message(group_id, format!("{who} removed {phone}.")));
            }
        }
        if self_removed {
            self.forget_group(group_id)?;
            if let Some(mut chat) = self.chat_record(group_id, changes).await? {
                if chat.state == ChatState::Active {
                    chat.state = ChatState::Removed;
                    changes.messages.push(system_message(
                        group_id,
                        format!("{who} removed you from this chat."),
                    ));
                }
                changes.chats.push(chat);
            }
        }
        Ok(())
    }

    /// Deletes a group's MLS state once this device is out of it: its
    /// secrets must not outlive membership, and a device added back later
    /// must be able to join afresh.
    fn forget_group(&mut self, group_id: &[u8]) -> Result<()> {
        if let Some(mut group) = self.groups.remove(group_id) {
            group
                .delete(self.provider.storage())
                .map_err(ClientError::mls)?;
        }
        Ok(())
    }

    /// Closes the profile database.
    pub async fn close(self) {
        self.store.close().await;
    }

    /// The profile directory.
    pub fn profile_dir(&self) -> &Path {
        self.store.dir()
    }

    /// The relay's WebSocket URL and this device's token, for live delivery.
    pub fn ws_endpoint(&self) -> (String, &AuthToken) {
        (
            format!("{}/v1/ws", self.identity.server.replacen("http", "ws", 1)),
            &self.identity.token,
        )
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
