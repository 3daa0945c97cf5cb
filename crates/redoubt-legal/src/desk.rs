//! The desk's workflow: intake (verify and record), four-eyes approval, and
//! the disclosure package, each step written to the audit log.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

use crate::audit::AuditLog;
use crate::disclosure::{Disclosure, NotProduced, ServiceKey, SignedPackage};
use crate::order::{DataCategory, SignedOrder};
use crate::records::{RecordsError, SubscriberRecords};
use crate::trust::TrustStore;
use crate::verify::{producible, verify_document, MarketPolicy, Rejection};
use crate::LegalError;

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
        /// The approving operator.
        approved_by: String,
        /// When the package was produced.
        #[serde(with = "time::serde::rfc3339")]
        disclosed_at: OffsetDateTime,
        /// When the user was told (after any gag period).
        #[serde(default, with = "time::serde::rfc3339::option")]
        notified_at: Option<OffsetDateTime>,
    },
}

/// An order on file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRecord {
    /// The order as received.
    pub order: SignedOrder,
    /// Who took it in.
    pub intake_by: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// Where it stands.
    pub status: OrderStatus,
    /// The account the target named at intake. Approval discloses this
    /// account or nothing: a number recycled to someone else in between
    /// never discloses its new holder.
    #[serde(default)]
    pub target_account: Option<redoubt_proto::AccountId>,
    /// The document exactly as received, which approval verifies again
    /// (the signature covers the order as sent, not a re-encoding).
    #[serde(default)]
    pub document: Option<String>,
}

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserNotice {
    /// The order.
    pub order_id: String,
    /// The account to tell.
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
    /// Files could not be read or written.
    #[error(transparent)]
    Legal(#[from] LegalError),
    /// The records could not be read.
    #[error(transparent)]
    Records(#[from] RecordsError),
    /// No order with this id is on file.
    #[error("no order {0:?} is on file")]
    UnknownOrder(String),
    /// The order is not waiting for approval.
    #[error("order {0:?} is not pending (it was rejected or already answered)")]
    NotPending(String),
    /// The operator who took the order in tried to approve it.
    #[error("four-eyes rule: the operator who took an order in cannot approve it")]
    FourEyes,
    /// The order lapsed while waiting.
    #[error("the order's deadline passed before approval")]
    Expired,
    /// The operator name is empty, padded, or has invisible or control
    /// characters: refused, never normalised, so one person cannot pass
    /// for two.
    #[error("operator names are 1 to 64 visible letters, digits, spaces, '.', '-', '_', '@' or \"'\", with no space at either end")]
    BadOperator,
    /// Checked again at approval, the order no longer holds (the authority
    /// was revoked or expired, the market was exited, the deadline passed).
    #[error("the order no longer verifies at approval ({code}): {rejection}", code = .0.code(), rejection = .0)]
    NoLongerValid(Rejection),
    /// The target's number now belongs to another account than at intake.
    #[error(
        "the target's number now belongs to another account than at intake; nothing is disclosed"
    )]
    TargetChanged,
}

/// Checks an operator's name as the audit log and the four-eyes rule use
/// it. Names are refused, never trimmed or normalised.
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

/// Whether two checked names are the same person for the four-eyes rule.
fn same_operator(a: &str, b: &str) -> bool {
    a.to_lowercase() == b.to_lowercase()
}

/// The desk, over a data directory and read-only records.
pub struct Desk<R> {
    dir: PathBuf,
    records: R,
    /// The trust store in force.
    pub trust: TrustStore,
    /// Where the service operates.
    pub markets: MarketPolicy,
    /// How long IP-log rows are kept (the relay's `ip_log.retention`).
    pub retention: Duration,
    audit: AuditLog,
    key: ServiceKey,
}

