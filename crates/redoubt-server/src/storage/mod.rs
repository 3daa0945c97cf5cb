//! Durable state behind one trait, [`Store`], with one implementation per
//! backend. The relay logic never writes SQL; each backend keeps the same
//! promises, which one shared test suite (`tests/it/storage.rs`) checks
//! against every backend:
//!
//! - every method that changes several rows does so atomically;
//! - a key package is handed out at most once (last-resort ones excepted);
//! - an envelope is queued for all of its recipients or for none;
//! - an envelope leaves a mailbox only when that device acknowledges it or
//!   it expires; its bytes are deleted once no mailbox references them.

use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;
use redoubt_proto::api::EnvelopeKind;
use redoubt_proto::{AccountId, DeviceId, EnvelopeId, KeyPackageRef, PhoneNumber, Timestamp};

pub(crate) mod codec;
pub mod desk_store;
pub mod kt_store;
pub mod legal_view;
pub mod postgres;
pub mod sqlite;

/// A storage failure. None of its messages contain stored values.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// SQLite reported an error on the hot path's own connections.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Applying schema migrations failed.
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// The database file could not be created or its permissions set.
    #[error("database file: {0}")]
    File(#[from] std::io::Error),
    /// A stored row does not decode (corruption or a schema bug).
    #[error("stored data is malformed: {0}")]
    Corrupt(&'static str),
    /// The store's writer task has stopped (the server is shutting down).
    #[error("the store is shut down")]
    Stopped,
}

/// Beginning a transaction that will write.
///
/// On SQLite it takes the write lock at once (`BEGIN IMMEDIATE`): the hot
/// path's writer thread is a second connection, and a deferred transaction
/// that read first could not write after the other committed in between
/// (`SQLITE_BUSY_SNAPSHOT`, which no busy timeout retries). Waiting for the
/// lock at the start is retried under the busy timeout. PostgreSQL needs no
/// such thing.
pub(crate) trait BeginWrite {
    /// The database.
    type Db: sqlx::Database;
    /// Begins the transaction.
    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>>
           + Send;
}

impl BeginWrite for sqlx::SqlitePool {
    type Db = sqlx::Sqlite;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>>
           + Send {
        self.begin_with("BEGIN IMMEDIATE")
    }
}

impl BeginWrite for sqlx::PgPool {
    type Db = sqlx::Postgres;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>>
           + Send {
        self.begin()
    }
}

/// A SHA-256 digest used as a lookup key (tokens, codes, phone numbers).
pub type Digest = [u8; 32];

/// A request to issue a verification code, with the limits to enforce.
#[derive(Debug, Clone)]
pub struct CodeIssue {
    /// Hash of the new session's secret: the key of the pending code.
    pub session_hash: Digest,
    /// Keyed hash of the phone number ([`PhoneKeyer::key`]).
    pub phone_key: Digest,
    /// Hash of the new code.
    pub code_hash: Digest,
    /// Now.
    pub now: Timestamp,
    /// When the code stops being valid.
    pub expires_at: Timestamp,
    /// The limits the request counts against (per number, per address,
    /// the SMS budgets), as [`Store::rate_limit`] counts them: all or
    /// nothing, in the transaction that stores the code, so a refused
    /// request neither counts nor replaces a code already pending.
    pub limits: Vec<RateKey>,
}

/// The result of [`Store::issue_code`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssueOutcome {
    /// The code is stored (replacing any earlier one for the number).
    Issued,
    /// A limit was hit; nothing was stored.
    RateLimited {
        /// When a request would next be allowed.
        retry_after: Duration,
    },
}

/// A new device to register.
#[derive(Debug, Clone)]
pub struct NewDevice {
    /// Its id.
    pub id: DeviceId,
    /// Its display name.
    pub name: String,
    /// Its Ed25519 public key.
    pub signature_key: Vec<u8>,
    /// Hash of its bearer token.
    pub token_hash: Digest,
}

/// A verification attempt.
#[derive(Debug, Clone)]
pub struct Verification {
    /// Hash of the session's secret, the key of the pending code.
    pub session_hash: Digest,
    /// The number being verified.
    pub phone: PhoneNumber,
    /// Its keyed hash: the session's code must be for this number.
    pub phone_key: Digest,
    /// Hash of the code the client sent.
    pub code_hash: Digest,
    /// Now.
    pub now: Timestamp,
    /// Wrong guesses allowed.
    pub max_attempts: u32,
    /// The id to give the account if it is new.
    pub new_account_id: AccountId,
    /// The device to register on success.
    pub device: NewDevice,
}

