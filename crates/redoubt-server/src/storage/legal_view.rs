//! The legal desk's window onto the relay's storage: the two read-only
//! queries of `redoubt_legal::records::SubscriberRecords`, for each backend,
//! and nothing else. Keeping
//! them in their own module makes invariant 2 reviewable at a glance: no
//! query here touches `envelopes`, `mailbox`, `key_packages` or `devices`.

use redoubt_legal::order::Target;
use redoubt_legal::records::{IpRecord, RecordsError, Subscriber, SubscriberRecords};
use redoubt_proto::{AccountId, PhoneNumber};
use sqlx::Row;
use time::OffsetDateTime;

use super::postgres::PgStore;
use super::sqlite::SqliteStore;

fn to_time(ms: i64) -> Result<OffsetDateTime, RecordsError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|e| RecordsError(e.to_string()))
}

fn to_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

fn failed(e: sqlx::Error) -> RecordsError {
    RecordsError(e.to_string())
}

/// How a target is looked up in `accounts`.
enum Lookup {
    Phone(String),
    Account(Vec<u8>),
}

/// The lookup for a target; `None` for one that cannot match any account
/// (a malformed number or id).
fn lookup(target: &Target) -> Option<Lookup> {
    match target {
        Target::Phone(phone) => PhoneNumber::parse(phone)
            .ok()
            .map(|p| Lookup::Phone(p.e164().to_owned())),
        Target::AccountId(id) => id
            .parse::<AccountId>()
            .ok()
            .map(|id| Lookup::Account(id.as_bytes().to_vec())),
    }
}

/// A subscriber from the `accounts` columns (id, phone, created_at), as
/// both backends return them.
fn subscriber(id: Vec<u8>, phone: String, created_at: i64) -> Result<Subscriber, RecordsError> {
    let id: [u8; 16] = id
        .try_into()
        .map_err(|_| RecordsError("account id".into()))?;
    Ok(Subscriber {
        account_id: AccountId::from_bytes(id),
        phone: PhoneNumber::parse(&phone).map_err(|e| RecordsError(e.to_string()))?,
        account_created_at: to_time(created_at)?,
    })
}

/// An IP record from the `ip_log` columns (ip, port, first_seen, last_seen).
fn ip_record(ip: String, port: i64, first: i64, last: i64) -> Result<IpRecord, RecordsError> {
    Ok(IpRecord {
        ip: ip.parse().map_err(|_| RecordsError("ip address".into()))?,
        port: u16::try_from(port).map_err(|_| RecordsError("port".into()))?,
        first_seen: to_time(first)?,
        last_seen: to_time(last)?,
    })
}

impl SubscriberRecords for SqliteStore {
    async fn subscriber(&self, target: &Target) -> Result<Option<Subscriber>, RecordsError> {
        let query = match lookup(target) {
            None => return Ok(None),
            Some(Lookup::Phone(e164)) => {
                sqlx::query("SELECT id, phone, created_at FROM accounts WHERE phone = ?").bind(e164)
            }
            Some(Lookup::Account(id)) => {
                sqlx::query("SELECT id, phone, created_at FROM accounts WHERE id = ?").bind(id)
            }
        };
        let row = query
            .fetch_optional(self.read_pool())
            .await
            .map_err(failed)?;
        row.map(|r| subscriber(r.get(0), r.get(1), r.get(2)))
            .transpose()
    }

    async fn ip_records(
        &self,
        account: AccountId,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Vec<IpRecord>, RecordsError> {
        let rows = sqlx::query(
            "SELECT ip, port, first_seen, last_seen FROM ip_log
             WHERE account_id = ? AND last_seen >= ? AND first_seen <= ?
             ORDER BY first_seen, ip, port",
        )
        .bind(account.as_bytes().to_vec())
        .bind(to_ms(from))
        .bind(to_ms(to))
        .fetch_all(self.read_pool())
        .await
        .map_err(failed)?;
        rows.into_iter()
            .map(|r| ip_record(r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    }
}

impl SubscriberRecords for PgStore {
    async fn subscriber(&self, target: &Target) -> Result<Option<Subscriber>, RecordsError> {
        let query = match lookup(target) {
            None => return Ok(None),
            Some(Lookup::Phone(e164)) => {
                sqlx::query("SELECT id, phone, created_at FROM accounts WHERE phone = $1")
                    .bind(e164)
            }
            Some(Lookup::Account(id)) => {
                sqlx::query("SELECT id, phone, created_at FROM accounts WHERE id = $1").bind(id)
            }
        };
        let row = query.fetch_optional(self.pool()).await.map_err(failed)?;
        row.map(|r| subscriber(r.get(0), r.get(1), r.get(2)))
            .transpose()
    }

    async fn ip_records(
        &self,
        account: AccountId,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Vec<IpRecord>, RecordsError> {
        let rows = sqlx::query(
            "SELECT ip, port, first_seen, last_seen FROM ip_log
             WHERE account_id = $1 AND last_seen >= $2 AND first_seen <= $3
             ORDER BY first_seen, ip, port",
        )
        .bind(account.as_bytes().to_vec())
        .bind(to_ms(from))
        .bind(to_ms(to))
        .fetch_all(self.pool())
        .await
        .map_err(failed)?;
        rows.into_iter()
            .map(|r| ip_record(r.get(0), i64::from(r.get::<i32, _>(1)), r.get(2), r.get(3)))
            .collect()
    }
}

/// The records of whichever backend the relay runs on, for the desk.
#[derive(Clone)]
pub enum RelayRecords {
    /// The SQLite store.
    Sqlite(SqliteStore),
    /// The PostgreSQL store.
    Postgres(PgStore),
}

impl RelayRecords {
    /// Opens the configured backend's records (for operator commands run
    /// beside a relay).
    pub async fn open(config: &crate::Config) -> Result<Self, super::StoreError> {
        Ok(match &config.storage {
            crate::config::StorageConfig::Sqlite(s) => {
                Self::Sqlite(SqliteStore::open(&config.sqlite_path(), s).await?)
            }
            crate::config::StorageConfig::Postgres(p) => Self::Postgres(PgStore::open(p).await?),
        })
    }
}

impl SubscriberRecords for RelayRecords {
    async fn subscriber(&self, target: &Target) -> Result<Option<Subscriber>, RecordsError> {
        match self {
            Self::Sqlite(s) => s.subscriber(target).await,
            Self::Postgres(p) => p.subscriber(target).await,
        }
    }

    async fn ip_records(
        &self,
        account: AccountId,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Vec<IpRecord>, RecordsError> {
        match self {
            Self::Sqlite(s) => s.ip_records(account, from, to).await,
            Self::Postgres(p) => p.ip_records(account, from, to).await,
        }
    }
}
