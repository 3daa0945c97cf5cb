//! The key-transparency directory's storage: akd's `Database` trait on the
//! relay's two backends, so the directory lives in the same database as
//! everything else and several nodes share it.
//!
//! Two tables: `kt_nodes` holds the append-only tree's nodes and its root
//! record under akd's own binary keys; `kt_values` holds each label's value
//! states by (label, epoch), which is how akd asks for them. Records are
//! akd's types, serialised with postcard. akd commits an epoch with one
//! `batch_set`, root record last; it is written in one transaction, so a
//! crash leaves the previous epoch whole.
//!
//! Nothing here is secret: labels are phone numbers the directory commits
//! to (clients see them only behind akd's VRF), values are an account's
//! public keys.

use std::collections::HashMap;

use akd::errors::StorageError;
use akd::storage::types::{
    DbRecord, KeyData, StorageType, ValueState, ValueStateKey, ValueStateRetrievalFlag,
};
use akd::storage::{Database, DbSetState, Storable};
use akd::{AkdLabel, AkdValue};
use sqlx::Row;

use super::legal_view::RelayRecords;
use super::postgres::PgStore;
use super::sqlite::SqliteStore;
use super::BeginWrite as _;

/// Rows per multi-row insert: two parameters each, well under both
/// backends' limits.
const CHUNK: usize = 500;

fn failed(e: sqlx::Error) -> StorageError {
    StorageError::Other(format!("key-transparency storage: {e}"))
}

fn encode(record: &DbRecord) -> Result<Vec<u8>, StorageError> {
    postcard::to_allocvec(record).map_err(|e| StorageError::Other(e.to_string()))
}

fn decode(bytes: &[u8]) -> Result<DbRecord, StorageError> {
    postcard::from_bytes(bytes).map_err(|e| StorageError::Other(e.to_string()))
}

fn value_state(bytes: &[u8]) -> Result<ValueState, StorageError> {
    match decode(bytes)? {
        DbRecord::ValueState(state) => Ok(state),
        _ => Err(StorageError::Other(
            "kt_values holds a non-value record".into(),
        )),
    }
}

fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A record's row: the table, the key columns and the record bytes.
enum Pending {
    Node(Vec<u8>, Vec<u8>),
    Value(Vec<u8>, i64, i64, Vec<u8>),
}

/// The rows of a batch, last write of each key winning (one statement may
/// not touch a row twice on PostgreSQL).
fn rows(records: Vec<DbRecord>) -> Result<(Vec<Pending>, Vec<Pending>), StorageError> {
    let mut nodes: HashMap<Vec<u8>, Pending> = HashMap::new();
    let mut values: HashMap<(Vec<u8>, i64), Pending> = HashMap::new();
    for record in records {
        let bytes = encode(&record)?;
        match &record {
            DbRecord::ValueState(state) => {
                let label = state.username.0.clone();
                let epoch = int(state.epoch);
                values.insert(
                    (label.clone(), epoch),
                    Pending::Value(label, epoch, int(state.version), bytes),
                );
            }
            _ => {
                let key = record.get_full_binary_id();
                nodes.insert(key.clone(), Pending::Node(key, bytes));
            }
        }
    }
    Ok((
        nodes.into_values().collect(),
        values.into_values().collect(),
    ))
}

/// The `WHERE ... ORDER BY` for a value-state lookup (after `label = ?`),
/// and its one extra parameter.
fn state_filter(flag: ValueStateRetrievalFlag) -> (&'static str, Option<i64>) {
    match flag {
        ValueStateRetrievalFlag::SpecificVersion(v) => ("AND version = ? LIMIT 1", Some(int(v))),
        ValueStateRetrievalFlag::SpecificEpoch(e) => ("AND epoch = ? LIMIT 1", Some(int(e))),
        ValueStateRetrievalFlag::LeqEpoch(e) => {
            ("AND epoch <= ? ORDER BY epoch DESC LIMIT 1", Some(int(e)))
        }
        ValueStateRetrievalFlag::MaxEpoch => ("ORDER BY epoch DESC LIMIT 1", None),
        ValueStateRetrievalFlag::MinEpoch => ("ORDER BY epoch ASC LIMIT 1", None),
    }
}