/// The result of [`Store::verify_code`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyOutcome {
    /// The code matched; the device is registered.
    Registered {
        /// The account.
        account_id: AccountId,
        /// Whether it was created now.
        new_account: bool,
    },
    /// No code is pending.
    NoCodePending,
    /// Wrong code; one attempt used.
    Incorrect,
    /// The code expired (and was deleted).
    Expired,
    /// The attempts are used up.
    AttemptsExceeded,
}

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAuth {
    /// The account.
    pub account_id: AccountId,
    /// The device.
    pub device_id: DeviceId,
    /// The region of the account's phone number (ISO 3166-1 alpha-2), for
    /// market policy; `None` for numbers with no single region.
    pub region: Option<String>,
}

/// What a token hash resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenStatus {
    /// A live device.
    Active(DeviceAuth),
    /// A device that was revoked.
    Revoked,
    /// Nothing.
    Unknown,
}

/// A stored device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Its id.
    pub device_id: DeviceId,
    /// Its display name.
    pub name: String,
    /// Its Ed25519 public key.
    pub signature_key: Vec<u8>,
    /// When it registered.
    pub created_at: Timestamp,
}

/// A key package to store.
#[derive(Debug, Clone)]
pub struct NewKeyPackage {
    /// The client's reference.
    pub id: KeyPackageRef,
    /// The serialized KeyPackage.
    pub data: Vec<u8>,
    /// Whether it is the device's last-resort package.
    pub last_resort: bool,
}

/// How many key packages a device has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPackageCount {
    /// One-time packages left.
    pub remaining: u64,
    /// Whether a last-resort package is stored.
    pub last_resort: bool,
}

/// The result of [`Store::add_key_packages`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddKeyPackagesOutcome {
    /// Stored (references already stored for the device are skipped).
    Stored(KeyPackageCount),
    /// Storing them would exceed the per-device limit; nothing was stored.
    LimitExceeded,
}

/// A claimed key package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedKeyPackage {
    /// The device it belongs to.
    pub device_id: DeviceId,
    /// Its reference.
    pub id: KeyPackageRef,
    /// The serialized KeyPackage.
    pub data: Vec<u8>,
    /// Whether it was the last-resort package.
    pub last_resort: bool,
}

/// The result of [`Store::claim_key_packages`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// One package per requested device, in request order.
    Claimed(Vec<ClaimedKeyPackage>),
    /// These devices do not exist or were revoked; nothing was claimed.
    UnknownDevices(Vec<DeviceId>),
    /// These devices have nothing to claim; nothing was claimed.
    Exhausted(Vec<DeviceId>),
}

/// An envelope to queue.
#[derive(Debug, Clone)]
pub struct NewEnvelope {
    /// The sender's id for it.
    pub id: EnvelopeId,
    /// What it carries.
    pub kind: EnvelopeKind,
    /// The opaque bytes.
    pub payload: Vec<u8>,
    /// Recipient devices, without duplicates.
    pub recipients: Vec<DeviceId>,
    /// Now.
    pub now: Timestamp,
    /// When it expires if never acknowledged.
    pub expires_at: Timestamp,
    /// The per-device queue limit.
    pub max_queued: u64,
    /// Set for an MLS commit: accepted only if no other commit to its
    /// group was accepted from its epoch (or a later one).
    pub commit: Option<CommitPosition>,
}

/// Which group a commit changes and from which epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitPosition {
    /// SHA-256 of the MLS group id.
    pub group: [u8; 32],
    /// The epoch it was made in.
    pub epoch: u64,
}

impl CommitPosition {
    /// The epoch as stored, and the one after it.
    pub(crate) fn columns(&self) -> (i64, i64) {
        let epoch = i64::try_from(self.epoch).unwrap_or(i64::MAX);
        (epoch, epoch.saturating_add(1))
    }
}

