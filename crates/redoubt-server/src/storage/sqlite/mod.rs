//! The embedded SQLite backend: the zero-setup default for one node.
//!
//! The hot path (sends, acks, mailbox reads) runs on threads of its own with
//! synchronous connections ([`queue`]). Every other write goes through a
//! sqlx pool of exactly one connection; SQLite allows one writer at a time
//! anyway, and both writers take the lock when their transaction begins
//! (`BEGIN IMMEDIATE`), waiting for each other under the busy timeout.
//! Reads use their own connections and never wait for writes (WAL).

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use redoubt_proto::{AccountId, DeviceId, EnvelopeId, KeyPackageRef, PhoneNumber, Timestamp};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

use super::codec::*;
use super::*;
use crate::config::{SqliteConfig, SqliteSync};

/// Rows per multi-row insert, well under SQLite's bound-parameter limit.
const INSERT_CHUNK: usize = 400;

mod queue;

/// The SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    read: SqlitePool,
    write: SqlitePool,
    queue: std::sync::Arc<queue::Queue>,
    feed: queue::FeedSlot,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies migrations.
    pub async fn open(path: &Path, config: &SqliteConfig) -> Result<Self, StoreError> {
        // Operator commands open the database too, possibly first: on a
        // fresh machine its directory does not exist yet.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                crate::private_dir(dir)?;
            }
        }
        private_file(path)?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match config.synchronous {
                SqliteSync::Full => SqliteSynchronous::Full,
                SqliteSync::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // Deleted rows are overwritten with zeros, not left in free
            // space: acknowledged ciphertext must not stay on disk (issue
            // 16). The purge then empties the WAL (`purge`).
            .pragma("secure_delete", "ON");
        // An embedded database needs no pings before use and no recycling of
        // connections (there is no server to time them out). Leaving both off
        // also keeps the pool free of timers, which matters under tokio's
        // paused test clock, where any idle moment fires the next timer.
        // `connect_with` leaves its first connection idle in the pool, and
        // nothing ever retires it, so no `min_connections` (whose background
        // refill task would be one more timer) is needed.
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(120))
            .test_before_acquire(false)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&write).await?;
        backfill_regions(&write).await?;
        let read = SqlitePoolOptions::new()
            .max_connections(config.read_connections.max(1))
            .acquire_timeout(Duration::from_secs(120))
            .test_before_acquire(false)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        let feed = queue::FeedSlot::default();
        let queue =
            std::sync::Arc::new(queue::Queue::start(path, config.synchronous, feed.clone())?);
        Ok(Self {
            read,
            write,
            queue,
            feed,
        })
    }

    /// Hands every envelope queued from now on to `feed` after its commit,
    /// in commit order (the live sessions). Only the first feed installed
    /// counts; returns whether this one was.
    pub fn feed_commits_to(&self, feed: std::sync::Arc<dyn super::CommitFeed>) -> bool {
        self.feed.set(feed).is_ok()
    }

    /// The read pool, for the legal desk's read-only queries (`legal_view`).
    pub(crate) fn read_pool(&self) -> &SqlitePool {
        &self.read
    }

    /// The write pool (one connection), for the legal desk's own
    /// transactions (`desk_store`).
    pub(crate) fn write_pool(&self) -> &SqlitePool {
        &self.write
    }

    /// Stops the hot path's threads and closes both pools, checkpointing
    /// the WAL.
    pub async fn close(&self) {
        let queue = self.queue.clone();
        let _ = tokio::task::spawn_blocking(move || queue.close()).await;
        self.read.close().await;
        self.write.close().await;
    }
}

