//! The desk's state as the replay of its audit log: the operators, the
//! trust store, the orders and where each stands, the open proposals. No
//! I/O: it takes the log's entries and returns the state, or the first
//! entry that breaks a rule.
//!
//! The desk writes an entry only after applying it to a copy of the state
//! with the same [`DeskState::apply`] the replay uses, so whatever the desk
//! writes, every later replay (the desk's own, an auditor's) accepts; and
//! whatever an insider writes around the desk (a row without an operator's
//! signature, an approval by the operator who took the order in, an
//! operator added by one person) every replay refuses.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::audit::{AuditEntry, ChainBreak, GENESIS};
use crate::operators::{ActionKind, Change, OperatorInfo, ACTION_SKEW};
use crate::order::{CourtOrder, DataCategory};
use crate::trust::TrustStore;

/// How long a proposal waits for its second operator.
pub const PROPOSAL_LIFETIME: time::Duration = time::Duration::days(7);

/// What the desk keeps of an order in its log (the document itself is a
/// blob the log commits to by hash, since it names the target).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderSummary {
    /// ISO 3166-1 alpha-2 code of the issuing state.
    pub jurisdiction: String,
    /// The legal instrument.
    pub legal_instrument: String,
    /// What data was asked for.
    pub categories: Vec<DataCategory>,
    /// An emergency order.
    pub emergency: bool,
    /// When it must be answered by.
    #[serde(with = "time::serde::rfc3339")]
    pub deadline: OffsetDateTime,
    /// The gag's end, if any.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub notify_user_after: Option<OffsetDateTime>,
}

impl From<&CourtOrder> for OrderSummary {
    fn from(o: &CourtOrder) -> Self {
        Self {
            jurisdiction: o.jurisdiction.clone(),
            legal_instrument: o.legal_instrument.clone(),
            categories: o.categories.clone(),
            emergency: o.emergency,
            deadline: o.deadline,
            notify_user_after: o.notify_user_after,
        }
    }
}

/// The detail of an `intake` entry, and of a `rejection` entry for an order
/// that verified but was refused on the service's data (such orders are
/// filed, so the report counts them once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FiledDetail {
    /// For a rejection: its code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// For a rejection: its text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// ISO 3166-1 alpha-2 code of the issuing state.
    pub jurisdiction: String,
    /// The legal instrument.
    pub legal_instrument: String,
    /// The order, as far as the report and the workflow need it.
    pub summary: OrderSummary,
    /// SHA-256 (hex) of the document as received.
    pub document_sha256: String,
    /// The account the target named at intake, fixed for approval.
    #[serde(default)]
    pub target_account: Option<redoubt_proto::AccountId>,
}

/// Where an order stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum OrderStatus {
    /// Verified; waiting for a second operator's approval.
    Pending,
    /// Refused, with the reason's code and text.
    Rejected {
        /// The stable code.
        code: String,
        /// The explanation.
        reason: String,
    },
    /// Approved and answered.
    Fulfilled {
        /// The approving operator's name.
        approved_by: String,
        /// Their key.
        approved_key: String,
        /// When the package was produced.
        #[serde(with = "time::serde::rfc3339")]
        disclosed_at: OffsetDateTime,
        /// SHA-256 (hex) of the signed package as released.
        package_sha256: String,
        /// When the user was told (after any gag period).
        #[serde(default, with = "time::serde::rfc3339::option")]
        notified_at: Option<OffsetDateTime>,
    },
}

/// An order on file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRecord {
    /// The issuing authority's id.
    pub issuer: String,
    /// The order's id, unique per issuer.
    pub order_id: String,
    /// What the workflow and the report need of it.
    pub summary: OrderSummary,
    /// SHA-256 (hex) of the document as received.
    pub document_sha256: String,
    /// The operator who took it in.
    pub intake_by: String,
    /// Their key: the four-eyes rule compares keys.
    pub intake_key: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// Where it stands.
    pub status: OrderStatus,
    /// The account the target named at intake. Approval discloses this
    /// account or nothing: a number recycled to someone else in between
    /// never discloses its new holder.
    pub target_account: Option<redoubt_proto::AccountId>,
}

/// A trust change waiting for a second operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Its number: the sequence number of its entry.
    pub number: u64,
    /// The change.
    pub change: Change,
    /// Who proposed it.
    pub by: String,
    /// Their key.
    pub by_key: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Confirmed (and so applied).
    pub confirmed: bool,
}