/// Moves a group's commit position past `$commit` (a `&CommitPosition`)
/// on connection `$conn` unless a commit was already accepted from its
/// epoch; evaluates to true if it moved. One statement for both backends:
/// the upsert's condition reads the row under its lock.
macro_rules! advance_commit_position {
    ($conn:expr, $commit:expr, $now:expr) => {{
        let (epoch, next) = $commit.columns();
        sqlx::query($crate::storage::ADVANCE_COMMIT_POSITION)
            .bind($commit.group.to_vec())
            .bind(next)
            .bind(ms($now))
            .bind(epoch)
            .fetch_optional($conn)
            .await?
            .is_some()
    }};
}
pub(crate) use advance_commit_position;

/// The statement behind [`advance_commit_position`].
pub(crate) const ADVANCE_COMMIT_POSITION: &str =
    "INSERT INTO commit_positions (group_hash, next_epoch, updated_at) VALUES ($1, $2, $3)
     ON CONFLICT (group_hash) DO UPDATE SET next_epoch = excluded.next_epoch,
         updated_at = excluded.updated_at
     WHERE commit_positions.next_epoch <= $4
     RETURNING next_epoch";

/// Jobs one group commit (or one pass of mailbox reads) takes at most, on
/// every backend.
pub(crate) const MAX_BATCH: usize = 256;

/// A hot-path write, as each backend's group-commit writer takes it.
pub(crate) enum Write {
    /// Queue an envelope.
    Enqueue(NewEnvelope),
    /// Acknowledge envelopes for a device.
    Ack(DeviceId, Vec<EnvelopeId>),
}

/// What a [`Write`] did.
pub(crate) enum Written {
    /// The enqueue's outcome.
    Enqueued(EnqueueOutcome),
    /// How many mailbox entries an ack removed.
    Acked(u64),
}

impl Written {
    /// The outcome of an enqueue.
    pub(crate) fn enqueued(self) -> Result<EnqueueOutcome, StoreError> {
        match self {
            Self::Enqueued(outcome) => Ok(outcome),
            Self::Acked(_) => Err(StoreError::Corrupt("the writer answered another job")),
        }
    }

    /// The count of an ack.
    pub(crate) fn acked(self) -> Result<u64, StoreError> {
        match self {
            Self::Acked(n) => Ok(n),
            Self::Enqueued(_) => Err(StoreError::Corrupt("the writer answered another job")),
        }
    }
}

/// An envelope as its transaction committed, with its place in each
/// mailbox it joined.
#[derive(Debug, Clone)]
pub struct Committed {
    /// Its id.
    pub id: EnvelopeId,
    /// What it carries.
    pub kind: EnvelopeKind,
    /// When it was accepted.
    pub received_at: Timestamp,
    /// The bytes, shared by every mailbox's copy.
    pub payload: std::sync::Arc<Vec<u8>>,
    /// Each recipient and the envelope's sequence number in its mailbox.
    pub mailboxes: Vec<(DeviceId, i64)>,
}

impl Committed {
    /// The envelope as a mailbox read at `seq` would have returned it.
    pub fn queued(&self, seq: i64) -> QueuedEnvelope {
        QueuedEnvelope {
            seq,
            id: self.id,
            kind: self.kind,
            received_at: self.received_at,
            payload: self.payload.as_ref().clone(),
        }
    }
}

/// Where a backend whose commits are totally ordered (one writer) hands
/// each queued envelope right after its commit, in commit order, so that a
/// connected device is pushed what was just written without reading it
/// back. Called on the writer's thread: it must not block.
pub trait CommitFeed: Send + Sync + 'static {
    /// These envelopes committed, in this order, before any later commit.
    fn committed(&self, envelopes: Vec<Committed>);
}

/// The result of [`Store::enqueue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnqueueOutcome {
    /// Queued for every recipient.
    Queued,
    /// The same id and bytes were accepted before; nothing changed.
    Duplicate,
    /// The id was accepted before with other bytes; nothing changed.
    Conflict,
    /// These recipients do not exist or were revoked; nothing was queued.
    UnknownRecipients(Vec<DeviceId>),
    /// Queued for every recipient but these, whose mailboxes are full.
    Partial(Vec<DeviceId>),
    /// Every recipient's mailbox is full; nothing was queued.
    MailboxFull(Vec<DeviceId>),
    /// Another commit to the group was accepted from this epoch already;
    /// nothing was queued.
    StaleCommit,
}

/// An envelope waiting in a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEnvelope {
    /// Its place in the mailbox: larger for later envelopes of a device.
    /// With one writer (SQLite) larger also means committed later.
    pub seq: i64,
    /// Its id.
    pub id: EnvelopeId,
    /// What it carries.
    pub kind: EnvelopeKind,
    /// When it was accepted.
    pub received_at: Timestamp,
    /// The bytes.
    pub payload: Vec<u8>,
}

