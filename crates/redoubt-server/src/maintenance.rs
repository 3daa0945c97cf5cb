//! Background maintenance: deletes expired envelopes and codes, and IP-log
//! rows past their retention, on a fixed interval.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::Config;
use crate::metrics::{Metrics, PurgeLabels};
use crate::storage::{PurgeCounts, PurgeCutoffs, Store, StoreError};

/// Runs purges.
pub struct Purger {
    store: Arc<dyn Store>,
    clock: Clock,
    config: Config,
    metrics: Metrics,
    leader: Option<crate::storage::postgres::PgStore>,
}

impl Purger {
    /// A purger for `store` with the retention settings of `config`.
    pub fn new(store: Arc<dyn Store>, clock: Clock, config: Config, metrics: Metrics) -> Self {
        Self {
            store,
            clock,
            config,
            metrics,
            leader: None,
        }
    }

    /// With several nodes on one PostgreSQL database, each pass runs only
    /// on the node that wins a lease (an advisory lock held for the pass);
    /// the others skip it.
    pub fn with_leader_lease(mut self, pg: crate::storage::postgres::PgStore) -> Self {
        self.leader = Some(pg);
        self
    }

    /// One purge pass.
    pub async fn once(&self) -> Result<PurgeCounts, StoreError> {
        let now = self.clock.now();
        let cutoffs = PurgeCutoffs {
            now,
            ip_log_before: now.minus(self.config.ip_log.retention),
            receipts_before: now.minus(self.config.mailbox.dedup_window),
            commit_positions_before: now.minus(self.config.mailbox.message_ttl),
        };
        let counts = self.store.purge(cutoffs).await?;
        for (kind, n) in [
            ("envelopes", counts.envelopes),
            ("ip_log", counts.ip_log),
            ("codes", counts.codes),
            ("receipts", counts.receipts),
        ] {
            self.metrics
                .purged
                .get_or_create(&PurgeLabels { kind: kind.into() })
                .inc_by(n);
        }
        Ok(counts)
    }

    /// Purges now and then every `maintenance.purge_interval` until
    /// `shutdown`. Each pass's counts go to `reports`, if given (tests use it
    /// to wait for a pass instead of sleeping).
    pub async fn run(
        self,
        shutdown: CancellationToken,
        reports: Option<mpsc::UnboundedSender<PurgeCounts>>,
    ) {
        let mut ticker = tokio::time::interval(self.config.maintenance.purge_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
            }
            let _lease = match &self.leader {
                Some(pg) => match pg.try_lease("purge").await {
                    Ok(Some(lease)) => Some(lease),
                    Ok(None) => {
                        tracing::debug!("another node holds the purge lease; skipping this pass");
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "purge lease unavailable");
                        continue;
                    }
                },
                None => None,
            };
            match self.once().await {
                Ok(counts) => {
                    tracing::debug!(
                        envelopes = counts.envelopes,
                        ip_log = counts.ip_log,
                        codes = counts.codes,
                        receipts = counts.receipts,
                        "purge pass finished"
                    );
                    if let Some(tx) = &reports {
                        let _ = tx.send(counts);
                    }
                }
                Err(e) => tracing::error!(error = %e, "purge pass failed"),
            }
        }
    }
}
