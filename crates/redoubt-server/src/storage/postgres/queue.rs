//! Group commit on PostgreSQL: the sends and acks waiting on a node share
//! one transaction, and each kind of write in it is one statement over
//! arrays (`UNNEST`), so a batch costs about seven round trips and one WAL
//! flush however many jobs it holds. Before, every send was its own
//! transaction of five statements and its own flush.
//!
//! What keeps nodes apart is unchanged: the device rows a batch touches are
//! locked in id order before anything changes, and envelopes in id order
//! before their bytes are collected. A batch decides every job before it
//! writes (the caps count the batch's own earlier envelopes), so a refused
//! job leaves nothing behind. If the batch fails, or another node stored
//! one of its ids meanwhile (a receipt insert that did not insert), it is
//! rolled back and each job runs again in a transaction of its own
//! ([`super::enqueue_one`]), which settles such races exactly as before.

use std::collections::{HashMap, HashSet};

use redoubt_proto::{DeviceId, EnvelopeId};
use sha2::{Digest as _, Sha256};
use sqlx::{PgPool, Row};
use tokio::sync::{mpsc, oneshot};

use super::super::codec::*;
use super::super::{
    advance_commit_position, EnqueueOutcome, NewEnvelope, StoreError, Write, Written, MAX_BATCH,
};
use super::{ack_one, active_devices, delete_orphans, enqueue_one, id_list};

type Job = (Write, oneshot::Sender<Result<Written, StoreError>>);

/// The node's writer task, reached through a channel.
pub(super) struct Queue {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Queue {
    /// Starts the writer on `pool`.
    pub(super) fn start(pool: PgPool) -> Self {
        let (jobs, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer(pool, rx));
        Self { jobs }
    }

    async fn call(&self, write: Write) -> Result<Written, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send((write, reply))
            .map_err(|_| StoreError::Stopped)?;
        answer.await.map_err(|_| StoreError::Stopped)?
    }

    /// Queues an envelope once its batch commits.
    pub(super) async fn enqueue(
        &self,
        envelope: NewEnvelope,
    ) -> Result<EnqueueOutcome, StoreError> {
        self.call(Write::Enqueue(envelope)).await?.enqueued()
    }

    /// Removes acknowledged envelopes once the batch commits.
    pub(super) async fn ack(
        &self,
        device: DeviceId,
        ids: &[EnvelopeId],
    ) -> Result<u64, StoreError> {
        self.call(Write::Ack(device, ids.to_vec())).await?.acked()
    }
}

async fn writer(pool: PgPool, mut jobs: mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (work, replies): (Vec<Write>, Vec<_>) = batch.into_iter().unzip();
        let together = if work.len() > 1 {
            match write_batch(&pool, &work).await {
                Ok(done) => done,
                Err(e) => {
                    // A deadlock with another node's writer, for instance;
                    // each job alone settles it.
                    tracing::warn!(error = %e, "a shared transaction failed; running its jobs one by one");
                    None
                }
            }
        } else {
            None
        };
        match together {
            Some(done) => {
                for (reply, d) in replies.into_iter().zip(done) {
                    let _ = reply.send(Ok(d));
                }
            }
            None => {
                for (job, reply) in work.into_iter().zip(replies) {
                    let alone = match &job {
                        Write::Enqueue(e) => enqueue_one(&pool, e).await.map(Written::Enqueued),
                        Write::Ack(d, ids) => ack_one(&pool, *d, ids).await.map(Written::Acked),
                    };
                    let _ = reply.send(alone);
                }
            }
        }
    }
}

