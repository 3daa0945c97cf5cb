//! Transparency reports: what the desk received, refused and answered in a
//! period, per jurisdiction and legal instrument, signed with the service
//! key. Verified orders are counted from their records; documents that
//! failed verification (never filed) from the audit log.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use time::{Date, Month, OffsetDateTime, Time};

use crate::audit::AuditEntry;
use crate::desk::{OrderRecord, OrderStatus};
use crate::disclosure::ServiceKey;
use crate::order::{canonical_json, DataCategory, Target};

/// The standing line of every report.
pub const CONTENT_STATEMENT: &str =
    "Message content disclosed: 0 bytes. Redoubt is end-to-end encrypted and \
     never has message content or keys; it records no contacts, groups or who talked to whom.";

/// A reporting period such as `2026-H2`, `2026-Q3` or `2026`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    /// Start, inclusive.
    pub from: OffsetDateTime,
    /// End, exclusive.
    pub to: OffsetDateTime,
}

impl Period {
    /// Parses `YYYY`, `YYYY-H1|H2` or `YYYY-Q1..Q4`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a period such as 2026, 2026-H2 or 2026-Q3");
        let (year, part) = match text.split_once('-') {
            Some((y, p)) => (y, Some(p)),
            None => (text, None),
        };
        let year: i32 = year.parse().map_err(|_| bad())?;
        if !(2000..=9998).contains(&year) {
            return Err(bad());
        }
        let (first, months) = match part {
            None => (1, 12),
            Some("H1") => (1, 6),
            Some("H2") => (7, 6),
            Some(q) if q.len() == 2 && q.starts_with('Q') => {
                let n: u8 = q[1..].parse().map_err(|_| bad())?;
                if !(1..=4).contains(&n) {
                    return Err(bad());
                }
                (1 + (n - 1) * 3, 3)
            }
            Some(_) => return Err(bad()),
        };
        let start = |y: i32, m: u8| -> Result<OffsetDateTime, String> {
            let month = Month::try_from(m).map_err(|_| bad())?;
            Ok(Date::from_calendar_date(y, month, 1)
                .map_err(|_| bad())?
                .with_time(Time::MIDNIGHT)
                .assume_utc())
        };
        let end_month = first + months;
        let to = if end_month > 12 {
            start(year + 1, end_month - 12)?
        } else {
            start(year, end_month)?
        };
        Ok(Self {
            from: start(year, first)?,
            to,
        })
    }

    fn contains(&self, t: OffsetDateTime) -> bool {
        self.from <= t && t < self.to
    }
}

/// One line of the report: a jurisdiction and legal instrument.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportRow {
    /// ISO 3166-1 alpha-2 code, or `unknown` for unreadable documents.
    pub jurisdiction: String,
    /// The legal instrument, or `unknown`.
    pub legal_instrument: String,
    /// Orders received.
    pub received: u64,
    /// Orders rejected, by reason code.
    pub rejected: BTreeMap<String, u64>,
    /// Orders answered.
    pub fulfilled: u64,
    /// Orders awaiting approval at report time.
    pub pending: u64,
    /// Distinct accounts named by verified orders.
    pub accounts_specified: u64,
    /// Distinct accounts whose data was disclosed.
    pub users_affected: u64,
    /// Answered orders per category disclosed.
    pub categories_disclosed: BTreeMap<String, u64>,
    /// Emergency orders received.
    pub emergency: u64,
    /// Answered orders whose user notification is still deferred (gag).
    pub under_gag: u64,
    /// Median hours from receipt to disclosure.
    pub median_hours_to_comply: Option<f64>,
}

/// A market the service left, as the report lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarketExitLine {
    /// The jurisdiction.
    pub jurisdiction: String,
    /// When the exit was announced.
    pub announced: String,
    /// When it took effect.
    pub effective: String,
}

/// The report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransparencyReport {
    /// The period's name, such as `2026-H2`.
    pub period: String,
    /// Start (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub from: OffsetDateTime,
    /// End, exclusive (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub to: OffsetDateTime,
    /// When it was made.
    #[serde(with = "time::serde::rfc3339")]
    pub generated_at: OffsetDateTime,
    /// One row per jurisdiction and instrument.
    pub rows: Vec<ReportRow>,
    /// All rows added up.
    pub total: ReportRow,
    /// Market exits.
    pub market_exits: Vec<MarketExitLine>,
    /// Always zero.
    pub message_content_disclosed_bytes: u64,
    /// [`CONTENT_STATEMENT`].
    pub statement: String,
    /// The audit log when the report was made. Whoever keeps this report
    /// can check later that the log still holds this history unchanged
    /// (`redoubtd legal audit verify --checkpoint REPORT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_checkpoint: Option<crate::audit::Checkpoint>,
    /// The key-transparency directory's newest signed epoch when the report
    /// was made: the report and the directory vouch for each other, and a
    /// directory later shown without this epoch and root was rewritten
    /// (`redoubt kt audit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_directory: Option<redoubt_proto::kt::SignedEpoch>,
}

