//! The PostgreSQL backend, for several `redoubtd` nodes sharing one
//! database. Same tables and semantics as the SQLite backend; what differs
//! is how concurrent writers on different nodes are kept apart:
//!
//! - a key-package claim takes the oldest one-time package with
//!   `FOR UPDATE SKIP LOCKED`, so concurrent claims never hand one out twice;
//! - an enqueue locks its recipients' device rows (in id order, so two
//!   enqueues cannot deadlock), so each device's queue is appended in commit
//!   order and its size cap holds;
//! - an ack locks the envelopes it touches, so the last acknowledger deletes
//!   the bytes;
//! - sends and acks waiting on a node share one transaction ([`queue`]);
//! - code issuing takes transaction-scoped advisory locks on the number and
//!   the address, so rate limits hold across nodes.

use std::net::IpAddr;

use async_trait::async_trait;
use redoubt_proto::{AccountId, DeviceId, EnvelopeId, KeyPackageRef, PhoneNumber, Timestamp};
use sha2::{Digest as _, Sha256};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};

use super::codec::*;
use super::*;
use crate::config::PostgresConfig;

mod queue;

/// The PostgreSQL store.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    queue: std::sync::Arc<queue::Queue>,
}

/// Ids as the byte arrays PostgreSQL binds as `bytea[]`.
pub(super) fn id_list<const N: usize>(ids: impl IntoIterator<Item = [u8; N]>) -> Vec<Vec<u8>> {
    ids.into_iter().map(|b| b.to_vec()).collect()
}

/// A stable 64-bit advisory-lock key for a string in a namespace.
pub(crate) fn lock_key(namespace: &str, value: &[u8]) -> i64 {
    let digest = Sha256::new()
        .chain_update(b"redoubt/lock/")
        .chain_update(namespace.as_bytes())
        .chain_update([0])
        .chain_update(value)
        .finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

impl PgStore {
    /// Connects and applies migrations. `schema`, when given, is created if
    /// missing and used for every table (tests give each run its own).
    pub async fn open(config: &PostgresConfig) -> Result<Self, StoreError> {
        let mut options: PgConnectOptions = config
            .url
            .parse()
            .map_err(|_| StoreError::Corrupt("storage.url is not a PostgreSQL URL"))?;
        if let Some(schema) = &config.schema {
            if !schema
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
                || schema.is_empty()
            {
                return Err(StoreError::Corrupt(
                    "storage.schema must be letters, digits and _",
                ));
            }
            let admin = PgPoolOptions::new()
                .max_connections(1)
                .connect_with(options.clone())
                .await?;
            sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
                .execute(&admin)
                .await?;
            admin.close().await;
            options = options.options([("search_path", schema.as_str())]);
        }
        // Plan every statement for the tables as they are now. The queue
        // tables swing from empty to tens of thousands of dead row versions
        // between vacuums, and a generic plan cached while they were new
        // kept scanning `envelopes` sequentially: one scan per message
        // (38,901 in 14 s of a load run, 444 with this), 2,415 to 2,884
        // msg/s, p99 84 to 53 ms. Planning these small statements costs
        // less than that.
        let options = options.options([("plan_cache_mode", "force_custom_plan")]);
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections.max(2))
            .acquire_timeout(std::time::Duration::from_secs(30))
            .connect_with(options)
            .await?;
        // Nodes starting together must not run the migrations twice; sqlx
        // takes an advisory lock for that.
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        let queue = std::sync::Arc::new(queue::Queue::start(pool.clone()));
        Ok(Self { pool, queue })
    }

    /// The pool, for the legal desk's read-only view.
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Runs `f` only if this node wins the named lease for now: a
    /// transaction-scoped advisory lock, so with several nodes one of them
    /// runs a purge pass at a time and the others skip it.
    pub async fn try_lease(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let won: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(lock_key("lease", name.as_bytes()))
            .fetch_one(&mut *tx)
            .await?;
        Ok(won.then_some(Lease { _tx: tx }))
    }
}

/// Drops `schema` (a run's or a test's own, as `PostgresConfig::schema`
/// creates) with everything in it, best effort. It blocks on a thread with
/// a runtime of its own, so it can run from `Drop`, inside or outside a
/// runtime that is itself shutting down.
pub fn drop_schema_blocking(url: &str, schema: &str) {
    let (url, schema) = (url.to_owned(), schema.to_owned());
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async {
            let pool = PgPool::connect(&url).await.ok()?;
            sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                .execute(&pool)
                .await
                .ok()?;
            pool.close().await;
            Some(())
        })
    })
    .join();
}

