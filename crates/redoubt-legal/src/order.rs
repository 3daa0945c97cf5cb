//! The court-order document (schema in `docs/court-order.md`).
//!
//! An order is a JSON object `{"order": {...}, "signature": {...}}`. The
//! authority signs the canonical encoding of `order`: the JSON text with
//! object keys sorted and no insignificant whitespace (RFC 8785 for the
//! strings, booleans and nulls an order contains).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The data an order may ask for. Only the first two can ever be produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataCategory {
    /// The phone number and account creation time.
    Subscriber,
    /// IP addresses with ports and first/last seen times.
    IpIdentification,
    /// Contacts, groups, who talked to whom: not collected.
    Traffic,
    /// Message content: end-to-end encrypted, never held.
    Content,
}

/// Who the order is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Target {
    /// An account by phone number (E.164).
    Phone(String),
    /// An account by its id.
    AccountId(String),
}

/// The period the order covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeWindow {
    /// Start (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub from: OffsetDateTime,
    /// End (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub to: OffsetDateTime,
}

/// The order itself: the fields of an EU e-Evidence production-order
/// certificate (EPOC) and a DSA Art. 10 order to act.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CourtOrder {
    /// The issuer's unique id for the order.
    pub order_id: String,
    /// The issuing authority's id in the trust store.
    pub issuing_authority: String,
    /// The authority that validated the order, where the issuer's kind needs one.
    #[serde(default)]
    pub validating_authority: Option<String>,
    /// ISO 3166-1 alpha-2 code of the issuing state.
    pub jurisdiction: String,
    /// The legal instrument, for the transparency report (for example
    /// `eu-e-evidence`, `national`).
    pub legal_instrument: String,
    /// The provision the order rests on.
    pub legal_basis: String,
    /// The case file reference.
    pub case_reference: String,
    /// The offence under investigation.
    pub offence: String,
    /// Whose data.
    pub target: Target,
    /// What data.
    pub categories: Vec<DataCategory>,
    /// Which period.
    pub window: TimeWindow,
    /// When it was issued.
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
    /// When it must be answered by; after this it is void.
    #[serde(with = "time::serde::rfc3339")]
    pub deadline: OffsetDateTime,
    /// An emergency order (imminent threat to life).
    #[serde(default)]
    pub emergency: bool,
    /// The user may not be told before this time (gag), if set.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub notify_user_after: Option<OffsetDateTime>,
    /// The statement of reasons.
    pub reasons: String,
}

/// The signature block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderSignature {
    /// Always `Ed25519`.
    pub alg: String,
    /// Which of the authority's keys signed, as listed in the trust store.
    pub key_id: String,
    /// The detached signature over the canonical order, standard base64.
    pub value: String,
}

/// An order as received: the order and its detached signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedOrder {
    /// The order.
    pub order: CourtOrder,
    /// The authority's signature over its canonical encoding.
    pub signature: OrderSignature,
    /// Where the issuer needs validation (a prosecutor, say): the
    /// validating court's or judge's own signature over the same canonical
    /// order. Naming a court is not enough; the court must sign.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<OrderSignature>,
}

/// The canonical encoding of any JSON value: keys sorted, no whitespace.
/// (`serde_json`'s map is ordered by key unless its `preserve_order`
/// feature is on, which this workspace never enables.)
pub fn canonical_json<T: Serialize>(value: &T) -> Vec<u8> {
    let value = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
    serde_json::to_vec(&value).unwrap_or_default()
}

/// Limits on an order's fields, checked before anything else so hostile
/// documents cannot make the desk store or hash megabytes.
pub mod limits {
    /// The largest order document accepted, in bytes.
    pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;
    /// The longest identifier (order, authority, case, key id).
    pub const MAX_ID_CHARS: usize = 128;
    /// The longest free-text field (basis, offence, reasons).
    pub const MAX_TEXT_CHARS: usize = 8 * 1024;
}
