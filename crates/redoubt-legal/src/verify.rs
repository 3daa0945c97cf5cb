//! Court-order verification. Every failure has its own reason, with a stable
//! code for the audit log and the transparency report and a sentence for
//! people.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signature, VerifyingKey};
use time::{Duration, OffsetDateTime};

use crate::order::{canonical_json, limits, DataCategory, SignedOrder, Target};
use crate::trust::TrustStore;

/// How far in the future an order's `issued_at` may be before it is
/// refused (clocks differ a little between institutions).
pub const CLOCK_SKEW: Duration = Duration::minutes(5);

/// Why an order was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The document does not parse or a field breaks a rule.
    #[error("malformed order: {0}")]
    Malformed(String),
    /// The signature does not verify with the named key.
    #[error("the signature does not verify with the authority's key")]
    BadSignature,
    /// The issuing authority is not in the trust store.
    #[error("the issuing authority is not in the trust store")]
    UnknownAuthority,
    /// The operator revoked the authority.
    #[error("the issuing authority has been revoked")]
    AuthorityRevoked,
    /// The authority is outside its validity period.
    #[error("the issuing authority is outside its validity period")]
    AuthorityExpired,
    /// The authority does not act for the order's jurisdiction.
    #[error("the issuing authority is not competent for jurisdiction {0}")]
    NotCompetent(String),
    /// The authority's kind needs a validating court or judge.
    #[error("orders from this kind of authority need validation by a court or judge: {0}")]
    ValidationRequired(String),
    /// The service has left this market.
    #[error("the service has exited jurisdiction {0} and answers no orders from it")]
    JurisdictionExited(String),
    /// The service does not operate in this jurisdiction.
    #[error("the service does not operate in jurisdiction {0}")]
    JurisdictionNotServed(String),
    /// The order's deadline has passed.
    #[error("the order has expired (its deadline has passed)")]
    Expired,
    /// The order claims to be issued in the future.
    #[error("the order is dated in the future")]
    IssuedInFuture,
    /// This authority sent an order with this id before.
    #[error("this authority already sent an order with this id (replay)")]
    Duplicate,
    /// No account matches the target.
    #[error("no account matches the target")]
    TargetNotFound,
    /// The window lies entirely outside the retention period.
    #[error("no data held: the time window lies outside the retention period")]
    NoDataHeld,
    /// The window ends in the future: that would be collection ahead of
    /// time, not production of data held.
    #[error("the time window ends in the future; the desk produces only data already held")]
    WindowInFuture,
}

impl Rejection {
    /// A stable code, for the audit log and the report's "rejected by reason".
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::BadSignature => "bad_signature",
            Self::UnknownAuthority => "unknown_authority",
            Self::AuthorityRevoked => "authority_revoked",
            Self::AuthorityExpired => "authority_expired",
            Self::NotCompetent(_) => "not_competent",
            Self::ValidationRequired(_) => "validation_required",
            Self::JurisdictionExited(_) => "jurisdiction_exited",
            Self::JurisdictionNotServed(_) => "jurisdiction_not_served",
            Self::Expired => "expired",
            Self::IssuedInFuture => "issued_in_future",
            Self::Duplicate => "duplicate",
            Self::TargetNotFound => "target_not_found",
            Self::NoDataHeld => "no_data_held",
            Self::WindowInFuture => "window_in_future",
        }
    }
}

/// Where the service operates, for competence checks.
#[derive(Debug, Clone, Default)]
pub struct MarketPolicy {
    /// Jurisdictions served; empty means every jurisdiction not exited.
    pub served: Vec<String>,
    /// Jurisdictions the service has exited.
    pub exited: Vec<String>,
}

/// Identifiers are short and plain ASCII, so that look-alike Unicode cannot
/// make two ids seem equal to a person while differing to the machine.
pub fn check_id(what: &str, id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.chars().count() <= limits::MAX_ID_CHARS
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:/#-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} must be 1 to {} characters of A-Z, a-z, 0-9 and ._:/#-",
            limits::MAX_ID_CHARS
        ))
    }
}