/// The desk's state.
#[derive(Debug, Clone, Default)]
pub struct DeskState {
    /// The log, in order.
    pub entries: Vec<AuditEntry>,
    /// Every operator ever added, revoked ones included.
    pub operators: Vec<OperatorInfo>,
    /// The trust store.
    pub trust: TrustStore,
    /// Every filed order, oldest first.
    pub orders: Vec<OrderRecord>,
    /// Every proposal.
    pub proposals: Vec<Proposal>,
    nonces: HashSet<String>,
}

fn detail<T: serde::de::DeserializeOwned>(entry: &AuditEntry) -> Result<T, String> {
    serde_json::from_value(entry.detail.clone()).map_err(|e| format!("its detail: {e}"))
}

impl DeskState {
    /// Replays a log (entries as stored): checks the chain, every
    /// signature and every rule, and returns the state.
    pub fn replay(lines: &[String], service_key: &str) -> Result<Self, ChainBreak> {
        let mut state = Self::default();
        state.extend(lines, service_key)?;
        Ok(state)
    }

    /// Applies entries that follow this state's last one (as stored):
    /// each must chain on, carry its own hash, and keep every rule.
    pub fn extend(&mut self, lines: &[String], service_key: &str) -> Result<(), ChainBreak> {
        for line in lines {
            let entry = crate::audit::next_entry(line, self.entries.len() + 1, self.head())?;
            self.apply(&entry, service_key)
                .map_err(|why| ChainBreak::Unauthorised {
                    seq: entry.seq,
                    why,
                })?;
        }
        Ok(())
    }

    /// The last entry's hash, which the next entry chains to.
    pub fn head(&self) -> &str {
        self.entries.last().map_or(GENESIS, |e| e.hash.as_str())
    }

    /// The operator holding this key, if it is not revoked.
    pub fn active_operator(&self, public_key: &str) -> Option<&OperatorInfo> {
        self.operators
            .iter()
            .find(|o| o.public_key == public_key && o.revoked_at.is_none())
    }

    /// Operators whose keys are not revoked.
    pub fn active_operators(&self) -> impl Iterator<Item = &OperatorInfo> {
        self.operators.iter().filter(|o| o.revoked_at.is_none())
    }

    /// Whether an action's nonce was used already.
    pub fn nonce_used(&self, nonce: &str) -> bool {
        self.nonces.contains(nonce)
    }

    /// The order with this issuer and id.
    pub fn order(&self, issuer: &str, order_id: &str) -> Option<&OrderRecord> {
        self.orders
            .iter()
            .find(|o| o.issuer == issuer && o.order_id == order_id)
    }

    fn order_mut(&mut self, entry: &AuditEntry) -> Result<&mut OrderRecord, String> {
        let (Some(issuer), Some(id)) = (&entry.issuer, &entry.order_id) else {
            return Err("it names no order".into());
        };
        self.orders
            .iter_mut()
            .find(|o| &o.issuer == issuer && &o.order_id == id)
            .ok_or_else(|| "it names an order that is not on file".into())
    }

    /// Checks that a proposed change can be made now.
    pub fn check_change(&self, change: &Change) -> Result<(), String> {
        match change {
            Change::AddAuthority { authority } => self
                .trust
                .clone()
                .add(authority.clone())
                .map_err(|e| e.to_string()),
            Change::RevokeAuthority { id } => match self.trust.find(id) {
                None => Err(format!("no authority with id {id:?}")),
                Some(a) if a.revoked_at.is_some() => Err(format!("{id:?} is already revoked")),
                Some(_) => Ok(()),
            },
            Change::AddOperator { name, public_key } => {
                crate::desk::check_operator(name).map_err(|e| e.to_string())?;
                crate::verify::decode_key(public_key)
                    .ok_or("the operator's key is not a base64 Ed25519 public key")?;
                if self.operators.iter().any(|o| &o.public_key == public_key) {
                    return Err("this key is (or was) an operator's already".into());
                }
                if self
                    .active_operators()
                    .any(|o| o.name.to_lowercase() == name.to_lowercase())
                {
                    return Err(format!("an operator is already called {name:?}"));
                }
                Ok(())
            }
            Change::RevokeOperator { public_key } => {
                if self.active_operator(public_key).is_none() {
                    return Err("no active operator holds this key".into());
                }
                // Two must remain, or nothing could ever be approved or
                // changed again.
                if self.active_operators().count() <= 2 {
                    return Err(
                        "at least two operators must remain; add one before revoking".into(),
                    );
                }
                Ok(())
            }
        }
    }