/// A held lease; dropping it releases the lock.
pub struct Lease {
    _tx: sqlx::Transaction<'static, sqlx::Postgres>,
}

pub(super) async fn active_devices(
    conn: &mut sqlx::PgConnection,
    devices: &[DeviceId],
    lock: bool,
) -> Result<QueueLengths, StoreError> {
    let sql = if lock {
        "SELECT id, queued FROM devices WHERE revoked_at IS NULL AND id = ANY($1) ORDER BY id FOR UPDATE"
    } else {
        "SELECT id, queued FROM devices WHERE revoked_at IS NULL AND id = ANY($1)"
    };
    let rows = sqlx::query(sql)
        .bind(id_list(devices.iter().map(|d| *d.as_bytes())))
        .fetch_all(&mut *conn)
        .await?;
    rows.into_iter()
        .map(|r| Ok((device_id(r.get(0))?, r.get(1))))
        .collect()
}

async fn count_key_packages(
    conn: &mut sqlx::PgConnection,
    device: &[u8],
) -> Result<KeyPackageCount, StoreError> {
    let row = sqlx::query(
        "SELECT COUNT(*) FILTER (WHERE NOT last_resort), COUNT(*) FILTER (WHERE last_resort)
         FROM key_packages WHERE device_id = $1",
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

/// Counts each limit's `cost` events at `now` in the open transaction, all
/// or nothing ([`Store::rate_limit`]): the wait when any would go over
/// (nothing counted), else `None` with every event recorded.
async fn count_rate_events(
    tx: &mut sqlx::PgConnection,
    limits: &[RateKey],
    now: Timestamp,
) -> Result<Option<Duration>, StoreError> {
    // One request per key at a time, across nodes; locks taken in key
    // order so two requests on the same keys cannot deadlock.
    let mut keys: Vec<i64> = limits.iter().map(|l| lock_key("rate", &l.key)).collect();
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(key)
            .execute(&mut *tx)
            .await?;
    }
    let mut wait: Option<Duration> = None;
    for limit in limits {
        let key = limit.key.to_vec();
        let since = ms(now.minus(limit.window));
        sqlx::query("DELETE FROM rate_events WHERE key = $1 AND at <= $2")
            .bind(&key)
            .bind(since)
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query("SELECT COUNT(*), MIN(at) FROM rate_events WHERE key = $1")
            .bind(&key)
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
        sqlx::query("INSERT INTO rate_events (key, at) SELECT $1, $2 FROM generate_series(1, $3)")
            .bind(limit.key.to_vec())
            .bind(ms(now))
            .bind(i32::try_from(limit.cost).unwrap_or(i32::MAX))
            .execute(&mut *tx)
            .await?;
    }
    Ok(None)
}

#[async_trait]
impl Store for PgStore {
    async fn health(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn rate_limit(
        &self,
        limits: &[RateKey],
        now: Timestamp,
    ) -> Result<Option<Duration>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let wait = count_rate_events(&mut tx, limits, now).await?;
        if wait.is_none() {
            tx.commit().await?;
        }
        Ok(wait)
    }

    async fn issue_code(&self, req: CodeIssue) -> Result<IssueOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some(retry_after) = count_rate_events(&mut tx, &req.limits, req.now).await? {
            return Ok(IssueOutcome::RateLimited { retry_after });
        }
        sqlx::query(
            "INSERT INTO verification_codes (session_hash, phone_key, code_hash, expires_at, attempts)
             VALUES ($1, $2, $3, $4, 0)",
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
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT code_hash, expires_at, attempts FROM verification_codes
             WHERE session_hash = $1 AND phone_key = $2 FOR UPDATE",
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
            sqlx::query("DELETE FROM verification_codes WHERE session_hash = $1")
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
                "UPDATE verification_codes SET attempts = attempts + 1 WHERE session_hash = $1",
            )
            .bind(req.session_hash.to_vec())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(VerifyOutcome::Incorrect);
        }
        // Registered: every pending code for the number goes, this
        // session's and any a stranger asked for.
        sqlx::query("DELETE FROM verification_codes WHERE phone_key = $1")
            .bind(req.phone_key.to_vec())
            .execute(&mut *tx)
            .await?;
        // Two sessions of one number may verify at once: the insert keeps
        // the first account, and the other finds it below.
        let inserted = sqlx::query(
            "INSERT INTO accounts (id, phone, created_at, region) VALUES ($1, $2, $3, $4)
             ON CONFLICT (phone) DO NOTHING RETURNING id",
        )
        .bind(req.new_account_id.as_bytes().to_vec())
        .bind(req.phone.e164())
        .bind(ms(req.now))
        .bind(req.phone.region().unwrap_or_default())
        .fetch_optional(&mut *tx)
        .await?;
        let (account, new_account) = match inserted {
            Some(_) => (req.new_account_id, true),
            None => {
                let row = sqlx::query("SELECT id FROM accounts WHERE phone = $1")
                    .bind(req.phone.e164())
                    .fetch_one(&mut *tx)
                    .await?;
                (account_id(row.get(0))?, false)
            }
        };
        sqlx::query(
            "INSERT INTO devices (id, account_id, name, signature_key, token_hash, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
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
             FROM devices d JOIN accounts a ON a.id = d.account_id WHERE d.token_hash = $1",
        )
        .bind(token_hash.to_vec())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(TokenStatus::Unknown);
        };
        token_status(row.get(0), row.get(1), row.get(2), row.get(3))
    }

    async fn devices(&self, account: AccountId) -> Result<Vec<DeviceRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, signature_key, created_at FROM devices
             WHERE account_id = $1 AND revoked_at IS NULL ORDER BY created_at, id",
        )
        .bind(account.as_bytes().to_vec())
        .fetch_all(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE devices SET revoked_at = $1 WHERE id = $2 AND account_id = $3 AND revoked_at IS NULL",
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
        sqlx::query("DELETE FROM key_packages WHERE device_id = $1")
            .bind(dev.clone())
            .execute(&mut *tx)
            .await?;
        let gone: Vec<Vec<u8>> =
            sqlx::query_scalar("DELETE FROM mailbox WHERE device_id = $1 RETURNING envelope_id")
                .bind(dev)
                .fetch_all(&mut *tx)
                .await?;
        delete_orphans(&mut tx, &gone).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn account_by_phone(&self, phone: &PhoneNumber) -> Result<Option<AccountId>, StoreError> {
        let row = sqlx::query("SELECT id FROM accounts WHERE phone = $1")
            .bind(phone.e164())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| account_id(r.get(0))).transpose()
    }

    async fn account_exists(&self, account: AccountId) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 FROM accounts WHERE id = $1")
            .bind(account.as_bytes().to_vec())
            .fetch_optional(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        let dev = device.as_bytes().to_vec();
        // One upload per device at a time, so the limit check holds.
        sqlx::query("SELECT id FROM devices WHERE id = $1 FOR UPDATE")
            .bind(dev.clone())
            .execute(&mut *tx)
            .await?;
        for kp in &packages {
            if kp.last_resort {
                sqlx::query("DELETE FROM key_packages WHERE device_id = $1 AND last_resort")
                    .bind(dev.clone())
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(
                "INSERT INTO key_packages (device_id, kp_ref, data, last_resort, created_at)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (device_id, kp_ref) DO NOTHING",
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
        let mut conn = self.pool.acquire().await?;
        count_key_packages(&mut conn, device.as_bytes()).await
    }

    async fn claim_key_packages(&self, devices: &[DeviceId]) -> Result<ClaimOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        let active = active_devices(&mut tx, devices, false).await?;
        let unknown: Vec<DeviceId> = devices
            .iter()
            .filter(|d| !active.contains_key(d))
            .copied()
            .collect();
        if !unknown.is_empty() {
            return Ok(ClaimOutcome::UnknownDevices(unknown));
        }
        let mut claimed = Vec::with_capacity(devices.len());
        let mut exhausted = Vec::new();
        for device in devices {
            let dev = device.as_bytes().to_vec();
            // SKIP LOCKED: a package another node is claiming right now is
            // passed over, never handed out twice.
            let one_time = sqlx::query(
                "DELETE FROM key_packages WHERE seq =
                   (SELECT seq FROM key_packages WHERE device_id = $1 AND NOT last_resort
                    ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED)
                 RETURNING kp_ref, data",
            )
            .bind(dev.clone())
            .fetch_optional(&mut *tx)
            .await?;
            let (row, last_resort) = match one_time {
                Some(row) => (Some(row), false),
                None => (
                    sqlx::query(
                        "SELECT kp_ref, data FROM key_packages WHERE device_id = $1 AND last_resort LIMIT 1",
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

    async fn pending(
        &self,
        device: DeviceId,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<QueuedEnvelope>, StoreError> {
        let rows = sqlx::query(
            "SELECT m.seq, e.id, e.kind, e.received_at, e.payload FROM mailbox m
             JOIN envelopes e ON e.id = m.envelope_id
             WHERE m.device_id = $1 AND e.expires_at > $2
             ORDER BY m.seq LIMIT $3",
        )
        .bind(device.as_bytes().to_vec())
        .bind(ms(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| queued_envelope(row.get(0), row.get(1), row.get(2), row.get(3), row.get(4)))
            .collect()
    }

    async fn ack(&self, device: DeviceId, ids: &[EnvelopeId]) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.queue.ack(device, ids).await
    }

    async fn record_ip(&self, o: IpObservation) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO ip_log (account_id, ip, port, first_seen, last_seen) VALUES ($1, $2, $3, $4, $4)
             ON CONFLICT (account_id, ip, port)
             DO UPDATE SET last_seen = GREATEST(ip_log.last_seen, excluded.last_seen)",
        )
        .bind(o.account_id.as_bytes().to_vec())
        .bind(o.ip.to_string())
        .bind(i32::from(o.port))
        .bind(ms(o.at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn ip_log(&self, account: AccountId) -> Result<Vec<IpLogEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT ip, port, first_seen, last_seen FROM ip_log WHERE account_id = $1
             ORDER BY first_seen, ip, port",
        )
        .bind(account.as_bytes().to_vec())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                ip_log_entry(
                    row.get(0),
                    i64::from(row.get::<i32, _>(1)),
                    row.get(2),
                    row.get(3),
                )
            })
            .collect()
    }

    async fn purge(&self, c: PurgeCutoffs) -> Result<PurgeCounts, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM mailbox WHERE envelope_id IN (SELECT id FROM envelopes WHERE expires_at <= $1)",
        )
        .bind(ms(c.now))
        .execute(&mut *tx)
        .await?;
        let envelopes = sqlx::query("DELETE FROM envelopes WHERE expires_at <= $1")
            .bind(ms(c.now))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let ip_log = sqlx::query("DELETE FROM ip_log WHERE last_seen < $1")
            .bind(ms(c.ip_log_before))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let mut codes = sqlx::query("DELETE FROM verification_codes WHERE expires_at <= $1")
            .bind(ms(c.now))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM rate_events WHERE at < $1")
            .bind(ms(c.now.minus(MAX_RATE_WINDOW)))
            .execute(&mut *tx)
            .await?;
        let mut receipts = sqlx::query("DELETE FROM envelope_receipts WHERE received_at < $1")
            .bind(ms(c.receipts_before))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        receipts += sqlx::query("DELETE FROM commit_positions WHERE updated_at < $1")
            .bind(ms(c.commit_positions_before))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        codes += sqlx::query("DELETE FROM links WHERE expires_at <= $1")
            .bind(ms(c.now))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(PurgeCounts {
            envelopes,
            ip_log,
            codes,
            receipts,
        })
    }

    async fn accounts_in_region(&self, region: &str) -> Result<Vec<AccountId>, StoreError> {
        let rows = sqlx::query("SELECT id FROM accounts WHERE region = $1 ORDER BY id")
            .bind(region)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(|r| account_id(r.get(0))).collect()
    }

    async fn recent_addresses(&self) -> Result<Vec<(AccountId, IpAddr)>, StoreError> {
        let rows = sqlx::query("SELECT DISTINCT account_id, ip FROM ip_log")
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| Ok((account_id(r.get(0))?, ip_addr(r.get(1))?)))
            .collect()
    }

    async fn market_notified(&self, exit: &str, phase: &str) -> Result<Vec<AccountId>, StoreError> {
        let rows =
            sqlx::query("SELECT account_id FROM market_notices WHERE exit_key = $1 AND phase = $2")
                .bind(exit)
                .bind(phase)
                .fetch_all(&self.pool)
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
        sqlx::query(
            "INSERT INTO market_notices (exit_key, phase, account_id, sent_at)
             SELECT $1, $2, id, $3 FROM accounts WHERE id = $4
             ON CONFLICT DO NOTHING",
        )
        .bind(exit)
        .bind(phase)
        .bind(ms(now))
        .bind(account.as_bytes().to_vec())
        .execute(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        // The account row's lock orders concurrent publishers, so exactly
        // one of two lists claiming the same version is stored.
        sqlx::query("SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE")
            .bind(account.as_bytes().to_vec())
            .fetch_optional(&mut *tx)
            .await?;
        let latest: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(version), 0)::BIGINT FROM device_lists WHERE account_id = $1",
        )
        .bind(account.as_bytes().to_vec())
        .fetch_one(&mut *tx)
        .await?;
        let latest = u64::try_from(latest).unwrap_or(0);
        if version != latest + 1 {
            return Ok(DeviceListOutcome::Conflict { latest });
        }
        sqlx::query(
            "INSERT INTO device_lists (account_id, version, list, stored_at) VALUES ($1, $2, $3, $4)",
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
            "SELECT list FROM device_lists WHERE account_id = $1 AND version > $2
             ORDER BY version LIMIT $3",
        )
        .bind(account.as_bytes().to_vec())
        .bind(i64::try_from(since).unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    async fn latest_device_list(&self, account: AccountId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT list FROM device_lists WHERE account_id = $1 ORDER BY version DESC LIMIT 1",
        )
        .bind(account.as_bytes().to_vec())
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn open_link(&self, id: &[u8], expires_at: Timestamp) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO links (id, expires_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(ms(expires_at))
        .execute(&self.pool)
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
            "UPDATE links SET {column} = $1 WHERE id = $2 AND expires_at > $3 AND {column} IS NULL"
        ))
        .bind(data)
        .bind(id)
        .bind(ms(now))
        .execute(&self.pool)
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
            "SELECT {column} FROM links WHERE id = $1 AND expires_at > $2"
        ))
        .bind(id)
        .bind(ms(now))
        .fetch_optional(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE links SET account_id = $1, device_id = $2, signature_key = $3
             WHERE id = $4 AND expires_at > $5 AND account_id IS NULL",
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
             VALUES ($1, $2, $3, $4, $5, $6)",
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
             WHERE id = $1 AND expires_at > $2 AND account_id IS NOT NULL",
        )
        .bind(id)
        .bind(ms(now))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(LinkApproval {
                account: account_id(r.get(0))?,
                device: device_id(r.get(1))?,
                signature_key: r.get(2),
                claimed: r.get::<bool, _>(3),
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
        let mut tx = self.pool.begin().await?;
        let device: Option<Vec<u8>> = sqlx::query_scalar(
            "UPDATE links SET claimed = TRUE
             WHERE id = $1 AND expires_at > $2 AND account_id IS NOT NULL AND NOT claimed
             RETURNING device_id",
        )
        .bind(id)
        .bind(ms(now))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(device) = device else {
            return Ok(false);
        };
        sqlx::query("UPDATE devices SET token_hash = $1 WHERE id = $2 AND revoked_at IS NULL")
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
        let mut tx = self.pool.begin().await?;
        let phones: Vec<String> =
            sqlx::query_scalar("SELECT phone FROM accounts WHERE region = $1 FOR UPDATE")
                .bind(region)
                .fetch_all(&mut *tx)
                .await?;
        let mut counts = RegionPurgeCounts::default();
        if phones.is_empty() {
            return Ok(counts);
        }
        const OF_DEVICES: &str = "device_id IN (SELECT d.id FROM devices d
             JOIN accounts a ON a.id = d.account_id WHERE a.region = $1)";
        const OF_ACCOUNTS: &str = "account_id IN (SELECT id FROM accounts WHERE region = $1)";
        let gone: Vec<Vec<u8>> = sqlx::query_scalar(&format!(
            "DELETE FROM mailbox WHERE {OF_DEVICES} RETURNING envelope_id"
        ))
        .bind(region)
        .fetch_all(&mut *tx)
        .await?;
        counts.queued = gone.len() as u64;
        delete_orphans(&mut tx, &gone).await?;
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
        let keys = id_list(
            phones
                .iter()
                .filter_map(|p| PhoneNumber::parse(p).ok())
                .map(|p| keyer.key(&p)),
        );
        sqlx::query("DELETE FROM verification_codes WHERE phone_key = ANY($1)")
            .bind(&keys)
            .execute(&mut *tx)
            .await?;

        counts.accounts = sqlx::query("DELETE FROM accounts WHERE region = $1")
            .bind(region)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(counts)
    }
}