/// An ISO 3166-1 alpha-2 code in upper case.
pub fn check_country(code: &str) -> Result<(), String> {
    // A real region of the numbering plans, in capitals: "XX" is not a
    // country, and "fr" is not spelled as the trust store spells it.
    if crate::markets::known_country(code).ok().as_deref() == Some(code) {
        Ok(())
    } else {
        Err(format!(
            "{code:?} is not an ISO 3166-1 alpha-2 country code (such as FR)"
        ))
    }
}

/// Unicode's default-ignorable code points (DerivedCoreProperties.txt,
/// Default_Ignorable_Code_Point) and the Arabic letter mark: characters
/// that render as nothing, or reorder what is around them.
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}'..='\u{1160}'
        | '\u{17B4}'..='\u{17B5}' | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{3164}'
        | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF0}'..='\u{FFF8}'
        | '\u{1BCA0}'..='\u{1BCA3}' | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E0FFF}')
}

fn check_text(what: &str, text: &str) -> Result<(), String> {
    if text.trim().is_empty() || text.chars().count() > limits::MAX_TEXT_CHARS {
        return Err(format!(
            "{what} must be 1 to {} characters",
            limits::MAX_TEXT_CHARS
        ));
    }
    // Bidirectional controls and every other default-ignorable code point
    // can make a text read differently from what it says, or hide text.
    if text
        .chars()
        .any(|c| invisible(c) || (c.is_control() && c != '\n'))
    {
        return Err(format!(
            "{what} contains control or invisible formatting characters"
        ));
    }
    Ok(())
}

/// Decodes a base64 Ed25519 public key.
/// Small-order ("weak") keys are refused: a signature under one can
/// verify for many messages, so it proves nothing.
pub fn decode_key(text: &str) -> Option<VerifyingKey> {
    let bytes: [u8; 32] = STANDARD.decode(text).ok()?.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes)
        .ok()
        .filter(|key| !key.is_weak())
}

fn check_shape(signed: &SignedOrder) -> Result<(), String> {
    let o = &signed.order;
    check_id("order_id", &o.order_id)?;
    check_id("issuing_authority", &o.issuing_authority)?;
    if let Some(v) = &o.validating_authority {
        check_id("validating_authority", v)?;
    }
    check_id("case_reference", &o.case_reference)?;
    check_id("legal_instrument", &o.legal_instrument)?;
    check_id("signature.key_id", &signed.signature.key_id)?;
    check_country(&o.jurisdiction)?;
    check_text("legal_basis", &o.legal_basis)?;
    check_text("offence", &o.offence)?;
    check_text("reasons", &o.reasons)?;
    match &o.target {
        Target::Phone(p) => {
            // Exactly E.164, never normalised: the operator reviews the very
            // string that is looked up.
            let parsed =
                redoubt_proto::PhoneNumber::parse(p).map_err(|e| format!("target phone: {e}"))?;
            if parsed.e164() != p {
                return Err("target phone must be written in E.164 form, such as +33612345678, with nothing else".into());
            }
        }
        Target::AccountId(a) => {
            a.parse::<redoubt_proto::AccountId>()
                .map_err(|e| format!("target account_id: {e}"))?;
        }
    }
    if o.categories.is_empty() {
        return Err("categories must name at least one data category".into());
    }
    let mut seen = o.categories.clone();
    seen.sort();
    seen.dedup();
    if seen.len() != o.categories.len() {
        return Err("categories lists a category twice".into());
    }
    if o.window.from >= o.window.to {
        return Err("window.from must be before window.to".into());
    }
    if o.deadline <= o.issued_at {
        return Err("deadline must be after issued_at".into());
    }
    if signed.signature.alg != "Ed25519" {
        return Err("signature.alg must be Ed25519".into());
    }
    Ok(())
}

