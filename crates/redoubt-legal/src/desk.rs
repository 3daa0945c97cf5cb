//! The desk's workflow: bootstrap, two-operator trust changes, intake,
//! four-eyes approval and the disclosure package, user notices and market
//! decisions. Every step is an operator's signed action, and every step is
//! one append to the audit log: the desk reads the log, decides, checks
//! its new entries with the replay's own rules, and appends them in one
//! transaction that fails if anyone else appended first (then it decides
//! again). A package is stored only in the transaction that records its
//! approval and disclosure, so nothing leaves without an audit record.

use serde_json::json;
use time::{Duration, OffsetDateTime};

use crate::audit::{Checkpoint, NewEntry};
use crate::disclosure::{Disclosure, NotProduced, ServiceKey, SignedPackage};
use crate::operators::{ActionError, ActionKind, Change, OperatorInfo, SignedAction, ACTION_SKEW};
use crate::order::DataCategory;
use crate::records::{RecordsError, SubscriberRecords};
use crate::state::{DeskState, FiledDetail, OrderSummary};
use crate::store::DeskStore;
use crate::verify::{producible, verify_document, MarketPolicy, Rejection};
use crate::LegalError;

pub use crate::state::{OrderRecord, OrderStatus};

/// How often a decision is retaken when other writers keep appending.
const ATTEMPTS: usize = 32;

/// The result of an intake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intake {
    /// Verified and waiting for approval.
    Pending {
        /// The order.
        order_id: String,
    },
    /// Refused.
    Rejected {
        /// The order's id, when the document had a usable one.
        order_id: Option<String>,
        /// Why.
        rejection: Rejection,
    },
}

/// A notice owed to a user whose data was disclosed, once any gag period
/// has ended. The desk only says who is owed what; the relay delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserNotice {
    /// The issuing authority.
    pub issuer: String,
    /// The order.
    pub order_id: String,
    /// The account to tell: the one fixed at intake.
    pub account_id: redoubt_proto::AccountId,
    /// What to tell them.
    pub text: String,
    /// When the data was disclosed: the notice's issue time, fixed so a
    /// retried delivery carries the same signed bytes.
    pub disclosed_at: OffsetDateTime,
}

