//! Market-exit enforcement: the relay's half of leaving a market.
//!
//! The policy (which markets are being left, when, with what notice) is the
//! legal desk's market book, `DATA_DIR/legal/markets.json`, changed only by
//! `redoubtd market ...` and recorded in the audit log. This module reads it
//! and acts on it:
//!
//! - every request is placed in zero or more markets, from the account's
//!   phone-number region and the client address's country (through the
//!   operator's IP-to-country table), combined by the configured
//!   [`Precedence`];
//! - from the announcement on, new accounts from the market are refused
//!   with HTTP 451, and every account of the market is sent the notice
//!   through its mailbox, once at once and once more shortly before the
//!   effective date;
//! - from the effective date, every request placed in the market gets 451
//!   with the notice, and its live WebSockets are closed with code 4451;
//! - after the grace period, everything held for the market's accounts is
//!   deleted; the audit log keeps only counts;
//! - an exit called off before it took effect is followed by a
//!   cancellation notice to everyone who was told of it.
//!
//! Every notice is signed with the operator's service key, so clients can
//! tell it from one a relay forged.
//!
//! Nothing here touches encryption or hands anything over: leaving a market
//! deletes data, it never discloses it.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use redoubt_legal::jurisdiction::{jurisdictions, Country, IpCountries, Precedence};
use redoubt_legal::markets::{CancelledExit, MarketBook, MarketExit, MarketState};
use redoubt_proto::{AccountId, EnvelopeId, MarketNotice, NoticeKind, ServiceNotice, Timestamp};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::config::Config;
use crate::error::{ApiError, ServerError};
use crate::storage::{RegionPurgeCounts, StoreError};
use crate::AppState;