/// Verifies an order document against the trust store and market policy at
/// `now`. Checks that need the service's data (replays, the target, the
/// retention window) are the desk's, after this.
pub fn verify_document(
    document: &[u8],
    trust: &TrustStore,
    markets: &MarketPolicy,
    now: OffsetDateTime,
) -> Result<SignedOrder, Rejection> {
    if document.len() > limits::MAX_DOCUMENT_BYTES {
        return Err(Rejection::Malformed(format!(
            "the document exceeds {} bytes",
            limits::MAX_DOCUMENT_BYTES
        )));
    }
    let signed: SignedOrder =
        serde_json::from_slice(document).map_err(|e| Rejection::Malformed(e.to_string()))?;
    check_shape(&signed).map_err(Rejection::Malformed)?;
    // The signature covers the order as the authority sent it: the
    // canonical form of the received `order` value, not a re-encoding of
    // what was parsed (which would add defaults for optional fields left
    // out, or rewrite "+00:00" as "Z", and call a valid order a forgery).
    let as_sent: serde_json::Value =
        serde_json::from_slice(document).map_err(|e| Rejection::Malformed(e.to_string()))?;
    let signed_bytes = canonical_json(&as_sent["order"]);
    let order = &signed.order;

    let authority = trust
        .find(&order.issuing_authority)
        .ok_or(Rejection::UnknownAuthority)?;
    let key = authority
        .keys
        .iter()
        .find(|k| k.key_id == signed.signature.key_id)
        .and_then(|k| decode_key(&k.public_key))
        .ok_or(Rejection::BadSignature)?;
    let signature = STANDARD
        .decode(&signed.signature.value)
        .ok()
        .and_then(|b| Signature::from_slice(&b).ok())
        .ok_or(Rejection::BadSignature)?;
    key.verify_strict(&signed_bytes, &signature)
        .map_err(|_| Rejection::BadSignature)?;

    if authority.revoked_at.is_some_and(|at| at <= now) {
        return Err(Rejection::AuthorityRevoked);
    }
    let valid = |t: OffsetDateTime| authority.valid_from <= t && t <= authority.valid_until;
    if !valid(now) || !valid(order.issued_at) {
        return Err(Rejection::AuthorityExpired);
    }
    if authority.jurisdiction != order.jurisdiction {
        return Err(Rejection::NotCompetent(order.jurisdiction.clone()));
    }
    if authority.kind.needs_validation() {
        let Some(validator) = &order.validating_authority else {
            return Err(Rejection::ValidationRequired(
                "no validating_authority is named".into(),
            ));
        };
        let validator = trust.find(validator).ok_or_else(|| {
            Rejection::ValidationRequired(
                "the validating authority is not in the trust store".into(),
            )
        })?;
        if validator.kind.needs_validation()
            || validator.jurisdiction != order.jurisdiction
            || validator.revoked_at.is_some_and(|at| at <= now)
            || !(validator.valid_from <= now && now <= validator.valid_until)
        {
            return Err(Rejection::ValidationRequired(
                "the validating authority is not a trusted court or judge of this jurisdiction"
                    .into(),
            ));
        }
        let cosigned = signed.validation.as_ref().is_some_and(|v| {
            let key = validator
                .keys
                .iter()
                .find(|k| k.key_id == v.key_id)
                .and_then(|k| decode_key(&k.public_key));
            let signature = STANDARD
                .decode(&v.value)
                .ok()
                .and_then(|b| Signature::from_slice(&b).ok());
            v.alg == "Ed25519"
                && matches!((key, signature), (Some(key), Some(sig)) if key.verify_strict(&signed_bytes, &sig).is_ok())
        });
        if !cosigned {
            return Err(Rejection::ValidationRequired(
                "the validating court or judge did not sign the order (validation signature missing or invalid)"
                    .into(),
            ));
        }
    }
    if markets.exited.contains(&order.jurisdiction) {
        return Err(Rejection::JurisdictionExited(order.jurisdiction.clone()));
    }
    if !markets.served.is_empty() && !markets.served.contains(&order.jurisdiction) {
        return Err(Rejection::JurisdictionNotServed(order.jurisdiction.clone()));
    }
    if order.issued_at > now + CLOCK_SKEW {
        return Err(Rejection::IssuedInFuture);
    }
    if order.deadline < now {
        return Err(Rejection::Expired);
    }
    if order.window.to > now {
        return Err(Rejection::WindowInFuture);
    }
    Ok(signed)
}

/// Whether the desk could ever produce a category. Traffic and content are
/// never held: the relay does not record who talks to whom, and messages are
/// end-to-end encrypted.
pub fn producible(category: DataCategory) -> Result<(), &'static str> {
    match category {
        DataCategory::Subscriber | DataCategory::IpIdentification => Ok(()),
        DataCategory::Traffic => Err("not held: not collected (the service records no contacts, groups or who talked to whom)"),
        DataCategory::Content => Err("not held: end-to-end encrypted (the service never has message content or keys)"),
    }
}
