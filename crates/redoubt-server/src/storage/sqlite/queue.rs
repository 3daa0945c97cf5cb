//! The SQLite backend's hot path: sends, acks and mailbox reads, each kind
//! on a thread of its own with a synchronous connection (`rusqlite`) and
//! cached prepared statements.
//!
//! Why not sqlx here: sqlx runs every SQLite connection on a worker thread
//! and each statement is a round trip to it, so a send (five statements)
//! cost about ten thread hand-offs; in the load tool's profile futex waits
//! and wake-ups were half of the relay's CPU time. Here a whole batch of
//! jobs is one hand-off each way.
//!
//! The writer keeps the group commit of before: the jobs that arrived while
//! a transaction ran share the next one and its single fsync, nothing is
//! answered before its commit, and if a shared transaction fails each of its
//! jobs is run again alone so one bad job cannot fail the others. Every job
//! only reads before it writes anything (the commit position moves only when
//! the envelope is then queued), so a refused job leaves nothing behind in a
//! shared transaction.
//!
//! After each commit, and before answering its jobs, the writer hands the
//! envelopes it queued to the [`CommitFeed`] if one is installed (the live
//! sessions): commits happen one after another on this one thread, so the
//! feed sees them in commit order and mailbox sequence numbers only grow.
//!
//! This writer is a second writing connection beside sqlx's, which keeps the
//! rarer writes (registration, key packages, the IP log, purges). SQLite
//! lets one write at a time; both sides take the lock at the start of their
//! transactions (`BEGIN IMMEDIATE`) and wait for it under the busy timeout.

use std::path::Path;
use std::sync::{mpsc, Arc, OnceLock};
use std::time::Duration;

use redoubt_proto::{DeviceId, EnvelopeId, Timestamp};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use sha2::{Digest as _, Sha256};
use tokio::sync::oneshot;

use super::super::codec::*;
use super::super::{
    CommitFeed, Committed, EnqueueOutcome, NewEnvelope, QueuedEnvelope, StoreError, Write, Written,
    MAX_BATCH,
};
use crate::config::SqliteSync;