/// Deletes the bytes of envelopes no mailbox holds any more. The envelope
/// rows are locked first, so when two devices acknowledge the same envelope
/// at once on different nodes, the second waits and sees the first's delete.
pub(super) async fn delete_orphans(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    ids: &[Vec<u8>],
) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT id FROM envelopes WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .bind(ids)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "DELETE FROM envelopes WHERE id = ANY($1)
         AND NOT EXISTS (SELECT 1 FROM mailbox WHERE mailbox.envelope_id = envelopes.id)",
    )
    .bind(ids)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// One enqueue in a transaction of its own: the path for a batch that
/// could not run together.
pub(super) async fn enqueue_one(
    pool: &PgPool,
    envelope: &NewEnvelope,
) -> Result<EnqueueOutcome, StoreError> {
    let payload_hash = Sha256::digest(&envelope.payload).to_vec();
    let id = envelope.id.as_bytes().to_vec();
    let mut tx = pool.begin().await?;
    // Claim the id first: a concurrent send of the same id on another
    // node waits here for this transaction and then sees the receipt.
    let claimed = sqlx::query(
        "INSERT INTO envelope_receipts (id, payload_hash, received_at) VALUES ($1, $2, $3)
         ON CONFLICT (id) DO NOTHING RETURNING id",
    )
    .bind(id.clone())
    .bind(payload_hash.clone())
    .bind(ms(envelope.now))
    .fetch_optional(&mut *tx)
    .await?;
    if claimed.is_none() {
        let stored: Vec<u8> =
            sqlx::query_scalar("SELECT payload_hash FROM envelope_receipts WHERE id = $1")
                .bind(id.clone())
                .fetch_one(&mut *tx)
                .await?;
        return Ok(if stored == payload_hash {
            EnqueueOutcome::Duplicate
        } else {
            EnqueueOutcome::Conflict
        });
    }
    // The device rows are locked, so their queue lengths (kept by a
    // trigger, migration 0002) cannot change under the cap check.
    let active = active_devices(&mut tx, &envelope.recipients, true).await?;
    let full = match admit_recipients(&envelope.recipients, &active, envelope.max_queued) {
        Ok(full) => full,
        Err(refused) => return Ok(refused),
    };
    if let Some(commit) = &envelope.commit {
        if !advance_commit_position!(&mut *tx, commit, envelope.now) {
            return Ok(EnqueueOutcome::StaleCommit);
        }
    }
    let recipients = id_list(
        envelope
            .recipients
            .iter()
            .filter(|d| !full.contains(d))
            .map(|d| *d.as_bytes()),
    );
    sqlx::query(
        "INSERT INTO envelopes (id, kind, payload, received_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id.clone())
    .bind(kind_to_str(envelope.kind))
    .bind(&envelope.payload)
    .bind(ms(envelope.now))
    .bind(ms(envelope.expires_at))
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO mailbox (device_id, envelope_id)
         SELECT d, $2 FROM UNNEST($1::bytea[]) WITH ORDINALITY AS r(d, n) ORDER BY n",
    )
    .bind(&recipients)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(if full.is_empty() {
        EnqueueOutcome::Queued
    } else {
        EnqueueOutcome::Partial(full)
    })
}

/// One ack in a transaction of its own.
pub(super) async fn ack_one(
    pool: &PgPool,
    device: DeviceId,
    ids: &[EnvelopeId],
) -> Result<u64, StoreError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let ids = id_list(ids.iter().map(|i| *i.as_bytes()));
    let mut tx = pool.begin().await?;
    let removed: Vec<Vec<u8>> = sqlx::query_scalar(
        "DELETE FROM mailbox WHERE device_id = $1 AND envelope_id = ANY($2) RETURNING envelope_id",
    )
    .bind(device.as_bytes().to_vec())
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    delete_orphans(&mut tx, &removed).await?;
    tx.commit().await?;
    Ok(removed.len() as u64)
}