/// Errors of the desk's workflow.
#[derive(Debug, thiserror::Error)]
pub enum DeskError {
    /// Storage failed.
    #[error(transparent)]
    Legal(#[from] LegalError),
    /// The records could not be read.
    #[error(transparent)]
    Records(#[from] RecordsError),
    /// The audit log is broken: nothing proceeds on it.
    #[error("the audit log is broken, so the desk does nothing: {0}")]
    Broken(crate::audit::ChainBreak),
    /// No order with this id is on file.
    #[error("no order {0:?} is on file")]
    UnknownOrder(String),
    /// Several issuers used this order id; say which.
    #[error("several authorities sent an order {0:?}: name the issuer")]
    AmbiguousOrder(String),
    /// The order is not waiting for approval.
    #[error("order {0:?} is not pending (it was rejected or already answered)")]
    NotPending(String),
    /// The operator who took the order in (or proposed a change) tried to
    /// approve (or confirm) it.
    #[error("four-eyes rule: a second operator must approve or confirm")]
    FourEyes,
    /// The order lapsed while waiting.
    #[error("the order's deadline passed before approval")]
    Expired,
    /// The operator name is empty, padded, or has invisible or control
    /// characters: refused, never normalised, so one person cannot pass
    /// for two.
    #[error("operator names are 1 to 64 visible letters, digits, spaces, '.', '-', '_', '@' or \"'\", with no space at either end")]
    BadOperator,
    /// The action's signature does not verify.
    #[error(transparent)]
    BadAction(#[from] ActionError),
    /// The action's key is no active operator's.
    #[error("the action is not signed by an active operator of this desk")]
    NotAnOperator,
    /// The action was signed too long ago (or ahead): actions are good for
    /// minutes, not as standing permissions.
    #[error("the action was signed more than 10 minutes away from the desk's time")]
    StaleAction,
    /// The action was used before.
    #[error("the action was used before (a replay)")]
    ReplayedAction,
    /// The action asks for something else than the request carries (its
    /// document hash, its kind).
    #[error("the action does not match the request: {0}")]
    ActionMismatch(&'static str),
    /// The desk has operators already, or the bootstrap is not two
    /// operators each signing.
    #[error("bootstrap refused: {0}")]
    Bootstrap(String),
    /// A proposed or confirmed change cannot be made.
    #[error("the change cannot be made: {0}")]
    BadChange(String),
    /// No open proposal with this number.
    #[error("no open proposal {0}")]
    UnknownProposal(u64),
    /// The proposal waited longer than a week.
    #[error("the proposal expired; propose it again")]
    ProposalExpired,
    /// Checked again at approval, the order no longer holds (the authority
    /// was revoked or expired, the market was exited, the deadline passed).
    #[error("the order no longer verifies at approval ({code}): {rejection}", code = .0.code(), rejection = .0)]
    NoLongerValid(Rejection),
    /// The target's number now belongs to another account than at intake.
    #[error(
        "the target's number now belongs to another account than at intake; nothing is disclosed"
    )]
    TargetChanged,
    /// The desk would write an entry its own replay refuses (a bug, or a
    /// race the desk lost); nothing was written.
    #[error("refused by the log's rules: {0}")]
    Refused(String),
    /// Other writers kept appending; try again.
    #[error("the desk is busy; try again")]
    Busy,
}

/// Checks an operator's name as the audit log records it. Names are
/// refused, never trimmed or normalised.
pub fn check_operator(name: &str) -> Result<&str, DeskError> {
    let ok = !name.is_empty()
        && name.chars().count() <= 64
        && name.trim() == name
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || " .-_@'".contains(c));
    if ok {
        Ok(name)
    } else {
        Err(DeskError::BadOperator)
    }
}

/// A replayed state kept between operations (the relay keeps one per
/// process): a later operation reads and checks only the entries appended
/// since, after checking that the last entry it replayed is still there,
/// unchanged. A full replay (`Desk::replay_all`, every `redoubtd legal`
/// command, every `audit verify`) checks the whole log again.
#[derive(Clone, Default)]
pub struct DeskCache(std::sync::Arc<std::sync::Mutex<Option<(DeskState, String)>>>);

impl DeskCache {
    fn get(&self) -> Option<(DeskState, String)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn put(&self, state: &DeskState, last_line: Option<&String>) {
        let value = last_line.map(|line| (state.clone(), line.clone()));
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = value;
    }
}

/// The desk, over its store and the relay's read-only records.
pub struct Desk<R, S> {
    store: S,
    records: R,
    cache: Option<DeskCache>,
    /// Where the service operates.
    pub markets: MarketPolicy,
    /// How long IP-log rows are kept (the relay's `ip_log.retention`).
    pub retention: Duration,
    key: ServiceKey,
}

impl<R: SubscriberRecords, S: DeskStore> Desk<R, S> {
    /// The desk over `store`, signing with the service key.
    pub fn new(
        store: S,
        records: R,
        key: ServiceKey,
        markets: MarketPolicy,
        retention: Duration,
    ) -> Self {
        Self {
            store,
            records,
            cache: None,
            markets,
            retention,
            key,
        }
    }