/// A mailbox read on the reader thread.
struct Read {
    device: DeviceId,
    now: Timestamp,
    limit: u32,
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// The way into a thread; `None` once closed.
type Inbox<J, T> = std::sync::Mutex<Option<mpsc::Sender<(J, Reply<T>)>>>;

/// Where the writer hands committed envelopes, once installed.
pub(super) type FeedSlot = Arc<OnceLock<Arc<dyn CommitFeed>>>;

/// The two threads, reached through channels. Dropping the last handle ends
/// them; [`Queue::close`] ends them and waits.
pub(super) struct Queue {
    writes: Inbox<Write, Written>,
    reads: Inbox<Read, Vec<QueuedEnvelope>>,
    threads: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Queue {
    /// Opens the writer's and the reader's connections to the database at
    /// `path` (already created and migrated) and starts their threads.
    pub(super) fn start(path: &Path, sync: SqliteSync, feed: FeedSlot) -> Result<Self, StoreError> {
        let writer = open(path, sync)?;
        let reader = open(path, sync)?;
        let (writes, write_jobs) = mpsc::channel();
        let (reads, read_jobs) = mpsc::channel();
        let threads = vec![
            std::thread::Builder::new()
                .name("sqlite-writer".into())
                .spawn(move || {
                    serve(writer, write_jobs, |conn, jobs| {
                        write_batch(conn, jobs, &feed)
                    })
                })
                .map_err(|_| StoreError::Stopped)?,
            std::thread::Builder::new()
                .name("sqlite-reader".into())
                .spawn(move || serve(reader, read_jobs, read_batch))
                .map_err(|_| StoreError::Stopped)?,
        ];
        Ok(Self {
            writes: std::sync::Mutex::new(Some(writes)),
            reads: std::sync::Mutex::new(Some(reads)),
            threads: std::sync::Mutex::new(threads),
        })
    }

    /// Queues an envelope once its transaction commits.
    pub(super) async fn enqueue(
        &self,
        envelope: NewEnvelope,
    ) -> Result<EnqueueOutcome, StoreError> {
        call(&self.writes, Write::Enqueue(envelope))
            .await?
            .enqueued()
    }

    /// Removes acknowledged envelopes from a mailbox once committed.
    pub(super) async fn ack(
        &self,
        device: DeviceId,
        ids: &[EnvelopeId],
    ) -> Result<u64, StoreError> {
        call(&self.writes, Write::Ack(device, ids.to_vec()))
            .await?
            .acked()
    }

    /// The oldest unexpired envelopes in a mailbox.
    pub(super) async fn pending(
        &self,
        device: DeviceId,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<QueuedEnvelope>, StoreError> {
        call(&self.reads, Read { device, now, limit }).await
    }

    /// Stops both threads after the jobs already sent, and waits for them
    /// (their connections close, so the database file is released).
    pub(super) fn close(&self) {
        lock(&self.writes).take();
        lock(&self.reads).take();
        for thread in std::mem::take(&mut *lock(&self.threads)) {
            let _ = thread.join();
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is one take or clone: a panic cannot leave
    // the value half-changed.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sends a job to a thread and waits for its answer.
async fn call<J, T>(to: &Inbox<J, T>, job: J) -> Result<T, StoreError> {
    let (reply, answer) = oneshot::channel();
    let sender = lock(to).clone().ok_or(StoreError::Stopped)?;
    sender.send((job, reply)).map_err(|_| StoreError::Stopped)?;
    answer.await.map_err(|_| StoreError::Stopped)?
}

/// Opens one connection with the same settings as the sqlx pools.
fn open(path: &Path, sync: SqliteSync) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.pragma_update(
        None,
        "synchronous",
        match sync {
            SqliteSync::Full => "FULL",
            SqliteSync::Normal => "NORMAL",
        },
    )?;
    // Queues are read back soon after they are written: a page cache of
    // 32 MiB per connection (SQLite's default is 2 MiB) and reads of the
    // database file through a memory map spare a system call and a copy per
    // page (the backlog drain's profile was dominated by them).
    conn.pragma_update(None, "cache_size", -32 * 1024)?;
    conn.pragma_update(None, "mmap_size", 256 * 1024 * 1024)?;
    // Enough room for every statement of the hot path, prepared once.
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// A thread's loop: take the jobs that are waiting (at most
/// [`MAX_BATCH`]), run them as one batch, answer each.
fn serve<J, T>(
    mut conn: Connection,
    jobs: mpsc::Receiver<(J, Reply<T>)>,
    mut run: impl FnMut(&mut Connection, &[J]) -> Result<Vec<T>, StoreError>,
) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (work, replies): (Vec<J>, Vec<Reply<T>>) = batch.into_iter().unzip();
        match run(&mut conn, &work) {
            Ok(done) => {
                for (reply, d) in replies.into_iter().zip(done) {
                    let _ = reply.send(Ok(d));
                }
            }
            Err(_) if work.len() > 1 => {
                for (job, reply) in work.into_iter().zip(replies) {
                    let alone = run(&mut conn, std::slice::from_ref(&job)).and_then(|mut d| {
                        d.pop()
                            .ok_or(StoreError::Corrupt("a job ran without a result"))
                    });
                    let _ = reply.send(alone);
                }
            }
            Err(e) => {
                if let Some(reply) = replies.into_iter().next() {
                    let _ = reply.send(Err(e));
                }
            }
        }
    }
}

/// Runs writes in one transaction, committing once, then hands what it
/// queued to the feed.
fn write_batch(
    conn: &mut Connection,
    jobs: &[Write],
    feed: &FeedSlot,
) -> Result<Vec<Written>, StoreError> {
    let feed = feed.get();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut done = Vec::with_capacity(jobs.len());
    let mut committed = Vec::new();
    for job in jobs {
        done.push(match job {
            Write::Enqueue(envelope) => match enqueue(&tx, envelope)? {
                Ok(mailboxes) => {
                    if feed.is_some() {
                        committed.push(Committed {
                            id: envelope.id,
                            kind: envelope.kind,
                            received_at: envelope.now,
                            payload: Arc::new(envelope.payload.clone()),
                            mailboxes,
                        });
                    }
                    Written::Enqueued(EnqueueOutcome::Queued)
                }
                Err(refused) => Written::Enqueued(refused),
            },
            Write::Ack(device, ids) => Written::Acked(ack(&tx, *device, ids)?),
        });
    }
    tx.commit()?;
    if let Some(feed) = feed {
        if !committed.is_empty() {
            feed.committed(committed);
        }
    }
    Ok(done)
}

/// Runs reads in one read transaction (one snapshot, one lock).
fn read_batch(
    conn: &mut Connection,
    jobs: &[Read],
) -> Result<Vec<Vec<QueuedEnvelope>>, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
    let mut done = Vec::with_capacity(jobs.len());
    {
        let mut query = tx.prepare_cached(
            "SELECT m.seq, e.id, e.kind, e.received_at, e.payload FROM mailbox m
             JOIN envelopes e ON e.id = m.envelope_id
             WHERE m.device_id = ?1 AND e.expires_at > ?2
             ORDER BY m.seq LIMIT ?3",
        )?;
        for job in jobs {
            let rows = query.query_map(
                params![job.device.as_bytes(), ms(job.now), i64::from(job.limit)],
                |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, Vec<u8>>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, i64>(3)?,
                        row.get::<_, Vec<u8>>(4)?,
                    ))
                },
            )?;
            let mut envelopes = Vec::new();
            for row in rows {
                let (seq, id, kind, received_at, payload) = row?;
                envelopes.push(queued_envelope(seq, id, &kind, received_at, payload)?);
            }
            done.push(envelopes);
        }
    }
    tx.commit()?;
    Ok(done)
}

