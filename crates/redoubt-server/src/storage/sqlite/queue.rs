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
//!
//! Being the only one that adds to mailboxes, the writer keeps the hot
//! state beside itself instead of in rows it would rewrite per message
//! (migration 0010): the next mailbox sequence number, and the length of
//! each queue it has counted. The sqlx side only ever removes from
//! mailboxes (revocation, expiry, market exit); after each such commit it
//! calls [`Queue::queues_shrank`], and the writer counts again before it
//! next checks a cap. In between, a length can only be too high, never too
//! low: a cap may refuse one send too many, never admit one too many.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Bumped after every commit elsewhere that removed mailbox rows.
    shrank: Arc<AtomicU64>,
    reads: Inbox<Read, Vec<QueuedEnvelope>>,
    threads: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Queue {
    /// Opens the writer's and the reader's connections to the database at
    /// `path` (already created and migrated) and starts their threads.
    pub(super) fn start(path: &Path, sync: SqliteSync, feed: FeedSlot) -> Result<Self, StoreError> {
        let writer = open(path, sync)?;
        let reader = open(path, sync)?;
        let shrank = Arc::new(AtomicU64::new(0));
        let mut lengths = Lengths::start(&writer, shrank.clone())?;
        let (writes, write_jobs) = mpsc::channel();
        let (reads, read_jobs) = mpsc::channel();
        let threads = vec![
            std::thread::Builder::new()
                .name("sqlite-writer".into())
                .spawn(move || {
                    serve(writer, write_jobs, |conn, jobs| {
                        let done = write_batch(conn, jobs, &feed, &mut lengths);
                        if done.is_err() {
                            // The transaction rolled back, and with it
                            // whatever this batch counted.
                            lengths.forget();
                        }
                        done
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
            shrank,
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

    /// Tells the writer that a commit of another connection removed rows
    /// from mailboxes, so the queue lengths it keeps are too high: it
    /// counts them again before it next needs them.
    pub(super) fn queues_shrank(&self) {
        self.shrank.fetch_add(1, Ordering::Release);
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
    // As on the sqlx connections: acknowledged ciphertext is overwritten.
    conn.pragma_update(None, "secure_delete", true)?;
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
    lengths: &mut Lengths,
) -> Result<Vec<Written>, StoreError> {
    let feed = feed.get();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Read with the write lock held: a removal committed before it is seen
    // here or, if its bump came too late, by the next batch.
    lengths.catch_up();
    let mut done = Vec::with_capacity(jobs.len());
    let mut committed = Vec::new();
    for job in jobs {
        done.push(match job {
            Write::Enqueue(envelope) => match enqueue(&tx, envelope, lengths)? {
                Ok((mailboxes, full)) => {
                    if feed.is_some() {
                        committed.push(Committed {
                            id: envelope.id,
                            kind: envelope.kind,
                            received_at: envelope.now,
                            payload: Arc::new(envelope.payload.clone()),
                            mailboxes,
                        });
                    }
                    Written::Enqueued(if full.is_empty() {
                        EnqueueOutcome::Queued
                    } else {
                        EnqueueOutcome::Partial(full)
                    })
                }
                Err(refused) => Written::Enqueued(refused),
            },
            Write::Ack(device, ids) => Written::Acked(ack(&tx, *device, ids, lengths)?),
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

/// Where an enqueue put an envelope: each mailbox with its sequence
/// number there, and the full mailboxes it left out.
type Placed = (Vec<(DeviceId, i64)>, Vec<DeviceId>);

/// One enqueue inside the writer's transaction: the envelope's sequence
/// number in each mailbox it was queued to and the full mailboxes it was
/// not, or why nothing was queued.
fn enqueue(
    tx: &rusqlite::Transaction<'_>,
    envelope: &NewEnvelope,
    lengths: &mut Lengths,
) -> Result<Result<Placed, EnqueueOutcome>, StoreError> {
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
    // Revocation is read from the row every time (another connection
    // revokes); queue lengths come from memory, so the caps cost the same
    // however long the queues are.
    let mut active = QueueLengths::new();
    {
        let mut device =
            tx.prepare_cached("SELECT 1 FROM devices WHERE id = ?1 AND revoked_at IS NULL")?;
        for d in &envelope.recipients {
            if device.exists([d.as_bytes()])? {
                active.insert(*d, lengths.get(tx, *d)?);
            }
        }
    }
    let full = match admit_recipients(&envelope.recipients, &active, envelope.max_queued) {
        Ok(full) => full,
        Err(refused) => return Ok(Err(refused)),
    };
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
        tx.prepare_cached("INSERT INTO mailbox (device_id, seq, envelope_id) VALUES (?1, ?2, ?3)")?;
    let mut mailboxes = Vec::with_capacity(envelope.recipients.len());
    let mut last = tx
        .prepare_cached("SELECT seq FROM mailbox WHERE device_id = ?1 ORDER BY seq DESC LIMIT 1")?;
    for d in envelope.recipients.iter().filter(|d| !full.contains(d)) {
        // Above the queue's last row even if something other than this
        // writer put it there (an operator's repair, the malicious-relay
        // tests): one seek, to the page the insert writes anyway.
        let after: Option<i64> = last
            .query_row([d.as_bytes()], |row| row.get(0))
            .optional()?;
        let seq = lengths.next_seq(after);
        mailbox.execute(params![d.as_bytes(), seq, id])?;
        lengths.add(*d, 1);
        mailboxes.push((*d, seq));
    }
    Ok(Ok((mailboxes, full)))
}

/// One acknowledgement inside the writer's transaction: the mailbox rows
/// go, and each envelope once no mailbox references it.
fn ack(
    tx: &rusqlite::Transaction<'_>,
    device: DeviceId,
    ids: &[EnvelopeId],
    lengths: &mut Lengths,
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
    lengths.add(device, -(removed as i64));
    Ok(removed)
}

/// The hot state the writer keeps in memory instead of in rows: the next
/// mailbox sequence number and the queue lengths it has counted.
struct Lengths {
    next_seq: i64,
    /// Queue lengths by device, for the devices counted since the last
    /// time they were forgotten. Absent means "count it".
    queued: HashMap<DeviceId, i64>,
    /// [`Queue::queues_shrank`]'s counter, and its value when `queued` was
    /// last known to be right.
    shrank: Arc<AtomicU64>,
    seen: u64,
}

/// Beyond this many counted queues, the empty ones are forgotten (they are
/// one index seek to count again), so memory follows what is queued rather
/// than every device that ever received.
const MAX_COUNTED: usize = 100_000;

impl Lengths {
    fn start(conn: &Connection, shrank: Arc<AtomicU64>) -> Result<Self, StoreError> {
        // A full scan, once per start: the table is ordered by device.
        let top: i64 = conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM mailbox", [], |row| {
            row.get(0)
        })?;
        let seen = shrank.load(Ordering::Acquire);
        Ok(Self {
            next_seq: top + 1,
            queued: HashMap::new(),
            shrank,
            seen,
        })
    }

    /// The next sequence number, above `after` (the queue's last).
    fn next_seq(&mut self, after: Option<i64>) -> i64 {
        let seq = self.next_seq.max(after.map_or(0, |a| a + 1));
        self.next_seq = seq + 1;
        seq
    }

    /// Forgets every length if another connection removed rows since the
    /// last look.
    fn catch_up(&mut self) {
        let now = self.shrank.load(Ordering::Acquire);
        if now != self.seen {
            self.seen = now;
            self.forget();
        }
    }

    fn forget(&mut self) {
        self.queued.clear();
    }

    /// A device's queue length, counted from the table the first time.
    fn get(&mut self, tx: &rusqlite::Transaction<'_>, device: DeviceId) -> Result<i64, StoreError> {
        if let Some(&n) = self.queued.get(&device) {
            return Ok(n);
        }
        if self.queued.len() >= MAX_COUNTED {
            self.queued.retain(|_, n| *n > 0);
        }
        let n: i64 = tx
            .prepare_cached("SELECT COUNT(*) FROM mailbox WHERE device_id = ?1")?
            .query_row([device.as_bytes()], |row| row.get(0))?;
        self.queued.insert(device, n);
        Ok(n)
    }

    /// Adds to a counted length; an uncounted one is counted when needed.
    fn add(&mut self, device: DeviceId, n: i64) {
        if let Some(queued) = self.queued.get_mut(&device) {
            *queued += n;
        }
    }
}