/// One sighting of an account at an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpObservation {
    /// The account.
    pub account_id: AccountId,
    /// The client's address.
    pub ip: IpAddr,
    /// The client's source port.
    pub port: u16,
    /// When.
    pub at: Timestamp,
}

/// A row of the IP-address log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpLogEntry {
    /// The client's address.
    pub ip: IpAddr,
    /// The client's source port.
    pub port: u16,
    /// First sighting.
    pub first_seen: Timestamp,
    /// Last sighting.
    pub last_seen: Timestamp,
}

/// What a maintenance pass deletes.
#[derive(Debug, Clone, Copy)]
pub struct PurgeCutoffs {
    /// Now: envelopes and codes that expired before it go.
    pub now: Timestamp,
    /// IP-log rows last seen before this go.
    pub ip_log_before: Timestamp,
    /// Envelope receipts older than this go.
    pub receipts_before: Timestamp,
    /// Commit positions of groups with no commit since this go.
    pub commit_positions_before: Timestamp,
}

/// How many rows a maintenance pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeCounts {
    /// Expired envelopes.
    pub envelopes: u64,
    /// IP-log rows past retention.
    pub ip_log: u64,
    /// Expired codes and links.
    pub codes: u64,
    /// Old envelope receipts and commit positions.
    pub receipts: u64,
}

/// What leaving a market deleted: counts only, for the audit log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RegionPurgeCounts {
    /// Accounts deleted.
    pub accounts: u64,
    /// Devices (and so tokens) deleted.
    pub devices: u64,
    /// Queued envelope deliveries deleted.
    pub queued: u64,
    /// Key packages deleted.
    pub key_packages: u64,
    /// IP-log rows deleted.
    pub ip_log: u64,
}

/// The longest window a rate limit may have: older events are purged.
pub const MAX_RATE_WINDOW: Duration = Duration::from_secs(86_400);

/// One rate limit to count an event against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateKey {
    /// What is limited, as a keyed hash ([`PhoneKeyer::bucket`]).
    pub key: Digest,
    /// Events allowed in the window.
    pub max: u32,
    /// The sliding window (at most [`MAX_RATE_WINDOW`]).
    pub window: Duration,
    /// Events this request counts for.
    pub cost: u32,
}

/// Keys phone numbers for the tables that must find a number again but must
/// not give it away (pending codes and the per-number request limit), and
/// rate-limit buckets likewise: an HMAC-SHA256 under a secret derived from
/// the service key.
///
/// An unkeyed hash of a phone number is no protection: the space of numbers
/// is small, and 100,000 were reversed in 0.09 s (issue 16, item 10). With
/// the key, the database alone says nothing; every node derives the same
/// key from the service key it already holds.
#[derive(Clone)]
pub struct PhoneKeyer([u8; 32]);

impl PhoneKeyer {
    /// A keyer with this secret.
    pub fn new(secret: [u8; 32]) -> Self {
        Self(secret)
    }

    /// The key of one number.
    pub fn key(&self, phone: &PhoneNumber) -> Digest {
        self.mac(&[b"redoubt/phone-key/v2\0", phone.e164().as_bytes()])
    }

    /// HMAC-SHA256 under the secret over `parts`, one after another.
    fn mac(&self, parts: &[&[u8]]) -> Digest {
        use hmac::Mac as _;
        // HMAC takes a key of any length; this cannot fail.
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.0)
            .expect("HMAC accepts any key length");
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// The key of a rate-limit bucket: `kind` (what is limited, such as
    /// "lookup-account") and the id of the one limited, keyed like phone
    /// numbers so that the table of events names nobody.
    pub fn bucket(&self, kind: &str, id: &[u8]) -> Digest {
        self.mac(&[b"redoubt/rate-bucket/v1\0", kind.as_bytes(), b"\0", id])
    }
}

impl std::fmt::Debug for PhoneKeyer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PhoneKeyer(<secret>)")
    }
}

/// The result of [`Store::put_device_list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceListOutcome {
    /// Stored as the account's latest list.
    Stored,
    /// Not the next version; nothing changed.
    Conflict {
        /// The latest version stored (0 when there is none).
        latest: u64,
    },
}

