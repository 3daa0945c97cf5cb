//! The key-transparency directory (akd): every account's number mapped to
//! its identity key and newest device list, published in epochs whose root
//! hashes the directory key signs. The relay serves lookup, history and
//! append-only proofs; clients verify them and never take its word.
//!
//! What the relay must never do here: hold anything a client could not
//! check. The directory's values are public keys and hashes of signed
//! lists; its labels (numbers) are hidden from proof readers by akd's VRF.
//!
//! Changes are queued (`kt_pending`) when a device list is stored and
//! published together every `kt.epoch_interval` by one node (a lease on
//! PostgreSQL); every node serves proofs from the shared database, with
//! the directory's keys from it too (`kt_keys`). They are the relay's keys,
//! not a secret from the relay: the directory key makes the relay answer
//! for what it shows, and the VRF key only hides which numbers are listed.
//!
//! Every epoch's signature also covers the root of the log of all epoch
//! roots so far (RFC 9162, `redoubt_proto::merkle`). Each node keeps that
//! log in memory, caught up from `kt_epochs` (and rebuilt if the table's
//! tail no longer matches it), to serve consistency proofs: how a device
//! checks in a few hundred bytes that a newer epoch continues the history
//! it saw.

use akd::ecvrf::{VRFKeyStorage, VrfError};
use akd::storage::StorageManager;
use akd::{AkdLabel, AkdValue, Directory, EpochHash};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use redoubt_proto::kt::{epoch_leaf, DirectoryValue, KtConsistencyResponse, SignedEpoch};
use redoubt_proto::merkle::MerkleLog;
use redoubt_proto::PhoneNumber;

use crate::storage::kt_store::{KtTables, StoredEpoch};
use crate::storage::legal_view::RelayRecords;

/// The directory's hash and encoding choices: WhatsApp's, so its published
/// analyses apply.
pub type KtConfiguration = akd::WhatsAppV1Configuration;

/// Why a directory operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KtError {
    /// akd failed (storage, a proof it could not build).
    #[error("key-transparency directory: {0}")]
    Akd(String),
    /// The directory's key files could not be read or made.
    #[error("key-transparency keys: {0}")]
    Keys(String),
    /// The number is not in the directory.
    #[error("the number is not in the directory")]
    NotFound,
    /// The signed epochs are not numbered 0, 1, 2, … in the database.
    #[error("key-transparency epochs are not contiguous (epoch {0} missing)")]
    Gap(u64),
}

impl From<akd::errors::AkdError> for KtError {
    fn from(e: akd::errors::AkdError) -> Self {
        Self::Akd(e.to_string())
    }
}

impl From<akd::errors::StorageError> for KtError {
    fn from(e: akd::errors::StorageError) -> Self {
        Self::Akd(e.to_string())
    }
}

/// The directory's VRF secret. It must never change: akd derives its
/// commitments from it.
#[derive(Clone)]
pub struct Vrf([u8; 32]);

#[async_trait::async_trait]
impl VRFKeyStorage for Vrf {
    async fn retrieve(&self) -> Result<Vec<u8>, VrfError> {
        Ok(self.0.to_vec())
    }
}

/// The directory as this relay runs it.
pub struct Transparency {
    directory: Directory<KtConfiguration, RelayRecords, Vrf>,
    db: RelayRecords,
    signing: SigningKey,
    vrf_public: Vec<u8>,
    /// One publication at a time in this process (the lease orders nodes).
    publishing: tokio::sync::Mutex<()>,
    /// The log of epoch roots, as far as this node has read it.
    log: tokio::sync::Mutex<MerkleLog>,
}

/// The label a number is kept under: its E.164 form.
pub fn label(phone: &PhoneNumber) -> AkdLabel {
    AkdLabel(phone.e164().as_bytes().to_vec())
}