/// Fills `accounts.region` for rows made before the column existed. The
/// region comes from the phone-number library, which SQL cannot call.
async fn backfill_regions(pool: &SqlitePool) -> Result<(), StoreError> {
    let rows = sqlx::query("SELECT id, phone FROM accounts WHERE region IS NULL")
        .fetch_all(pool)
        .await?;
    for row in rows {
        let id: Vec<u8> = row.get(0);
        let phone: String = row.get(1);
        let region = PhoneNumber::parse(&phone)
            .ok()
            .and_then(|p| p.region())
            .unwrap_or_default();
        sqlx::query("UPDATE accounts SET region = ? WHERE id = ?")
            .bind(region)
            .bind(id)
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// Creates the database file readable by its owner only (0600), or takes
/// the other users' permissions off an existing one. SQLite gives its WAL
/// and shared-memory files the database file's permissions.
fn private_file(path: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let mode = std::fs::metadata(path)?.permissions().mode();
                if mode & 0o077 != 0 {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700))?;
                    tracing::warn!(
                        "the database file was readable by other users; \
                         it is now readable by its owner only"
                    );
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Which of `devices` exist and are not revoked.
async fn active_devices(
    conn: &mut sqlx::SqliteConnection,
    devices: &[DeviceId],
) -> Result<std::collections::HashSet<DeviceId>, StoreError> {
    let mut found = std::collections::HashSet::new();
    for chunk in devices.chunks(INSERT_CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT id FROM devices WHERE revoked_at IS NULL AND id IN (",
        );
        let mut sep = q.separated(", ");
        for d in chunk {
            sep.push_bind(d.as_bytes().to_vec());
        }
        q.push(")");
        for row in q.build().fetch_all(&mut *conn).await? {
            found.insert(device_id(row.get(0))?);
        }
    }
    Ok(found)
}

/// Counts each limit's `cost` events at `now` in the open transaction, all
/// or nothing ([`Store::rate_limit`]): the wait when any would go over
/// (nothing counted), else `None` with every event recorded. The caller's
/// transaction holds the write lock, so no other request interleaves.
async fn count_rate_events(
    tx: &mut sqlx::SqliteConnection,
    limits: &[RateKey],
    now: Timestamp,
) -> Result<Option<Duration>, StoreError> {
    let mut wait: Option<Duration> = None;
    for limit in limits {
        let key = limit.key.to_vec();
        let since = ms(now.minus(limit.window));
        sqlx::query("DELETE FROM rate_events WHERE key = ? AND at <= ?")
            .bind(key.clone())
            .bind(since)
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query("SELECT COUNT(*), MIN(at) FROM rate_events WHERE key = ?")
            .bind(key)
            .fetch_one(&mut *tx)
            .await?;
        let (count, oldest): (i64, Option<i64>) = (row.get(0), row.get(1));
        if count + i64::from(limit.cost) > i64::from(limit.max) {
            let w = retry_after(oldest, limit.window, now);
            wait = Some(wait.map_or(w, |x| x.max(w)));
        }
    }
    if wait.is_some() {
        return Ok(wait);
    }
    for limit in limits {
        for _ in 0..limit.cost {
            sqlx::query("INSERT INTO rate_events (key, at) VALUES (?, ?)")
                .bind(limit.key.to_vec())
                .bind(ms(now))
                .execute(&mut *tx)
                .await?;
        }
    }
    Ok(None)
}

#[async_trait]
impl Store for SqliteStore {
    async fn health(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        Ok(())
    }

    async fn rate_limit(
        &self,
        limits: &[RateKey],
        now: Timestamp,
    ) -> Result<Option<Duration>, StoreError> {
        // One writer at a time (BEGIN IMMEDIATE): the counts and the insert
        // cannot interleave with another request's.
        let mut tx = self.write.begin_write().await?;
        let wait = count_rate_events(&mut tx, limits, now).await?;
        if wait.is_none() {
            tx.commit().await?;
        }
        Ok(wait)
    }

    async fn issue_code(&self, req: CodeIssue) -> Result<IssueOutcome, StoreError> {
        let mut tx = self.write.begin_write().await?;
        if let Some(retry_after) = count_rate_events(&mut tx, &req.limits, req.now).await? {
            return Ok(IssueOutcome::RateLimited { retry_after });
        }
        sqlx::query(
            "INSERT INTO verification_codes (session_hash, phone_key, code_hash, expires_at, attempts)
             VALUES (?, ?, ?, ?, 0)",
        )
        .bind(req.session_hash.to_vec())
        .bind(req.phone_key.to_vec())
        .bind(req.code_hash.to_vec())
        .bind(ms(req.expires_at))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(IssueOutcome::Issued)
    }

    async fn verify_code(&self, req: Verification) -> Result<VerifyOutcome, StoreError> {
        let mut tx = self.write.begin_write().await?;
        let row = sqlx::query(
            "SELECT code_hash, expires_at, attempts FROM verification_codes
             WHERE session_hash = ? AND phone_key = ?",
        )
        .bind(req.session_hash.to_vec())
        .bind(req.phone_key.to_vec())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(VerifyOutcome::NoCodePending);
        };
        let stored_hash: Vec<u8> = row.get(0);
        let expires_at: i64 = row.get(1);
        let attempts: i64 = row.get(2);
        if expires_at <= ms(req.now) {
            sqlx::query("DELETE FROM verification_codes WHERE session_hash = ?")
                .bind(req.session_hash.to_vec())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(VerifyOutcome::Expired);
        }
        if attempts >= i64::from(req.max_attempts) {
            return Ok(VerifyOutcome::AttemptsExceeded);
        }
        let matches: bool =
            subtle::ConstantTimeEq::ct_eq(stored_hash.as_slice(), req.code_hash.as_slice()).into();
        if !matches {
            sqlx::query(
                "UPDATE verification_codes SET attempts = attempts + 1 WHERE session_hash = ?",
            )
            .bind(req.session_hash.to_vec())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(VerifyOutcome::Incorrect);
        }
        // Registered: every pending code for the number goes, this
        // session's and any a stranger asked for.
        sqlx::query("DELETE FROM verification_codes WHERE phone_key = ?")
            .bind(req.phone_key.to_vec())
            .execute(&mut *tx)
            .await?;
        let existing = sqlx::query("SELECT id FROM accounts WHERE phone = ?")
            .bind(req.phone.e164())
            .fetch_optional(&mut *tx)
            .await?;
        let (account, new_account) = match existing {
            Some(row) => (account_id(row.get(0))?, false),
            None => {
                sqlx::query(
                    "INSERT INTO accounts (id, phone, created_at, region) VALUES (?, ?, ?, ?)",
                )
                .bind(req.new_account_id.as_bytes().to_vec())
                .bind(req.phone.e164())
                .bind(ms(req.now))
                // An empty region marks a number with no single region,
                // so the backfill does not revisit it.
                .bind(req.phone.region().unwrap_or_default())
                .execute(&mut *tx)
                .await?;
                (req.new_account_id, true)
            }
        };
        sqlx::query(
            "INSERT INTO devices (id, account_id, name, signature_key, token_hash, created_at)
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(req.device.id.as_bytes().to_vec())
        .bind(account.as_bytes().to_vec())
        .bind(&req.device.name)
        .bind(&req.device.signature_key)
        .bind(req.device.token_hash.to_vec())
        .bind(ms(req.now))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(VerifyOutcome::Registered {
            account_id: account,
            new_account,
        })
    }

    async fn token_status(&self, token_hash: &Digest) -> Result<TokenStatus, StoreError> {
        let row = sqlx::query(
            "SELECT d.id, d.account_id, d.revoked_at, a.region
             FROM devices d JOIN accounts a ON a.id = d.account_id WHERE d.token_hash = ?",
        )
        .bind(token_hash.to_vec())
        .fetch_optional(&self.read)
        .await?;
        let Some(row) = row else {
            return Ok(TokenStatus::Unknown);
        };
        token_status(row.get(0), row.get(1), row.get(2), row.get(3))
    }

    async fn devices(&self, account: AccountId) -> Result<Vec<DeviceRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, signature_key, created_at FROM devices
             WHERE account_id = ? AND revoked_at IS NULL ORDER BY created_at, id",
        )
        .bind(account.as_bytes().to_vec())
        .fetch_all(&self.read)
        .await?;
        rows.into_iter()
            .map(|row| device_record(row.get(0), row.get(1), row.get(2), row.get(3)))
            .collect()
    }

    async fn revoke_device(
        &self,
        account: AccountId,
        device: DeviceId,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write.begin_write().await?;
        let done = sqlx::query(
            "UPDATE devices SET revoked_at = ? WHERE id = ? AND account_id = ? AND revoked_at IS NULL",
        )
        .bind(ms(now))
        .bind(device.as_bytes().to_vec())
        .bind(account.as_bytes().to_vec())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        let dev = device.as_bytes().to_vec();
        sqlx::query("DELETE FROM key_packages WHERE device_id = ?")
            .bind(dev.clone())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM mailbox WHERE device_id = ?")
            .bind(dev)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "DELETE FROM envelopes WHERE NOT EXISTS
               (SELECT 1 FROM mailbox WHERE mailbox.envelope_id = envelopes.id)",
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.queue.queues_shrank();
        Ok(true)
    }

    async fn account_by_phone(&self, phone: &PhoneNumber) -> Result<Option<AccountId>, StoreError> {
        let row = sqlx::query("SELECT id FROM accounts WHERE phone = ?")
            .bind(phone.e164())
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| account_id(r.get(0))).transpose()
    }

    async fn account_exists(&self, account: AccountId) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 FROM accounts WHERE id = ?")
            .bind(account.as_bytes().to_vec())
            .fetch_optional(&self.read)
            .await?;
        Ok(row.is_some())
    }

    async fn add_key_packages(
        &self,
        device: DeviceId,
        packages: Vec<NewKeyPackage>,
        now: Timestamp,
        max_per_device: u64,
    ) -> Result<AddKeyPackagesOutcome, StoreError> {
        let mut tx = self.write.begin_write().await?;
        let dev = device.as_bytes().to_vec();
        for kp in &packages {
            if kp.last_resort {
                sqlx::query("DELETE FROM key_packages WHERE device_id = ? AND last_resort = 1")
                    .bind(dev.clone())
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(
                "INSERT INTO key_packages (device_id, kp_ref, data, last_resort, created_at)
                 VALUES (?, ?, ?, ?, ?) ON CONFLICT (device_id, kp_ref) DO NOTHING",
            )
            .bind(dev.clone())
            .bind(kp.id.as_bytes().to_vec())
            .bind(&kp.data)
            .bind(kp.last_resort)
            .bind(ms(now))
            .execute(&mut *tx)
            .await?;
        }
        let count = count_key_packages(&mut tx, &dev).await?;
        if count.remaining > max_per_device {
            tx.rollback().await?;
            return Ok(AddKeyPackagesOutcome::LimitExceeded);
        }
        tx.commit().await?;
        Ok(AddKeyPackagesOutcome::Stored(count))
    }

    async fn key_package_count(&self, device: DeviceId) -> Result<KeyPackageCount, StoreError> {
        let mut conn = self.read.acquire().await?;
        count_key_packages(&mut conn, device.as_bytes()).await
    }

    async fn claim_key_packages(&self, devices: &[DeviceId]) -> Result<ClaimOutcome, StoreError> {
        let mut tx = self.write.begin_write().await?;
        let active = active_devices(&mut tx, devices).await?;
        let unknown: Vec<DeviceId> = devices
            .iter()
            .filter(|d| !active.contains(d))
            .copied()
            .collect();
        if !unknown.is_empty() {
            return Ok(ClaimOutcome::UnknownDevices(unknown));
        }
        let mut claimed = Vec::with_capacity(devices.len());
        let mut exhausted = Vec::new();
        for device in devices {
            let dev = device.as_bytes().to_vec();
            // One statement picks and deletes the oldest one-time package, so
            // two claims can never both see the same row.
            let one_time = sqlx::query(
                "DELETE FROM key_packages WHERE seq =
                   (SELECT seq FROM key_packages WHERE device_id = ? AND last_resort = 0
                    ORDER BY seq LIMIT 1)
                 RETURNING kp_ref, data",
            )
            .bind(dev.clone())
            .fetch_optional(&mut *tx)
            .await?;
            let (row, last_resort) = match one_time {
                Some(row) => (Some(row), false),
                None => (
                    sqlx::query(
                        "SELECT kp_ref, data FROM key_packages WHERE device_id = ? AND last_resort = 1 LIMIT 1",
                    )
                    .bind(dev)
                    .fetch_optional(&mut *tx)
                    .await?,
                    true,
                ),
            };
            match row {
                Some(row) => claimed.push(ClaimedKeyPackage {
                    device_id: *device,
                    id: KeyPackageRef::new(row.get(0))
                        .map_err(|_| StoreError::Corrupt("key package reference"))?,
                    data: row.get(1),
                    last_resort,
                }),
                None => exhausted.push(*device),
            }
        }
        if !exhausted.is_empty() {
            tx.rollback().await?;
            return Ok(ClaimOutcome::Exhausted(exhausted));
        }
        tx.commit().await?;
        Ok(ClaimOutcome::Claimed(claimed))
    }

    async fn enqueue(&self, envelope: NewEnvelope) -> Result<EnqueueOutcome, StoreError> {
        self.queue.enqueue(envelope).await
    }

    fn feeds_commits(&self) -> bool {
        self.feed.get().is_some()
    }

    async fn pending(
        &self,
        device: DeviceId,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<QueuedEnvelope>, StoreError> {
        self.queue.pending(device, now, limit).await
    }

    async fn ack(&self, device: DeviceId, ids: &[EnvelopeId]) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.queue.ack(device, ids).await
    }

    async fn record_ip(&self, o: IpObservation) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO ip_log (account_id, ip, port, first_seen, last_seen) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (account_id, ip, port) DO UPDATE SET last_seen = max(last_seen, excluded.last_seen)",
        )
        .bind(o.account_id.as_bytes().to_vec())
        .bind(o.ip.to_string())
        .bind(i64::from(o.port))
        .bind(ms(o.at))
        .bind(ms(o.at))
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn ip_log(&self, account: AccountId) -> Result<Vec<IpLogEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT ip, port, first_seen, last_seen FROM ip_log WHERE account_id = ?
             ORDER BY first_seen, ip, port",
        )
        .bind(account.as_bytes().to_vec())
        .fetch_all(&self.read)
        .await?;
        rows.into_iter()
            .map(|row| ip_log_entry(row.get(0), row.get(1), row.get(2), row.get(3)))
            .collect()
    }

    async fn purge(&self, c: PurgeCutoffs) -> Result<PurgeCounts, StoreError> {
        let mut tx = self.write.begin_write().await?;
        sqlx::query(
            "DELETE FROM mailbox WHERE envelope_id IN (SELECT id FROM envelopes WHERE expires_at <= ?)",
        )
        .bind(ms(c.now))
        .execute(&mut *tx)
        .await?;
        let envelopes = sqlx::query("DELETE FROM envelopes WHERE expires_at <= ?")
            .bind(ms(c.now))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let ip_log = sqlx::query("DELETE FROM ip_log WHERE last_seen < ?")
            .bind(ms(c.ip_log_before))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let mut codes = sqlx::query("DELETE FROM verification_codes WHERE expires_at <= ?")
            .bind(ms(c.now))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM rate_events WHERE at < ?")
            .bind(ms(c.now.minus(MAX_RATE_WINDOW)))
            .execute(&mut *tx)
            .await?;
        let mut receipts = sqlx::query("DELETE FROM envelope_receipts WHERE received_at < ?")
            .bind(ms(c.receipts_before))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        receipts += sqlx::query("DELETE FROM commit_positions WHERE updated_at < ?")
            .bind(ms(c.commit_positions_before))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        codes += sqlx::query("DELETE FROM links WHERE expires_at <= ?")
            .bind(ms(c.now))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        self.queue.queues_shrank();
        // Old page images, ciphertext acknowledged since the last pass among
        // them, stay in the WAL until it is overwritten. Checkpoint it all
        // and truncate it. Under load this may find readers in the way and
        // do part of the work; the next pass does the rest.
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.write)
            .await?;
        Ok(PurgeCounts {
            envelopes,
            ip_log,
            codes,
            receipts,
        })
    }

    async fn accounts_in_region(&self, region: &str) -> Result<Vec<AccountId>, StoreError> {
        let rows = sqlx::query("SELECT id FROM accounts WHERE region = ? ORDER BY id")
            .bind(region)
            .fetch_all(&self.read)
            .await?;
        rows.into_iter().map(|r| account_id(r.get(0))).collect()
    }

    async fn recent_addresses(&self) -> Result<Vec<(AccountId, IpAddr)>, StoreError> {
        let rows = sqlx::query("SELECT DISTINCT account_id, ip FROM ip_log")
            .fetch_all(&self.read)
            .await?;
        rows.into_iter()
            .map(|r| Ok((account_id(r.get(0))?, ip_addr(r.get(1))?)))
            .collect()
    }

    async fn market_notified(&self, exit: &str, phase: &str) -> Result<Vec<AccountId>, StoreError> {
        let rows =
            sqlx::query("SELECT account_id FROM market_notices WHERE exit_key = ? AND phase = ?")
                .bind(exit)
                .bind(phase)
                .fetch_all(&self.read)
                .await?;
        rows.into_iter().map(|r| account_id(r.get(0))).collect()
    }

    async fn mark_market_notified(
        &self,
        exit: &str,
        phase: &str,
        account: AccountId,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        // The account may have been purged since it was picked; a notice
        // record for an account that is gone is simply not kept.
        sqlx::query(
            "INSERT OR IGNORE INTO market_notices (exit_key, phase, account_id, sent_at)
             SELECT ?, ?, id, ? FROM accounts WHERE id = ?",
        )
        .bind(exit)
        .bind(phase)
        .bind(ms(now))
        .bind(account.as_bytes().to_vec())
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn put_device_list(
        &self,
        account: AccountId,
        version: u64,
        list: Vec<u8>,
        now: Timestamp,
    ) -> Result<DeviceListOutcome, StoreError> {
        let mut tx = self.write.begin_write().await?;
        let latest: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(version), 0) FROM device_lists WHERE account_id = ?",
        )
        .bind(account.as_bytes().to_vec())
        .fetch_one(&mut *tx)
        .await?;
        let latest = u64::try_from(latest).unwrap_or(0);
        if version != latest + 1 {
            return Ok(DeviceListOutcome::Conflict { latest });
        }
        sqlx::query(
            "INSERT INTO device_lists (account_id, version, list, stored_at) VALUES (?, ?, ?, ?)",
        )
        .bind(account.as_bytes().to_vec())
        .bind(version as i64)
        .bind(list)
        .bind(ms(now))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(DeviceListOutcome::Stored)
    }

    async fn device_lists(
        &self,
        account: AccountId,
        since: u64,
        limit: u32,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let rows = sqlx::query(
            "SELECT list FROM device_lists WHERE account_id = ? AND version > ?
             ORDER BY version LIMIT ?",
        )
        .bind(account.as_bytes().to_vec())
        .bind(i64::try_from(since).unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    async fn latest_device_list(&self, account: AccountId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT list FROM device_lists WHERE account_id = ? ORDER BY version DESC LIMIT 1",
        )
        .bind(account.as_bytes().to_vec())
        .fetch_optional(&self.read)
        .await?)
    }

    async fn open_link(&self, id: &[u8], expires_at: Timestamp) -> Result<bool, StoreError> {
        let done =
            sqlx::query("INSERT INTO links (id, expires_at) VALUES (?, ?) ON CONFLICT DO NOTHING")
                .bind(id)
                .bind(ms(expires_at))
                .execute(&self.write)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn put_link(
        &self,
        id: &[u8],
        slot: LinkSlot,
        data: Vec<u8>,
        now: Timestamp,
    ) -> Result<LinkPut, StoreError> {
        let column = slot.column();
        let done = sqlx::query(&format!(
            "UPDATE links SET {column} = ? WHERE id = ? AND expires_at > ? AND {column} IS NULL"
        ))
        .bind(data)
        .bind(id)
        .bind(ms(now))
        .execute(&self.write)
        .await?;
        if done.rows_affected() == 1 {
            return Ok(LinkPut::Stored);
        }
        Ok(match self.get_link(id, slot, now).await? {
            None => LinkPut::Unknown,
            Some(_) => LinkPut::Taken,
        })
    }

    async fn get_link(
        &self,
        id: &[u8],
        slot: LinkSlot,
        now: Timestamp,
    ) -> Result<Option<Option<Vec<u8>>>, StoreError> {
        let column = slot.column();
        let row = sqlx::query(&format!(
            "SELECT {column} FROM links WHERE id = ? AND expires_at > ?"
        ))
        .bind(id)
        .bind(ms(now))
        .fetch_optional(&self.write)
        .await?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn approve_link(
        &self,
        id: &[u8],
        account: AccountId,
        device: NewDevice,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write.begin_write().await?;
        let done = sqlx::query(
            "UPDATE links SET account_id = ?, device_id = ?, signature_key = ?
             WHERE id = ? AND expires_at > ? AND account_id IS NULL",
        )
        .bind(account.as_bytes().to_vec())
        .bind(device.id.as_bytes().to_vec())
        .bind(&device.signature_key)
        .bind(id)
        .bind(ms(now))
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO devices (id, account_id, name, signature_key, token_hash, created_at)
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(device.id.as_bytes().to_vec())
        .bind(account.as_bytes().to_vec())
        .bind(&device.name)
        .bind(&device.signature_key)
        .bind(device.token_hash.to_vec())
        .bind(ms(now))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn link_approval(
        &self,
        id: &[u8],
        now: Timestamp,
    ) -> Result<Option<LinkApproval>, StoreError> {
        let row = sqlx::query(
            "SELECT account_id, device_id, signature_key, claimed FROM links
             WHERE id = ? AND expires_at > ? AND account_id IS NOT NULL",
        )
        .bind(id)
        .bind(ms(now))
        .fetch_optional(&self.write)
        .await?;
        row.map(|r| {
            Ok(LinkApproval {
                account: account_id(r.get(0))?,
                device: device_id(r.get(1))?,
                signature_key: r.get(2),
                claimed: r.get::<i64, _>(3) != 0,
            })
        })
        .transpose()
    }

    async fn claim_link(
        &self,
        id: &[u8],
        token_hash: &Digest,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write.begin_write().await?;
        let device: Option<Vec<u8>> = sqlx::query_scalar(
            "UPDATE links SET claimed = 1
             WHERE id = ? AND expires_at > ? AND account_id IS NOT NULL AND claimed = 0
             RETURNING device_id",
        )
        .bind(id)
        .bind(ms(now))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(device) = device else {
            return Ok(false);
        };
        sqlx::query("UPDATE devices SET token_hash = ? WHERE id = ? AND revoked_at IS NULL")
            .bind(token_hash.to_vec())
            .bind(device)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn purge_region(
        &self,
        region: &str,
        keyer: &PhoneKeyer,
    ) -> Result<RegionPurgeCounts, StoreError> {
        let mut tx = self.write.begin_write().await?;
        let phones: Vec<String> = sqlx::query("SELECT phone FROM accounts WHERE region = ?")
            .bind(region)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        let mut counts = RegionPurgeCounts::default();
        if phones.is_empty() {
            return Ok(counts);
        }
        const OF_DEVICES: &str = "device_id IN (SELECT d.id FROM devices d
             JOIN accounts a ON a.id = d.account_id WHERE a.region = ?)";
        const OF_ACCOUNTS: &str = "account_id IN (SELECT id FROM accounts WHERE region = ?)";
        counts.queued = sqlx::query(&format!("DELETE FROM mailbox WHERE {OF_DEVICES}"))
            .bind(region)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query(
            "DELETE FROM envelopes WHERE NOT EXISTS
               (SELECT 1 FROM mailbox WHERE mailbox.envelope_id = envelopes.id)",
        )
        .execute(&mut *tx)
        .await?;
        counts.key_packages = sqlx::query(&format!("DELETE FROM key_packages WHERE {OF_DEVICES}"))
            .bind(region)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        counts.ip_log = sqlx::query(&format!("DELETE FROM ip_log WHERE {OF_ACCOUNTS}"))
            .bind(region)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query(&format!("DELETE FROM market_notices WHERE {OF_ACCOUNTS}"))
            .bind(region)
            .execute(&mut *tx)
            .await?;
        for table in ["device_lists", "links"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE {OF_ACCOUNTS}"))
                .bind(region)
                .execute(&mut *tx)
                .await?;
        }
        counts.devices = sqlx::query(&format!("DELETE FROM devices WHERE {OF_ACCOUNTS}"))
            .bind(region)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        for phone in &phones {
            let Ok(number) = PhoneNumber::parse(phone) else {
                continue;
            };
            sqlx::query("DELETE FROM verification_codes WHERE phone_key = ?")
                .bind(keyer.key(&number).to_vec())
                .execute(&mut *tx)
                .await?;
        }
        counts.accounts = sqlx::query("DELETE FROM accounts WHERE region = ?")
            .bind(region)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        self.queue.queues_shrank();
        Ok(counts)
    }
}

async fn count_key_packages(
    conn: &mut sqlx::SqliteConnection,
    device: &[u8],
) -> Result<KeyPackageCount, StoreError> {
    let row = sqlx::query(
        "SELECT COALESCE(SUM(last_resort = 0), 0), COALESCE(SUM(last_resort = 1), 0)
         FROM key_packages WHERE device_id = ?",
    )
    .bind(device.to_vec())
    .fetch_one(&mut *conn)
    .await?;
    let remaining: i64 = row.get(0);
    let last_resort: i64 = row.get(1);
    Ok(KeyPackageCount {
        remaining: u64::try_from(remaining).unwrap_or(0),
        last_resort: last_resort > 0,
    })
}