/// Why a market pass failed. A failed pass changes nothing it did not
/// finish, and the next pass retries.
#[derive(Debug, thiserror::Error)]
pub enum MarketsError {
    /// The relay's storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The market book could not be used.
    #[error(transparent)]
    Legal(#[from] redoubt_legal::LegalError),
    /// The legal desk could not record the purge.
    #[error(transparent)]
    Desk(#[from] redoubt_legal::desk::DeskError),
}

struct Loaded {
    stamp: Option<(SystemTime, u64)>,
    book: Arc<MarketBook>,
}

/// The market book as this relay enforces it, and where requests come from.
pub struct Markets {
    book_path: PathBuf,
    loaded: RwLock<Loaded>,
    ips: Option<IpCountries>,
    precedence: Precedence,
    link: Option<String>,
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

fn stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl Markets {
    /// Loads the IP table named in the configuration and the market book.
    /// A table or book that does not parse stops the server from starting:
    /// serving with a silently empty table would ignore the operator's
    /// policy.
    pub fn open(config: &Config) -> Result<Self, ServerError> {
        let ips = match &config.markets.ip_table {
            Some(path) => Some(IpCountries::load(path).map_err(|e| {
                ServerError::ConfigInvalid(format!("markets.ip_table {}: {e}", path.display()))
            })?),
            None => None,
        };
        let book_path = config.data_dir.join("legal").join("markets.json");
        let book = MarketBook::load(&book_path)
            .map_err(|e| ServerError::ConfigInvalid(format!("{}: {e}", book_path.display())))?;
        Ok(Self {
            loaded: RwLock::new(Loaded {
                stamp: stamp(&book_path),
                book: Arc::new(book),
            }),
            book_path,
            ips,
            precedence: config.markets.precedence,
            link: config.markets.notice_link.clone(),
        })
    }

    /// Re-reads the book if its file changed. A book that no longer parses
    /// is reported and the last good one stays in force.
    pub fn reload(&self) -> Result<bool, redoubt_legal::LegalError> {
        let now_stamp = stamp(&self.book_path);
        if self.read().stamp == now_stamp {
            return Ok(false);
        }
        let book = MarketBook::load(&self.book_path)?;
        let mut loaded = self
            .loaded
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        loaded.stamp = now_stamp;
        loaded.book = Arc::new(book);
        Ok(true)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        // The lock only guards a swap of two fields; a panic cannot leave
        // them half-written.
        self.loaded
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The book in force.
    pub fn book(&self) -> Arc<MarketBook> {
        self.read().book.clone()
    }

    /// The country of an address under the operator's table.
    pub fn ip_country(&self, ip: IpAddr) -> Country {
        self.ips
            .as_ref()
            .map_or(Country::Unknown, |t| t.country(ip))
    }

    /// The markets a request belongs to: from the account's phone region
    /// (when known) and the client address, under the configured precedence.
    pub fn place(&self, region: Option<&str>, ip: IpAddr) -> Vec<String> {
        let phone = region.map_or(Country::Unknown, |r| Country::Code(r.to_owned()));
        jurisdictions(&phone, &self.ip_country(ip), self.precedence)
    }

    /// What users are told about an exit.
    pub fn notice(&self, exit: &MarketExit) -> MarketNotice {
        MarketNotice {
            jurisdiction: exit.jurisdiction.clone(),
            effective_at: rfc3339(exit.effective_at),
            purge_at: rfc3339(exit.purge_at),
            notice: exit.notice.clone(),
            link: self.link.clone(),
        }
    }

    /// Refuses a request placed in a market the service has left.
    pub fn check(&self, markets: &[String], now: Timestamp) -> Result<(), ApiError> {
        if markets.is_empty() {
            return Ok(());
        }
        let book = self.book();
        let now = crate::clock::offset(now);
        for market in markets {
            if let MarketState::Exited(exit) = book.state(market, now) {
                return Err(ApiError::MarketExited(Box::new(self.notice(&exit))));
            }
        }
        Ok(())
    }

    /// Refuses registration from a market being left: a new account from
    /// the moment the exit is announced, and anyone once it took effect.
    /// Existing accounts may still add a device until the effective date.
    pub fn check_registration(
        &self,
        markets: &[String],
        existing_account: bool,
        now: Timestamp,
    ) -> Result<(), ApiError> {
        self.check(markets, now)?;
        if existing_account {
            return Ok(());
        }
        let book = self.book();
        for market in markets {
            if let MarketState::ExitAnnounced(exit) = book.state(market, crate::clock::offset(now))
            {
                return Err(ApiError::RegistrationClosed(Box::new(self.notice(&exit))));
            }
        }
        Ok(())
    }
}

/// What one pass did, for tests and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Notices queued (one per account and phase).
    pub notices: usize,
    /// WebSocket sessions closed.
    pub closed_sessions: usize,
    /// What purges deleted, per market.
    pub purged: Vec<(String, RegionPurgeCounts)>,
}

/// The id of one account's notice for one phase of one exit: derived, so a
/// retry after a crash between queueing and recording is recognised by the
/// relay's receipts and never delivered twice.
fn notice_id(exit_key: &str, phase: &str, account: AccountId) -> EnvelopeId {
    let digest = Sha256::new()
        .chain_update(b"redoubt/market-notice/v1\0")
        .chain_update(exit_key.as_bytes())
        .chain_update([0])
        .chain_update(phase.as_bytes())
        .chain_update([0])
        .chain_update(account.as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    // In the namespace clients cannot write (the relay refuses it from
    // them), or a user could send under this id first and the real notice
    // would be dropped as a duplicate.
    EnvelopeId::service(bytes)
}

/// Names one announcement: cancelling and announcing again is a new one.
fn exit_key(exit: &MarketExit) -> String {
    format!(
        "{}@{}",
        exit.jurisdiction,
        exit.announced_at.unix_timestamp()
    )
}

/// One enforcement pass: re-read the book, queue due notices, close
/// sessions of exited markets, run due purges.
pub async fn pass(state: &AppState) -> Result<PassReport, MarketsError> {
    let markets = state.markets();
    if let Err(e) = markets.reload() {
        tracing::error!(error = %e, "the market book does not parse; the last good one stays in force");
    }
    let book = markets.book();
    let now_ts = state.clock().now();
    let now = crate::clock::offset(now_ts);
    let mut report = PassReport::default();
    let reminder = time::Duration::try_from(state.config().markets.reminder_before)
        .unwrap_or(time::Duration::ZERO);
    // Accounts seen at addresses in a market are told too when addresses
    // count, so a traveller is not cut off without warning. Read lazily:
    // only passes with notices to send need it.
    let mut addresses: Option<Vec<(AccountId, IpAddr)>> = None;
    // Closing this node's sessions is every node's job; notices and purges
    // need doing once, by the node holding the lease (with one node, this
    // one).
    let lease = match state.postgres() {
        Some(pg) => Some(pg.try_lease("markets").await?),
        None => None,
    };
    let leader = !matches!(lease, Some(None));
    for exit in &book.exits {
        if now < exit.effective_at {
            if !leader {
                continue;
            }
            let mut phases = vec!["announced"];
            if now >= exit.effective_at - reminder {
                phases.push("reminder");
            }
            for phase in phases {
                report.notices += notify(state, exit, phase, now_ts, &mut addresses).await?;
            }
            continue;
        }
        report.closed_sessions += state.sessions().close_market(&exit.jurisdiction);
        if leader && now >= exit.purge_at {
            let counts = state
                .store()
                .purge_region(&exit.jurisdiction, state.phone_keyer())
                .await?;
            if counts.accounts > 0 {
                record_purge(state, exit, &counts, now).await?;
                report.purged.push((exit.jurisdiction.clone(), counts));
            }
        }
    }
    if leader {
        for cancelled in &book.cancelled {
            report.notices += notify_cancelled(state, cancelled, now_ts).await?;
        }
    }
    if report.closed_sessions > 0 {
        tracing::info!(
            closed = report.closed_sessions,
            "closed sessions in exited markets"
        );
    }
    Ok(report)
}

async fn notify(
    state: &AppState,
    exit: &MarketExit,
    phase: &str,
    now: Timestamp,
    addresses: &mut Option<Vec<(AccountId, IpAddr)>>,
) -> Result<usize, MarketsError> {
    let key = exit_key(exit);
    let store = state.store();
    let mut targets = store.accounts_in_region(&exit.jurisdiction).await?;
    if state.config().markets.precedence != Precedence::Phone {
        if addresses.is_none() {
            *addresses = Some(store.recent_addresses().await?);
        }
        let markets = state.markets();
        targets.extend(
            addresses
                .iter()
                .flatten()
                .filter(|(_, ip)| {
                    markets.ip_country(*ip) == Country::Code(exit.jurisdiction.clone())
                })
                .map(|(account, _)| *account),
        );
    }
    let notice = state.markets().notice(exit);
    let text = format!(
        "Redoubt is leaving {}. From {} the service is unavailable there; \
         on {} everything it holds for accounts there is deleted. {}{}",
        notice.jurisdiction,
        notice.effective_at,
        notice.purge_at,
        notice.notice,
        notice
            .link
            .as_deref()
            .map(|l| format!(" More: {l}"))
            .unwrap_or_default()
    );
    // Fixed per phase, so a retry signs the same bytes; the reminder's time
    // is after the announcement's, so clients keep the later one.
    let issued_at = match phase {
        "reminder" => {
            let reminder = time::Duration::try_from(state.config().markets.reminder_before)
                .unwrap_or(time::Duration::ZERO);
            (exit.effective_at - reminder).max(exit.announced_at)
        }
        _ => exit.announced_at,
    }
    .unix_timestamp();
    let sent = deliver(state, &key, phase, targets, now, |account| ServiceNotice {
        account,
        issued_at,
        text: text.clone(),
        kind: NoticeKind::MarketExit {
            phase: phase.to_owned(),
            market: notice.clone(),
        },
    })
    .await?;
    if sent > 0 {
        tracing::info!(market = %exit.jurisdiction, phase, sent, "market-exit notices queued");
    }
    Ok(sent)
}

/// Queues one exit's notice for `phase` to each of `targets` not yet told
/// it, marking each as told once queued. Returns how many were queued.
async fn deliver(
    state: &AppState,
    key: &str,
    phase: &str,
    mut targets: Vec<AccountId>,
    now: Timestamp,
    notice_for: impl Fn(AccountId) -> ServiceNotice,
) -> Result<usize, MarketsError> {
    let store = state.store();
    let done: std::collections::HashSet<AccountId> = store
        .market_notified(key, phase)
        .await?
        .into_iter()
        .collect();
    targets.sort();
    targets.dedup();
    targets.retain(|a| !done.contains(a));
    let mut sent = 0;
    for account in targets {
        let id = notice_id(key, phase, account);
        if !crate::legal_notices::queue_notice(state, id, notice_for(account)).await? {
            continue;
        }
        store.mark_market_notified(key, phase, account, now).await?;
        sent += 1;
    }
    Ok(sent)
}

/// Tells everyone who was told of an exit that it was called off. Only
/// accounts that got the announcement or the reminder are told: nobody else
/// has a banner to clear.
async fn notify_cancelled(
    state: &AppState,
    cancelled: &CancelledExit,
    now: Timestamp,
) -> Result<usize, MarketsError> {
    let key = exit_key(&cancelled.exit);
    let store = state.store();
    let mut targets = store.market_notified(&key, "announced").await?;
    targets.extend(store.market_notified(&key, "reminder").await?);
    let jurisdiction = &cancelled.exit.jurisdiction;
    let text = format!(
        "Redoubt is no longer leaving {jurisdiction}: the exit announced for {} was called \
         off, and the service continues there.",
        rfc3339(cancelled.exit.effective_at)
    );
    let sent = deliver(state, &key, "cancelled", targets, now, |account| {
        ServiceNotice {
            account,
            issued_at: cancelled.cancelled_at.unix_timestamp(),
            text: text.clone(),
            kind: NoticeKind::MarketExitCancelled {
                jurisdiction: jurisdiction.clone(),
            },
        }
    })
    .await?;
    if sent > 0 {
        tracing::info!(market = %jurisdiction, sent, "market-exit cancellation notices queued");
    }
    Ok(sent)
}

async fn record_purge(
    state: &AppState,
    exit: &MarketExit,
    counts: &RegionPurgeCounts,
    now: OffsetDateTime,
) -> Result<(), MarketsError> {
    tracing::info!(
        market = %exit.jurisdiction,
        accounts = counts.accounts,
        devices = counts.devices,
        "market purged"
    );
    state
        .legal_desk()
        .record_purge(
            serde_json::json!({
                "purged_market": exit.jurisdiction,
                "effective_at": rfc3339(exit.effective_at),
                "counts": counts,
            }),
            now,
        )
        .await?;
    Ok(())
}

/// Runs [`pass`] every `markets.check_interval` until shutdown.
pub async fn run(state: AppState, shutdown: tokio_util::sync::CancellationToken) {
    let mut ticker = tokio::time::interval(state.config().markets.check_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        if let Err(e) = pass(&state).await {
            tracing::error!(error = %e, "market enforcement pass failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notice_ids_differ_by_exit_phase_and_account() {
        let a = AccountId::random();
        let b = AccountId::random();
        let ids = [
            notice_id("FR@1", "announced", a),
            notice_id("FR@1", "reminder", a),
            notice_id("FR@2", "announced", a),
            notice_id("FR@1", "announced", b),
        ];
        for (i, x) in ids.iter().enumerate() {
            for y in &ids[i + 1..] {
                assert_ne!(x, y);
            }
        }
        assert_eq!(ids[0], notice_id("FR@1", "announced", a));
        // Clients cannot send under them (issue 16).
        assert!(ids.iter().all(EnvelopeId::is_service));
    }
}