/// A report with the service's signature over its canonical encoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedReport {
    /// The report.
    pub report: TransparencyReport,
    /// Ed25519 signature by the service key, standard base64.
    pub signature: String,
}

/// The key under which a target is counted once (the E.164 number or the
/// account id).
pub fn target_key(target: &Target) -> String {
    match target {
        Target::Phone(p) => redoubt_proto::PhoneNumber::parse(p)
            .map(|p| p.to_string())
            .unwrap_or_else(|_| p.clone()),
        Target::AccountId(a) => a.clone(),
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    let m = if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    };
    Some((m * 10.0).round() / 10.0)
}

/// Builds the report for `period` from the order records and the audit log.
/// `targets` maps each filed document's hash to its [`target_key`].
pub fn build(
    period_name: &str,
    period: Period,
    orders: &[OrderRecord],
    targets: &BTreeMap<String, String>,
    audit: &[AuditEntry],
    market_exits: Vec<MarketExitLine>,
    now: OffsetDateTime,
) -> TransparencyReport {
    #[derive(Default)]
    struct Acc {
        row: ReportRow,
        specified: BTreeSet<String>,
        affected: BTreeSet<String>,
        hours: Vec<f64>,
    }
    let mut groups: BTreeMap<(String, String), Acc> = BTreeMap::new();
    for record in orders.iter().filter(|r| period.contains(r.received_at)) {
        let o = &record.summary;
        let target = targets
            .get(&record.document_sha256)
            .cloned()
            .unwrap_or_else(|| record.document_sha256.clone());
        let acc = groups
            .entry((o.jurisdiction.clone(), o.legal_instrument.clone()))
            .or_default();
        acc.row.received += 1;
        acc.specified.insert(target.clone());
        if o.emergency {
            acc.row.emergency += 1;
        }
        match &record.status {
            OrderStatus::Pending => acc.row.pending += 1,
            OrderStatus::Rejected { code, .. } => {
                *acc.row.rejected.entry(code.clone()).or_default() += 1
            }
            OrderStatus::Fulfilled { disclosed_at, .. } => {
                acc.row.fulfilled += 1;
                acc.affected.insert(target.clone());
                for c in &o.categories {
                    if matches!(c, DataCategory::Subscriber | DataCategory::IpIdentification) {
                        let name = serde_json::to_value(c)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default();
                        *acc.row.categories_disclosed.entry(name).or_default() += 1;
                    }
                }
                if o.notify_user_after.is_some_and(|t| t > now) {
                    acc.row.under_gag += 1;
                }
                acc.hours
                    .push((*disclosed_at - record.received_at).as_seconds_f64() / 3600.0);
            }
        }
    }
    // Documents that failed verification were never filed; the audit log
    // has them. Replays of filed orders are counted there too.
    for entry in audit
        .iter()
        .filter(|e| e.event == "rejection" && period.contains(e.at))
    {
        let code = entry
            .detail
            .get("code")
            .and_then(|c| c.as_str())
            .unwrap_or("unknown")
            .to_owned();
        let filed = orders.iter().any(|r| {
            entry.issuer.as_ref() == Some(&r.issuer)
                && entry.order_id.as_ref() == Some(&r.order_id)
                && matches!(&r.status, OrderStatus::Rejected { code: c, .. } if *c == code)
        });
        if filed {
            continue;
        }
        let field = |name: &str| {
            entry
                .detail
                .get(name)
                .and_then(|j| j.as_str())
                .unwrap_or("unknown")
                .to_owned()
        };
        let acc = groups
            .entry((field("jurisdiction"), field("legal_instrument")))
            .or_default();
        acc.row.received += 1;
        *acc.row.rejected.entry(code).or_default() += 1;
    }
    let mut total = Acc::default();
    let mut rows = Vec::new();
    for ((jurisdiction, instrument), acc) in groups {
        let mut row = acc.row;
        row.jurisdiction = jurisdiction;
        row.legal_instrument = instrument;
        row.accounts_specified = acc.specified.len() as u64;
        row.users_affected = acc.affected.len() as u64;
        row.median_hours_to_comply = median(acc.hours.clone());
        total.row.received += row.received;
        total.row.fulfilled += row.fulfilled;
        total.row.pending += row.pending;
        total.row.emergency += row.emergency;
        total.row.under_gag += row.under_gag;
        for (k, v) in &row.rejected {
            *total.row.rejected.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &row.categories_disclosed {
            *total.row.categories_disclosed.entry(k.clone()).or_default() += v;
        }
        total.specified.extend(acc.specified);
        total.affected.extend(acc.affected);
        total.hours.extend(acc.hours);
        rows.push(row);
    }
    let mut total_row = total.row;
    total_row.jurisdiction = "all".into();
    total_row.legal_instrument = "all".into();
    total_row.accounts_specified = total.specified.len() as u64;
    total_row.users_affected = total.affected.len() as u64;
    total_row.median_hours_to_comply = median(total.hours);
    TransparencyReport {
        period: period_name.into(),
        from: period.from,
        to: period.to,
        generated_at: now,
        rows,
        total: total_row,
        market_exits,
        message_content_disclosed_bytes: 0,
        statement: CONTENT_STATEMENT.into(),
        audit_checkpoint: None,
        key_directory: None,
    }
}

/// Signs a report.
pub fn sign(report: TransparencyReport, key: &ServiceKey) -> SignedReport {
    let signature = key.sign_value(&report);
    SignedReport { report, signature }
}

/// Checks a signed report's bytes against the service's public key (base64).
pub fn verify(
    bytes: &[u8],
    public_key: &str,
) -> Result<TransparencyReport, crate::disclosure::PackageError> {
    use crate::disclosure::PackageError;
    use base64::Engine as _;
    let signed: SignedReport =
        serde_json::from_slice(bytes).map_err(|e| PackageError::Malformed(e.to_string()))?;
    let key = crate::verify::decode_key(public_key).ok_or(PackageError::BadSignature)?;
    let signature = base64::engine::general_purpose::STANDARD
        .decode(&signed.signature)
        .ok()
        .and_then(|b| ed25519_dalek::Signature::from_slice(&b).ok())
        .ok_or(PackageError::BadSignature)?;
    key.verify_strict(&canonical_json(&signed.report), &signature)
        .map_err(|_| PackageError::BadSignature)?;
    Ok(signed.report)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn counts(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "0".into();
    }
    map.iter()
        .map(|(k, v)| format!("{} {v}", escape(k)))
        .collect::<Vec<_>>()
        .join("<br>")
}

/// The report as a self-contained HTML page for people.
pub fn html(signed: &SignedReport) -> String {
    let r = &signed.report;
    let mut rows = String::new();
    for row in r.rows.iter().chain(std::iter::once(&r.total)) {
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            escape(&row.jurisdiction),
            escape(&row.legal_instrument),
            row.received,
            counts(&row.rejected),
            row.fulfilled,
            row.accounts_specified,
            row.users_affected,
            counts(&row.categories_disclosed),
            row.emergency,
            row.under_gag,
            row.median_hours_to_comply.map(|h| format!("{h} h")).unwrap_or_else(|| "n/a".into()),
        ));
    }
    let exits = if r.market_exits.is_empty() {
        "<p>No market exits in this period.</p>".to_owned()
    } else {
        let items: String = r
            .market_exits
            .iter()
            .map(|e| {
                format!(
                    "<li>{}: announced {}, effective {}</li>",
                    escape(&e.jurisdiction),
                    escape(&e.announced),
                    escape(&e.effective)
                )
            })
            .collect();
        format!("<ul>{items}</ul>")
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Redoubt transparency report {period}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem}}
table{{border-collapse:collapse;width:100%}}td,th{{border:1px solid #bbb;padding:.3rem .5rem;text-align:left;vertical-align:top}}
tr:last-child{{font-weight:bold}}.statement{{font-size:1.2rem;border-left:4px solid #2a7;padding-left:1rem}}</style></head>
<body><h1>Transparency report {period}</h1>
<p>{from} to {to} (UTC). Generated {generated}.</p>
<p class="statement">{statement}</p>
<h2>Government requests</h2>
<table><tr><th>Jurisdiction</th><th>Legal instrument</th><th>Received</th><th>Rejected (by reason)</th><th>Fulfilled</th><th>Accounts specified</th><th>Users affected</th><th>Categories disclosed</th><th>Emergency</th><th>Under gag</th><th>Median time to comply</th></tr>
{rows}</table>
<h2>Market exits</h2>
{exits}
<h2>Verification</h2>
<p>This report is signed with the service key (Ed25519 over the canonical JSON of the report).
Check it with <code>redoubtd legal verify-report</code> against the published key.</p>
<p><code>signature: {signature}</code></p>
{directory}
</body></html>
"#,
        period = escape(&r.period),
        from = r.from.date(),
        to = r.to.date(),
        generated = r.generated_at.date(),
        statement = escape(&r.statement),
        signature = escape(&signed.signature),
        directory = r.key_directory.as_ref().map_or(String::new(), |e| format!(
            "<p>Key-transparency directory at this report: epoch {}, root <code>{}</code> \
             (check with <code>redoubt kt audit</code>).</p>",
            e.epoch,
            escape(&e.root)
        )),
    )
}