/// Runs `jobs` in one transaction. `Ok(None)` when the batch must be run
/// job by job instead (another node stored one of its ids meanwhile).
async fn write_batch(pool: &PgPool, jobs: &[Write]) -> Result<Option<Vec<Written>>, StoreError> {
    let mut tx = pool.begin().await?;
    let mut done: Vec<Option<Written>> = jobs.iter().map(|_| None).collect();

    // Every device row the batch changes is locked first, in id order: an
    // ack's delete updates its device's queue length through a trigger, so
    // without this two nodes' batches could lock devices in opposite
    // orders and wait on each other until PostgreSQL's deadlock check
    // (a second by default) broke one.
    let mut devices: Vec<DeviceId> = jobs
        .iter()
        .flat_map(|job| match job {
            Write::Enqueue(e) => e.recipients.clone(),
            Write::Ack(d, _) => vec![*d],
        })
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    devices.sort();
    active_devices(&mut tx, &devices, true).await?;

    // Acks first, so that the caps below see the room they make.
    let mut pairs: HashMap<(DeviceId, EnvelopeId), usize> = HashMap::new();
    for (i, job) in jobs.iter().enumerate() {
        if let Write::Ack(device, ids) = job {
            for id in ids {
                pairs.entry((*device, *id)).or_insert(i);
            }
            done[i] = Some(Written::Acked(0));
        }
    }
    if !pairs.is_empty() {
        let (devices, ids): (Vec<_>, Vec<_>) = pairs
            .keys()
            .map(|(d, e)| (d.as_bytes().to_vec(), e.as_bytes().to_vec()))
            .unzip();
        let removed = sqlx::query(
            "DELETE FROM mailbox m USING UNNEST($1::bytea[], $2::bytea[]) AS a(d, e)
             WHERE m.device_id = a.d AND m.envelope_id = a.e
             RETURNING m.device_id, m.envelope_id",
        )
        .bind(&devices)
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        let mut orphans = Vec::with_capacity(removed.len());
        for row in removed {
            let device = device_id(row.get(0))?;
            let envelope: Vec<u8> = row.get(1);
            let id = EnvelopeId::from_bytes(id16(envelope.clone())?);
            if let Some(Some(Written::Acked(n))) = pairs.get(&(device, id)).map(|&i| &mut done[i]) {
                *n += 1;
            }
            orphans.push(envelope);
        }
        orphans.sort();
        orphans.dedup();
        delete_orphans(&mut tx, &orphans).await?;
    }

    let sends: Vec<(usize, &NewEnvelope)> = jobs
        .iter()
        .enumerate()
        .filter_map(|(i, job)| match job {
            Write::Enqueue(e) => Some((i, e)),
            Write::Ack(..) => None,
        })
        .collect();
    if !sends.is_empty() {
        let ids = id_list(sends.iter().map(|(_, e)| *e.id.as_bytes()));
        let mut known: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        for row in sqlx::query("SELECT id, payload_hash FROM envelope_receipts WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?
        {
            known.insert(row.get(0), row.get(1));
        }
        // Read after the acks, so the caps see the room they made (the
        // rows are locked already).
        let mut queued = active_devices(&mut tx, &devices, false).await?;

        let mut accepted: Vec<(&NewEnvelope, Vec<u8>, Vec<DeviceId>)> = Vec::new();
        for (i, e) in sends {
            let id = e.id.as_bytes().to_vec();
            let hash = Sha256::digest(&e.payload).to_vec();
            let outcome = if let Some(stored) = known.get(&id) {
                if *stored == hash {
                    EnqueueOutcome::Duplicate
                } else {
                    EnqueueOutcome::Conflict
                }
            } else {
                let mine: QueueLengths = e
                    .recipients
                    .iter()
                    .filter_map(|d| queued.get(d).map(|q| (*d, *q)))
                    .collect();
                match admit_recipients(&e.recipients, &mine, e.max_queued) {
                    Err(refused) => refused,
                    Ok(full) => match &e.commit {
                        Some(c) if !advance_commit_position!(&mut *tx, c, e.now) => {
                            EnqueueOutcome::StaleCommit
                        }
                        _ => {
                            let to: Vec<DeviceId> = e
                                .recipients
                                .iter()
                                .filter(|d| !full.contains(d))
                                .copied()
                                .collect();
                            for d in &to {
                                if let Some(q) = queued.get_mut(d) {
                                    *q += 1;
                                }
                            }
                            // A second send of the id in this batch is its retry.
                            known.insert(id, hash.clone());
                            accepted.push((e, hash, to));
                            if full.is_empty() {
                                EnqueueOutcome::Queued
                            } else {
                                EnqueueOutcome::Partial(full)
                            }
                        }
                    },
                }
            };
            done[i] = Some(Written::Enqueued(outcome));
        }
        if !accepted.is_empty() && !insert(&mut tx, &accepted).await? {
            tx.rollback().await?;
            return Ok(None);
        }
    }
    tx.commit().await?;
    Ok(done.into_iter().collect())
}

/// Stores the accepted envelopes of a batch; false if another node stored
/// one of their ids first.
async fn insert(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    accepted: &[(&NewEnvelope, Vec<u8>, Vec<DeviceId>)],
) -> Result<bool, StoreError> {
    let ids = id_list(accepted.iter().map(|(e, _, _)| *e.id.as_bytes()));
    let hashes: Vec<Vec<u8>> = accepted.iter().map(|(_, h, _)| h.clone()).collect();
    let now: Vec<i64> = accepted.iter().map(|(e, _, _)| ms(e.now)).collect();
    let claimed = sqlx::query(
        "INSERT INTO envelope_receipts (id, payload_hash, received_at)
         SELECT * FROM UNNEST($1::bytea[], $2::bytea[], $3::int8[])
         ON CONFLICT (id) DO NOTHING RETURNING id",
    )
    .bind(&ids)
    .bind(&hashes)
    .bind(&now)
    .fetch_all(&mut **tx)
    .await?;
    if claimed.len() != accepted.len() {
        return Ok(false);
    }
    let kinds: Vec<&str> = accepted
        .iter()
        .map(|(e, _, _)| kind_to_str(e.kind))
        .collect();
    let payloads: Vec<&[u8]> = accepted
        .iter()
        .map(|(e, _, _)| e.payload.as_slice())
        .collect();
    let expires: Vec<i64> = accepted.iter().map(|(e, _, _)| ms(e.expires_at)).collect();
    sqlx::query(
        "INSERT INTO envelopes (id, kind, payload, received_at, expires_at)
         SELECT * FROM UNNEST($1::bytea[], $2::text[], $3::bytea[], $4::int8[], $5::int8[])",
    )
    .bind(&ids)
    .bind(&kinds)
    .bind(&payloads)
    .bind(&now)
    .bind(&expires)
    .execute(&mut **tx)
    .await?;
    let (devices, envelopes): (Vec<Vec<u8>>, Vec<Vec<u8>>) = accepted
        .iter()
        .flat_map(|(e, _, to)| {
            to.iter()
                .map(|d| (d.as_bytes().to_vec(), e.id.as_bytes().to_vec()))
        })
        .unzip();
    // In batch order, so each device's queue keeps the order of acceptance.
    sqlx::query(
        "INSERT INTO mailbox (device_id, envelope_id)
         SELECT d, e FROM UNNEST($1::bytea[], $2::bytea[]) WITH ORDINALITY AS r(d, e, n)
         ORDER BY n",
    )
    .bind(&devices)
    .bind(&envelopes)
    .execute(&mut **tx)
    .await?;
    Ok(true)
}