    /// Keeps the replayed state in `cache` between operations.
    pub fn with_cache(mut self, cache: DeskCache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// The state: the replay of the log (from the cache, if any, plus what
    /// was appended since). Fails on a broken log.
    pub async fn state(&self) -> Result<DeskState, DeskError> {
        let key = self.key.public_key();
        if let Some((mut state, last_line)) = self.cache.as_ref().and_then(DeskCache::get) {
            let n = state.entries.len() as u64;
            let lines = self.store.entries_after(n.saturating_sub(1)).await?;
            // The last entry replayed must still be there, unchanged; a
            // truncated or rewritten tail is replayed in full below.
            if n > 0 && lines.first() == Some(&last_line) {
                state.extend(&lines[1..], &key).map_err(DeskError::Broken)?;
                if let Some(cache) = &self.cache {
                    cache.put(&state, lines.last());
                }
                return Ok(state);
            }
        }
        self.replay_all().await
    }

    /// The replay of the whole log, every entry checked again.
    pub async fn replay_all(&self) -> Result<DeskState, DeskError> {
        let lines = self.store.entries().await?;
        let state = DeskState::replay(&lines, &self.key.public_key()).map_err(DeskError::Broken)?;
        if let Some(cache) = &self.cache {
            cache.put(&state, lines.last());
        }
        Ok(state)
    }

    /// The log as stored, one JSON entry per line: the export auditors
    /// verify offline.
    pub async fn export(&self) -> Result<Vec<String>, DeskError> {
        Ok(self.store.entries().await?)
    }

    /// The service's public key (base64), which authorities use to check
    /// packages and anyone uses to check reports and checkpoints.
    pub fn public_key(&self) -> String {
        self.key.public_key()
    }

    /// The log's signed checkpoint now. Fails on a broken log.
    pub async fn checkpoint(&self) -> Result<Checkpoint, DeskError> {
        Ok(Checkpoint::sign(
            &self.state().await?.entries,
            self.key.signing(),
        ))
    }

    /// The operator who signed `action`, checked: one valid signature by
    /// an active operator, signed within minutes of `now`, never used.
    pub fn operator(
        state: &DeskState,
        action: &SignedAction,
        now: OffsetDateTime,
    ) -> Result<OperatorInfo, DeskError> {
        let signers = action.signers()?;
        let [key] = signers.as_slice() else {
            return Err(DeskError::NotAnOperator);
        };
        let op = state.active_operator(key).ok_or(DeskError::NotAnOperator)?;
        if (action.action.at - now).abs() > ACTION_SKEW {
            return Err(DeskError::StaleAction);
        }
        if state.nonce_used(&action.action.nonce) {
            return Err(DeskError::ReplayedAction);
        }
        Ok(op.clone())
    }

    /// Checks new entries against the replay's rules and appends them (with
    /// their blobs) after `state`, in one transaction. False when another
    /// writer appended first.
    async fn commit(
        &self,
        state: &DeskState,
        entries: Vec<NewEntry>,
        blobs: Vec<Vec<u8>>,
        now: OffsetDateTime,
    ) -> Result<bool, DeskError> {
        let mut check = state.clone();
        let mut lines = Vec::with_capacity(entries.len());
        for entry in entries {
            let seq = check.entries.len() as u64 + 1;
            let sealed = entry.seal(seq, check.head(), now);
            check
                .apply(&sealed, &self.key.public_key())
                .map_err(DeskError::Refused)?;
            lines.push(
                serde_json::to_string(&sealed).map_err(|e| LegalError::Malformed {
                    what: "an audit entry",
                    detail: e.to_string(),
                })?,
            );
        }
        let blobs = blobs
            .into_iter()
            .map(|b| (crate::sha256_hex(&b), b))
            .collect();
        Ok(self
            .store
            .append(state.entries.len() as u64, lines, blobs)
            .await?)
    }

    /// Records an operator's refused request (refusals are decisions too),
    /// then the caller returns the refusal. False when another writer
    /// appended first and the request must be judged again.
    async fn refuse(
        &self,
        state: &DeskState,
        event: &'static str,
        op: &OperatorInfo,
        action: &SignedAction,
        refusal: &DeskError,
        now: OffsetDateTime,
    ) -> Result<bool, DeskError> {
        let entry = NewEntry {
            event,
            actor: op.name.clone(),
            issuer: None,
            order_id: None,
            detail: json!({ "reason": refusal.to_string() }),
            action: action.clone(),
        };
        self.commit(state, vec![entry], vec![], now).await
    }

    /// The first two operators, each signing the same bootstrap action.
    /// Only on a desk with no operators.
    pub async fn bootstrap(
        &self,
        action: &SignedAction,
        now: OffsetDateTime,
    ) -> Result<(), DeskError> {
        let ActionKind::Bootstrap { operators } = &action.action.what else {
            return Err(DeskError::ActionMismatch("not a bootstrap"));
        };
        action.signers()?;
        if (action.action.at - now).abs() > ACTION_SKEW {
            return Err(DeskError::StaleAction);
        }
        for _ in 0..ATTEMPTS {
            let state = self.state().await?;
            if state.active_operators().next().is_some() {
                return Err(DeskError::Bootstrap(
                    "the desk has operators already".into(),
                ));
            }
            let entry = NewEntry {
                event: "bootstrap",
                actor: operators
                    .iter()
                    .map(|o| o.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                issuer: None,
                order_id: None,
                detail: json!({}),
                action: action.clone(),
            };
            match self.commit(&state, vec![entry], vec![], now).await {
                Ok(true) => return Ok(()),
                Ok(false) => continue,
                Err(DeskError::Refused(why)) => return Err(DeskError::Bootstrap(why)),
                Err(e) => return Err(e),
            }
        }
        Err(DeskError::Busy)
    }

    /// One operator proposes a trust change; returns its number, which a
    /// second operator confirms.
    pub async fn propose(
        &self,
        action: &SignedAction,
        now: OffsetDateTime,
    ) -> Result<u64, DeskError> {
        let ActionKind::Propose { change } = &action.action.what else {
            return Err(DeskError::ActionMismatch("not a proposal"));
        };
        for _ in 0..ATTEMPTS {
            let state = self.state().await?;
            let op = Self::operator(&state, action, now)?;
            if let Err(why) = state.check_change(change) {
                let refusal = DeskError::BadChange(why);
                if self
                    .refuse(&state, "proposal_refused", &op, action, &refusal, now)
                    .await?
                {
                    return Err(refusal);
                }
                continue;
            }
            let number = state.entries.len() as u64 + 1;
            let entry = NewEntry {
                event: "proposal",
                actor: op.name,
                issuer: None,
                order_id: None,
                detail: json!({}),
                action: action.clone(),
            };
            if self.commit(&state, vec![entry], vec![], now).await? {
                return Ok(number);
            }
        }
        Err(DeskError::Busy)
    }

    /// A second operator confirms a proposal, which takes effect.
    pub async fn confirm(
        &self,
        action: &SignedAction,
        now: OffsetDateTime,
    ) -> Result<Change, DeskError> {
        let ActionKind::Confirm { proposal } = &action.action.what else {
            return Err(DeskError::ActionMismatch("not a confirmation"));
        };
        for _ in 0..ATTEMPTS {
            let state = self.state().await?;
            let op = Self::operator(&state, action, now)?;
            let checked = state
                .proposals
                .iter()
                .find(|p| p.number == *proposal && !p.confirmed)
                .ok_or(DeskError::UnknownProposal(*proposal))
                .and_then(|found| {
                    if found.by_key == op.public_key {
                        return Err(DeskError::FourEyes);
                    }
                    if now - found.at > crate::state::PROPOSAL_LIFETIME {
                        return Err(DeskError::ProposalExpired);
                    }
                    state
                        .check_change(&found.change)
                        .map_err(DeskError::BadChange)?;
                    Ok(found)
                });
            let found = match checked {
                Ok(found) => found,
                Err(refusal) => {
                    if self
                        .refuse(&state, "confirmation_refused", &op, action, &refusal, now)
                        .await?
                    {
                        return Err(refusal);
                    }
                    continue;
                }
            };
            let event = match found.change {
                Change::AddOperator { .. } | Change::RevokeOperator { .. } => "operator_change",
                _ => "trust_change",
            };
            let entry = NewEntry {
                event,
                actor: op.name,
                issuer: None,
                order_id: None,
                detail: json!({ "proposed_by": found.by }),
                action: action.clone(),
            };
            let change = found.change.clone();
            if self.commit(&state, vec![entry], vec![], now).await? {
                return Ok(change);
            }
        }
        Err(DeskError::Busy)
    }

    /// Verifies an order document and files it as pending or rejected. The
    /// action must be an intake of exactly these bytes.
    pub async fn intake(
        &self,
        document: &[u8],
        action: &SignedAction,
        now: OffsetDateTime,
    ) -> Result<Intake, DeskError> {
        let ActionKind::Intake { document_sha256 } = &action.action.what else {
            return Err(DeskError::ActionMismatch("not an intake"));
        };
        if *document_sha256 != crate::sha256_hex(document) {
            return Err(DeskError::ActionMismatch(
                "the signed document hash is not this document's",
            ));
        }
        for _ in 0..ATTEMPTS {
            let state = self.state().await?;
            let op = Self::operator(&state, action, now)?;
            let (entry, blobs, result) = self
                .decide_intake(&state, document, op, action, now)
                .await?;
            if self.commit(&state, vec![entry], blobs, now).await? {
                return Ok(result);
            }
        }
        Err(DeskError::Busy)
    }

    async fn decide_intake(
        &self,
        state: &DeskState,
        document: &[u8],
        op: OperatorInfo,
        action: &SignedAction,
        now: OffsetDateTime,
    ) -> Result<(NewEntry, Vec<Vec<u8>>, Intake), DeskError> {
        let entry = |event, issuer: Option<String>, order_id: Option<String>, detail| NewEntry {
            event,
            actor: op.name.clone(),
            issuer,
            order_id,
            detail,
            action: action.clone(),
        };
        let signed = match verify_document(document, &state.trust, &self.markets, now) {
            Ok(signed) => signed,
            Err(rejection) => {
                // Name the order in the log when its ids are readable, but
                // file nothing: an unverified document must never create or
                // overwrite an order record.
                let value = serde_json::from_slice::<serde_json::Value>(document).ok();
                let field = |name: &str| {
                    value
                        .as_ref()
                        .and_then(|v| v.pointer(name))
                        .and_then(|v| v.as_str())
                        .map(str::to_owned)
                        .filter(|id| crate::verify::check_id("id", id).is_ok())
                };
                let order_id = field("/order/order_id");
                let issuer = field("/order/issuing_authority");
                let e = entry(
                    "rejection",
                    issuer,
                    order_id.clone(),
                    json!({ "code": rejection.code(), "reason": rejection.to_string() }),
                );
                return Ok((
                    e,
                    vec![],
                    Intake::Rejected {
                        order_id,
                        rejection,
                    },
                ));
            }
        };
        let order = &signed.order;
        let issuer = Some(order.issuing_authority.clone());
        let order_id = Some(order.order_id.clone());
        let mut filed = FiledDetail {
            code: None,
            reason: None,
            jurisdiction: order.jurisdiction.clone(),
            legal_instrument: order.legal_instrument.clone(),
            summary: OrderSummary::from(order),
            document_sha256: crate::sha256_hex(document),
            target_account: None,
        };
        let reject = |mut filed: FiledDetail, rejection: Rejection| {
            filed.code = Some(rejection.code().into());
            filed.reason = Some(rejection.to_string());
            let detail = serde_json::to_value(&filed).unwrap_or_default();
            // A replay is not filed (its detail names no document): the
            // original's record stays as it is.
            let (detail, blobs) = if rejection == Rejection::Duplicate {
                (
                    json!({ "code": rejection.code(), "reason": rejection.to_string(),
                            "jurisdiction": filed.jurisdiction, "legal_instrument": filed.legal_instrument }),
                    vec![],
                )
            } else {
                (detail, vec![document.to_vec()])
            };
            (
                entry("rejection", issuer.clone(), order_id.clone(), detail),
                blobs,
                Intake::Rejected {
                    order_id: order_id.clone(),
                    rejection,
                },
            )
        };
        // Order ids are unique per issuer: one authority cannot burn
        // another's id.
        if state
            .order(&order.issuing_authority, &order.order_id)
            .is_some()
        {
            return Ok(reject(filed, Rejection::Duplicate));
        }
        let Some(subscriber) = self.records.subscriber(&order.target).await? else {
            return Ok(reject(filed, Rejection::TargetNotFound));
        };
        let only_ip_data = !order.categories.contains(&DataCategory::Subscriber);
        if only_ip_data && order.window.to < now - self.retention {
            return Ok(reject(filed, Rejection::NoDataHeld));
        }
        filed.target_account = Some(subscriber.account_id);
        let detail = serde_json::to_value(&filed).unwrap_or_default();
        Ok((
            entry("intake", issuer, order_id, detail),
            vec![document.to_vec()],
            Intake::Pending {
                order_id: order.order_id.clone(),
            },
        ))
    }

    /// The order a bare id names: the one on file with it, or an error if
    /// several issuers used it.
    pub fn resolve<'a>(
        state: &'a DeskState,
        issuer: Option<&str>,
        order_id: &str,
    ) -> Result<&'a OrderRecord, DeskError> {
        let mut found = state
            .orders
            .iter()
            .filter(|o| o.order_id == order_id && issuer.is_none_or(|i| o.issuer == i));
        match (found.next(), found.next()) {
            (Some(o), None) => Ok(o),
            (Some(_), Some(_)) => Err(DeskError::AmbiguousOrder(order_id.into())),
            (None, _) => Err(DeskError::UnknownOrder(order_id.into())),
        }
    }