impl Transparency {
    /// Opens the directory over the relay's database. Its keys are in the
    /// database too (made by the first node to start), so every node
    /// sharing it publishes and proves with the same ones.
    pub async fn open(db: RelayRecords, now: i64) -> Result<Self, KtError> {
        let fresh = || {
            let mut seed = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
            seed
        };
        let vrf = Vrf(db.kt_secret("vrf", fresh()).await?);
        let signing = SigningKey::from_bytes(&db.kt_secret("directory", fresh()).await?);
        let directory = Directory::new(
            StorageManager::new_no_cache(db.clone()),
            vrf.clone(),
            Default::default(),
        )
        .await?;
        let vrf_public = directory.get_public_key().await?.as_bytes().to_vec();
        let kt = Self {
            directory,
            db,
            signing,
            vrf_public,
            publishing: tokio::sync::Mutex::new(()),
            log: tokio::sync::Mutex::new(MerkleLog::new()),
        };
        kt.sign_log_roots().await?;
        // Epoch 0 (or an epoch published just before a crash) gets its
        // signature now, so there is always a signed root to check against.
        let current = kt.directory.get_epoch_hash().await?;
        kt.ensure_signed(&current, now).await?;
        Ok(kt)
    }

    /// The key that signs epochs, standard base64.
    pub fn directory_key(&self) -> String {
        STANDARD.encode(self.signing.verifying_key().as_bytes())
    }

    /// The VRF public key, standard base64.
    pub fn vrf_public_key(&self) -> String {
        STANDARD.encode(&self.vrf_public)
    }