    /// Applies one entry, or says which rule it breaks.
    pub fn apply(&mut self, entry: &AuditEntry, service_key: &str) -> Result<(), String> {
        let signers = entry.action.signers().map_err(|e| e.to_string())?;
        let action = &entry.action.action;
        if (entry.at - action.at).abs() > ACTION_SKEW {
            return Err("its action was signed at another time than the entry".into());
        }
        // One action may cause several entries (an approval and its
        // disclosure), written together; never again later.
        let continues = self
            .entries
            .last()
            .is_some_and(|last| last.action.action.nonce == action.nonce);
        if !continues && self.nonces.contains(&action.nonce) {
            return Err("its action was used before (a replay)".into());
        }
        let by_relay = signers.len() == 1 && signers[0] == service_key;
        let operator = match (&action.what, signers.as_slice()) {
            (ActionKind::Bootstrap { .. }, _) => None,
            (ActionKind::Notified { .. } | ActionKind::Purged { .. }, _) => {
                if !by_relay {
                    return Err("a relay chore not signed by the service key".into());
                }
                if entry.actor != "redoubtd" {
                    return Err("a relay chore must name redoubtd".into());
                }
                None
            }
            (_, [key]) => {
                let op = self
                    .active_operator(key)
                    .ok_or("its signer is not an active operator")?;
                if op.name != entry.actor {
                    return Err("its actor is not the operator who signed it".into());
                }
                Some(op.clone())
            }
            _ => return Err("it needs exactly one operator's signature".into()),
        };
        let names = |issuer: &str, id: &str| {
            entry.issuer.as_deref() == Some(issuer) && entry.order_id.as_deref() == Some(id)
        };
        match (entry.event.as_str(), &action.what) {
            ("bootstrap", ActionKind::Bootstrap { operators }) => {
                if self.active_operators().next().is_some() {
                    return Err("the desk already has operators".into());
                }
                let mut listed: Vec<&str> =
                    operators.iter().map(|o| o.public_key.as_str()).collect();
                let mut signed: Vec<&str> = signers.iter().map(String::as_str).collect();
                listed.sort_unstable();
                signed.sort_unstable();
                listed.dedup();
                if operators.len() != 2 || listed.len() != 2 || listed != signed {
                    return Err("a bootstrap names two operators and both sign it".into());
                }
                for o in operators {
                    crate::desk::check_operator(&o.name).map_err(|e| e.to_string())?;
                    crate::verify::decode_key(&o.public_key).ok_or("a weak or malformed key")?;
                }
                if operators[0].name.to_lowercase() == operators[1].name.to_lowercase() {
                    return Err("the two first operators have the same name".into());
                }
                for o in operators {
                    self.operators.push(OperatorInfo {
                        name: o.name.clone(),
                        public_key: o.public_key.clone(),
                        added_at: entry.at,
                        revoked_at: None,
                    });
                }
            }
            ("proposal", ActionKind::Propose { change }) => {
                self.check_change(change)?;
                let op = operator.ok_or("no operator")?;
                self.proposals.push(Proposal {
                    number: entry.seq,
                    change: change.clone(),
                    by: op.name,
                    by_key: op.public_key,
                    at: entry.at,
                    confirmed: false,
                });
            }
            (event @ ("trust_change" | "operator_change"), ActionKind::Confirm { proposal }) => {
                let op = operator.ok_or("no operator")?;
                let found = self
                    .proposals
                    .iter()
                    .find(|p| p.number == *proposal)
                    .ok_or("it confirms no proposal")?
                    .clone();
                if found.confirmed {
                    return Err("the proposal was confirmed already".into());
                }
                if found.by_key == op.public_key {
                    return Err("the proposer cannot confirm their own proposal".into());
                }
                if entry.at - found.at > PROPOSAL_LIFETIME {
                    return Err("the proposal expired".into());
                }
                let operators_change = matches!(
                    found.change,
                    Change::AddOperator { .. } | Change::RevokeOperator { .. }
                );
                if operators_change != (event == "operator_change") {
                    return Err("its event does not match the change".into());
                }
                self.check_change(&found.change)?;
                match &found.change {
                    Change::AddAuthority { authority } => {
                        self.trust
                            .add(authority.clone())
                            .map_err(|e| e.to_string())?;
                    }
                    Change::RevokeAuthority { id } => {
                        self.trust.revoke(id, entry.at).map_err(|e| e.to_string())?;
                    }
                    Change::AddOperator { name, public_key } => {
                        self.operators.push(OperatorInfo {
                            name: name.clone(),
                            public_key: public_key.clone(),
                            added_at: entry.at,
                            revoked_at: None,
                        });
                    }
                    Change::RevokeOperator { public_key } => {
                        if let Some(o) = self
                            .operators
                            .iter_mut()
                            .find(|o| &o.public_key == public_key && o.revoked_at.is_none())
                        {
                            o.revoked_at = Some(entry.at);
                        }
                    }
                }
                if let Some(p) = self.proposals.iter_mut().find(|p| p.number == *proposal) {
                    p.confirmed = true;
                }
            }
            (event @ ("intake" | "rejection"), ActionKind::Intake { document_sha256 }) => {
                let op = operator.ok_or("no operator")?;
                let filed = match event {
                    "intake" => Some(detail::<FiledDetail>(entry)?),
                    // A rejection is filed when the document verified (its
                    // detail has the summary); a forgery or a replay is not.
                    _ => detail::<FiledDetail>(entry)
                        .ok()
                        .filter(|d| d.code.as_deref() != Some("duplicate")),
                };
                if let Some(filed) = filed {
                    if &filed.document_sha256 != document_sha256 {
                        return Err("it files another document than the one signed".into());
                    }
                    let (Some(issuer), Some(order_id)) = (&entry.issuer, &entry.order_id) else {
                        return Err("it names no order".into());
                    };
                    if self.order(issuer, order_id).is_some() {
                        return Err("the order is on file already".into());
                    }
                    let status = match (event, filed.code, filed.reason) {
                        ("intake", _, _) => OrderStatus::Pending,
                        (_, Some(code), Some(reason)) => OrderStatus::Rejected { code, reason },
                        _ => return Err("a filed rejection without its reason".into()),
                    };
                    self.orders.push(OrderRecord {
                        issuer: issuer.clone(),
                        order_id: order_id.clone(),
                        summary: filed.summary,
                        document_sha256: filed.document_sha256,
                        intake_by: op.name,
                        intake_key: op.public_key,
                        received_at: entry.at,
                        status,
                        target_account: filed.target_account,
                    });
                }
            }
            ("approval_refused", ActionKind::Approve { .. })
            | ("proposal_refused", ActionKind::Propose { .. })
            | ("confirmation_refused", ActionKind::Confirm { .. }) => {
                operator.ok_or("no operator")?;
            }
            ("approval", ActionKind::Approve { issuer, order_id }) => {
                let op = operator.ok_or("no operator")?;
                if !names(issuer, order_id) {
                    return Err("it names another order than the one signed".into());
                }
                let order = self.order_mut(entry)?;
                if order.status != OrderStatus::Pending {
                    return Err("the order is not pending".into());
                }
                if order.intake_key == op.public_key {
                    return Err("four-eyes: the operator who took it in approved it".into());
                }
            }
            ("disclosure", ActionKind::Approve { issuer, order_id }) => {
                let op = operator.ok_or("no operator")?;
                let approved = self.entries.last().is_some_and(|last| {
                    last.event == "approval" && last.action.action.nonce == action.nonce
                });
                if !approved || !names(issuer, order_id) {
                    return Err("a disclosure without its approval just before it".into());
                }
                let package_sha256 = entry
                    .detail
                    .get("package_sha256")
                    .and_then(|v| v.as_str())
                    .ok_or("it names no package")?
                    .to_owned();
                let order = self.order_mut(entry)?;
                order.status = OrderStatus::Fulfilled {
                    approved_by: op.name,
                    approved_key: op.public_key,
                    disclosed_at: entry.at,
                    package_sha256,
                    notified_at: None,
                };
            }
            ("user_notice", ActionKind::Notified { issuer, order_id }) => {
                if !names(issuer, order_id) {
                    return Err("it names another order than the one signed".into());
                }
                match &mut self.order_mut(entry)?.status {
                    OrderStatus::Fulfilled { notified_at, .. } if notified_at.is_none() => {
                        *notified_at = Some(entry.at)
                    }
                    _ => return Err("nobody is owed a notice for this order".into()),
                }
            }
            ("market", ActionKind::Market { .. } | ActionKind::Purged { .. }) => {}
            (event, _) => {
                return Err(format!(
                    "its event {event:?} does not go with its signed action"
                ))
            }
        }
        self.nonces.insert(action.nonce.clone());
        self.entries.push(entry.clone());
        Ok(())
    }
}