    /// A second operator approves a pending order: everything intake
    /// checked is checked again (authority, market, deadline), the target
    /// must still be the account fixed at intake, and the package is
    /// produced and stored in the same transaction as the entries that
    /// record its release. A refusal is recorded too.
    pub async fn approve(
        &self,
        action: &SignedAction,
        now: OffsetDateTime,
    ) -> Result<SignedPackage, DeskError> {
        let ActionKind::Approve { issuer, order_id } = &action.action.what else {
            return Err(DeskError::ActionMismatch("not an approval"));
        };
        for _ in 0..ATTEMPTS {
            let state = self.state().await?;
            let op = Self::operator(&state, action, now)?;
            let entry = |event, detail| NewEntry {
                event,
                actor: op.name.clone(),
                issuer: Some(issuer.clone()),
                order_id: Some(order_id.clone()),
                detail,
                action: action.clone(),
            };
            match self
                .decide_approval(&state, issuer, order_id, &op, now)
                .await
            {
                Ok((package, detail)) => {
                    let bytes =
                        serde_json::to_vec(&package).map_err(|e| LegalError::Malformed {
                            what: "a package",
                            detail: e.to_string(),
                        })?;
                    let mut detail = detail;
                    detail["package_sha256"] = json!(crate::sha256_hex(&bytes));
                    let entries = vec![
                        entry(
                            "approval",
                            json!({ "intake_by": state.order(issuer, order_id).map(|o| o.intake_by.clone()) }),
                        ),
                        entry("disclosure", detail),
                    ];
                    if self.commit(&state, entries, vec![bytes], now).await? {
                        return Ok(package);
                    }
                }
                Err(e @ (DeskError::Legal(_) | DeskError::Records(_))) => return Err(e),
                Err(refusal) => {
                    let ids_ok = crate::verify::check_id("id", issuer).is_ok()
                        && crate::verify::check_id("id", order_id).is_ok();
                    let mut e = entry("approval_refused", json!({ "reason": refusal.to_string() }));
                    if !ids_ok {
                        (e.issuer, e.order_id) = (None, None);
                    }
                    if self.commit(&state, vec![e], vec![], now).await? {
                        return Err(refusal);
                    }
                }
            }
        }
        Err(DeskError::Busy)
    }