fn file_name(order_id: &str) -> String {
    // Order ids may contain '/' and ':'; a hash is a safe file name.
    let digest = Sha256::digest(order_id.as_bytes());
    format!(
        "{}.json",
        digest
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

impl<R: SubscriberRecords> Desk<R> {
    /// Opens the desk in `dir` (trust store, audit log, service key, orders).
    pub fn open(
        dir: &Path,
        records: R,
        markets: MarketPolicy,
        retention: Duration,
    ) -> Result<Self, LegalError> {
        std::fs::create_dir_all(dir.join("orders"))?;
        std::fs::create_dir_all(dir.join("disclosures"))?;
        Ok(Self {
            trust: TrustStore::load(&dir.join("trust.json"))?,
            audit: AuditLog::new(&dir.join("audit.jsonl")),
            key: ServiceKey::load_or_create(&dir.join("service_key"))?,
            dir: dir.to_owned(),
            records,
            markets,
            retention,
        })
    }

    /// Saves the trust store after a change and records the change.
    pub fn save_trust(
        &self,
        operator: &str,
        change: serde_json::Value,
        now: OffsetDateTime,
    ) -> Result<(), LegalError> {
        // Audited first: a trust change the log cannot record is not made.
        self.audit.append("trust", operator, None, change, now)?;
        self.trust.save(&self.dir.join("trust.json"))?;
        Ok(())
    }

    /// Every order on file, oldest first.
    pub fn orders(&self) -> Result<Vec<OrderRecord>, LegalError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.dir.join("orders"))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let bytes = std::fs::read(&path)?;
                out.push(serde_json::from_slice::<OrderRecord>(&bytes).map_err(|e| {
                    LegalError::Malformed {
                        what: "an order record",
                        detail: e.to_string(),
                    }
                })?);
            }
        }
        out.sort_by_key(|r| r.received_at);
        Ok(out)
    }

    /// The signed transparency report for a period such as `2026-H2`.
    pub fn report(
        &self,
        period: &str,
        market_exits: Vec<crate::report::MarketExitLine>,
        now: OffsetDateTime,
    ) -> Result<crate::report::SignedReport, LegalError> {
        let range =
            crate::report::Period::parse(period).map_err(|detail| LegalError::Malformed {
                what: "the period",
                detail,
            })?;
        // A report vouches for the log it counts: never over a broken one,
        // and it carries the log's checkpoint so anyone holding the report
        // can later check the history was not rewritten.
        let checkpoint = self.audit.checkpoint()?;
        let mut report = crate::report::build(
            period,
            range,
            &self.orders()?,
            &self.audit.entries()?,
            market_exits,
            now,
        );
        report.audit_checkpoint = Some(checkpoint);
        Ok(crate::report::sign(report, &self.key))
    }

    /// The notices now due: answered orders whose user has not been told and
    /// whose gag period (if any) has ended.
    pub async fn due_notices(&self, now: OffsetDateTime) -> Result<Vec<UserNotice>, DeskError> {
        let mut due = Vec::new();
        for record in self.orders()? {
            let OrderStatus::Fulfilled {
                notified_at: None,
                disclosed_at,
                ..
            } = &record.status
            else {
                continue;
            };
            let order = &record.order.order;
            if order.notify_user_after.is_some_and(|t| t > now) {
                continue;
            }
            let Some(subscriber) = self.records.subscriber(&order.target).await? else {
                continue;
            };
            let authority = self
                .trust
                .find(&order.issuing_authority)
                .map_or(order.issuing_authority.as_str(), |a| a.name.as_str());
            let disclosed: Vec<&str> = order
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
                order.jurisdiction,
                order.order_id,
                disclosed.join(" and "),
            );
            due.push(UserNotice {
                order_id: order.order_id.clone(),
                account_id: subscriber.account_id,
                text,
                disclosed_at: *disclosed_at,
            });
        }
        Ok(due)
    }

    /// Records that a user was told about an order.
    pub fn mark_notified(&self, order_id: &str, now: OffsetDateTime) -> Result<(), DeskError> {
        let _desk = self.exclusive()?;
        let mut record = self
            .order(order_id)?
            .ok_or_else(|| DeskError::UnknownOrder(order_id.into()))?;
        if let OrderStatus::Fulfilled { notified_at, .. } = &mut record.status {
            if notified_at.is_none() {
                *notified_at = Some(now);
                self.save(&record)?;
                self.audit
                    .append("user_notice", "redoubtd", Some(order_id), json!({}), now)?;
            }
        }
        Ok(())
    }

    /// Serialises the desk's read-check-write operations (intake, approval,
    /// notices) across processes: two intakes of one order cannot both
    /// find it new, and two approvals cannot both find it pending. An
    /// flock, so a crashed process never leaves it held.
    fn exclusive(&self) -> Result<std::fs::File, LegalError> {
        let lock = self.lock_file()?;
        lock.lock()?;
        Ok(lock)
    }

    /// The same lock, waited for without blocking the async runtime: a
    /// task holding it may need this very thread to finish.
    async fn exclusive_async(&self) -> Result<std::fs::File, LegalError> {
        let lock = self.lock_file()?;
        loop {
            match lock.try_lock() {
                Ok(()) => return Ok(lock),
                Err(std::fs::TryLockError::WouldBlock) => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
            }
        }
    }

    fn lock_file(&self) -> Result<std::fs::File, LegalError> {
        Ok(std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("desk.lock"))?)
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The service's public key (base64), which authorities use to check packages.
    pub fn public_key(&self) -> String {
        self.key.public_key()
    }

    /// The order on file with this id.
    pub fn order(&self, order_id: &str) -> Result<Option<OrderRecord>, LegalError> {
        match std::fs::read(self.dir.join("orders").join(file_name(order_id))) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| LegalError::Malformed {
                        what: "an order record",
                        detail: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn save(&self, record: &OrderRecord) -> Result<(), LegalError> {
        let path = self
            .dir
            .join("orders")
            .join(file_name(&record.order.order.order_id));
        write_durably(
            &path,
            &serde_json::to_vec_pretty(record).map_err(|e| LegalError::Malformed {
                what: "an order record",
                detail: e.to_string(),
            })?,
        )
    }

    fn reject(
        &self,
        order: Option<&SignedOrder>,
        rejection: Rejection,
        operator: &str,
        now: OffsetDateTime,
    ) -> Result<Intake, LegalError> {
        let order_id = order.map(|o| o.order.order_id.clone());
        // A replay is refused without touching the original's record.
        if let (Some(order), false) = (order, rejection == Rejection::Duplicate) {
            self.save(&OrderRecord {
                order: order.clone(),
                intake_by: operator.into(),
                received_at: now,
                status: OrderStatus::Rejected {
                    code: rejection.code().into(),
                    reason: rejection.to_string(),
                },
                target_account: None,
                document: None,
            })?;
        }
        let jurisdiction = order.map(|o| o.order.jurisdiction.clone());
        let instrument = order.map(|o| o.order.legal_instrument.clone());
        self.audit.append(
            "rejection",
            operator,
            order_id.as_deref(),
            json!({
                "code": rejection.code(),
                "reason": rejection.to_string(),
                "jurisdiction": jurisdiction,
                "legal_instrument": instrument,
            }),
            now,
        )?;
        Ok(Intake::Rejected {
            order_id,
            rejection,
        })
    }

    /// Verifies an order document and files it as pending or rejected.
    pub async fn intake(
        &self,
        document: &[u8],
        operator: &str,
        now: OffsetDateTime,
    ) -> Result<Intake, DeskError> {
        let operator = check_operator(operator)?;
        let _desk = self.exclusive_async().await?;
        let signed = match verify_document(document, &self.trust, &self.markets, now) {
            Ok(signed) => signed,
            Err(rejection) => {
                // Name the order in the audit log when its id is readable,
                // but file nothing: an unverified document must never create
                // or overwrite an order record.
                let order_id = serde_json::from_slice::<serde_json::Value>(document)
                    .ok()
                    .and_then(|v| {
                        v.pointer("/order/order_id")
                            .and_then(|id| id.as_str())
                            .map(str::to_owned)
                    })
                    .filter(|id| crate::verify::check_id("order_id", id).is_ok());
                self.audit.append(
                    "rejection",
                    operator,
                    order_id.as_deref(),
                    json!({ "code": rejection.code(), "reason": rejection.to_string() }),
                    now,
                )?;
                return Ok(Intake::Rejected {
                    order_id,
                    rejection,
                });
            }
        };
        let order = &signed.order;
        if self.order(&order.order_id)?.is_some() {
            return Ok(self.reject(Some(&signed), Rejection::Duplicate, operator, now)?);
        }
        let Some(subscriber) = self.records.subscriber(&order.target).await? else {
            return Ok(self.reject(Some(&signed), Rejection::TargetNotFound, operator, now)?);
        };
        let only_ip_data = !order.categories.contains(&DataCategory::Subscriber);
        if only_ip_data && order.window.to < now - self.retention {
            return Ok(self.reject(Some(&signed), Rejection::NoDataHeld, operator, now)?);
        }
        // The audit entry first: on a log that cannot be extended, nothing
        // is filed.
        self.audit.append(
            "intake",
            operator,
            Some(&order.order_id),
            json!({
                "jurisdiction": order.jurisdiction,
                "legal_instrument": order.legal_instrument,
                "categories": order.categories,
                "emergency": order.emergency,
            }),
            now,
        )?;
        self.save(&OrderRecord {
            order: signed.clone(),
            intake_by: operator.into(),
            received_at: now,
            status: OrderStatus::Pending,
            target_account: Some(subscriber.account_id),
            document: String::from_utf8(document.to_vec()).ok(),
        })?;
        Ok(Intake::Pending {
            order_id: order.order_id.clone(),
        })
    }

    /// A second operator approves a pending order: everything intake
    /// checked is checked again (authority, market, deadline), the target
    /// must still be the account fixed at intake, and the package is
    /// produced, audited, then filed and returned. A refusal is audited too.
    pub async fn approve(
        &self,
        order_id: &str,
        operator: &str,
        now: OffsetDateTime,
    ) -> Result<SignedPackage, DeskError> {
        let operator = check_operator(operator)?;
        let _desk = self.exclusive_async().await?;
        match self.try_approve(order_id, operator, now).await {
            Ok(package) => Ok(package),
            Err(e @ (DeskError::Legal(_) | DeskError::Records(_))) => Err(e),
            Err(refusal) => {
                self.audit.append(
                    "approval_refused",
                    operator,
                    Some(order_id).filter(|id| crate::verify::check_id("order_id", id).is_ok()),
                    json!({ "reason": refusal.to_string() }),
                    now,
                )?;
                Err(refusal)
            }
        }
    }

    async fn try_approve(
        &self,
        order_id: &str,
        operator: &str,
        now: OffsetDateTime,
    ) -> Result<SignedPackage, DeskError> {
        let mut record = self
            .order(order_id)?
            .ok_or_else(|| DeskError::UnknownOrder(order_id.into()))?;
        if record.status != OrderStatus::Pending {
            return Err(DeskError::NotPending(order_id.into()));
        }
        if same_operator(&record.intake_by, operator) {
            return Err(DeskError::FourEyes);
        }
        let order = record.order.order.clone();
        if order.deadline < now {
            return Err(DeskError::Expired);
        }
        // The world may have changed since intake: a revoked or expired
        // authority, an exited market. The same checks, again, now.
        let document = match &record.document {
            Some(text) => text.clone().into_bytes(),
            None => serde_json::to_vec(&record.order).map_err(|e| LegalError::Malformed {
                what: "an order record",
                detail: e.to_string(),
            })?,
        };
        verify_document(&document, &self.trust, &self.markets, now)
            .map_err(DeskError::NoLongerValid)?;
        let subscriber = self
            .records
            .subscriber(&order.target)
            .await?
            .ok_or(DeskError::TargetChanged)?;
        if record
            .target_account
            .is_some_and(|fixed| fixed != subscriber.account_id)
        {
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
            signed_order: record.document.clone().unwrap_or_default(),
        };
        let signed = self.key.sign(package);
        // Audited before anything leaves: if the log cannot be extended,
        // no package is written and the order stays pending.
        self.audit.append(
            "approval",
            operator,
            Some(order_id),
            json!({ "intake_by": record.intake_by }),
            now,
        )?;
        let ip_rows = signed
            .package
            .produced
            .ip_identification
            .as_ref()
            .map_or(0, Vec::len);
        self.audit.append(
            "disclosure",
            operator,
            Some(order_id),
            json!({
                "jurisdiction": order.jurisdiction,
                "produced": { "subscriber": signed.package.produced.subscriber.is_some(), "ip_records": ip_rows },
                "not_produced": signed.package.not_produced.iter().map(|n| n.category).collect::<Vec<_>>(),
                "message_content_bytes": 0,
            }),
            now,
        )?;
        let path = self.dir.join("disclosures").join(file_name(order_id));
        write_durably(
            &path,
            &serde_json::to_vec_pretty(&signed).map_err(|e| LegalError::Malformed {
                what: "a package",
                detail: e.to_string(),
            })?,
        )?;
        record.status = OrderStatus::Fulfilled {
            approved_by: operator.into(),
            disclosed_at: now,
            notified_at: None,
        };
        self.save(&record)?;
        Ok(signed)
    }
}

/// Writes a file whole or not at all, and on disk before it returns.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), LegalError> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