/// `?` placeholders as PostgreSQL's `$1, $2, ...`.
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    out
}

/// The upserts for a chunk of rows of one table.
fn upsert(table_rows: &[Pending]) -> String {
    match table_rows.first() {
        Some(Pending::Node(..)) => format!(
            "INSERT INTO kt_nodes (key, record) VALUES {} \
             ON CONFLICT (key) DO UPDATE SET record = excluded.record",
            vec!["(?, ?)"; table_rows.len()].join(", ")
        ),
        _ => format!(
            "INSERT INTO kt_values (label, epoch, version, record) VALUES {} \
             ON CONFLICT (label, epoch) DO UPDATE SET version = excluded.version, record = excluded.record",
            vec!["(?, ?, ?, ?)"; table_rows.len()].join(", ")
        ),
    }
}

/// One `Database` implementation per backend, from one body: the backends
/// differ only in their pools and placeholder syntax.
macro_rules! kt_database {
    ($store:ty, $read:ident, $write:ident, $sql:expr) => {
        #[async_trait::async_trait]
        impl Database for $store {
            async fn set(&self, record: DbRecord) -> Result<(), StorageError> {
                self.batch_set(vec![record], DbSetState::General).await
            }

            async fn batch_set(
                &self,
                records: Vec<DbRecord>,
                _state: DbSetState,
            ) -> Result<(), StorageError> {
                let (nodes, values) = rows(records)?;
                let mut tx = self.$write().begin_write().await.map_err(failed)?;
                for table in [nodes, values] {
                    for chunk in table.chunks(CHUNK) {
                        let sql = ($sql)(&upsert(chunk));
                        let mut query = sqlx::query(&sql);
                        for row in chunk {
                            query = match row {
                                Pending::Node(key, record) => query.bind(key).bind(record),
                                Pending::Value(label, epoch, version, record) => {
                                    query.bind(label).bind(epoch).bind(version).bind(record)
                                }
                            };
                        }
                        query.execute(&mut *tx).await.map_err(failed)?;
                    }
                }
                tx.commit().await.map_err(failed)
            }

            async fn get<St: Storable>(
                &self,
                id: &St::StorageKey,
            ) -> Result<DbRecord, StorageError> {
                let key = St::get_full_binary_key_id(id);
                let row = if St::data_type() == StorageType::ValueState {
                    let ValueStateKey(label, epoch) =
                        ValueState::key_from_full_binary(&key).map_err(StorageError::Other)?;
                    sqlx::query(&($sql)(
                        "SELECT record FROM kt_values WHERE label = ? AND epoch = ?",
                    ))
                    .bind(label)
                    .bind(int(epoch))
                    .fetch_optional(self.$read())
                    .await
                } else {
                    sqlx::query(&($sql)("SELECT record FROM kt_nodes WHERE key = ?"))
                        .bind(key)
                        .fetch_optional(self.$read())
                        .await
                }
                .map_err(failed)?;
                match row {
                    Some(row) => decode(&row.try_get::<Vec<u8>, _>(0).map_err(failed)?),
                    None => Err(StorageError::NotFound(format!(
                        "{:?} record",
                        St::data_type()
                    ))),
                }
            }

            async fn batch_get<St: Storable>(
                &self,
                ids: &[St::StorageKey],
            ) -> Result<Vec<DbRecord>, StorageError> {
                let mut out = Vec::with_capacity(ids.len());
                if St::data_type() == StorageType::ValueState {
                    for id in ids {
                        match self.get::<St>(id).await {
                            Ok(record) => out.push(record),
                            Err(StorageError::NotFound(_)) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    return Ok(out);
                }
                // Missing records are left out, as akd expects.
                for chunk in ids.chunks(CHUNK) {
                    let sql = ($sql)(&format!(
                        "SELECT record FROM kt_nodes WHERE key IN ({})",
                        vec!["?"; chunk.len()].join(", ")
                    ));
                    let mut query = sqlx::query(&sql);
                    for id in chunk {
                        query = query.bind(St::get_full_binary_key_id(id));
                    }
                    for row in query.fetch_all(self.$read()).await.map_err(failed)? {
                        out.push(decode(&row.try_get::<Vec<u8>, _>(0).map_err(failed)?)?);
                    }
                }
                Ok(out)
            }

            async fn get_user_data(&self, username: &AkdLabel) -> Result<KeyData, StorageError> {
                let rows = sqlx::query(&($sql)(
                    "SELECT record FROM kt_values WHERE label = ? ORDER BY epoch",
                ))
                .bind(username.0.clone())
                .fetch_all(self.$read())
                .await
                .map_err(failed)?;
                if rows.is_empty() {
                    return Err(StorageError::NotFound("no value states".into()));
                }
                let states = rows
                    .iter()
                    .map(|r| value_state(&r.try_get::<Vec<u8>, _>(0).map_err(failed)?))
                    .collect::<Result<_, _>>()?;
                Ok(KeyData { states })
            }

            async fn get_user_state(
                &self,
                username: &AkdLabel,
                flag: ValueStateRetrievalFlag,
            ) -> Result<ValueState, StorageError> {
                let (filter, extra) = state_filter(flag);
                let sql = ($sql)(&format!(
                    "SELECT record FROM kt_values WHERE label = ? {filter}"
                ));
                let mut query = sqlx::query(&sql).bind(username.0.clone());
                if let Some(extra) = extra {
                    query = query.bind(extra);
                }
                match query.fetch_optional(self.$read()).await.map_err(failed)? {
                    Some(row) => value_state(&row.try_get::<Vec<u8>, _>(0).map_err(failed)?),
                    None => Err(StorageError::NotFound("no such value state".into())),
                }
            }

            async fn get_user_state_versions(
                &self,
                usernames: &[AkdLabel],
                flag: ValueStateRetrievalFlag,
            ) -> Result<HashMap<AkdLabel, (u64, AkdValue)>, StorageError> {
                let mut out = HashMap::new();
                for username in usernames {
                    match self.get_user_state(username, flag).await {
                        Ok(state) => {
                            out.insert(
                                AkdLabel(state.username.0.clone()),
                                (state.version, AkdValue(state.value.0.clone())),
                            );
                        }
                        Err(StorageError::NotFound(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(out)
            }
        }
    };
}

kt_database!(SqliteStore, read_pool, write_pool, |s: &str| s.to_owned());
kt_database!(PgStore, pool, pool, numbered);

/// A signed epoch as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEpoch {
    /// The epoch.
    pub epoch: u64,
    /// Its root hash.
    pub root: [u8; 32],
    /// When it was published, seconds since the Unix epoch.
    pub published_at: i64,
    /// The root of the log of epoch roots up to this one; `None` for an
    /// epoch signed before the log existed, until the relay signs it again.
    pub log_root: Option<[u8; 32]>,
    /// The directory key's signature.
    pub signature: Vec<u8>,
}

/// The directory's own tables beside akd's: the queue of changes for the
/// next epoch and the signed roots.
#[async_trait::async_trait]
pub trait KtTables: Send + Sync {
    /// Queues `value` for `label` (replacing anything queued for it).
    async fn kt_queue(&self, label: &[u8], value: &[u8], now: i64) -> Result<(), StorageError>;
    /// Everything queued.
    async fn kt_pending(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError>;
    /// Removes queued changes that were published (only if still the same
    /// value: a newer one queued meanwhile waits for the next epoch).
    async fn kt_dequeue(&self, published: &[(Vec<u8>, Vec<u8>)]) -> Result<(), StorageError>;
    /// Stores a signed epoch (once; a second signature of it is ignored).
    async fn kt_put_epoch(&self, epoch: &StoredEpoch) -> Result<(), StorageError>;
    /// Signs a stored epoch again, now with its log root.
    async fn kt_resign_epoch(
        &self,
        epoch: u64,
        log_root: [u8; 32],
        signature: &[u8],
    ) -> Result<(), StorageError>;
    /// Signed epochs from `from` to `to`, in order.
    async fn kt_epochs(&self, from: u64, to: u64) -> Result<Vec<StoredEpoch>, StorageError>;
    /// The newest signed epoch.
    async fn kt_latest(&self) -> Result<Option<StoredEpoch>, StorageError>;
    /// How many numbers the directory holds.
    async fn kt_size(&self) -> Result<u64, StorageError>;
    /// The directory's secret called `name`: `fresh` if none was stored,
    /// else the one the first node stored.
    async fn kt_secret(&self, name: &str, fresh: [u8; 32]) -> Result<[u8; 32], StorageError>;
}

/// The columns a stored epoch is read from, in [`stored_epoch`]'s order.
macro_rules! epoch_columns {
    () => {
        "epoch, root, published_at, signature, log_root"
    };
}

/// A stored epoch from a row of [`epoch_columns`] (either backend's row).
macro_rules! epoch_from_row {
    ($row:expr) => {
        stored_epoch(
            $row.try_get(0).map_err(failed)?,
            $row.try_get(1).map_err(failed)?,
            $row.try_get(2).map_err(failed)?,
            $row.try_get(3).map_err(failed)?,
            $row.try_get(4).map_err(failed)?,
        )
    };
}

fn stored_epoch(
    epoch: i64,
    root: Vec<u8>,
    published_at: i64,
    signature: Vec<u8>,
    log_root: Option<Vec<u8>>,
) -> Result<StoredEpoch, StorageError> {
    let hash = |bytes: Vec<u8>| -> Result<[u8; 32], StorageError> {
        bytes
            .try_into()
            .map_err(|_| StorageError::Other("a stored root is not 32 bytes".into()))
    };
    Ok(StoredEpoch {
        epoch: u64::try_from(epoch).map_err(|e| StorageError::Other(e.to_string()))?,
        root: hash(root)?,
        published_at,
        log_root: log_root.map(hash).transpose()?,
        signature,
    })
}

macro_rules! kt_tables {
    ($store:ty, $read:ident, $write:ident, $sql:expr) => {
        #[async_trait::async_trait]
        impl KtTables for $store {
            async fn kt_queue(
                &self,
                label: &[u8],
                value: &[u8],
                now: i64,
            ) -> Result<(), StorageError> {
                sqlx::query(&($sql)(
                    "INSERT INTO kt_pending (label, value, queued_at) VALUES (?, ?, ?) \
                     ON CONFLICT (label) DO UPDATE SET value = excluded.value, queued_at = excluded.queued_at",
                ))
                .bind(label.to_vec())
                .bind(value.to_vec())
                .bind(now)
                .execute(self.$write())
                .await
                .map_err(failed)?;
                Ok(())
            }

            async fn kt_pending(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError> {
                let rows = sqlx::query("SELECT label, value FROM kt_pending ORDER BY queued_at")
                    .fetch_all(self.$read())
                    .await
                    .map_err(failed)?;
                rows.iter()
                    .map(|r| Ok((r.try_get(0).map_err(failed)?, r.try_get(1).map_err(failed)?)))
                    .collect()
            }

            async fn kt_dequeue(
                &self,
                published: &[(Vec<u8>, Vec<u8>)],
            ) -> Result<(), StorageError> {
                let mut tx = self.$write().begin_write().await.map_err(failed)?;
                for (label, value) in published {
                    sqlx::query(&($sql)("DELETE FROM kt_pending WHERE label = ? AND value = ?"))
                        .bind(label.clone())
                        .bind(value.clone())
                        .execute(&mut *tx)
                        .await
                        .map_err(failed)?;
                }
                tx.commit().await.map_err(failed)
            }

            async fn kt_put_epoch(&self, epoch: &StoredEpoch) -> Result<(), StorageError> {
                sqlx::query(&($sql)(
                    "INSERT INTO kt_epochs (epoch, root, published_at, signature, log_root) \
                     VALUES (?, ?, ?, ?, ?) ON CONFLICT (epoch) DO NOTHING",
                ))
                .bind(int(epoch.epoch))
                .bind(epoch.root.to_vec())
                .bind(epoch.published_at)
                .bind(epoch.signature.clone())
                .bind(epoch.log_root.map(|r| r.to_vec()))
                .execute(self.$write())
                .await
                .map_err(failed)?;
                Ok(())
            }

            async fn kt_resign_epoch(
                &self,
                epoch: u64,
                log_root: [u8; 32],
                signature: &[u8],
            ) -> Result<(), StorageError> {
                sqlx::query(&($sql)(
                    "UPDATE kt_epochs SET log_root = ?, signature = ? WHERE epoch = ?",
                ))
                .bind(log_root.to_vec())
                .bind(signature.to_vec())
                .bind(int(epoch))
                .execute(self.$write())
                .await
                .map_err(failed)?;
                Ok(())
            }

            async fn kt_epochs(&self, from: u64, to: u64) -> Result<Vec<StoredEpoch>, StorageError> {
                let rows = sqlx::query(&($sql)(
                    concat!(
                        "SELECT ",
                        epoch_columns!(),
                        " FROM kt_epochs WHERE epoch >= ? AND epoch <= ? ORDER BY epoch"
                    ),
                ))
                .bind(int(from))
                .bind(int(to))
                .fetch_all(self.$read())
                .await
                .map_err(failed)?;
                rows.iter().map(|r| epoch_from_row!(r)).collect()
            }

            async fn kt_size(&self) -> Result<u64, StorageError> {
                let n: i64 = sqlx::query("SELECT COUNT(DISTINCT label) FROM kt_values")
                    .fetch_one(self.$read())
                    .await
                    .map_err(failed)?
                    .try_get(0)
                    .map_err(failed)?;
                Ok(u64::try_from(n).unwrap_or(0))
            }

            async fn kt_secret(
                &self,
                name: &str,
                fresh: [u8; 32],
            ) -> Result<[u8; 32], StorageError> {
                sqlx::query(&($sql)(
                    "INSERT INTO kt_keys (name, secret) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                ))
                .bind(name)
                .bind(fresh.to_vec())
                .execute(self.$write())
                .await
                .map_err(failed)?;
                let secret: Vec<u8> = sqlx::query(&($sql)("SELECT secret FROM kt_keys WHERE name = ?"))
                    .bind(name)
                    .fetch_one(self.$write())
                    .await
                    .map_err(failed)?
                    .try_get(0)
                    .map_err(failed)?;
                secret
                    .try_into()
                    .map_err(|_| StorageError::Other("a stored directory key is not 32 bytes".into()))
            }

            async fn kt_latest(&self) -> Result<Option<StoredEpoch>, StorageError> {
                let row = sqlx::query(concat!(
                    "SELECT ",
                    epoch_columns!(),
                    " FROM kt_epochs ORDER BY epoch DESC LIMIT 1"
                ))
                .fetch_optional(self.$read())
                .await
                .map_err(failed)?;
                row.map(|r| epoch_from_row!(r)).transpose()
            }
        }
    };
}

kt_tables!(SqliteStore, read_pool, write_pool, |s: &str| s.to_owned());
kt_tables!(PgStore, pool, pool, numbered);

/// The relay's backend, whichever it is: akd's storage and the directory's
/// tables, by dispatch.
#[async_trait::async_trait]
impl Database for RelayRecords {
    async fn set(&self, record: DbRecord) -> Result<(), StorageError> {
        match self {
            Self::Sqlite(s) => s.set(record).await,
            Self::Postgres(p) => p.set(record).await,
        }
    }
    async fn batch_set(
        &self,
        records: Vec<DbRecord>,
        state: DbSetState,
    ) -> Result<(), StorageError> {
        match self {
            Self::Sqlite(s) => s.batch_set(records, state).await,
            Self::Postgres(p) => p.batch_set(records, state).await,
        }
    }
    async fn get<St: Storable>(&self, id: &St::StorageKey) -> Result<DbRecord, StorageError> {
        match self {
            Self::Sqlite(s) => s.get::<St>(id).await,
            Self::Postgres(p) => p.get::<St>(id).await,
        }
    }
    async fn batch_get<St: Storable>(
        &self,
        ids: &[St::StorageKey],
    ) -> Result<Vec<DbRecord>, StorageError> {
        match self {
            Self::Sqlite(s) => s.batch_get::<St>(ids).await,
            Self::Postgres(p) => p.batch_get::<St>(ids).await,
        }
    }
    async fn get_user_data(&self, username: &AkdLabel) -> Result<KeyData, StorageError> {
        match self {
            Self::Sqlite(s) => s.get_user_data(username).await,
            Self::Postgres(p) => p.get_user_data(username).await,
        }
    }
    async fn get_user_state(
        &self,
        username: &AkdLabel,
        flag: ValueStateRetrievalFlag,
    ) -> Result<ValueState, StorageError> {
        match self {
            Self::Sqlite(s) => s.get_user_state(username, flag).await,
            Self::Postgres(p) => p.get_user_state(username, flag).await,
        }
    }
    async fn get_user_state_versions(
        &self,
        usernames: &[AkdLabel],
        flag: ValueStateRetrievalFlag,
    ) -> Result<HashMap<AkdLabel, (u64, AkdValue)>, StorageError> {
        match self {
            Self::Sqlite(s) => s.get_user_state_versions(usernames, flag).await,
            Self::Postgres(p) => p.get_user_state_versions(usernames, flag).await,
        }
    }
}

#[async_trait::async_trait]
impl KtTables for RelayRecords {
    async fn kt_queue(&self, label: &[u8], value: &[u8], now: i64) -> Result<(), StorageError> {
        match self {
            Self::Sqlite(s) => s.kt_queue(label, value, now).await,
            Self::Postgres(p) => p.kt_queue(label, value, now).await,
        }
    }
    async fn kt_pending(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError> {
        match self {
            Self::Sqlite(s) => s.kt_pending().await,
            Self::Postgres(p) => p.kt_pending().await,
        }
    }
    async fn kt_dequeue(&self, published: &[(Vec<u8>, Vec<u8>)]) -> Result<(), StorageError> {
        match self {
            Self::Sqlite(s) => s.kt_dequeue(published).await,
            Self::Postgres(p) => p.kt_dequeue(published).await,
        }
    }
    async fn kt_put_epoch(&self, epoch: &StoredEpoch) -> Result<(), StorageError> {
        match self {
            Self::Sqlite(s) => s.kt_put_epoch(epoch).await,
            Self::Postgres(p) => p.kt_put_epoch(epoch).await,
        }
    }
    async fn kt_resign_epoch(
        &self,
        epoch: u64,
        log_root: [u8; 32],
        signature: &[u8],
    ) -> Result<(), StorageError> {
        match self {
            Self::Sqlite(s) => s.kt_resign_epoch(epoch, log_root, signature).await,
            Self::Postgres(p) => p.kt_resign_epoch(epoch, log_root, signature).await,
        }
    }
    async fn kt_epochs(&self, from: u64, to: u64) -> Result<Vec<StoredEpoch>, StorageError> {
        match self {
            Self::Sqlite(s) => s.kt_epochs(from, to).await,
            Self::Postgres(p) => p.kt_epochs(from, to).await,
        }
    }
    async fn kt_latest(&self) -> Result<Option<StoredEpoch>, StorageError> {
        match self {
            Self::Sqlite(s) => s.kt_latest().await,
            Self::Postgres(p) => p.kt_latest().await,
        }
    }
    async fn kt_size(&self) -> Result<u64, StorageError> {
        match self {
            Self::Sqlite(s) => s.kt_size().await,
            Self::Postgres(p) => p.kt_size().await,
        }
    }
    async fn kt_secret(&self, name: &str, fresh: [u8; 32]) -> Result<[u8; 32], StorageError> {
        match self {
            Self::Sqlite(s) => s.kt_secret(name, fresh).await,
            Self::Postgres(p) => p.kt_secret(name, fresh).await,
        }
    }
}