    async fn decide_approval(
        &self,
        state: &DeskState,
        issuer: &str,
        order_id: &str,
        op: &OperatorInfo,
        now: OffsetDateTime,
    ) -> Result<(SignedPackage, serde_json::Value), DeskError> {
        let record = state
            .order(issuer, order_id)
            .ok_or_else(|| DeskError::UnknownOrder(order_id.into()))?;
        if record.status != OrderStatus::Pending {
            return Err(DeskError::NotPending(order_id.into()));
        }
        if record.intake_key == op.public_key {
            return Err(DeskError::FourEyes);
        }
        if record.summary.deadline < now {
            return Err(DeskError::Expired);
        }
        // The world may have changed since intake: a revoked or expired
        // authority, an exited market. The same checks, again, now, on the
        // document exactly as received.
        let document = self
            .store
            .blob(&record.document_sha256)
            .await?
            .ok_or_else(|| {
                DeskError::Refused("the order's document is missing from the desk".into())
            })?;
        if crate::sha256_hex(&document) != record.document_sha256 {
            return Err(DeskError::Refused(
                "the stored document is not the one taken in".into(),
            ));
        }
        let signed = verify_document(&document, &state.trust, &self.markets, now)
            .map_err(DeskError::NoLongerValid)?;
        let order = signed.order;
        let subscriber = self
            .records
            .subscriber(&order.target)
            .await?
            .ok_or(DeskError::TargetChanged)?;
        if record.target_account != Some(subscriber.account_id) {
            return Err(DeskError::TargetChanged);
        }
        let account = subscriber.account_id;
        let mut produced = Disclosure {
            subscriber: None,
            ip_identification: None,
        };
        let mut not_produced = Vec::new();
        for category in &order.categories {
            match (category, producible(*category)) {
                (DataCategory::Subscriber, Ok(())) => {
                    produced.subscriber = Some((&subscriber).into())
                }
                (DataCategory::IpIdentification, Ok(())) => {
                    // Each sighting is clipped to the window: nothing the
                    // order did not ask for leaves, not even the edge of a
                    // record that began before it or ended after it.
                    let (from, to) = (order.window.from, order.window.to);
                    let records = self
                        .records
                        .ip_records(account, from, to)
                        .await?
                        .into_iter()
                        .filter(|r| r.first_seen <= to && r.last_seen >= from)
                        .map(|mut r| {
                            r.first_seen = r.first_seen.max(from);
                            r.last_seen = r.last_seen.min(to);
                            r
                        })
                        .collect();
                    produced.ip_identification = Some(records);
                }
                (category, Err(reason)) => not_produced.push(NotProduced {
                    category: *category,
                    reason: reason.into(),
                }),
                (_, Ok(())) => {}
            }
        }
        let package = crate::disclosure::DisclosurePackage {
            order_id: order.order_id.clone(),
            issuing_authority: order.issuing_authority.clone(),
            jurisdiction: order.jurisdiction.clone(),
            produced,
            not_produced,
            message_content_bytes_disclosed: 0,
            produced_at: now,
            signed_order: String::from_utf8_lossy(&document).into_owned(),
        };
        let signed = self.key.sign(package);
        let ip_rows = signed
            .package
            .produced
            .ip_identification
            .as_ref()
            .map_or(0, Vec::len);
        let detail = json!({
            "jurisdiction": order.jurisdiction,
            "produced": { "subscriber": signed.package.produced.subscriber.is_some(), "ip_records": ip_rows },
            "not_produced": signed.package.not_produced.iter().map(|n| n.category).collect::<Vec<_>>(),
            "message_content_bytes": 0,
        });
        Ok((signed, detail))
    }