/// One enqueue inside the writer's transaction: the envelope's sequence
/// number in each mailbox once queued, or why nothing was.
fn enqueue(
    tx: &rusqlite::Transaction<'_>,
    envelope: &NewEnvelope,
) -> Result<Result<Vec<(DeviceId, i64)>, EnqueueOutcome>, StoreError> {
    let payload_hash = Sha256::digest(&envelope.payload).to_vec();
    let id = envelope.id.as_bytes();
    let stored: Option<Vec<u8>> = tx
        .prepare_cached("SELECT payload_hash FROM envelope_receipts WHERE id = ?1")?
        .query_row([id], |row| row.get(0))
        .optional()?;
    if let Some(stored) = stored {
        return Ok(Err(if stored == payload_hash {
            EnqueueOutcome::Duplicate
        } else {
            EnqueueOutcome::Conflict
        }));
    }
    // Queue lengths are kept by triggers (migration 0003), so the caps cost
    // the same however long the queues are.
    let mut active = QueueLengths::new();
    {
        let mut device =
            tx.prepare_cached("SELECT queued FROM devices WHERE id = ?1 AND revoked_at IS NULL")?;
        for d in &envelope.recipients {
            if let Some(queued) = device
                .query_row([d.as_bytes()], |row| row.get::<_, i64>(0))
                .optional()?
            {
                active.insert(*d, queued);
            }
        }
    }
    if let Some(refused) = refuse_recipients(&envelope.recipients, &active, envelope.max_queued) {
        return Ok(Err(refused));
    }
    if let Some(commit) = &envelope.commit {
        let (epoch, next) = commit.columns();
        let moved = tx
            .prepare_cached(crate::storage::ADVANCE_COMMIT_POSITION)?
            .query_row(
                params![commit.group.as_slice(), next, ms(envelope.now), epoch],
                |_| Ok(()),
            )
            .optional()?;
        if moved.is_none() {
            return Ok(Err(EnqueueOutcome::StaleCommit));
        }
    }
    tx.prepare_cached(
        "INSERT INTO envelopes (id, kind, payload, received_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        id,
        kind_to_str(envelope.kind),
        envelope.payload,
        ms(envelope.now),
        ms(envelope.expires_at)
    ])?;
    tx.prepare_cached(
        "INSERT INTO envelope_receipts (id, payload_hash, received_at) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![id, payload_hash, ms(envelope.now)])?;
    let mut mailbox =
        tx.prepare_cached("INSERT INTO mailbox (device_id, envelope_id) VALUES (?1, ?2)")?;
    let mut mailboxes = Vec::with_capacity(envelope.recipients.len());
    for d in &envelope.recipients {
        mailbox.execute(params![d.as_bytes(), id])?;
        // The trigger that counts the queue inserts nothing, so this is
        // the mailbox row's own `seq`.
        mailboxes.push((*d, tx.last_insert_rowid()));
    }
    Ok(Ok(mailboxes))
}

/// One acknowledgement inside the writer's transaction: the mailbox rows
/// go, and each envelope once no mailbox references it.
fn ack(
    tx: &rusqlite::Transaction<'_>,
    device: DeviceId,
    ids: &[EnvelopeId],
) -> Result<u64, StoreError> {
    let mut remove =
        tx.prepare_cached("DELETE FROM mailbox WHERE device_id = ?1 AND envelope_id = ?2")?;
    let mut collect = tx.prepare_cached(
        "DELETE FROM envelopes WHERE id = ?1
         AND NOT EXISTS (SELECT 1 FROM mailbox WHERE mailbox.envelope_id = ?1)",
    )?;
    let mut removed = 0;
    for id in ids {
        let n = remove.execute(params![device.as_bytes(), id.as_bytes()])?;
        if n > 0 {
            removed += n as u64;
            collect.execute([id.as_bytes()])?;
        }
    }
    Ok(removed)
}
