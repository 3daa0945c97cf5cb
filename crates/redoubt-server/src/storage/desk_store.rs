//! The legal desk's state in the relay's database: `legal_audit` (the log,
//! every other piece of the desk's state being its replay) and
//! `legal_blobs` (documents and packages the log commits to by hash), on
//! each backend. Like `legal_view`, this module touches no other table.
//!
//! An append is one transaction that first checks the log still has the
//! length the desk decided on, so every writer (several relay nodes, the
//! `redoubtd legal` commands, the relay's own notice writer) is serialised
//! by the database: a second writer finds the log moved and decides again.
//! The sequence number is the primary key as well, so even a writer that
//! skipped the check could not fork the log.

use redoubt_legal::store::DeskStore;
use redoubt_legal::LegalError;
use sqlx::Row;

use super::legal_view::RelayRecords;
use super::postgres::PgStore;
use super::sqlite::SqliteStore;
use super::BeginWrite as _;

fn failed(e: sqlx::Error) -> LegalError {
    LegalError::Store(e.to_string())
}

/// A unique violation means another writer took the position first.
fn lost_race(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

impl DeskStore for SqliteStore {
    async fn entries(&self) -> Result<Vec<String>, LegalError> {
        self.entries_after(0).await
    }

    async fn entries_after(&self, seq: u64) -> Result<Vec<String>, LegalError> {
        let rows = sqlx::query("SELECT entry FROM legal_audit WHERE seq > ? ORDER BY seq")
            .bind(i64::try_from(seq).unwrap_or(i64::MAX))
            .fetch_all(self.read_pool())
            .await
            .map_err(failed)?;
        // A row that is not text is an error, never skipped.
        rows.into_iter()
            .map(|r| r.try_get::<String, _>(0).map_err(failed))
            .collect()
    }

    async fn blob(&self, sha256: &str) -> Result<Option<Vec<u8>>, LegalError> {
        let row = sqlx::query("SELECT bytes FROM legal_blobs WHERE sha256 = ?")
            .bind(sha256)
            .fetch_optional(self.read_pool())
            .await
            .map_err(failed)?;
        row.map(|r| r.try_get::<Vec<u8>, _>(0).map_err(failed))
            .transpose()
    }

    async fn append(
        &self,
        after: u64,
        entries: Vec<String>,
        blobs: Vec<(String, Vec<u8>)>,
    ) -> Result<bool, LegalError> {
        // IMMEDIATE takes the write lock before the length is read, so the
        // check and the insert see the same log, across processes too.
        let mut tx = self
            .write_pool()
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(failed)?;
        let len: i64 = sqlx::query("SELECT COUNT(*) FROM legal_audit")
            .fetch_one(&mut *tx)
            .await
            .map_err(failed)?
            .get(0);
        if u64::try_from(len).ok() != Some(after) {
            return Ok(false);
        }
        for (i, entry) in entries.iter().enumerate() {
            let seq = i64::try_from(after + 1 + i as u64)
                .map_err(|e| LegalError::Store(e.to_string()))?;
            let done = sqlx::query("INSERT INTO legal_audit (seq, entry) VALUES (?, ?)")
                .bind(seq)
                .bind(entry)
                .execute(&mut *tx)
                .await;
            match done {
                Err(e) if lost_race(&e) => return Ok(false),
                other => other.map_err(failed)?,
            };
        }
        for (sha256, bytes) in &blobs {
            sqlx::query("INSERT OR IGNORE INTO legal_blobs (sha256, bytes) VALUES (?, ?)")
                .bind(sha256)
                .bind(bytes)
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
        }
        tx.commit().await.map_err(failed)?;
        Ok(true)
    }
}

impl DeskStore for PgStore {
    async fn entries(&self) -> Result<Vec<String>, LegalError> {
        self.entries_after(0).await
    }

    async fn entries_after(&self, seq: u64) -> Result<Vec<String>, LegalError> {
        let rows = sqlx::query("SELECT entry FROM legal_audit WHERE seq > $1 ORDER BY seq")
            .bind(i64::try_from(seq).unwrap_or(i64::MAX))
            .fetch_all(self.pool())
            .await
            .map_err(failed)?;
        // A row that is not text is an error, never skipped.
        rows.into_iter()
            .map(|r| r.try_get::<String, _>(0).map_err(failed))
            .collect()
    }

    async fn blob(&self, sha256: &str) -> Result<Option<Vec<u8>>, LegalError> {
        let row = sqlx::query("SELECT bytes FROM legal_blobs WHERE sha256 = $1")
            .bind(sha256)
            .fetch_optional(self.pool())
            .await
            .map_err(failed)?;
        row.map(|r| r.try_get::<Vec<u8>, _>(0).map_err(failed))
            .transpose()
    }

    async fn append(
        &self,
        after: u64,
        entries: Vec<String>,
        blobs: Vec<(String, Vec<u8>)>,
    ) -> Result<bool, LegalError> {
        let mut tx = self.pool().begin_write().await.map_err(failed)?;
        // One desk writer at a time across every node; released at commit
        // or rollback.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(super::postgres::lock_key("legal-desk", b""))
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        let len: i64 = sqlx::query("SELECT COUNT(*) FROM legal_audit")
            .fetch_one(&mut *tx)
            .await
            .map_err(failed)?
            .get(0);
        if u64::try_from(len).ok() != Some(after) {
            return Ok(false);
        }
        for (i, entry) in entries.iter().enumerate() {
            let seq = i64::try_from(after + 1 + i as u64)
                .map_err(|e| LegalError::Store(e.to_string()))?;
            let done = sqlx::query("INSERT INTO legal_audit (seq, entry) VALUES ($1, $2)")
                .bind(seq)
                .bind(entry)
                .execute(&mut *tx)
                .await;
            match done {
                Err(e) if lost_race(&e) => return Ok(false),
                other => other.map_err(failed)?,
            };
        }
        for (sha256, bytes) in &blobs {
            sqlx::query(
                "INSERT INTO legal_blobs (sha256, bytes) VALUES ($1, $2) ON CONFLICT (sha256) DO NOTHING",
            )
            .bind(sha256)
            .bind(bytes)
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        }
        tx.commit().await.map_err(failed)?;
        Ok(true)
    }
}

impl DeskStore for RelayRecords {
    async fn entries(&self) -> Result<Vec<String>, LegalError> {
        match self {
            Self::Sqlite(s) => s.entries().await,
            Self::Postgres(p) => p.entries().await,
        }
    }

    async fn entries_after(&self, seq: u64) -> Result<Vec<String>, LegalError> {
        match self {
            Self::Sqlite(s) => s.entries_after(seq).await,
            Self::Postgres(p) => p.entries_after(seq).await,
        }
    }

    async fn blob(&self, sha256: &str) -> Result<Option<Vec<u8>>, LegalError> {
        match self {
            Self::Sqlite(s) => s.blob(sha256).await,
            Self::Postgres(p) => p.blob(sha256).await,
        }
    }

    async fn append(
        &self,
        after: u64,
        entries: Vec<String>,
        blobs: Vec<(String, Vec<u8>)>,
    ) -> Result<bool, LegalError> {
        match self {
            Self::Sqlite(s) => s.append(after, entries, blobs).await,
            Self::Postgres(p) => p.append(after, entries, blobs).await,
        }
    }
}
