//! The profile's local database: one SQLite file, sealed values, atomic
//! batches. A batch holds the MLS state snapshot together with the chats,
//! messages and processed-envelope ids it goes with, so a crash can never
//! leave MLS state and history out of step; envelopes are acknowledged to
//! the server only after their batch commits.
//!
//! Several processes may open one profile. Each batch bumps a generation
//! counter in the same transaction, so a process holding the profile lock
//! (`lock.rs`) can tell whether its in-memory state is still current.

use std::path::{Path, PathBuf};

use rand::RngCore;
use redoubt_proto::{DeviceId, EnvelopeId};
use serde::{de::DeserializeOwned, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use crate::error::{ClientError, Result};
use crate::model::{ChatRecord, MessageRecord, OutboxEntry};
use crate::seal::{KdfParams, SealKey};

const DB_FILE: &str = "profile.db";
const CHECK_PLAIN: &[u8] = b"redoubt-profile-v1";

/// A changeset applied in one transaction.
#[derive(Default)]
pub struct Changes {
    /// Sealed documents to write (identity, MLS state).
    pub documents: Vec<(&'static str, Vec<u8>)>,
    /// Chats to insert or replace.
    pub chats: Vec<ChatRecord>,
    /// Messages to append (a message id already stored is skipped).
    pub messages: Vec<MessageRecord>,
    /// Envelopes now processed.
    pub processed: Vec<EnvelopeId>,
    /// Messages already stored whose record changed (a queued message
    /// delivered, or given up on).
    pub updated_messages: Vec<MessageRecord>,
    /// Encrypted messages to keep until the relay accepts them.
    pub outbox_add: Vec<OutboxEntry>,
    /// Outbox entries the relay accepted (or that were given up on).
    pub outbox_done: Vec<EnvelopeId>,
    /// Placeholders for missing messages, each replaced (in its place in
    /// the history) by the message that arrived late.
    pub filled: Vec<(uuid::Uuid, MessageRecord)>,
    /// MLS messages from an epoch not reached yet, to keep.
    pub parked_add: Vec<Parked>,
    /// Kept messages processed (or given up on), by `seq`.
    pub parked_done: Vec<i64>,
}

/// An MLS message kept until its epoch is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parked {
    /// Its place in the table (0 until stored).
    pub seq: i64,
    /// The chat.
    pub group_id: Vec<u8>,
    /// The MLS epoch it was sent in.
    pub epoch: u64,
    /// The MLS message, as received.
    pub payload: Vec<u8>,
    /// When it was kept (ms since the Unix epoch).
    pub parked_at: i64,
}

/// An open, unlocked profile database.
pub struct ProfileStore {
    pool: SqlitePool,
    key: SealKey,
    dir: PathBuf,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn connect(path: &Path, create: bool) -> Result<SqlitePool> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(create)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(std::time::Duration::from_secs(10));
    // One connection: the CLI and TUI are the only users, and a single
    // connection serialises writes without lock errors.
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    sqlx::migrate!("./migrations").run(&pool).await?;
    Ok(pool)
}

impl ProfileStore {
    /// Whether `dir` holds a profile.
    pub fn exists(dir: &Path) -> bool {
        dir.join(DB_FILE).exists()
    }

    /// Creates a new profile protected by `passphrase`.
    pub async fn create(dir: &Path, passphrase: &str, kdf: KdfParams) -> Result<Self> {
        if Self::exists(dir) {
            return Err(ClientError::ProfileExists(dir.to_owned()));
        }
        std::fs::create_dir_all(dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let mut salt = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        let key = SealKey::derive(passphrase, &salt, kdf)?;
        let pool = connect(&dir.join(DB_FILE), true).await?;
        let mut tx = pool.begin().await?;
        for (k, v) in [
            ("salt", salt.to_vec()),
            (
                "kdf",
                serde_json::to_vec(&kdf).map_err(|_| ClientError::Corrupt("kdf"))?,
            ),
            ("check", key.seal(b"meta/check", CHECK_PLAIN)),
        ] {
            sqlx::query("INSERT INTO meta (key, value) VALUES (?, ?)")
                .bind(k)
                .bind(v)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Self {
            pool,
            key,
            dir: dir.to_owned(),
        })
    }

    /// Opens and unlocks an existing profile. A wrong passphrase is reported
    /// before anything is written.
    pub async fn open(dir: &Path, passphrase: &str) -> Result<Self> {
        if !Self::exists(dir) {
            return Err(ClientError::NoProfile(dir.to_owned()));
        }
        let pool = connect(&dir.join(DB_FILE), false).await?;
        let meta = |k: &'static str| {
            let pool = pool.clone();
            async move {
                let row = sqlx::query("SELECT value FROM meta WHERE key = ?")
                    .bind(k)
                    .fetch_optional(&pool)
                    .await?;
                row.map(|r| r.get::<Vec<u8>, _>(0))
                    .ok_or(ClientError::Corrupt("profile metadata missing"))
            }
        };
        let salt = meta("salt").await?;
        let kdf: KdfParams =
            serde_json::from_slice(&meta("kdf").await?).map_err(|_| ClientError::Corrupt("kdf"))?;
        let key = SealKey::derive(passphrase, &salt, kdf)?;
        match key.open(b"meta/check", &meta("check").await?) {
            Ok(plain) if plain == CHECK_PLAIN => {}
            _ => return Err(ClientError::WrongPassphrase),
        }
        Ok(Self {
            pool,
            key,
            dir: dir.to_owned(),
        })
    }

    /// The profile directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The database file (tests scan it for plaintext).
    pub fn db_path(dir: &Path) -> PathBuf {
        dir.join(DB_FILE)
    }

    /// Deletes the profile's files in `dir` (the database, its journal and
    /// the lock file), leaving the directory itself. The caller holds the
    /// profile lock, so no other process is half-way through a write.
    pub fn delete_files(dir: &Path) -> Result<()> {
        for name in [
            DB_FILE.to_owned(),
            format!("{DB_FILE}-wal"),
            format!("{DB_FILE}-shm"),
            format!("{DB_FILE}-journal"),
            crate::lock::LOCK_FILE.to_owned(),
        ] {
            match std::fs::remove_file(dir.join(name)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The state generation: bumped by every batch, so a process can tell
    /// whether another one wrote since it loaded its state.
    pub async fn generation(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT value FROM state_generation WHERE id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Messages waiting for the relay, oldest first.
    pub async fn outbox(&self) -> Result<Vec<OutboxEntry>> {
        let rows = sqlx::query(
            "SELECT envelope_id, message_id, group_id, payload, sealed FROM outbox ORDER BY seq",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let envelope: Vec<u8> = r.get(0);
                let recipients: Vec<DeviceId> =
                    self.open_json(&place("outbox", &envelope), &r.get::<Vec<u8>, _>(4))?;
                let bad = || ClientError::Corrupt("an outbox entry");
                Ok(OutboxEntry {
                    envelope_id: EnvelopeId::from_bytes(envelope.try_into().map_err(|_| bad())?),
                    message_id: uuid::Uuid::from_slice(&r.get::<Vec<u8>, _>(1))
                        .map_err(|_| bad())?,
                    group_id: r.get(2),
                    payload: r.get(3),
                    recipients,
                })
            })
            .collect()
    }

    /// Whether a message of a later epoch than `epoch` is kept for a chat:
    /// the chat changed and the change has not reached this device.
    pub async fn parked_ahead(&self, group_id: &[u8], epoch: u64) -> Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM parked WHERE group_id = ? AND epoch > ?)",
        )
        .bind(group_id)
        .bind(i64::try_from(epoch).unwrap_or(i64::MAX))
        .fetch_one(&self.pool)
        .await?)
    }

    /// The MLS messages kept for an epoch not reached yet, oldest first.
    pub async fn parked(&self) -> Result<Vec<Parked>> {
        let rows =
            sqlx::query("SELECT seq, group_id, epoch, payload, parked_at FROM parked ORDER BY seq")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .iter()
            .map(|r| Parked {
                seq: r.get(0),
                group_id: r.get(1),
                epoch: u64::try_from(r.get::<i64, _>(2)).unwrap_or(0),
                payload: r.get(3),
                parked_at: r.get(4),
            })
            .collect())
    }

    fn open_json<T: DeserializeOwned>(&self, place: &[u8], sealed: &[u8]) -> Result<T> {
        let plain = self.key.open(place, sealed)?;
        serde_json::from_slice(&plain)
            .map_err(|_| ClientError::Corrupt("a stored record does not decode"))
    }

    fn seal_json<T: Serialize>(&self, place: &[u8], value: &T) -> Result<Vec<u8>> {
        let plain =
            serde_json::to_vec(value).map_err(|_| ClientError::Corrupt("record encoding"))?;
        Ok(self.key.seal(place, &plain))
    }

    /// A sealed document's plaintext.
    pub async fn document(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let row = sqlx::query("SELECT value FROM documents WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            self.key.open(
                format!("documents/{name}").as_bytes(),
                &r.get::<Vec<u8>, _>(0),
            )
        })
        .transpose()
    }

    /// Every chat.
    pub async fn chats(&self) -> Result<Vec<ChatRecord>> {
        let rows = sqlx::query("SELECT group_id, sealed FROM chats ORDER BY updated_at DESC")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                self.open_json(
                    &place("chats", &r.get::<Vec<u8>, _>(0)),
                    &r.get::<Vec<u8>, _>(1),
                )
            })
            .collect()
    }

    /// The last `limit` messages of a chat, oldest first.
    pub async fn messages(&self, group_id: &[u8], limit: u32) -> Result<Vec<MessageRecord>> {
        let rows = sqlx::query(
            "SELECT message_id, sealed FROM messages WHERE group_id = ? ORDER BY seq DESC LIMIT ?",
        )
        .bind(group_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<MessageRecord> = rows
            .iter()
            .map(|r| {
                self.open_json(
                    &place("messages", &r.get::<Vec<u8>, _>(0)),
                    &r.get::<Vec<u8>, _>(1),
                )
            })
            .collect::<Result<_>>()?;
        out.reverse();
        Ok(out)
    }

    /// One message by id.
    pub async fn message(&self, message_id: uuid::Uuid) -> Result<Option<MessageRecord>> {
        let id = message_id.as_bytes().to_vec();
        let row = sqlx::query("SELECT sealed FROM messages WHERE message_id = ?")
            .bind(&id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| self.open_json(&place("messages", &id), &r.get::<Vec<u8>, _>(0)))
            .transpose()
    }

    /// Whether an envelope was already processed.
    pub async fn is_processed(&self, id: EnvelopeId) -> Result<bool> {
        let row = sqlx::query("SELECT 1 FROM processed WHERE envelope_id = ?")
            .bind(id.as_bytes().to_vec())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Applies a changeset atomically and returns the new state generation.
    pub async fn apply(&self, changes: Changes) -> Result<i64> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let generation: i64 = sqlx::query_scalar(
            "UPDATE state_generation SET value = value + 1 WHERE id = 1 RETURNING value",
        )
        .fetch_one(&mut *tx)
        .await?;
        for (name, plain) in &changes.documents {
            sqlx::query("INSERT INTO documents (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value")
                .bind(*name)
                .bind(self.key.seal(format!("documents/{name}").as_bytes(), plain))
                .execute(&mut *tx)
                .await?;
        }
        for chat in &changes.chats {
            sqlx::query(
                "INSERT INTO chats (group_id, sealed, created_at, updated_at) VALUES (?, ?, ?, ?)
                 ON CONFLICT (group_id) DO UPDATE SET sealed = excluded.sealed, updated_at = excluded.updated_at",
            )
            .bind(&chat.group_id)
            .bind(self.seal_json(&place("chats", &chat.group_id), chat)?)
            .bind(chat.created_at)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        for message in &changes.messages {
            let id = message.message_id.as_bytes().to_vec();
            sqlx::query("INSERT INTO messages (group_id, message_id, sealed) VALUES (?, ?, ?) ON CONFLICT (message_id) DO NOTHING")
                .bind(&message.group_id)
                .bind(&id)
                .bind(self.seal_json(&place("messages", &id), message)?)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE chats SET updated_at = ? WHERE group_id = ?")
                .bind(now)
                .bind(&message.group_id)
                .execute(&mut *tx)
                .await?;
        }
        for (placeholder, message) in &changes.filled {
            let id = message.message_id.as_bytes().to_vec();
            sqlx::query(
                "UPDATE messages SET message_id = ?, sealed = ? WHERE message_id = ? AND group_id = ?",
            )
            .bind(&id)
            .bind(self.seal_json(&place("messages", &id), message)?)
            .bind(placeholder.as_bytes().to_vec())
            .bind(&message.group_id)
            .execute(&mut *tx)
            .await?;
        }
        for p in &changes.parked_add {
            sqlx::query(
                "INSERT INTO parked (group_id, epoch, payload, parked_at) VALUES (?, ?, ?, ?)",
            )
            .bind(&p.group_id)
            .bind(i64::try_from(p.epoch).unwrap_or(i64::MAX))
            .bind(&p.payload)
            .bind(p.parked_at)
            .execute(&mut *tx)
            .await?;
        }
        for seq in &changes.parked_done {
            sqlx::query("DELETE FROM parked WHERE seq = ?")
                .bind(seq)
                .execute(&mut *tx)
                .await?;
        }
        for id in &changes.processed {
            sqlx::query("INSERT INTO processed (envelope_id, processed_at) VALUES (?, ?) ON CONFLICT DO NOTHING")
                .bind(id.as_bytes().to_vec())
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        for message in &changes.updated_messages {
            let id = message.message_id.as_bytes().to_vec();
            sqlx::query("UPDATE messages SET sealed = ? WHERE message_id = ?")
                .bind(self.seal_json(&place("messages", &id), message)?)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
        }
        for entry in &changes.outbox_add {
            let id = entry.envelope_id.as_bytes().to_vec();
            sqlx::query(
                "INSERT INTO outbox (envelope_id, message_id, group_id, payload, sealed, created_at)
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(&id)
            .bind(entry.message_id.as_bytes().to_vec())
            .bind(&entry.group_id)
            .bind(&entry.payload)
            .bind(self.seal_json(&place("outbox", &id), &entry.recipients)?)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        for id in &changes.outbox_done {
            sqlx::query("DELETE FROM outbox WHERE envelope_id = ?")
                .bind(id.as_bytes().to_vec())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(generation)
    }

    /// Closes the database.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn place(table: &str, id: &[u8]) -> Vec<u8> {
    let mut p = table.as_bytes().to_vec();
    p.push(b'/');
    p.extend_from_slice(id);
    p
}