    /// The package released for an order, as stored with its approval.
    pub async fn package(&self, record: &OrderRecord) -> Result<Option<SignedPackage>, DeskError> {
        let OrderStatus::Fulfilled { package_sha256, .. } = &record.status else {
            return Ok(None);
        };
        let Some(bytes) = self.store.blob(package_sha256).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            LegalError::Malformed {
                what: "a stored package",
                detail: e.to_string(),
            }
            .into()
        })
    }

    /// Records an operator's market decision (announce or cancel an exit).
    pub async fn record_market(
        &self,
        action: &SignedAction,
        now: OffsetDateTime,
    ) -> Result<(), DeskError> {
        let ActionKind::Market { decision } = &action.action.what else {
            return Err(DeskError::ActionMismatch("not a market decision"));
        };
        for _ in 0..ATTEMPTS {
            let state = self.state().await?;
            let op = Self::operator(&state, action, now)?;
            let entry = NewEntry {
                event: "market",
                actor: op.name,
                issuer: None,
                order_id: None,
                detail: decision.clone(),
                action: action.clone(),
            };
            if self.commit(&state, vec![entry], vec![], now).await? {
                return Ok(());
            }
        }
        Err(DeskError::Busy)
    }

    /// Records the relay's purge of a market's data, signed by the service.
    pub async fn record_purge(
        &self,
        detail: serde_json::Value,
        now: OffsetDateTime,
    ) -> Result<(), DeskError> {
        let action = crate::operators::sign_with(
            self.key.signing(),
            ActionKind::Purged {
                detail: detail.clone(),
            },
            now,
        );
        self.relay_entry("market", None, detail, action, now).await
    }

    async fn relay_entry(
        &self,
        event: &'static str,
        order: Option<(&str, &str)>,
        detail: serde_json::Value,
        action: SignedAction,
        now: OffsetDateTime,
    ) -> Result<(), DeskError> {
        for _ in 0..ATTEMPTS {
            let state = self.state().await?;
            let entry = NewEntry {
                event,
                actor: "redoubtd".into(),
                issuer: order.map(|o| o.0.to_owned()),
                order_id: order.map(|o| o.1.to_owned()),
                detail: detail.clone(),
                action: action.clone(),
            };
            if self.commit(&state, vec![entry], vec![], now).await? {
                return Ok(());
            }
        }
        Err(DeskError::Busy)
    }

    /// The notices now due: answered orders whose user has not been told and
    /// whose gag period (if any) has ended. The account told is the one
    /// fixed at intake.
    pub async fn due_notices(&self, now: OffsetDateTime) -> Result<Vec<UserNotice>, DeskError> {
        let state = self.state().await?;
        let mut due = Vec::new();
        for record in &state.orders {
            let OrderStatus::Fulfilled {
                notified_at: None,
                disclosed_at,
                ..
            } = &record.status
            else {
                continue;
            };
            let summary = &record.summary;
            if summary.notify_user_after.is_some_and(|t| t > now) {
                continue;
            }
            let Some(account_id) = record.target_account else {
                continue;
            };
            let authority = state
                .trust
                .find(&record.issuer)
                .map_or(record.issuer.as_str(), |a| a.name.as_str());
            let disclosed: Vec<&str> = summary
                .categories
                .iter()
                .filter_map(|c| match c {
                    DataCategory::Subscriber => Some("your phone number and account creation date"),
                    DataCategory::IpIdentification => {
                        Some("the IP addresses your devices connected from")
                    }
                    _ => None,
                })
                .collect();
            let text = format!(
                "Redoubt disclosed data about your account on {} to {} ({}) under order {}: {}. \
                 No message content was disclosed: Redoubt never has it.",
                disclosed_at.date(),
                authority,
                summary.jurisdiction,
                record.order_id,
                disclosed.join(" and "),
            );
            due.push(UserNotice {
                issuer: record.issuer.clone(),
                order_id: record.order_id.clone(),
                account_id,
                text,
                disclosed_at: *disclosed_at,
            });
        }
        Ok(due)
    }

    /// Records that a user was told about an order (once).
    pub async fn mark_notified(
        &self,
        issuer: &str,
        order_id: &str,
        now: OffsetDateTime,
    ) -> Result<(), DeskError> {
        let state = self.state().await?;
        let owed = state.order(issuer, order_id).is_some_and(|o| {
            matches!(
                o.status,
                OrderStatus::Fulfilled {
                    notified_at: None,
                    ..
                }
            )
        });
        if !owed {
            return Ok(());
        }
        let action = crate::operators::sign_with(
            self.key.signing(),
            ActionKind::Notified {
                issuer: issuer.into(),
                order_id: order_id.into(),
            },
            now,
        );
        match self
            .relay_entry(
                "user_notice",
                Some((issuer, order_id)),
                json!({}),
                action,
                now,
            )
            .await
        {
            // Another node recorded it first.
            Err(DeskError::Refused(_)) => Ok(()),
            other => other,
        }
    }

    /// The signed transparency report for a period such as `2026-H2`: never
    /// over a broken log, and carrying the log's signed checkpoint, so
    /// anyone holding the report can later check the history was not
    /// rewritten.
    pub async fn report(
        &self,
        period: &str,
        market_exits: Vec<crate::report::MarketExitLine>,
        key_directory: Option<redoubt_proto::kt::SignedEpoch>,
        now: OffsetDateTime,
    ) -> Result<crate::report::SignedReport, DeskError> {
        let range =
            crate::report::Period::parse(period).map_err(|detail| LegalError::Malformed {
                what: "the period",
                detail,
            })?;
        let state = self.state().await?;
        let checkpoint = Checkpoint::sign(&state.entries, self.key.signing());
        // Distinct targets are counted from the documents themselves (the
        // log keeps only their hashes, since they name people).
        let mut targets = std::collections::BTreeMap::new();
        for record in &state.orders {
            if let Some(bytes) = self.store.blob(&record.document_sha256).await? {
                if let Ok(signed) = serde_json::from_slice::<crate::order::SignedOrder>(&bytes) {
                    targets.insert(
                        record.document_sha256.clone(),
                        crate::report::target_key(&signed.order.target),
                    );
                }
            }
        }
        let mut report = crate::report::build(
            period,
            range,
            &state.orders,
            &targets,
            &state.entries,
            market_exits,
            now,
        );
        report.audit_checkpoint = Some(checkpoint);
        report.key_directory = key_directory;
        Ok(crate::report::sign(report, &self.key))
    }
}