/// One of the four messages of a device link, each written once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkSlot {
    /// New device to existing device: its key-exchange message and key.
    Offer,
    /// Existing to new: the other key-exchange message and a confirmation.
    Answer,
    /// New to existing: the new device's confirmation.
    Confirm,
    /// Existing to new: the account's secrets, encrypted end to end.
    Secrets,
}

impl LinkSlot {
    /// The slot named in a URL.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "offer" => Some(Self::Offer),
            "answer" => Some(Self::Answer),
            "confirm" => Some(Self::Confirm),
            "secrets" => Some(Self::Secrets),
            _ => None,
        }
    }

    /// Its column: a fixed name, never input.
    pub(crate) fn column(self) -> &'static str {
        match self {
            Self::Offer => "offer",
            Self::Answer => "answer",
            Self::Confirm => "confirm",
            Self::Secrets => "secrets",
        }
    }
}

/// The result of [`Store::put_link`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkPut {
    /// Stored.
    Stored,
    /// That message was already written; nothing changed.
    Taken,
    /// No such link, or it expired.
    Unknown,
}

/// A link's approval, once a device of the account approved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkApproval {
    /// The account.
    pub account: AccountId,
    /// The new device.
    pub device: DeviceId,
    /// The key approved for it.
    pub signature_key: Vec<u8>,
    /// Whether the new device collected its token.
    pub claimed: bool,
}

