//! Court orders for tests: a trusted court of Paris and orders it signs,
//! built the way a real authority would build them.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey};
use redoubt_legal::order::*;
use redoubt_legal::trust::{Authority, AuthorityKey, AuthorityKind};
use time::{Duration, OffsetDateTime};

/// The signed JSON document of `order`, signed with `key` as
/// `fr-tj-paris#1`.
pub fn signed_order(key: &SigningKey, order: CourtOrder) -> Vec<u8> {
    let signature = STANDARD.encode(key.sign(&canonical_json(&order)).to_bytes());
    serde_json::to_vec(&SignedOrder {
        order,
        signature: OrderSignature {
            alg: "Ed25519".into(),
            key_id: "fr-tj-paris#1".into(),
            value: signature,
        },
        validation: None,
    })
    .unwrap()
}

/// A court of Paris, trusted for a year either side of `now`.
pub fn court(name: &str, key: &SigningKey, now: OffsetDateTime) -> Authority {
    Authority {
        id: "fr-tj-paris".into(),
        name: name.into(),
        jurisdiction: "FR".into(),
        kind: AuthorityKind::Court,
        keys: vec![AuthorityKey {
            key_id: "fr-tj-paris#1".into(),
            public_key: STANDARD.encode(key.verifying_key().as_bytes()),
        }],
        valid_from: now - Duration::days(365),
        valid_until: now + Duration::days(365),
        revoked_at: None,
    }
}

/// An order of the Paris court for `phone`, over the last day.
pub fn order(
    id: &str,
    phone: &str,
    categories: Vec<DataCategory>,
    now: OffsetDateTime,
) -> CourtOrder {
    CourtOrder {
        order_id: id.into(),
        issuing_authority: "fr-tj-paris".into(),
        validating_authority: None,
        jurisdiction: "FR".into(),
        legal_instrument: "national".into(),
        legal_basis: "Code de procédure pénale, art. 60-1".into(),
        case_reference: "CASE-1".into(),
        offence: "Fraud".into(),
        target: Target::Phone(phone.into()),
        categories,
        window: TimeWindow {
            from: now - Duration::days(1),
            to: now,
        },
        issued_at: now - Duration::minutes(5),
        deadline: now + Duration::days(10),
        emergency: false,
        notify_user_after: None,
        reasons: "Needed for the investigation.".into(),
    }
}