    /// The log of epoch roots, caught up with the database. If the last
    /// leaf it holds is no longer the database's (a restored backup, or
    /// another writer), it is read again from the start.
    async fn synced_log(&self) -> Result<tokio::sync::MutexGuard<'_, MerkleLog>, KtError> {
        let mut log = self.log.lock().await;
        if let Some(last) = log.len().checked_sub(1) {
            let same = self
                .db
                .kt_epochs(last, last)
                .await?
                .first()
                .is_some_and(|e| Some(epoch_leaf(e.epoch, &e.root)) == log.leaf(last));
            if !same {
                *log = MerkleLog::new();
            }
        }
        let Some(latest) = self.db.kt_latest().await? else {
            return Ok(log);
        };
        while log.len() <= latest.epoch {
            let from = log.len();
            let to = latest.epoch.min(from + 9_999);
            let rows = self.db.kt_epochs(from, to).await?;
            for row in rows {
                if row.epoch != log.len() {
                    return Err(KtError::Gap(log.len()));
                }
                log.push(epoch_leaf(row.epoch, &row.root));
            }
            if log.len() == from {
                return Err(KtError::Gap(from));
            }
        }
        Ok(log)
    }

    /// Gives epochs signed before the log existed their log roots, and
    /// signs them again.
    async fn sign_log_roots(&self) -> Result<(), KtError> {
        let log = self.synced_log().await?;
        let mut from = 0;
        while from < log.len() {
            let to = (from + 9_999).min(log.len() - 1);
            for row in self.db.kt_epochs(from, to).await? {
                if row.log_root.is_some() {
                    continue;
                }
                let log_root = log.root(row.epoch + 1).ok_or(KtError::Gap(row.epoch))?;
                let signature = self.signing.sign(&SignedEpoch::signing_input(
                    row.epoch,
                    &row.root,
                    row.published_at,
                    &log_root,
                ));
                self.db
                    .kt_resign_epoch(row.epoch, log_root, &signature.to_bytes())
                    .await?;
            }
            from = to + 1;
        }
        Ok(())
    }

    async fn ensure_signed(&self, hash: &EpochHash, now: i64) -> Result<(), KtError> {
        let mut log = self.synced_log().await?;
        if log.len() > hash.epoch() {
            // Signed already (by this node before a restart, or another).
            return Ok(());
        }
        if log.len() != hash.epoch() {
            return Err(KtError::Gap(log.len()));
        }
        log.push(epoch_leaf(hash.epoch(), &hash.hash()));
        let log_root = log.root(log.len()).ok_or(KtError::Gap(hash.epoch()))?;
        let signature = self.signing.sign(&SignedEpoch::signing_input(
            hash.epoch(),
            &hash.hash(),
            now,
            &log_root,
        ));
        self.db
            .kt_put_epoch(&StoredEpoch {
                epoch: hash.epoch(),
                root: hash.hash(),
                published_at: now,
                log_root: Some(log_root),
                signature: signature.to_bytes().to_vec(),
            })
            .await?;
        Ok(())
    }

    /// That the log up to epoch `to` extends the log up to `from`, with
    /// both epochs' places in them; `None` when `to` is past the newest.
    pub async fn consistency(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Option<KtConsistencyResponse>, KtError> {
        let log = self.synced_log().await?;
        if from > to || to >= log.len() {
            return Ok(None);
        }
        let encode = |proof: Option<Vec<[u8; 32]>>| -> Vec<String> {
            proof
                .unwrap_or_default()
                .iter()
                .map(|h| STANDARD.encode(h))
                .collect()
        };
        let response = KtConsistencyResponse {
            consistency: encode(log.consistency_proof(from + 1, to + 1)),
            from_inclusion: encode(log.inclusion_proof(from, from + 1)),
            to_inclusion: encode(log.inclusion_proof(to, to + 1)),
            to: match self.epoch(to).await? {
                Some(epoch) => epoch,
                None => return Ok(None),
            },
        };
        Ok(Some(response))
    }

    /// Queues a number's new value for the next epoch.
    pub async fn queue(
        &self,
        phone: &PhoneNumber,
        value: &DirectoryValue,
        now: i64,
    ) -> Result<(), KtError> {
        Ok(self
            .db
            .kt_queue(phone.e164().as_bytes(), &value.to_bytes(), now)
            .await?)
    }

    /// Publishes everything queued as one epoch, signs its root, and
    /// returns it; `None` when nothing was queued. A value that is already
    /// the number's current one (a retry after a crash between publishing
    /// and dequeuing) is not published again.
    pub async fn publish(&self, now: i64) -> Result<Option<SignedEpoch>, KtError> {
        let _one = self.publishing.lock().await;
        let pending = self.db.kt_pending().await?;
        if pending.is_empty() {
            return Ok(None);
        }
        let labels: Vec<AkdLabel> = pending.iter().map(|(l, _)| AkdLabel(l.clone())).collect();
        let current = akd::storage::Database::get_user_state_versions(
            &self.db,
            &labels,
            akd::storage::types::ValueStateRetrievalFlag::MaxEpoch,
        )
        .await?;
        let updates: Vec<(AkdLabel, AkdValue)> = pending
            .iter()
            .filter(|(l, v)| {
                current
                    .get(&AkdLabel(l.clone()))
                    .is_none_or(|(_, value)| value.0 != *v)
            })
            .map(|(l, v)| (AkdLabel(l.clone()), AkdValue(v.clone())))
            .collect();
        let published = if updates.is_empty() {
            None
        } else {
            let hash = self.directory.publish(updates).await?;
            self.ensure_signed(&hash, now).await?;
            Some(hash.epoch())
        };
        self.db.kt_dequeue(&pending).await?;
        match published {
            Some(epoch) => Ok(self.epoch(epoch).await?),
            None => Ok(None),
        }
    }

    /// How many numbers the directory holds.
    pub async fn size(&self) -> Result<u64, KtError> {
        Ok(self.db.kt_size().await?)
    }

    /// A signed epoch.
    pub async fn epoch(&self, epoch: u64) -> Result<Option<SignedEpoch>, KtError> {
        Ok(self
            .db
            .kt_epochs(epoch, epoch)
            .await?
            .into_iter()
            .next()
            .map(wire))
    }

    /// The newest signed epoch.
    pub async fn latest(&self) -> Result<SignedEpoch, KtError> {
        self.db
            .kt_latest()
            .await?
            .map(wire)
            .ok_or_else(|| KtError::Akd("no signed epoch yet".into()))
    }

    /// Signed epochs `from` to `to`.
    pub async fn epochs(&self, from: u64, to: u64) -> Result<Vec<SignedEpoch>, KtError> {
        Ok(self
            .db
            .kt_epochs(from, to)
            .await?
            .into_iter()
            .map(wire)
            .collect())
    }

    /// A lookup proof for a number (protobuf bytes) and the signed epoch it
    /// is against.
    pub async fn lookup(&self, phone: &PhoneNumber) -> Result<(SignedEpoch, Vec<u8>), KtError> {
        use protobuf::Message as _;
        let label = label(phone);
        let known = akd::storage::Database::get_user_state(
            &self.db,
            &label,
            akd::storage::types::ValueStateRetrievalFlag::MaxEpoch,
        )
        .await
        .is_ok();
        if !known {
            return Err(KtError::NotFound);
        }
        let (proof, hash) = self.directory.lookup(label).await?;
        let bytes = akd::proto::specs::types::LookupProof::from(&proof)
            .write_to_bytes()
            .map_err(|e| KtError::Akd(e.to_string()))?;
        Ok((self.signed(&hash).await?, bytes))
    }

    /// A number's complete key history proof (protobuf bytes) and the signed
    /// epoch it is against.
    pub async fn history(&self, phone: &PhoneNumber) -> Result<(SignedEpoch, Vec<u8>), KtError> {
        use protobuf::Message as _;
        let label = label(phone);
        let (proof, hash) = self
            .directory
            .key_history(&label, akd::HistoryParams::Complete)
            .await
            .map_err(|_| KtError::NotFound)?;
        let bytes = akd::proto::specs::types::HistoryProof::from(&proof)
            .write_to_bytes()
            .map_err(|e| KtError::Akd(e.to_string()))?;
        Ok((self.signed(&hash).await?, bytes))
    }

    /// The append-only proof from epoch `from` to `to` (protobuf bytes).
    pub async fn audit(&self, from: u64, to: u64) -> Result<Vec<u8>, KtError> {
        use protobuf::Message as _;
        let proof = self.directory.audit(from, to).await?;
        akd::proto::specs::types::AppendOnlyProof::from(&proof)
            .write_to_bytes()
            .map_err(|e| KtError::Akd(e.to_string()))
    }

    /// The signed form of the epoch a proof was made against. akd makes an
    /// epoch visible a moment before its publisher (this node or another)
    /// has stored its signature, so a proof made in between waits for it.
    async fn signed(&self, hash: &EpochHash) -> Result<SignedEpoch, KtError> {
        for _ in 0..200 {
            if let Some(epoch) = self.epoch(hash.epoch()).await? {
                return Ok(epoch);
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        Err(KtError::Akd(format!(
            "epoch {} is not signed yet",
            hash.epoch()
        )))
    }
}

/// The newest signed epoch in a relay database, for tools that do not run
/// the directory (the legal desk's report).
pub async fn latest_in(db: &RelayRecords) -> Option<SignedEpoch> {
    db.kt_latest().await.ok().flatten().map(wire)
}

fn wire(e: StoredEpoch) -> SignedEpoch {
    SignedEpoch {
        epoch: e.epoch,
        root: STANDARD.encode(e.root),
        published_at: e.published_at,
        log_root: e.log_root.map(|r| STANDARD.encode(r)).unwrap_or_default(),
        signature: STANDARD.encode(e.signature),
    }
}

/// Publishes an epoch every `kt.epoch_interval` until shutdown: on one
/// node at a time when several share PostgreSQL.
pub async fn run(state: crate::AppState, shutdown: tokio_util::sync::CancellationToken) {
    let mut ticker = tokio::time::interval(state.config().kt.epoch_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let _lease = match state.postgres() {
            Some(pg) => match pg.try_lease("kt-publish").await {
                Ok(Some(lease)) => Some(lease),
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "key-transparency lease unavailable");
                    continue;
                }
            },
            None => None,
        };
        let started = std::time::Instant::now();
        match state
            .kt()
            .publish(state.clock().now_offset().unix_timestamp())
            .await
        {
            Ok(Some(epoch)) => {
                state
                    .metrics()
                    .kt_epoch
                    .set(i64::try_from(epoch.epoch).unwrap_or(i64::MAX));
                state
                    .metrics()
                    .kt_publish_seconds
                    .observe(started.elapsed().as_secs_f64());
                if let Ok(size) = state.kt().size().await {
                    state
                        .metrics()
                        .kt_directory_size
                        .set(i64::try_from(size).unwrap_or(i64::MAX));
                }
                tracing::debug!(epoch = epoch.epoch, "key-transparency epoch published");
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "key-transparency publication failed"),
        }
    }
}