/// Durable state of the relay.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Answers when the database is reachable.
    async fn health(&self) -> Result<(), StoreError>;

    /// Stores a new verification code under its session, beside any other
    /// session's for the number, unless one of its limits forbids it; then
    /// counts the request against them (as [`Store::rate_limit`], in the
    /// same transaction).
    async fn issue_code(&self, req: CodeIssue) -> Result<IssueOutcome, StoreError>;

    /// Counts each limit's `cost` events at `now` against it, all or
    /// nothing: when any of them would go over, nothing is counted and the
    /// answer is how long to wait. Every node on one database shares the
    /// counts. Events older than their window are forgotten here, and by
    /// [`Store::purge`] once older than [`MAX_RATE_WINDOW`].
    async fn rate_limit(
        &self,
        limits: &[RateKey],
        now: Timestamp,
    ) -> Result<Option<Duration>, StoreError>;

    /// Checks a code; on success consumes it and registers the device,
    /// creating the account if the number is new, all in one transaction.
    async fn verify_code(&self, req: Verification) -> Result<VerifyOutcome, StoreError>;

    /// Resolves a token hash.
    async fn token_status(&self, token_hash: &Digest) -> Result<TokenStatus, StoreError>;

    /// The account's active devices, oldest first.
    async fn devices(&self, account: AccountId) -> Result<Vec<DeviceRecord>, StoreError>;

    /// Revokes one of the account's devices and deletes its mailbox and key
    /// packages. False when the account has no such active device.
    async fn revoke_device(
        &self,
        account: AccountId,
        device: DeviceId,
        now: Timestamp,
    ) -> Result<bool, StoreError>;

    /// The account registered with a phone number.
    async fn account_by_phone(&self, phone: &PhoneNumber) -> Result<Option<AccountId>, StoreError>;

    /// Whether an account exists.
    async fn account_exists(&self, account: AccountId) -> Result<bool, StoreError>;

    /// Stores key packages for a device.
    async fn add_key_packages(
        &self,
        device: DeviceId,
        packages: Vec<NewKeyPackage>,
        now: Timestamp,
        max_per_device: u64,
    ) -> Result<AddKeyPackagesOutcome, StoreError>;

    /// Counts a device's key packages.
    async fn key_package_count(&self, device: DeviceId) -> Result<KeyPackageCount, StoreError>;

    /// Claims one key package for each device, all or nothing. One-time
    /// packages are deleted as they are claimed; a last-resort package is
    /// returned only when no one-time package is left, and stays stored.
    async fn claim_key_packages(&self, devices: &[DeviceId]) -> Result<ClaimOutcome, StoreError>;

    /// Queues an envelope for all its recipients, or for none.
    async fn enqueue(&self, envelope: NewEnvelope) -> Result<EnqueueOutcome, StoreError>;

    /// Whether every envelope [`Store::enqueue`] queues reaches this node's
    /// [`CommitFeed`] before `enqueue` returns, so that no other wake-up is
    /// needed for it.
    fn feeds_commits(&self) -> bool {
        false
    }

    /// The oldest `limit` unexpired envelopes in a device's mailbox, in order.
    async fn pending(
        &self,
        device: DeviceId,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<QueuedEnvelope>, StoreError>;

    /// Removes acknowledged envelopes from a device's mailbox, and their bytes
    /// once no other mailbox holds them. Returns how many were removed.
    async fn ack(&self, device: DeviceId, ids: &[EnvelopeId]) -> Result<u64, StoreError>;

    /// Records a sighting in the IP-address log (insert or extend `last_seen`).
    async fn record_ip(&self, observation: IpObservation) -> Result<(), StoreError>;

    /// The IP-log rows of an account, oldest first.
    async fn ip_log(&self, account: AccountId) -> Result<Vec<IpLogEntry>, StoreError>;

    /// Deletes what has expired or outlived its retention.
    async fn purge(&self, cutoffs: PurgeCutoffs) -> Result<PurgeCounts, StoreError>;

    /// The accounts whose phone number belongs to `region`.
    async fn accounts_in_region(&self, region: &str) -> Result<Vec<AccountId>, StoreError>;

    /// Each account with each address the IP log holds for it (within
    /// retention), for telling accounts seen in a market about its exit.
    async fn recent_addresses(&self) -> Result<Vec<(AccountId, IpAddr)>, StoreError>;

    /// The accounts already told about an exit in one phase (`exit` names the
    /// announcement, `phase` is "announced" or "reminder").
    async fn market_notified(&self, exit: &str, phase: &str) -> Result<Vec<AccountId>, StoreError>;

    /// Records that an account was told about an exit in one phase.
    async fn mark_market_notified(
        &self,
        exit: &str,
        phase: &str,
        account: AccountId,
        now: Timestamp,
    ) -> Result<(), StoreError>;

    /// Stores the account's signed device list `version` if it is the next
    /// one (1 when there is none).
    async fn put_device_list(
        &self,
        account: AccountId,
        version: u64,
        list: Vec<u8>,
        now: Timestamp,
    ) -> Result<DeviceListOutcome, StoreError>;

    /// The account's signed device lists after version `since`, oldest
    /// first, at most `limit`.
    async fn device_lists(
        &self,
        account: AccountId,
        since: u64,
        limit: u32,
    ) -> Result<Vec<Vec<u8>>, StoreError>;

    /// The account's newest signed device list, if it published one.
    async fn latest_device_list(&self, account: AccountId) -> Result<Option<Vec<u8>>, StoreError>;

    /// Opens a link rendezvous. False when the id is taken.
    async fn open_link(&self, id: &[u8], expires_at: Timestamp) -> Result<bool, StoreError>;

    /// Writes one message of an unexpired link, once.
    async fn put_link(
        &self,
        id: &[u8],
        slot: LinkSlot,
        data: Vec<u8>,
        now: Timestamp,
    ) -> Result<LinkPut, StoreError>;

    /// One message of an unexpired link: `None` when there is no such
    /// link, `Some(None)` while the message is not written yet.
    async fn get_link(
        &self,
        id: &[u8],
        slot: LinkSlot,
        now: Timestamp,
    ) -> Result<Option<Option<Vec<u8>>>, StoreError>;

    /// Creates the linked device on `account` (without a usable token) and
    /// records it on the link, once. False when the link is unknown,
    /// expired or already approved.
    async fn approve_link(
        &self,
        id: &[u8],
        account: AccountId,
        device: NewDevice,
        now: Timestamp,
    ) -> Result<bool, StoreError>;

    /// The link's approval, if it is unexpired and approved.
    async fn link_approval(
        &self,
        id: &[u8],
        now: Timestamp,
    ) -> Result<Option<LinkApproval>, StoreError>;

    /// Gives the approved device its token, once. False when the link is
    /// unknown, expired, unapproved or already claimed.
    async fn claim_link(
        &self,
        id: &[u8],
        token_hash: &Digest,
        now: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Deletes everything held for the accounts of `region`, in one
    /// transaction: their queued envelopes, key packages, IP-log rows,
    /// devices and tokens, pending codes, notice records and the accounts
    /// themselves. Envelope bytes other recipients still wait for stay.
    async fn purge_region(
        &self,
        region: &str,
        keyer: &PhoneKeyer,
    ) -> Result<RegionPurgeCounts, StoreError>;
}
