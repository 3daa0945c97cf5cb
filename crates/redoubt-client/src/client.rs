//! The client: a profile, its identity on one relay, its MLS groups.
//!
//! Several processes may use one profile at once (`redoubt chat` in one
//! terminal, `redoubt send` in another). Every public operation that reads
//! or changes MLS state holds the profile lock for its duration and first
//! reloads the state if another process wrote since ([`Client::hold`]), so
//! no two processes ever encrypt from, or write back, diverging copies.

mod chats;
mod commits;
mod incoming;
mod kt;
mod link;
mod notices;
pub use notices::verify_notice;
mod outbox;
mod transcript;
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
use redoubt_proto::{
    AccountId, AuthToken, DeviceId, EnvelopeId, KeyPackageRef, PhoneNumber, VerificationSession,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::api::Api;
use crate::error::{ClientError, Result};
use crate::identity::{IdentityKey, TrustedList};
use crate::lock::{LockGuard, ProfileLock};
use crate::mls::{self, Provider};
use crate::model::*;
use crate::seal::KdfParams;
use crate::store::{Changes, Parked, ProfileStore};

/// The sealed document holding how many one-time key packages the relay
/// held for this device at its last look.
const KEY_PACKAGES_DOC: &str = "key-packages";

/// Claims between two looks beyond which the user is warned of draining,
/// if more than half of what was published: a person is rarely added to
/// that many chats between two syncs.
const DRAIN_WARNING: u64 = 10;

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
    /// How often this account's own number is checked in the
    /// key-transparency directory (on sync).
    pub kt_monitor_interval: Duration,
    /// How long a message from an epoch this device has not reached is
    /// kept, waiting for the commit that leads there, before it is
    /// reported as lost.
    pub future_epoch_wait: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            kdf: KdfParams::default(),
            key_packages: 50,
            local_address: None,
            service_key: None,
            lock_wait: Duration::from_secs(30),
            kt_monitor_interval: Duration::from_secs(60),
            future_epoch_wait: Duration::from_secs(3600),
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
    /// Directory epochs other members' messages carried, compared with
    /// this device's view once the mailbox is processed.
    sightings: Vec<kt::Sighting>,
    /// Each chat's transcript state, while an operation uses it.
    transcript: Option<transcript::TranscriptDoc>,
    /// (group, epoch) positions where this device's commit was refused as
    /// stale (see `commits.rs`).
    stale_seen: Vec<(Vec<u8>, u64)>,
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

/// A verification code asked for: where, for which number, and the
/// request's session, which the code verifies with.
#[derive(Debug, Clone)]
pub struct CodeRequest {
    /// The relay's address.
    pub server: String,
    /// The number the code went to.
    pub phone: PhoneNumber,
    /// The request's session.
    pub session: VerificationSession,
}

impl Client {
    /// Asks the relay to send a verification code to `phone`. The answer
    /// holds the request's session: the code verifies only with it.
    pub async fn request_code(
        server: &str,
        phone: &PhoneNumber,
        config: &ClientConfig,
    ) -> Result<CodeRequest> {
        let answer = Api::bound(server, config.local_address)
            .request_code(phone)
            .await?;
        Ok(CodeRequest {
            server: server.to_owned(),
            phone: phone.clone(),
            session: answer.session,
        })
    }

    /// Registers this device with `code`, the one sent for `request`,
    /// creates the profile in `dir` and uploads key packages.
    pub async fn register(
        dir: &Path,
        passphrase: &str,
        request: &CodeRequest,
        code: &str,
        device_name: &str,
        config: ClientConfig,
    ) -> Result<Self> {
        let CodeRequest {
            server,
            phone,
            session,
        } = request;
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
                session: session.clone(),
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
        client.pin_directory().await?;
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
            sightings: Vec::new(),
            transcript: None,
            stale_seen: Vec::new(),
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
            sightings: Vec::new(),
            transcript: None,
            stale_seen: Vec::new(),
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
            // Read afresh by each operation: another process may have
            // written it since (an operation that failed half-way may also
            // have left a copy it never stored).
            self.transcript = None;
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

    /// Makes the next operation reload identity and MLS state from the
    /// store, dropping changes made in memory that were never stored.
    fn forget_unstored_state(&self) {
        self.generation.store(-1, Ordering::SeqCst);
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
        // Issue 16, item 2: one caller could drain a device's one-time key
        // packages in a fraction of a second. The relay now limits claims;
        // the device also says when far more were claimed since it last
        // looked than a person is added to chats in that time.
        let published = self
            .store
            .document(KEY_PACKAGES_DOC)
            .await?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(u64::from_be_bytes);
        if let Some(published) = published {
            let claimed = published.saturating_sub(count.remaining);
            if claimed >= (published / 2).max(DRAIN_WARNING) {
                self.announcements.push(format!(
                    "⚠ {claimed} of this device's key packages were claimed since it last \
                     checked. Each new chat with this device uses one: if you were not added \
                     to about that many chats, someone is draining them (the relay limits \
                     how fast), and new chats fall back to the device's last-resort package."
                ));
            }
        }
        if count.remaining >= count.low_watermark && count.last_resort {
            if published != Some(count.remaining) {
                self.note_key_packages(count.remaining).await?;
            }
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
        let one_time = uploads.iter().filter(|u| !u.last_resort).count() as u64;
        for batch in uploads.chunks(100) {
            self.api.upload_key_packages(batch.to_vec()).await?;
        }
        self.note_key_packages(count.remaining + one_time).await
    }

    /// Remembers how many one-time key packages the relay holds for this
    /// device now, to count the claims by the next look.
    async fn note_key_packages(&self, published: u64) -> Result<()> {
        self.persist(Changes {
            documents: vec![(KEY_PACKAGES_DOC, published.to_be_bytes().to_vec())],
            ..Default::default()
        })
        .await
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

    /// Who `device` is, if it is a member of the chat now.
    fn member_identity(&self, group_id: &[u8], device: DeviceId) -> Option<MemberIdentity> {
        self.groups.get(group_id)?.members().find_map(|m| {
            mls::identity_of(&m.credential)
                .ok()
                .filter(|id| id.device == device)
        })
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
